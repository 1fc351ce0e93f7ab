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
import errno
import functools
import logging
import shutil
import time
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from llm_fusion_fec.arguments import ExtractArguments, check_at_least_one, name_value_pairs
from llm_fusion_fec.data.datasets import data_digest, dataset_name, load_data, local_dataset_digest, texts_digest
from llm_fusion_fec.distributed import barrier, distributed, local_device
from llm_fusion_fec.features.backbones import (
    check_backbone_names,
    check_backbone_paths,
    column_key,
    customize_backbones,
    folder_digest,
    notice_large_models_on_cpu,
    resolve_backbones,
    resolved_revision,
    with_token_views,
)
from llm_fusion_fec.features.cache import (
    Shards,
    disk_full_is_an_error,
    feature_type,
    library_progress_bars_off,
    output_problem,
    previous_metadata,
    remove_abandoned,
    shard_problem,
    temporary_name,
    write_json,
    write_shard,
)
from llm_fusion_fec.features.checksums import content_digest, split_checksum
from llm_fusion_fec.features.metadata import METADATA_FILE, FeatureMetadata, default_features_dir, record_parts
from llm_fusion_fec.features.progress import progress_bar

if typing.TYPE_CHECKING:
    from datasets import Dataset, DatasetDict

    from configuration_llm_fusion import BackboneSpec
    from modeling_llm_fusion import FrozenBackbone

# What transformers' `logging.get_logger(__name__)` returns for a module outside transformers (a standard logger of
# that name), taken from the standard library so that importing this module does not import transformers.
logger = logging.getLogger(__name__)

TRAIN_SAMPLE_SEED = 0
"""The seed of the train rows `extract(train_rows=N)` samples (`--choose_train_rows`)."""


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


# ---- extraction ----

TOKEN_ATTENTION_QUERIES = 4
"""Queries a token view's attention head learns when features with token views are trained without
`--attention_queries`: chosen on ED's validation split over 1 and 4 (docs/results.md, token attention)."""


def extract_fixed(
    args: ExtractArguments | str = "ED",
    *,
    backbones: list[dict] | None = None,
    backbone_paths: dict[str, str] | None = None,
    splits: Sequence[str] | None = None,
    train_rows: int | None = None,
    choice: dict | None = None,
    **options,
) -> ExtractionResult:
    """Extract (or load from cache) the features of the backbones `args` name (no `--choose`) for every split of a
    data set and save them as a `DatasetDict`: what `extract` does once the views are fixed.

    Args:
        args (`ExtractArguments` or `str`, *optional*, defaults to `"ED"`):
            The command line's arguments, or just the data set.
        backbones (`list[dict]`, *optional*):
            Backbone descriptions to extract, instead of those `args` name (`backbones_of`: the preset, flags applied).
        backbone_paths (`dict[str, str]`, *optional*):
            Local folders of the backbones by name, instead of `args.backbone_path`.
        splits (`Sequence[str]`, *optional*):
            Extract these splits only (`--choose` reads its candidates of train and validation alone); default all.
        train_rows (`int`, *optional*):
            A random sample of this many train rows (`TRAIN_SAMPLE_SEED`; `--choose_train_rows`), not the split.
        choice (`dict`, *optional*):
            What `--choose` chose, recorded in the metadata (`FeatureMetadata.choice`).
        options: `ExtractArguments` fields that replace those of `args` (`preset="small"`, `limit=500`, ...).

    The output in `args.output_dir` is up to date when its metadata records the same data, backbones and dtypes
    and its splits match their checksums; otherwise it is rebuilt, from the cache (`args.cache_dir`) where the
    shards are good, or cut from a cached all-layers column (`--all-layers`), without loading a model. Returns an
    `ExtractionResult`; raises `ValueError` in one line for bad arguments, data or backbones, and for a full disk.
    """
    from configuration_llm_fusion import PRESETS

    args = arguments_of(args, options)
    if args.choose:
        raise ValueError("extract_fixed extracts fixed views: --choose runs through `extract`.")
    _check_extract_arguments(args)
    backbones, backbone_paths = _checked_backbones(args, backbones, backbone_paths)
    output_dir, cache = output_folders(args)
    with library_progress_bars_off(), disk_full_is_an_error(output_dir):
        data, label_names, problem_type = load_data(
            args.dataset, args.data_dir, args.text_column, args.label_column, args.limit
        )
        data = _selected_rows(data, splits, train_rows)
        metadata = FeatureMetadata(
            dataset=args.dataset,
            dataset_name=dataset_name(args.dataset),
            dataset_digest=local_dataset_digest(args.dataset),
            problem_type=problem_type,
            label_names=label_names,
            backbones=backbones,
            feature_dtype=args.feature_dtype,
            head=head_options(args.preset, backbones),
            protocol=PRESETS.get(args.preset, {}).get("protocol"),
            choice=choice,
            limit=args.limit,
        )
        return _extract(data, metadata, args, backbone_paths, output_dir, cache)


def head_options(preset: str, backbones: list[BackboneSpec]) -> dict:
    """The head options recorded with the features (training's defaults): the preset's, and with token views the
    head that reads them: attention with `TOKEN_ATTENTION_QUERIES` queries a view."""
    from configuration_llm_fusion import PRESETS, TOKENS

    head = dict(PRESETS.get(preset, {}).get("head", {}))
    if any(spec.pooling == TOKENS for spec in backbones):
        head |= {"token_pooling": "attention", "attention_queries": TOKEN_ATTENTION_QUERIES}
    return head


def _checked_backbones(
    args: ExtractArguments, backbones: list[dict] | None, backbone_paths: dict[str, str] | None
) -> tuple[list[BackboneSpec], dict[str, str]]:
    """The backbones to extract (`backbones`, else those `args` name) as specs, and their local folders by name
    (`backbone_paths`, else `--backbone-path`); `ValueError` for a name or folder that cannot be."""
    from configuration_llm_fusion import BackboneSpec

    if backbone_paths is None:
        backbone_paths = name_value_pairs(args.backbone_path, "--backbone-path")
    backbones = backbones_of(args, backbone_paths) if backbones is None else backbones
    backbones = with_token_views([BackboneSpec.from_dict(spec) for spec in backbones], args.tokens)
    check_backbone_names(backbones)
    return backbones, check_backbone_paths(dict(backbone_paths), backbones)


def _selected_rows(data: DatasetDict, splits: Sequence[str] | None, train_rows: int | None) -> DatasetDict:
    """`data` with only `splits` (all if None), and a random sample of `train_rows` train rows (`TRAIN_SAMPLE_SEED`)
    where that is fewer than it has."""
    if splits is not None:
        data = type(data)({split: data[split] for split in splits})
    if train_rows is not None:
        data["train"] = train_sample(data["train"], train_rows)
    return data


def train_sample(train: Dataset, rows: int | None) -> Dataset:
    """A random sample of `rows` rows of `train` (`TRAIN_SAMPLE_SEED`), or `train` itself where `rows` is None or no
    fewer than it has: the train rows `--choose`'s probes are fitted on."""
    if rows is None or rows >= len(train):
        return train
    return train.shuffle(seed=TRAIN_SAMPLE_SEED).select(range(rows)).flatten_indices()


def output_folders(args: ExtractArguments) -> tuple[Path, Path]:
    """Where the features go (`--output-dir`, default `default_features_dir`) and the cache (`--cache-dir`, default
    `OUTPUT_DIR/cache`)."""
    output_dir = Path(args.output_dir) if args.output_dir is not None else default_features_dir(args.dataset)
    return output_dir, Path(args.cache_dir) if args.cache_dir is not None else output_dir / "cache"


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
    if args.choose_train_rows is not None:
        raise ValueError("--choose-train-rows samples the train rows that --choose probes: pass --choose too.")
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
    """`extract_fixed` once the arguments are checked and the data is read; `metadata` holds what is known so far."""
    from modeling_llm_fusion import FrozenBackbone, import_onnx_runtime

    rank, world = distributed()
    device, dtype = _device_and_dtype(args.device, args.dtype, rank, world, args.backend)
    metadata = dataclasses.replace(
        metadata, backbones=_with_compute_settings(metadata.backbones, dtype, args.quantization, args.backend)
    )
    digests = {name: texts_digest(split) for name, split in data.items()}  # what each column's cache key hashes
    metadata = _keyed_metadata(metadata, data, digests, backbone_paths, dtype, args.shard_size)
    if (saved := _saved_output(output_dir, metadata)) is not None:
        return ExtractionResult(saved, output_dir)
    configs = {
        spec.name: FrozenBackbone.model_config(spec, backbone_paths.get(spec.name)) for spec in metadata.backbones
    }
    for spec in metadata.backbones:  # refuse a backbone that cannot give these features before any work is done
        FrozenBackbone.check_config(spec, configs[spec.name])
        if spec.backend is not None:
            import_onnx_runtime(spec)
    if not str(device).startswith("cuda"):
        notice_large_models_on_cpu(metadata.backbones, configs, dtype)
    shards = Shards(cache_dir, metadata.column_keys, metadata.rows, args.shard_size)
    pending = {}
    for spec in metadata.backbones:
        pending[spec.name] = _pending_shards(shards, spec.name, rank, world)
        if any(pending[spec.name].values()):  # missing shards of a layer column may be cut from the all-layers one
            every_layer = _every_layer_shards(
                spec, configs[spec.name], digests, shards, backbone_paths.get(spec.name), dtype, metadata.feature_dtype
            )
            pending[spec.name] = _cut_from_every_layer(
                spec, every_layer, shards, pending[spec.name], metadata.feature_dtype
            )
    computed, throughput = _compute_passes(
        metadata, data, shards, pending, args, backbone_paths, device, dtype, rank, world
    )
    barrier(world)
    if rank == 0:
        _check_shards_of_other_processes(shards, metadata.backbones, world)
        metadata = _assemble(data, shards, output_dir, metadata)
    barrier(world)
    return ExtractionResult(metadata, output_dir, computed, throughput)


def _compute_passes(
    metadata: FeatureMetadata,
    data: DatasetDict,
    shards: Shards,
    pending: dict[str, dict[str, list[int]]],
    args: ExtractArguments,
    backbone_paths: dict[str, str],
    device: str,
    dtype: str,
    rank: int,
    world: int,
) -> tuple[list[str], dict[str, dict[str, float]]]:
    """Compute the `pending` shards (by backbone, then split) of this process, one pass of the model's
    `FeaturePlan` at a time: views of one model that read alike are computed in one forward pass a batch, even where
    one misses shards another has (an interrupted run of other views). Returns the backbones computed and each
    pass's throughput."""
    import torch

    from modeling_llm_fusion import FeaturePlan

    todo = [spec for spec in metadata.backbones if any(pending[spec.name].values())]
    plan = FeaturePlan(todo, backbone_paths, getattr(torch, dtype))
    computed, throughput = [], {}
    for views in plan.passes:
        names = [spec.name for spec in views]
        computed.extend(names)
        missing = {split: sorted({i for name in names for i in pending[name][split]}) for split in pending[names[0]]}
        logger.info(f"[rank {rank}/{world}] {', '.join(names)}: {sum(map(len, missing.values()))} shards to compute")
        loaded = plan.load(views, device, args.device_map)
        progress_name = ", ".join(names) + ("" if world == 1 else f" [rank {rank}/{world}]")
        throughput[", ".join(names)] = _compute_shards(
            loaded,
            data,
            shards,
            missing,
            {name: pending[name] for name in names},
            args.batch_size,
            args.max_tokens,
            metadata.feature_dtype,
            progress_name,
        )
        del loaded  # before the next model is loaded
    return computed, throughput


def _device_and_dtype(
    device: str | None, dtype: str | None, rank: int, world: int, backend: str | None = None
) -> tuple[str, str]:
    """Where and in which dtype this process computes, by default: its own GPU under a multi-process launch, else
    `cuda` if there is a GPU, else the CPU; with `dtype` None or `"auto"`, bfloat16 on a GPU, and on the CPU
    `cpu_auto_dtype` (float32 for the ONNX backends, which compute in it)."""
    import torch

    device = local_device(device, rank, world) or ("cuda" if torch.cuda.is_available() else "cpu")
    if dtype in (None, "auto"):
        on_gpu = str(device).startswith("cuda")
        dtype = "bfloat16" if on_gpu else "float32" if backend not in (None, "torch") else cpu_auto_dtype()
    if not isinstance(getattr(torch, dtype, None), torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}; use float32, bfloat16, float16 or auto.")
    return device, dtype


def cpu_has_amx() -> bool:
    """Whether this CPU multiplies bfloat16 matrices in hardware (AMX: the `amx_bf16` flag of /proc/cpuinfo), where
    bfloat16 runs about 3 times as fast as float32 (docs/features.md)."""
    try:
        with open("/proc/cpuinfo") as handle:
            return any(line.startswith("flags") and "amx_bf16" in line.split() for line in handle)
    except OSError:  # not Linux: no way to ask, float32 is the safe choice
        return False


@functools.cache
def cpu_auto_dtype() -> str:
    """`--dtype auto` on a CPU: bfloat16 where it has AMX (`cpu_has_amx`), float32 elsewhere; said once in the log."""
    dtype = "bfloat16" if cpu_has_amx() else "float32"
    reason = "this CPU has AMX (amx_bf16)" if dtype == "bfloat16" else "this CPU has no AMX (amx_bf16)"
    logger.warning(
        f"--dtype auto: the backbones compute in {dtype} ({reason}); --dtype float32 or bfloat16 to choose."
    )
    return dtype


def _with_compute_settings(
    backbones: list[BackboneSpec], dtype: str, quantization: str | None, backend: str | None = None
) -> list[BackboneSpec]:
    """The backbones with the compute dtype (and the quantization of the LLMs' views: the layer-pooled ones and the
    other views of their models) and the backend (`--backend`: every backbone's; without it each keeps its own) they
    are extracted with: they go with the features and into the trained model's config, so that serving computes
    alike. A bad dtype, quantization or backend is refused here, before any work."""
    from configuration_llm_fusion import LAYER_POOLINGS

    llms = {spec.model for spec in backbones if spec.pooling in LAYER_POOLINGS}
    return [
        spec.replace(
            dtype=dtype,
            **({"quantization": quantization} if quantization and spec.model in llms else {}),
            **({"backend": backend} if backend is not None else {}),
        )
        for spec in backbones
    ]


def _keyed_metadata(
    metadata: FeatureMetadata,
    data: DatasetDict,
    digests: dict[str, str],
    backbone_paths: dict[str, str],
    dtype: str,
    shard_size: int,
) -> FeatureMetadata:
    """`metadata` with the rest of what decides the output's content: the compute dtype, the rows and data digest of
    each split, the cache key of each backbone's column (a Hub model's revision resolved to its commit first) and the
    digest of each local folder's weights (`folder_digest`, hashed once); `digests` are the splits' `texts_digest`."""
    backbones = [
        spec.replace(revision=resolved_revision(spec))
        if spec.revision is None and spec.name not in backbone_paths and not Path(spec.model).is_dir()
        else spec
        for spec in metadata.backbones
    ]
    folders = {spec.name: backbone_paths.get(spec.name) or spec.model for spec in backbones}
    local_weights = {name: folder_digest(Path(folder)) for name, folder in folders.items() if Path(folder).is_dir()}
    keys = {
        spec["name"]: {
            split: column_key(
                spec,
                backbone_paths.get(spec["name"]),
                dtype,
                digests[split],
                metadata.feature_dtype,
                shard_size,
                local_weights.get(spec["name"]),
            )
            for split in data
        }
        for spec in backbones
    }
    return dataclasses.replace(
        metadata,
        backbones=backbones,
        compute_dtype=dtype,
        rows={split: len(data[split]) for split in data},
        column_keys=keys,
        data_digests={split: data_digest(data[split]) for split in data},
        local_weights=local_weights,
    )


def _saved_output(output_dir: Path, metadata: FeatureMetadata) -> FeatureMetadata | None:
    """The metadata of the output saved in `output_dir` when it is what `metadata` describes and its splits match
    their checksums (nothing to compute), else None; a warning says why a matching output is rebuilt."""
    previous = previous_metadata(output_dir)
    if previous is None or previous.identity() != metadata.identity():
        return None
    problem = output_problem(output_dir, previous)
    if problem is not None:
        logger.warning(f"Features in {output_dir}: {problem}; rebuilding them (from the cache where it is good).")
        return None
    logger.info(f"Features in {output_dir} are up to date: nothing to compute.")
    if set(previous.content_digests) != set(previous.rows) or previous.record_digests != record_parts(
        previous.to_dict()
    ):
        # Written by an earlier version: record what training checks them against (one pass over the files).
        import datasets

        digests = {split: content_digest(datasets.load_from_disk(str(output_dir / split))) for split in previous.rows}
        previous = dataclasses.replace(previous, content_digests=digests).sealed()
        write_json(output_dir / METADATA_FILE, previous.to_dict())
    return previous


def _pending_shards(shards: Shards, backbone: str, rank: int, world: int) -> dict[str, list[int]]:
    """The shards of a backbone's column that process `rank` computes, by split: those of its share that are not in
    the cache, or whose record does not match them (a warning names each)."""
    pending = {split: [] for split in shards.split_rows}
    for split, i in shards.share(rank, world):
        shard = shards.file(split, backbone, i)
        if not shard.exists():
            pending[split].append(i)
        elif problem := shard_problem(shard, shards.rows(split, i)):
            logger.warning(f"Cache shard {shard} cannot be trusted ({problem}): recomputing it.")
            pending[split].append(i)
    return pending


def _every_layer_shards(
    spec: dict, config, digests: dict[str, str], shards: Shards, path: str | None, dtype: str, feature_dtype: str
) -> tuple[Shards, list[int]] | None:
    """For a layer-pooled backbone that reads fewer hidden states than its model has: the cache's shards of the same
    backbone's all-layers column (what `--all-layers` extracts, top first; held under any backbone's name,
    `_column_owner`) and the positions of `spec`'s layers in it. None for any other backbone."""
    from configuration_llm_fusion import LAYER_POOLINGS, layer_indices
    from modeling_llm_fusion import hidden_state_count

    count = hidden_state_count(config)
    if spec.pooling not in LAYER_POOLINGS or spec.num_layers == count:
        return None
    every = spec.replace(layers=[-1 - i for i in range(count)], num_layers=count)
    keys = {split: column_key(every, path, dtype, digests[split], feature_dtype, shards.size) for split in digests}
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
    every_layer: tuple[Shards, list[int]] | None,
    shards: Shards,
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
            if not whole.exists() or shard_problem(whole, shards.rows(split, i)) is not None:
                left[split].append(i)
                continue
            values = Dataset.from_file(str(whole)).with_format("numpy")[:][owner][:, positions]
            write_shard(shards.file(split, name, i), name, values, feature)
            cut += 1
    if cut:
        logger.info(f"{name}: {cut} shards cut from its cached all-layers column")
    return left


def _compute_shards(
    views: list[FrozenBackbone],
    data: DatasetDict,
    shards: Shards,
    missing: dict[str, list[int]],
    pending: dict[str, dict[str, list[int]]],
    batch_size: int,
    max_tokens: int | None,
    feature_dtype: str,
    progress_name: str,
) -> dict[str, float]:
    """Compute the `missing` shards (by split) of `views` (the first and the views that read like it, in one forward
    pass a batch) and write to the cache each view's shards that are `pending` for it (by view name, then split),
    under one progress bar (`progress_bar`: lines in a log file). Returns the pass's throughput: texts, texts/s and
    tokens/s."""
    import torch

    backbone = views[0]
    total = sum(shards.rows(split, i) for split, indices in missing.items() for i in indices)
    start = time.perf_counter()
    with progress_bar(total, progress_name) as progress:
        for split, indices in missing.items():
            for i in indices:
                progress.set_postfix_str(f"{split} shard {i + 1}/{shards.count(split)}")
                first = i * shards.size
                texts = data[split][first : first + shards.rows(split, i)]["text"]
                columns = backbone.extract_views(
                    texts, views, batch_size, max_tokens, getattr(torch, feature_dtype), progress
                )
                for view, values in zip(views, columns, strict=True):
                    name = view.spec["name"]
                    if i not in pending[name][split]:
                        continue  # already cached
                    values = [rows.numpy() for rows in values] if isinstance(values, list) else values.numpy()
                    write_shard(shards.file(split, name, i), name, values, feature_type(view.spec, feature_dtype))
    seconds = time.perf_counter() - start
    return {
        "texts": backbone.texts_seen,
        "texts_per_s": backbone.texts_seen / seconds,
        "tokens_per_s": backbone.tokens_seen / seconds,
    }


def _check_shards_of_other_processes(shards: Shards, backbones: list[dict], world: int) -> None:
    """Refuse (on rank 0, before assembling) a shard another process wrote whose record does not match it."""
    own = set(shards.share(0, world))
    for split in shards.split_rows:
        for spec in backbones:
            for i, shard in enumerate(shards.files(split, spec["name"])):
                if (split, i) not in own and (problem := shard_problem(shard, shards.rows(split, i))):
                    raise ValueError(f"Cache shard {shard} cannot be trusted ({problem}): rerun to recompute it.")


def _assemble(data: DatasetDict, shards: Shards, output_dir: Path, metadata: FeatureMetadata) -> FeatureMetadata:
    """Join the shards into one `DatasetDict` with a column per backbone and save it in `output_dir`, replacing what
    was there; returns `metadata` with the checksums of the saved splits.

    The metadata file is removed before the first split is replaced and written (atomically) after the last: a run
    killed in between leaves a folder without metadata, which no reader trusts and the next run rebuilds.
    """
    import datasets
    from datasets import Dataset, DatasetDict

    splits = {}
    for split in data:
        columns = [data[split]]
        for spec in metadata.backbones:
            files = shards.files(split, spec["name"])
            columns.append(datasets.concatenate_datasets([Dataset.from_file(str(path)) for path in files]))
        splits[split] = datasets.concatenate_datasets(columns, axis=1)
    for left in [output_dir / "_saving", *(output_dir / split for split in data)]:
        remove_abandoned(left)  # what a killed run left
    staging = temporary_name(output_dir / "_saving")  # its own: another run on this folder has another
    try:
        DatasetDict(splits).save_to_disk(staging)
        checksums = {split: split_checksum(staging / split) for split in data}
        contents = {split: content_digest(splits[split]) for split in data}
        (output_dir / METADATA_FILE).unlink(missing_ok=True)  # what follows is half-written until the metadata is back
        for split in data:
            _replace_folder(staging / split, output_dir / split)
        (staging / "dataset_dict.json").replace(output_dir / "dataset_dict.json")
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    metadata = dataclasses.replace(metadata, split_checksums=checksums, content_digests=contents).sealed()
    write_json(output_dir / METADATA_FILE, metadata.to_dict())
    return metadata


def _replace_folder(source: Path, target: Path) -> None:
    """Move the folder `source` to `target`, replacing the folder there. A folder cannot be replaced in one step: the
    one there is first moved aside (under a name of this run's own), also when another run put it there meanwhile."""
    while True:
        aside = temporary_name(target)
        with contextlib.suppress(FileNotFoundError):
            target.rename(aside)
        try:
            source.rename(target)
            return
        except OSError as error:
            if error.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        finally:
            shutil.rmtree(aside, ignore_errors=True)
