"""Loading a saved fusion model as its config says, or one line that says why it cannot be loaded.

`from_pretrained` on the wrong class (a single head where the folder holds an ensemble) loads with a warning and
freshly initialised weights, and labels at random; every place of this package that loads a saved model comes here.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from llm_fusion_fec.features.metadata import METADATA_FILE


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def load_model(name_or_path: str | os.PathLike, **kwargs):
    """The model a folder or Hub repository holds, of the class its config names (`architectures`), with every
    weight it expects found and nothing else; `ValueError` in one line otherwise. `kwargs` go to `from_pretrained`
    (e.g. `dtype`)."""
    from transformers import PretrainedConfig

    from configuration_llm_fusion import LLMFusionConfig
    from modeling_llm_fusion import LLMFusionEnsembleForSequenceClassification, LLMFusionForSequenceClassification

    folder = Path(name_or_path)
    if folder.is_dir() and (folder / METADATA_FILE).is_file() and not (folder / "config.json").is_file():
        raise ValueError(
            f"{name_or_path} is a features folder ({METADATA_FILE}), not a model: train a head on it with "
            f"`python train_fusion.py --features_dir {name_or_path}`, then use the model folder it writes."
        )
    try:
        config_dict, _ = PretrainedConfig.get_config_dict(str(name_or_path))
    except (OSError, ValueError) as error:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "") and not folder.exists()
        hint = " (offline: give the model's local folder instead of its Hub id)" if offline else ""
        raise ValueError(f"Cannot load a model from {str(name_or_path)!r}{hint}: {_first_line(error)}") from None
    if config_dict.get("model_type") != LLMFusionConfig.model_type:
        raise ValueError(
            f"{name_or_path} holds a {config_dict.get('model_type') or 'model without model_type'!r} model, not an "
            f"{LLMFusionConfig.model_type!r} fusion model trained by this package."
        )
    classes = {
        cls.__name__: cls for cls in (LLMFusionForSequenceClassification, LLMFusionEnsembleForSequenceClassification)
    }
    architecture = (config_dict.get("architectures") or [LLMFusionForSequenceClassification.__name__])[0]
    if architecture not in classes:
        raise ValueError(f"{name_or_path}: unknown architecture {architecture!r}; this package has {sorted(classes)}.")
    try:
        model, info = classes[architecture].from_pretrained(name_or_path, output_loading_info=True, **kwargs)
    except (OSError, RuntimeError, TypeError, ValueError) as error:
        raise ValueError(f"Cannot load the model in {name_or_path}: {_first_line(error)}") from None
    problems = {
        "missing": info.get("missing_keys") or [],
        "unexpected": info.get("unexpected_keys") or [],
        "mismatched": [str(key[0] if isinstance(key, tuple) else key) for key in info.get("mismatched_keys") or []],
    }
    if any(problems.values()):
        found = "; ".join(f"{len(keys)} {kind} (e.g. {sorted(keys)[0]})" for kind, keys in problems.items() if keys)
        raise ValueError(
            f"The weights in {name_or_path} do not match its config ({architecture}): {found}. The folder is not one "
            "model: save it again, or point at the folder training wrote."
        )
    return model


def build_pipeline(
    model: Any,
    backbone_paths: dict[str, str] | None = None,
    device: Any = None,
    dtype: str | None = None,
    batch_size: int = 8,
    max_tokens: int | None = None,
    backend: str | None = None,
):
    """The `FECPipeline` of `model` (a folder or Hub id, loaded by `load_model`, or a loaded fusion model), its
    backbones loaded once; `ValueError` in one line for a model that cannot be loaded, an unknown dtype or a `backend`
    other than the recorded one (`check_backend`)."""
    import torch

    from pipeline_fec import FECPipeline

    torch_dtype = getattr(torch, dtype) if dtype else None
    if dtype and not isinstance(torch_dtype, torch.dtype):
        raise ValueError(f"Unknown dtype {dtype!r}; use float32, bfloat16 or float16.")
    if isinstance(model, str | os.PathLike):
        model = load_model(model, **({"dtype": torch_dtype} if torch_dtype else {}))
    elif torch_dtype:
        model = model.to(torch_dtype)
    check_backend(model.config, backend)
    return FECPipeline(
        model=model,
        backbone_paths=backbone_paths or {},
        device=device,
        dtype=torch_dtype,
        batch_size=batch_size,
        max_tokens=max_tokens,
    )


def check_backend(config, backend: str | None) -> None:
    """Refuse, in one line, a `--backend` other than the one the model's backbones were extracted with (the features
    its head was trained on); `None` asks for nothing."""
    from configuration_llm_fusion import BACKENDS

    if backend is None:
        return
    if backend not in ("torch", *BACKENDS):
        raise ValueError(f"Unknown --backend {backend!r}; allowed: torch, {', '.join(BACKENDS)}.")
    recorded = {spec.name: spec.backend or "torch" for spec in config.backbones}
    if others := {name: used for name, used in recorded.items() if used != backend}:
        listed = ", ".join(f"{name} ({used})" for name, used in others.items())
        raise ValueError(
            f"--backend {backend}: this model's backbones were extracted with another backend ({listed}), and a "
            "model is served with the backend its head was trained on; leave --backend out."
        )
