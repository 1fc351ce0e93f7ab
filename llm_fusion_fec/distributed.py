"""Several processes of one command, under `torchrun` or `accelerate launch`: which one this is and waiting for the
others. Extraction deals its shards over them, `fec predict` its chunks."""

from __future__ import annotations

import datetime
import os


def distributed() -> tuple[int, int]:
    """(rank, world size), from the variables torchrun and accelerate launch set (accelerate's own state can say
    one process on CPU under torchrun); the process group is set up on first use."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=12))
    return rank, world


def barrier(world: int) -> None:
    """Wait until every process of the launch is here (nothing to wait for alone)."""
    import torch

    if world > 1:
        torch.distributed.barrier()


def local_device(device: str | None, rank: int, world: int) -> str | None:
    """This process's own GPU under a multi-process launch where none is named, else `device`."""
    import torch

    if world > 1 and device is None and torch.cuda.is_available():
        return f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    return device
