"""Publish a trained fusion head: the shared folder (weights, code, results, arguments, model card) and the Hub push.

Training calls `save_model_folder` once it has picked the seed to save, and `push_to_hub` with `--push-to-hub`.
The card's body is `model_card.md` beside this file, rendered by `huggingface_hub.ModelCard.from_template` from the
typed results (`RunResults`) and the model's config. Nothing written here names a local path: the data set
is named by its publishable name, the training arguments lose their paths and secrets, and the push refuses backbones
named by local folders and uploads only the files this run wrote.
"""

from __future__ import annotations

import dataclasses
import io
import json
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NamedTuple

import numpy as np
from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData
from huggingface_hub.utils import HFValidationError, validate_repo_id
from transformers import PreTrainedModel, TrainingArguments
from transformers.utils import logging

from configuration_llm_fusion import LAYER_POOLINGS, LLMFusionConfig, describe_pooling, feature_shape
from llm_fusion_fec.evaluation.results import RunResults
from pipeline_fec import save_for_pipeline

logger = logging.get_logger(__name__)

TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card.md"
HANDLER_PATH = Path(__file__).resolve().parent.parent / "serving" / "handler.py"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
RUNS_DIR = "runs"  # per-seed models and results: they stay on this machine
WRITTEN_FILE = "published.json"  # in RUNS_DIR: the files the last save wrote into the folder
# Training arguments that hold local paths or secrets: never written into the shared folder.
LOCAL_ARGUMENTS = ("output_dir", "logging_dir", "resume_from_checkpoint", "hub_token")


@dataclass(frozen=True)
class DatasetCard:
    """What the card says about a built-in data set.

    Args:
        hub_id (`str`): The Hub data set the splits come from.
        title (`str`): Its name in prose.
        license (`str`): Its license, which the trained head inherits.
    """

    hub_id: str
    title: str
    license: str


DATASET_CARDS = {
    "ED": DatasetCard(
        hub_id="facebook/empathetic_dialogues",
        title="Empathetic Dialogues",
        license="cc-by-nc-4.0",
    ),
    "go_emotion": DatasetCard(
        hub_id="google-research-datasets/go_emotions",
        title="GoEmotions, single-label subset",
        license="apache-2.0",
    ),
    "go_emotions_multilabel": DatasetCard(
        hub_id="google-research-datasets/go_emotions",
        title="GoEmotions",
        license="apache-2.0",
    ),
}
DEFAULT_EXAMPLES = (
    "I finally got the job I had been hoping for all year!",
    "My dog died last week and I still miss him.",
    "I have a big exam tomorrow and I can't stop worrying.",
)
"""Widget and snippet texts where the validation split gave none (`PublishSpec.examples`)."""


class HubMetric(NamedTuple):
    """How the Hub's model-index names a score of the metric module."""

    type: str
    average: str | None
    name: str


HUB_METRICS = {
    "accuracy": HubMetric("accuracy", None, "Accuracy"),
    "weighted_f1": HubMetric("f1", "weighted", "Weighted F1"),
    "macro_f1": HubMetric("f1", "macro", "Macro F1"),
    "micro_f1": HubMetric("f1", "micro", "Micro F1"),
}
CHECKPOINT_SELECTION_TEXTS = {
    "best": "the checkpoint with the best validation {selection} is kept",
    "last_improvement": (
        "the checkpoint of the last evaluation at which any early-stopping metric improved is kept (the original "
        "code's rule)"
    ),
}
"""How each `RunResults.checkpoint_selection` mode (`llm_fusion_fec.training.trainer.CHECKPOINT_SELECTIONS`) picks a
seed's checkpoint, in words."""


@dataclass
class PublishSpec:
    """What the shared folder says about how its model was made, besides the model itself.

    Args:
        results (`RunResults`): Every seed's scores and the saved seed, as training returned them.
        training_args (`TrainingArguments`): The arguments every seed was trained with (their `seed` and
            `output_dir` aside). `hub_model_id` is the repository the card's snippets name.
        dataset_name (`str`): The data set's publishable name (e.g. `ED`), never a local path: it names the data set
            in the card and in `results.json`.
        early_stopping_patience (`int`): Evaluations without improvement before a seed stops.
        license (`str`, *optional*): The card's license; defaults to the training data's (`other` if unknown).
        feature_dtype (`str`, *optional*, defaults to `"float16"`): The dtype the features were stored in.
        examples (`tuple[str, ...]`, *optional*): Texts of the validation split for the widget and the usage snippet
            (`validation_examples`); `DEFAULT_EXAMPLES` where there are none.
    """

    results: RunResults
    training_args: TrainingArguments
    dataset_name: str
    early_stopping_patience: int
    license: str | None = None
    feature_dtype: str = "float16"
    examples: tuple[str, ...] = ()

    def __post_init__(self):
        if not self.dataset_name or looks_like_a_path(self.dataset_name):
            raise ValueError(
                f"dataset_name must be the data set's publishable name, not a local path: got {self.dataset_name!r}. "
                "Pass the folder's name (e.g. 'ED') instead."
            )

    @property
    def card_examples(self) -> tuple[str, ...]:
        """The widget's and the snippet's texts: `examples`, with `DEFAULT_EXAMPLES` after them up to three."""
        return (*self.examples, *DEFAULT_EXAMPLES[: max(0, 3 - len(self.examples))])

    @property
    def dataset(self) -> DatasetCard | None:
        """The built-in data set's card, if `dataset_name` is one."""
        return DATASET_CARDS.get(self.dataset_name)

    @property
    def repo_id(self) -> str | None:
        return self.training_args.hub_model_id


# ---- local paths ----


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


def _holds_local_path(value) -> bool:
    if isinstance(value, str):
        return is_local_path(value)
    if isinstance(value, dict):
        return any(_holds_local_path(item) for item in value.values())
    if isinstance(value, list | tuple):
        return any(_holds_local_path(item) for item in value)
    return False


def training_arguments(spec: PublishSpec) -> dict:
    """The training arguments as shared in `training_args.json`: without output and logging folders, checkpoint to
    resume from, token, or any value that names a local path; with the protocol's own settings (selection metric,
    seeds, early-stopping patience)."""
    arguments = {
        key: value
        for key, value in spec.training_args.to_dict().items()
        if key not in LOCAL_ARGUMENTS and not _holds_local_path(value)
    }
    arguments.update(
        metric_for_best_model=spec.results.selection_metric,
        seeds=spec.results.seeds,
        early_stopping_patience=spec.early_stopping_patience,
    )
    return arguments


# ---- the shared folder ----


def save_model_folder(model: PreTrainedModel, output_dir: str | os.PathLike, spec: PublishSpec) -> list[str]:
    """Write the folder that is shared: weights, config and code (model and pipeline, `save_for_pipeline`),
    `results.json`, `training_args.json`, the confusion matrix of single-label models and the model card.

    Returns the files written, relative to `output_dir`: what `push_to_hub` uploads. Files already in the folder that
    this call did not write (an earlier run's, the local `runs/`) are left alone and are not in the list.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    # Saved apart first, so that the files the model saves are known exactly, whatever else the folder holds.
    with tempfile.TemporaryDirectory(dir=output_dir, prefix=".saving-") as staging:
        save_for_pipeline(model, staging)
        write_endpoint_files(model.config, staging)
        written = []
        for path in sorted(Path(staging).iterdir()):
            os.replace(path, output_dir / path.name)
            written.append(path.name)
    dataclasses.replace(spec.results, dataset=spec.dataset_name).save(output_dir / "results.json")
    arguments = json.dumps(training_arguments(spec), indent=2, default=str)
    (output_dir / "training_args.json").write_text(arguments + "\n")
    written += ["results.json", "training_args.json"]
    confusion = spec.results.saved.confusion
    labels = [model.config.id2label[i] for i in range(model.config.num_labels)]
    image = confusion_matrix_png(confusion, labels) if confusion is not None else None
    if image is not None:
        (output_dir / CONFUSION_MATRIX_FILE).write_bytes(image)
        written.append(CONFUSION_MATRIX_FILE)
    model_card(model, spec, output_dir.name, confusion_image=image is not None).save(output_dir / "README.md")
    written.append("README.md")
    (output_dir / RUNS_DIR).mkdir(exist_ok=True)
    (output_dir / RUNS_DIR / WRITTEN_FILE).write_text(json.dumps(sorted(written)) + "\n")
    return sorted(written)


def write_endpoint_files(config: LLMFusionConfig, folder: str | os.PathLike) -> None:
    """`handler.py` (`llm_fusion_fec.serving.handler`, the Inference Endpoints contract) and the `requirements.txt`
    an endpoint installs beside its own torch: transformers 5, and bitsandbytes for quantized backbones."""
    shutil.copyfile(HANDLER_PATH, Path(folder) / "handler.py")
    major = int(version("transformers").split(".")[0])  # the major version the Hub files are written for
    requirements = [f"transformers>={major}.0,<{major + 1}", "accelerate"]
    if any(spec.get("quantization") for spec in config.backbones):
        requirements.append("bitsandbytes")
    (Path(folder) / "requirements.txt").write_text("\n".join(requirements) + "\n")


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


def format_results_table(results: RunResults) -> str:
    """Markdown table of the test scores: one row per seed, then mean +- population std."""
    keys = list(results.runs[0].test)
    selection = results.selection_metric
    header = ["seed", "epochs", "best epoch", "wall time (s)", f"validation {selection}", *[f"test {k}" for k in keys]]
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    for run in results.runs:
        saved = run.seed == results.best_seed and not results.ensemble
        seed = f"{run.seed} (saved)" if saved else str(run.seed)
        best_epoch = f"{run.best_epoch:g}" if run.best_epoch is not None else "-"
        cells = [
            seed,
            f"{run.epochs:g}",
            best_epoch,
            f"{run.wall_time_s:.0f}",
            f"{run.validation[selection]:.4f}",
            *[f"{run.test[k]:.4f}" for k in keys],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    summary = [f"{results.test[k]['mean']:.4f} +- {results.test[k]['std']:.4f}" for k in keys]
    seeds = f"{len(results.runs)} seed{'s' if len(results.runs) > 1 else ''}"
    lines.append("| " + " | ".join([f"mean +- std ({seeds})", "", "", "", "", *summary]) + " |")
    if results.ensemble:
        ensemble = results.ensemble
        cells = [
            f"ensemble of the {len(ensemble.members)} seeds (saved)",
            "",
            "",
            "",
            f"{ensemble.validation[selection]:.4f}",
            *[f"{ensemble.test[k]:.4f}" for k in keys],
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---- the confusion matrix ----


def confusion_matrix_png(confusion: list[list[int]], labels: list[str]) -> bytes | None:
    """The test confusion matrix as a PNG drawn by matplotlib: true labels down, predicted labels across, both named,
    the count in every non-empty square, each square shaded by its share of the true label's texts (the diagonal
    shows each label's recall). About 0.42 inch a label, so 32 labels stay readable (about 1,600 pixels a side).

    Returns `None`, with a notice, where matplotlib is not installed: the card then lists the most frequent
    confusions without the image.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning(
            "matplotlib is not installed: the model card has no confusion-matrix image "
            "(pip install 'llm-fusion-fec[card]' draws one)."
        )
        return None
    counts = np.asarray(confusion, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.42 * len(labels) + 2.5)
    figure = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=90)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    axes.set_title("Test confusion matrix: counts, shaded by share of the true label")
    size = 7 if len(labels) > 16 else 9
    for (row, column), count in np.ndenumerate(counts):
        if count:
            color = "white" if shares[row, column] > 0.5 else "black"
            axes.text(column, row, str(count), ha="center", va="center", fontsize=size, color=color)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png")
    return image.getvalue()


# ---- the model card ----


def language_models(config: LLMFusionConfig) -> list[dict]:
    """The backbones whose hidden layers the head reads one by one: the LLM (and any other view of it)."""
    return [spec for spec in config.backbones if len(feature_shape(spec)) == 2]


def language_model(config: LLMFusionConfig) -> dict:
    """The first of `language_models`, else the first backbone."""
    return next(iter(language_models(config)), config.backbones[0])


def model_card_data(config: LLMFusionConfig, spec: PublishSpec, model_name: str) -> ModelCardData:
    """The card's metadata: license, data set, widget texts, the LLM as base model, and the saved seed's test scores
    as the model-index."""
    dataset = spec.dataset
    eval_results = [
        EvalResult(
            task_type="text-classification",
            dataset_type=dataset.hub_id if dataset else spec.dataset_name,
            dataset_name=dataset.title if dataset else spec.dataset_name,
            dataset_split="test",
            metric_type=HUB_METRICS[key].type,
            metric_args={"average": HUB_METRICS[key].average} if HUB_METRICS[key].average else None,
            metric_name=HUB_METRICS[key].name,
            metric_value=value,
        )
        for key, value in spec.results.saved.test.items()
    ]
    llm = language_model(config)["model"]
    base_model = None if is_local_model(llm) else llm
    return ModelCardData(
        model_name=model_name,
        language="en",
        license=spec.license or (dataset.license if dataset else "other"),
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["emotion-classification", "llm-fusion", "custom_code"],
        datasets=[dataset.hub_id] if dataset else None,
        # One base model: the Hub draws several as a merge. The head is trained on top of the frozen LLM (and
        # encoders) and needs it to run, which is what the Hub calls an adapter; the body lists every backbone.
        base_model=base_model,
        base_model_relation="adapter" if base_model else None,
        metrics=sorted({HUB_METRICS[key].type for key in spec.results.saved.test}),
        eval_results=eval_results,
        widget=[{"text": text} for text in spec.card_examples],
    )


def backbone_limitations(config: LLMFusionConfig) -> dict:
    """What the card's limitations say of the backbones actually used: their models, the large LLM that needs a GPU
    (a layer-pooled backbone 2048 wide or more: 1B-class and up), and the Llama 2 license where a Llama-2 is used."""
    models = list(dict.fromkeys(spec["model"] for spec in config.backbones))
    large = [
        spec["model"] for spec in config.backbones if spec["pooling"] in LAYER_POOLINGS and spec["hidden_size"] >= 2048
    ]
    return {
        "backbone_models": models,
        "large_llm": large[0] if large else None,
        "llama2_models": [model for model in models if "llama-2" in model.lower()],
    }


def framework_versions() -> dict[str, str]:
    """The versions of Python and of the libraries that trained and saved the model."""
    versions = {"Python": platform.python_version()}
    for name, package in (
        ("PyTorch", "torch"),
        ("Transformers", "transformers"),
        ("Datasets", "datasets"),
        ("Hugging Face Hub", "huggingface_hub"),
    ):
        try:
            versions[name] = version(package)
        except PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def _optimizer(args: TrainingArguments) -> str:
    optimizer = str(getattr(args.optim, "value", args.optim))
    adam = " (Adam: AdamW without weight decay)" if args.weight_decay == 0 and optimizer.startswith("adamw") else ""
    return f"`{optimizer}`, weight decay {args.weight_decay:g}{adam}"


def _warmup(args: TrainingArguments) -> str:
    if not args.warmup_steps:
        return "no warm-up"
    if args.warmup_steps < 1:
        return f"linear warm-up over {args.warmup_steps:.0%} of the steps"
    return f"linear warm-up over {args.warmup_steps:g} steps"


def _evaluation(args: TrainingArguments) -> str:
    strategy = str(getattr(args.eval_strategy, "value", args.eval_strategy))
    return (
        f"every {args.eval_steps or args.logging_steps:g} steps" if strategy == "steps" else f"after every {strategy}"
    )


def _most_confused(confusion: list[list[int]] | None, labels: list[str], count: int = 5) -> list[dict]:
    if confusion is None:
        return []
    matrix = np.asarray(confusion)
    support = matrix.sum(axis=1)
    pairs = [(int(matrix[i, j]), i, j) for i in range(len(matrix)) for j in range(len(matrix)) if i != j]
    pairs = sorted((pair for pair in pairs if pair[0] > 0), key=lambda pair: (-pair[0], pair[1], pair[2]))
    return [
        {"true": labels[i], "predicted": labels[j], "count": texts, "share": texts / support[i]}
        for texts, i, j in pairs[:count]
    ]


def model_card(
    model: PreTrainedModel, spec: PublishSpec, folder_name: str, confusion_image: bool = False
) -> ModelCard:
    """The model card, rendered from `model_card.md` beside this file: what the model does and how to run it, the
    results of every seed and of each label, the backbones and head as the config describes them, the training
    protocol, framework versions, limitations and citations.

    Args:
        model (`LLMFusionForSequenceClassification`): The saved model.
        spec (`PublishSpec`): Its results and how it was trained.
        folder_name (`str`): The output folder's name: the model's name, and the repository's name in the
            placeholder id of the snippets when `spec.training_args.hub_model_id` is not set.
        confusion_image (`bool`, *optional*, defaults to `False`): Whether the folder holds the confusion matrix
            image (`CONFUSION_MATRIX_FILE`).
    """
    config, results, args = model.config, spec.results, spec.training_args
    labels = [config.id2label[i] for i in range(config.num_labels)]
    model_id = spec.repo_id or f"YOUR_ORG/{folder_name}"
    examples = spec.card_examples
    saved = results.saved
    variables = {
        "model_name": spec.repo_id or folder_name,
        "model_id": model_id,
        "placeholder_id": spec.repo_id is None,
        "dataset_title": spec.dataset.title if spec.dataset else spec.dataset_name,
        "dataset_hub_id": spec.dataset.hub_id if spec.dataset else None,
        "config": config,
        "labels": labels,
        "multi_label": config.problem_type == "multi_label_classification",
        "num_parameters": model.num_parameters(),
        "backbones": [{**backbone, "feature": describe_pooling(backbone)} for backbone in config.backbones],
        "llms": language_models(config),
        "feature_shapes": {name: (2, *shape) for name, shape in config.feature_shapes.items()},
        "examples": [json.dumps(text, ensure_ascii=False) for text in examples],
        "results": results,
        "saved_name": f"the ensemble of seeds {', '.join(map(str, results.ensemble.members))}"
        if results.ensemble
        else f"seed {results.best_seed}",
        "results_table": format_results_table(results),
        "per_label": [{"label": label, **saved.per_label[label]} for label in labels if label in saved.per_label],
        "confusion_image": CONFUSION_MATRIX_FILE if confusion_image else None,
        "most_confused": _most_confused(saved.confusion, labels),
        "feature_dtype": spec.feature_dtype,
        "choice": getattr(config, "feature_choice", None),
        "optimizer": _optimizer(args),
        "scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup": _warmup(args),
        "args": args,
        "budget": f"{args.max_steps} steps" if args.max_steps > 0 else f"at most {args.num_train_epochs:g} epochs",
        "evaluation": _evaluation(args),
        "early_stopping_patience": spec.early_stopping_patience,
        "checkpoint_selection": CHECKPOINT_SELECTION_TEXTS.get(
            results.checkpoint_selection, f"checkpoint selection `{results.checkpoint_selection}`"
        ).format(selection=results.selection_metric),
        "batches": sorted({tuple(run.trained_with) for run in results.runs if len(run.trained_with) > 1}),
        "versions": framework_versions(),
        **backbone_limitations(config),
    }
    card_data = model_card_data(config, spec, variables["model_name"])
    return ModelCard.from_template(card_data, template_path=str(TEMPLATE_PATH), **variables)


# ---- the Hub ----


def push_to_hub(
    folder: str | os.PathLike,
    files: list[str],
    repo_id: str,
    token: str | None = None,
    private: bool | None = None,
) -> str:
    """Create `repo_id` (if needed) and upload `files` of `folder`, the files `save_model_folder` wrote, and nothing
    else: not the local `runs/`, not what an earlier run or anyone else left in the folder.

    Refuses (`ValueError`) a model whose backbones are local folders, and a file list that names a file missing from
    the folder, outside it, or under `runs/`. Returns the commit URL.
    """
    folder = Path(folder)
    check_shareable(LLMFusionConfig.from_pretrained(folder))
    bad = [
        name
        for name in files
        if looks_like_a_path(name)
        or ".." in Path(name).parts
        or Path(name).parts[:1] == (RUNS_DIR,)
        or not (folder / name).is_file()
    ]
    if bad or not files:
        raise ValueError(
            f"Cannot upload {bad or 'no files'} from {folder}: name the files save_model_folder wrote (relative "
            f"paths of files in the folder, none under {RUNS_DIR}/)."
        )
    api = HfApi(token=token)
    api.create_repo(repo_id, private=private, exist_ok=True)
    commit = api.upload_folder(
        repo_id=repo_id,
        folder_path=folder,
        # The exact files, escaped so that a name is never read as a pattern.
        allow_patterns=[_escape_pattern(name) for name in files],
        ignore_patterns=[f"{RUNS_DIR}/*"],
        commit_message="Upload the LLM fusion head trained by train_fusion.py",
    )
    logger.info(f"Pushed {len(files)} files of {folder} to {repo_id}.")
    return commit.commit_url


def _escape_pattern(name: str) -> str:
    """`name` as an `fnmatch` pattern that matches `name` only."""
    return "".join(f"[{char}]" if char in "*?[" else char for char in name)


__all__ = [
    "DATASET_CARDS",
    "DatasetCard",
    "HUB_METRICS",
    "PublishSpec",
    "check_shareable",
    "confusion_matrix_png",
    "format_results_table",
    "is_local_model",
    "is_local_path",
    "looks_like_a_path",
    "model_card",
    "model_card_data",
    "push_to_hub",
    "save_model_folder",
    "training_arguments",
]
