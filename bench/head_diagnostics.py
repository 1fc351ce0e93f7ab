"""What the fusion head sees at initialisation: the scale of each fused input and how many units are saturated or dead.

    python -m bench.head_diagnostics runs/reproduce/features/ED            # the exact head and the fixed head
    python -m bench.head_diagnostics features/ED --rows 4000 --seeds 42 43 44 45 46

For each head configuration and seed, on the first --rows training rows (forward passes only, dropout off):

- the co-occurrence values V V^T before the power normalisation `2*sigmoid(x) - 1`: their median |x|, the share
  with |x| > 5 (the normalised value within 1.4% of +-1, its gradient under 3% of its largest) and with |x| > 17
  (exactly +-1 in float32: no gradient at all);
- the raw LLM mean vector that goes to the MLP directly: its median and largest |value| and its norm;
- the first MLP layer: the share of its units that are dead (ReLU output 0 for every row) and the share of its
  input that comes from the co-occurrence block (by squared norm);
- each LLM layer projection (Linear+ReLU): the share of dead units.
"""

from __future__ import annotations

import argparse

import torch

from llm_fusion_fec.data.splits import build_config, feature_statistics, training_splits
from llm_fusion_fec.features.metadata import load_features
from llm_fusion_fec.training.trainer import build_model

HEADS = {
    "exact (paper)": {"standardize_features": False, "encoders_in_tail": False},
    "fixed (standardised, encoders in tail)": {"standardize_features": True, "encoders_in_tail": True},
}


@torch.no_grad()
def diagnose(model, rows: dict[str, torch.Tensor]) -> dict[str, float]:
    model.eval()
    stacked, tails = model.fusion_vectors(**rows)
    llm_vectors = stacked[:, : stacked.shape[1] - len(model.encoder_projections)]
    raw = model.config.sigma * (stacked @ stacked.transpose(1, 2))  # what 2*sigmoid(x) - 1 receives
    fused = model.fuse(**rows)
    first = model.classifier[0][0](fused)
    co_occurrence = fused[:, : raw.shape[1] * raw.shape[2]]
    return {
        "co-occurrence median |x|": raw.abs().median().item(),
        "co-occurrence share |x| > 5": (raw.abs() > 5).float().mean().item(),
        "co-occurrence share |x| > 17 (exactly +-1)": (raw.abs() > 17).float().mean().item(),
        "LLM mean: median |value|": tails[0].abs().median().item(),
        "LLM mean: largest |value|": tails[0].abs().max().item(),
        "LLM mean: norm": tails[0].norm(dim=1).median().item(),
        "MLP layer 1: dead units": (first <= 0).all(dim=0).float().mean().item(),
        "MLP input share of the co-occurrence block": (co_occurrence.square().sum(1) / fused.square().sum(1))
        .median()
        .item(),
        "LLM projections: dead units": (llm_vectors <= 0).all(dim=0).float().mean().item(),
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
