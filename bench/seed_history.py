"""How each seed of a training run stopped: every validation evaluation, read from the run's `results.json`.

    python -m bench.seed_history outputs/llm-fusion-ed/results.json
    python -m bench.seed_history outputs/llm-fusion-ed/results.json --reaching 0.10   # when each seed left the prior
    python -m bench.seed_history outputs/llm-fusion-ed/runs/seed-42/result.json   # one finished seed

One line a seed: `epoch: loss / selection metric`, `*` where a stopping metric improved (which resets the
patience), then the epochs run, the epoch kept and the test scores of the kept checkpoint. `--reaching LEVEL` adds
the first epoch whose validation selection metric reached LEVEL (a head at the label prior scores near 0).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def first_epoch_reaching(run: dict, metric: str, level: float) -> float | None:
    """The first evaluated epoch of a seed's `history` whose validation `metric` is at least `level`."""
    return next((entry["epoch"] for entry in run["history"] if entry["validation"][metric] >= level), None)


def seed_lines(results: dict, reaching: float | None = None) -> list[str]:
    """One line per seed of a `results.json` record (`RunResults.to_dict()`)."""
    metric = results["selection_metric"]
    lines = []
    for run in results["runs"]:
        evaluations = ", ".join(
            f"{entry['epoch']:g}: {entry['validation']['loss']:.4f} / {entry['validation'][metric]:.4f}"
            + (f" @{entry['validation']['threshold']:g}" if "threshold" in entry["validation"] else "")
            + ("*" if entry["improved"] else "")
            for entry in run["history"]
        )
        test = " / ".join(f"{100 * run['test'][name]:.2f}" for name in ("accuracy", metric) if name in run["test"])
        line = (
            f"seed {run['seed']}: {evaluations} -> {run['epochs']:g} epochs run, "
            f"epoch {run['best_epoch']:g} kept, test {test}"
        )
        if reaching is not None:
            epoch = first_epoch_reaching(run, metric, reaching)
            line += f"; {metric} first >= {reaching:g} at epoch {'never' if epoch is None else f'{epoch:g}'}"
        lines.append(line)
    return lines


def as_run_results(record: dict) -> dict:
    """A `results.json` record as it is; one seed's `result.json` (`runs/seed-N/`) as a record of that seed alone,
    its selection metric read from its validation scores (weighted-F1 single-label, macro-F1 multi-label)."""
    if "runs" in record:
        return record
    metric = "weighted_f1" if "weighted_f1" in record["validation"] else "macro_f1"
    return {"selection_metric": metric, "runs": [record]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "results", type=Path, help="a results.json written by train_fusion.py, or one seed's runs/seed-N/result.json"
    )
    parser.add_argument("--reaching", type=float, help="also print the first epoch whose metric reached this")
    args = parser.parse_args(argv)
    results = as_run_results(json.loads(args.results.read_text()))
    metric = results["selection_metric"]
    print(
        f"Every evaluation on validation (epoch: loss / {metric} [@ its multi-label threshold], * = a stopping "
        "metric improved):"
    )
    print("\n".join(seed_lines(results, args.reaching)))


if __name__ == "__main__":
    main()
