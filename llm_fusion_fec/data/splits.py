"""From extracted features to what the fusion head trains on: the model config they call for, the splits as torch
columns read in place, their statistics, and the checks that refuse features a head cannot be trained on."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from datasets import Array2D, ClassLabel, DatasetDict, List, Value
from transformers.utils import logging

from configuration_llm_fusion import TOKENS, LLMFusionConfig
from llm_fusion_fec.data.datasets import BUILTIN_DATASETS, SPLITS, dataset_name, local_dataset_digest, one_class
from llm_fusion_fec.features.metadata import FeatureMetadata

logger = logging.get_logger(__name__)

PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")


def check_dataset(metadata: FeatureMetadata, dataset: str, features_dir: str | Path) -> None:
    """Raise `ValueError` if the features come from another data set than `dataset`.

    A data set is told by its content: a local one (a folder, a `split=file` list) by the digest of its files
    (`local_dataset_digest`), which the features record; a built-in name (`ED`) matches only features of that built-in
    data set, never a local folder of that name. Features of the very path `dataset` names whose files have changed
    since are trained on with a warning (they hold their own texts and labels); features that record no digest
    (extracted by an earlier version) are taken for the path they name, with a warning that says it is not checked.
    """
    source = metadata.dataset
    digest = local_dataset_digest(dataset)
    if digest is None or digest == metadata.dataset_digest:
        named = dataset not in BUILTIN_DATASETS and source not in BUILTIN_DATASETS
        matches = digest is not None or dataset == source or (named and dataset_name(dataset) == metadata.dataset_name)
    elif matches := _same_path(dataset, source):
        why = (
            f"The files of {dataset} have changed since the features in {features_dir} were extracted from them"
            if metadata.dataset_digest
            else f"The features in {features_dir} record no digest of {dataset} (extracted by an earlier version)"
        )
        logger.warning(f"{why}: the head trains on the texts and labels the features hold.")
    if not matches:
        source_named, dataset_named = (
            repr(value) if name == value else f"{value!r} ({name})"
            for value, name in ((source, metadata.dataset_name), (dataset, dataset_name(dataset)))
        )
        raise ValueError(
            f"The features in {features_dir} are from the data set {source_named}, not {dataset_named}; pass "
            f"--dataset {source} or the features folder of {dataset!r}."
        )


def _same_path(first: str, second: str) -> bool:
    """Whether two data sets are written as the same local path."""
    return first == second or (Path(first).exists() and Path(first).resolve() == Path(second).resolve())


def build_config(metadata: FeatureMetadata, backbones: list[str] | None = None, **head) -> LLMFusionConfig:
    """The model config for the features `metadata` describes: their backbones (all, or those named in
    `backbones`, in that order), labels and problem type; the head has the paper's shape unless `head` (config
    keywords such as `sigma` or `standardize_features`) says otherwise. Token views (`--tokens`) are read only by a
    head that pools them (`token_pooling`): without one, all backbones means all but them."""
    label_names = metadata.label_names
    if not label_names:
        raise ValueError("The features have no label names: train on features extracted from a labelled data set.")
    problem_type = metadata.problem_type
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(
            f"Unknown problem_type {problem_type!r} in the features; allowed: {', '.join(PROBLEM_TYPES)}."
        )
    specs = {spec["name"]: spec for spec in metadata.backbones}
    missing = [name for name in backbones or [] if name not in specs]
    if missing:
        raise ValueError(f"The features have no backbone(s) {missing}; they hold {list(specs)}.")
    if not backbones and head.get("token_pooling") is None:
        backbones = [name for name, spec in specs.items() if spec.pooling != TOKENS]
    return LLMFusionConfig(
        backbones=[specs[name] for name in backbones] if backbones else list(specs.values()),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        problem_type=problem_type,
        feature_dtype=metadata.feature_dtype,  # serving rounds its features to what training read
        **head,
    )


def is_token_column(feature) -> bool:
    """Whether a column holds a token view: one row per token, as many as the text has (`Array2D` `(None, width)`)."""
    return isinstance(feature, Array2D) and feature.shape[0] is None


def token_rows(split, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """A token view's column read at once, as stored: every row of every text, `(tokens, width)` (texts one after
    the other), and each text's number of rows `(texts,)`. Read from the Arrow buffers, not text by text."""
    column = split.with_format("arrow")[:].column(name)
    width = split.features[name].shape[1]
    storage = [chunk.storage if hasattr(chunk, "storage") else chunk for chunk in column.chunks]
    lengths = [chunk.value_lengths().to_numpy(zero_copy_only=False) for chunk in storage]
    values = [chunk.flatten().flatten().to_numpy(zero_copy_only=False) for chunk in storage]
    lengths = np.concatenate(lengths) if lengths else np.zeros(0, dtype=np.int64)
    values = np.concatenate(values) if values else np.zeros(0, dtype=np.float16)
    return torch.from_numpy(values.reshape(-1, width)), torch.from_numpy(lengths.astype(np.int64))


def _shape(feature) -> tuple[int | None, ...] | None:
    if isinstance(feature, Array2D):
        return tuple(feature.shape)
    if isinstance(feature, List) and feature.length not in (None, -1):
        return (feature.length,)
    return None


def _check_labels(feature, config: LLMFusionConfig, split: str) -> None:
    if config.problem_type == "multi_label_classification":
        ok = isinstance(feature, List) and feature.length == config.num_labels
        expected = f"multi-hot lists of length {config.num_labels}"
    else:
        ok = isinstance(feature, ClassLabel) or (isinstance(feature, Value) and feature.dtype.startswith("int"))
        expected = "integer label ids"
    if not ok:
        raise ValueError(f"Split {split!r}: the 'label' column is {feature}, expected {expected}.")


def training_splits(data: DatasetDict, config: LLMFusionConfig) -> DatasetDict:
    """The train/validation/test splits as the model reads them: one torch column per backbone and `labels`, read
    lazily from the memory-mapped Arrow files (nothing is copied). Raises `ValueError` naming a missing split,
    backbone or label column, or a feature width that does not match the config."""
    splits = {}
    for split in SPLITS:
        if split not in data:
            raise ValueError(f"The features have no {split!r} split; they have {list(data)}.")
        features = data[split].features
        for name, shape in config.feature_shapes.items():
            if name not in features:
                raise ValueError(
                    f"Split {split!r} has no features for backbone {name!r}; its columns are {list(features)}."
                )
            if _shape(features[name]) != shape:
                raise ValueError(
                    f"Split {split!r}: backbone {name!r} features are {features[name]}, but the config expects "
                    f"shape {shape} per text (num_layers, hidden_size in the features' metadata)."
                )
        if "label" not in features:
            raise ValueError(f"Split {split!r} has no 'label' column: the fusion head needs labelled features.")
        _check_labels(features["label"], config, split)
        columns = [*config.feature_shapes, "label"]
        splits[split] = data[split].select_columns(columns).rename_column("label", "labels").with_format("torch")
    return DatasetDict(splits)


def check_classes(train, config: LLMFusionConfig, dataset: str) -> None:
    """Refuse single-label train features whose rows all belong to one class (`one_class`), naming the data set and
    the class: the head would learn to answer that class alone (test accuracy: the share of that class)."""
    if config.problem_type != "single_label_classification":
        return
    name = one_class(train["label"], [config.id2label[i] for i in range(config.num_labels)])
    if name is not None:
        raise ValueError(
            f"The train split of {dataset} has one class ({name}): a classifier needs at least two. Extract the "
            "features of more rows (a larger --limit) or of another data set."
        )


def feature_statistics(split, config: LLMFusionConfig, chunk: int = 2048) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per-dimension mean and standard deviation of each backbone's features, read chunk by chunk from the Arrow
    files (for `standardize_features`); a token view's over all its tokens."""
    fixed = {name: shape for name, shape in config.feature_shapes.items() if shape[0] is not None}
    sums = {name: (torch.zeros(shape, dtype=torch.float64),) * 2 for name, shape in fixed.items()}
    for start in range(0, len(split), chunk):
        rows = split[start : start + chunk]
        for name, (total, squares) in sums.items():
            values = rows[name].double()
            sums[name] = (total + values.sum(0), squares + values.square().sum(0))
    counts = dict.fromkeys(fixed, len(split))
    for name in config.token_views:
        values, _ = token_rows(split, name)
        total = squares = torch.zeros(values.shape[1], dtype=torch.float64)
        for start in range(0, len(values), chunk * 16):
            part = values[start : start + chunk * 16].double()
            total, squares = total + part.sum(0), squares + part.square().sum(0)
        sums[name], counts[name] = (total, squares), len(values)
    statistics = {}
    for name, (total, squares) in sums.items():
        mean = total / counts[name]
        statistics[name] = (mean.float(), (squares / counts[name] - mean.square()).clamp_min(0).sqrt().float())
    return statistics


def check_finite(data: DatasetDict, config: LLMFusionConfig, chunk: int = 2048) -> None:
    """Raise `ValueError` naming the split, backbone and first row whose features hold a NaN or an infinity: a head
    trained on them would be NaN (and saved as if nothing happened)."""
    for split_name, split in data.items():
        for start in range(0, len(split), chunk):
            rows = split[start : start + chunk]
            for name in [name for name, shape in config.feature_shapes.items() if shape[0] is not None]:
                finite = torch.isfinite(rows[name]).flatten(start_dim=1).all(dim=1)
                if not finite.all():
                    _not_finite(split_name, name, start + int((~finite).nonzero()[0]))
        for name in config.token_views:
            values, lengths = token_rows(split, name)
            for start in range(0, len(values), chunk * 16):
                finite = torch.isfinite(values[start : start + chunk * 16]).all(dim=1)
                if not finite.all():  # the text that holds the first bad token
                    token = start + int((~finite).nonzero()[0, 0])
                    _not_finite(split_name, name, int(torch.searchsorted(lengths.cumsum(0), token, right=True)))


def _not_finite(split: str, name: str, row: int) -> None:
    raise ValueError(
        f"Split {split!r}, backbone {name!r}, row {row}: the features hold NaN or infinite values. Extract them "
        "again (float16 overflows above 65504: try --feature-dtype float32)."
    )


__all__ = [
    "build_config",
    "check_classes",
    "check_dataset",
    "check_finite",
    "feature_statistics",
    "is_token_column",
    "token_rows",
    "training_splits",
]
