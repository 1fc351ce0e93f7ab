"""The feature-set probe (bench/probe_features.py): its input is what the head's MLP reads, it ranks folders by what
their features carry, and it reads train and validation only (the synthetic folders have no test split to read)."""

import json

import numpy as np
import pytest
import torch
from datasets import load_from_disk

from bench import probe_features
from helpers import synthetic_features
from llm_fusion_fec.features.metadata import METADATA_FILE, read_metadata
from llm_fusion_fec.features.sweep import PROBE_STRENGTHS

SINGLE = "single_label_classification"


def test_head_input_is_each_views_layer_mean_then_each_encoders_vector(tmp_path):
    folder = synthetic_features(tmp_path, SINGLE, informative=-2, bert=("mean", 1.0))
    x, labels = probe_features.head_input(load_from_disk(str(folder / "validation")), read_metadata(folder))
    backbones = json.loads((folder / METADATA_FILE).read_text())["backbones"]
    assert [spec["name"] for spec in backbones] == ["llama", "bert"]
    split = load_from_disk(str(folder / "validation")).with_format("numpy")[:]
    expected = np.concatenate([split["llama"].astype(np.float32).mean(axis=1), split["bert"].astype(np.float32)], 1)
    torch.testing.assert_close(x, torch.from_numpy(expected))
    np.testing.assert_array_equal(labels, split["label"])


def test_folders_are_ranked_by_their_whole_feature_set(tmp_path, capsys):
    weak = synthetic_features(tmp_path / "weak", SINGLE, informative=-1, strength=0.2, bert=("pooler", 0.2))
    strong = synthetic_features(
        tmp_path / "strong",
        SINGLE,
        informative=-1,
        strength=0.2,
        bert=("mean", 3.0),
        pooling="layer_last_token",
        template="Say: {text}",
    )
    results = tmp_path / "probe.json"
    scores = probe_features.main([str(weak), str(strong), "--device", "cpu", "--results", str(results)])
    assert [row.features for row in scores] == [str(strong), str(weak)]
    assert scores[0].score > scores[1].score + 0.2
    assert scores[0].width == 8 + 8
    assert scores[0].backbones == ["llama (layer_last_token, prompted 'Say: {text}' [-1, -2, -3, -4])", "bert (mean)"]
    assert [row["features"] for row in json.loads(results.read_text())] == [str(strong), str(weak)]
    out = capsys.readouterr().out
    assert "weighted_f1 (%)" in out and f"Best: {strong}" in out and "bert (pooler)" in out
    assert "at the best of C = 0.0001, 0.001, 0.01, 0.1, 1." in out
    assert scores[0].c in PROBE_STRENGTHS and json.loads(results.read_text())[0]["c"] == scores[0].c

    other = synthetic_features(tmp_path / "other", SINGLE, informative=-1, rows=200)
    with pytest.raises(ValueError, match=r"other holds other train or validation rows than .*weak"):
        probe_features.probe_features([weak, other], device="cpu")
