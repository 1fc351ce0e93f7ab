import errno
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from datasets import Array2D, List, Value

import llm_fusion_fec.commands.extract as extract_command
import llm_fusion_fec.features.backbones as backbones_module
import llm_fusion_fec.features.extraction as extract_features
from configuration_llm_fusion import BackboneSpec
from helpers import REPO, run_program, write_csv_dataset
from llm_fusion_fec.data.datasets import dataset_name, local_dataset_digest
from llm_fusion_fec.features.backbones import check_backbone_paths, folder_digest
from llm_fusion_fec.features.checksums import content_digest
from llm_fusion_fec.features.extraction import (
    ExtractionResult,
    column_key,
    customize_backbones,
    resolve_backbones,
)
from llm_fusion_fec.features.metadata import METADATA_FILE, FeatureMetadata, load_features, read_metadata
from llm_fusion_fec.features.run import extract
from modeling_llm_fusion import FrozenBackbone, length_sorted_batches

LIMIT = 120


@pytest.fixture(scope="module")
def features_dir(tmp_path_factory, tiny_backbones, data_dir):
    out = tmp_path_factory.mktemp("features") / "ED"
    result = extract(
        "ED", data_dir=str(data_dir), backbones=tiny_backbones, output_dir=out, limit=LIMIT, shard_size=50
    )
    assert result.computed == ["llama", "bert", "roberta"]
    return out


def test_columns_shapes_and_dtypes(features_dir, tiny_backbones):
    data, metadata = load_features(features_dir)
    assert sorted(data) == ["test", "train", "validation"]
    assert metadata.dataset == "ED" and metadata.problem_type == "single_label_classification"
    assert len(metadata.label_names) == 32 and metadata.label_names[0] == "sad"
    assert [b["name"] for b in metadata.backbones] == ["llama", "bert", "roberta"]
    for split in data.values():
        assert split.column_names == ["text", "label", "llama", "bert", "roberta"]
        assert len(split) == LIMIT
        assert split.features["llama"] == Array2D(shape=(3, 32), dtype="float16")
        assert split.features["bert"] == List(Value("float16"), length=32)
        assert split.features["roberta"] == List(Value("float16"), length=24)
        row = split.with_format("numpy")[0]
        assert row["llama"].shape == (3, 32) and row["bert"].shape == (32,) and row["roberta"].shape == (24,)
    assert data["train"].features["label"].names == metadata.label_names


def test_features_equal_the_core_feature_code(features_dir, tiny_backbones):
    data, _ = load_features(features_dir)
    rows = data["test"].with_format("numpy")[-7:]  # the last shard, read back in the original row order
    for spec in tiny_backbones:
        expected = FrozenBackbone.load(spec)(list(rows["text"])).numpy()
        np.testing.assert_allclose(rows[spec["name"]].astype(np.float32), expected, atol=2e-3, rtol=1e-2)


def test_second_run_loads_no_model(features_dir, tiny_backbones, data_dir, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a cache hit must not load any backbone")

    monkeypatch.setattr(FrozenBackbone, "load_model", staticmethod(refuse))
    result = extract(
        "ED", data_dir=str(data_dir), backbones=tiny_backbones, output_dir=features_dir, limit=LIMIT, shard_size=50
    )
    assert result.computed == []


def test_changed_backbone_recomputes_only_its_column(features_dir, tiny_backbones, data_dir, tmp_path):
    before, _ = load_features(features_dir)
    before = before["train"].with_format("numpy")[:]
    changed = [dict(spec) for spec in tiny_backbones]
    changed[1]["max_length"] = 8  # truncating BERT's input changes BERT's features only
    result = extract(
        "ED", data_dir=str(data_dir), backbones=changed, output_dir=features_dir, limit=LIMIT, shard_size=50
    )
    assert result.computed == ["bert"]
    after = load_features(features_dir)[0]["train"].with_format("numpy")[:]
    np.testing.assert_array_equal(after["llama"], before["llama"])
    np.testing.assert_array_equal(after["roberta"], before["roberta"])
    assert not np.array_equal(after["bert"], before["bert"])
    restored = extract(
        "ED", data_dir=str(data_dir), backbones=tiny_backbones, output_dir=features_dir, limit=LIMIT, shard_size=50
    )
    assert restored.computed == []  # the first BERT column is still cached: nothing to recompute


def test_interrupted_run_resumes(tiny_backbones, data_dir, tmp_path, monkeypatch):
    out = tmp_path / "ED"
    calls = {"n": 0}
    original = FrozenBackbone.views

    def interrupt_after_two_batches(self, texts, views):
        calls["n"] += 1
        if calls["n"] > 2:
            raise KeyboardInterrupt
        return original(self, texts, views)

    monkeypatch.setattr(FrozenBackbone, "views", interrupt_after_two_batches)
    kwargs = {
        "data_dir": str(data_dir),
        "backbones": tiny_backbones[:1],
        "output_dir": out,
        "limit": 40,
        "shard_size": 10,
        "batch_size": 10,
    }
    with pytest.raises(KeyboardInterrupt):
        extract("ED", **kwargs)
    monkeypatch.setattr(FrozenBackbone, "views", original)
    result = extract("ED", **kwargs)
    # 3 splits x 40 rows = 120 texts; the two shards finished before the interruption are not redone.
    assert result.throughput["llama"]["texts"] == 100
    fresh = extract("ED", **{**kwargs, "output_dir": tmp_path / "fresh"})
    assert fresh.throughput["llama"]["texts"] == 120
    resumed, _ = load_features(out)
    uninterrupted, _ = load_features(tmp_path / "fresh")
    for split in ("train", "validation", "test"):
        np.testing.assert_array_equal(resumed[split]["llama"], uninterrupted[split]["llama"])


def test_multi_label_go_emotions(tiny_backbones, data_dir, tmp_path):
    extract(
        "go_emotions_multilabel", data_dir=str(data_dir), backbones=tiny_backbones[1:2], output_dir=tmp_path, limit=30
    )
    data, metadata = load_features(tmp_path)
    assert metadata.problem_type == "multi_label_classification" and len(metadata.label_names) == 28
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
    args = [
        "extract_features.py",
        "--dataset",
        "ED",
        "--data-dir",
        str(data_dir),
        "--preset",
        "small-mean",
        "--limit",
        "30",
        "--shard-size",
        "10",
        "--log-level",
        "info",
    ]
    args += ["--backbone", *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    one = subprocess.run(
        [sys.executable, *args, "--output-dir", str(tmp_path / "one")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc-per-node",
            "2",
            "--master-port",
            "29517",
            *args,
            "--output-dir",
            str(tmp_path / "two"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert two.returncode == 0, two.stderr[-2000:]
    # Both ranks took part, each with its own shards (3 splits x 3 shards of 10 rows, split 5 + 4).
    assert "[rank 0/2] llama: 5 shards" in two.stderr and "[rank 1/2] llama: 4 shards" in two.stderr
    a, b = load_features(tmp_path / "one")[0], load_features(tmp_path / "two")[0]
    for split in ("train", "validation", "test"):
        for column in ("label", "llama", "bert", "roberta"):
            np.testing.assert_array_equal(np.array(a[split][column]), np.array(b[split][column]))


# ---- bad input ----


def test_bad_backbones_fail_before_any_work(tiny_backbones, data_dir, tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"Backbone 'bert' could not be loaded from '/nonexistent'"):
        resolve_backbones("small", ["bert=/nonexistent"])
    with pytest.raises(ValueError, match=r"no backbone 'gpt'"):
        resolve_backbones("small", ["gpt=x"])
    with pytest.raises(ValueError, match=r"from 'no/such-model' \(a local copy: --backbone-path bert=FOLDER\)"):
        resolve_backbones("small", ["bert=no/such-model"])  # offline in tests: a Hub id cannot load
    monkeypatch.setattr(
        FrozenBackbone, "load_model", staticmethod(lambda *a, **k: pytest.fail("must fail before loading weights"))
    )
    wrong = [dict(tiny_backbones[0]), {**tiny_backbones[2], "hidden_size": 1024}]
    with pytest.raises(ValueError, match=r"Backbone 'roberta' .* has hidden size 24, but the config expects 1024"):
        extract("ED", data_dir=str(data_dir), backbones=wrong, output_dir=tmp_path, limit=5)
    deep = [{**tiny_backbones[0], "num_layers": 9}]
    with pytest.raises(ValueError, match=r"has 6 layers, fewer than num_layers=9"):
        extract("ED", data_dir=str(data_dir), backbones=deep, output_dir=tmp_path, limit=5)


def test_cli_reports_errors_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "extract_features.py", "--dataset", "no_such_set"],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].startswith("error: Unknown data set 'no_such_set'")
    assert "Traceback" not in result.stderr


def test_metadata_is_json(features_dir):
    metadata = json.loads((features_dir / METADATA_FILE).read_text())
    assert metadata["feature_dtype"] == "float16" and metadata["rows"] == {
        "train": LIMIT,
        "validation": LIMIT,
        "test": LIMIT,
    }
    # Each backbone records how it computed, so that the trained model is served the same way.
    assert [(b["dtype"], b["quantization"]) for b in metadata["backbones"]] == [(metadata["compute_dtype"], None)] * 3


# ---- the cache decides on content, and verifies before it trusts ----

ROWS = [(f"text number {i} is about a day", i % 3) for i in range(12)]


def columns(features_dir) -> dict[str, dict]:
    """Every split of a features folder as numpy columns."""
    data, _ = load_features(features_dir)
    return {split: data[split].with_format("numpy")[:] for split in ("train", "validation", "test")}


def assert_same_columns(a: dict, b: dict) -> None:
    for split in a:
        assert a[split].keys() == b[split].keys()
        for column in a[split]:
            np.testing.assert_array_equal(a[split][column], b[split][column])


def refuse_model_loads(monkeypatch) -> None:
    monkeypatch.setattr(
        FrozenBackbone, "load_model", staticmethod(lambda *a, **k: pytest.fail("the shards were good: no model load"))
    )


@pytest.fixture
def small_run(tmp_path, tiny_backbones):
    """A local CSV data set (12 rows a split) and an `extract` of it with the tiny BERT, 3 shards a split."""
    folder = write_csv_dataset(tmp_path / "mine", ROWS)
    kwargs = {"backbones": tiny_backbones[1:2], "output_dir": tmp_path / "out", "shard_size": 4}

    def run(**overrides):
        return extract(str(folder), **{**kwargs, **overrides})

    run.folder, run.out = folder, tmp_path / "out"
    return run


def test_corrected_label_is_picked_up_without_recomputing(small_run, monkeypatch):
    small_run()
    train = small_run.folder / "train.csv"
    train.write_text(train.read_text().replace('"text number 5 is about a day",2', '"text number 5 is about a day",0'))
    refuse_model_loads(monkeypatch)
    result = small_run()
    assert result.computed == []  # the features depend on the texts only: the cache serves them
    data, metadata = load_features(small_run.out)
    assert data["train"]["label"][5] == 0 and data["validation"]["label"][5] == 2
    assert metadata.data_digests["train"] != metadata.data_digests["validation"]


def test_other_shard_size_after_an_interrupted_run(tiny_backbones, data_dir, tmp_path, monkeypatch):
    kwargs = {"data_dir": str(data_dir), "backbones": tiny_backbones[1:2], "limit": 20, "batch_size": 8}
    original = FrozenBackbone.views
    calls = {"n": 0}

    def interrupt_after_one_batch(self, texts, views):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt
        return original(self, texts, views)

    monkeypatch.setattr(FrozenBackbone, "views", interrupt_after_one_batch)
    with pytest.raises(KeyboardInterrupt):
        extract("ED", output_dir=tmp_path / "ED", shard_size=8, **kwargs)  # leaves one shard of 8 rows
    monkeypatch.setattr(FrozenBackbone, "views", original)
    extract("ED", output_dir=tmp_path / "ED", **kwargs)  # the default shard size: other shards
    extract("ED", output_dir=tmp_path / "fresh", **kwargs)
    assert_same_columns(columns(tmp_path / "ED"), columns(tmp_path / "fresh"))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _change_a_byte(path):
    content = bytearray(path.read_bytes())
    content[-100] ^= 0xFF
    path.write_bytes(bytes(content))


def _drop_record(path):
    path.with_suffix(".json").unlink()


@pytest.mark.parametrize("damage", [_truncate, _change_a_byte, _drop_record])
def test_damaged_cache_shard_is_recomputed(small_run, caplog, damage):
    small_run()
    before = columns(small_run.out)
    (shard,) = small_run.out.glob("cache/train/bert-*/shard-00001.arrow")
    damage(shard)
    shutil.rmtree(small_run.out / "train")  # the output must be rebuilt, from the cache
    with caplog.at_level("WARNING"):
        result = small_run()
    assert f"Cache shard {shard} cannot be trusted" in caplog.text
    assert result.computed == ["bert"] and result.throughput["bert"]["texts"] == 4  # that shard only
    assert_same_columns(columns(small_run.out), before)


def test_damaged_output_is_rebuilt_from_the_cache(small_run, caplog, monkeypatch):
    small_run()
    before = columns(small_run.out)
    (arrow,) = (small_run.out / "train").glob("data-*.arrow")
    _truncate(arrow)
    refuse_model_loads(monkeypatch)
    with caplog.at_level("WARNING"):
        assert small_run().computed == []
    assert "split 'train' does not match its checksum" in caplog.text
    assert_same_columns(columns(small_run.out), before)


def test_killed_assembly_leaves_nothing_trusted_and_the_rerun_rebuilds(small_run, monkeypatch):
    small_run()
    train = small_run.folder / "train.csv"
    train.write_text(train.read_text().replace('"text number 5 is about a day",2', '"text number 5 is about a day",0'))
    rename = Path.rename

    def killed_after_the_first_split(self, target):
        if self.parent.name.startswith("._saving.") and self.name == "validation":
            raise KeyboardInterrupt  # train is already replaced, validation and test are not
        return rename(self, target)

    monkeypatch.setattr(Path, "rename", killed_after_the_first_split)
    with pytest.raises(KeyboardInterrupt):
        small_run()
    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(ValueError, match=r"no fec_features\.json\) \(its extraction did not finish\)"):
        load_features(small_run.out)
    load = FrozenBackbone.__dict__["load_model"]
    refuse_model_loads(monkeypatch)
    assert small_run().computed == []
    data, _ = load_features(small_run.out)
    assert data["train"]["label"][5] == 0 and all(len(data[split]) == 12 for split in data)
    assert not list(small_run.out.glob("*_saving*"))
    monkeypatch.setattr(FrozenBackbone, "load_model", load)
    fresh = small_run(output_dir=small_run.out.parent / "fresh")
    assert_same_columns(columns(small_run.out), columns(fresh.output_dir))


@pytest.mark.parametrize("where", ["shard", "assembly"])
def test_full_disk_is_one_line_and_leaves_no_temporary_file(small_run, monkeypatch, where):
    from datasets.arrow_writer import ArrowWriter

    write_table = ArrowWriter.write_table

    def full(self, *args, **kwargs):
        if str(small_run.out / ("cache" if where == "shard" else "._saving.")) in str(self._path):
            raise OSError(errno.ENOSPC, "No space left on device")
        return write_table(self, *args, **kwargs)

    monkeypatch.setattr(ArrowWriter, "write_table", full)
    with pytest.raises(ValueError, match=r"^No space left on the device while writing .*: free some space") as error:
        small_run()
    assert "\n" not in str(error.value)
    leftovers = [p for p in small_run.out.rglob("*") if p.name.endswith(".tmp") or "_saving" in p.name]
    assert leftovers == [] and not (small_run.out / METADATA_FILE).exists()
    monkeypatch.setattr(ArrowWriter, "write_table", write_table)
    assert small_run().computed == ([] if where == "assembly" else ["bert"])  # finished shards are kept
    load_features(small_run.out)


def test_cli_is_quiet_and_prints_the_real_output_path(tiny_backbones, tmp_path):
    folder = write_csv_dataset(tmp_path / "data" / "mine", ROWS)
    overrides = [f"{spec['name']}={spec['model']}" for spec in tiny_backbones]
    command = [
        sys.executable,
        str(REPO / "extract_features.py"),
        "--dataset",
        str(folder),
        "--preset",
        "small-mean",
        "--limit",
        "4",
        "--backbone",
        *overrides,
    ]
    result = subprocess.run(
        command, cwd=tmp_path, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}
    )
    assert result.returncode == 0, result.stderr[-2000:]
    folder_name = dataset_name(str(folder))  # its folder's name and the start of its files' digest
    assert re.fullmatch(r"mine-[0-9a-f]{8}", folder_name)
    assert result.stdout.splitlines()[0].endswith(f"-> features/{folder_name}")
    assert (tmp_path / "features" / folder_name / METADATA_FILE).exists()
    assert "INFO" not in result.stderr  # warnings at most, unless --log-level info


def test_help_imports_no_heavy_module():
    answer = run_program("script_help.py", "llm_fusion_fec.commands.extract", repo=True)
    assert "--backbone-path" in answer["help"]
    assert [m for m in ("torch", "datasets") if m in answer["modules"]] == []


def test_one_progress_bar_per_backbone(small_run, tiny_backbones, monkeypatch):
    import tqdm

    shown = []
    init = tqdm.std.tqdm.__init__

    def record(self, *args, **kwargs):
        if kwargs.get("disable") is not True:  # None: shown on a terminal
            shown.append(kwargs.get("desc"))
        init(self, *args, **kwargs)

    monkeypatch.setattr(tqdm.std.tqdm, "__init__", record)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # a terminal: bars (a log gets lines, test_progress.py)
    small_run(backbones=tiny_backbones[1:])
    assert shown == ["bert", "roberta"]


# ---- the typed contract ----


def test_metadata_is_a_typed_record(small_run):
    result = small_run()
    metadata = read_metadata(small_run.out)
    assert isinstance(result, ExtractionResult) and isinstance(metadata, FeatureMetadata)
    assert result.metadata == metadata and result.output_dir == small_run.out
    assert metadata.dataset == str(small_run.folder) and re.fullmatch(r"mine-[0-9a-f]{8}", metadata.dataset_name)
    assert metadata.dataset_digest == local_dataset_digest(str(small_run.folder))
    assert metadata.head == {"standardize_features": False, "encoders_in_tail": False}  # the paper preset's
    assert metadata.rows == {"train": 12, "validation": 12, "test": 12}
    assert metadata.split_checksums == {
        split: extract_features.split_checksum(small_run.out / split) for split in ("train", "validation", "test")
    }
    assert list(metadata.column_keys["bert"]) == ["train", "validation", "test"]
    # Read from a local folder (no Hub revision): its files' digest is what identifies its weights.
    assert metadata.backbones[0].revision is None and metadata.limit is None
    assert metadata.local_weights == {"bert": folder_digest(Path(metadata.backbones[0].model))}
    assert small_run(limit=5, output_dir=small_run.out.parent / "cut").metadata.limit == 5  # a cut run says so
    data = load_features(small_run.out)[0]
    assert metadata.content_digests == {split: content_digest(data[split]) for split in data}
    record = json.loads((small_run.out / METADATA_FILE).read_text())
    assert FeatureMetadata.from_dict(record) == metadata
    (small_run.out / METADATA_FILE).write_text(json.dumps({**record, "surprise": 1}))
    with pytest.raises(ValueError, match=r"is not metadata this version can read \(unknown keys \['surprise'\]"):
        load_features(small_run.out)


# ---- bad arguments: one line, naming the flag ----


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--limit", "0"], r"--limit must be an integer of at least 1 \(leave it out to use every row\), got 0"),
        (["--shard-size", "0"], r"--shard-size must be an integer of at least 1, got 0"),
        (["--batch-size", "0"], r"--batch-size must be an integer of at least 1, got 0"),
        (["--max-tokens", "-5"], r"--max-tokens must be an integer of at least 1 \(leave it out for no token "),
        (
            ["--backbone-path", "gpt=/tmp"],
            r"--backbone-path gpt=/tmp: no backbone 'gpt'; the backbones are \['llama', "
            r"'llama_window', 'bert', 'roberta'\]",
        ),
        (
            ["--backbone-path", "bert=/missing"],
            r"--backbone-path bert=/missing: folder not found; it must be a local "
            r"copy of sentence-transformers/all-MiniLM-L6-v2",
        ),
    ],
)
def test_bad_arguments_are_refused_before_any_work(monkeypatch, argv, message):
    monkeypatch.setattr(extract_features, "load_data", lambda *a, **k: pytest.fail("must fail before reading data"))
    with pytest.raises(ValueError, match=message):
        extract_command.main(["--preset", "small", *argv])


@pytest.mark.real
def test_real_small_trio(small_models, data_dir, tmp_path):
    result = extract(
        "ED", data_dir=str(data_dir), preset="small", backbone_paths=small_models, output_dir=tmp_path, limit=12
    )
    data, metadata = load_features(tmp_path)
    # The config names the Hub models; the local folders were only where they were read from. The LLM's folder,
    # given by its name, served both of its views, in one pass.
    assert [b["model"] for b in metadata.backbones] == [
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "sentence-transformers/all-MiniLM-L6-v2",
        "sentence-transformers/all-mpnet-base-v2",
    ]
    assert result.computed == ["llama", "llama_window", "bert", "roberta"]
    assert list(result.throughput) == ["llama, llama_window", "bert", "roberta"]
    rows = data["test"].with_format("numpy")[:]
    shapes = {name: rows[name].shape for name in ("llama", "llama_window", "bert", "roberta")}
    assert shapes == {"llama": (12, 1, 576), "llama_window": (12, 5, 576), "bert": (12, 384), "roberta": (12, 768)}
    for spec in metadata.backbones:
        expected = FrozenBackbone.load(spec, small_models["llama" if spec["name"] == "llama_window" else spec["name"]])
        np.testing.assert_allclose(
            rows[spec["name"]].astype(np.float32), expected(list(rows["text"])).numpy(), atol=2e-2, rtol=2e-2
        )


# ---- layer choice, poolings and templates ----


def test_views_that_read_the_same_prompt_are_extracted_in_one_pass(tiny_backbones, tmp_path, monkeypatch):
    prompt = 'This sentence : "{text}" means in one word:"'
    llm = {key: value for key, value in tiny_backbones[0].items() if key != "num_layers"}
    views = [
        {**llm, "layers": [-4], "pooling": "layer_last_token", "template": prompt},
        {**llm, "name": "llama_text", "layers": [-1, -2], "pooling": "layer_text_mean", "template": prompt},
    ]
    folder = write_csv_dataset(tmp_path / "mine", ROWS)
    loads = []
    load, load_model = FrozenBackbone.load, FrozenBackbone.load_model
    counted = staticmethod(lambda spec, *a, **k: loads.append(spec.name) or load_model(spec, *a, **k))
    monkeypatch.setattr(FrozenBackbone, "load_model", counted)
    result = extract(str(folder), backbones=[*views, tiny_backbones[1]], output_dir=tmp_path / "out", shard_size=4)
    assert loads == ["llama", "bert"] and result.computed == ["llama", "llama_text", "bert"]
    assert list(result.throughput) == ["llama, llama_text", "bert"]
    rows = load_features(tmp_path / "out")[0]["test"].with_format("numpy")[:]
    for spec in views:
        expected = load(spec)(list(rows["text"])).numpy()
        np.testing.assert_allclose(rows[spec["name"]].astype(np.float32), expected, atol=2e-3, rtol=1e-2)

    # An interrupted run left each view missing shards the other has: one pass computes them all, and writes only
    # the missing ones.
    cache = tmp_path / "out" / "cache"
    (token_shard,) = (cache / "test").glob("llama-*/shard-00000.arrow")
    (text_shard,) = (cache / "train").glob("llama_text-*/shard-00001.arrow")
    kept = next((cache / "test").glob("llama_text-*/shard-00000.arrow"))
    kept_time = kept.stat().st_mtime_ns
    token_shard.unlink()
    text_shard.unlink()
    loads.clear()
    options = {"output_dir": tmp_path / "again", "cache_dir": cache, "shard_size": 4}
    result = extract(str(folder), backbones=[*views, tiny_backbones[1]], **options)
    assert loads == ["llama"] and list(result.throughput) == ["llama, llama_text"]
    assert token_shard.exists() and text_shard.exists() and kept.stat().st_mtime_ns == kept_time
    again = load_features(tmp_path / "again")[0]["test"].with_format("numpy")[:]
    for spec in views:
        np.testing.assert_array_equal(again[spec["name"]], rows[spec["name"]])


def test_a_backbone_path_by_model_id_points_every_view_of_that_model(tiny_backbones, tmp_path):
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"
    views = [{**tiny_backbones[0], "model": hub_id}, {**tiny_backbones[0], "name": "llama_window", "model": hub_id}]
    specs = [BackboneSpec.from_dict(spec) for spec in (*views, tiny_backbones[1])]
    by_name = check_backbone_paths({hub_id: str(tmp_path), "bert": str(tmp_path)}, specs)
    assert by_name == {"llama": str(tmp_path), "llama_window": str(tmp_path), "bert": str(tmp_path)}
    # A folder given by a backbone's name serves the other views of its model too: no second --backbone-path.
    assert check_backbone_paths({"llama": str(tmp_path)}, specs) == {
        "llama": str(tmp_path),
        "llama_window": str(tmp_path),
    }
    with pytest.raises(ValueError, match=r"no backbone 'org/x'; .* \(or a model id, for every backbone of that model"):
        check_backbone_paths({"org/x": str(tmp_path)}, specs)


def test_cache_key_follows_layers_pooling_and_template(tiny_backbones):
    llama = BackboneSpec.from_dict(tiny_backbones[0])
    variants = [
        llama,
        {**llama, "layers": [-1, -3, -2]},
        {**llama, "layers": [-1, -2, -4]},
        {**llama, "pooling": "layer_last_token"},
        {**llama, "template": "{text}!"},
        {**llama, "template": "Text: {text}"},
    ]
    bert = BackboneSpec.from_dict(tiny_backbones[1])
    variants += [bert, {**bert, "pooling": "cls"}, {**bert, "pooling": "mean"}]
    keys = [column_key(spec, None, "float32", "texts") for spec in variants]
    assert len(set(keys)) == len(keys)
    # A description written before these keys existed keeps its cached columns.
    older = {k: v for k, v in llama.items() if k not in ("layers", "template")}
    assert column_key(older, None, "float32", "texts") == keys[0]


def test_customize_backbones(tiny_backbones, tmp_path):
    specs = [dict(spec) for spec in tiny_backbones]
    chosen = customize_backbones(
        specs,
        layers=["llama=-2,0,4"],
        pooling=["llama=layer_last_token"],
        template=['llama=Text: "{text}" means'],
        max_length=32,
    )
    assert (chosen[0]["layers"], chosen[0]["num_layers"], chosen[0]["pooling"]) == ([-2, 0, 4], 3, "layer_last_token")
    assert chosen[0]["template"] == 'Text: "{text}" means' and {s["max_length"] for s in chosen} == {32}
    assert specs == tiny_backbones  # the input is not mutated
    prompted = [{**specs[0], "template": "Say: {text}"}, *specs[1:]]
    assert customize_backbones(prompted, template=["llama=none"])[0]["template"] is None  # no prompt
    every = customize_backbones(specs, all_layers=True)
    assert every[0]["layers"] == [-1, -2, -3, -4, -5, -6, -7]  # the tiny Llama's 6 layers, then its embeddings
    assert every[1:] == [BackboneSpec.from_dict(spec) for spec in specs[1:]]
    (tmp_path / "spec.json").write_text(json.dumps({**tiny_backbones[0], "num_layers": 1, "layers": [3]}))
    assert customize_backbones(specs, spec_files=[tmp_path / "spec.json"])[0]["layers"] == [3]
    top = {**tiny_backbones[0], "name": "llama_top", "num_layers": 1, "layers": [-1]}
    (tmp_path / "added.json").write_text(json.dumps(top))
    added = customize_backbones(specs, added_spec_files=[tmp_path / "added.json"], pooling=["llama_top=layer_mean"])
    assert [spec["name"] for spec in added] == ["llama", "bert", "roberta", "llama_top"]
    assert added[-1]["layers"] == [-1] and added[0] == BackboneSpec.from_dict(specs[0])
    for kwargs, message in [
        ({"layers": ["gpt=-1"]}, r"--layers gpt=...: no backbone 'gpt'; the backbones are \['llama', 'bert'"),
        ({"layers": ["llama=-1,x"]}, r"--layers expects NAME=I,J,K with integer indices, got llama=-1,x"),
        ({"layers": ["llama=-1,-1"]}, r"name a hidden state twice"),
        ({"layers": ["bert=-1"]}, r"'bert': layers needs a layer pooling \(layer_mean, .*\), not 'pooler'"),
        ({"template": ["llama=no slot"]}, r"exactly one \{text\} slot"),
        ({"all_layers": True, "layers": ["llama=-1"]}, r"--all-layers and --layers llama=... contradict"),
        ({"all_layers": True, "pooling": ["llama=cls"]}, r"--all-layers: no backbone has a layer pooling"),
        ({"spec_files": [tmp_path / "missing.json"]}, r"--backbone-spec .*missing.json: not a readable JSON"),
        ({"added_spec_files": [tmp_path / "spec.json"]}, r"--add-backbone-spec: a backbone named 'llama' exists"),
    ]:
        with pytest.raises(ValueError, match=message):
            customize_backbones(specs, **kwargs)


def test_layers_outside_the_model_fail_before_any_work(tiny_backbones, data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(
        FrozenBackbone, "load_model", staticmethod(lambda *a, **k: pytest.fail("must fail before loading weights"))
    )
    deep = [{**tiny_backbones[0], "num_layers": 2, "layers": [-1, 7]}]
    with pytest.raises(ValueError, match=r"has 7 hidden states .*layers \[7\] are out of range"):
        extract("ED", data_dir=str(data_dir), backbones=deep, output_dir=tmp_path, limit=5)


def test_names_and_flags_that_would_fail_late_are_refused_before_any_work(tiny_backbones, tmp_path, monkeypatch):
    monkeypatch.setattr(extract_features, "load_data", lambda *a, **k: pytest.fail("must fail before reading data"))
    llama = {key: value for key, value in tiny_backbones[0].items() if key != "name"}
    files = {
        "text": [{**llama, "name": "text"}],
        "twice": [{**llama, "name": "llama"}, {**llama, "name": "llama", "layers": [-2], "num_layers": 1}],
        "empty": [],
    }
    for name, described in files.items():
        (tmp_path / f"{name}.json").write_text(json.dumps(described))
    cases = [
        (["--add-backbone-spec", str(tmp_path / "text.json")], r"Backbone name 'text' is the name of a data column"),
        (["--backbone-spec", str(tmp_path / "twice.json")], r"twice.json: two descriptions of backbone 'llama'"),
        (["--backbone-spec", str(tmp_path / "empty.json")], r"empty.json: the list of backbone descriptions is empty"),
        (["--layers", "llama=-1", "llama=-2"], r"--layers gives llama twice \(llama=-1 and llama=-2\)"),
        (["--pooling", "bert=mean", "bert=cls"], r"--pooling gives bert twice"),
    ]
    for argv, message in cases:
        with pytest.raises(ValueError, match=message):
            extract_command.main(["--preset", "small", "--output-dir", str(tmp_path / "out"), *argv])


def test_a_large_backbone_on_the_cpu_gets_a_notice(caplog):
    from transformers import LlamaConfig

    spec = {"name": "llama", "model": "meta-llama/Llama-2-7b-chat-hf"}
    config = LlamaConfig(hidden_size=4096, num_hidden_layers=32, vocab_size=32000)
    with caplog.at_level("WARNING"):
        backbones_module.notice_large_models_on_cpu([spec], {"llama": config}, "float32")
    assert "about 6.6B parameters" in caplog.text and "26 GB" in caplog.text and "--preset small" in caplog.text
    caplog.clear()
    small = LlamaConfig(hidden_size=576, num_hidden_layers=30, vocab_size=49152)
    backbones_module.notice_large_models_on_cpu([{**spec, "model": "small"}], {"llama": small}, "float32")
    assert caplog.text == ""
