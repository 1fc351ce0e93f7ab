"""How the fusion head is scored: the repository's metric module, the decisions it scores, the multi-label threshold
chosen on validation, and the validation loss the stopping rule reads."""

from __future__ import annotations

from pathlib import Path

import evaluate
import numpy as np
import torch
from torch import nn

from modeling_llm_fusion import decide

METRICS_PATH = Path(__file__).resolve().parent / "metrics" / "fec_metrics"
# The scores of the metric module, by problem type.
METRIC_KEYS = {
    "single_label_classification": ("accuracy", "weighted_f1", "macro_f1"),
    "multi_label_classification": ("micro_f1", "macro_f1"),
}
# The validation metric that keeps a checkpoint and picks the saved seed when --metric_for_best_model is "auto":
# the paper's headline metric for single-label data, the usual GoEmotions one for multi-label data.
SELECTION_METRICS = {"single_label_classification": "weighted_f1", "multi_label_classification": "macro_f1"}
# Multi-label decision thresholds tried on validation.
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


def load_metric(problem_type: str) -> evaluate.EvaluationModule:
    """The repository's metric module (`metrics/fec_metrics`), loaded by path: no Hub access needed."""
    return evaluate.load(str(METRICS_PATH), config_name=problem_type)


def score(metric: evaluate.EvaluationModule, logits: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    problem_type = metric.config_name
    references = labels.astype(np.int32)
    decisions = decide(torch.from_numpy(logits), problem_type, threshold).numpy()
    return metric.compute(predictions=decisions, references=references)


def choose_threshold(metric: evaluate.EvaluationModule, logits: np.ndarray, labels: np.ndarray, key: str) -> float:
    """The multi-label threshold with the best validation `key` score (ties: the one nearest 0.5)."""
    scores = {threshold: score(metric, logits, labels, threshold)[key] for threshold in THRESHOLDS}
    return max(THRESHOLDS, key=lambda t: (scores[t], -abs(t - 0.5)))


def validation_loss(logits: np.ndarray, labels: np.ndarray, problem_type: str) -> float:
    """The loss the model trains on, averaged over rows (what `Trainer` reports as eval_loss for one model)."""
    logits = torch.from_numpy(logits).float()
    if problem_type == "multi_label_classification":
        return nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels).float()).item()
    return nn.functional.cross_entropy(logits, torch.from_numpy(labels).long()).item()


__all__ = ["METRIC_KEYS", "SELECTION_METRICS", "THRESHOLDS", "choose_threshold", "load_metric", "score",
           "validation_loss"]  # fmt: skip
