"""Emotion-classification metrics: accuracy, weighted-F1 and macro-F1 (single-label); micro- and macro-F1
(multi-label). Computed with numpy, so the module loads with `evaluate.load(path)` offline or from the Hub."""

import datasets
import evaluate
import numpy as np

_DESCRIPTION = """
Scores of a fine-grained emotion classifier, as reported for LLM-FusionClassifier.

Single-label (`config_name="single_label_classification"`, the default): accuracy, and the F1 score of each
label averaged without weights (`macro_f1`) and weighted by the label's number of true instances
(`weighted_f1`), over the labels that occur in `references` or `predictions`.

Multi-label (`config_name="multi_label_classification"`): F1 over all (text, label) decisions pooled
(`micro_f1`) and the mean of the per-label F1 scores (`macro_f1`), over all labels.

A label with no true and no predicted instance has F1 0 (scikit-learn's `zero_division=0`).
"""

_KWARGS_DESCRIPTION = """
Args:
    predictions (`list[int]` or `list[list[int]]`):
        Predicted label ids (single-label), or multi-hot rows of 0/1 (multi-label; threshold the scores first).
    references (`list[int]` or `list[list[int]]`):
        True label ids, or multi-hot rows of the same width as the predictions.
Returns:
    `dict[str, float]`: `accuracy`, `weighted_f1`, `macro_f1` (single-label) or `micro_f1`, `macro_f1` (multi-label).
Examples:
    >>> metric = evaluate.load("llm_fusion_fec/evaluation/fec_metrics")
    >>> metric.compute(predictions=[0, 1, 1], references=[0, 1, 2])
    {'accuracy': 0.6666666666666666, 'weighted_f1': 0.5555555555555555, 'macro_f1': 0.5555555555555555}
"""

CONFIG_NAMES = ("single_label_classification", "multi_label_classification")


def _f1(true_positives: np.ndarray, false_positives: np.ndarray, false_negatives: np.ndarray) -> np.ndarray:
    """F1 = 2 TP / (2 TP + FP + FN), 0 where the denominator is 0."""
    numerator = 2.0 * true_positives
    denominator = numerator + false_positives + false_negatives
    return np.divide(numerator, denominator, out=np.zeros_like(numerator), where=denominator > 0)


@evaluate.utils.file_utils.add_start_docstrings(_DESCRIPTION, _KWARGS_DESCRIPTION)
class FecMetrics(evaluate.Metric):
    def _info(self) -> evaluate.MetricInfo:
        name = "single_label_classification" if self.config_name == "default" else self.config_name
        if name not in CONFIG_NAMES:
            raise ValueError(f"Unknown config_name {self.config_name!r}; allowed: {', '.join(CONFIG_NAMES)}.")
        label = datasets.Value("int32")
        column = datasets.List(label) if name == "multi_label_classification" else label
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": column, "references": column}),
        )

    def _compute(self, predictions, references) -> dict[str, float]:
        if self.config_name == "multi_label_classification":
            return self._multi_label(np.asarray(predictions), np.asarray(references))
        return self._single_label(np.asarray(predictions), np.asarray(references))

    @staticmethod
    def _single_label(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
        labels = np.union1d(predictions, references)
        predicted = predictions[:, None] == labels  # (texts, labels) one-hot
        true = references[:, None] == labels
        support = true.sum(axis=0)
        f1 = _f1((predicted & true).sum(axis=0), (predicted & ~true).sum(axis=0), (~predicted & true).sum(axis=0))
        return {
            "accuracy": float(np.mean(predictions == references)),
            "weighted_f1": float(np.sum(f1 * support) / support.sum()),
            "macro_f1": float(f1.mean()),
        }

    @staticmethod
    def _multi_label(predictions: np.ndarray, references: np.ndarray) -> dict[str, float]:
        if predictions.shape != references.shape:
            raise ValueError(
                f"Multi-label predictions have shape {predictions.shape} but references {references.shape}."
            )
        predicted, true = predictions.astype(bool), references.astype(bool)
        true_positives = (predicted & true).sum(axis=0)
        false_positives = (predicted & ~true).sum(axis=0)
        false_negatives = (~predicted & true).sum(axis=0)
        micro = _f1(true_positives.sum(), false_positives.sum(), false_negatives.sum())
        return {
            "micro_f1": float(micro),
            "macro_f1": float(_f1(true_positives, false_positives, false_negatives).mean()),
        }
