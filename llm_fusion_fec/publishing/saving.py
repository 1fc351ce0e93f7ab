"""The model folder that is shared: weights, code, the Endpoint handler, results, arguments and the model card.

Training checks the output folder (`check_output_folder`) before it trains and calls `save_model_folder` once it has
the model to save. Nothing written here names a local path: the data set is named by its publishable name, and the
training arguments lose their paths and secrets.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from importlib.metadata import version
from pathlib import Path

from transformers import PreTrainedModel

from configuration_llm_fusion import LLMFusionConfig
from llm_fusion_fec.evaluation.calibration import BINNED_CONFIDENCES
from llm_fusion_fec.publishing.card import FusionModelCardData, model_card
from llm_fusion_fec.publishing.confusion import CONFUSION_MATRIX_FILE, confusion_matrix_png
from llm_fusion_fec.publishing.paths import holds_local_path
from llm_fusion_fec.publishing.reliability import RELIABILITY_DIAGRAM_FILE, reliability_diagram_png
from pipeline_fec import save_for_pipeline

HANDLER_PATH = Path(__file__).resolve().parent.parent / "serving" / "handler.py"
RUNS_DIR = "runs"  # per-seed models and results: they stay on this machine
WRITTEN_FILE = "published.json"  # in RUNS_DIR: the files the last save wrote into the folder
# Training arguments that hold local paths or secrets: never written into the shared folder.
LOCAL_ARGUMENTS = ("output_dir", "logging_dir", "resume_from_checkpoint", "hub_token")


def check_output_folder(output_dir: str | os.PathLike, overwrite: bool) -> None:
    """Refuse an output folder that holds files this package did not write there (they would sit beside the model and
    be mistaken for part of it), unless `overwrite` (then they stay, and only this run's files are uploaded)."""
    output_dir = Path(output_dir)
    if overwrite or not output_dir.is_dir():
        return
    manifest = output_dir / RUNS_DIR / WRITTEN_FILE
    ours = {RUNS_DIR, *(json.loads(manifest.read_text()) if manifest.exists() else [])}
    foreign = sorted(path.name for path in output_dir.iterdir() if path.name not in ours)
    if foreign:
        listed = ", ".join(foreign[:5]) + (", ..." if len(foreign) > 5 else "")
        raise ValueError(
            f"The output folder {output_dir} holds files this run did not write ({listed}): pass another "
            "--output_dir, or --overwrite_output_dir to write beside them (only this run's files are uploaded)."
        )


def training_arguments(card_data: FusionModelCardData) -> dict:
    """The training arguments as shared in `training_args.json`: without output and logging folders, checkpoint to
    resume from, token, or any value that names a local path; with the protocol's own settings (selection metric,
    seeds, early-stopping patience)."""
    arguments = {
        key: value
        for key, value in card_data.training_args.to_dict().items()
        if key not in LOCAL_ARGUMENTS and not holds_local_path(value)
    }
    arguments.update(
        metric_for_best_model=card_data.results.selection_metric,
        seeds=card_data.results.seeds,
        early_stopping_patience=card_data.early_stopping_patience,
    )
    return arguments


def runtime_requirements(backbones: Iterable[Mapping]) -> list[str]:
    """What the model's own code (the Hub files) needs to run beside torch: transformers of the major version it is
    written for, accelerate, bitsandbytes where a backbone is quantized, onnxruntime and onnx where one runs with an
    ONNX backend. An Endpoint and a Space install them."""
    major = int(version("transformers").split(".")[0])  # the major version the Hub files are written for
    requirements = [f"transformers>={major}.0,<{major + 1}", "accelerate"]
    if any(spec.get("quantization") for spec in backbones):
        requirements.append("bitsandbytes")
    if any(spec.get("backend") for spec in backbones):
        requirements += ["onnxruntime>=1.20", "onnx>=1.16"]
    return requirements


def write_endpoint_files(config: LLMFusionConfig, folder: str | os.PathLike) -> None:
    """`handler.py` (`llm_fusion_fec.serving.handler`, the Inference Endpoints contract) and the `requirements.txt`
    an endpoint installs beside its own torch (`runtime_requirements`)."""
    shutil.copyfile(HANDLER_PATH, Path(folder) / "handler.py")
    (Path(folder) / "requirements.txt").write_text("\n".join(runtime_requirements(config.backbones)) + "\n")


def save_model_files(model: PreTrainedModel, output_dir: Path) -> list[str]:
    """Weights, config and code (model and pipeline, `save_for_pipeline`) and the Endpoint files; returns their
    names. Saved apart first, so that the files the model saves are known exactly, whatever else the folder holds."""
    written = []
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".saving-") as staging:
        save_for_pipeline(model, staging)
        write_endpoint_files(model.config, staging)
        mode = new_file_mode(Path(staging))
        for path in sorted(Path(staging).iterdir()):
            path.chmod(mode)  # safetensors writes its file 0600, through a temporary file of its own
            os.replace(path, output_dir / path.name)
            written.append(path.name)
    return written


def new_file_mode(folder: Path) -> int:
    """The mode a file created in `folder` gets (0644 under the usual umask 022): every file of the model folder gets
    it, whatever mode the library that wrote it chose."""
    probe = folder / ".mode-probe"
    probe.touch()
    try:
        return probe.stat().st_mode & 0o777
    finally:
        probe.unlink()


def save_model_folder(
    model: PreTrainedModel, output_dir: str | os.PathLike, card_data: FusionModelCardData
) -> list[str]:
    """Write the folder that is shared: weights, config and code (model and pipeline, `save_for_pipeline`),
    `results.json`, `training_args.json`, the confusion matrix of single-label models, the reliability diagram
    (where the results hold a calibration) and the model card.

    Returns the files written, relative to `output_dir`: what `push_to_hub` uploads. Files already in the folder that
    this call did not write (an earlier run's, the local `runs/`) are left alone and are not in the list.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    written = save_model_files(model, output_dir)
    dataclasses.replace(card_data.results, dataset=card_data.dataset_name).save(output_dir / "results.json")
    arguments = json.dumps(training_arguments(card_data), indent=2, default=str)
    (output_dir / "training_args.json").write_text(arguments + "\n")
    written += ["results.json", "training_args.json"]
    confusion = card_data.results.saved.confusion
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    image = confusion_matrix_png(confusion, labels) if confusion is not None else None
    if image is not None:
        (output_dir / CONFUSION_MATRIX_FILE).write_bytes(image)
        written.append(CONFUSION_MATRIX_FILE)
    calibration = card_data.results.saved.calibration
    binned = BINNED_CONFIDENCES.get(card_data.results.problem_type, "probability")
    diagram = reliability_diagram_png(calibration.reliability, binned) if calibration is not None else None
    if diagram is not None:
        (output_dir / RELIABILITY_DIAGRAM_FILE).write_bytes(diagram)
        written.append(RELIABILITY_DIAGRAM_FILE)
    card = model_card(
        model, card_data, output_dir.name, confusion_image=image is not None, reliability_image=diagram is not None
    )
    card.save(output_dir / "README.md")
    written.append("README.md")
    (output_dir / RUNS_DIR).mkdir(exist_ok=True)
    (output_dir / RUNS_DIR / WRITTEN_FILE).write_text(json.dumps(sorted(written)) + "\n")
    return sorted(written)


__all__ = [
    "RUNS_DIR",
    "check_output_folder",
    "save_model_folder",
    "runtime_requirements",
    "training_arguments",
    "write_endpoint_files",
]
