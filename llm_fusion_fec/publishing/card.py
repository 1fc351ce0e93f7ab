"""The model card: its data (`FusionModelCardData`, filled as training goes) and its rendering.

The card's body is `model_card.md` beside this file, a Jinja template rendered by
`huggingface_hub.ModelCard.from_template`: the template lays out every table and sentence from the card data and the
model's config, so that the card describes the model as it is. Python only gathers the facts (the results, the
training arguments, the backbones' descriptions by the config) into template variables.
"""

from __future__ import annotations

import json
import platform
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import NamedTuple

import numpy as np
from huggingface_hub import EvalResult, ModelCard, ModelCardData
from transformers import PreTrainedModel, TrainingArguments

from configuration_llm_fusion import LAYER_POOLINGS, MASK_SUFFIX, LLMFusionConfig, describe_pooling, describe_precision
from llm_fusion_fec.evaluation.calibration import BINNED_CONFIDENCES, ECE_BINS
from llm_fusion_fec.evaluation.results import BASELINE_ROW, EnsembleResult, RunResults, SeedResult
from llm_fusion_fec.publishing.confusion import CONFUSION_MATRIX_FILE
from llm_fusion_fec.publishing.paths import is_local_model, looks_like_a_path
from llm_fusion_fec.publishing.reliability import RELIABILITY_DIAGRAM_FILE

TEMPLATE_PATH = Path(__file__).resolve().parent / "model_card.md"


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
"""Widget and snippet texts where the validation split gave none (`FusionModelCardData.examples`)."""


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
class FusionModelCardData:
    """What the shared folder says about how its model was made, besides the model itself: the card's data (as
    setfit's `SetFitModelCardData`), and what `results.json` and `training_args.json` hold.

    Training creates it once the features are read and fills it as it goes: each seed's result as the seed finishes
    (`add_seed`), the ensemble's once it is scored (`add_ensemble`).

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
        local_weights (`dict[str, str]`, *optional*): The features' `local_weights`: the sha256 of each backbone
            read from a local folder, which the card shows where there is no Hub revision.
    """

    results: RunResults
    training_args: TrainingArguments
    dataset_name: str
    early_stopping_patience: int
    license: str | None = None
    feature_dtype: str = "float16"
    examples: tuple[str, ...] = ()
    local_weights: dict[str, str] = field(default_factory=dict)

    def __post_init__(self):
        if not self.dataset_name or looks_like_a_path(self.dataset_name):
            raise ValueError(
                f"dataset_name must be the data set's publishable name, not a local path: got {self.dataset_name!r}. "
                "Pass the folder's name (e.g. 'ED') instead."
            )

    def add_seed(self, result: SeedResult) -> None:
        """A seed has finished: its result joins the run's (which chooses the best seed again)."""
        self.results.add_run(result)

    def add_ensemble(self, result: EnsembleResult) -> None:
        """The seeds' ensemble has been scored: it is the model saved."""
        self.results.ensemble = result

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


# ---- the card's metadata ----


def language_models(config: LLMFusionConfig) -> list[dict]:
    """The backbones whose hidden layers the head reads one by one: the LLM (and any other view of it)."""
    return [spec for spec in config.backbones if spec["pooling"] in LAYER_POOLINGS]


def input_shapes(config: LLMFusionConfig) -> dict[str, str]:
    """The shape of each input of the head for two texts, in words: a token view's padded to the longer text, with
    its mask."""
    shapes = {}
    for name, shape in config.feature_shapes.items():
        shapes[name] = "(" + ", ".join(["2", *("tokens" if size is None else str(size) for size in shape)]) + ")"
        if shape[0] is None:
            shapes[name + MASK_SUFFIX] = "(2, tokens)"
    return shapes


def language_model(config: LLMFusionConfig) -> dict:
    """The first of `language_models`, else the first backbone."""
    return next(iter(language_models(config)), config.backbones[0])


def model_card_data(config: LLMFusionConfig, card_data: FusionModelCardData, model_name: str) -> ModelCardData:
    """The card's metadata: license, data set, widget texts, the LLM as base model, and the saved seed's test scores
    as the model-index."""
    dataset = card_data.dataset
    saved = card_data.results.saved
    limit = card_data.results.limit
    title = dataset.title if dataset else card_data.dataset_name
    eval_results = [
        EvalResult(
            task_type="text-classification",
            dataset_type=dataset.hub_id if dataset else card_data.dataset_name,
            # A cut run (--limit) is scored on the first rows of test: `datasets`' slice, and the name says it too.
            dataset_name=f"{title} ({cut_words(limit)})" if limit else title,
            dataset_split=f"test[:{limit}]" if limit else "test",
            metric_type=HUB_METRICS[key].type,
            metric_args={"average": HUB_METRICS[key].average} if HUB_METRICS[key].average else None,
            metric_name=HUB_METRICS[key].name,
            metric_value=value,
        )
        for key, value in saved.test.items()
    ]
    llm = language_model(config)["model"]
    base_model = None if is_local_model(llm) else llm
    return ModelCardData(
        model_name=model_name,
        language="en",
        license=card_data.license or (dataset.license if dataset else "other"),
        library_name="transformers",
        pipeline_tag="text-classification",
        tags=["emotion-classification", "llm-fusion", "custom_code"],
        datasets=[dataset.hub_id] if dataset else None,
        # One base model: the Hub draws several as a merge. The head is trained on top of the frozen LLM (and
        # encoders) and needs it to run, which is what the Hub calls an adapter; the body lists every backbone.
        base_model=base_model,
        base_model_relation="adapter" if base_model else None,
        metrics=sorted({HUB_METRICS[key].type for key in saved.test}),
        eval_results=eval_results,
        widget=[{"text": text} for text in card_data.card_examples],
    )


# ---- the template's variables ----


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


def cut_words(limit: int) -> str:
    """A cut data set (`--limit`), in words."""
    return f"each split cut to its first {limit:,} rows"


WEIGHTS_DIGEST_LENGTH = 12
"""Hex digits of a local folder's sha256 the card shows, as a short commit id is shown."""


def shown_revisions(config: LLMFusionConfig, local_weights: dict[str, str]) -> dict[str, str]:
    """Each backbone's weights as recorded, by name: its Hub revision, else the sha256 of its local folder's files,
    else `-` (features extracted before these digests were recorded)."""
    shown = {}
    for spec in config.backbones:
        digest = local_weights.get(spec["name"])
        shown[spec["name"]] = spec["revision"] or (
            f"local files, sha256 `{digest[:WEIGHTS_DIGEST_LENGTH]}`" if digest else "-"
        )
    return shown


def weights_promise(config: LLMFusionConfig, local_weights: dict[str, str]) -> str:
    """What the limitations say the head needs of the backbones' weights: what the card shows of them (revisions,
    local files' sha256), and which were not recorded."""
    pinned = [spec["name"] for spec in config.backbones if spec["revision"]]
    local = [spec["name"] for spec in config.backbones if not spec["revision"] and spec["name"] in local_weights]
    unknown = [spec["name"] for spec in config.backbones if spec["name"] not in {*pinned, *local}]
    parts = ["the revisions shown"] if pinned else []
    if local:
        parts.append(f"for {', '.join(local)}, the files whose sha256 is shown (a local folder has no Hub revision)")
    if unknown:
        parts.append(f"for {', '.join(unknown)}, weights that were not recorded")
    return "the same weights: " + "; ".join(parts)


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


def model_variables(model: PreTrainedModel) -> dict:
    """What the card says of the model, asked of its config: labels, backbones and their features, the head."""
    config = model.config
    return {
        "config": config,
        "labels": [config.id2label[i] for i in range(config.num_labels)],
        "multi_label": config.problem_type == "multi_label_classification",
        "num_parameters": model.num_parameters(),
        "backbones": [
            {**backbone, "feature": describe_pooling(backbone), "computed_with": describe_precision(backbone)}
            for backbone in config.backbones
        ],
        "llms": language_models(config),
        "feature_shapes": input_shapes(config),
        "token_views": config.token_views,
        "choice": getattr(config, "feature_choice", None),
        **backbone_limitations(config),
    }


def most_confused(confusion: list[list[int]] | None, labels: list[str], count: int = 5) -> list[dict]:
    """The `count` most frequent confusions of a confusion matrix (rows: true label), largest first: each pair's
    labels, its count and its share of the true label's texts."""
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


def protocol_variables(card_data: FusionModelCardData) -> dict:
    """What the card says of how the seeds were trained: optimizer, schedule, budget, evaluation and stopping."""
    args, results = card_data.training_args, card_data.results
    return {
        "args": args,
        "optimizer": _optimizer(args),
        "scheduler": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "warmup": _warmup(args),
        "budget": f"{args.max_steps} steps" if args.max_steps > 0 else f"at most {args.num_train_epochs:g} epochs",
        "evaluation": _evaluation(args),
        "early_stopping_patience": card_data.early_stopping_patience,
        "checkpoint_selection": CHECKPOINT_SELECTION_TEXTS.get(
            results.checkpoint_selection, f"checkpoint selection `{results.checkpoint_selection}`"
        ).format(selection=results.selection_metric),
        "batches": sorted({tuple(run.trained_with) for run in results.runs if len(run.trained_with) > 1}),
    }


def calibration_variables(results: RunResults) -> dict:
    """What the card says of each row's calibration and of the bag-of-words baseline: the ECE column, the bins, the
    saved model's temperature and reliability table, and whether the baseline beats the head on validation."""
    saved = results.saved.calibration
    return {
        "ece": results.test_ece,
        "ece_bins": ECE_BINS,
        "binned": BINNED_CONFIDENCES.get(results.problem_type, "probability"),
        "calibration": saved,
        "reliability_rows": [row for row in saved.reliability if row["count"]] if saved else [],
        "baseline": results.baseline,
        "baseline_row": BASELINE_ROW,
        "baseline_wins": results.baseline_wins,
        "head_validation": results.head_validation if results.runs else None,
    }


def model_card(
    model: PreTrainedModel,
    card_data: FusionModelCardData,
    folder_name: str,
    confusion_image: bool = False,
    reliability_image: bool = False,
) -> ModelCard:
    """The model card, rendered from `model_card.md` beside this file: what the model does and how to run it, the
    results of every seed and of each label, the backbones and head as the config describes them, the training
    protocol, framework versions, limitations and citations.

    Args:
        model (`LLMFusionForSequenceClassification`): The saved model.
        card_data (`FusionModelCardData`): Its results and how it was trained.
        folder_name (`str`): The output folder's name: the model's name, and the repository's name in the
            placeholder id of the snippets when `card_data.training_args.hub_model_id` is not set.
        confusion_image (`bool`, *optional*, defaults to `False`): Whether the folder holds the confusion matrix
            image (`CONFUSION_MATRIX_FILE`).
        reliability_image (`bool`, *optional*, defaults to `False`): Whether the folder holds the reliability diagram
            (`RELIABILITY_DIAGRAM_FILE`); without it the card shows the reliability table.
    """
    model_facts = model_variables(model)
    results = card_data.results
    revisions = shown_revisions(model.config, card_data.local_weights)
    model_facts["backbones"] = [
        {**backbone, "weights": revisions[backbone["name"]]} for backbone in model_facts["backbones"]
    ]
    variables = {
        **model_facts,
        **protocol_variables(card_data),
        "weights_promise": weights_promise(model.config, card_data.local_weights),
        "cut": cut_words(results.limit) if results.limit else None,
        "model_name": card_data.repo_id or folder_name,
        "model_id": card_data.repo_id or f"YOUR_ORG/{folder_name}",
        "placeholder_id": card_data.repo_id is None,
        "dataset_title": card_data.dataset.title if card_data.dataset else card_data.dataset_name,
        "examples": [json.dumps(text, ensure_ascii=False) for text in card_data.card_examples],
        "results": results,
        "saved": results.saved,
        "confusion_image": CONFUSION_MATRIX_FILE if confusion_image else None,
        "reliability_image": RELIABILITY_DIAGRAM_FILE if reliability_image else None,
        **calibration_variables(results),
        "most_confused": most_confused(results.saved.confusion, model_facts["labels"]),
        "feature_dtype": card_data.feature_dtype,
        "versions": framework_versions(),
    }
    metadata = model_card_data(model.config, card_data, variables["model_name"])
    return ModelCard.from_template(metadata, template_path=str(TEMPLATE_PATH), **variables)


__all__ = [
    "CHECKPOINT_SELECTION_TEXTS",
    "DATASET_CARDS",
    "DEFAULT_EXAMPLES",
    "DatasetCard",
    "FusionModelCardData",
    "HUB_METRICS",
    "model_card",
    "model_card_data",
]
