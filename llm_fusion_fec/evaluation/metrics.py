"""How the fusion head is scored: the repository's metric module, the decisions it scores, the multi-label threshold
chosen on validation, and the validation loss the stopping rule reads."""

from __future__ import annotations

from pathlib import Path

import evaluate
import numpy as np
import torch
from torch import nn

from modeling_llm_fusion import decide

METRICS_PATH = Path(__file__).resolve().parent / "fec_metrics"
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
    """The repository's metric module (`fec_metrics/` beside this file), loaded by path: no Hub access needed."""
    return evaluate.load(str(METRICS_PATH), config_name=problem_type)


def score(metric: evaluate.EvaluationModule, logits: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    """The metric module's scores of `logits` decided at `threshold`, by the module's own numpy code (`_compute`):
    `metric.compute` first writes every row through an Arrow cache file, about 120 ms a call on multi-label
    validation (5,426 rows x 28 labels) against under 1 ms, and choosing a threshold calls it 19 times a probe or
    an evaluation."""
    references = labels.astype(np.int32)
    decisions = decide(torch.from_numpy(logits), metric.config_name, threshold).numpy()
    return metric._compute(predictions=decisions, references=references)


def choose_threshold(
    metric: evaluate.EvaluationModule, logits: np.ndarray, labels: np.ndarray, key: str
) -> tuple[float, dict]:
    """The multi-label threshold with the best validation `key` score (ties: the one nearest 0.5), and the scores at
    it (already computed: no need to score again)."""
    scores = {threshold: score(metric, logits, labels, threshold) for threshold in THRESHOLDS}
    best = max(THRESHOLDS, key=lambda t: (scores[t][key], -abs(t - 0.5)))
    return best, scores[best]


def selection_metric(name: str | None, problem_type: str) -> str:
    """The validation metric that keeps checkpoints and picks the saved seed (`--metric_for_best_model`; "auto": the
    data's headline score)."""
    metric = SELECTION_METRICS[problem_type] if name in (None, "auto") else name.removeprefix("eval_")
    allowed = ("loss", *METRIC_KEYS[problem_type])
    if metric not in allowed:
        raise ValueError(f"--metric_for_best_model {metric!r} is not a score of {problem_type}; allowed: {allowed}.")
    return metric


def stopping_metrics(names: list[str] | None, problem_type: str) -> list[str]:
    """The validation metrics whose improvement resets the patience (`--early_stopping_metrics`; "auto": loss and the
    data's headline score, the original's rule)."""
    if not names or names == ["auto"]:
        return ["loss", SELECTION_METRICS[problem_type]]
    allowed = ("loss", *METRIC_KEYS[problem_type])
    unknown = [metric for metric in names if metric not in allowed]
    if unknown:
        raise ValueError(f"--early_stopping_metrics {unknown} are not scores of {problem_type}; allowed: {allowed}.")
    return list(dict.fromkeys(names))


def validation_loss(logits: np.ndarray, labels: np.ndarray, problem_type: str) -> float:
    """The loss the model trains on, averaged over rows (what `Trainer` reports as eval_loss for one model)."""
    logits = torch.from_numpy(logits).float()
    if problem_type == "multi_label_classification":
        return nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels).float()).item()
    return nn.functional.cross_entropy(logits, torch.from_numpy(labels).long()).item()


__all__ = [
    "METRIC_KEYS",
    "SELECTION_METRICS",
    "THRESHOLDS",
    "choose_threshold",
    "load_metric",
    "score",
    "selection_metric",
    "stopping_metrics",
    "validation_loss",
]
