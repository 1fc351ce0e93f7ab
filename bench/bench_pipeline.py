"""Throughput of the "fec" pipeline against raw feature extraction, with the small real backbones on this machine.

Both run the same backbone objects on the same ED test texts in the same batches; the pipeline adds the fusion
head and its own machinery (loaded through `pipeline(..., trust_remote_code=True)` from a saved folder: input
checks, batching, post-processing). Target: at batch 32 the pipeline keeps at least 80% of raw extraction's texts/s.

    python -m bench.bench_pipeline --num_texts 256 --batch_sizes 1 32
"""

from __future__ import annotations

import csv
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, Pipeline, pipeline

from configuration_llm_fusion import LLMFusionConfig
from modeling_llm_fusion import FrozenBackbone, LLMFusionForSequenceClassification
from pipeline_fec import save_for_pipeline

REPO = Path(__file__).resolve().parents[1]

SMALL_MODEL_FOLDERS = {"llama": "smollm2-135m-instruct", "bert": "all-minilm-l6-v2", "roberta": "all-mpnet-base-v2"}


@dataclass
class BenchArguments:
    num_texts: int = field(default=256, metadata={"help": "How many ED test texts to classify."})
    batch_sizes: list[int] = field(default_factory=lambda: [1, 32], metadata={"help": "Batch sizes to measure."})
    data_dir: str = field(default=str(REPO.parent / "shared" / "data"), metadata={"help": "Holds ED/test.csv."})
    prepare_script: str = field(
        default=str(REPO.parent / "shared" / "models" / "prepare.py"),
        metadata={"help": "Materialises the small real backbones and prints NAME=PATH lines."},
    )


def small_backbone_paths(prepare_script: str) -> dict[str, str]:
    """Local folders of the small real trio, by backbone name of the `"small"` preset."""
    output = subprocess.run([sys.executable, prepare_script], capture_output=True, text=True, check=True).stdout
    folders = dict(line.split("=", 1) for line in output.split() if "=" in line)
    return {name: folders[folder] for name, folder in SMALL_MODEL_FOLDERS.items()}


def read_texts(data_dir: str, num_texts: int) -> list[str]:
    with open(Path(data_dir) / "ED" / "test.csv", newline="", encoding="utf-8") as file:
        return [row["text"] for _, row in zip(range(num_texts), csv.DictReader(file))]


def extract_raw(backbones: dict[str, FrozenBackbone], batch: list[str]) -> None:
    """Raw feature extraction of one batch: every backbone on it, nothing else."""
    for backbone in backbones.values():
        backbone(batch)


def measure(pipe: Pipeline, texts: list[str], batch_size: int) -> dict[str, float]:
    """Texts/s of raw extraction and of the pipeline on the same batches.

    The two alternate batch by batch (and which goes first alternates too), so that both see the same load: the
    cores of these machines are shared, and timing one after the other compares two different machines.
    """
    backbones = pipe.model.load_backbones()  # the pipeline's own backbones: both sides run the same weights
    runs = {
        "raw": lambda batch: extract_raw(backbones, batch),
        "pipeline": lambda batch: pipe(batch, batch_size=len(batch)),
    }
    batches = [texts[start : start + batch_size] for start in range(0, len(texts), batch_size)]
    for run in runs.values():  # warm-up: first calls allocate
        run(batches[0])
    seconds = dict.fromkeys(runs, 0.0)
    for number, batch in enumerate(batches):
        for name in list(runs)[:: 1 if number % 2 == 0 else -1]:
            start = time.perf_counter()
            runs[name](batch)
            seconds[name] += time.perf_counter() - start
    return {name: len(texts) / seconds[name] for name in runs}


def main() -> None:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses()
    backbone_paths = small_backbone_paths(args.prepare_script)
    texts = read_texts(args.data_dir, args.num_texts)
    config = LLMFusionConfig.from_preset("small", num_labels=32)
    with tempfile.TemporaryDirectory() as folder:
        # The head's weights do not matter for speed; loading goes the way users load a published model.
        save_for_pipeline(LLMFusionForSequenceClassification(config), folder)
        pipe = pipeline("fec", model=folder, trust_remote_code=True, backbone_paths=backbone_paths, device="cpu")

    print(f"{len(texts)} ED test texts, CPU, {torch.get_num_threads()} threads, float32")
    print(f"{'batch':>5} {'raw texts/s':>12} {'pipeline texts/s':>17} {'pipeline/raw':>13}")
    for batch_size in args.batch_sizes:
        speed = measure(pipe, texts, batch_size)
        ratio = speed["pipeline"] / speed["raw"]
        print(f"{batch_size:>5} {speed['raw']:>12.1f} {speed['pipeline']:>17.1f} {ratio:>13.0%}")


if __name__ == "__main__":
    main()
