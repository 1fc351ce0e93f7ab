"""A Gradio demo of a trained model, and the Space that serves it (`fec space`).

The page is `llm_fusion_fec.serving.space_app` (its `Demo`): a text box with the model card's example texts, the
emotions and their scores, top-k (and the threshold of a multi-label model), and a file upload labelled with
`fec predict`'s code. `build_demo(model)` serves it here with this package's pipeline (`FECPipeline`, no remote
code). `write_space` writes a Gradio Space that needs only gradio, torch and transformers: that module as its
`app.py`, `fec predict`'s code beside it, the settings the app reads (`space.json`), its requirements and its README;
`push_space` uploads them. Every value (the model, folders, the title) enters those files as data: JSON the app
reads, and YAML written by `huggingface_hub`'s card classes.
"""

from __future__ import annotations

import json
import os
import shutil
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

from transformers.utils import logging

from llm_fusion_fec.serving.space_app import SETTINGS_FILE, Demo, card_examples

logger = logging.get_logger(__name__)

GRADIO_INSTALL = "pip install 'gradio>=5.0'"
"""What to install for the demo here (the package's `demo` extra holds the same)."""
DEFAULT_GRADIO = "5.0"  # the oldest Gradio the app is written for: the Space's sdk_version where Gradio is not here
APP_SOURCE = Path(__file__).resolve().parent / "space_app.py"
PACKAGE = Path(__file__).resolve().parent.parent
# `fec predict`'s code the app labels an uploaded file with (its `Labeller` and file reading and writing), standard
# library only at module level: copied beside the app
SPACE_CODE = {
    "labelling.py": PACKAGE / "inference" / "labelling.py",
    "predict.py": PACKAGE / "inference" / "predict.py",
    "text_files.py": PACKAGE / "data" / "text_files.py",
}
SPACE_FILES = ("app.py", *SPACE_CODE, SETTINGS_FILE, "requirements.txt", "README.md")


def import_gradio():
    try:
        import gradio
    except ImportError:
        raise ValueError(f"The demo needs Gradio, which is not installed: {GRADIO_INSTALL}") from None
    return gradio


def load_demo_pipeline(model: str | os.PathLike, backbone_paths: dict[str, str] | None = None, device=None):
    """The model's `FECPipeline`, from this package's code, on the GPU where there is one."""
    import torch

    from llm_fusion_fec.inference.loading import load_model
    from pipeline_fec import FECPipeline

    if device is None:
        device = 0 if torch.cuda.is_available() else "cpu"
    return FECPipeline(model=load_model(model), backbone_paths=backbone_paths, device=device)


def build_demo(model: str | os.PathLike, backbone_paths: dict[str, str] | None = None, device=None):
    """The Gradio app of `model` (a Hub id or a model folder), ready to `launch()`."""
    from llm_fusion_fec.publishing.card import DEFAULT_EXAMPLES

    import_gradio()
    pipeline = load_demo_pipeline(model, backbone_paths, device)
    return Demo(pipeline, card_examples(model, DEFAULT_EXAMPLES)).blocks()


# ---- the Space's files ----

SPACE_CARD = """---
{{ card_data }}
---

# {{ heading }}

Fine-grained emotion classification with {{ model_link }}: type a text, or upload a CSV, JSONL or TXT file of texts \
and download it labelled. Written by `fec space` of llm-fusion-fec; the app runs the model's own code \
(`trust_remote_code`) and needs only gradio, torch and transformers.

A backbone in a gated repository (e.g. Llama 2) needs an `HF_TOKEN` secret with access to it, in the Space's settings.
"""
"""The Space's README, rendered by `huggingface_hub.SpaceCard.from_template`; its metadata is `SpaceCardData`'s
YAML."""


def gradio_version() -> str:
    """The Gradio the Space runs (`sdk_version`, and the pin in its requirements): this machine's, where it has one."""
    try:
        return version("gradio")
    except PackageNotFoundError:
        return DEFAULT_GRADIO


def model_backbones(model: str, local: bool) -> list[dict] | None:
    """The backbones `model`'s config names (a folder's `config.json`, or the Hub's); `None` where it cannot be
    read (offline, no access)."""
    from transformers import PretrainedConfig

    try:
        config, _ = PretrainedConfig.get_config_dict(model)
    except Exception as error:  # offline or no access: the Space is still written
        logger.warning(
            f"Could not read the config of {model} ({str(error).strip().splitlines()[0]}): the Space's "
            "requirements leave out bitsandbytes, which a quantized backbone needs."
        )
        return None
    return config.get("backbones") or []


def space_requirements(backbones: list[dict] | None) -> list[str]:
    """The Space's `requirements.txt`: torch, what the model's own code needs (`runtime_requirements`: transformers,
    accelerate, bitsandbytes for quantized backbones) and the Gradio of its `sdk_version`."""
    from llm_fusion_fec.publishing.saving import runtime_requirements

    return ["torch", *runtime_requirements(backbones or []), f"gradio=={gradio_version()}"]


def unmet_requirements(requirements: list[str]) -> list[str]:
    """The requirements that no distribution installed here satisfies, by name."""
    from packaging.requirements import Requirement

    unmet = []
    for line in requirements:
        requirement = Requirement(line)
        try:
            found = version(requirement.name)
        except PackageNotFoundError:
            unmet.append(requirement.name)
            continue
        if not requirement.specifier.contains(found, prereleases=True):
            unmet.append(f"{requirement.name} {requirement.specifier} (here {found})")
    return unmet


def space_card(model: str, title: str, local: bool):
    """The Space's README as a `huggingface_hub.SpaceCard`: Gradio SDK, app file, the model it shows (a Hub model
    only) and its title, every value written by the YAML emitter."""
    from huggingface_hub import SpaceCard, SpaceCardData

    data = SpaceCardData(
        title=title,
        emoji="🎭",
        colorFrom="indigo",
        colorTo="pink",
        sdk="gradio",
        sdk_version=gradio_version(),
        app_file="app.py",
        models=None if local else [model],
        pinned=False,
    )
    link = f"`{model}`" if local else f"[{model}](https://huggingface.co/{model})"
    return SpaceCard.from_template(data, template_str=SPACE_CARD, heading=" ".join(title.split()), model_link=link)


def write_space(
    model: str,
    output_dir: str | os.PathLike,
    backbone_paths: dict[str, str] | None = None,
    title: str | None = None,
) -> Path:
    """Write a Gradio Space for `model` into `output_dir` (`SPACE_FILES`): the app (`space_app.py` as `app.py`) and
    `fec predict`'s code beside it, the settings it reads (`space.json`), `requirements.txt` and `README.md`.

    `model` is a Hub id (what a Space loads) or, for a demo on this machine, a model folder. `backbone_paths`
    (local copies of backbones) also make it a local demo. Values enter the files only as data: JSON that the app
    reads, YAML front matter from `SpaceCardData`.
    """
    from llm_fusion_fec.publishing.card import DEFAULT_EXAMPLES
    from llm_fusion_fec.publishing.paths import is_local_model

    local = is_local_model(model)
    if local:
        model = str(Path(model).expanduser().resolve())
        if not (Path(model) / "config.json").is_file():
            raise ValueError(f"{model} is not a model folder (no config.json) nor a Hub model id.")
    paths = {name: str(Path(folder).expanduser().resolve()) for name, folder in (backbone_paths or {}).items()}
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(APP_SOURCE, output_dir / "app.py")
    for name, source in SPACE_CODE.items():
        shutil.copyfile(source, output_dir / name)
    settings = {"model": model, "backbone_paths": paths, "examples": list(DEFAULT_EXAMPLES)}
    settings_text = json.dumps(settings, indent=2, ensure_ascii=False) + "\n"
    (output_dir / SETTINGS_FILE).write_text(settings_text, encoding="utf-8")
    requirements = space_requirements(model_backbones(model, local))
    (output_dir / "requirements.txt").write_text("\n".join(requirements) + "\n")
    title = title or f"{Path(model).name} emotions"
    space_card(model, title, local or bool(paths)).save(output_dir / "README.md")
    return output_dir


def push_space(output_dir: str | os.PathLike, space_id: str, private: bool = False, token: str | None = None) -> str:
    """Create (or update) the Gradio Space `space_id` with the files of `output_dir`; its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    api.upload_folder(
        repo_id=space_id,
        folder_path=str(output_dir),
        repo_type="space",
        allow_patterns=list(SPACE_FILES),  # not what running the app here left beside them (__pycache__)
        commit_message="fec space",
    )
    return f"https://huggingface.co/spaces/{space_id}"
