"""What training hands to publishing and to the benchmarks: one seed's result and a run's results (`results.json`),
with each row's calibration and the bag-of-words baseline beside the head.

One definition each, read and written through these types (`RunResults.save` / `RunResults.load`).
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypedDict

import numpy as np


@dataclass
class EpochRecord:
    """One evaluation on validation: what the stopping rule saw.

    Args:
        epoch (`float`): Epochs done when evaluated.
        train_loss (`float`, *optional*): Mean training loss since the previous evaluation.
        validation (`dict[str, float]`): Validation loss and scores (`loss`, `accuracy`, `weighted_f1`, ...).
        improved (`list[str]`): The stopping metrics that reached a new best at this evaluation.
    """

    epoch: float
    train_loss: float | None
    validation: dict[str, float]
    improved: list[str] = field(default_factory=list)


class ReliabilityBin(TypedDict):
    """One bin of a reliability table (`llm_fusion_fec.evaluation.calibration.reliability_table`): the confidences
    in `(lower, upper]`, their number, their mean, and the share of them that are right."""

    lower: float
    upper: float
    count: int
    confidence: float
    accuracy: float


@dataclass
class Calibration:
    """How far a row's probabilities can be read as confidence: its expected calibration error (ECE, 15 equal-width
    bins of the top class's probability, or of every label's probability for multi-label problems), and the
    temperature its logits are divided by before the softmax or sigmoid.

    Args:
        temperature (`float`): The temperature fitted on validation (lowest validation negative log-likelihood),
            kept only where it lowered the validation ECE; 1.0 otherwise (and for the baseline, which fits none).
        validation_ece (`float`): Validation ECE at `temperature`.
        validation_ece_uncalibrated (`float`): Validation ECE at temperature 1.
        test_ece (`float`): Test ECE at `temperature`: the probabilities the served model reports.
        test_ece_uncalibrated (`float`): Test ECE at temperature 1, from the same single prediction of the test split.
        reliability (`list[ReliabilityBin]`): The test reliability table at `temperature`.
    """

    temperature: float
    validation_ece: float
    validation_ece_uncalibrated: float
    test_ece: float
    test_ece_uncalibrated: float
    reliability: list[ReliabilityBin] = field(default_factory=list)

    @classmethod
    def from_dict(cls, data: dict | None) -> Calibration | None:
        return None if data is None else cls(**data)


@dataclass
class CheckpointScores:
    """A trained model (a seed's kept checkpoint, or the seeds' ensemble) scored once: what `SeedResult` and
    `EnsembleResult` hold of it.

    Args:
        threshold (`float`, *optional*): Multi-label decision threshold chosen on validation (None: single-label).
        validation (`dict[str, float]`): Its scores on validation (and its loss).
        test (`dict[str, float]`): Its scores on test, computed once.
        per_label (`dict[str, dict[str, float]]`): Test precision, recall, F1 and support of each label.
        confusion (`list[list[int]]`, *optional*): Test confusion matrix, single-label problems only.
        calibration (`Calibration`, *optional*): Its temperature and ECE.
    """

    threshold: float | None
    validation: dict[str, float]
    test: dict[str, float]
    per_label: dict[str, dict[str, float]]
    confusion: list[list[int]] | None
    calibration: Calibration | None = None


@dataclass
class SeedResult:
    """One seed trained by the protocol and scored once on test.

    Args:
        seed (`int`): The seed (initialisation, data order, dropout).
        epochs (`float`): Epochs run before stopping.
        best_epoch (`float`, *optional*): The epoch whose checkpoint was kept.
        wall_time_s (`float`): Training and scoring time.
        threshold (`float`, *optional*): Multi-label decision threshold chosen on validation (None: single-label).
        validation (`dict[str, float]`): Scores of the kept checkpoint on validation (and its loss).
        test (`dict[str, float]`): Scores of the kept checkpoint on test, computed once.
        history (`list[EpochRecord]`): Every evaluation, in order.
        per_label (`dict[str, dict[str, float]]`): Test precision, recall, F1 and support of each label.
        confusion (`list[list[int]]`, *optional*): Test confusion matrix (rows: true label, columns: predicted),
            single-label problems only.
        trained_with (`list[int]`): The seeds trained together with it as one batched model (itself included);
            `wall_time_s` is then the whole batch's training time plus this seed's scoring.
        calibration (`Calibration`, *optional*): Its temperature and ECE (None in results written before them).
    """

    seed: int
    epochs: float
    best_epoch: float | None
    wall_time_s: float
    threshold: float | None
    validation: dict[str, float]
    test: dict[str, float]
    history: list[EpochRecord] = field(default_factory=list)
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: list[list[int]] | None = None
    trained_with: list[int] = field(default_factory=list)
    calibration: Calibration | None = None

    @classmethod
    def from_dict(cls, data: dict) -> SeedResult:
        history = [EpochRecord(**record) for record in data.get("history", [])]
        return cls(**{**data, "history": history, "calibration": Calibration.from_dict(data.get("calibration"))})

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def save(self, path: str | os.PathLike) -> None:
        _write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> SeedResult:
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class EnsembleResult:
    """The seed ensemble a run saved (`--ensemble`): the mean of its members' probabilities, scored once on test.

    Args:
        members (`list[int]`): The seeds it averages, in order.
        threshold (`float`, *optional*): Multi-label decision threshold chosen on validation (None: single-label).
        validation (`dict[str, float]`): Its scores on validation (and its loss).
        test (`dict[str, float]`): Its scores on test, computed once.
        per_label (`dict[str, dict[str, float]]`): Test precision, recall, F1 and support of each label.
        confusion (`list[list[int]]`, *optional*): Test confusion matrix, single-label problems only.
        calibration (`Calibration`, *optional*): Its temperature and ECE (None in results written before them).
    """

    members: list[int]
    threshold: float | None
    validation: dict[str, float]
    test: dict[str, float]
    per_label: dict[str, dict[str, float]] = field(default_factory=dict)
    confusion: list[list[int]] | None = None
    calibration: Calibration | None = None

    @classmethod
    def from_dict(cls, data: dict) -> EnsembleResult:
        return cls(**{**data, "calibration": Calibration.from_dict(data.get("calibration"))})


BASELINE_ROW = "bag-of-words baseline (TF-IDF + logistic regression, C chosen on validation)"
"""The baseline's row in the results table the command prints and the card shows."""


@dataclass
class BaselineResult:
    """The bag-of-words baseline fitted beside the head (`llm_fusion_fec.evaluation.baseline`): TF-IDF of the texts'
    words and word pairs with logistic regression, fitted on train, its strength (and multi-label threshold) chosen
    on validation, scored once on test.

    Args:
        method (`str`): What it is, in words.
        c (`float`): The inverse L2 strength validation chose.
        strengths (`list[float]`): The strengths tried.
        threshold (`float`, *optional*): Multi-label decision threshold chosen on validation (None: single-label).
        validation (`dict[str, float]`): Its scores on validation at `c` (and its loss).
        test (`dict[str, float]`): Its scores on test, computed once.
        calibration (`Calibration`): Its ECE (no temperature is fitted: it is not served).
        vocabulary (`int`): The word and word-pair features the training texts gave.
        wall_time_s (`float`): Fitting every strength and scoring.
    """

    method: str
    c: float
    strengths: list[float]
    threshold: float | None
    validation: dict[str, float]
    test: dict[str, float]
    calibration: Calibration
    vocabulary: int
    wall_time_s: float

    @classmethod
    def from_dict(cls, data: dict | None) -> BaselineResult | None:
        if data is None:
            return None
        return cls(**{**data, "calibration": Calibration.from_dict(data["calibration"])})


@dataclass
class RunResults:
    """The results of `train_fusion.py`: every seed, the saved one, and the test mean +- std over seeds.

    Args:
        dataset (`str`): The data set's publishable name (never a local path).
        problem_type (`str`): `single_label_classification` or `multi_label_classification`.
        selection_metric (`str`): The validation metric that keeps a checkpoint (mode `best`) and picks the seed.
        early_stopping_metrics (`list[str]`): Patience resets when any of these validation metrics improves.
        checkpoint_selection (`str`): `best` (best validation `selection_metric`) or `last_improvement` (the last
            evaluation at which any early-stopping metric improved, the original code's rule).
        best_seed (`int`, *optional*): The seed whose model is saved (best validation `selection_metric`) among the
            runs so far; `None` before the first (`add_run` sets it).
        runs (`list[SeedResult]`, *optional*): One result per seed, in seed order, added as the seeds finish.
        ensemble (`EnsembleResult`, *optional*): The seed ensemble, when the run saved one instead of the best seed.
        protocol (`str`, *optional*, defaults to `"paper"`): The training recipe (`llm_fusion_fec.training.protocols`).
        limit (`int`, *optional*): The features' `--limit`: every split, test included, was cut to its first `limit`
            rows, so the scores are not those of the whole test split; `None` for whole splits.
        baseline (`BaselineResult`, *optional*): The bag-of-words baseline fitted beside the head (None: not fitted,
            `--baseline false`).
    """

    dataset: str
    problem_type: str
    selection_metric: str
    early_stopping_metrics: list[str]
    checkpoint_selection: str
    best_seed: int | None = None
    runs: list[SeedResult] = field(default_factory=list)
    ensemble: EnsembleResult | None = None
    protocol: str = "paper"
    limit: int | None = None
    baseline: BaselineResult | None = None

    def add_run(self, result: SeedResult) -> None:
        """Add a seed's result as it finishes, in seed order whatever the order seeds finish in, and choose the best
        seed of the runs so far again."""
        runs = [run for run in self.runs if run.seed != result.seed]
        self.runs = sorted([*runs, result], key=lambda run: run.seed)
        self.best_seed = best_seed(self.runs, self.selection_metric)

    @property
    def seeds(self) -> list[int]:
        return [run.seed for run in self.runs]

    @property
    def best(self) -> SeedResult:
        return next(run for run in self.runs if run.seed == self.best_seed)

    @property
    def saved(self) -> SeedResult | EnsembleResult:
        """The result of the model the run saved: the ensemble if there is one, else the best seed."""
        return self.ensemble or self.best

    @property
    def test(self) -> dict[str, dict[str, float]]:
        """Mean and population standard deviation (as the paper's logs) of each test score over the seeds."""
        return {
            key: {
                "mean": statistics.fmean(run.test[key] for run in self.runs),
                "std": statistics.pstdev(run.test[key] for run in self.runs),
            }
            for key in self.runs[0].test
        }

    @property
    def test_ece(self) -> dict[str, float] | None:
        """Mean and population standard deviation of the seeds' test ECE (None where a seed has no calibration)."""
        if not self.runs or any(run.calibration is None for run in self.runs):
            return None
        values = [run.calibration.test_ece for run in self.runs]
        return {"mean": statistics.fmean(values), "std": statistics.pstdev(values)}

    @property
    def head_validation(self) -> tuple[float, str]:
        """The head's validation `selection_metric` score that the baseline is compared with, and whose it is: the
        saved ensemble's, else the seeds' mean (not the best seed's, which validation chose)."""
        if self.ensemble:
            return self.ensemble.validation[self.selection_metric], "the ensemble's"
        values = [run.validation[self.selection_metric] for run in self.runs]
        return statistics.fmean(values), f"the {len(values)}-seed mean" if len(values) > 1 else "the seed's"

    @property
    def baseline_wins(self) -> bool:
        """Whether the bag-of-words baseline beats the head on validation by `selection_metric` (`head_validation`):
        the labels then hang on words the features lose."""
        if self.baseline is None or not self.runs:
            return False
        head, ours = self.head_validation[0], self.baseline.validation[self.selection_metric]
        return ours < head if self.selection_metric == "loss" else ours > head

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {**data, "seeds": self.seeds, "test": self.test, "test_ece": self.test_ece}

    @classmethod
    def from_dict(cls, data: dict) -> RunResults:
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {key: value for key, value in data.items() if key in fields}
        ensemble = EnsembleResult.from_dict(values["ensemble"]) if values.get("ensemble") else None
        return cls(
            **{
                **values,
                "runs": [SeedResult.from_dict(run) for run in data["runs"]],
                "ensemble": ensemble,
                "baseline": BaselineResult.from_dict(values.get("baseline")),
            }
        )

    def save(self, path: str | os.PathLike) -> None:
        _write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | os.PathLike) -> RunResults:
        return cls.from_dict(json.loads(Path(path).read_text()))


def best_seed(runs: list[SeedResult], selection: str) -> int:
    """The seed with the best validation `selection` score (the first on ties); the test split plays no part."""
    return max(runs, key=lambda run: run.validation[selection] * (-1 if selection == "loss" else 1)).seed


def per_label_scores(
    decisions: np.ndarray, references: np.ndarray, label_names: list[str]
) -> tuple[dict[str, dict[str, float]], list[list[int]] | None]:
    """Precision, recall, F1 and support of each label, and the confusion matrix for single-label data.

    `decisions` and `references` are label ids `(n,)` or multi-hot rows `(n, labels)`.
    """
    num_labels = len(label_names)
    confusion = None
    if decisions.ndim == 1:
        matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
        np.add.at(matrix, (references.astype(np.int64), decisions.astype(np.int64)), 1)
        true_positive, predicted, actual = np.diag(matrix), matrix.sum(0), matrix.sum(1)
        confusion = matrix.tolist()
    else:
        hits = (decisions > 0) & (references > 0)
        true_positive, predicted, actual = hits.sum(0), (decisions > 0).sum(0), (references > 0).sum(0)
    scores = {}
    for i, name in enumerate(label_names):
        precision = true_positive[i] / predicted[i] if predicted[i] else 0.0
        recall = true_positive[i] / actual[i] if actual[i] else 0.0
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
        scores[name] = {
            "precision": float(precision),
            "recall": float(recall),
            "f1": float(f1),
            "support": int(actual[i]),
        }
    return scores, confusion


def _write_json(path: str | os.PathLike, data: dict) -> None:
    """Write atomically: a reader never sees half a file, and a killed run leaves the previous one."""
    path = Path(path)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(data, indent=2) + "\n")
    temporary.replace(path)


__all__ = [
    "BASELINE_ROW",
    "BaselineResult",
    "Calibration",
    "CheckpointScores",
    "EnsembleResult",
    "EpochRecord",
    "ReliabilityBin",
    "RunResults",
    "SeedResult",
    "best_seed",
    "per_label_scores",
]
