"""A features folder, the contract between extraction and training: `fec_features.json` and the Arrow splits beside it.

`extract_features.py` writes it; `train_fusion.py`, the sweep and the benchmarks read it through `read_metadata` and
`load_features`, without importing the extractor. `load_features` checks the splits against the record before it
returns them (`verify_features`), so that a head is never trained on features that are not what the record says.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from llm_fusion_fec.data.datasets import BUILTIN_DATASETS, SPLITS, dataset_name, one_line

if typing.TYPE_CHECKING:
    from datasets import DatasetDict

    from configuration_llm_fusion import BackboneSpec

logger = logging.getLogger(__name__)

METADATA_FILE = "fec_features.json"
FEATURES_ROOT = Path("features")


@dataclass
class FeatureMetadata:
    """What `fec_features.json` records beside the features: where they come from, what they are, how to check them.

    Args:
        dataset (`str`):
            The data set as it was given to `extract` (a built-in name, a folder, a `split=file` list or a Hub id).
        dataset_name (`str`):
            Its slug, `dataset_name(dataset)`: the default features folder's name, and the name to publish (a local
            path never is). A local data set's holds the start of its digest; only a built-in data set has a built-in
            name.
        problem_type (`str`):
            `"single_label_classification"` or `"multi_label_classification"`.
        label_names (`list[str]`):
            The label names; label id `i` is `label_names[i]`.
        backbones (`list[dict]`):
            The backbone descriptions (`LLMFusionConfig.backbones` entries, revisions resolved where possible).
        feature_dtype (`str`, *optional*, defaults to `"float16"`):
            The dtype the features are stored in.
        compute_dtype (`str`, *optional*):
            The dtype the backbones ran in.
        head (`dict`, *optional*):
            The preset's head options (`LLMFusionConfig` keywords); training uses them unless a flag says otherwise.
        protocol (`str`, *optional*):
            The preset's training recipe (`paper` or `fast`); training follows it unless `--protocol` says otherwise.
        choice (`dict`, *optional*):
            How `--choose` chose the LLM's views on the validation split (`llm_fusion_fec.features.choice`): the
            candidates, their validation scores, the probe's strengths and the views chosen; `None` without it.
        rows (`dict[str, int]`, *optional*):
            Rows of each split.
        column_keys (`dict[str, dict[str, str]]`, *optional*):
            Cache key of each backbone's column (`column_keys[backbone][split]`).
        data_digests (`dict[str, str]`, *optional*):
            sha256 of each split's texts and labels (`data_digest`): a corrected label changes it.
        split_checksums (`dict[str, str]`, *optional*):
            sha256 of each split's files as saved (`split_checksum`), recorded when the splits were assembled.
        limit (`int`, *optional*):
            `--limit`: each split was cut to its first `limit` rows; `None` for whole splits.
        local_weights (`dict[str, str]`, *optional*):
            sha256 of the weight, config and tokenizer files (`folder_digest`) of each backbone read from a local
            folder, by backbone name: what identifies weights that have no Hub revision.
        dataset_digest (`str`, *optional*):
            sha256 of a local data set's files (`local_dataset_digest`): training refuses these features for a data
            set whose files differ. `None` for a built-in or Hub data set.
        content_digests (`dict[str, str]`, *optional*):
            sha256 of each split's values (`content_digest`), whatever format holds them: the saved Arrow files and
            their parquet copy (`fec push-features`) give the same.
        record_digests (`dict[str, str]`, *optional*):
            A digest of each part of this record as written (`record_parts`): a part edited afterwards (a backbone, a
            template, the label names) is refused by name before training.
    """

    dataset: str
    dataset_name: str
    problem_type: str
    label_names: list[str]
    backbones: list[BackboneSpec]
    feature_dtype: str = "float16"
    compute_dtype: str | None = None
    head: dict = field(default_factory=dict)
    protocol: str | None = None
    choice: dict | None = None
    rows: dict[str, int] = field(default_factory=dict)
    column_keys: dict[str, dict[str, str]] = field(default_factory=dict)
    data_digests: dict[str, str] = field(default_factory=dict)
    split_checksums: dict[str, str] = field(default_factory=dict)
    limit: int | None = None
    local_weights: dict[str, str] = field(default_factory=dict)
    dataset_digest: str | None = None
    content_digests: dict[str, str] = field(default_factory=dict)
    record_digests: dict[str, str] = field(default_factory=dict)

    REQUIRED: typing.ClassVar[tuple[str, ...]] = ("dataset", "problem_type", "label_names", "backbones")

    @classmethod
    def from_dict(cls, record: dict) -> FeatureMetadata:
        """The metadata a JSON record holds; `ValueError` naming unknown or missing keys."""
        known = {spec.name for spec in dataclasses.fields(cls)}
        unknown = sorted(set(record) - known)
        missing = [key for key in cls.REQUIRED if key not in record]
        if unknown or missing:
            raise ValueError(f"unknown keys {unknown}, missing keys {missing}")
        from configuration_llm_fusion import BackboneSpec

        backbones = [BackboneSpec.from_dict(spec) for spec in record["backbones"]]
        name = record.get("dataset_name")
        if name is None or (name in BUILTIN_DATASETS and record["dataset"] != name):
            # An earlier version named a local folder `ED` as the built-in ED: name it by its content instead.
            name = dataset_name(str(record["dataset"]))
        return cls(**{**record, "dataset_name": name, "backbones": backbones})

    def to_dict(self) -> dict:
        """The JSON record `fec_features.json` holds (each backbone in its JSON form, `BackboneSpec.to_dict`)."""
        return {**dataclasses.asdict(self), "backbones": [spec.to_dict() for spec in self.backbones]}

    def identity(self) -> dict:
        """Everything that decides the output's content (the checksums of a saved output only verify it), in its
        JSON form so that a record read back compares equal."""
        return json.loads(json.dumps({k: v for k, v in self.to_dict().items() if k not in self.VERIFICATION}))

    VERIFICATION: typing.ClassVar[tuple[str, ...]] = ("split_checksums", "content_digests", "record_digests")

    def sealed(self) -> FeatureMetadata:
        """The record as written: with the digests of its parts (`record_parts`) in `record_digests`."""
        return dataclasses.replace(self, record_digests=record_parts(self.to_dict()))


def record_parts(record: dict) -> dict[str, str]:
    """A digest (sha256, 16 hex digits) of each part of a `fec_features.json` record as written, `record_digests`
    aside, and of each backbone apart (`backbone 'llama'`): a part changed after the record was written is named.
    Computed on the JSON as read, so that fields a later version adds with defaults do not change it."""
    record = {key: value for key, value in record.items() if key != "record_digests"}
    backbones = record.pop("backbones", [])
    parts = {**record, "backbones": [spec.get("name") for spec in backbones]}
    parts |= {f"backbone {spec.get('name')!r}": spec for spec in backbones}
    return {
        key: hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:16]
        for key, value in parts.items()
    }


def default_features_dir(dataset: str) -> Path:
    """The features folder of a data set when none is given: `features/<dataset_name(dataset)>`."""
    return FEATURES_ROOT / dataset_name(dataset)


def default_output_dir(dataset: str) -> Path:
    """The model folder of a run on a data set when none is given: `outputs/llm-fusion-<name>`, from the same
    `dataset_name` as the features folder (so it never resolves outside `outputs/`)."""
    return Path("outputs") / f"llm-fusion-{dataset_name(dataset).lower().replace('_', '-')}"


def read_metadata(features_dir: str | os.PathLike) -> FeatureMetadata:
    """The `FeatureMetadata` of a features folder; `ValueError` naming the folder and the fix where there is none."""
    path = Path(features_dir) / METADATA_FILE
    if not path.exists():
        unfinished = " (its extraction did not finish)" if (Path(features_dir) / "dataset_dict.json").exists() else ""
        raise ValueError(
            f"{features_dir} is not a features folder (no {METADATA_FILE}){unfinished}; create one with "
            "`python extract_features.py --dataset NAME --output-dir DIR`."
        )
    try:
        return FeatureMetadata.from_dict(json.loads(path.read_text()))
    except (ValueError, TypeError) as error:
        raise ValueError(
            f"{path} is not metadata this version can read ({one_line(error)}); rebuild the folder with "
            "`python extract_features.py --dataset NAME --output-dir DIR`."
        ) from error


PARQUET_DIR = "data"
"""Where a features folder pushed as a Hub dataset (`fec push-features`) holds its splits: `data/<split>-*.parquet`."""


def locate_features(features_dir: str | os.PathLike) -> str:
    """The local folder of `features_dir`: a folder of this machine as it is, or, for a Hub dataset id that is no
    folder here, the dataset's local copy (downloaded once, as every Hub file is); `ValueError` if neither."""
    path = Path(features_dir)
    if path.exists() or (path / METADATA_FILE).exists():
        return str(features_dir)
    from huggingface_hub import snapshot_download
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(str(features_dir))
    except HFValidationError:
        return str(features_dir)  # not a Hub id: `read_metadata` says the folder is missing
    try:
        return snapshot_download(str(features_dir), repo_type="dataset")
    except Exception as error:  # offline, no such dataset, no access: one line that says both
        raise ValueError(
            f"{features_dir} is neither a features folder here nor a Hub dataset this machine can read "
            f"({one_line(error)}); create a folder with `python extract_features.py --dataset NAME --output-dir DIR`."
        ) from None


def load_features(features_dir: str | os.PathLike, verify: bool = True) -> tuple[DatasetDict, FeatureMetadata]:
    """The features `extract` saved (memory-mapped Arrow), or their parquet copy (`fec push-features`), and their
    metadata. With `verify` (the default), they are checked against the metadata first (`verify_features`): every
    split's checksum, its texts and labels, its shapes and label names, the record itself; `ValueError` in one line
    naming the split and what differs, a warning naming what a folder written by an earlier version cannot prove."""
    import datasets

    metadata = read_metadata(features_dir)
    shards = {
        split: sorted(map(str, (Path(features_dir) / PARQUET_DIR).glob(f"{split}-*.parquet"))) for split in SPLITS
    }
    if any(shards.values()):
        files = {split: paths for split, paths in shards.items() if paths}
        data = datasets.load_dataset("parquet", data_files=files)
    else:
        data = datasets.load_from_disk(str(features_dir))
    for split, rows in metadata.rows.items():
        if split in data and len(data[split]) != rows:
            raise ValueError(
                f"Split {split!r} in {features_dir} has {len(data[split])} rows, but {METADATA_FILE} records {rows}: "
                "rerun extract_features.py to rebuild it."
            )
    if verify:
        verify_features(data, metadata, features_dir, parquet=any(shards.values()))
    return data, metadata


# ---- features checked against their record ----

EXTRACT_AGAIN = "extract the features again, or get the folder anew"


def verify_features(
    data: DatasetDict, metadata: FeatureMetadata, features_dir: str | os.PathLike, parquet: bool = False
) -> None:
    """Refuse features that are not what their record says, before a head is trained on them: a record edited after
    it was written (`record_digests`), a backbone column whose shape or dtype is not the recorded backbone's, labels
    named otherwise, and a split whose checksum (`split_checksums` of the Arrow files; `content_digests` of a parquet
    copy, `parquet`) does not match, named by what differs: its feature values, its texts and labels (`data_digests`),
    or the rows of another split. `ValueError` in one line naming the split; a warning names what a folder written by
    an earlier version cannot prove. One pass over the data's files."""
    _check_record(metadata, Path(features_dir) / METADATA_FILE)
    for split in data:
        _check_columns(data[split], metadata, split)
    unchecked = [split for split in data if not _check_split(data, metadata, features_dir, split, parquet)]
    if unchecked:
        digested = [split for split in unchecked if split in metadata.data_digests]
        logger.warning(
            f"{features_dir}: {METADATA_FILE} records no checksum of split(s) {unchecked} (written by an earlier "
            f"version): {f'the texts and labels of {digested} match their digests, but ' if digested else ''}their "
            "feature values cannot be checked. Running extract_features.py again on the folder records them (it "
            "computes nothing when the features are up to date)."
        )


def _check_record(metadata: FeatureMetadata, path: Path) -> None:
    """Refuse a record whose parts do not match the digests written with it, naming the parts."""
    if not metadata.record_digests:
        logger.warning(
            f"{path} holds no digests of its parts (written by an earlier version): its backbones, templates and "
            "label names are checked against the data's shapes and label names only."
        )
        return
    recorded, parts = metadata.record_digests, record_parts(json.loads(path.read_text()))
    changed = [
        f"{key} ({'added' if key not in recorded else 'removed' if key not in parts else 'changed'})"
        for key in sorted(set(recorded) | set(parts))
        if recorded.get(key) != parts.get(key)
    ]
    if changed:
        raise ValueError(
            f"{path} was edited after its features were written: {', '.join(changed)} not as recorded; restore the "
            f"file, or {EXTRACT_AGAIN}."
        )


def _check_columns(split_data, metadata: FeatureMetadata, split: str) -> None:
    """Refuse a split whose backbone columns are not the shape and dtype the record's backbones give, or whose label
    names are not the record's."""
    from datasets import Array2D, ClassLabel, List, Value

    from configuration_llm_fusion import feature_shape

    features = split_data.features
    for spec in metadata.backbones:
        name, expected = spec["name"], feature_shape(spec)
        if name not in features:
            raise ValueError(
                f"Split {split!r} has no features for backbone {name!r} that {METADATA_FILE} names; its columns are "
                f"{list(features)}."
            )
        feature = features[name]
        if isinstance(feature, Array2D):
            shape, dtype = tuple(feature.shape), feature.dtype
        elif isinstance(feature, List) and isinstance(feature.feature, Value):
            shape, dtype = (feature.length,), feature.feature.dtype
        else:
            shape, dtype = None, None
        if shape != expected or dtype != metadata.feature_dtype:
            raise ValueError(
                f"Split {split!r}: backbone {name!r} features are {feature}, but {METADATA_FILE} records shape "
                f"{expected} ({spec['pooling']}, hidden_size {spec['hidden_size']}) in {metadata.feature_dtype}."
            )
    label, names = features.get("label"), metadata.label_names
    if isinstance(label, ClassLabel) and label.names != names:
        first = next((i for i, pair in enumerate(zip(label.names, names)) if pair[0] != pair[1]), None)
        detail = (
            f"label {first} is {label.names[first]!r} in the data, {names[first]!r} in the record"
            if first is not None
            else f"{label.num_classes} labels in the data, {len(names)} in the record"
        )
        raise ValueError(f"Split {split!r}: its labels are not those {METADATA_FILE} names ({detail}).")
    if isinstance(label, List) and label.length not in (None, -1, len(names)):
        raise ValueError(
            f"Split {split!r}: its labels are lists of {label.length}, but {METADATA_FILE} names {len(names)} labels."
        )


def _check_split(data: DatasetDict, metadata: FeatureMetadata, features_dir, split: str, parquet: bool) -> bool:
    """Refuse a split whose checksum does not match the record's, saying what differs; False where the record has
    none (its texts and labels are then checked against their digest, where there is one)."""
    from llm_fusion_fec.features.checksums import content_digest, split_checksum

    recorded = (metadata.content_digests if parquet else metadata.split_checksums).get(split)
    if recorded is None:
        if (difference := _data_difference(data, metadata, split)) is not None:
            raise ValueError(
                f"Split {split!r} in {features_dir} {difference} ({METADATA_FILE}'s data digests); {EXTRACT_AGAIN}."
            )
        return False
    checksum = content_digest(data[split]) if parquet else split_checksum(Path(features_dir) / split)
    if checksum != recorded:
        difference = _data_difference(data, metadata, split) or "holds other feature values than those extracted"
        raise ValueError(
            f"Split {split!r} in {features_dir} {difference}: its {'values' if parquet else 'files'} do not match the "
            f"checksum {METADATA_FILE} records; {EXTRACT_AGAIN}."
        )
    return True


def _data_difference(data: DatasetDict, metadata: FeatureMetadata, split: str) -> str | None:
    """How a split's texts and labels differ from those the record's `data_digests` describe (the rows of another
    split, or others), or None where they match or cannot be compared."""
    from llm_fusion_fec.data.datasets import data_digest

    if split not in metadata.data_digests or not {"text", "label"} <= set(data[split].column_names):
        return None
    digest = data_digest(data[split])
    if digest == metadata.data_digests[split]:
        return None
    other = next((name for name, recorded in metadata.data_digests.items() if recorded == digest), None)
    return f"holds the rows of split {other!r}" if other else "holds other texts or labels than those extracted"
