"""Choose the `fast` training recipe on validation: one seed of each candidate (batch size, learning rate, epochs;
warm-up, cosine decay and weight decay as in `llm_fusion_fec.training.protocols`) on the same features, ranked by the
kept checkpoint's validation weighted-F1.

    python -m bench.choose_fast_recipe features/ED-small --output bench/results/fast_recipe_ed.txt
    python -m bench.choose_fast_recipe features/GoE-small --candidates 512,1e-3,8 512,1e-3,16 ...

Resumable: each candidate's run is a model folder under `--work-dir`, reused when it is complete. Training scores
each seed's test split as it always does; this script reads validation scores only, and shows no test score.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from bench.bench_recipes import run_row

# batch size, learning rate, epochs
CANDIDATES = [(512, 1e-3, 8), (512, 2e-3, 8), (512, 4e-3, 8), (256, 2e-3, 8), (512, 2e-3, 12), (1024, 4e-3, 8)]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features_dir")
    parser.add_argument("--work-dir", default="runs/fast-recipe", type=Path)
    parser.add_argument("--output", type=Path, help="also write the table here")
    parser.add_argument(
        "--candidates",
        nargs="+",
        metavar="BATCH,LR,EPOCHS",
        type=lambda item: (int(item.split(",")[0]), float(item.split(",")[1]), int(item.split(",")[2])),
        default=CANDIDATES,
        help="the recipes to try (default: " + " ".join(f"{b},{lr:g},{e}" for b, lr, e in CANDIDATES) + ")",
    )
    args = parser.parse_args(argv)
    header = "| batch | learning rate | epochs (max) | epochs run | kept epoch | validation weighted-F1 | accuracy |"
    lines = [header + " wall s |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    best = None
    for batch, learning_rate, epochs in args.candidates:
        results, wall = run_row(
            f"b{batch}-lr{learning_rate:g}-e{epochs}",
            args.features_dir,
            args.work_dir,
            protocol="fast",
            per_device_train_batch_size=batch,
            learning_rate=learning_rate,
            num_train_epochs=epochs,
        )
        seed = results.runs[0]
        score = seed.validation["weighted_f1"]
        lines.append(
            f"| {batch} | {learning_rate:g} | {epochs} | {seed.epochs:g} | {seed.best_epoch:g} | {100 * score:.2f} | "
            f"{100 * seed.validation['accuracy']:.2f} | {wall:.0f} |"
        )
        print(lines[-1], flush=True)
        if best is None or score > best[0]:
            best = (score, batch, learning_rate, epochs)
    lines.append(f"\nBest on validation: batch {best[1]}, learning rate {best[2]:g}, {best[3]} epochs.")
    print("\n".join(lines))
    if args.output:
        args.output.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
