"""What the fusion head sees at initialisation: the scale of each fused input and how many units are saturated or dead.

    python bench/head_diagnostics.py runs/reproduce/features/ED            # the exact head and the fixed head
    python bench/head_diagnostics.py features/ED --rows 4000 --seeds 42 43 44 45 46

For each head configuration and seed, on the first --rows training rows (forward passes only, dropout off):

- the co-occurrence values V V^T before the power normalisation `2*sigmoid(x) - 1`: their median |x| and the share
  with |x| > 5, where the normalised value is within 1% of +-1 and its gradient under 1% of its largest;
- the raw LLM mean vector that goes to the MLP directly: its median and largest |value| and its norm;
- the first MLP layer: the share of its units that are dead (ReLU output 0 for every row) and the share of its
  input that comes from the co-occurrence block (by squared norm);
- each LLM layer projection (Linear+ReLU): the share of dead units.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extract_features import load_features  # noqa: E402
from fusion_data import build_config, feature_statistics, training_splits  # noqa: E402
from fusion_trainer import build_model  # noqa: E402

HEADS = {
    "exact (paper)": {"standardize_features": False, "encoders_in_tail": False},
    "fixed (standardised, encoders in tail)": {"standardize_features": True, "encoders_in_tail": True},
}


@torch.no_grad()
def diagnose(model, rows: dict[str, torch.Tensor]) -> dict[str, float]:
    model.eval()
    config = model.config
    features = model._features(rows)
    if config.standardize_features:
        features = {name: (value - getattr(model, f"{name}_mean")) / getattr(model, f"{name}_std")
                    for name, value in features.items()}  # fmt: skip
    llm = next(spec["name"] for spec in config.backbones if spec["pooling"].startswith("layer"))
    projected = [projection(features[llm][:, i]) for i, projection in enumerate(model.layer_projections[llm])]
    dead_projection = torch.stack([(p <= 0).all(dim=0).float().mean() for p in projected]).mean().item()
    fused = model.fuse(**rows)
    vectors = len(projected) + len(model.encoder_projections)
    co_occurrence_normalised = fused[:, : vectors * vectors]
    raw = torch.special.logit((co_occurrence_normalised + 1) / 2, eps=1e-7) / config.sigma
    tail = features[llm].mean(dim=1)
    first = model.classifier[0][0](fused)
    block = co_occurrence_normalised.square().sum(dim=1) / fused.square().sum(dim=1)
    return {
        "co-occurrence median |x|": raw.abs().median().item(),
        "co-occurrence share |x| > 5": (raw.abs() > 5).float().mean().item(),
        "LLM mean: median |value|": tail.abs().median().item(),
        "LLM mean: largest |value|": tail.abs().max().item(),
        "LLM mean: norm": tail.norm(dim=1).median().item(),
        "MLP layer 1: dead units": (first <= 0).all(dim=0).float().mean().item(),
        "MLP input share of the co-occurrence block": block.median().item(),
        "LLM projections: dead units": dead_projection,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("features_dir")
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44])
    args = parser.parse_args()
    data, metadata = load_features(args.features_dir)
    for name, head in HEADS.items():
        config = build_config(metadata, **head)
        train = training_splits(data, config)["train"]
        statistics = feature_statistics(train, config) if config.standardize_features else None
        rows = train[: args.rows]
        rows = {key: value for key, value in rows.items() if key != "labels"}
        results = [diagnose(build_model(config, seed, statistics), rows) for seed in args.seeds]
        print(f"\n## {name}: {len(args.seeds)} seeds at initialisation, {args.rows} training rows")
        for key in results[0]:
            values = [result[key] for result in results]
            print(f"{key:45s} " + "  ".join(f"{value:10.4g}" for value in values))


if __name__ == "__main__":
    main()
