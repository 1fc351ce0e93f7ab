"""The training recipes side by side on the same features: the paper's protocol (one seed by default; `--paper-seeds
5` for its full 5 seeds, about an hour on a 2-core CPU) and the `fast` recipe's 5 seeds and their ensemble, trained
one after another and together (`SeedStack`), with each row's floor: the multiply-adds it ran (the head's forward
and backward over the training rows and the epochs run, the forward over validation at each evaluation and over
test once) at this machine's dense matmul rate, measured in the same run.

    python -m bench.bench_recipes features/ED-small --output bench/results/recipes_ed.txt

Resumable: each row is a model folder under `--work-dir`, its finished seeds reused (`--resume_from_checkpoint`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from llm_fusion_fec.evaluation.results import RunResults
from llm_fusion_fec.features.metadata import read_metadata
from llm_fusion_fec.training.run import train


def head_macs_per_row(config) -> int:
    """Multiply-adds of one forward pass of the head for one row: every Linear layer, and the co-occurrence matrix."""
    from modeling_llm_fusion import LLMFusionForSequenceClassification

    model = LLMFusionForSequenceClassification(config)
    linears = sum(m.in_features * m.out_features for m in model.modules() if isinstance(m, torch.nn.Linear))
    vectors = sum(
        spec["num_layers"] if spec["pooling"] in ("layer_mean", "layer_last_token") else 1 for spec in config.backbones
    )
    return linears + vectors * vectors * config.fusion_dim


def matmul_rate(rows: int, inner: int, outer: int, seconds: float = 3.0) -> float:
    """Dense float32 matmul FLOP/s at the head's size on this machine (the best of repeated timings)."""
    a, b = torch.randn(rows, inner), torch.randn(inner, outer)
    best, deadline = float("inf"), time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(10):
            torch.mm(a, b)
        best = min(best, (time.perf_counter() - start) / 10)
    return 2 * rows * inner * outer / best


def run_row(name: str, features_dir: str, work_dir: Path, **options) -> tuple[RunResults, float]:
    output = work_dir / name
    if (output / "results.json").is_file() and (output / "wall.json").is_file():
        return RunResults.load(output / "results.json"), json.loads((output / "wall.json").read_text())["wall_s"]
    start = time.perf_counter()
    results = train(
        features_dir=features_dir,
        output_dir=str(output),
        overwrite_output_dir=True,
        report_to="none",
        disable_tqdm=True,
        resume_from_checkpoint="true",
        **options,
    )
    wall = time.perf_counter() - start
    (output / "wall.json").write_text(json.dumps({"wall_s": wall}))
    return results, wall


def main(argv: list[str] | None = None) -> None:
    from llm_fusion_fec.data.splits import build_config

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features_dir")
    parser.add_argument("--paper-seeds", type=int, default=1)
    parser.add_argument("--work-dir", default="runs/bench-recipes", type=Path)
    parser.add_argument("--output", type=Path, help="also write the table here")
    args = parser.parse_args(argv)

    metadata = read_metadata(args.features_dir)
    config = build_config(metadata, **metadata.head)
    macs = head_macs_per_row(config)
    widest = max(config.backbones, key=lambda spec: spec["hidden_size"])
    rate = matmul_rate(512, widest["hidden_size"], config.fusion_dim)
    rows = metadata.rows
    lines = [
        f"Features: {args.features_dir} ({metadata.dataset_name}; train {rows['train']}, validation "
        f"{rows['validation']}, test {rows['test']} rows); head forward {macs / 1e6:.2f} M multiply-adds a row; "
        f"dense float32 matmul rate here {rate / 1e9:.1f} GFLOP/s; {torch.get_num_threads()} threads.",
        "",
        "| row | wall s | epochs a seed | test accuracy | test weighted-F1 | ensemble acc / wF1 | floor s | x floor |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    paper_name = f"paper protocol, {args.paper_seeds} seed{'s' if args.paper_seeds > 1 else ''}"
    rows_to_run = [
        (paper_name, {"protocol": "paper", "seeds": args.paper_seeds, "ensemble": args.paper_seeds > 1}),
        (
            "fast, 5 seeds one after another + ensemble",
            {"protocol": "fast", "seeds": 5, "ensemble": True, "batch_seeds": False},
        ),
        (
            "fast, 5 seeds together (SeedStack) + ensemble",
            {"protocol": "fast", "seeds": 5, "ensemble": True, "batch_seeds": True},
        ),
    ]
    for name, options in rows_to_run:
        folder = name.split(",")[0].replace(" ", "-") + f"-{options['seeds']}-{options.get('batch_seeds', False)}"
        results, wall = run_row(folder, args.features_dir, args.work_dir, **options)
        epochs = [run.epochs for run in results.runs]
        evaluations = sum(len(run.history) for run in results.runs)
        flops = (
            2
            * macs
            * (3 * rows["train"] * sum(epochs) + rows["validation"] * evaluations + rows["test"] * len(epochs))
        )
        floor = flops / rate
        accuracy = [100 * run.test["accuracy"] for run in results.runs]
        weighted = [100 * run.test["weighted_f1"] for run in results.runs]

        def mean_std(values: list[float]) -> str:
            return (
                f"{statistics.mean(values):.2f} +- {statistics.pstdev(values):.2f}"
                if len(values) > 1
                else f"{values[0]:.2f}"
            )

        ensemble = (
            f"{100 * results.ensemble.test['accuracy']:.2f} / {100 * results.ensemble.test['weighted_f1']:.2f}"
            if results.ensemble
            else "-"
        )
        lines.append(
            f"| {name} | {wall:.0f} | {statistics.mean(epochs):.1f} | {mean_std(accuracy)} | {mean_std(weighted)} | "
            f"{ensemble} | {floor:.0f} | {wall / floor:.1f}x |"
        )
        print(lines[-1], flush=True)
    print("\n".join(lines))
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
