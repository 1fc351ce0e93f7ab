import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value, load_from_disk

from helpers import CORPUS
from llm_fusion_fec.commands.fec import main as fec
from llm_fusion_fec.data.datasets import dataset_name
from llm_fusion_fec.features.metadata import (
    METADATA_FILE,
    FeatureMetadata,
    default_features_dir,
    load_features,
    read_metadata,
    record_parts,
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
    columns = Features({"label": ClassLabel(names=RECORD["label_names"]), "bert": List(Value("float16"), length=2)})
    splits = {
        split: Dataset.from_dict({"label": [0] * n, "bert": [[0.0, 1.0]] * n}, features=columns)
        for split, n in rows.items()
    }
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


# ---- features checked against their record before training ----


def write_splits(folder: Path, tag: str, rows: int = 12) -> Path:
    """A local data set: train/valid/test CSV files (`rows` each, each text its own, holding `tag`), its labels."""
    folder.mkdir(parents=True)
    for split in ("train", "valid", "test"):
        lines = [f'"{CORPUS[n % 5]} ({tag} {split} {n})",{n % 3}' for n in range(rows)]
        (folder / f"{split}.csv").write_text("text,label\n" + "\n".join(lines) + "\n")
    (folder / "label2idx.txt").write_text("sad 0\nhappy 1\nangry 2\n")
    return folder


def hub_specs(tiny_backbones: list[dict]) -> dict:
    """Extraction options for the tiny backbones named by Hub ids (so that the features can be pushed)."""
    specs = [{**spec, "model": f"fec-tests/tiny-{spec['name']}"} for spec in tiny_backbones]
    return {"backbones": specs, "backbone_paths": {spec["name"]: spec["model"] for spec in tiny_backbones}}


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_backbones) -> Path:
    """Features of a local data set whose train and test splits have as many rows (a swap keeps the row counts)."""
    from llm_fusion_fec import extract

    root = tmp_path_factory.mktemp("verified")
    data = write_splits(root / "mine", "mine")
    return extract(str(data), output_dir=root / "features", **hub_specs(tiny_backbones)).output_dir


def train_command(features: str | Path, output: Path, *extra: str) -> list[str]:
    flags = ["--output_dir", str(output), "--max_steps", "2", "--disable_tqdm", "true", "--report_to", "none"]
    return ["train", "--features_dir", str(features), *flags, *extra]


def refused(capsys, argv: list[str], output: Path) -> str:
    """The one line `train_fusion.py` (`fec train`) answers with, having trained nothing."""
    capsys.readouterr()  # what the test printed before
    assert fec(argv) == 1
    error = capsys.readouterr().err.strip()
    assert "\n" not in error and error.startswith("error: ") and not output.exists()
    return error.removeprefix("error: ")


def tamper_feature_value(split_folder: Path) -> None:
    """Change one feature value inside an Arrow file, in place (the file still loads)."""
    arrow = next(split_folder.glob("data-*.arrow"))
    values = load_from_disk(str(split_folder)).with_format("numpy")[0]["bert"].astype(np.float16)  # as stored
    content = arrow.read_bytes()
    assert values.tobytes() in content
    changed = values.copy()
    changed[0] += 1
    arrow.write_bytes(content.replace(values.tobytes(), changed.tobytes(), 1))


def copy_of(features: Path, target: Path, edit=None) -> Path:
    shutil.copytree(features, target, ignore=shutil.ignore_patterns("cache"))
    if edit:
        record = json.loads((target / METADATA_FILE).read_text())
        (target / METADATA_FILE).write_text(json.dumps(edit(record)))
    return target


def other_backbone(record: dict) -> dict:
    record["backbones"][0]["model"] = "org/another-llm"  # the same shapes, another model
    return record


def test_features_as_extracted_load_without_a_warning(extracted, caplog):
    data, metadata = load_features(extracted)
    assert set(metadata.content_digests) == set(metadata.split_checksums) == {"train", "validation", "test"}
    assert metadata.record_digests == record_parts(json.loads((extracted / METADATA_FILE).read_text()))
    assert not [record for record in caplog.records if record.levelname == "WARNING"]


def test_a_tampered_value_is_refused_naming_the_split(extracted, tmp_path, capsys):
    features = copy_of(extracted, tmp_path / "features")
    tamper_feature_value(features / "test")
    error = refused(capsys, train_command(features, tmp_path / "out"), tmp_path / "out")
    assert error == (
        f"Split 'test' in {features} holds other feature values than those extracted: its files do not match the "
        "checksum fec_features.json records; extract the features again, or get the folder anew."
    )


def test_a_changed_label_is_refused_naming_the_split(extracted, tmp_path, capsys):
    features = copy_of(extracted, tmp_path / "features")
    validation = load_from_disk(str(features / "validation"))
    relabelled = validation.map(
        lambda row, i: {"label": (row["label"] + 1) % 3 if i == 2 else row["label"]}, with_indices=True
    )
    relabelled.save_to_disk(str(tmp_path / "relabelled"))
    shutil.rmtree(features / "validation")
    shutil.move(tmp_path / "relabelled", features / "validation")
    error = refused(capsys, train_command(features, tmp_path / "out"), tmp_path / "out")
    assert error.startswith(f"Split 'validation' in {features} holds other texts or labels than those extracted: ")


def test_a_train_shard_swapped_with_a_test_shard_is_refused(extracted, tmp_path, capsys):
    features = copy_of(extracted, tmp_path / "features")
    train, test = (next((features / split).glob("data-*.arrow")) for split in ("train", "test"))
    train_bytes = train.read_bytes()
    train.write_bytes(test.read_bytes())
    test.write_bytes(train_bytes)
    assert load_features(features, verify=False)[0]["train"].num_rows == 12  # the same size: rows do not tell
    error = refused(capsys, train_command(features, tmp_path / "out"), tmp_path / "out")
    assert error == (
        f"Split 'train' in {features} holds the rows of split 'test': its files do not match the checksum "
        "fec_features.json records; extract the features again, or get the folder anew."
    )


@pytest.mark.parametrize(
    ("edit", "changed"),
    [
        (other_backbone, "backbone 'llama' (changed)"),
        (lambda r: {**r, "label_names": ["joy", "fear", "anger"]}, "label_names (changed)"),
        (lambda r: {**r, "backbones": r["backbones"][1:]}, "backbone 'llama' (removed), backbones (changed)"),
    ],
)
def test_a_record_naming_other_backbones_or_labels_is_refused(extracted, tmp_path, capsys, edit, changed):
    features = copy_of(extracted, tmp_path / "features", edit)
    error = refused(capsys, train_command(features, tmp_path / "out"), tmp_path / "out")
    assert error == (
        f"{features / METADATA_FILE} was edited after its features were written: {changed} not as recorded; "
        "restore the file, or extract the features again, or get the folder anew."
    )


def earlier(*keys: str):
    """A record as an earlier version wrote it: without `keys`."""
    return lambda record: {key: value for key, value in record.items() if key not in keys}


NEW_KEYS = ("content_digests", "record_digests", "dataset_digest")  # what this version adds to a record


def test_an_earlier_record_is_checked_against_its_data_and_the_warning_says_what_cannot_be(
    extracted, tmp_path, caplog
):
    features = copy_of(extracted, tmp_path / "features", earlier(*NEW_KEYS, "split_checksums"))
    load_features(features)
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert warnings == [
        f"{features / METADATA_FILE} holds no digests of its parts (written by an earlier version): its backbones, "
        "templates and label names are checked against the data's shapes and label names only.",
        f"{features}: fec_features.json records no checksum of split(s) ['train', 'validation', 'test'] (written by "
        "an earlier version): the texts and labels of ['train', 'validation', 'test'] match their digests, but their "
        "feature values cannot be checked. Running extract_features.py again on the folder records them (it computes "
        "nothing when the features are up to date).",
    ]
    # What can be checked still is: shapes, label names, texts and labels.
    wider = copy_of(
        features, tmp_path / "wider", lambda r: {**r, "backbones": [{**r["backbones"][1], "hidden_size": 48}]}
    )
    with pytest.raises(
        ValueError, match=r"^Split 'train': backbone 'bert' features are .*length=32.*records shape \(48,\)"
    ):
        load_features(wider)
    renamed = copy_of(features, tmp_path / "renamed", lambda r: {**r, "label_names": ["sad", "joy", "angry"]})
    with pytest.raises(
        ValueError,
        match=r"its labels are not those fec_features\.json names \(label 1 is 'happy' in the data, 'joy' in the rec",
    ):
        load_features(renamed)
    swapped = copy_of(features, tmp_path / "swapped")
    (swapped / "train").rename(swapped / "moved")
    (swapped / "test").rename(swapped / "train")
    (swapped / "moved").rename(swapped / "test")
    with pytest.raises(
        ValueError, match=r"^Split 'train' in .* holds the rows of split 'test' \(fec_features\.json's data digests\)"
    ):
        load_features(swapped)


@pytest.mark.parametrize("keys", [NEW_KEYS, ("content_digests", "record_digests")])
def test_extracting_again_records_what_an_earlier_version_did_not(extracted, tmp_path, tiny_backbones, caplog, keys):
    from llm_fusion_fec import extract

    features = tmp_path / "features"
    shutil.copytree(extracted, features)  # with its cache: nothing is computed again
    copy_of(extracted, tmp_path / "record", earlier(*keys))
    shutil.copy(tmp_path / "record" / METADATA_FILE, features / METADATA_FILE)
    again = extract(read_metadata(features).dataset, output_dir=features, **hub_specs(tiny_backbones))
    before = read_metadata(extracted)
    assert again.computed == [] and again.metadata.identity() == before.identity()
    assert again.metadata.content_digests == before.content_digests
    if "dataset_digest" not in keys:  # the same data set: the record is completed in place, the files kept
        assert again.metadata == before
    # else it was rebuilt from the cache: the same values in files written anew (other split checksums)
    caplog.clear()
    load_features(features)
    assert not [record for record in caplog.records if record.levelname == "WARNING"]
