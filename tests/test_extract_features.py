import json
import os
import subprocess
import sys

import numpy as np
import pytest
from datasets import Array2D, List, Value

import extract_features
from extract_features import extract, load_data, load_features, resolve_backbones
from helpers import REPO
from modeling_llm_fusion import FrozenBackbone, length_sorted_batches

LIMIT = 120


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory, tiny_backbones, data_dir):
    out = tmp_path_factory.mktemp("features") / "ED"
    result = extract(
        "ED", data_dir=str(data_dir), backbones=tiny_backbones, output_dir=out, limit=LIMIT, shard_size=50
    )
    assert result["computed"] == ["llama", "bert", "roberta"]
    return out


def test_columns_shapes_and_dtypes(features_dir, tiny_backbones):
    data, metadata = load_features(features_dir)
    assert sorted(data) == ["test", "train", "validation"]
    assert metadata["dataset"] == "ED" and metadata["problem_type"] == "single_label_classification"
    assert len(metadata["label_names"]) == 32 and metadata["label_names"][0] == "sad"
    assert [b["name"] for b in metadata["backbones"]] == ["llama", "bert", "roberta"]
    for split in data.values():
        assert split.column_names == ["text", "label", "llama", "bert", "roberta"]
        assert len(split) == LIMIT
        assert split.features["llama"] == Array2D(shape=(3, 32), dtype="float16")
        assert split.features["bert"] == List(Value("float16"), length=32)
        assert split.features["roberta"] == List(Value("float16"), length=24)
        row = split.with_format("numpy")[0]
        assert row["llama"].shape == (3, 32) and row["bert"].shape == (32,) and row["roberta"].shape == (24,)
    assert data["train"].features["label"].names == metadata["label_names"]


def test_features_equal_the_core_feature_code(features_dir, tiny_backbones):
    data, _ = load_features(features_dir)
    rows = data["test"].with_format("numpy")[-7:]  # the last shard, read back in the original row order
    for spec in tiny_backbones:
        expected = FrozenBackbone.load(spec)(list(rows["text"])).numpy()
        np.testing.assert_allclose(rows[spec["name"]].astype(np.float32), expected, atol=2e-3, rtol=1e-2)


def test_second_run_loads_no_model(features_dir, tiny_backbones, data_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a cache hit must not load any backbone")

    monkeypatch.setattr(FrozenBackbone, "load", refuse)
    result = extract("ED", data_dir=str(data_dir), backbones=tiny_backbones, output_dir=features_dir, limit=LIMIT,
                     shard_size=50)  # fmt: skip
    assert result["computed"] == []


def test_changed_backbone_recomputes_only_its_column(features_dir, tiny_backbones, data_dir, tmp_path):
    before, _ = load_features(features_dir)
    before = before["train"].with_format("numpy")[:]
    changed = [dict(spec) for spec in tiny_backbones]
    changed[1]["max_length"] = 8  # truncating BERT's input changes BERT's features only
    result = extract("ED", data_dir=str(data_dir), backbones=changed, output_dir=features_dir, limit=LIMIT,
                     shard_size=50)  # fmt: skip
    assert result["computed"] == ["bert"]
    after = load_features(features_dir)[0]["train"].with_format("numpy")[:]
    np.testing.assert_array_equal(after["llama"], before["llama"])
    np.testing.assert_array_equal(after["roberta"], before["roberta"])
    assert not np.array_equal(after["bert"], before["bert"])
    restored = extract("ED", data_dir=str(data_dir), backbones=tiny_backbones, output_dir=features_dir, limit=LIMIT,
                       shard_size=50)  # fmt: skip
    assert restored["computed"] == []  # the first BERT column is still cached: nothing to recompute


def test_interrupted_run_resumes(tiny_backbones, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "ED"
    calls = {"n": 0}
    original = FrozenBackbone.__call__

    def interrupt_after_two_batches(self, texts):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return original(self, texts)

    monkeypatch.setattr(FrozenBackbone, "__call__", interrupt_after_two_batches)
    kwargs = {"data_dir": str(data_dir), "backbones": tiny_backbones[:1], "output_dir": out, "limit": 40,
              "shard_size": 10, "batch_size": 10}  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        extract("ED", **kwargs)
    monkeypatch.setattr(FrozenBackbone, "__call__", original)
    result = extract("ED", **kwargs)
    # 3 splits x 40 rows = 120 texts; the two shards finished before the interruption are not redone.
    assert result["throughput"]["llama"]["texts"] == 100
    fresh = extract("ED", **{**kwargs, "output_dir": tmp_path / "fresh"})
    assert fresh["throughput"]["llama"]["texts"] == 120
    resumed, _ = load_features(out)
    uninterrupted, _ = load_features(tmp_path / "fresh")
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(resumed[split]["llama"], uninterrupted[split]["llama"])


def test_multi_label_go_emotions(tiny_backbones, data_dir, tmp_path):
    extract("go_emotions_multilabel", data_dir=str(data_dir), backbones=tiny_backbones[1:2], output_dir=tmp_path,
            limit=30)  # fmt: skip
    data, metadata = load_features(tmp_path)
    assert metadata["problem_type"] == "multi_label_classification" and len(metadata["label_names"]) == 28
    labels = np.array(data["validation"]["label"])
    assert labels.shape == (30, 28) and set(np.unique(labels)) <= {0.0, 1.0}
    first = (data_dir / "go_emotions_multilabel" / "dev.tsv").read_text().splitlines()[0].split("\t")[1]
    assert sorted(np.flatnonzero(labels[0])) == sorted(int(i) for i in first.split(","))


def test_length_sorted_batches():
    lengths = [5, 50, 7, 48, 6, 49]
    batches = length_sorted_batches(lengths, batch_size=2, max_tokens=None)
    assert batches == [[1, 5], [3, 2], [4, 0]]
    assert length_sorted_batches(lengths, batch_size=10, max_tokens=100) == [[1, 5], [3, 2], [4, 0]]
    assert length_sorted_batches(lengths, batch_size=10, max_tokens=200) == [[1, 5, 3, 2], [4, 0]]


def test_two_processes_equal_one(tiny_backbones, data_dir, tmp_path):
    overrides = [f"{spec['name']}={spec['model']}" for spec in tiny_backbones]
    args = ["extract_features.py", "--dataset", "ED", "--data-dir", str(data_dir), "--preset", "small",
            "--limit", "30", "--shard-size", "10"]  # fmt: skip
    args += ["--backbone", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, *args, "--output-dir", str(tmp_path / "one")], cwd=REPO, env=env,
                         capture_output=True, text=True)  # fmt: skip
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-port", "29517", *args,
         "--output-dir", str(tmp_path / "two")],
        cwd=REPO, env=env, capture_output=True, text=True,
    )  # fmt: skip
    assert two.returncode == 0, two.stderr[-2000:]
    # Both ranks took part, each with its own shards (3 splits x 3 shards of 10 rows, split 5 + 4).
    assert "[rank 0/2] llama: 5 shards" in two.stderr and "[rank 1/2] llama: 4 shards" in two.stderr
    a, b = load_features(tmp_path / "one")[0], load_features(tmp_path / "two")[0]
    for split in ("train", "validation", "test"):
        for column in ("label", "llama", "bert", "roberta"):
            np.testing.assert_array_equal(np.array(a[split][column]), np.array(b[split][column]))


# ---- bad input ----


def write_csv_dataset(folder, rows: list[tuple[str, int]], labels=("sad", "happy", "angry")):
    folder.mkdir(parents=True, exist_ok=True)
    lines = "text,label\n" + "".join(f'"{text}",{label}\n' for text, label in rows)
    for split in ("train", "valid", "test"):
        (folder / f"{split}.csv").write_text(lines)
    (folder / "label2idx.txt").write_text("".join(f"{name} {i}\n" for i, name in enumerate(labels)))
    return folder


def test_local_folder_dataset(tmp_path):
    folder = write_csv_dataset(tmp_path / "mine", [("so sad today", 0), ("what a day!", 1)])
    data, names, problem = load_data(str(folder))
    assert names == ["sad", "happy", "angry"] and problem == "single_label_classification"
    assert data["validation"]["label"] == [0, 1]


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        ([("fine", 0), ("", 1)], {}, r"Split 'train' .*: Text at position 1 is (NoneType|empty)"),
        ([("fine", 0), ("   ", 1)], {}, r"Text at position 1 is empty or only whitespace"),
        ([("fine", 0), ("too far", 7)], {}, r"row 1: label 7 is outside the label set \(ids 0..2"),
        ([("fine", 0)], {"text_column": "body"}, r"has no column 'body'; it has \['text', 'label'\]"),
    ],
)
def test_bad_data_is_named(tmp_path, rows, kwargs, message):
    folder = write_csv_dataset(tmp_path / "bad", rows)
    with pytest.raises(ValueError, match=message):
        load_data(str(folder), **kwargs)


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"Unknown data set 'no_such_set'"):
        load_data("no_such_set")


def test_bad_backbones_fail_before_any_work(tiny_backbones, data_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"Backbone 'bert' could not be loaded from '/nonexistent'"):
        resolve_backbones("small", ["bert=/nonexistent"])
    with pytest.raises(ValueError, match=r"no backbone 'gpt'"):
        resolve_backbones("small", ["gpt=x"])
    monkeypatch.setattr(FrozenBackbone, "load", lambda *a, **k: pytest.fail("must fail before loading weights"))
    wrong = [dict(tiny_backbones[0]), {**tiny_backbones[2], "hidden_size": 1024}]
    with pytest.raises(ValueError, match=r"Backbone 'roberta' .* has hidden size 24, but the config expects 1024"):
        extract("ED", data_dir=str(data_dir), backbones=wrong, output_dir=tmp_path, limit=5)
    deep = [{**tiny_backbones[0], "num_layers": 9}]
    with pytest.raises(ValueError, match=r"has 6 layers, fewer than num_layers=9"):
        extract("ED", data_dir=str(data_dir), backbones=deep, output_dir=tmp_path, limit=5)


def test_cli_reports_errors_without_traceback(tmp_path):
    result = subprocess.run([sys.executable, "extract_features.py", "--dataset", "no_such_set"], cwd=REPO,
                            capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: Unknown data set 'no_such_set'")
    assert "Traceback" not in result.stderr


def test_metadata_is_json(features_dir):
    metadata = json.loads((features_dir / extract_features.METADATA_FILE).read_text())
    assert metadata["feature_dtype"] == "float16" and metadata["rows"] == {"train": LIMIT, "validation": LIMIT,
                                                                           "test": LIMIT}  # fmt: skip
    # Each backbone records how it computed, so that the trained model is served the same way.
    assert [(b["dtype"], b["quantization"]) for b in metadata["backbones"]] == [(metadata["compute_dtype"], None)] * 3


@pytest.mark.real
def test_real_small_trio(small_models, data_dir, tmp_path):
    result = extract("ED", data_dir=str(data_dir), preset="small", backbone_paths=small_models, output_dir=tmp_path,
                     limit=12)  # fmt: skip
    data, metadata = load_features(tmp_path)
    # The config names the Hub models; the local folders were only where they were read from.
    assert [b["model"] for b in metadata["backbones"]] == [
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "sentence-transformers/all-MiniLM-L6-v2",
        "sentence-transformers/all-mpnet-base-v2",
    ]
    assert result["computed"] == ["llama", "bert", "roberta"]
    rows = data["test"].with_format("numpy")[:]
    assert (
        rows["llama"].shape == (12, 5, 576) and rows["bert"].shape == (12, 384) and rows["roberta"].shape == (12, 768)
    )
    for spec in metadata["backbones"]:
        expected = FrozenBackbone.load(spec, small_models[spec["name"]])(list(rows["text"])).numpy()
        np.testing.assert_allclose(rows[spec["name"]].astype(np.float32), expected, atol=2e-2, rtol=2e-2)
