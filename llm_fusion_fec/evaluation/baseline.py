"""The floor every run reports: a bag-of-words linear baseline on the texts themselves, fitted beside the head.

TF-IDF of the words and word pairs of each text (sublinear term frequency; those of at least two training texts),
the vocabulary and its weights learnt from the train split, and logistic regression on it: multinomial for
single-label data, one binary regression per label for multi-label data. It is fitted on the train split at each
inverse L2 strength of `BASELINE_STRENGTHS`; the validation split chooses the strength (and the multi-label
threshold) by the run's selection metric, and only then is the test split read, once. Seconds on a CPU for Empathetic
Dialogues' 19.5k training texts; where it beats the head on validation, the labels hang on words that the frozen
sentence vectors lose.

    fitted = fit_bag_of_words(train, validation, problem_type, num_labels, "weighted_f1")
    result = score_bag_of_words(fitted, test)  # the test split, read once
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression
from sklearn.multiclass import OneVsRestClassifier

from llm_fusion_fec.evaluation.calibration import TemperatureChoice, calibration_of, expected_calibration_error
from llm_fusion_fec.evaluation.metrics import SELECTION_METRICS, choose_threshold, load_metric, score, validation_loss
from llm_fusion_fec.evaluation.results import BaselineResult, RunResults

BASELINE_STRENGTHS = (0.3, 1.0, 3.0, 10.0, 30.0)
"""The inverse L2 strengths (sklearn's C) tried; validation keeps one."""
BASELINE_METHOD = "TF-IDF of words and word pairs (sublinear tf) + logistic regression"


class LabelledTexts(NamedTuple):
    """A split's texts and labels: label ids `(n,)`, or multi-hot rows `(n, labels)` for multi-label data."""

    texts: list[str]
    labels: np.ndarray


def labelled_texts(split) -> LabelledTexts:
    """The `text` and `label` columns of a features folder's split (`datasets.Dataset`)."""
    columns = split.select_columns(["text", "label"])[:]
    return LabelledTexts(list(columns["text"]), np.asarray(columns["label"]))


@dataclass
class BagOfWords:
    """A fitted baseline: its vectorizer and classifier (fitted on train), and what validation chose.

    Args:
        vectorizer (`TfidfVectorizer`): Vocabulary and inverse document frequencies of the training texts.
        classifier (`LogisticRegression` or `OneVsRestClassifier`): The regression at the strength chosen.
        problem_type (`str`): `single_label_classification` or `multi_label_classification`.
        num_labels (`int`): The data set's labels (a label no training text has gets probability 0).
        c (`float`): The inverse L2 strength validation chose.
        threshold (`float`, *optional*): The multi-label threshold validation chose (None: single-label).
        validation (`dict[str, float]`): Its validation scores at `c` (and its loss).
        validation_ece (`float`): Its validation expected calibration error at `c`.
    """

    vectorizer: TfidfVectorizer
    classifier: LogisticRegression | OneVsRestClassifier
    problem_type: str
    num_labels: int
    c: float
    threshold: float | None
    validation: dict[str, float]
    validation_ece: float

    def probabilities(self, texts: Sequence[str]) -> np.ndarray:
        """`(n, num_labels)` probabilities: each row's softmax, or each label's for multi-label data."""
        return label_probabilities(self.classifier, self.vectorizer.transform(texts), self.num_labels)

    def logits(self, texts: Sequence[str]) -> np.ndarray:
        """Logits whose softmax (or sigmoid) are `probabilities`: what the head's scoring reads."""
        return logits_of(self.probabilities(texts), self.problem_type)


def label_probabilities(classifier, features, num_labels: int) -> np.ndarray:
    """The classifier's probabilities with one column per label of the data set: the labels it never saw in
    training (single-label data) get 0."""
    probabilities = classifier.predict_proba(features)
    if isinstance(classifier, OneVsRestClassifier):
        return probabilities
    full = np.zeros((probabilities.shape[0], num_labels))
    full[:, classifier.classes_.astype(np.int64)] = probabilities
    return full


def logits_of(probabilities: np.ndarray, problem_type: str) -> np.ndarray:
    """Logits whose softmax (single-label) or sigmoid (multi-label) gives `probabilities` back (clipped away from 0
    and 1, so that they stay finite)."""
    clipped = np.clip(probabilities, 1e-12, 1 - 1e-12)
    if problem_type == "multi_label_classification":
        return np.log(clipped) - np.log1p(-clipped)
    return np.log(clipped)


class EmptyVocabulary(ValueError):
    """The training texts hold no word the vectorizer counts: there is no bag of words to fit."""


def fit_vectorizer(texts: Sequence[str]) -> tuple[TfidfVectorizer, object]:
    """TF-IDF (sublinear term frequency) of the words and word pairs that occur in at least 2 of the training texts
    (in any of them where none occurs twice), fitted on `texts`; and their sparse features. `EmptyVocabulary` where
    they hold no word of two characters or more."""
    for min_df in (2, 1):
        vectorizer = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=min_df)
        try:
            return vectorizer, vectorizer.fit_transform(texts)
        except ValueError:  # sklearn: no term is left
            continue
    raise EmptyVocabulary("The training texts hold no word of two characters or more: no bag-of-words baseline.")


def new_classifier(problem_type: str) -> LogisticRegression | OneVsRestClassifier:
    """Logistic regression: multinomial, by SAGA (the fastest of sklearn's solvers on TF-IDF rows, whose norm is 1),
    each strength starting from the previous one's weights; or one binary regression per label, by liblinear's dual
    solver (the fastest for more words than texts). The strength is set before each fit (`C`)."""
    if problem_type == "multi_label_classification":
        return OneVsRestClassifier(LogisticRegression(solver="liblinear", dual=True, max_iter=1000))
    return LogisticRegression(solver="saga", max_iter=1000, warm_start=True, random_state=0)


def set_strength(classifier: LogisticRegression | OneVsRestClassifier, c: float) -> None:
    """Set the inverse L2 strength of `classifier` (of each label's regression for one-vs-rest)."""
    classifier.set_params(**{"estimator__C" if isinstance(classifier, OneVsRestClassifier) else "C": c})


def fit_bag_of_words(
    train: LabelledTexts,
    validation: LabelledTexts,
    problem_type: str,
    num_labels: int,
    selection: str,
    strengths: Sequence[float] = BASELINE_STRENGTHS,
) -> BagOfWords:
    """Fit the baseline on `train` at each of `strengths` and keep the one with the best `validation` score by
    `selection` (lowest loss for `loss`; of equal scores, the lowest loss), with its multi-label threshold chosen on
    validation too (by the data's headline score when selecting by loss). Nothing of the test split is read."""
    metric = load_metric(problem_type)
    key = SELECTION_METRICS[problem_type] if selection == "loss" else selection
    vectorizer, train_features = fit_vectorizer(train.texts)
    validation_features = vectorizer.transform(validation.texts)
    multi_label = problem_type == "multi_label_classification"
    targets, classifier = train.labels.astype(np.int64), new_classifier(problem_type)
    best, best_rank = None, None
    for c in sorted(strengths):
        set_strength(classifier, c)
        with warnings.catch_warnings():  # a label no training text has (or every one has) is predicted as such
            warnings.filterwarnings("ignore", message="Label .* is present in all training examples")
            classifier.fit(train_features, targets)
        probabilities = label_probabilities(classifier, validation_features, num_labels)
        logits = logits_of(probabilities, problem_type)
        if multi_label:
            threshold, scores = choose_threshold(metric, logits, validation.labels, key)
        else:
            threshold, scores = None, score(metric, logits, validation.labels, 0.5)
        scores = {**scores, "loss": validation_loss(logits, validation.labels, problem_type)}
        # Of equal scores (a small validation split), the lower loss: the probabilities that read better.
        rank = (-scores["loss"],) if selection == "loss" else (scores[selection], -scores["loss"])
        if best_rank is None or rank > best_rank:
            best_rank = rank
            ece = expected_calibration_error(probabilities, validation.labels, problem_type)
            kept = copy.deepcopy(classifier)  # the next strength goes on from this one's weights
            best = BagOfWords(vectorizer, kept, problem_type, num_labels, c, threshold, scores, ece)
    return best


def score_bag_of_words(
    fitted: BagOfWords,
    test: LabelledTexts,
    strengths: Sequence[float] = BASELINE_STRENGTHS,
    wall_time_s: float = 0.0,
) -> BaselineResult:
    """Score the fitted baseline once on `test`: its scores, its ECE (beside its validation ECE) and its
    reliability table, as a `BaselineResult`."""
    problem_type = fitted.problem_type
    logits = fitted.logits(test.texts)
    test_scores = score(load_metric(problem_type), logits, test.labels, fitted.threshold or 0.5)
    chosen = TemperatureChoice(1.0, fitted.validation_ece, fitted.validation_ece)  # no temperature: not served
    return BaselineResult(
        method=BASELINE_METHOD,
        c=fitted.c,
        strengths=[float(c) for c in strengths],
        threshold=fitted.threshold,
        validation=fitted.validation,
        test=test_scores,
        calibration=calibration_of(chosen, logits, test.labels, problem_type),
        vocabulary=len(fitted.vectorizer.vocabulary_),
        wall_time_s=round(wall_time_s, 1),
    )


def baseline_notice(results: RunResults) -> str | None:
    """The one line a run says when its bag-of-words baseline beats the head on validation by the run's selection
    metric (`RunResults.baseline_wins`: the head is the saved ensemble, else the seeds' mean); None otherwise."""
    if not results.baseline_wins:
        return None
    selection, baseline = results.selection_metric, results.baseline
    head, whose = results.head_validation
    return (
        f"The bag-of-words baseline (TF-IDF + logistic regression, C {baseline.c:g}) beats the fused head on "
        f"validation {selection}: {baseline.validation[selection]:.4f} against {head:.4f} ({whose}); the labels of "
        "this data hang on words the frozen features lose (results.json's baseline row; --baseline false skips it)."
    )


__all__ = [
    "BASELINE_METHOD",
    "BASELINE_STRENGTHS",
    "BagOfWords",
    "EmptyVocabulary",
    "LabelledTexts",
    "baseline_notice",
    "fit_bag_of_words",
    "fit_vectorizer",
    "labelled_texts",
    "score_bag_of_words",
]
