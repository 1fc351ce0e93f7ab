"""Throughput of the "fec" pipeline against raw feature extraction, with the small real backbones on this machine.

Each preset's rows run the same backbone objects on the same ED test texts; the pipeline adds the fusion head and
its own machinery (loaded through `pipeline(..., trust_remote_code=True)` from a saved folder: input checks,
batching, post-processing). Raw extraction sorts texts by length into batches and runs views of one model that read
the same prompt in one pass, as `fec extract` does; the pipeline is measured both ways: in batches of input order
(how it batched before) and on the whole list, which it sorts. Targets: the sorted pipeline keeps at least 90% of
raw extraction's texts/s, and the `small` preset's pipeline is at least as fast as `small-mean`'s (the previous
default), measured in the same run.

    python -m bench.bench_pipeline --num_texts 512 --batch_sizes 32 --presets small small-mean
"""

from __future__ import annotations

import csv
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from transformers import HfArgumentParser, Pipeline, pipeline

from bench.bench_extract import small_trio_paths
from configuration_llm_fusion import LLMFusionConfig
from modeling_llm_fusion import LLMFusionForSequenceClassification
from pipeline_fec import save_for_pipeline

REPO = Path(__file__).resolve().parents[1]


@dataclass
class BenchArguments:
    num_texts: int = field(default=256, metadata={"help": "How many ED test texts to classify."})
    batch_sizes: list[int] = field(default_factory=lambda: [32], metadata={"help": "Batch sizes to measure."})
    rounds: int = field(default=2, metadata={"help": "Passes over the texts by each row."})
    presets: list[str] = field(
        default_factory=lambda: ["small", "small-mean"], metadata={"help": "Presets to measure, one after the other."}
    )
    data_dir: str = field(default=str(REPO.parent / "shared" / "data"), metadata={"help": "Holds ED/test.csv."})


def read_texts(data_dir: str, num_texts: int) -> list[str]:
    with open(Path(data_dir) / "ED" / "test.csv", newline="", encoding="utf-8") as file:
        return [row["text"] for _, row in zip(range(num_texts), csv.DictReader(file))]


def measure(pipe: Pipeline, texts: list[str], batch_size: int, rounds: int) -> dict[str, float]:
    """Texts/s of raw extraction and of the pipeline on the same texts, `batch_size` at a time.

    - raw extraction: each backbone's `extract`, as `fec extract` runs it (texts sorted by length into batches);
    - the pipeline in batches of input order (as it batched before it sorted): one call a batch;
    - the pipeline on the whole list, which sorts it by length into batches and answers in input order.

    Each round runs the three once, in an order that alternates round by round, so that all see the same load: the
    cores of these machines are shared, and timing one after the other compares two different machines.
    """
    backbones = pipe.model.load_backbones()  # the pipeline's own backbones, in the passes of its plan
    passes = [[backbones[spec.name] for spec in views] for views in pipe.model.feature_plan().passes]
    batches = [texts[start : start + batch_size] for start in range(0, len(texts), batch_size)]
    runs = {
        "raw extraction (sorted)": lambda: [group[0].extract_views(texts, group, batch_size) for group in passes],
        "pipeline, input order": lambda: [pipe(batch, batch_size=len(batch)) for batch in batches],
        "pipeline, sorted": lambda: pipe(texts, batch_size=batch_size),
    }
    pipe(batches[0], batch_size=batch_size)  # warm-up: first calls allocate
    seconds = dict.fromkeys(runs, 0.0)
    for number in range(rounds):
        for name in list(runs)[:: 1 if number % 2 == 0 else -1]:
            start = time.perf_counter()
            runs[name]()
            seconds[name] += time.perf_counter() - start
    return {name: rounds * len(texts) / seconds[name] for name in runs}


def main() -> None:
    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses()
    backbone_paths = small_trio_paths()
    texts = read_texts(args.data_dir, args.num_texts)
    print(f"{len(texts)} ED test texts, small real trio, CPU ({torch.get_num_threads()} threads), float32")
    print(f"{args.rounds} rounds, the rows' order alternating round by round.")
    print("| preset | batch | row | texts/s | against raw extraction |\n| --- | --- | --- | --- | --- |")
    for preset in args.presets:
        config = LLMFusionConfig.from_preset(preset, num_labels=32)
        with tempfile.TemporaryDirectory() as folder:
            # The head's weights do not matter for speed; loading goes the way users load a published model.
            save_for_pipeline(LLMFusionForSequenceClassification(config), folder)
            pipe = pipeline("fec", model=folder, trust_remote_code=True, backbone_paths=backbone_paths, device="cpu")
        for batch_size in args.batch_sizes:
            speed = measure(pipe, texts, batch_size, args.rounds)
            raw = speed["raw extraction (sorted)"]
            for name, value in speed.items():
                print(f"| {preset} | {batch_size} | {name} | {value:.1f} | {value / raw:.0%} |")
        del pipe


if __name__ == "__main__":
    main()
