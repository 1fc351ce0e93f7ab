r"""Rank whole feature folders on the validation split: a cheap probe of what the fusion head's MLP reads directly,
to choose between feature sets (one view of the LLM or several, one prompt or another, the encoders pooled one way
or the other) before training a head on any of them.

    python -m bench.probe_features features/ED-two-views features/ED-three-views --results probe.json

A folder's probe input is its backbones' vectors concatenated, each as the head's MLP reads it: a layer-pooled
backbone's mean over its layers, an encoder's one vector. The probe and its score are the layer sweep's
(bench/sweep_layers.py: logistic regression on standardised features, fitted on the train split at each L2 strength
of `--c`, scored on the validation split by the metric training selects models by, the best strength kept). Only the
train and validation splits are read: the test split plays no part in the choice. The folders must hold the same
rows (extract them from the same data).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import torch

from bench.sweep_layers import add_strengths_argument
from configuration_llm_fusion import LAYER_POOLINGS, TOKENS, layer_indices
from llm_fusion_fec.evaluation.metrics import SELECTION_METRICS, load_metric
from llm_fusion_fec.features.metadata import FeatureMetadata, read_metadata
from llm_fusion_fec.features.sweep import (
    PROBE_STRENGTHS,
    SWEEP_SPLITS,
    best_probe,
    check_same_rows,
    pooling_words,
    read_split,
    strengths_words,
    swept_split,
)

ROOT = Path(__file__).resolve().parents[1]


@dataclass
class FeatureSetScore:
    """One features folder's validation score, with what its backbones read (in words) and the probe's width."""

    features: str
    backbones: list[str]
    width: int
    score: float
    c: float  # the probe's inverse L2 strength that scored best


def backbone_words(spec: dict) -> str:
    """A backbone as a feature set lists it: its name, its pooling, its prompt (two prompts differ only there) and,
    for a layer pooling, its layers."""
    prompt = f" {spec['template']!r}" if spec.get("template") else ""
    layers = f" {layer_indices(spec)}" if spec["pooling"] in LAYER_POOLINGS else ""
    return f"{spec['name']} ({pooling_words(spec)}{prompt}{layers})"


def probe_input(features: dict[str, torch.Tensor], backbones: Sequence[dict]) -> torch.Tensor:
    """The probe's input: each backbone's vector as the MLP reads it (a layer-pooled one averaged over its layers),
    concatenated in the backbones' order; float32."""
    parts = []
    for spec in backbones:
        vectors = features[spec["name"]].float()
        parts.append(vectors.mean(dim=1) if spec["pooling"] in LAYER_POOLINGS else vectors)
    return torch.cat(parts, dim=1)


def head_input(data: datasets.Dataset, metadata: FeatureMetadata) -> tuple[torch.Tensor, np.ndarray]:
    """One split's probe input (`probe_input`) and labels; token views (`--tokens`: no one vector a text) are left
    out."""
    backbones = [spec for spec in metadata.backbones if spec["pooling"] != TOKENS]
    features, labels = {}, None
    for spec in backbones:
        vectors, labels = read_split(data, spec["name"])
        features[spec["name"]] = torch.from_numpy(vectors)
    return probe_input(features, backbones), labels


def probe_features(
    features_dirs: Sequence[str | Path], cs: Sequence[float] = PROBE_STRENGTHS, device: str | None = None
) -> list[FeatureSetScore]:
    """Score each folder's whole feature set by the probe (at its best inverse L2 strength of `cs`); best first (folder
    order breaks ties)."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    scores, labels = [], None
    for folder in features_dirs:
        metadata = read_metadata(folder)
        (x_train, y_train), (x_val, y_val) = (
            head_input(swept_split(folder, split), metadata) for split in SWEEP_SPLITS
        )
        check_same_rows(labels, (y_train, y_val), folder, features_dirs[0])
        labels = (y_train, y_val)
        probe = best_probe(
            x_train.to(device),
            y_train,
            x_val.to(device),
            y_val,
            metadata.problem_type,
            cs,
            load_metric(metadata.problem_type),
        )
        backbones = [backbone_words(spec) for spec in metadata.backbones]
        scores.append(FeatureSetScore(str(folder), backbones, x_train.shape[1], probe.score, probe.c))
    return sorted(scores, key=lambda row: -row.score)


def table(scores: list[FeatureSetScore], metric: str) -> str:
    """The ranked folders as a text table, score in %, each with its backbones."""
    lines = [f"{'rank':>4}  {metric + ' (%)':>16}  {'C':>6}  {'width':>5}  features folder: backbones"]
    for rank, row in enumerate(scores, 1):
        backbones = ", ".join(row.backbones)
        lines.append(f"{rank:>4}  {100 * row.score:>16.2f}  {row.c:>6g}  {row.width:>5}  {row.features}: {backbones}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[FeatureSetScore]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "features_dirs",
        nargs="+",
        metavar="features_dir",
        help="features extracted by extract_features.py from the same data, one folder per feature set",
    )
    add_strengths_argument(parser, "each folder")
    parser.add_argument("--device", help="where the probes are fitted (default: cuda if present)")
    parser.add_argument("--results", help="also write every folder's score to this JSON file")
    args = parser.parse_args(argv)
    scores = probe_features(args.features_dirs, args.c, args.device)
    if args.results:
        Path(args.results).write_text(json.dumps([asdict(row) for row in scores], indent=2) + "\n")
    metadata = read_metadata(args.features_dirs[0])
    print(
        f"Feature sets: {SELECTION_METRICS[metadata.problem_type]} on the validation split of a logistic-regression "
        "probe of each folder's head input (each LLM view's mean over its layers and each encoder's vector, "
        f"concatenated), trained on the train split, {strengths_words(args.c)}."
    )
    print(table(scores, SELECTION_METRICS[metadata.problem_type]))
    print(f"Best: {scores[0].features}")
    return scores


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")
