"""Choose the token head on validation: one features folder with token views (`extract_features.py --tokens`),
trained with each head, scored on validation only.

    python -m bench.token_head features/ED-tokens --seeds 3 --queries 1 2 4 --output token_head_ed.json
    python -m bench.token_head features/ED-tokens --seeds 3 -- --learning_rate 3e-4   # train_fusion.py flags after --

The heads: `--token_pooling none` (the token views left out: the head as before, on the same pooled views) and
`--token_pooling attention` with each `--queries` number of learned queries per token view. Every head trains its
seeds one after another as `train_fusion.py` trains them (the features' recipe, or the flags after `--`), and the
kept checkpoint of each seed is scored on the validation split; the test split is never read (each seed's own
scoring reads the validation split in its place). One line a head: its validation selection metric and accuracy
(mean +- population std over the seeds, %), its epochs and its seconds a seed, best head first.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np


def head_variants(queries: list[int]) -> list[dict]:
    """The train_fusion.py options of each head compared: the head without the token views, then the attention head
    with each number of queries."""
    return [{"token_pooling": "none"}, *({"token_pooling": "attention", "attention_queries": q} for q in queries)]


def variant_name(options: dict) -> str:
    if options["token_pooling"] == "none":
        return "no token views"
    return f"attention, {options['attention_queries']} quer{'y' if options['attention_queries'] == 1 else 'ies'}"


def train_variant(features_dir: str, options: dict, seeds: int, work_dir: Path, flags: list[str]) -> dict:
    """The seeds of one head, trained and scored on validation only: their validation scores, epochs and seconds."""
    from llm_fusion_fec.commands.train import parse_args
    from llm_fusion_fec.training.run import prepare, train_seeds

    folder = work_dir / variant_name(options).replace(", ", "-").replace(" ", "-")
    argv = ["--features_dir", features_dir, "--output_dir", str(folder), "--seeds", str(seeds), *flags]
    argv += [f"--{key}={value}" for key, value in options.items()]
    args, training_args = parse_args([*argv, "--disable_tqdm", "true", "--report_to", "none"])
    setup = prepare(args, training_args)
    setup.data["test"] = setup.data["validation"]  # the choice reads validation only
    rows = []
    for seed in range(training_args.seed, training_args.seed + seeds):
        start = time.perf_counter()
        ((result, _),) = train_seeds(setup, training_args, [seed], folder / "runs")
        rows.append({"seed": seed, "validation": result.validation, "epochs": result.epochs})
        rows[-1]["seconds"] = round(time.perf_counter() - start, 1)
    return {"head": variant_name(options), "options": options, "selection": setup.rule.selection, "seeds": rows}


def summary_line(record: dict) -> str:
    """A head's line: validation selection metric and accuracy (mean +- std over seeds, %), epochs, s a seed."""
    cells = []
    for metric in dict.fromkeys([record["selection"], "accuracy"]):
        values = [100 * row["validation"][metric] for row in record["seeds"] if metric in row["validation"]]
        if values:
            cells.append(f"{metric} {np.mean(values):.2f} +- {np.std(values):.2f}")
    epochs = np.mean([row["epochs"] for row in record["seeds"]])
    seconds = np.mean([row["seconds"] for row in record["seeds"]])
    return f"{record['head']:24s} validation {', '.join(cells)}; {epochs:.1f} epochs, {seconds:.0f} s a seed"


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features_dir", help="a features folder extracted with --tokens")
    parser.add_argument("--seeds", type=int, default=3, help="seeds a head (default 3)")
    parser.add_argument("--queries", type=int, nargs="+", default=[1, 2], help="learned queries to try (default 1 2)")
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/token-head"), help="where the runs go")
    parser.add_argument("--output", type=Path, help="write the records as JSON here too")
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = argv[argv.index("--") + 1 :] if "--" in argv else []  # train_fusion.py flags for every head
    options = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    records = [
        train_variant(options.features_dir, variant, options.seeds, options.work_dir, flags)
        for variant in head_variants(options.queries)
    ]

    def selection(record: dict) -> float:
        return np.mean([row["validation"][record["selection"]] for row in record["seeds"]])

    for record in sorted(records, key=selection, reverse=True):
        print(summary_line(record))
    if options.output:
        options.output.write_text(json.dumps(records, indent=2) + "\n")
    return records


if __name__ == "__main__":
    main()
