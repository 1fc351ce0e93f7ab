"""Would a threshold per label beat the one multi-label threshold training chooses? Both are chosen on validation;
the test split is scored once with each.

    python -m bench.per_label_thresholds outputs/llm-fusion-goeml features/GoEML-prompt

A trained multi-label model (one seed or an ensemble) decides `sigmoid(logit) > config.threshold` for every label,
the threshold chosen on validation among 0.05, ..., 0.95 by macro-F1. Here each label gets its own threshold from
the same grid, the one with the best validation F1 of that label (ties: nearest 0.5), and both rules are scored on
validation and test with the repository's metric module.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification

from llm_fusion_fec.data.splits import training_splits
from llm_fusion_fec.evaluation.metrics import choose_threshold, load_metric, score
from llm_fusion_fec.features.metadata import load_features

ROOT = Path(__file__).resolve().parents[1]

BATCH = 512


def split_logits(model, split) -> tuple[np.ndarray, np.ndarray]:
    """The model's logits on one split of its features, and the split's multi-hot labels."""
    logits, labels = [], []
    for start in range(0, len(split), BATCH):
        batch = split[start : start + BATCH]
        labels.append(batch.pop("labels").numpy())
        with torch.inference_mode():
            logits.append(model(**batch).logits.float().numpy())
    return np.concatenate(logits), np.concatenate(labels)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model", help="a multi-label model folder written by train_fusion.py")
    parser.add_argument("features", help="the features folder it was trained on")
    args = parser.parse_args(argv)
    model = AutoModelForSequenceClassification.from_pretrained(args.model, trust_remote_code=True, dtype=torch.float32)
    if model.config.problem_type != "multi_label_classification":
        raise SystemExit(f"error: {args.model} is a {model.config.problem_type} model; thresholds are multi-label.")
    splits = training_splits(load_features(args.features)[0], model.config)
    metric = load_metric(model.config.problem_type)
    validation, test = (split_logits(model.eval(), splits[name]) for name in ("validation", "test"))
    per_label = torch.tensor(
        [
            choose_threshold(metric, validation[0][:, [j]], validation[1][:, [j]], "macro_f1")[0]
            for j in range(model.config.num_labels)
        ]
    )
    print(f"{args.model} on {args.features}: macro-F1 / micro-F1 (%)")
    # `decide` compares sigmoid scores with the threshold; a tensor of one threshold per label broadcasts over rows.
    for name, threshold in (
        (f"one threshold, {model.config.threshold:g} (training's choice)", model.config.threshold),
        ("a threshold per label", per_label),
    ):
        scores = {
            split: score(metric, *logits, threshold) for split, logits in (("validation", validation), ("test", test))
        }
        print(
            f"{name}: "
            + ", ".join(
                f"{split} {100 * s['macro_f1']:.2f} / {100 * s['micro_f1']:.2f}" for split, s in scores.items()
            )
        )
    print(
        "per-label thresholds: "
        + ", ".join(f"{name} {t:g}" for name, t in zip(model.config.id2label.values(), per_label.tolist()))
    )


if __name__ == "__main__":
    main()
