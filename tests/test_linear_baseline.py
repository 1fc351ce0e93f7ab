"""The linear baseline (bench/linear_baseline.py): the probe chosen on validation, scored once on the test split."""

import json

import numpy as np
import pytest
from datasets import load_from_disk

from bench import linear_baseline
from bench.probe_features import head_input
from helpers import synthetic_features
from llm_fusion_fec.evaluation.metrics import load_metric
from llm_fusion_fec.features.metadata import read_metadata
from llm_fusion_fec.features.sweep import best_probe, swept_split

SPLITS = ("train", "validation", "test")


def test_the_validation_choice_is_scored_on_test(tmp_path, capsys):
    folder = synthetic_features(
        tmp_path / "f", "single_label_classification", informative=-2, strength=1.0, bert=("mean", 0.5), splits=SPLITS
    )
    results = tmp_path / "baseline.json"
    (row,) = linear_baseline.main([str(folder), "--c", "0.001", "1", "--results", str(results)])
    metadata = read_metadata(folder)
    splits = {split: head_input(load_from_disk(str(folder / split)), metadata) for split in SPLITS}
    metric = load_metric("single_label_classification")
    alone = {
        c: best_probe(*splits["train"], *splits["validation"], metadata.problem_type, [c], metric)
        for c in (0.001, 1.0)
    }
    chosen = max(alone.values(), key=lambda probe: probe.score)
    assert (row.c, row.validation, row.threshold) == (chosen.c, chosen.score, None)
    x_test, y_test = splits["test"]
    predicted = chosen.logits(x_test).argmax(axis=1)
    assert row.test["accuracy"] == pytest.approx(np.mean(predicted == y_test))
    assert row.test["accuracy"] > 0.6  # 3 labels: chance is a third
    assert json.loads(results.read_text())[0]["test"] == row.test
    out = capsys.readouterr().out
    assert f"{folder}: C {row.c:g}, validation {100 * row.validation:.2f}; test accuracy" in out


def test_multi_label_keeps_the_validation_threshold(tmp_path):
    folder = synthetic_features(tmp_path, "multi_label_classification", informative=-1, splits=SPLITS)
    row = linear_baseline.linear_baseline(folder, [0.1])
    metadata = read_metadata(folder)
    metric = load_metric("multi_label_classification")
    train, validation = (head_input(swept_split(folder, split), metadata) for split in ("train", "validation"))
    probe = best_probe(*train, *validation, metadata.problem_type, [0.1], metric)
    assert row.threshold == probe.threshold and set(row.test) == {"micro_f1", "macro_f1"}
    assert row.test["macro_f1"] > 0.6
