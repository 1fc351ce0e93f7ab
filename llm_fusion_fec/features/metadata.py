"""A features folder, the contract between extraction and training: `fec_features.json` and the Arrow splits beside it.

`extract_features.py` writes it; `train_fusion.py`, the sweep and the benchmarks read it through `read_metadata` and
`load_features`, without importing the extractor.
"""

from __future__ import annotations

import dataclasses
import json
import os
import typing
from dataclasses import dataclass, field
from pathlib import Path

from llm_fusion_fec.data.datasets import SPLITS, dataset_name, one_line

if typing.TYPE_CHECKING:
    from datasets import DatasetDict

    from configuration_llm_fusion import BackboneSpec

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
            path never is).
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
        return cls(**{"dataset_name": dataset_name(str(record["dataset"])), **record, "backbones": backbones})

    def to_dict(self) -> dict:
        """The JSON record `fec_features.json` holds (each backbone in its JSON form, `BackboneSpec.to_dict`)."""
        return {**dataclasses.asdict(self), "backbones": [spec.to_dict() for spec in self.backbones]}

    def identity(self) -> dict:
        """Everything that decides the output's content (the checksums of a saved output only verify it), in its
        JSON form so that a record read back compares equal."""
        return json.loads(json.dumps({k: v for k, v in self.to_dict().items() if k != "split_checksums"}))


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


def load_features(features_dir: str | os.PathLike) -> tuple[DatasetDict, FeatureMetadata]:
    """The features `extract` saved (memory-mapped Arrow), or their parquet copy (`fec push-features`), and their
    metadata."""
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
    return data, metadata
