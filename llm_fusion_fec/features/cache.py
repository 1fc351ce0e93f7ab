"""The extraction cache and the files of a features folder: resumable shards with their records (their checksums
in `checksums`), and the guards that turn a full disk or a damaged file into one line.

The heavy libraries are imported by the functions that use them: importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import logging
import math
import os
import shutil
import socket
import uuid
from dataclasses import dataclass
from pathlib import Path

from llm_fusion_fec.features.checksums import file_sha256, split_checksum
from llm_fusion_fec.features.metadata import METADATA_FILE, FeatureMetadata, read_metadata

logger = logging.getLogger(__name__)


def temporary_name(path: Path) -> Path:
    """A name beside `path` to write it under before moving it into place (`os.replace`), unique to this writer:
    `.<name>.<host>-<process id>-<random>.tmp`. Two writers of `path` (another process, a second run on the same
    folder) never write into one file: each moves its own whole file into place, the last one wins. What a killed
    writer left is removed by the next (`remove_abandoned`)."""
    return path.with_name(f".{path.name}.{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:12]}.tmp")


def remove_abandoned(path: Path) -> None:
    """Remove the files and folders that writers of `path` left under their temporary names (`temporary_name`) when
    they were killed: those of processes of this machine that no longer run. Another writer's are left alone."""
    host = socket.gethostname()
    for left in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        owner, _, pid = left.name[len(path.name) + 2 : -len(".tmp")].rpartition("-")[0].rpartition("-")
        if owner != host or not pid.isdigit() or _running(int(pid)):
            continue
        if left.is_dir():
            shutil.rmtree(left, ignore_errors=True)
        else:
            left.unlink(missing_ok=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def write_json(path: Path, record: dict) -> None:
    """Write a JSON file atomically: a reader sees the old file or the whole new one, never a part."""
    remove_abandoned(path)
    temporary = temporary_name(path)
    try:
        temporary.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def disk_full_is_an_error(output_dir: Path):
    """Turn a full disk into one line: what was being written, and what to do."""
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise ValueError(
            f"No space left on the device while writing {error.filename or output_dir}: free some space or pass "
            "--output-dir on another disk, then rerun (finished shards are kept)."
        ) from error


@contextlib.contextmanager
def library_progress_bars_off():
    """`datasets` shows a bar for every file read and every map, transformers one for every model's weights; ours
    (one per backbone) say enough. Downloads keep theirs (huggingface_hub's)."""
    import datasets
    from transformers.utils import logging as transformers_logging

    shown = datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown[0]:
            datasets.enable_progress_bars()
        if shown[1]:
            transformers_logging.enable_progress_bar()


def feature_type(spec: dict, dtype: str):
    """The `datasets` feature of one backbone's column: `Array2D` for an LLM's layers, a fixed-length `List`."""
    from datasets import Array2D, List, Value

    from configuration_llm_fusion import feature_shape

    shape = feature_shape(spec)
    return Array2D(shape=shape, dtype=dtype) if len(shape) == 2 else List(Value(dtype), length=shape[0])


@dataclass
class Shards:
    """The cache's shards of the feature columns. Shard `i` of a column of a split holds the split's rows from
    `i * size` on (`size` of them, fewer in the last), in a file named by the column's cache key
    (`column_keys[backbone][split]`)."""

    cache: Path
    column_keys: dict[str, dict[str, str]]
    split_rows: dict[str, int]
    size: int

    def count(self, split: str) -> int:
        return math.ceil(self.split_rows[split] / self.size)

    def share(self, rank: int, world: int) -> list[tuple[str, int]]:
        """The shards (split, index) of a column that process `rank` computes: all of them, splits in order, dealt
        round-robin over the processes."""
        return [(split, i) for split in self.split_rows for i in range(self.count(split))][rank::world]

    def rows(self, split: str, index: int) -> int:
        return min(self.size, self.split_rows[split] - index * self.size)

    def file(self, split: str, backbone: str, index: int) -> Path:
        return self.cache / split / f"{backbone}-{self.column_keys[backbone][split]}" / f"shard-{index:05d}.arrow"

    def files(self, split: str, backbone: str) -> list[Path]:
        """The shard files of a backbone's column of a split, in row order."""
        return [self.file(split, backbone, i) for i in range(self.count(split))]


def shard_record(shard: Path) -> Path:
    return shard.with_suffix(".json")


def shard_problem(shard: Path, rows: int) -> str | None:
    """Why a finished shard cannot be trusted (its record of rows and checksum missing or not matching), or None."""
    try:
        record = json.loads(shard_record(shard).read_text())
    except (OSError, ValueError):
        return "it has no record of its rows and checksum"
    if record.get("rows") != rows:
        return f"its record says {record.get('rows')} rows, expected {rows}"
    if record.get("sha256") != file_sha256(shard):
        return "its content does not match its checksum"
    return None


def write_shard(shard: Path, name: str, values, feature) -> None:
    """Write one shard's features: the Arrow file under a temporary name moved into place when complete, then its
    record (rows and sha256), so that a shard is trusted only once both are written."""
    from datasets import Features
    from datasets.arrow_writer import ArrowWriter

    shard.parent.mkdir(parents=True, exist_ok=True)
    remove_abandoned(shard)
    shard_record(shard).unlink(missing_ok=True)
    temporary = temporary_name(shard)
    try:
        with ArrowWriter(features=Features({name: feature}), path=str(temporary)) as writer:
            writer.write_batch({name: values})
            writer.finalize()
        checksum = file_sha256(temporary)
        os.replace(temporary, shard)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    write_json(shard_record(shard), {"rows": len(values), "sha256": checksum})


def output_problem(output_dir: Path, metadata: FeatureMetadata) -> str | None:
    """Why the saved splits do not match what `metadata` records of them, or None."""
    if not (output_dir / "dataset_dict.json").exists():
        return "dataset_dict.json is missing"
    for split in metadata.rows:
        if not (output_dir / split).is_dir():
            return f"split {split!r} is missing"
        if split_checksum(output_dir / split) != metadata.split_checksums.get(split):
            return f"split {split!r} does not match its checksum"
    return None


def previous_metadata(output_dir: Path) -> FeatureMetadata | None:
    """The metadata of what is in `output_dir`, or None where there is none that this version can read."""
    try:
        return read_metadata(output_dir) if (output_dir / METADATA_FILE).exists() else None
    except ValueError as error:
        logger.warning(f"{error}")
        return None
