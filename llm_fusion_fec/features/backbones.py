"""The backbones a features folder is extracted from: the preset's, with the command line's overrides and spec
files applied; the checks that refuse a backbone before any work; and the cache key of each backbone's column.

The heavy libraries are imported by the functions that use them: importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path

from llm_fusion_fec.arguments import name_value_pairs
from llm_fusion_fec.features.cache import file_sha256

if typing.TYPE_CHECKING:
    from configuration_llm_fusion import BackboneSpec

logger = logging.getLogger(__name__)

NO_TEMPLATE = "none"
"""`--template NAME=none`: the backbone reads its texts without a prompt."""
RESERVED_COLUMNS = ("text", "label")  # the data columns of every split, beside one column per backbone


def resolve_backbones(
    preset: str,
    overrides: list[str] | dict[str, str] = (),
    max_length: int | None = None,
) -> list[dict]:
    """The preset's backbone descriptions with `NAME=MODEL` overrides (of the backbone named and of the other views
    of its model); an overridden model's width is read from its config (no weights are loaded), and a too-large
    `num_layers` or a layer the model lacks is refused here, before any work."""
    from configuration_llm_fusion import PRESETS, BackboneSpec
    from modeling_llm_fusion import FrozenBackbone

    if preset not in PRESETS:
        raise ValueError(f"Unknown preset {preset!r}; allowed: {', '.join(PRESETS)}.")
    presets = {spec["name"]: spec for spec in PRESETS[preset]["backbones"]}
    changes, configs = {name: {} for name in presets}, {}
    for name, model in name_value_pairs(overrides, "--backbone").items():
        if name not in presets:
            raise ValueError(
                f"--backbone {name}=...: no backbone {name!r}; the {preset!r} preset has {list(presets)}."
            )
        config = FrozenBackbone.model_config(BackboneSpec.from_dict({**presets[name], "model": model}))
        for other, spec in presets.items():
            if other == name or spec["model"] == presets[name]["model"]:  # every view of the model replaced
                configs[other] = config
                changes[other] |= {
                    "model": model,
                    "hidden_size": config.get_text_config().hidden_size,
                    "revision": None,
                }
    if max_length is not None:
        for name in presets:
            changes[name]["max_length"] = max_length
    specs = [BackboneSpec.from_dict({**spec, **changes[name]}) for name, spec in presets.items()]
    for spec in specs:
        if spec.name in configs:
            FrozenBackbone.check_config(spec, configs[spec.name])
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
      follows) and `template` (`NAME=TEMPLATE`, with one `{text}` slot; `NAME=none`: no prompt);
    - `all_layers`: every layer-pooled backbone reads all its hidden states, top first (`[-1, -2, ..., -(L + 1)]`
      for L layers; the last is the embeddings), in one forward pass; the model's config (not its weights) is read,
      from `backbone_paths` where given;
    - `max_length` for every backbone.

    Bad values raise `ValueError` naming them, before any weights are loaded.
    """
    from configuration_llm_fusion import LAYER_POOLINGS

    specs = with_spec_files(specs, spec_files, added_spec_files)
    names = [spec.name for spec in specs]
    changes = {name: {} for name in names}
    for name, value in name_value_pairs(pooling, "--pooling").items():
        change = changes[names[backbone_position(names, name, "--pooling")]]
        change["pooling"] = value
        if value not in LAYER_POOLINGS:  # an encoder pooling gives one vector
            change.update(layers=None, num_layers=1)
    chosen = name_value_pairs(layers, "--layers")
    for name, value in chosen.items():
        if isinstance(value, str):
            try:
                value = [int(index) for index in value.split(",")]
            except ValueError:
                raise ValueError(f"--layers expects NAME=I,J,K with integer indices, got {name}={value}.") from None
        changes[names[backbone_position(names, name, "--layers")]].update(layers=list(value), num_layers=len(value))
    for name, value in name_value_pairs(template, "--template").items():
        changes[names[backbone_position(names, name, "--template")]]["template"] = (
            None if value == NO_TEMPLATE else value
        )
    for change in changes.values() if max_length is not None else ():
        change["max_length"] = max_length
    specs = [spec.replace(**changes[spec.name]) if changes[spec.name] else spec for spec in specs]
    return read_every_layer(specs, chosen, backbone_paths or {}) if all_layers else specs


ALL_BACKBONES = "all"
"""`--tokens all`: the token view of every backbone."""


def with_token_views(specs: list[BackboneSpec], names: Sequence[str]) -> list[BackboneSpec]:
    """`specs` with, after them, the token view (`token_view`: its per-token states, from its own forward pass) of
    each backbone `names` names (`--tokens`; `all`: every backbone), in backbone order; `ValueError` naming a name
    that is no backbone, a token view already, or whose token view's name is taken."""
    from configuration_llm_fusion import TOKENS, token_view

    if not names:
        return specs
    current = [spec.name for spec in specs]
    wanted = set(current) if ALL_BACKBONES in names else set(names)
    for name in names:
        if name not in current and name != ALL_BACKBONES:
            raise ValueError(
                f"--tokens {name}: no backbone {name!r}; the backbones are {current} (or {ALL_BACKBONES})."
            )
    views = []
    for spec in specs:
        if spec.name not in wanted or (spec.pooling == TOKENS and ALL_BACKBONES in names):
            continue
        if spec.pooling == TOKENS:
            raise ValueError(f"--tokens {spec.name}: {spec.name!r} is a token view already; name the view it reads.")
        view = token_view(spec)
        if view.name in current:
            raise ValueError(f"--tokens {spec.name}: a backbone named {view.name!r} exists already; rename it.")
        views.append(view)
    return [*specs, *views]


def with_spec_files(
    specs: list[dict], spec_files: Sequence[str | os.PathLike], added_spec_files: Sequence[str | os.PathLike]
) -> list[dict]:
    """`specs` (copied) with the backbones of `spec_files` replacing those of their names, then those of
    `added_spec_files` added; `ValueError` for a name to replace that is not there or one to add that is."""
    from configuration_llm_fusion import BackboneSpec

    specs = [BackboneSpec.from_dict(spec) for spec in specs]
    names = [spec.name for spec in specs]
    for spec in described_backbones(spec_files, "--backbone-spec"):
        specs[backbone_position(names, spec.name, "--backbone-spec")] = spec
    for spec in described_backbones(added_spec_files, "--add-backbone-spec"):
        if spec.name in names:
            raise ValueError(
                f"--add-backbone-spec: a backbone named {spec.name!r} exists already ({names}); give the added one "
                "a name of its own, or replace that one with --backbone-spec."
            )
        specs.append(spec)
        names.append(spec.name)
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


def backbone_position(names: list[str], name: str, flag: str) -> int:
    """Where the backbone a command-line `flag` names is in `names`; `ValueError` naming the flag if nowhere."""
    if name not in names:
        raise ValueError(f"{flag} {name}=...: no backbone {name!r}; the backbones are {names}.")
    return names.index(name)


def described_backbones(spec_files: Sequence[str | os.PathLike], flag: str) -> Iterator[dict]:
    """The backbone descriptions in the JSON files of `flag` (one, or a list of them, per file), normalized."""
    from configuration_llm_fusion import BackboneSpec

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
            yield BackboneSpec.from_dict(spec)


def read_every_layer(
    specs: list[BackboneSpec], chosen: dict[str, str | list[int]], backbone_paths: dict[str, str]
) -> list[BackboneSpec]:
    """`--all-layers`: `specs` with every layer-pooled backbone reading all its hidden states, top first. The number
    comes from the model's config (from `backbone_paths` where given); `chosen` are the `--layers` given."""
    from configuration_llm_fusion import LAYER_POOLINGS
    from modeling_llm_fusion import FrozenBackbone, backbone_folders, hidden_state_count

    if not any(spec.pooling in LAYER_POOLINGS for spec in specs):
        raise ValueError(f"--all-layers: no backbone has a layer pooling ({', '.join(LAYER_POOLINGS)}).")
    folders, every = backbone_folders(specs, backbone_paths), []
    for spec in specs:
        if spec.pooling in LAYER_POOLINGS:
            if spec.name in chosen:
                raise ValueError(f"--all-layers and --layers {spec.name}=... contradict each other; use one.")
            count = hidden_state_count(FrozenBackbone.model_config(spec, folders.get(spec.name)))
            spec = spec.replace(layers=[-1 - i for i in range(count)], num_layers=count)
        every.append(spec)
    return every


def check_backbone_paths(backbone_paths: dict[str, str], backbones: list[BackboneSpec]) -> dict[str, str]:
    """Refuse a `--backbone-path` that names no backbone or model, or a folder that does not exist; return the
    folders by backbone name (`backbone_folders`: the folder given for a model id, or for one backbone of a model,
    serves every view of that model)."""
    from modeling_llm_fusion import backbone_folders

    names = [spec.name for spec in backbones]
    models = sorted({spec.model for spec in backbones})
    for key, folder in backbone_paths.items():
        if key not in names and key not in models:
            raise ValueError(
                f"--backbone-path {key}={folder}: no backbone {key!r}; the backbones are {names} "
                f"(or a model id, for every backbone of that model: {models})."
            )
        if not Path(folder).is_dir():
            model = backbones[names.index(key)].model if key in names else key
            raise ValueError(f"--backbone-path {key}={folder}: folder not found; it must be a local copy of {model}.")
    return backbone_folders(backbones, backbone_paths)


def folder_digest(folder: Path) -> str:
    """Content hash of a local model folder's weights and configs (a local folder has no revision)."""
    digest = hashlib.sha256()
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".safetensors", ".bin", ".json", ".model", ".txt"):
            digest.update(str(path.relative_to(folder)).encode())
            digest.update(bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


def resolved_revision(spec: dict) -> str | None:
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
    weights_digest: str | None = None,
) -> str:
    """Cache key of one backbone's feature column: everything its shards depend on (labels are not).
    `weights_digest` is the local folder's `folder_digest` where the caller has it already."""
    from modeling_llm_fusion import FEATURE_CODE_VERSION

    source = path or spec["model"]
    weights = spec["revision"]
    if Path(source).is_dir():
        weights = weights_digest or folder_digest(Path(source))
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
    # Only when set, so that the caches of full-precision weights run by PyTorch keep their keys.
    fields |= {key: spec[key] for key in ("quantization", "backend") if spec.get(key)}
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def notice_large_models_on_cpu(backbones: list[dict], configs: dict, dtype: str) -> None:
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
