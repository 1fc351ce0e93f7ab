"""A features folder shared as a Hub dataset (`fec push-features`): another user trains a head without extracting.

The dataset holds each split as parquet shards (`data/<split>-0000N-of-0000M.parquet`, the layout the Hub's
dataset viewer and `datasets.load_dataset` read), the folder's `fec_features.json` unchanged but for a local path it
may name, and a dataset card naming the backbones, the source data set and its license (the texts are the source's,
so its license is the dataset's). `train_fusion.py --features_dir ORG/NAME` reads it back (`locate_features`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import tempfile
from pathlib import Path

from huggingface_hub import DatasetCard, DatasetCardData, HfApi
from huggingface_hub.utils import HFValidationError, validate_repo_id

from llm_fusion_fec.features.metadata import METADATA_FILE, PARQUET_DIR, FeatureMetadata, load_features
from llm_fusion_fec.publishing.card import DATASET_CARDS
from llm_fusion_fec.publishing.paths import is_local_model, looks_like_a_path

UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9}


def parse_size(size: str) -> int:
    """Bytes of `500MB`, `2GB`, ... (`ValueError` naming the value otherwise)."""
    text = str(size).strip().upper()
    for unit, factor in UNITS.items():
        if text.endswith(unit) and text[: -len(unit)].strip().replace(".", "", 1).isdigit():
            return int(float(text[: -len(unit)]) * factor)
    raise ValueError(f"Cannot read the size {size!r}: write e.g. 500MB or 2GB.")


def shareable_metadata(metadata: FeatureMetadata) -> FeatureMetadata:
    """The metadata as shared: refused if a backbone is named by a local folder (nobody else could load it, nor a
    head trained on it); the data set named by its publishable name where it was given as a local path."""
    local = [spec["model"] for spec in metadata.backbones if is_local_model(spec["model"])]
    if local:
        raise ValueError(
            f"Backbone(s) {local} of these features are local folders: nobody else could load them. Extract with Hub "
            "ids (extract_features.py --backbone-path NAME=FOLDER reads a local copy of a Hub model)."
        )
    if looks_like_a_path(metadata.dataset) or Path(metadata.dataset).exists() or "=" in metadata.dataset:
        metadata = dataclasses.replace(metadata, dataset=metadata.dataset_name)
    return metadata


def dataset_card(metadata: FeatureMetadata, repo_id: str) -> DatasetCard:
    """The card: what the features are, from which backbones and data, under which license, and how to train."""
    source = DATASET_CARDS.get(metadata.dataset_name)
    license = source.license if source else "other"
    data_files = [
        {"split": split, "path": f"{PARQUET_DIR}/{split}-*.parquet"} for split in metadata.rows or ("train",)
    ]
    data = DatasetCardData(
        license=license,
        task_categories=["text-classification"],
        tags=["llm-fusion-fec", "emotion-classification", "features"],
        source_datasets=[source.hub_id] if source else None,
        configs=[{"config_name": "default", "data_files": data_files}],
    )
    rows = ", ".join(f"{split} {count:,}" for split, count in metadata.rows.items())
    backbones = "\n".join(
        f"| {spec['name']} | [{spec['model']}](https://huggingface.co/{spec['model']}) | "
        f"{spec.get('revision') or '-'} | {spec['pooling']} | {spec['hidden_size']} |"
        for spec in metadata.backbones
    )
    title = source.title if source else metadata.dataset_name
    license_line = (
        f"The texts and labels are {title}'s ([{source.hub_id}](https://huggingface.co/datasets/{source.hub_id})), "
        f"under its license, {license}; so are these features."
        if source
        else "The texts and labels are those of the source data set, under its license."
    )
    body = f"""# Frozen features of {title} for LLM-fusion emotion classifiers

The features [llm-fusion-fec](https://pypi.org/project/llm-fusion-fec/) extracted from {title} ({rows} rows;
{len(metadata.label_names)} labels, {metadata.problem_type.replace("_", " ")}), one column per backbone beside
`text` and `label`, stored as {metadata.feature_dtype}. A head trains on them in minutes without loading a backbone:

```bash
pip install llm-fusion-fec
python train_fusion.py --features_dir {repo_id}
```

| backbone | model | revision | pooling | hidden size |
| --- | --- | --- | --- | --- |
{backbones}

`fec_features.json` records how they were made (backbones, layers, prompts, dtype, the data's checksums); training
reads it. {license_line}
"""
    return DatasetCard(f"---\n{data.to_yaml()}\n---\n\n{body}")


def write_dataset_folder(
    features_dir: str | os.PathLike, folder: str | os.PathLike, repo_id: str, max_shard_size: str = "500MB"
) -> list[str]:
    """Write the dataset's files into `folder`: parquet shards of each split, `fec_features.json` and the card.
    Returns the files written, relative to `folder`."""
    data, metadata = load_features(features_dir)
    metadata = shareable_metadata(metadata)
    folder = Path(folder)
    (folder / PARQUET_DIR).mkdir(parents=True, exist_ok=True)
    limit, written = parse_size(max_shard_size), []
    for split, rows in data.items():
        shards = max(1, math.ceil(rows.data.nbytes / limit))
        for index in range(shards):
            name = f"{PARQUET_DIR}/{split}-{index:05d}-of-{shards:05d}.parquet"
            rows.shard(shards, index, contiguous=True).to_parquet(str(folder / name))
            written.append(name)
    (folder / METADATA_FILE).write_text(json.dumps(metadata.sealed().to_dict(), indent=2) + "\n")
    dataset_card(metadata, repo_id).save(folder / "README.md")
    return [*written, METADATA_FILE, "README.md"]


def push_features(
    features_dir: str | os.PathLike,
    repo_id: str,
    private: bool = False,
    max_shard_size: str = "500MB",
    token: str | None = None,
) -> str:
    """Push a features folder to the Hub dataset `repo_id` (created if needed); the commit's URL."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"{repo_id!r} is not a Hub repository id (ORG/NAME): {str(error).splitlines()[0]}") from None
    with tempfile.TemporaryDirectory(prefix="fec-features-") as staging:
        write_dataset_folder(features_dir, staging, repo_id, max_shard_size)
        api = HfApi(token=token)
        api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
        commit = api.upload_folder(
            repo_id=repo_id, folder_path=staging, repo_type="dataset", commit_message="fec push-features"
        )
    return getattr(commit, "commit_url", f"https://huggingface.co/datasets/{repo_id}")
