import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from datasets import ClassLabel, Dataset, DatasetDict, Features, List, Value, load_from_disk
from huggingface_hub import ModelCard

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
    lines = capsys.readouterr().err.strip().splitlines()  # the progress bars of `datasets` reading parquet, then
    assert [line for line in lines if line.startswith("error: ")] == lines[-1:] and not output.exists()
    return lines[-1].removeprefix("error: ")


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


# ---- the features as a Hub dataset (`fec push-features`), checked alike ----


@pytest.fixture
def pushed(extracted, tmp_path, monkeypatch) -> Path:
    """The features pushed to a Hub of one folder (`upload_folder` copies into it, `snapshot_download` reads it):
    the dataset's folder, as `train_fusion.py --features_dir org/features` downloads it."""
    from huggingface_hub import HfApi

    hub = tmp_path / "hub"

    def upload_folder(self, repo_id, folder_path, repo_type, **kwargs):
        shutil.copytree(folder_path, hub / repo_id, dirs_exist_ok=True)
        return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit"})()

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr("huggingface_hub.snapshot_download", lambda repo_id, **kwargs: str(hub / repo_id))
    assert fec(["push-features", str(extracted), "org/features"]) == 0
    return hub / "org" / "features"


def change_parquet(path: Path, column: str, change) -> None:
    """Change the first row's value of a column of a parquet shard, its schema (and the features it records) kept."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(path)
    values = table.column(column).to_pylist()
    values[0] = change(values[0])
    field = table.schema.field(column)
    table = table.set_column(table.schema.get_field_index(column), field, pa.array(values, type=field.type))
    pq.write_table(table, path)


def swap_files(first: Path, second: Path) -> None:
    content = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(content)


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        (
            lambda d: change_parquet(d / "data/test-00000-of-00001.parquet", "bert", lambda v: [v[0] + 1, *v[1:]]),
            "Split 'test' in {d} holds other feature values than those extracted: its values do not match",
        ),
        (
            lambda d: change_parquet(d / "data/validation-00000-of-00001.parquet", "label", lambda v: (v + 1) % 3),
            "Split 'validation' in {d} holds other texts or labels than those extracted: its values do not match",
        ),
        (
            lambda d: swap_files(d / "data/train-00000-of-00001.parquet", d / "data/test-00000-of-00001.parquet"),
            "Split 'train' in {d} holds the rows of split 'test': its values do not match the checksum",
        ),
        (
            lambda d: (d / METADATA_FILE).write_text(
                json.dumps(other_backbone(json.loads((d / METADATA_FILE).read_text())))
            ),
            "{d}/fec_features.json was edited after its features were written: backbone 'llama' (changed) not as",
        ),
    ],
)
def test_features_from_the_hub_are_checked_alike(pushed, tmp_path, capsys, caplog, tamper, message):
    data, metadata = load_features(pushed)  # as pushed: they pass, without a warning
    assert not [record for record in caplog.records if record.levelname == "WARNING"]
    assert metadata.content_digests == read_metadata(pushed).content_digests and "data" in {
        p.name for p in pushed.iterdir()
    }
    tamper(pushed)
    error = refused(capsys, train_command("org/features", tmp_path / "out"), tmp_path / "out")
    assert error.startswith(message.format(d=pushed))


def test_features_pushed_by_an_earlier_version_are_checked_where_they_can_be(pushed, caplog):
    record = json.loads((pushed / METADATA_FILE).read_text())
    (pushed / METADATA_FILE).write_text(json.dumps(earlier(*NEW_KEYS)(record)))
    load_features(pushed)
    warnings = " ".join(record.getMessage() for record in caplog.records if record.levelname == "WARNING")
    assert "records no checksum of split(s) ['train', 'validation', 'test']" in warnings
    assert "their feature values cannot be checked" in warnings
    swap_files(pushed / "data/train-00000-of-00001.parquet", pushed / "data/test-00000-of-00001.parquet")
    with pytest.raises(
        ValueError, match=r"^Split 'train' in .* holds the rows of split 'test' \(fec_features\.json's"
    ):
        load_features(pushed)


# ---- a data set's identity: its content, not its folder's name ----


def test_a_local_data_set_is_named_by_its_content(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    first, second = write_splits(tmp_path / "a" / "ED", "first"), write_splits(tmp_path / "b" / "ED", "second")
    names = {dataset_name(str(first)), dataset_name(str(second)), dataset_name("a/ED"), dataset_name("b/ED/")}
    assert len(names) == 2 and all(re.fullmatch(r"ED-[0-9a-f]{8}", name) for name in names)
    assert dataset_name(str(shutil.copytree(first, tmp_path / "c" / "ED"))) == dataset_name("a/ED")  # same content
    assert dataset_name("ED") == "ED" and dataset_name(str(tmp_path / "x" / "ED")) == "ED-local"  # no data there
    assert default_features_dir("a/ED") == Path("features") / dataset_name("a/ED") != default_features_dir("ED")
    unicode = [dataset_name(str(write_splits(tmp_path / name, name))) for name in ("情感", "感情", "émotions")]
    assert unicode[0] != unicode[1] and all(re.fullmatch(r"(dataset|motions)-[0-9a-f]{8}", n) for n in unicode)
    pairs = f"train={first}/train.csv,validation={first}/valid.csv,test={first}/test.csv"
    assert dataset_name(pairs) == dataset_name("a/ED")  # the same files


def test_two_local_folders_named_ED_extract_side_by_side_and_each_trains_on_its_own(
    tmp_path, tiny_backbones, monkeypatch, capsys
):
    from llm_fusion_fec import extract

    monkeypatch.chdir(tmp_path)
    folders = {
        "a/ED": write_splits(tmp_path / "a" / "ED", "first"),
        "b/ED": write_splits(tmp_path / "b" / "ED", "second"),
    }
    features = {name: extract(name, **hub_specs(tiny_backbones)).output_dir for name in folders}
    assert features["a/ED"] != features["b/ED"] and {path.parent for path in features.values()} == {Path("features")}
    for name, folder in folders.items():
        texts = [line.split('",')[0].strip('"') for line in (folder / "train.csv").read_text().splitlines()[1:]]
        assert load_features(features[name])[0]["train"]["text"] == texts
        output = tmp_path / "outputs" / name.replace("/", "-")
        assert fec(["train", "--dataset", name, *train_command(features[name], output)[3:]]) == 0
        card = ModelCard.load(output / "README.md")
        assert "Empathetic" not in card.content and card.data.license == "other"  # not the built-in ED's license
        examples = [item["text"] for item in card.data.widget]
        assert examples and all(f'"{example}"' in (folder / "valid.csv").read_text() for example in examples)
    # `--dataset ED` is the built-in data set: no local folder's features stand for it.
    error = refused(capsys, ["train", "--dataset", "ED", "--max_steps", "2"], tmp_path / "outputs" / "llm-fusion-ed")
    assert error.startswith("features/ED is not a features folder (no fec_features.json)")
    shutil.copytree(features["a/ED"], "features/ED")  # as an earlier version named it: by its folder
    (Path("features/ED") / METADATA_FILE).write_text(
        json.dumps(earlier(*NEW_KEYS)({**read_metadata("features/ED").to_dict(), "dataset_name": "ED"}))
    )
    error = refused(capsys, ["train", "--dataset", "ED", "--max_steps", "2"], tmp_path / "outputs" / "llm-fusion-ed")
    assert error == (
        f"The features in features/ED are from the data set 'a/ED' ({dataset_name('a/ED')}), not 'ED'; pass --dataset "
        "a/ED or the features folder of 'ED'."
    )
    # Nor does one local folder's features stand for the other's.
    error = refused(
        capsys, ["train", "--dataset", "a/ED", *train_command(features["b/ED"], tmp_path / "x")[1:]], tmp_path / "x"
    )
    assert error == (
        f"The features in {features['b/ED']} are from the data set 'b/ED' ({dataset_name('b/ED')}), not 'a/ED' "
        f"({dataset_name('a/ED')}); pass --dataset b/ED or the features folder of 'a/ED'."
    )
