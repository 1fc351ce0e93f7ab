"""What names something on this machine, and the refusals that keep such names out of what is shared: a backbone
named by a local folder, a Hub id the Hub would refuse, a value of the training arguments that is a local path."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import TrainingArguments

from configuration_llm_fusion import LLMFusionConfig


def looks_like_a_path(value: str) -> bool:
    """Whether `value` is written as a path: absolute, or from the home or the current folder (`~`, `./`, `../`)."""
    return Path(value).is_absolute() or value.startswith(("~", "./", "../", ".\\", "..\\")) or value in (".", "..")


def is_local_path(value: str) -> bool:
    """Whether `value` names something on this machine: written as a path, or existing on disk from here."""
    if not value:
        return False
    try:
        return looks_like_a_path(value) or Path(value).expanduser().exists()
    except OSError:  # e.g. a name too long for the file system: not a path
        return False


def holds_local_path(value) -> bool:
    """Whether `value`, or any string inside it (dicts, lists, tuples), names something on this machine."""
    if isinstance(value, str):
        return is_local_path(value)
    if isinstance(value, dict):
        return any(holds_local_path(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(holds_local_path(item) for item in value)
    return False


def is_local_model(name: str) -> bool:
    """Whether a backbone is named by a local folder (relative or absolute) rather than a Hub id: a path, a folder
    that exists from here, or a name the Hub could not hold."""
    if is_local_path(name):
        return True
    try:
        validate_repo_id(name)
    except HFValidationError:
        return True
    return False


def check_hub_model_id(training_args: TrainingArguments) -> None:
    """Refuse a `--hub_model_id` the Hub would refuse, before training rather than at the push after it."""
    if training_args.push_to_hub and training_args.hub_model_id:
        try:
            validate_repo_id(training_args.hub_model_id)
        except HFValidationError as error:
            raise ValueError(
                f"--hub_model_id {training_args.hub_model_id!r} is not a Hub repository id (NAME or ORG/NAME of "
                f"letters, digits, '-', '_' and '.'): {str(error).splitlines()[0]}"
            ) from None


def check_shareable(config: LLMFusionConfig) -> None:
    """Refuse a model whose config names a backbone by a local folder: nobody else could load its backbones."""
    local = [spec["model"] for spec in config.backbones if is_local_model(spec["model"])]
    if local:
        raise ValueError(
            f"Backbone(s) {local} are local paths: a pushed model could not load them anywhere else. Extract the "
            "features with Hub ids (extract_features.py --backbone-path NAME=FOLDER reads a local copy of a Hub "
            "model) and train again."
        )


__all__ = [
    "check_hub_model_id",
    "check_shareable",
    "holds_local_path",
    "is_local_model",
    "is_local_path",
    "looks_like_a_path",
]
