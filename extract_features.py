"""Extract frozen backbone features into an Arrow `DatasetDict`: cached, resumable, on one machine or many GPUs.

    python extract_features.py --dataset ED                      # paper backbones, features/ED
    python extract_features.py --dataset ED --preset small --limit 200
    accelerate launch extract_features.py --dataset go_emotion   # rows split over processes, same result

Every split gets one feature column per backbone (named after it). Work is written shard by shard under
`OUTPUT_DIR/cache/`, keyed by everything that changes a feature, so a rerun skips finished shards (an interrupted
run resumes) and a changed backbone recomputes only its own column.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import logging as pylogging
import math
import os
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import datasets
import numpy as np
import torch
from datasets import Array2D, ClassLabel, Dataset, DatasetDict, List, Value
from tqdm.auto import tqdm
from transformers import AutoConfig, HfArgumentParser
from transformers.utils import logging

from configuration_llm_fusion import PRESETS, feature_shape, normalize_backbone
from modeling_llm_fusion import FEATURE_CODE_VERSION, FrozenBackbone, validate_texts

logger = logging.get_logger(__name__)

METADATA_FILE = "fec_features.json"
SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {"train": "train", "validation": "validation", "valid": "validation", "dev": "validation",
                 "test": "test"}  # fmt: skip
# The published splits: the data/ folders of LLM-FusionClassifier (ED, go_emotion) and GoEmotions-pytorch.
BUILTIN_DATASETS = {
    "ED": {"base": "https://raw.githubusercontent.com/havelhakimi/LLM-FusionClassifier/main/data/ED",
           "files": {"train": "train.csv", "validation": "valid.csv", "test": "test.csv"},
           "labels": "label2idx.txt"},
    "go_emotion": {"base": "https://raw.githubusercontent.com/havelhakimi/LLM-FusionClassifier/main/data/go_emotion",
                   "files": {"train": "train.csv", "validation": "valid.csv", "test": "test.csv"},
                   "labels": "label2idx.txt"},
    "go_emotions_multilabel": {"base": "https://raw.githubusercontent.com/monologg/GoEmotions-pytorch/master/data/original",
                               "files": {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"},
                               "labels": "labels.txt", "multilabel": True},
}  # fmt: skip


@dataclass
class ExtractArguments:
    dataset: str = field(
        default="ED",
        metadata={"help": "ED, go_emotion, go_emotions_multilabel, a folder of train/valid/test csv|tsv|json files, "
                  "'train=a.csv,validation=b.csv,test=c.csv', or a Hub data set id."},
    )  # fmt: skip
    data_dir: str | None = field(
        default=None, metadata={"help": "Read a built-in data set's files from this folder instead of GitHub."}
    )
    text_column: str = field(default="text", metadata={"help": "Column holding the texts."})
    label_column: str = field(default="label", metadata={"help": "Column holding the labels."})
    preset: str = field(default="paper", metadata={"help": f"Backbones: {' | '.join(PRESETS)}."})
    backbone: list[str] = field(
        default_factory=list,
        metadata={"help": "NAME=HUB_ID_OR_FOLDER: use another model for a backbone (repeatable).", "action": "extend"},
    )
    backbone_path: list[str] = field(
        default_factory=list,
        metadata={"help": "NAME=FOLDER: load a backbone from a local copy of the model it names (repeatable).",
                  "action": "extend"},
    )  # fmt: skip
    output_dir: str | None = field(default=None, metadata={"help": "Defaults to features/<dataset>."})
    limit: int | None = field(default=None, metadata={"help": "Only the first N rows of each split."})
    batch_size: int = field(default=16, metadata={"help": "Texts per forward pass (at most; 16 is fastest on CPU)."})
    max_tokens: int | None = field(
        default=None, metadata={"help": "Token budget per forward pass (padded length x texts), e.g. 16384 on a GPU."}
    )
    max_length: int | None = field(default=None, metadata={"help": "Truncate texts to this many tokens."})
    device: str | None = field(default=None, metadata={"help": "cpu, cuda, cuda:1, ... (default: cuda if present)."})
    device_map: str | None = field(default=None, metadata={"help": "'auto' spreads a model over several GPUs."})
    dtype: str | None = field(
        default=None, metadata={"help": "Compute dtype (default float32 on CPU, bfloat16 on GPU)."}
    )
    quantization: str | None = field(
        default=None,
        metadata={"help": "8bit or 4bit: load the LLM (layer_mean backbones) quantized by bitsandbytes; needs a CUDA "
                  "GPU. Recorded with the features, so the trained model is served the same way."},
    )  # fmt: skip
    feature_dtype: str = field(default="float16", metadata={"help": "Stored feature dtype: float16 or float32."})
    shard_size: int = field(default=1024, metadata={"help": "Rows per resumable unit of work."})


# ---- data ----


def _read_label_names(path: str) -> list[str]:
    import fsspec  # datasets' own file layer: local paths and URLs alike

    with fsspec.open(path, "r", encoding="utf-8") as handle:
        rows = [line.split() for line in handle if line.strip()]
    if all(len(row) == 2 and row[1].isdigit() for row in rows):  # "name id" lines (label2idx.txt)
        names = {int(i): name for name, i in rows}
        return [names[i] for i in range(len(names))]
    return [" ".join(row) for row in rows]  # one name per line, line i = id i (labels.txt)


def _builtin(name: str, data_dir: str | None) -> tuple[DatasetDict, list[str], bool]:
    spec = BUILTIN_DATASETS[name]
    base = str(Path(data_dir) / name) if data_dir and (Path(data_dir) / name).is_dir() else (data_dir or spec["base"])
    files = {split: f"{base}/{file}" for split, file in spec["files"].items()}
    if spec.get("multilabel"):
        # text<TAB>comma-separated label ids<TAB>comment id, no header, no quoting.
        columns = datasets.Features({"text": Value("string"), "label": Value("string"), "id": Value("string")})
        data = datasets.load_dataset(
            "csv", data_files=files, sep="\t", header=None, quoting=3, column_names=list(columns), features=columns
        )
    else:
        data = datasets.load_dataset("csv", data_files=files)
    return data, _read_label_names(f"{base}/{spec['labels']}"), bool(spec.get("multilabel"))


def _local_files(dataset: str) -> dict[str, str] | None:
    """`split=path,...` pairs or a folder of train/valid/test files, as {split: path}; None if neither."""
    if "=" in dataset:
        pairs = dict(item.split("=", 1) for item in dataset.split(","))
        return {SPLIT_ALIASES.get(split, split): path for split, path in pairs.items()}
    folder = Path(dataset)
    if not folder.is_dir():
        return None
    files = {}
    for path in sorted(folder.iterdir()):
        if path.suffix in (".csv", ".tsv", ".json", ".jsonl") and path.stem in SPLIT_ALIASES:
            files[SPLIT_ALIASES[path.stem]] = str(path)
    return files


def load_data(
    dataset: str,
    data_dir: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    limit: int | None = None,
) -> tuple[DatasetDict, list[str], str]:
    """Load a data set as a `DatasetDict` with columns `text` and `label`, its label names and its problem type.

    Single-label labels are integer ids; multi-label ones (comma-separated ids in one column, or lists) become
    multi-hot float vectors. Raises `ValueError` naming the problem for a missing split or column, an empty text or
    a label outside the label set, before any model is loaded.
    """
    multilabel = False
    label_names = None
    if dataset in BUILTIN_DATASETS:
        data, label_names, multilabel = _builtin(dataset, data_dir)
    elif (files := _local_files(dataset)) is not None:
        if not files:
            raise ValueError(f"No train/valid/test .csv, .tsv, .json or .jsonl files in {dataset!r}.")
        suffix = Path(next(iter(files.values()))).suffix
        builder = {".csv": "csv", ".tsv": "csv", ".json": "json", ".jsonl": "json"}[suffix]
        data = datasets.load_dataset(builder, data_files=files, **({"sep": "\t"} if suffix == ".tsv" else {}))
        for candidate in ("label2idx.txt", "labels.txt"):
            if (Path(next(iter(files.values()))).parent / candidate).exists():
                label_names = _read_label_names(str(Path(next(iter(files.values()))).parent / candidate))
    elif "/" in dataset and not Path(dataset).suffix:  # a Hub data set id, ORG/NAME
        try:
            data = datasets.load_dataset(dataset)
        except Exception as error:  # the Hub answers with many error types
            raise ValueError(
                f"Unknown data set {dataset!r}: not one of {', '.join(BUILTIN_DATASETS)}, not a local folder or "
                f"split=file list, and it could not be loaded from the Hub ({error})."
            ) from error
    else:
        raise ValueError(
            f"Unknown data set {dataset!r}: not one of {', '.join(BUILTIN_DATASETS)}, a local folder, a "
            "split=file list or a Hub id (ORG/NAME)."
        )

    data = DatasetDict({SPLIT_ALIASES.get(name, name): split for name, split in data.items()})
    missing = [split for split in SPLITS if split not in data]
    if missing:
        raise ValueError(f"Data set {dataset!r} has splits {sorted(data)}; missing {missing}.")
    data = DatasetDict({split: data[split] for split in SPLITS})
    for name, split in data.items():
        for column in (text_column, label_column):
            if column not in split.column_names:
                raise ValueError(
                    f"Split {name!r} of {dataset!r} has no column {column!r}; it has {split.column_names}."
                )
    if limit is not None:
        data = DatasetDict({name: split.select(range(min(limit, len(split)))) for name, split in data.items()})

    label_feature = data["train"].features[label_column]
    if label_names is None and isinstance(label_feature, ClassLabel):
        label_names = label_feature.names
    if label_names is None and isinstance(label_feature, List | datasets.Sequence):
        multilabel = True
        if isinstance(label_feature.feature, ClassLabel):
            label_names = label_feature.feature.names
    if label_names is None:
        values = sorted({v for split in data.values() for v in split[label_column]}, key=str)
        if all(isinstance(v, int) for v in values):
            label_names = [str(i) for i in range(max(values) + 1)]
        else:  # string labels: ids in sorted order
            label_names = [str(v) for v in values]

    def normalise(batch: dict) -> dict:
        labels = []
        for value in batch[label_column]:
            if multilabel:
                ids = [int(v) for v in str(value).split(",")] if isinstance(value, str) else list(value)
                labels.append(ids)
            else:
                labels.append(label_names.index(value) if isinstance(value, str) and value in label_names else value)
        return {"text": batch[text_column], "label": labels}

    out = DatasetDict()
    for name, split in data.items():
        split = split.map(normalise, batched=True, remove_columns=split.column_names, desc=f"Reading {name}")
        try:
            validate_texts(split["text"])
        except (TypeError, ValueError) as error:
            raise ValueError(f"Split {name!r} of {dataset!r}: {error} (row index = position)") from None
        for row, label in enumerate(split["label"]):
            ids = label if multilabel else [label]
            if not ids or any(not isinstance(i, int) or not 0 <= i < len(label_names) for i in ids):
                raise ValueError(
                    f"Split {name!r} of {dataset!r}, row {row}: label {label!r} is outside the label set "
                    f"(ids 0..{len(label_names) - 1}: {', '.join(label_names[:5])}, ...)."
                )
        if multilabel:

            def multi_hot(batch: dict) -> dict:
                hot = np.zeros((len(batch["label"]), len(label_names)), dtype=np.float32)
                for row, ids in enumerate(batch["label"]):
                    hot[row, ids] = 1.0
                return {"label": hot}

            features = datasets.Features({"text": Value("string"), "label": List(Value("float32"), len(label_names))})
            split = split.map(multi_hot, batched=True, features=features, desc=f"Multi-hot {name}")
        else:
            split = split.cast_column("label", ClassLabel(names=label_names))
        out[name] = split
    problem_type = "multi_label_classification" if multilabel else "single_label_classification"
    return out, label_names, problem_type


# ---- backbones and cache keys ----


def resolve_backbones(
    preset: str,
    overrides: list[str] | dict[str, str] = (),
    max_length: int | None = None,
) -> list[dict]:
    """The preset's backbone descriptions with `NAME=MODEL` overrides; an overridden model's width is read from
    its config (no weights are loaded), and a too-large `num_layers` is refused here, before any work."""
    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; allowed: {', '.join(PRESETS)}.")
    specs = [normalize_backbone(spec) for spec in PRESETS[preset]["backbones"]]
    names = [spec["name"] for spec in specs]
    for name, model in _pairs(overrides, "--backbone").items():
        if name not in names:
            raise ValueError(f"--backbone {name}=...: no backbone {name!r}; the {preset!r} preset has {names}.")
        spec = specs[names.index(name)]
        config = _model_config({**spec, "model": model}, None)
        spec.update(model=model, hidden_size=config.get_text_config().hidden_size, revision=None)
        FrozenBackbone.check_config(spec, config)
    if max_length is not None:
        for spec in specs:
            spec["max_length"] = max_length
    return specs


def _model_config(spec: dict, path: str | None):
    """The backbone's model config, read without loading weights; a clear error if it cannot be loaded."""
    source = path or spec["model"]
    try:
        return AutoConfig.from_pretrained(source, revision=None if path else spec.get("revision"))
    except (OSError, ValueError) as error:
        raise ValueError(f"Backbone {spec['name']!r} could not be loaded from {source!r}: {error}") from error


def _pairs(items: list[str] | dict[str, str], flag: str) -> dict[str, str]:
    if isinstance(items, dict):
        return dict(items)
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} expects NAME=VALUE, got {item!r}.")
        pairs[name] = value
    return pairs


def _folder_digest(folder: Path) -> str:
    """Content hash of a local model folder's weights and configs (a local folder has no revision)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".bin", ".json", ".model", ".txt"):
            digest.update(str(path.relative_to(folder)).encode())
            with open(path, "rb") as handle:
                digest.update(hashlib.file_digest(handle, "sha256").digest())
    return digest.hexdigest()


def _resolved_revision(spec: dict) -> str | None:
    """The commit a Hub model's revision points to now (so that 'main' moving invalidates the cache)."""
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(spec["model"], revision=spec["revision"]).sha
    except Exception:  # offline or no access: keep what the user pinned
        logger.warning(f"Could not resolve the revision of {spec['model']!r}; caching under {spec['revision']!r}.")
        return spec["revision"]


def column_key(spec: dict, path: str | None, compute_dtype: str, texts_digest: str) -> str:
    """Cache key of one backbone's feature column: everything that changes the features."""
    source = path or spec["model"]
    weights = _folder_digest(Path(source)) if Path(source).is_dir() else spec["revision"]
    fields = {
        "spec": {k: spec[k] for k in ("model", "revision", "pooling", "num_layers", "hidden_size", "max_length")},
        "weights": weights,
        "dtype": compute_dtype,
        "texts": texts_digest,
        "feature_code": FEATURE_CODE_VERSION,
    }
    if spec.get("quantization"):  # only when set, so that the caches of full-precision weights keep their keys
        fields["quantization"] = spec["quantization"]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def texts_digest(split: Dataset) -> str:
    digest = hashlib.sha256()
    for text in split["text"]:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()


# ---- extraction ----


def feature_type(spec: dict, dtype: str) -> Array2D | List:
    shape = feature_shape(spec)
    return Array2D(shape=shape, dtype=dtype) if len(shape) == 2 else List(Value(dtype), length=shape[0])


class ShardExtractor:
    """`datasets.map` function adding a backbone's feature column to a batch of texts."""

    def __init__(self, backbone: FrozenBackbone, batch_size: int, max_tokens: int | None, dtype: str, progress):
        self.backbone, self.batch_size, self.max_tokens = backbone, batch_size, max_tokens
        self.dtype, self.progress = getattr(torch, dtype), progress

    def __call__(self, batch: dict) -> dict:
        features = self.backbone.extract(batch["text"], self.batch_size, self.max_tokens, self.dtype, self.progress)
        return {self.backbone.spec["name"]: features.numpy()}


def _distributed() -> tuple[int, int]:
    """(rank, world size), from the variables torchrun and accelerate launch set (accelerate's own state can say
    one process on CPU under torchrun); the process group is set up on first use."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=12))
    return rank, world


def _barrier(world: int) -> None:
    if world > 1:
        torch.distributed.barrier()


def extract(
    dataset: str = "ED",
    data_dir: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    preset: str = "paper",
    backbones: list[dict] | None = None,
    backbone_paths: dict[str, str] | None = None,
    output_dir: str | os.PathLike | None = None,
    limit: int | None = None,
    batch_size: int = 16,
    max_tokens: int | None = None,
    device: str | None = None,
    device_map: str | None = None,
    dtype: str | None = None,
    quantization: str | None = None,
    feature_dtype: str = "float16",
    shard_size: int = 1024,
) -> dict:
    """Extract (or load from cache) the features of every split and save them as a `DatasetDict`.

    Returns the metadata written to `OUTPUT_DIR/fec_features.json`, plus `"computed"`: the backbones whose
    features were computed in this call (empty on a full cache hit, when no model is loaded at all) and
    `"throughput"`: texts/s and tokens/s of each.
    """
    rank, world = _distributed()
    output_dir = Path(output_dir or Path("features") / Path(dataset.rstrip("/")).name)
    backbones = [normalize_backbone(spec) for spec in (backbones or resolve_backbones(preset))]
    backbone_paths = dict(backbone_paths or {})
    if feature_dtype not in ("float16", "float32"):
        raise ValueError(f"feature_dtype must be float16 or float32, got {feature_dtype!r}.")
    if world > 1 and device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}; use float32, bfloat16 or float16.")
    for spec in backbones:  # recorded with the features and in the trained model's config: serving computes alike
        spec["dtype"] = dtype
        if quantization is not None and spec["pooling"] == "layer_mean":
            spec["quantization"] = quantization
        normalize_backbone(spec)  # a bad dtype or quantization is refused here, before any work

    data, label_names, problem_type = load_data(dataset, data_dir, text_column, label_column, limit)
    digests = {name: texts_digest(split) for name, split in data.items()}
    for spec in backbones:
        if spec["revision"] is None and spec["name"] not in backbone_paths and not Path(spec["model"]).is_dir():
            spec["revision"] = _resolved_revision(spec)
    keys = {
        spec["name"]: {split: column_key(spec, backbone_paths.get(spec["name"]), dtype, digests[split])
                       for split in SPLITS}
        for spec in backbones
    }  # fmt: skip
    metadata = {
        "dataset": dataset,
        "problem_type": problem_type,
        "label_names": label_names,
        "backbones": backbones,
        "feature_dtype": feature_dtype,
        "compute_dtype": dtype,
        "head": dict(PRESETS[preset]["head"]) if preset in PRESETS else {},
        "rows": {split: len(data[split]) for split in SPLITS},
        "column_keys": keys,
    }
    previous = read_metadata(output_dir) if (output_dir / METADATA_FILE).exists() else None
    if previous is not None and {k: previous.get(k) for k in metadata} == metadata:
        logger.info(f"Features in {output_dir} are up to date: nothing to compute.")
        return {**metadata, "computed": [], "throughput": {}}

    for spec in backbones:  # refuse a backbone that cannot give these features before any work is done
        FrozenBackbone.check_config(spec, _model_config(spec, backbone_paths.get(spec["name"])))
    cache = output_dir / "cache"
    computed, throughput = [], {}
    for spec in backbones:
        name = spec["name"]
        # Shards of all splits are dealt round-robin over the processes.
        everything = [(split, i) for split in SPLITS for i in range(math.ceil(len(data[split]) / shard_size))]
        pending = {split: [] for split in SPLITS}
        for split, i in everything[rank::world]:
            if not _shard_file(cache, split, name, keys[name][split], i).exists():
                pending[split].append(i)
        if not any(pending.values()):
            continue
        computed.append(name)
        logger.info(f"[rank {rank}/{world}] {name}: {sum(map(len, pending.values()))} shards to compute")
        backbone = FrozenBackbone.load(
            spec, backbone_paths.get(name), device=device, dtype=getattr(torch, dtype), device_map=device_map
        )
        total = sum(min(shard_size, len(data[s]) - i * shard_size) for s, shards in pending.items() for i in shards)
        start = time.perf_counter()
        desc = name if world == 1 else f"{name} [rank {rank}/{world}]"
        with tqdm(total=total, desc=desc, unit="text", disable=None) as progress:
            extractor = ShardExtractor(backbone, batch_size, max_tokens, feature_dtype, progress)
            for split, shards in pending.items():
                for i in shards:
                    target = _shard_file(cache, split, name, keys[name][split], i)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    part = data[split].select(range(i * shard_size, min((i + 1) * shard_size, len(data[split]))))
                    # map writes to a temporary file and moves it into place when done: a killed run leaves
                    # either a finished shard or none, and the rerun starts at the first missing one.
                    part.map(
                        extractor, batched=True, batch_size=len(part), remove_columns=part.column_names,
                        features=datasets.Features({name: feature_type(spec, feature_dtype)}),
                        cache_file_name=str(target), load_from_cache_file=False,
                        new_fingerprint=f"{target.parent.name}-{i}",
                    )  # fmt: skip
        seconds = time.perf_counter() - start
        throughput[name] = {
            "texts": backbone.texts_seen,
            "texts_per_s": backbone.texts_seen / seconds,
            "tokens_per_s": backbone.tokens_seen / seconds,
        }
        del backbone
    _barrier(world)
    if rank == 0:
        _assemble(data, backbones, keys, cache, shard_size, feature_dtype, output_dir, metadata)
    _barrier(world)
    return {**metadata, "computed": computed, "throughput": throughput}


def _shard_file(cache: Path, split: str, name: str, key: str, index: int) -> Path:
    return cache / split / f"{name}-{key}" / f"shard-{index:05d}.arrow"


def _assemble(data, backbones, keys, cache, shard_size, feature_dtype, output_dir: Path, metadata: dict) -> None:
    """Join the finished shards into one `DatasetDict` with a column per backbone and save it."""
    splits = {}
    for split in SPLITS:
        columns = [data[split]]
        for spec in backbones:
            name = spec["name"]
            count = math.ceil(len(data[split]) / shard_size)
            shards = [
                Dataset.from_file(str(_shard_file(cache, split, name, keys[name][split], i))) for i in range(count)
            ]
            columns.append(datasets.concatenate_datasets(shards))
        splits[split] = datasets.concatenate_datasets(columns, axis=1)
    staging = output_dir / "_saving"
    DatasetDict(splits).save_to_disk(staging)
    for split in SPLITS:  # replace the previous result only once the new one is complete
        target = output_dir / split
        if target.exists():
            shutil.rmtree(target)
        (staging / split).rename(target)
    (staging / "dataset_dict.json").replace(output_dir / "dataset_dict.json")
    staging.rmdir()
    (output_dir / METADATA_FILE).write_text(json.dumps(metadata, indent=2) + "\n")


def read_metadata(features_dir: str | os.PathLike) -> dict:
    path = Path(features_dir) / METADATA_FILE
    if not path.exists():
        raise ValueError(
            f"{features_dir} is not a features folder (no {METADATA_FILE}); create one with "
            "`python extract_features.py --dataset NAME --output-dir DIR`."
        )
    return json.loads(path.read_text())


def load_features(features_dir: str | os.PathLike) -> tuple[DatasetDict, dict]:
    """The features `extract` saved (memory-mapped Arrow) and their metadata."""
    metadata = read_metadata(features_dir)
    return datasets.load_from_disk(str(features_dir)), metadata


def main(argv: list[str] | None = None) -> dict:
    (args,) = HfArgumentParser(ExtractArguments).parse_args_into_dataclasses(args=argv)
    pylogging.basicConfig(format="[%(levelname)s|%(name)s] %(message)s", level=pylogging.INFO)
    backbones = resolve_backbones(args.preset, args.backbone, args.max_length)
    result = extract(
        dataset=args.dataset, data_dir=args.data_dir, text_column=args.text_column, label_column=args.label_column,
        preset=args.preset, backbones=backbones, backbone_paths=_pairs(args.backbone_path, "--backbone-path"),
        output_dir=args.output_dir, limit=args.limit, batch_size=args.batch_size, max_tokens=args.max_tokens,
        device=args.device, device_map=args.device_map, dtype=args.dtype, quantization=args.quantization,
        feature_dtype=args.feature_dtype, shard_size=args.shard_size,
    )  # fmt: skip
    if int(os.environ.get("RANK", "0")) == 0:
        rows = ", ".join(f"{split} {n}" for split, n in result["rows"].items())
        print(f"Features of {result['dataset']} ({rows}) -> {args.output_dir or 'features/' + args.dataset}")
        if not result["computed"]:
            print("Cache hit: every column was up to date, no model was loaded.")
        for name, speed in result["throughput"].items():
            print(f"  {name:10s} {speed['texts_per_s']:9.1f} texts/s {speed['tokens_per_s']:11.1f} tokens/s")
    return result


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")
