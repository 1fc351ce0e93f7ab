import json
import re
from pathlib import Path

import pytest
from datasets import Dataset, DatasetDict

from llm_fusion_fec.data.datasets import dataset_name
from llm_fusion_fec.features.metadata import (
    METADATA_FILE,
    FeatureMetadata,
    default_features_dir,
    load_features,
    read_metadata,
)

RECORD = {
    "dataset": "ED",
    "problem_type": "single_label_classification",
    "label_names": ["a", "b"],
    "backbones": [{"name": "bert", "model": "m", "pooling": "pooler", "hidden_size": 2}],
}


@pytest.fixture(autouse=True)
def in_an_empty_folder(tmp_path, monkeypatch):
    """Run where there is no features/ or outputs/ folder: the defaults these tests read must not depend on what the
    working tree holds (a quick start's features/ED would choose its recipe)."""
    monkeypatch.chdir(tmp_path)


def features_folder(folder: Path, rows: dict[str, int]) -> Path:
    splits = {split: Dataset.from_dict({"label": [0] * n, "bert": [[0.0, 1.0]] * n}) for split, n in rows.items()}
    DatasetDict(splits).save_to_disk(str(folder))
    (folder / METADATA_FILE).write_text(json.dumps({**RECORD, "rows": rows}))
    return folder


# ---- the record ----


def test_the_record_round_trips_and_names_its_data_set():
    metadata = FeatureMetadata.from_dict(RECORD)
    assert metadata.dataset_name == "ED" and metadata.feature_dtype == "float16" and metadata.rows == {}
    assert FeatureMetadata.from_dict(metadata.to_dict()) == metadata
    assert "split_checksums" not in metadata.identity()


@pytest.mark.parametrize(
    ("change", "message"),
    [({"surprise": 1}, r"unknown keys \['surprise'\], missing keys \[\]"), ({"label_names": None}, r"missing keys")],
)
def test_a_record_with_unknown_or_missing_keys_is_refused(change, message):
    record = {key: value for key, value in {**RECORD, **change}.items() if value is not None}
    with pytest.raises(ValueError, match=message):
        FeatureMetadata.from_dict(record)


# ---- reading a folder ----


def test_load_features_gives_the_splits_and_their_record(tmp_path):
    data, metadata = load_features(features_folder(tmp_path / "ED", {"train": 3, "validation": 2}))
    assert {split: len(rows) for split, rows in data.items()} == {"train": 3, "validation": 2}
    assert metadata == read_metadata(tmp_path / "ED") and metadata.rows == {"train": 3, "validation": 2}


def test_a_folder_that_is_not_a_features_folder_names_the_fix(tmp_path):
    with pytest.raises(ValueError, match=r"is not a features folder \(no fec_features\.json\); create one with"):
        read_metadata(tmp_path)
    DatasetDict({"train": Dataset.from_dict({"label": [0]})}).save_to_disk(str(tmp_path / "unfinished"))
    with pytest.raises(ValueError, match=r"\(its extraction did not finish\)"):
        load_features(tmp_path / "unfinished")
    (tmp_path / METADATA_FILE).write_text("{}")
    with pytest.raises(ValueError, match=r"is not metadata this version can read .*rebuild the folder"):
        read_metadata(tmp_path)


def test_a_split_whose_rows_differ_from_the_record_is_refused(tmp_path):
    folder = features_folder(tmp_path / "ED", {"train": 3})
    (folder / METADATA_FILE).write_text(json.dumps({**RECORD, "rows": {"train": 4}}))
    with pytest.raises(ValueError, match=r"Split 'train' .* has 3 rows, but fec_features\.json records 4: rerun"):
        load_features(folder)


# ---- the default folder ----


def test_dataset_name_and_default_features_dir(tmp_path, monkeypatch):
    (tmp_path / "some" / "dir").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert dataset_name("ED") == "ED" and dataset_name("go_emotions_multilabel") == "go_emotions_multilabel"
    assert dataset_name("org/name") == "org--name"
    assert dataset_name("some/dir/..") == "some" and dataset_name(str(tmp_path / "some" / "dir")) == "dir"
    assert dataset_name(f"train={tmp_path}/some/dir/train.csv,validation=v.csv,test=t.csv") == "dir"
    assert dataset_name("/") == "dataset" and dataset_name("..") == tmp_path.parent.name
    assert dataset_name("my data (v2)!") == "my-data-v2-"
    for name in ("ED", "org/name", "/", "..", ".", "../../x y", "a/../.."):
        slug = dataset_name(name)
        assert re.fullmatch(r"[A-Za-z0-9._-]+", slug) and slug not in (".", "..")
        assert default_features_dir(name) == Path("features") / slug
        assert default_features_dir(name).resolve().parent == (tmp_path / "features").resolve()


def test_training_defaults_to_the_same_features_folder(tmp_path):
    import llm_fusion_fec.commands.train as train_command

    for dataset in ("go_emotion", str(tmp_path / "mine"), "org/name"):
        args, _ = train_command.parse_args(["--dataset", dataset])
        assert args.features_dir == str(default_features_dir(dataset))
