"""Scores a user can read as confidence: the expected calibration error (ECE) of a model's probabilities, their
reliability table, and the temperature fitted on the validation split that the config records and the pipeline
divides the logits by.

    choice = choose_temperature(validation_logits, validation_labels, problem_type)  # validation only
    model.config.temperature = choice.temperature
    record = calibration_of(choice, test_logits, test_labels, problem_type)  # test, scored once
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from llm_fusion_fec.evaluation.results import Calibration, ReliabilityBin

ECE_BINS = 15
"""Equal-width bins of [0, 1] the ECE is computed over (Guo et al., 2017)."""
BINNED_CONFIDENCES = {
    "single_label_classification": "top label's probability",
    "multi_label_classification": "each label's probability",
}
"""What the ECE bins, by problem type, in words (`confidences_and_outcomes`)."""
TEMPERATURE_RANGE = (0.2, 10.0)
"""The temperatures searched: beyond them a validation split is too small or too separable to say more (and a
multi-label threshold restated at the temperature, `threshold_at_temperature`, stays inside (0, 1) in float64)."""


def probabilities_of(logits: np.ndarray, problem_type: str, temperature: float = 1.0) -> np.ndarray:
    """The probabilities a model reports for `logits` divided by `temperature`: the softmax of each row, or for
    multi-label problems each label's sigmoid (float64)."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    if problem_type == "multi_label_classification":
        return 0.5 * (1.0 + np.tanh(0.5 * scaled))  # the sigmoid, without overflow
    scaled = scaled - scaled.max(axis=-1, keepdims=True)
    exponentials = np.exp(scaled)
    return exponentials / exponentials.sum(axis=-1, keepdims=True)


def confidences_and_outcomes(
    probabilities: np.ndarray, labels: np.ndarray, problem_type: str
) -> tuple[np.ndarray, np.ndarray]:
    """What the ECE compares: for single-label rows, the top class's probability and whether the top class is the
    label; for multi-label rows, every label's probability and whether the label is on."""
    if problem_type == "multi_label_classification":
        return probabilities.reshape(-1), (np.asarray(labels) > 0).reshape(-1).astype(np.float64)
    predicted = probabilities.argmax(axis=-1)
    return probabilities.max(axis=-1), (predicted == np.asarray(labels).astype(np.int64)).astype(np.float64)


def reliability_table(
    probabilities: np.ndarray, labels: np.ndarray, problem_type: str, bins: int = ECE_BINS
) -> list[ReliabilityBin]:
    """The reliability table: for each of `bins` equal-width bins of the confidence, `(lower, upper]` (the first bin
    holds 0 too), the number of confidences in it, their mean and the share of them that are right (the labels that
    are on, for multi-label problems). Empty bins are listed with 0 texts."""
    confidences, outcomes = confidences_and_outcomes(probabilities, labels, problem_type)
    index = np.clip(np.ceil(confidences * bins).astype(np.int64) - 1, 0, bins - 1)
    table = []
    for i in range(bins):
        inside = index == i
        count = int(inside.sum())
        table.append(
            ReliabilityBin(
                lower=i / bins,
                upper=(i + 1) / bins,
                count=count,
                confidence=float(confidences[inside].mean()) if count else 0.0,
                accuracy=float(outcomes[inside].mean()) if count else 0.0,
            )
        )
    return table


def ece_of_table(table: list[ReliabilityBin]) -> float:
    """The expected calibration error of a reliability table: the gap between confidence and accuracy in each bin,
    weighted by the bin's share of the confidences."""
    total = sum(row["count"] for row in table)
    return float(sum(row["count"] * abs(row["accuracy"] - row["confidence"]) for row in table) / total)


def expected_calibration_error(
    probabilities: np.ndarray, labels: np.ndarray, problem_type: str, bins: int = ECE_BINS
) -> float:
    """The expected calibration error (ECE) over `bins` equal-width bins: of the top class's probability for
    single-label problems, of every label's probability for multi-label ones (`reliability_table`)."""
    return ece_of_table(reliability_table(probabilities, labels, problem_type, bins))


def negative_log_likelihood(logits: np.ndarray, labels: np.ndarray, problem_type: str, temperature: float) -> float:
    """The mean loss the model trains on (cross-entropy, or binary cross-entropy over every label) of `logits`
    divided by `temperature`."""
    scaled = np.asarray(logits, dtype=np.float64) / temperature
    if problem_type == "multi_label_classification":
        targets = (np.asarray(labels) > 0).astype(np.float64)
        return float(np.mean(np.logaddexp(0.0, scaled) - targets * scaled))
    top = scaled.max(axis=-1, keepdims=True)
    log_normaliser = (top + np.log(np.exp(scaled - top).sum(axis=-1, keepdims=True)))[:, 0]
    chosen = np.take_along_axis(scaled, np.asarray(labels).astype(np.int64)[:, None], axis=-1)[:, 0]
    return float(np.mean(log_normaliser - chosen))


def fit_temperature(logits: np.ndarray, labels: np.ndarray, problem_type: str, steps: int = 60) -> float:
    """The temperature T in `TEMPERATURE_RANGE` that minimises the negative log-likelihood of `logits / T`: a
    golden-section search on log T (the loss is convex in 1/T, so it has one minimum along log T)."""
    low, high = (math.log(t) for t in TEMPERATURE_RANGE)
    ratio = (math.sqrt(5) - 1) / 2

    def loss(log_t: float) -> float:
        return negative_log_likelihood(logits, labels, problem_type, math.exp(log_t))

    left, right = high - ratio * (high - low), low + ratio * (high - low)
    loss_left, loss_right = loss(left), loss(right)
    for _ in range(steps):
        if loss_left <= loss_right:
            high, right, loss_right = right, left, loss_left
            left = high - ratio * (high - low)
            loss_left = loss(left)
        else:
            low, left, loss_left = left, right, loss_right
            right = low + ratio * (high - low)
            loss_right = loss(right)
    return math.exp((low + high) / 2)


def threshold_at_temperature(threshold: float, temperature: float) -> float:
    """The multi-label threshold on the scores at `temperature` that makes the decisions `threshold` makes at
    temperature 1: `sigmoid(z / T) > sigmoid(logit(t) / T)` exactly where `sigmoid(z) > t`. The temperature changes
    the scores a user reads, never which labels are predicted."""
    logit = math.log(threshold) - math.log1p(-threshold)
    return 1.0 / (1.0 + math.exp(-logit / temperature))


class TemperatureChoice(NamedTuple):
    """The temperature validation chose, and the validation ECE at it and without one (T = 1)."""

    temperature: float
    ece: float
    ece_uncalibrated: float


def choose_temperature(logits: np.ndarray, labels: np.ndarray, problem_type: str) -> TemperatureChoice:
    """Fit a temperature on these (validation) logits (`fit_temperature`) and keep it only where it lowers their
    ECE; otherwise 1.0, the logits as they are."""
    uncalibrated = expected_calibration_error(probabilities_of(logits, problem_type), labels, problem_type)
    temperature = fit_temperature(logits, labels, problem_type)
    ece = expected_calibration_error(probabilities_of(logits, problem_type, temperature), labels, problem_type)
    if ece < uncalibrated:
        return TemperatureChoice(round(temperature, 4), ece, uncalibrated)
    return TemperatureChoice(1.0, uncalibrated, uncalibrated)


def calibration_of(
    choice: TemperatureChoice, test_logits: np.ndarray, test_labels: np.ndarray, problem_type: str
) -> Calibration:
    """The calibration record of a row: the temperature validation chose, the validation ECE with and without it,
    and the test ECE and reliability table at it (and the test ECE without it), from one prediction of the test
    split."""
    calibrated = probabilities_of(test_logits, problem_type, choice.temperature)
    table = reliability_table(calibrated, test_labels, problem_type)
    uncalibrated = expected_calibration_error(probabilities_of(test_logits, problem_type), test_labels, problem_type)
    return Calibration(
        temperature=choice.temperature,
        validation_ece=choice.ece,
        validation_ece_uncalibrated=choice.ece_uncalibrated,
        test_ece=ece_of_table(table),
        test_ece_uncalibrated=uncalibrated,
        reliability=table,
    )


__all__ = [
    "BINNED_CONFIDENCES",
    "ECE_BINS",
    "TEMPERATURE_RANGE",
    "TemperatureChoice",
    "calibration_of",
    "choose_temperature",
    "confidences_and_outcomes",
    "ece_of_table",
    "expected_calibration_error",
    "fit_temperature",
    "negative_log_likelihood",
    "probabilities_of",
    "reliability_table",
    "threshold_at_temperature",
]
