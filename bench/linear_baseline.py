r"""What the fusion head adds over a linear classifier of the same features: logistic regression on the head's MLP
input (each LLM view's mean over its layers and each encoder's vector, concatenated: bench/probe_features.py's
probe), its L2 strength (and, multi-label, its threshold) chosen on the validation split, the test split scored once.

    python -m bench.linear_baseline features/ED-two-views-mean features/ED-feeling-two-views-mean

The scores are the metric module's, as train_fusion.py reports a head's: compare them with the head's test row.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets

from bench.probe_features import head_input
from bench.sweep_layers import add_strengths_argument
from llm_fusion_fec.evaluation.metrics import SELECTION_METRICS, load_metric, score
from llm_fusion_fec.features.metadata import read_metadata
from llm_fusion_fec.features.sweep import (
    PROBE_STRENGTHS,
    SWEEP_SPLITS,
    Probe,
    best_probe,
    strengths_words,
    swept_split,
)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class LinearBaseline:
    """A features folder's linear baseline: what validation chose, its validation score, and its test scores."""

    features: str
    c: float
    threshold: float | None  # multi-label only
    validation: float  # by the selection metric
    test: dict[str, float]


def fit_linear_baseline(
    features_dir: str | Path, cs: Sequence[float] = PROBE_STRENGTHS
) -> tuple[LinearBaseline, Probe]:
    """Fit the probe on the train split at each strength of `cs`, keep the best on validation, score test once;
    the figures and the fitted probe."""
    metadata = read_metadata(features_dir)
    (x_train, y_train), (x_val, y_val) = (head_input(swept_split(features_dir, s), metadata) for s in SWEEP_SPLITS)
    metric = load_metric(metadata.problem_type)
    probe = best_probe(x_train, y_train, x_val, y_val, metadata.problem_type, cs, metric)
    x_test, y_test = head_input(datasets.load_from_disk(str(Path(features_dir) / "test")), metadata)
    test = score(metric, probe.logits(x_test), y_test, probe.threshold)
    multi_label = metadata.problem_type == "multi_label_classification"
    baseline = LinearBaseline(str(features_dir), probe.c, probe.threshold if multi_label else None, probe.score, test)
    return baseline, probe


def linear_baseline(features_dir: str | Path, cs: Sequence[float] = PROBE_STRENGTHS) -> LinearBaseline:
    """`fit_linear_baseline`'s figures."""
    return fit_linear_baseline(features_dir, cs)[0]


def main(argv: list[str] | None = None) -> list[LinearBaseline]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features_dirs", nargs="+", metavar="features_dir", help="features from extract_features.py")
    add_strengths_argument(parser, "each folder")
    parser.add_argument("--results", help="also write each folder's figures to this JSON file")
    args = parser.parse_args(argv)
    rows = [linear_baseline(folder, args.c) for folder in args.features_dirs]
    if args.results:
        Path(args.results).write_text(json.dumps([asdict(row) for row in rows], indent=2) + "\n")
    problem_type = read_metadata(args.features_dirs[0]).problem_type
    print(
        f"Linear baseline: logistic regression on each folder's head input, fitted on the train split, "
        f"{strengths_words(args.c)} by validation {SELECTION_METRICS[problem_type]}; test split, %."
    )
    for row in rows:
        threshold = "" if row.threshold is None else f", threshold {row.threshold:g}"
        test = ", ".join(f"{name} {100 * value:.2f}" for name, value in row.test.items())
        print(f"{row.features}: C {row.c:g}{threshold}, validation {100 * row.validation:.2f}; test {test}")
    return rows


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")
