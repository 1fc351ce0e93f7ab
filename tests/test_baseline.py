"""The bag-of-words baseline every training run reports: fitted on train, chosen on validation, the test split read
once and playing no part; in results.json, the printed table and the card; and the one line a run says when it beats
the head (a lexical data set, where a word gives the label and the tiny random backbones give noise)."""

import json
import logging
import types
from pathlib import Path

import numpy as np
import pytest
from datasets import Dataset, DatasetDict
from huggingface_hub import ModelCard
from sklearn.metrics import f1_score, log_loss

import llm_fusion_fec.training.run as run
from llm_fusion_fec.commands.train import format_results_table, main
from llm_fusion_fec.evaluation.baseline import (
    BASELINE_STRENGTHS,
    EmptyVocabulary,
    LabelledTexts,
    fit_bag_of_words,
    fit_vectorizer,
    score_bag_of_words,
)
from llm_fusion_fec.evaluation.metrics import THRESHOLDS
from llm_fusion_fec.evaluation.results import BASELINE_ROW, RunResults
from llm_fusion_fec.features.run import extract

SINGLE, MULTI = "single_label_classification", "multi_label_classification"
LABELS = ("sad", "happy", "angry")
CUES = ("gloomy", "cheerful", "furious")  # the word that gives each label
FILLER = ("today", "the", "weather", "was", "like", "that", "and", "we", "went", "home", "after", "work", "with")


def lexical_texts(count: int, seed: int, multi_label: bool = False, cue_share: float = 1.0) -> LabelledTexts:
    """Texts of filler words with the cue word of their label (of each of their labels, multi-label) in
    `cue_share` of them."""
    rng = np.random.default_rng(seed)
    texts, labels = [], []
    for i in range(count):
        if multi_label:
            label = np.zeros(len(LABELS), dtype=np.int64)
            label[[i % 3, *([(i + 1) % 3] if i % 2 else [])]] = 1
            on = np.flatnonzero(label)
        else:
            label, on = i % 3, [i % 3]
        words = list(rng.choice(FILLER, 6))
        if rng.random() < cue_share:
            for j in on:
                words.insert(int(rng.integers(0, len(words) + 1)), CUES[j])
        texts.append(" ".join(words))
        labels.append(label)
    return LabelledTexts(texts, np.asarray(labels))


def garbage(split: LabelledTexts, seed: int) -> LabelledTexts:
    """The same number of rows, other words and shuffled labels."""
    rng = np.random.default_rng(seed)
    texts = [" ".join(rng.choice(["zorp", "blik", "quax", "gloomy", "cheerful"], 5)) for _ in split.texts]
    return LabelledTexts(texts, rng.permutation(split.labels))


def as_dataset(split: LabelledTexts) -> Dataset:
    return Dataset.from_dict({"text": split.texts, "label": split.labels.tolist()})


def test_the_baseline_is_fitted_on_train_and_chosen_on_validation():
    train, validation = lexical_texts(90, 0, cue_share=0.8), lexical_texts(45, 1, cue_share=0.8)
    fitted = fit_bag_of_words(train, validation, SINGLE, len(LABELS), "weighted_f1")
    # The vocabulary is the training texts' (a word of the validation texts alone is not in it).
    vocabulary = set(fitted.vectorizer.vocabulary_)
    assert set(CUES) <= vocabulary and "zorp" not in vocabulary
    assert vocabulary == set(fit_vectorizer(train.texts)[0].vocabulary_)
    # The strength kept scores best on validation (of equal scores, the lowest log-loss), as sklearn scores it.
    scores = {}
    for c in BASELINE_STRENGTHS:
        one = fit_bag_of_words(train, validation, SINGLE, len(LABELS), "weighted_f1", strengths=[c])
        probabilities = one.probabilities(validation.texts)
        predicted = f1_score(validation.labels, probabilities.argmax(1), average="weighted")
        scores[c] = (predicted, -log_loss(validation.labels, probabilities, labels=range(len(LABELS))))
        assert one.validation["weighted_f1"] == pytest.approx(scores[c][0], abs=1e-12)
    assert fitted.c == max(BASELINE_STRENGTHS, key=lambda c: scores[c])
    assert fitted.validation["weighted_f1"] == pytest.approx(max(scores.values())[0], abs=1e-12)
    assert fitted.validation["weighted_f1"] > 0.7  # the cue word carries the label


def test_the_test_split_plays_no_part(monkeypatch):
    """A run's baseline with the test split's texts and labels replaced by garbage: the same vocabulary, strength,
    coefficients and validation scores; only the test scores change."""
    splits = {"train": lexical_texts(90, 0), "validation": lexical_texts(45, 1), "test": lexical_texts(45, 2)}
    fitted = []

    def spy(model, test, **kwargs):
        fitted.append(model)
        return score_bag_of_words(model, test, **kwargs)

    monkeypatch.setattr(run, "score_bag_of_words", spy)
    results = []
    for test in (splits["test"], garbage(splits["test"], 3)):
        texts = DatasetDict({**{k: as_dataset(v) for k, v in splits.items()}, "test": as_dataset(test)})
        config = types.SimpleNamespace(problem_type=SINGLE, num_labels=len(LABELS))
        setup = types.SimpleNamespace(config=config, texts=texts, rule=types.SimpleNamespace(selection="weighted_f1"))
        results.append(run.fit_baseline(setup))
    real, replaced = results
    assert (real.c, real.vocabulary, real.validation) == (replaced.c, replaced.vocabulary, replaced.validation)
    assert real.calibration.validation_ece == replaced.calibration.validation_ece
    np.testing.assert_array_equal(fitted[0].classifier.coef_, fitted[1].classifier.coef_)
    assert fitted[0].vectorizer.vocabulary_ == fitted[1].vectorizer.vocabulary_
    assert real.test["accuracy"] > 0.9 and replaced.test["accuracy"] < 0.6  # the test split scored, once each


def test_a_multi_label_baseline_chooses_its_threshold_on_validation():
    train, validation = lexical_texts(90, 0, multi_label=True), lexical_texts(45, 1, multi_label=True)
    test = lexical_texts(45, 2, multi_label=True)
    fitted = fit_bag_of_words(train, validation, MULTI, len(LABELS), "macro_f1")
    assert fitted.threshold in THRESHOLDS
    probabilities = fitted.probabilities(validation.texts)
    best = max(f1_score(validation.labels, probabilities > t, average="macro") for t in THRESHOLDS)
    assert fitted.validation["macro_f1"] == pytest.approx(best, abs=1e-12)
    result = score_bag_of_words(fitted, test)
    predicted = fitted.probabilities(test.texts) > fitted.threshold
    assert result.test["macro_f1"] == pytest.approx(f1_score(test.labels, predicted, average="macro"), abs=1e-12)
    assert result.threshold == fitted.threshold and 0 <= result.calibration.test_ece < 0.5


def test_texts_without_words_give_no_baseline_and_a_warning(caplog):
    with pytest.raises(EmptyVocabulary, match="no word of two characters or more"):
        fit_vectorizer(["a", "b", "!"])
    rows = LabelledTexts(["a", "b", "c"], np.array([0, 1, 2]))
    texts = DatasetDict({split: as_dataset(rows) for split in ("train", "validation", "test")})
    config = types.SimpleNamespace(problem_type=SINGLE, num_labels=3)
    setup = types.SimpleNamespace(config=config, texts=texts, rule=types.SimpleNamespace(selection="weighted_f1"))
    with caplog.at_level(logging.WARNING):
        assert run.fit_baseline(setup) is None
    assert "no bag-of-words baseline. The head trains without it." in caplog.text


# ---- a run on lexical data ----


def write_splits(folder: Path, splits: dict[str, LabelledTexts]) -> Path:
    folder.mkdir(parents=True)
    for name, split in splits.items():
        rows = "".join(f'"{text}",{label}\n' for text, label in zip(split.texts, split.labels.tolist()))
        (folder / f"{name}.csv").write_text("text,label\n" + rows)
    (folder / "label2idx.txt").write_text("".join(f"{name} {i}\n" for i, name in enumerate(LABELS)))
    return folder


@pytest.fixture(scope="module")
def lexical_features(tmp_path_factory, tiny_backbones) -> Path:
    root = tmp_path_factory.mktemp("lexical")
    splits = {"train": lexical_texts(60, 0), "valid": lexical_texts(30, 1), "test": lexical_texts(30, 2)}
    data = write_splits(root / "data", splits)
    extract(str(data), backbones=tiny_backbones, output_dir=root / "features")
    return root / "features"


def train_args(features: Path, output: Path, *extra: str) -> list[str]:
    return ["--features_dir", str(features), "--output_dir", str(output), "--max_steps", "4", "--report_to", "none"]


def test_a_run_reports_its_baseline_and_says_when_it_beats_the_head(lexical_features, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="llm_fusion_fec"):
        results = main([*train_args(lexical_features, tmp_path / "out"), "--seeds", "2"])
    baseline = results.baseline
    assert baseline.c in BASELINE_STRENGTHS and baseline.strengths == list(BASELINE_STRENGTHS)
    assert baseline.validation["weighted_f1"] == 1.0 and baseline.test["accuracy"] > 0.9
    assert baseline.validation["weighted_f1"] > results.head_validation[0]  # random backbones: noise
    notices = [record.getMessage() for record in caplog.records if "bag-of-words baseline" in record.getMessage()]
    assert len(notices) == 1 and "\n" not in notices[0]
    assert notices[0].startswith(
        f"The bag-of-words baseline (TF-IDF + logistic regression, C {baseline.c:g}) beats the fused head on "
        f"validation weighted_f1: 1.0000 against {results.head_validation[0]:.4f} (the 2-seed mean)"
    )
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["baseline"]["c"] == baseline.c and saved["baseline"]["test"] == baseline.test
    assert RunResults.load(tmp_path / "out" / "results.json").baseline == baseline
    table = format_results_table(results)
    assert table.splitlines()[-1].startswith(f"| {BASELINE_ROW} |  |  | ")
    card = ModelCard.load(tmp_path / "out" / "README.md").text
    assert table in card and "**On validation it beats the head**" in card
    assert f"C = {baseline.c:g} chosen on validation" in card


def test_baseline_false_fits_none(lexical_features, tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="llm_fusion_fec"):
        results = main([*train_args(lexical_features, tmp_path / "out"), "--baseline", "false"])
    assert results.baseline is None and "bag-of-words" not in caplog.text
    assert json.loads((tmp_path / "out" / "results.json").read_text())["baseline"] is None
    card = (tmp_path / "out" / "README.md").read_text()
    assert BASELINE_ROW not in card and BASELINE_ROW not in format_results_table(results)


def test_cue_words_come_from_train_counts_and_a_text_reads_its_first():
    from bench.lexical_cues import cue_words, first_cue

    texts = ["so thankful today"] * 4 + ["thankful but sad"] + ["jealous of them"] * 3 + ["a jealous day", "ok"]
    labels = np.array([0, 0, 0, 0, 1, 2, 2, 2, 1, 1])
    # "thankful": 5 texts, 4 of label 0 (80%); "jealous": 4 texts, 3 of label 2 (75%); "so": 4 texts, all label 0.
    assert cue_words(texts, labels, precision=0.8, min_texts=4) == {"so": 0, "thankful": 0, "today": 0}
    assert cue_words(texts, labels, precision=0.75, min_texts=5) == {"thankful": 0}
    cues = {"thankful": 0, "jealous": 2}
    assert first_cue("Jealous, yet THANKFUL", cues) == 2 and first_cue("nothing here", cues) is None
