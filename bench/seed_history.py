"""How each seed of a training run stopped: every validation evaluation, read from the run's `results.json`.

    python bench/seed_history.py outputs/llm-fusion-ed/results.json

One line a seed: `epoch: loss / selection metric`, `*` where a stopping metric improved (which resets the
patience), then the epochs run, the epoch kept and the test scores of the kept checkpoint.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def seed_lines(results: dict) -> list[str]:
    """One line per seed of a `results.json` record (`RunResults.to_dict()`)."""
    metric = results["selection_metric"]
    lines = []
    for run in results["runs"]:
        evaluations = ", ".join(
            f"{entry['epoch']:g}: {entry['validation']['loss']:.4f} / {entry['validation'][metric]:.4f}"
            + ("*" if entry["improved"] else "")
            for entry in run["history"]
        )
        test = " / ".join(f"{100 * run['test'][name]:.2f}" for name in ("accuracy", metric) if name in run["test"])
        lines.append(
            f"seed {run['seed']}: {evaluations} -> {run['epochs']:g} epochs run, epoch {run['best_epoch']:g} kept, "
            f"test {test}"
        )
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results", type=Path, help="a results.json written by train_fusion.py")
    results = json.loads(parser.parse_args(argv).results.read_text())
    metric = results["selection_metric"]
    print(f"Every evaluation on validation (epoch: loss / {metric}, * = a stopping metric improved):")
    print("\n".join(seed_lines(results)))


if __name__ == "__main__":
    main()
