"""Extract frozen backbone features into an Arrow `DatasetDict`: cached, resumable, on one machine or many GPUs.

    python extract_features.py --dataset ED                      # paper backbones, features/ED
    python extract_features.py --dataset ED --preset small --limit 200
    accelerate launch extract_features.py --dataset go_emotion   # rows split over processes, same result

Every split gets one feature column per backbone (named after it). Work is written shard by shard under
`OUTPUT_DIR/cache/` (or `--cache-dir`), keyed by everything that changes a feature, so a rerun skips finished shards
(an interrupted run resumes) and a changed backbone recomputes only its own column. A column of chosen layers is
cut from a cached `--all-layers` column of the same backbone, without running it. Every shard and every saved split
carries a checksum: what does not match its record is recomputed or rebuilt, never trusted.

The heavy libraries (torch, datasets, transformers) are imported by the functions that use them, so that
`--help` answers at once and importing this module costs nothing.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import errno
import hashlib
import json
import logging
import math
import os
import shutil
import time
import typing
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llm_fusion_fec.commands.arguments import ExtractArguments, check_at_least_one, name_value_pairs
from llm_fusion_fec.data.datasets import SPLITS, data_digest, dataset_name, load_data, texts_digest
from llm_fusion_fec.features.metadata import METADATA_FILE, FeatureMetadata, default_features_dir, read_metadata

if typing.TYPE_CHECKING:
    from datasets import DatasetDict

    from modeling_llm_fusion import FrozenBackbone

# What transformers' `logging.get_logger(__name__)` returns for a module outside transformers (a standard logger of
# that name), taken from the standard library so that importing this module does not import transformers.
logger = logging.getLogger(__name__)

RESERVED_COLUMNS = ("text", "label")  # the data columns of every split, beside one column per backbone


@dataclass
class ExtractionResult:
    """What `extract` returns.

    Args:
        metadata (`FeatureMetadata`): What `OUTPUT_DIR/fec_features.json` records.
        output_dir (`Path`): Where the features are.
        computed (`list[str]`): The backbones whose features were computed in this call (empty on a cache hit, when
            no model is loaded at all).
        throughput (`dict[str, dict[str, float]]`): Of each computed backbone: texts, texts/s and tokens/s.
    """

    metadata: FeatureMetadata
    output_dir: Path
    computed: list[str] = field(default_factory=list)
    throughput: dict[str, dict[str, float]] = field(default_factory=dict)


# ---- backbones and cache keys ----


def resolve_backbones(
    preset: str,
    overrides: list[str] | dict[str, str] = (),
    max_length: int | None = None,
) -> list[dict]:
    """The preset's backbone descriptions with `NAME=MODEL` overrides; an overridden model's width is read from
    its config (no weights are loaded), and a too-large `num_layers` is refused here, before any work."""
    from configuration_llm_fusion import PRESETS, normalize_backbone
    from modeling_llm_fusion import FrozenBackbone

    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; allowed: {', '.join(PRESETS)}.")
    specs = [normalize_backbone(spec) for spec in PRESETS[preset]["backbones"]]
    names = [spec["name"] for spec in specs]
    for name, model in name_value_pairs(overrides, "--backbone").items():
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


def customize_backbones(
    specs: list[dict],
    spec_files: Sequence[str | os.PathLike] = (),
    added_spec_files: Sequence[str | os.PathLike] = (),
    layers: list[str] | dict[str, list[int]] = (),
    pooling: list[str] | dict[str, str] = (),
    template: list[str] | dict[str, str] = (),
    all_layers: bool = False,
    backbone_paths: dict[str, str] | None = None,
    max_length: int | None = None,
) -> list[dict]:
    """The backbone descriptions `specs` with the feature options of the command line, applied in this order:

    - `spec_files`: JSON files, each a backbone description (or a list of them) that replaces the backbone of the
      same name entirely (what `bench/sweep_layers.py` writes);
    - `added_spec_files`: JSON files of backbone descriptions with new names, added after the others in file order
      (a name already taken is refused: `spec_files` replace);
    - `pooling` (`NAME=POOLING`), `layers` (`NAME=I,J,K`: hidden-state indices in feature order; `num_layers`
      follows) and `template` (`NAME=TEMPLATE`, with one `{text}` slot);
    - `all_layers`: every layer-pooled backbone reads all its hidden states, top first (`[-1, -2, ..., -(L + 1)]`
      for L layers; the last is the embeddings), in one forward pass; the model's config (not its weights) is read,
      from `backbone_paths` where given;
    - `max_length` for every backbone.

    Bad values raise `ValueError` naming them, before any weights are loaded.
    """
    from configuration_llm_fusion import LAYER_POOLINGS, normalize_backbone

    specs = _with_spec_files(specs, spec_files, added_spec_files)
    names = [spec["name"] for spec in specs]
    for name, value in name_value_pairs(pooling, "--pooling").items():
        spec = specs[_backbone_position(names, name, "--pooling")]
        spec["pooling"] = value
        if value not in LAYER_POOLINGS:  # an encoder pooling gives one vector
            spec.update(layers=None, num_layers=1)
    chosen = name_value_pairs(layers, "--layers")
    for name, value in chosen.items():
        if isinstance(value, str):
            try:
                value = [int(index) for index in value.split(",")]
            except ValueError:
                raise ValueError(f"--layers expects NAME=I,J,K with integer indices, got {name}={value}.") from None
        specs[_backbone_position(names, name, "--layers")].update(layers=list(value), num_layers=len(value))
    for name, value in name_value_pairs(template, "--template").items():
        specs[_backbone_position(names, name, "--template")]["template"] = value
    specs = [normalize_backbone(spec) for spec in specs]
    if all_layers:
        _read_every_layer(specs, chosen, backbone_paths or {})
    if max_length is not None:
        for spec in specs:
            spec["max_length"] = max_length
    return [normalize_backbone(spec) for spec in specs]


def _with_spec_files(
    specs: list[dict], spec_files: Sequence[str | os.PathLike], added_spec_files: Sequence[str | os.PathLike]
) -> list[dict]:
    """`specs` (copied) with the backbones of `spec_files` replacing those of their names, then those of
    `added_spec_files` added; `ValueError` for a name to replace that is not there or one to add that is."""
    specs = [dict(spec) for spec in specs]
    names = [spec["name"] for spec in specs]
    for spec in _described_backbones(spec_files, "--backbone-spec"):
        specs[_backbone_position(names, spec["name"], "--backbone-spec")] = spec
    for spec in _described_backbones(added_spec_files, "--add-backbone-spec"):
        if spec["name"] in names:
            raise ValueError(
                f"--add-backbone-spec: a backbone named {spec['name']!r} exists already ({names}); give the added one "
                "a name of its own, or replace that one with --backbone-spec."
            )
        specs.append(spec)
        names.append(spec["name"])
    return specs


def check_backbone_names(backbones: list[dict]) -> None:
    """Refuse a backbone whose name is a column the features table holds already (`text`, `label`): its column
    would collide with that one once every backbone had been extracted."""
    for spec in backbones:
        if spec["name"] in RESERVED_COLUMNS:
            raise ValueError(
                f"Backbone name {spec['name']!r} is the name of a data column ({', '.join(RESERVED_COLUMNS)}); "
                "give the backbone another name."
            )


def _backbone_position(names: list[str], name: str, flag: str) -> int:
    """Where the backbone a command-line `flag` names is in `names`; `ValueError` naming the flag if nowhere."""
    if name not in names:
        raise ValueError(f"{flag} {name}=...: no backbone {name!r}; the backbones are {names}.")
    return names.index(name)


def _described_backbones(spec_files: Sequence[str | os.PathLike], flag: str) -> Iterator[dict]:
    """The backbone descriptions in the JSON files of `flag` (one, or a list of them, per file), normalized."""
    from configuration_llm_fusion import normalize_backbone

    for file in spec_files:
        try:
            described = json.loads(Path(file).read_text())
        except (OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{flag} {file}: not a readable JSON backbone description ({error}).") from None
        described = described if isinstance(described, list) else [described]
        if not described:
            raise ValueError(f"{flag} {file}: the list of backbone descriptions is empty; describe one at least.")
        names = [spec.get("name") if isinstance(spec, dict) else None for spec in described]
        if repeated := next((name for i, name in enumerate(names) if name is not None and name in names[:i]), None):
            raise ValueError(f"{flag} {file}: two descriptions of backbone {repeated!r}; keep one.")
        for spec in described:
            yield normalize_backbone(spec)


def _read_every_layer(specs: list[dict], chosen: dict[str, str | list[int]], backbone_paths: dict[str, str]) -> None:
    """`--all-layers`: set every layer-pooled backbone of `specs` to read all its hidden states, top first. The
    number comes from the model's config (from `backbone_paths` where given); `chosen` are the `--layers` given."""
    from configuration_llm_fusion import LAYER_POOLINGS
    from modeling_llm_fusion import FrozenBackbone

    layered = [spec for spec in specs if spec["pooling"] in LAYER_POOLINGS]
    if not layered:
        raise ValueError(f"--all-layers: no backbone has a layer pooling ({', '.join(LAYER_POOLINGS)}).")
    for spec in layered:
        if spec["name"] in chosen:
            raise ValueError(f"--all-layers and --layers {spec['name']}=... contradict each other; use one.")
        count = FrozenBackbone.hidden_state_count(_model_config(spec, backbone_paths.get(spec["name"])))
        spec.update(layers=[-1 - i for i in range(count)], num_layers=count)


def _check_backbone_paths(backbone_paths: dict[str, str], backbones: list[dict]) -> None:
    """Refuse a `--backbone-path` that names no backbone or a folder that does not exist."""
    names = [spec["name"] for spec in backbones]
    for name, folder in backbone_paths.items():
        if name not in names:
            raise ValueError(f"--backbone-path {name}={folder}: no backbone {name!r}; the backbones are {names}.")
        if not Path(folder).is_dir():
            model = backbones[names.index(name)]["model"]
            raise ValueError(f"--backbone-path {name}={folder}: folder not found; it must be a local copy of {model}.")


def _model_config(spec: dict, path: str | None):
    """The backbone's model config, read without loading weights; a clear error if it cannot be loaded."""
    from transformers import AutoConfig

    source = path or spec["model"]
    try:
        return AutoConfig.from_pretrained(source, revision=None if path else spec.get("revision"))
    except (OSError, ValueError) as error:
        # Offline, a Hub id cannot load even where every feature is cached: a local copy is the way.
        hint = "" if path else f" (a local copy: --backbone-path {spec['name']}=FOLDER)"
        raise ValueError(f"Backbone {spec['name']!r} could not be loaded from {source!r}{hint}: {error}") from error


def _folder_digest(folder: Path) -> str:
    """Content hash of a local model folder's weights and configs (a local folder has no revision)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".bin", ".json", ".model", ".txt"):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


def _resolved_revision(spec: dict) -> str | None:
    """The commit a Hub model's revision points to now (so that 'main' moving invalidates the cache)."""
    from huggingface_hub import HfApi

    try:
        return HfApi().model_info(spec["model"], revision=spec["revision"]).sha
    except Exception:  # offline or no access: keep what the user pinned
        logger.warning(f"Could not resolve the revision of {spec['model']!r}; caching under {spec['revision']!r}.")
        return spec["revision"]


def column_key(
    spec: dict,
    path: str | None,
    compute_dtype: str,
    texts_digest: str,
    feature_dtype: str = "float16",
    shard_size: int = 1024,
) -> str:
    """Cache key of one backbone's feature column: everything its shards depend on (labels are not)."""
    from modeling_llm_fusion import FEATURE_CODE_VERSION

    source = path or spec["model"]
    weights = _folder_digest(Path(source)) if Path(source).is_dir() else spec["revision"]
    fields = {
        "spec": {k: spec[k] for k in ("model", "revision", "pooling", "num_layers", "hidden_size", "max_length")}
        # Keys that came later enter only when set, so that columns cached before them keep their keys.
        | {k: spec[k] for k in ("layers", "template") if spec.get(k) is not None},
        "weights": weights,
        "dtype": compute_dtype,
        "feature_dtype": feature_dtype,
        "texts": texts_digest,
        "shard_size": shard_size,  # shard i holds rows i*shard_size...: another size, other shards
        "feature_code": FEATURE_CODE_VERSION,
    }
    if spec.get("quantization"):  # only when set, so that the caches of full-precision weights keep their keys
        fields["quantization"] = spec["quantization"]
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


# ---- files and their checksums ----


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def split_checksum(folder: Path) -> str:
    """sha256 of a saved split: its data files and their descriptions (not the cache files `map` may add)."""
    digest = hashlib.sha256()
    for path in sorted([*folder.glob("data-*.arrow"), folder / "state.json", folder / "dataset_info.json"]):
        digest.update(path.name.encode() + b"\0" + (bytes.fromhex(file_sha256(path)) if path.exists() else b""))
    return digest.hexdigest()


def _write_json(path: Path, record: dict) -> None:
    """Write a JSON file atomically: a reader sees the old file or the whole new one, never a part."""
    temporary = path.with_name(f".{path.name}.tmp")
    try:
        temporary.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def _disk_full_is_an_error(output_dir: Path):
    """Turn a full disk into one line: what was being written, and what to do."""
    try:
        yield
    except OSError as error:
        if error.errno != errno.ENOSPC:
            raise
        raise ValueError(
            f"No space left on the device while writing {error.filename or output_dir}: free some space or pass "
            "--output-dir on another disk, then rerun (finished shards are kept)."
        ) from error


@contextlib.contextmanager
def _library_progress_bars_off():
    """`datasets` shows a bar for every file read and every map, transformers one for every model's weights; ours
    (one per backbone) say enough. Downloads keep theirs (huggingface_hub's)."""
    import datasets
    from transformers.utils import logging as transformers_logging

    shown = datasets.is_progress_bar_enabled(), transformers_logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    transformers_logging.disable_progress_bar()
    try:
        yield
    finally:
        if shown[0]:
            datasets.enable_progress_bars()
        if shown[1]:
            transformers_logging.enable_progress_bar()


# ---- extraction ----


def feature_type(spec: dict, dtype: str):
    """The `datasets` feature of one backbone's column: `Array2D` for an LLM's layers, a fixed-length `List`."""
    from datasets import Array2D, List, Value

    from configuration_llm_fusion import feature_shape

    shape = feature_shape(spec)
    return Array2D(shape=shape, dtype=dtype) if len(shape) == 2 else List(Value(dtype), length=shape[0])


@dataclass
class _Shards:
    """The cache's shards of the feature columns. Shard `i` of a column of a split holds the split's rows from
    `i * size` on (`size` of them, fewer in the last), in a file named by the column's cache key
    (`column_keys[backbone][split]`)."""

    cache: Path
    column_keys: dict[str, dict[str, str]]
    split_rows: dict[str, int]
    size: int

    def count(self, split: str) -> int:
        return math.ceil(self.split_rows[split] / self.size)

    def share(self, rank: int, world: int) -> list[tuple[str, int]]:
        """The shards (split, index) of a column that process `rank` computes: all of them, splits in order, dealt
        round-robin over the processes."""
        return [(split, i) for split in SPLITS for i in range(self.count(split))][rank::world]

    def rows(self, split: str, index: int) -> int:
        return min(self.size, self.split_rows[split] - index * self.size)

    def file(self, split: str, backbone: str, index: int) -> Path:
        return self.cache / split / f"{backbone}-{self.column_keys[backbone][split]}" / f"shard-{index:05d}.arrow"

    def files(self, split: str, backbone: str) -> list[Path]:
        """The shard files of a backbone's column of a split, in row order."""
        return [self.file(split, backbone, i) for i in range(self.count(split))]


def _shard_record(shard: Path) -> Path:
    return shard.with_suffix(".json")


def _shard_problem(shard: Path, rows: int) -> str | None:
    """Why a finished shard cannot be trusted (its record of rows and checksum missing or not matching), or None."""
    try:
        record = json.loads(_shard_record(shard).read_text())
    except (OSError, ValueError):
        return "it has no record of its rows and checksum"
    if record.get("rows") != rows:
        return f"its record says {record.get('rows')} rows, expected {rows}"
    if record.get("sha256") != file_sha256(shard):
        return "its content does not match its checksum"
    return None


def _write_shard(shard: Path, name: str, values, feature) -> None:
    """Write one shard's features: the Arrow file under a temporary name moved into place when complete, then its
    record (rows and sha256), so that a shard is trusted only once both are written."""
    from datasets import Features
    from datasets.arrow_writer import ArrowWriter

    shard.parent.mkdir(parents=True, exist_ok=True)
    _shard_record(shard).unlink(missing_ok=True)
    temporary = shard.with_name(f".{shard.name}.tmp")
    try:
        with ArrowWriter(features=Features({name: feature}), path=str(temporary)) as writer:
            writer.write_batch({name: values})
            writer.finalize()
        checksum = file_sha256(temporary)
        os.replace(temporary, shard)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    _write_json(_shard_record(shard), {"rows": len(values), "sha256": checksum})


def _output_problem(output_dir: Path, metadata: FeatureMetadata) -> str | None:
    """Why the saved splits do not match what `metadata` records of them, or None."""
    if not (output_dir / "dataset_dict.json").exists():
        return "dataset_dict.json is missing"
    for split in SPLITS:
        if not (output_dir / split).is_dir():
            return f"split {split!r} is missing"
        if split_checksum(output_dir / split) != metadata.split_checksums.get(split):
            return f"split {split!r} does not match its checksum"
    return None


def _previous_metadata(output_dir: Path) -> FeatureMetadata | None:
    """The metadata of what is in `output_dir`, or None where there is none that this version can read."""
    try:
        return read_metadata(output_dir) if (output_dir / METADATA_FILE).exists() else None
    except ValueError as error:
        logger.warning(f"{error}")
        return None


def _distributed() -> tuple[int, int]:
    """(rank, world size), from the variables torchrun and accelerate launch set (accelerate's own state can say
    one process on CPU under torchrun); the process group is set up on first use."""
    import torch

    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    if world > 1 and not torch.distributed.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        torch.distributed.init_process_group(backend, timeout=datetime.timedelta(hours=12))
    return rank, world


def _barrier(world: int) -> None:
    import torch

    if world > 1:
        torch.distributed.barrier()


def extract(
    args: ExtractArguments | str = "ED",
    *,
    backbones: list[dict] | None = None,
    backbone_paths: dict[str, str] | None = None,
    **options,
) -> ExtractionResult:
    """Extract (or load from cache) the features of every split of a data set and save them as a `DatasetDict`:
    what `fec extract` does.

        from llm_fusion_fec import extract

        result = extract("ED", preset="small", limit=500)  # -> features/ED
        print(result.metadata.rows, result.output_dir)

    Args:
        args (`ExtractArguments` or `str`, *optional*, defaults to `"ED"`):
            The command line's arguments, or just the data set.
        backbones (`list[dict]`, *optional*):
            Backbone descriptions to extract, instead of those `args` name (the preset, with `--backbone`,
            `--layers`, `--pooling`, ... applied by `backbones_of`).
        backbone_paths (`dict[str, str]`, *optional*):
            Local folders of the backbones by name, instead of `args.backbone_path`.
        options:
            `ExtractArguments` fields that replace those of `args` (`preset="small"`, `limit=500`, ...).

    The output in `args.output_dir` (default `default_features_dir(dataset)`) is up to date when its metadata
    records the same data (texts and labels), backbones and dtypes, and its splits match their checksums; otherwise
    it is rebuilt, from the cache where the shards are good (no model is loaded). The cache is `args.cache_dir`
    (default `output_dir/cache`); a layer-pooled column's shards missing there are cut from the same backbone's
    all-layers column where the cache holds it (`--all-layers`), without loading the model. Returns an
    `ExtractionResult`: the metadata written to `OUTPUT_DIR/fec_features.json`, the backbones computed in this call
    and their throughput. Raises `ValueError` in one line for bad arguments, data or backbones, and for a full disk.
    """
    from configuration_llm_fusion import PRESETS, normalize_backbone

    args = arguments_of(args, options)
    _check_extract_arguments(args)
    if backbone_paths is None:
        backbone_paths = name_value_pairs(args.backbone_path, "--backbone-path")
    if backbones is None:
        backbones = backbones_of(args, backbone_paths)
    backbones = [normalize_backbone(spec) for spec in backbones]
    check_backbone_names(backbones)
    backbone_paths = dict(backbone_paths)
    _check_backbone_paths(backbone_paths, backbones)
    output_dir = Path(args.output_dir) if args.output_dir is not None else default_features_dir(args.dataset)
    with _library_progress_bars_off(), _disk_full_is_an_error(output_dir):
        data, label_names, problem_type = load_data(
            args.dataset, args.data_dir, args.text_column, args.label_column, args.limit
        )
        metadata = FeatureMetadata(
            dataset=args.dataset,
            dataset_name=dataset_name(args.dataset),
            problem_type=problem_type,
            label_names=label_names,
            backbones=backbones,
            feature_dtype=args.feature_dtype,
            head=dict(PRESETS.get(args.preset, {}).get("head", {})),
        )
        cache = Path(args.cache_dir) if args.cache_dir is not None else output_dir / "cache"
        return _extract(data, metadata, args, backbone_paths, output_dir, cache)


def arguments_of(args: ExtractArguments | str, options: dict) -> ExtractArguments:
    """`args` (or `ExtractArguments(dataset=args)`) with the `options` fields replaced; an unknown one is refused."""
    args = ExtractArguments(dataset=args) if isinstance(args, str) else args
    known = {spec.name for spec in dataclasses.fields(ExtractArguments)}
    if unknown := sorted(set(options) - known):
        raise ValueError(
            f"Unknown extraction option {', '.join(unknown)}; the options are {', '.join(sorted(known))}."
        )
    return dataclasses.replace(args, **options)


def backbones_of(args: ExtractArguments, backbone_paths: dict[str, str]) -> list[dict]:
    """The backbone descriptions the arguments name: the preset's, with the command line's feature options."""
    return customize_backbones(
        resolve_backbones(args.preset, args.backbone),
        args.backbone_spec,
        args.add_backbone_spec,
        args.layers,
        args.pooling,
        args.template,
        args.all_layers,
        backbone_paths,
        args.max_length,
    )


def _check_extract_arguments(args: ExtractArguments) -> None:
    """Refuse sizes and a feature dtype that cannot be meant, naming the flag, before any work."""
    check_at_least_one("--limit", args.limit, " (leave it out to use every row)")
    check_at_least_one("--batch-size", args.batch_size)
    check_at_least_one("--max-tokens", args.max_tokens, " (leave it out for no token budget)")
    check_at_least_one("--shard-size", args.shard_size)
    if args.feature_dtype not in ("float16", "float32"):
        raise ValueError(f"--feature-dtype must be float16 or float32, got {args.feature_dtype!r}.")


def _extract(
    data: DatasetDict,
    metadata: FeatureMetadata,
    args: ExtractArguments,
    backbone_paths: dict[str, str],
    output_dir: Path,
    cache_dir: Path,
) -> ExtractionResult:
    """`extract` once the arguments are checked and the data is read; `metadata` holds what is known so far."""
    import torch

    from modeling_llm_fusion import FrozenBackbone

    rank, world = _distributed()
    device, dtype = _device_and_dtype(args.device, args.dtype, rank, world)
    _record_compute_settings(metadata.backbones, dtype, args.quantization)
    digests = {name: texts_digest(split) for name, split in data.items()}  # what each column's cache key hashes
    metadata = _keyed_metadata(metadata, data, digests, backbone_paths, dtype, args.shard_size)
    if (saved := _saved_output(output_dir, metadata)) is not None:
        return ExtractionResult(saved, output_dir)
    configs = {spec["name"]: _model_config(spec, backbone_paths.get(spec["name"])) for spec in metadata.backbones}
    for spec in metadata.backbones:  # refuse a backbone that cannot give these features before any work is done
        FrozenBackbone.check_config(spec, configs[spec["name"]])
    if not str(device).startswith("cuda"):
        _notice_large_models_on_cpu(metadata.backbones, configs, dtype)

    shards = _Shards(cache_dir, metadata.column_keys, metadata.rows, args.shard_size)
    computed, throughput = [], {}
    for spec in metadata.backbones:
        name = spec["name"]
        pending = _pending_shards(shards, name, rank, world)
        if any(pending.values()):  # missing shards of a layer column may be cut from the cached all-layers column
            every_layer = _every_layer_shards(
                spec, configs[name], digests, shards, backbone_paths.get(name), dtype, metadata.feature_dtype
            )
            pending = _cut_from_every_layer(spec, every_layer, shards, pending, metadata.feature_dtype)
        if not any(pending.values()):
            continue
        computed.append(name)
        logger.info(f"[rank {rank}/{world}] {name}: {sum(map(len, pending.values()))} shards to compute")
        backbone = FrozenBackbone.load(
            spec, backbone_paths.get(name), device=device, dtype=getattr(torch, dtype), device_map=args.device_map
        )
        progress_name = name if world == 1 else f"{name} [rank {rank}/{world}]"
        throughput[name] = _compute_shards(
            backbone, data, shards, pending, args.batch_size, args.max_tokens, metadata.feature_dtype, progress_name
        )
        del backbone  # before the next backbone is loaded
    _barrier(world)
    if rank == 0:
        _check_shards_of_other_processes(shards, metadata.backbones, world)
        metadata = _assemble(data, shards, output_dir, metadata)
    _barrier(world)
    return ExtractionResult(metadata, output_dir, computed, throughput)


def _notice_large_models_on_cpu(backbones: list[dict], configs: dict, dtype: str) -> None:
    """Say what a large backbone costs on a CPU before it is loaded (a notice, not a refusal: it does run)."""
    import torch

    for spec in backbones:
        text_config = configs[spec["name"]].get_text_config()
        hidden, layers = text_config.hidden_size, getattr(text_config, "num_hidden_layers", 0)
        parameters = (
            12 * hidden**2 * layers + getattr(text_config, "vocab_size", 0) * hidden
        )  # about, for a transformer
        if parameters >= 1e9:
            gigabytes = parameters * torch.empty((), dtype=getattr(torch, dtype)).element_size() / 1e9
            logger.warning(
                f"Backbone {spec['name']!r} ({spec['model']}, about {parameters / 1e9:.1f}B parameters) is loaded on "
                f"the CPU: about {gigabytes:.0f} GB of memory in {dtype}, and hours for a data set. A GPU (--device "
                "cuda) or laptop-size backbones (--preset small) are much faster."
            )


def _device_and_dtype(device: str | None, dtype: str | None, rank: int, world: int) -> tuple[str, str]:
    """Where and in which dtype this process computes, by default: its own GPU under a multi-process launch, else
    `cuda` if there is a GPU, else the CPU; bfloat16 on a GPU, float32 on the CPU."""
    import torch

    if world > 1 and device is None and torch.cuda.is_available():
        device = f"cuda:{int(os.environ.get('LOCAL_RANK', rank))}"
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    dtype = dtype or ("bfloat16" if str(device).startswith("cuda") else "float32")
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}; use float32, bfloat16 or float16.")
    return device, dtype


def _record_compute_settings(backbones: list[dict], dtype: str, quantization: str | None) -> None:
    """Record the compute dtype (and the quantization of the layer-pooled backbones) in each backbone description:
    they go with the features and into the trained model's config, so that serving computes alike."""
    from configuration_llm_fusion import LAYER_POOLINGS, normalize_backbone

    for spec in backbones:
        spec["dtype"] = dtype
        if quantization is not None and spec["pooling"] in LAYER_POOLINGS:
            spec["quantization"] = quantization
        normalize_backbone(spec)  # a bad dtype or quantization is refused here, before any work


def _keyed_metadata(
    metadata: FeatureMetadata,
    data: DatasetDict,
    digests: dict[str, str],
    backbone_paths: dict[str, str],
    dtype: str,
    shard_size: int,
) -> FeatureMetadata:
    """`metadata` with the rest of what decides the output's content: the compute dtype, the rows and data digest of
    each split, and the cache key of each backbone's column (a Hub model's revision resolved to its commit first);
    `digests` are the splits' `texts_digest`."""
    for spec in metadata.backbones:
        if spec["revision"] is None and spec["name"] not in backbone_paths and not Path(spec["model"]).is_dir():
            spec["revision"] = _resolved_revision(spec)
    keys = {
        spec["name"]: {
            split: column_key(
                spec, backbone_paths.get(spec["name"]), dtype, digests[split], metadata.feature_dtype, shard_size
            )
            for split in SPLITS
        }
        for spec in metadata.backbones
    }
    return dataclasses.replace(
        metadata,
        compute_dtype=dtype,
        rows={split: len(data[split]) for split in SPLITS},
        column_keys=keys,
        data_digests={split: data_digest(data[split]) for split in SPLITS},
    )


def _saved_output(output_dir: Path, metadata: FeatureMetadata) -> FeatureMetadata | None:
    """The metadata of the output saved in `output_dir` when it is what `metadata` describes and its splits match
    their checksums (nothing to compute), else None; a warning says why a matching output is rebuilt."""
    previous = _previous_metadata(output_dir)
    if previous is None or previous.identity() != metadata.identity():
        return None
    problem = _output_problem(output_dir, previous)
    if problem is not None:
        logger.warning(f"Features in {output_dir}: {problem}; rebuilding them (from the cache where it is good).")
        return None
    logger.info(f"Features in {output_dir} are up to date: nothing to compute.")
    return previous


def _pending_shards(shards: _Shards, backbone: str, rank: int, world: int) -> dict[str, list[int]]:
    """The shards of a backbone's column that process `rank` computes, by split: those of its share that are not in
    the cache, or whose record does not match them (a warning names each)."""
    pending = {split: [] for split in SPLITS}
    for split, i in shards.share(rank, world):
        shard = shards.file(split, backbone, i)
        if not shard.exists():
            pending[split].append(i)
        elif problem := _shard_problem(shard, shards.rows(split, i)):
            logger.warning(f"Cache shard {shard} cannot be trusted ({problem}): recomputing it.")
            pending[split].append(i)
    return pending


def _every_layer_shards(
    spec: dict, config, digests: dict[str, str], shards: _Shards, path: str | None, dtype: str, feature_dtype: str
) -> tuple[_Shards, list[int]] | None:
    """For a layer-pooled backbone that reads fewer hidden states than its model has: the cache's shards of the same
    backbone's all-layers column (what `--all-layers` extracts, top first; held under any backbone's name,
    `_column_owner`) and the positions of `spec`'s layers in it. None for any other backbone."""
    from configuration_llm_fusion import LAYER_POOLINGS, layer_indices, normalize_backbone
    from modeling_llm_fusion import FrozenBackbone

    count = FrozenBackbone.hidden_state_count(config)
    if spec["pooling"] not in LAYER_POOLINGS or spec["num_layers"] == count:
        return None
    every = normalize_backbone({**spec, "layers": [-1 - i for i in range(count)], "num_layers": count})
    keys = {split: column_key(every, path, dtype, digests[split], feature_dtype, shards.size) for split in SPLITS}
    positions = [count - 1 - index % count for index in layer_indices(spec)]  # hidden_states[-1 - p] is at p
    return dataclasses.replace(shards, column_keys={_column_owner(shards.cache, keys, spec["name"]): keys}), positions


def _column_owner(cache: Path, keys: dict[str, str], name: str) -> str:
    """The backbone name under which `cache` holds the column of `keys`: `name` where it has it there, else another
    backbone's with the same key (keys do not depend on names: e.g. a second view of the LLM that
    `--add-backbone-spec` adds), else `name`."""
    for split, key in keys.items():
        folders = [folder.name for folder in sorted((cache / split).glob(f"*-{key}")) if folder.is_dir()]
        if f"{name}-{key}" in folders:
            return name
        if folders:
            return folders[0][: -len(key) - 1]
    return name


def _cut_from_every_layer(
    spec: dict,
    every_layer: tuple[_Shards, list[int]] | None,
    shards: _Shards,
    pending: dict[str, list[int]],
    feature_dtype: str,
) -> dict[str, list[int]]:
    """Write each `pending` shard of a backbone's column that its cached all-layers column (`every_layer`, from
    `_every_layer_shards`) holds, cut to the backbone's layers, without running the model; the same numbers as
    computing them, as the features of a hidden state do not depend on which others are read. Returns the shards
    still to compute."""
    if every_layer is None:
        return pending
    from datasets import Dataset

    source, positions = every_layer
    (owner,) = source.column_keys  # the backbone name the cache holds the all-layers column under
    name, feature, left, cut = spec["name"], feature_type(spec, feature_dtype), {}, 0
    for split, indices in pending.items():
        left[split] = []
        for i in indices:
            whole = source.file(split, owner, i)
            if not whole.exists() or _shard_problem(whole, shards.rows(split, i)) is not None:
                left[split].append(i)
                continue
            values = Dataset.from_file(str(whole)).with_format("numpy")[:][owner][:, positions]
            _write_shard(shards.file(split, name, i), name, values, feature)
            cut += 1
    if cut:
        logger.info(f"{name}: {cut} shards cut from its cached all-layers column")
    return left


def _compute_shards(
    backbone: FrozenBackbone,
    data: DatasetDict,
    shards: _Shards,
    pending: dict[str, list[int]],
    batch_size: int,
    max_tokens: int | None,
    feature_dtype: str,
    progress_name: str,
) -> dict[str, float]:
    """Compute the `pending` shards of a backbone's column and write them to the cache, under one progress bar.
    Returns the backbone's throughput: texts, texts/s and tokens/s."""
    import torch
    from tqdm.auto import tqdm

    name = backbone.spec["name"]
    feature = feature_type(backbone.spec, feature_dtype)
    total = sum(shards.rows(split, i) for split, indices in pending.items() for i in indices)
    start = time.perf_counter()
    with tqdm(total=total, desc=progress_name, unit="text", disable=None) as progress:
        for split, indices in pending.items():
            for i in indices:
                first = i * shards.size
                texts = data[split][first : first + shards.rows(split, i)]["text"]
                values = backbone.extract(texts, batch_size, max_tokens, getattr(torch, feature_dtype), progress)
                _write_shard(shards.file(split, name, i), name, values.numpy(), feature)
    seconds = time.perf_counter() - start
    return {
        "texts": backbone.texts_seen,
        "texts_per_s": backbone.texts_seen / seconds,
        "tokens_per_s": backbone.tokens_seen / seconds,
    }


def _check_shards_of_other_processes(shards: _Shards, backbones: list[dict], world: int) -> None:
    """Refuse (on rank 0, before assembling) a shard another process wrote whose record does not match it."""
    own = set(shards.share(0, world))
    for split in SPLITS:
        for spec in backbones:
            for i, shard in enumerate(shards.files(split, spec["name"])):
                if (split, i) not in own and (problem := _shard_problem(shard, shards.rows(split, i))):
                    raise ValueError(f"Cache shard {shard} cannot be trusted ({problem}): rerun to recompute it.")


def _assemble(data: DatasetDict, shards: _Shards, output_dir: Path, metadata: FeatureMetadata) -> FeatureMetadata:
    """Join the shards into one `DatasetDict` with a column per backbone and save it in `output_dir`, replacing what
    was there; returns `metadata` with the checksums of the saved splits.

    The metadata file is removed before the first split is replaced and written (atomically) after the last: a run
    killed in between leaves a folder without metadata, which no reader trusts and the next run rebuilds.
    """
    import datasets
    from datasets import Dataset, DatasetDict

    splits = {}
    for split in SPLITS:
        columns = [data[split]]
        for spec in metadata.backbones:
            files = shards.files(split, spec["name"])
            columns.append(datasets.concatenate_datasets([Dataset.from_file(str(path)) for path in files]))
        splits[split] = datasets.concatenate_datasets(columns, axis=1)
    staging = output_dir / "_saving"
    try:
        if staging.exists():  # left by a killed run
            shutil.rmtree(staging)
        DatasetDict(splits).save_to_disk(staging)
        checksums = {split: split_checksum(staging / split) for split in SPLITS}
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    (output_dir / METADATA_FILE).unlink(missing_ok=True)  # what follows is half-written until the metadata is back
    for split in SPLITS:
        target = output_dir / split
        if target.exists():
            shutil.rmtree(target)
        (staging / split).rename(target)
    (staging / "dataset_dict.json").replace(output_dir / "dataset_dict.json")
    staging.rmdir()
    metadata = dataclasses.replace(metadata, split_checksums=checksums)
    _write_json(output_dir / METADATA_FILE, metadata.to_dict())
    return metadata
