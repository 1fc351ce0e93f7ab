"""Seconds per epoch and peak RSS of training the fusion head: `Trainer` (as train_fusion.py runs it) against a plain
PyTorch loop with the same model, data and batch size; and `--seeds N` trained together as one batched model against
one seed alone.

    python -m bench.bench_train               # paper size: 17,802 rows of 5 x 4096 + 2 x 1024 float16 (~800 MB)
    python -m bench.bench_train --rows 500    # a quick check
    python -m bench.bench_train --features-dir runs/reproduce/features/ED --paths trainer batched   # real features
    python -m bench.bench_train --features-dir features/ED --head paper --paths trainer trainer_ieee --epochs 3
        # the paper's head, with denormals flushed to zero (as train_fusion.py trains) and computed (the baseline)

Seeds trained one after another are independent runs of the same cost, so `--seeds N` sequentially takes N times
one seed's epoch; the batched path trains the N seeds in one `SeedStack` and is timed as it runs.

Random float16 features in the paper's shapes are written to Arrow (as extract_features.py saves them) and each
path trains in its own process reading them memory-mapped, so each peak RSS is that path's alone. Targets: the
Trainer path within 1.3x the plain loop's time, peak RSS under 2x the feature files' size.

Only the training epochs are timed (no evaluation, no checkpoints), and the fastest epoch of each path is compared
(the least disturbed by other work on the machine). Peak RSS includes the feature pages read through the memory map;
the anonymous memory reported next to it is what the process allocated itself (torch, the model, Adam's state).
"""

from __future__ import annotations

import json
import math
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np

if TYPE_CHECKING:
    from datasets import Dataset

    from configuration_llm_fusion import LLMFusionConfig


PAPER_SHAPES = {"llama": (5, 4096), "bert": (1024,), "roberta": (1024,)}
NUM_LABELS = 32
EVAL_ROWS = 10  # validation and test only have to exist


@dataclass
class BenchArguments:
    rows: int = field(
        default=17_802,
        metadata={"help": "Training rows (ED's train split has 17,802; with --features-dir: the first N)."},
    )
    epochs: int = field(default=2, metadata={"help": "Epochs timed per path (the fastest one is compared)."})
    batch_size: int = field(default=10, metadata={"help": "Batch size of both paths (paper: 10)."})
    workdir: str | None = field(default=None, metadata={"help": "Keep the features here (default: a temp folder)."})
    seeds: int = field(default=5, metadata={"help": "Seeds of the batched path (paper protocol: 5)."})
    paths: list[str] = field(
        default_factory=lambda: ["plain", "trainer", "batched"], metadata={"help": "Paths to time, in this order."}
    )
    features_dir: str | None = field(
        default=None, metadata={"help": "Time on these extracted features instead of random paper-size ones."}
    )
    head: Literal["features", "paper"] = field(
        default="features",
        metadata={
            "help": "features: the head the features' preset records; paper: the paper preset's head (the exact "
            "head: no standardisation, encoders only through the co-occurrence values)."
        },
    )
    measure: str | None = field(default=None, metadata={"help": "Internal: time one path."})


def write_features(folder: Path, rows: int) -> int:
    """Random paper-size features in the extract_features.py format; returns the train split's Arrow bytes."""
    from datasets import Array2D, ClassLabel, Dataset, DatasetDict, Features, List, Value

    from configuration_llm_fusion import PRESETS

    features = Features(
        {
            "text": Value("string"),
            "label": ClassLabel(names=[f"emotion_{i}" for i in range(NUM_LABELS)]),
            "llama": Array2D(PAPER_SHAPES["llama"], "float16"),
            "bert": List(Value("float16"), length=PAPER_SHAPES["bert"][0]),
            "roberta": List(Value("float16"), length=PAPER_SHAPES["roberta"][0]),
        }
    )

    def generate(count: int, seed: int):
        rng = np.random.default_rng(seed)
        for i in range(count):
            row = {
                name: rng.standard_normal(shape, dtype=np.float32).astype(np.float16)
                for name, shape in PAPER_SHAPES.items()
            }
            yield {"text": f"text {i}", "label": int(rng.integers(NUM_LABELS)), **row}

    cache = folder / "cache"
    splits = {
        split: Dataset.from_generator(
            generate, features=features, gen_kwargs={"count": count, "seed": seed}, cache_dir=str(cache)
        )
        for seed, (split, count) in enumerate([("train", rows), ("validation", EVAL_ROWS), ("test", EVAL_ROWS)])
    }
    DatasetDict(splits).save_to_disk(str(folder / "features"))
    metadata = {
        "dataset": "bench",
        "problem_type": "single_label_classification",
        "label_names": features["label"].names,
        "backbones": PRESETS["paper"]["backbones"],
        "feature_dtype": "float16",
    }
    (folder / "features" / "fec_features.json").write_text(json.dumps(metadata))
    return sum(path.stat().st_size for path in (folder / "features" / "train").glob("*.arrow"))


def measure(path: str, features_dir: Path, epochs: int, batch_size: int, seeds: int, rows: int, head: str) -> dict:
    """Train `epochs` epochs by `path` ("plain", "trainer", "trainer_ieee": without flushing denormals, or
    "batched": `seeds` seeds as one model); the seconds of each epoch and this process's peak RSS."""
    import torch

    from configuration_llm_fusion import PRESETS
    from llm_fusion_fec.data.splits import build_config, feature_statistics, training_splits
    from llm_fusion_fec.features.metadata import load_features
    from llm_fusion_fec.training.trainer import flush_denormals, keep_gradient_memory
    from modeling_llm_fusion import LLMFusionForSequenceClassification

    if path != "trainer_ieee":
        flush_denormals()  # as train_fusion.py does, before any parallel torch work
    device = "cuda" if torch.cuda.is_available() else "cpu"  # on a GPU both paths train there
    data, metadata = load_features(features_dir)
    options = PRESETS["paper"]["head"] if head == "paper" else metadata.head
    config = build_config(metadata, **(options or {}))
    train = training_splits(data, config)["train"]
    train = train.select(range(min(rows, len(train))))  # extracted features: the first --rows rows
    statistics = feature_statistics(train, config) if config.standardize_features else None
    keep_gradient_memory()
    if path in ("trainer", "trainer_ieee", "batched"):
        batched_seeds = seeds if path == "batched" else None
        output_dir = features_dir.parent / "trainer"
        epoch_seconds = trainer_epochs(
            config, train, statistics, epochs, batch_size, device, output_dir, batched_seeds
        )
    else:
        epoch_seconds = plain_loop_epochs(config, train, statistics, epochs, batch_size, device)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kilobytes on Linux
    # RSS counts the memory-mapped feature pages read so far; the anonymous part is what the process allocated.
    status = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    anonymous = int(status["RssAnon"].split()[0]) * 1024
    name = torch.cuda.get_device_name() if device == "cuda" else "CPU"
    parameters = sum(parameter.numel() for parameter in LLMFusionForSequenceClassification(config).parameters())
    # Adam's step alone, one seed's parameters and the stack's: printed beside the batched path's figures.
    adam = {count: adam_step_ms(count * parameters, device) for count in (1, seeds)} if path == "batched" else {}
    return {
        "epoch_seconds": epoch_seconds,
        "peak_rss_bytes": peak_rss,
        "anon_rss_bytes": anonymous,
        "device": name,
        "rows": len(train),
        "parameters": parameters,
        "adam_step_ms": adam,
    }


def adam_step_ms(parameters: int, device: str, repeats: int = 10) -> float:
    """Milliseconds of one fused Adam step over `parameters` float32 parameters: the memory traffic every training
    step pays whatever else it does (28 bytes per parameter read and written)."""
    import torch

    weights = torch.nn.Parameter(torch.randn(parameters, device=device))
    weights.grad = torch.randn_like(weights) * 1e-3
    optimizer = torch.optim.AdamW([weights], lr=1e-4, weight_decay=0.0, fused=True)
    optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(repeats):
        optimizer.step()
    if device == "cuda":
        torch.cuda.synchronize()
    return 1000 * (time.perf_counter() - start) / repeats


def trainer_epochs(
    config: LLMFusionConfig,
    train: Dataset,
    statistics: dict | None,
    epochs: int,
    batch_size: int,
    device: str,
    output_dir: Path,
    batched_seeds: int | None = None,
) -> list[float]:
    """Seconds of each epoch of `FusionTrainer` (as train_fusion.py runs it), from its first batch to its last step:
    one head, or with `batched_seeds` that many seeds as one `SeedStack`."""
    import torch
    from transformers import TrainerCallback

    from llm_fusion_fec.training.run import FusionTrainingArguments
    from llm_fusion_fec.training.trainer import FusionTrainer, SeedStack, build_model

    epoch_seconds = []

    class EpochTimer(TrainerCallback):
        def on_epoch_begin(self, args, state, control, **kwargs):
            self.start = time.perf_counter()

        def on_epoch_end(self, args, state, control, **kwargs):
            if device == "cuda":
                torch.cuda.synchronize()
            epoch_seconds.append(time.perf_counter() - self.start)

    args = FusionTrainingArguments(
        output_dir=str(output_dir),
        num_train_epochs=epochs,
        per_device_train_batch_size=batch_size,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
        disable_tqdm=True,
        logging_strategy="no",
    )
    seeds = [0] if batched_seeds is None else list(range(batched_seeds))
    models = [build_model(config, seed, statistics) for seed in seeds]
    model = models[0] if batched_seeds is None else SeedStack(models)
    FusionTrainer(model=model, args=args, train_dataset=train, callbacks=[EpochTimer()], seeds=seeds).train()
    return epoch_seconds


def plain_loop_epochs(
    config: LLMFusionConfig, train: Dataset, statistics: dict | None, epochs: int, batch_size: int, device: str
) -> list[float]:
    """Seconds of each epoch of a plain PyTorch loop training one head with the same data and batch size."""
    import torch
    from transformers import default_data_collator, set_seed

    from modeling_llm_fusion import LLMFusionForSequenceClassification

    set_seed(0)
    model = LLMFusionForSequenceClassification(config)
    loader = torch.utils.data.DataLoader(train, batch_size=batch_size, shuffle=True, collate_fn=default_data_collator)
    # The optimizer the Trainer builds by default (fused AdamW, weight decay 0 = Adam), so that only the training
    # machinery differs between the two paths.
    if statistics:
        model.set_feature_statistics(statistics)
    model.to(device).train()  # the Trainer moves the model by itself
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.0, fused=True)
    epoch_seconds = []
    for _ in range(epochs):
        start = time.perf_counter()
        for batch in loader:
            loss = model(**{key: value.to(device) for key, value in batch.items()}).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        if device == "cuda":
            torch.cuda.synchronize()
        epoch_seconds.append(time.perf_counter() - start)
    return epoch_seconds


def summarize(results: dict[str, dict], size: int, seeds: int, batch_size: int) -> dict:
    """Print each path's figures and the ratios against its baseline in the same run; return them all."""
    for path, result in results.items():
        seconds, rss, anonymous = result["epoch_seconds"], result["peak_rss_bytes"], result["anon_rss_bytes"]
        print(
            f"{path:8s} {min(seconds):8.1f} s/epoch (fastest; mean {sum(seconds) / len(seconds):.1f})   peak RSS "
            f"{rss / 2**20:7,.0f} MiB = {rss / size:.2f}x the features ({anonymous / 2**20:,.0f} MiB anonymous)"
        )
    # The fastest epochs: the least disturbed by other work on the machine.
    fastest = {path: min(result["epoch_seconds"]) for path, result in results.items()}
    device = next(iter(results.values()))["device"]
    summary = {"feature_bytes": size, **results}
    if "plain" in fastest and "trainer" in fastest:
        summary["trainer_over_plain"] = fastest["trainer"] / fastest["plain"]
        print(f"Trainer / plain loop: {summary['trainer_over_plain']:.2f}x (target <= 1.3x), on {device}")
    if "trainer" in fastest and "trainer_ieee" in fastest:
        # Denormals build up as training goes on (the Adam state of units that stop learning decays through them):
        # every epoch counts here, not the fastest.
        total = {path: sum(results[path]["epoch_seconds"]) for path in ("trainer", "trainer_ieee")}
        summary["ieee_over_flushed"] = total["trainer_ieee"] / total["trainer"]
        for path in total:
            print(f"{path} epochs: {', '.join(f'{second:.1f}' for second in results[path]['epoch_seconds'])} s")
        print(
            f"Denormals computed (trainer_ieee) / flushed to zero (trainer, as train_fusion.py runs), all epochs: "
            f"{summary['ieee_over_flushed']:.2f}x, on {device}"
        )
    if "trainer" in fastest and "batched" in fastest:
        one, batched = fastest["trainer"], fastest["batched"]
        summary["batched_over_one_seed"] = batched / one
        print(
            f"--seeds {seeds}: batched {batched:.1f} s/epoch, sequential {seeds} x {one:.1f} = "
            f"{seeds * one:.1f} s/epoch; batched / one seed: {batched / one:.2f}x (target <= 2x), "
            f"speed-up over sequential {seeds * one / batched:.2f}x, on {device}"
        )
        adam = results["batched"]["adam_step_ms"]
        steps = math.ceil(results["batched"]["rows"] / batch_size)
        print(
            f"Adam's step alone (memory traffic, the floor of every step): {seeds} seeds' parameters "
            f"{adam[str(seeds)]:.0f} ms, one seed's {adam['1']:.0f} ms; one seed's whole step "
            f"{1000 * one / steps:.0f} ms ({steps} steps an epoch)"
        )
    return summary


def main(argv: list[str] | None = None) -> dict:
    from transformers import HfArgumentParser

    (args,) = HfArgumentParser(BenchArguments).parse_args_into_dataclasses(args=argv)
    if args.measure:
        features = Path(args.features_dir or Path(args.workdir) / "features")
        print(
            json.dumps(measure(args.measure, features, args.epochs, args.batch_size, args.seeds, args.rows, args.head))
        )
        return {}
    with tempfile.TemporaryDirectory() as temporary:
        workdir = Path(args.workdir or temporary)
        if args.features_dir:
            features = Path(args.features_dir)
            size = sum(path.stat().st_size for path in (features / "train").glob("*.arrow"))
            print(f"{features}: {size / 2**20:,.0f} MiB of Arrow in the train split")
        else:
            start = time.perf_counter()
            size = write_features(workdir, args.rows)
            features = workdir / "features"
            print(
                f"{args.rows:,} rows of 5 x 4096 + 2 x 1024 float16: {size / 2**20:,.0f} MiB of Arrow, written in "
                f"{time.perf_counter() - start:.0f} s"
            )
        results = {}
        for path in args.paths:
            command = [
                sys.executable,
                __file__,
                "--measure",
                path,
                "--workdir",
                str(workdir),
                "--features_dir",
                str(features),
                "--epochs",
                str(args.epochs),
                "--batch_size",
                str(args.batch_size),
                "--seeds",
                str(args.seeds),
                "--rows",
                str(args.rows),
                "--head",
                args.head,
            ]
            output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
            results[path] = json.loads(output.strip().splitlines()[-1])
    return summarize(results, size, args.seeds, args.batch_size)


if __name__ == "__main__":
    main()
