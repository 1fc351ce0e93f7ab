"""Calibration: the expected calibration error against hand-computed and independently computed values, the
temperature fitted on validation against a brute-force search, and kept only where it lowers the ECE."""

import numpy as np
import pytest

from llm_fusion_fec.evaluation.calibration import (
    calibration_of,
    choose_temperature,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    probabilities_of,
    reliability_table,
)

SINGLE, MULTI = "single_label_classification", "multi_label_classification"


def guo_ece(confidences: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE as Guo et al. (2017) write it: bins (lower, upper] from `np.linspace`, a loop over them."""
    edges = np.linspace(0, 1, bins + 1)
    total = 0.0
    for lower, upper in zip(edges[:-1], edges[1:]):
        inside = (confidences > lower) & (confidences <= upper)
        if inside.any():
            total += inside.mean() * abs(correct[inside].mean() - confidences[inside].mean())
    return total


def test_ece_of_a_handmade_single_label_example():
    probabilities = np.array(
        [
            [0.90, 0.05, 0.05],  # top 0.90, right
            [0.09, 0.81, 0.10],  # top 0.81, wrong (label 2)
            [0.85, 0.10, 0.05],  # top 0.85, right: same bin as 0.81, (0.8, 0.8667]
            [0.20, 0.50, 0.30],  # top 0.50, right
            [0.40, 0.35, 0.25],  # top 0.40, wrong
        ]
    )
    labels = np.array([0, 2, 0, 1, 2])
    # Bins: {0.90: right}, {0.81 wrong, 0.85 right: accuracy 0.5, confidence 0.83}, {0.50: right}, {0.40: wrong}.
    expected = (abs(1 - 0.90) + 2 * abs(0.5 - 0.83) + abs(1 - 0.50) + abs(0 - 0.40)) / 5
    assert expected == pytest.approx(0.332)
    assert expected_calibration_error(probabilities, labels, SINGLE) == pytest.approx(expected, abs=1e-12)
    table = reliability_table(probabilities, labels, SINGLE)
    assert len(table) == 15 and sum(row["count"] for row in table) == 5
    shared = table[12]  # (12/15, 13/15] = (0.8, 0.8667]
    assert (shared["count"], shared["accuracy"]) == (2, 0.5) and shared["confidence"] == pytest.approx(0.83)


def test_multi_label_ece_bins_every_labels_probability():
    probabilities = np.array([[0.9, 0.1], [0.7, 0.3]])
    labels = np.array([[1, 0], [0, 1]])
    # Four probabilities in four bins: 0.9 (on), 0.1 (off), 0.7 (off), 0.3 (on).
    expected = (abs(1 - 0.9) + abs(0 - 0.1) + abs(0 - 0.7) + abs(1 - 0.3)) / 4
    assert expected_calibration_error(probabilities, labels, MULTI) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("problem_type", [SINGLE, MULTI])
def test_ece_equals_an_independent_computation(problem_type):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 2, (500, 6))
    probabilities = probabilities_of(logits, problem_type)
    if problem_type == SINGLE:
        labels = rng.integers(0, 6, 500)
        confidences, correct = probabilities.max(1), (probabilities.argmax(1) == labels).astype(float)
        expected_probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    else:
        labels = (rng.random((500, 6)) < 0.3).astype(int)
        confidences, correct = probabilities.ravel(), labels.ravel().astype(float)
        expected_probabilities = 1 / (1 + np.exp(-logits))
    np.testing.assert_allclose(probabilities, expected_probabilities, rtol=1e-12)
    ece = expected_calibration_error(probabilities, labels, problem_type)
    assert ece == pytest.approx(guo_ece(confidences, correct), abs=1e-12)


@pytest.mark.parametrize("problem_type", [SINGLE, MULTI])
def test_the_fitted_temperature_minimises_the_validation_loss(problem_type):
    """Labels drawn from the probabilities at temperature 2: the fit finds about 2, and the minimum of a brute-force
    search of the same loss."""
    rng = np.random.default_rng(1)
    logits = rng.normal(0, 3, (4000, 5))
    true = probabilities_of(logits, problem_type, temperature=2.0)
    if problem_type == SINGLE:
        labels = np.array([rng.choice(5, p=row) for row in true])
    else:
        labels = (rng.random(true.shape) < true).astype(int)
    fitted = fit_temperature(logits, labels, problem_type)
    grid = np.exp(np.linspace(np.log(0.05), np.log(20), 4001))
    brute = grid[np.argmin([negative_log_likelihood(logits, labels, problem_type, t) for t in grid])]
    assert fitted == pytest.approx(brute, rel=2e-3)
    assert fitted == pytest.approx(2.0, rel=0.1)
    choice = choose_temperature(logits, labels, problem_type)
    assert choice.temperature == pytest.approx(fitted, abs=1e-4) and choice.ece < choice.ece_uncalibrated
    record = calibration_of(choice, logits, labels, problem_type)
    assert record.test_ece == pytest.approx(
        expected_calibration_error(probabilities_of(logits, problem_type, choice.temperature), labels, problem_type)
    )
    assert record.test_ece_uncalibrated == pytest.approx(
        expected_calibration_error(probabilities_of(logits, problem_type), labels, problem_type)
    )


def test_a_temperature_that_does_not_lower_the_ece_is_not_kept():
    """Top probability 0.75, right 3 times in 4: calibrated at T = 1 (ECE 0). The wrong rows' label has probability
    0.001, so the loss is lowest at a higher temperature, whose ECE is higher: it is not kept."""
    logits = np.log(np.array([[0.75, 0.249, 0.001]] * 20))
    labels = np.array([0, 0, 0, 2] * 5)
    assert expected_calibration_error(probabilities_of(logits, SINGLE), labels, SINGLE) == pytest.approx(0, abs=1e-12)
    assert fit_temperature(logits, labels, SINGLE) > 1.5
    choice = choose_temperature(logits, labels, SINGLE)
    assert choice.temperature == 1.0 and choice.ece == choice.ece_uncalibrated == pytest.approx(0, abs=1e-12)
