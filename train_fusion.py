"""Train the fusion head on saved features with the paper's protocol; save (and push) a model with its card.

    python train_fusion.py                        # features/ED -> outputs/llm-fusion-ed, one seed
    python train_fusion.py --seeds 5              # the paper's protocol: 5 seeds, mean +- std
    python train_fusion.py --dataset go_emotion   # features/go_emotion -> outputs/llm-fusion-go-emotion
    python train_fusion.py --seeds 5 --push-to-hub --hub-model-id ORG/NAME

Every `TrainingArguments` flag works (`--max_steps`, `--learning_rate`, ...). The defaults are the paper's
protocol: Adam, lr 1e-4, batch 10, up to 200 epochs, evaluation on validation after each epoch, early stopping after
10 epochs without improvement, the best checkpoint by validation kept. The test split is scored once per seed, on
that checkpoint; the seed with the best validation score is the one saved.
"""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import evaluate
import numpy as np
import torch
from datasets import Array2D, ClassLabel, DatasetDict, List, Value
from torch import nn
from transformers import (
    EvalPrediction,
    HfArgumentParser,
    TrainingArguments,
    set_seed,
)
from transformers.trainer_utils import IntervalStrategy, SaveStrategy, SchedulerType, get_last_checkpoint
from transformers.utils import logging

from configuration_llm_fusion import LLMFusionConfig
from extract_features import FeatureMetadata, dataset_name, default_features_dir, load_features
from fusion_results import RunResults, SeedResult, per_label_scores
from fusion_trainer import (
    CHECKPOINT_SELECTIONS,
    FusionTrainer,
    ProtocolCallback,
    SeedProgress,
    SeedStack,
    StoppingRule,
    keep_gradient_memory,
    load_progress,
)
from modeling_llm_fusion import LLMFusionForSequenceClassification
from publish_fusion import PublishSpec, check_shareable, format_results_table, push_to_hub, save_model_folder

logger = logging.get_logger(__name__)

METRICS_PATH = Path(__file__).resolve().parent / "metrics" / "fec_metrics"
SPLITS = ("train", "validation", "test")
PROBLEM_TYPES = ("single_label_classification", "multi_label_classification")
# The scores of the metric module, by problem type.
METRIC_KEYS = {
    "single_label_classification": ("accuracy", "weighted_f1", "macro_f1"),
    "multi_label_classification": ("micro_f1", "macro_f1"),
}
# The validation metric that keeps a checkpoint and picks the saved seed when --metric_for_best_model is "auto":
# the paper's headline metric for single-label data, the usual GoEmotions one for multi-label data.
SELECTION_METRICS = {"single_label_classification": "weighted_f1", "multi_label_classification": "macro_f1"}
# Multi-label decision thresholds tried on validation.
THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))


@dataclass
class FusionArguments:
    dataset: str = field(
        default="ED", metadata={"help": "The data set the features must come from (ED, go_emotion, ...)."}
    )
    features_dir: str | None = field(
        default=None, metadata={"help": "Folder written by extract_features.py; defaults to features/<dataset>."}
    )
    backbones: list[str] | None = field(
        default=None, metadata={"help": "Train on these backbones' features only (default: all in the folder)."}
    )
    seeds: int = field(
        default=1,
        metadata={"help": "Seeds to train (--seed, --seed + 1, ...); 5 is the paper's protocol. The seed with the "
                  "best validation score is saved."},
    )  # fmt: skip
    batch_seeds: bool = field(
        default=True,
        metadata={"help": "Train the --seeds seeds together as one batched model (one step advances every seed; each "
                  "keeps its own initialisation, data order, dropout, early stopping and checkpoint); false: one "
                  "after another."},
    )  # fmt: skip
    early_stopping_patience: int = field(
        default=10, metadata={"help": "Stop a seed after this many evaluations without improvement."}
    )
    early_stopping_metrics: list[str] = field(
        default_factory=lambda: ["auto"],
        metadata={"help": "Validation metrics whose improvement resets the patience (any of them: the original's "
                  "rule); auto: loss and weighted_f1 (single-label) or loss and macro_f1 (multi-label)."},
    )  # fmt: skip
    checkpoint_selection: str = field(
        default="best",
        metadata={"help": "best: keep the checkpoint with the best validation --metric_for_best_model; "
                  "last_improvement: the last one at which any early-stopping metric improved (what the original "
                  "code reported)."},
    )  # fmt: skip
    standardize_features: bool | None = field(
        default=None,
        metadata={"help": "Standardise each feature dimension with training-set statistics kept in the model (not in "
                  "the paper). Default: what the features' preset recorded (small: true, paper: false)."},
    )  # fmt: skip
    encoders_in_tail: bool | None = field(
        default=None,
        metadata={"help": "Also feed the encoder vectors to the MLP directly (not in the paper). Default: what the "
                  "features' preset recorded (small: true, paper: false)."},
    )  # fmt: skip
    sigma: float = field(default=1.0, metadata={"help": "Power normalisation 2*sigmoid(sigma*x)-1 (paper: 1)."})
    license: str | None = field(
        default=None, metadata={"help": "Model card license; defaults to the training data's license."}
    )


@dataclass
class FusionTrainingArguments(TrainingArguments):
    """`TrainingArguments` with the paper's protocol as defaults.

    The original used `torch.optim.Adam` with a constant learning rate and no gradient clipping. Adam is AdamW with
    weight decay 0 (the default `--weight_decay`), so the default optimizer is the paper's.
    """

    output_dir: str | None = field(
        default="outputs/llm-fusion-ed", metadata={"help": "Defaults to outputs/llm-fusion-<dataset>."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Adam learning rate (paper: 1e-4)."})
    lr_scheduler_type: SchedulerType | str = field(
        default="constant", metadata={"help": "Learning rate schedule (paper: constant)."}
    )
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping norm; 0: none (paper)."})
    per_device_train_batch_size: int = field(default=10, metadata={"help": "Batch size (paper: 10)."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    num_train_epochs: float = field(default=200, metadata={"help": "Maximum number of epochs (paper: 200)."})
    eval_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "Evaluate on validation."})
    save_strategy: SaveStrategy | str = field(default="epoch", metadata={"help": "Save a checkpoint (to resume)."})
    logging_strategy: IntervalStrategy | str = field(default="epoch", metadata={"help": "Log the training loss."})
    save_total_limit: int | None = field(
        default=1, metadata={"help": "Checkpoints kept besides the best one (for resuming)."}
    )
    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Keep the checkpoint with the best validation metric."}
    )
    restore_callback_states_from_checkpoint: bool = field(
        default=True, metadata={"help": "On resuming, restore the early-stopping count too."}
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={"help": "Keep False: the features are keyword arguments (**features) that the model's forward "
                  "signature does not list, so the Trainer would drop them."},
    )  # fmt: skip
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={"help": "Keep False on a GPU: the filter reads every step's loss back from the device, which "
                  "stalls the next step; a NaN or infinite loss then shows in the logs as it is."},
    )  # fmt: skip
    dataloader_pin_memory: bool = field(
        default_factory=torch.accelerator.is_available,
        metadata={"help": "Pin batches in memory for a fast copy to the accelerator; off where there is none."},
    )
    metric_for_best_model: str | None = field(
        default="auto",
        metadata={"help": "Validation metric that selects the checkpoint and the saved seed: loss, accuracy, "
                  "weighted_f1, macro_f1, micro_f1; auto: weighted_f1 (single-label) or macro_f1 (multi-label)."},
    )  # fmt: skip


# ---- features -> config and training data ----


def check_dataset(metadata: FeatureMetadata, dataset: str, features_dir: str | Path) -> None:
    """Raise `ValueError` if the features come from another data set than `dataset`."""
    source = metadata.dataset
    if dataset != source and dataset_name(dataset) != metadata.dataset_name:
        raise ValueError(
            f"The features in {features_dir} are from the data set {source!r}, not {dataset!r}; pass "
            f"--dataset {source} or the features folder of {dataset!r}."
        )


def build_config(metadata: FeatureMetadata, backbones: list[str] | None = None, **head) -> LLMFusionConfig:
    """The model config for the features `metadata` describes: their backbones (all, or those named in
    `backbones`, in that order), labels and problem type; the head has the paper's shape unless `head` (config
    keywords such as `sigma` or `standardize_features`) says otherwise."""
    label_names = metadata.label_names
    if not label_names:
        raise ValueError("The features have no label names: train on features extracted from a labelled data set.")
    problem_type = metadata.problem_type
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(
            f"Unknown problem_type {problem_type!r} in the features; allowed: {', '.join(PROBLEM_TYPES)}."
        )
    specs = {spec["name"]: spec for spec in metadata.backbones}
    missing = [name for name in backbones or [] if name not in specs]
    if missing:
        raise ValueError(f"The features have no backbone(s) {missing}; they hold {list(specs)}.")
    return LLMFusionConfig(
        backbones=[specs[name] for name in backbones] if backbones else list(specs.values()),
        id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)},
        problem_type=problem_type,
        **head,
    )


def _shape(feature) -> tuple[int, ...] | None:
    if isinstance(feature, Array2D):
        return tuple(feature.shape)
    if isinstance(feature, List) and feature.length not in (None, -1):
        return (feature.length,)
    return None


def _check_labels(feature, config: LLMFusionConfig, split: str) -> None:
    if config.problem_type == "multi_label_classification":
        ok = isinstance(feature, List) and feature.length == config.num_labels
        expected = f"multi-hot lists of length {config.num_labels}"
    else:
        ok = isinstance(feature, ClassLabel) or (isinstance(feature, Value) and feature.dtype.startswith("int"))
        expected = "integer label ids"
    if not ok:
        raise ValueError(f"Split {split!r}: the 'label' column is {feature}, expected {expected}.")


def training_splits(data: DatasetDict, config: LLMFusionConfig) -> DatasetDict:
    """The train/validation/test splits as the model reads them: one torch column per backbone and `labels`, read
    lazily from the memory-mapped Arrow files (nothing is copied). Raises `ValueError` naming a missing split,
    backbone or label column, or a feature width that does not match the config."""
    splits = {}
    for split in SPLITS:
        if split not in data:
            raise ValueError(f"The features have no {split!r} split; they have {list(data)}.")
        features = data[split].features
        for name, shape in config.feature_shapes.items():
            if name not in features:
                raise ValueError(
                    f"Split {split!r} has no features for backbone {name!r}; its columns are {list(features)}."
                )
            if _shape(features[name]) != shape:
                raise ValueError(
                    f"Split {split!r}: backbone {name!r} features are {features[name]}, but the config expects "
                    f"shape {shape} per text (num_layers, hidden_size in the features' metadata)."
                )
        if "label" not in features:
            raise ValueError(f"Split {split!r} has no 'label' column: the fusion head needs labelled features.")
        _check_labels(features["label"], config, split)
        columns = [*config.feature_shapes, "label"]
        splits[split] = data[split].select_columns(columns).rename_column("label", "labels").with_format("torch")
    return DatasetDict(splits)


def feature_statistics(split, config: LLMFusionConfig, chunk: int = 2048) -> dict[str, tuple[torch.Tensor, ...]]:
    """Per-dimension mean and standard deviation of each backbone's features, read chunk by chunk from the Arrow
    files (for `standardize_features`)."""
    sums = {name: (torch.zeros(shape, dtype=torch.float64),) * 2 for name, shape in config.feature_shapes.items()}
    for start in range(0, len(split), chunk):
        rows = split[start : start + chunk]
        for name, (total, squares) in sums.items():
            values = rows[name].double()
            sums[name] = (total + values.sum(0), squares + values.square().sum(0))
    statistics = {}
    for name, (total, squares) in sums.items():
        mean = total / len(split)
        statistics[name] = (mean.float(), (squares / len(split) - mean.square()).clamp_min(0).sqrt().float())
    return statistics


def check_finite(data: DatasetDict, config: LLMFusionConfig, chunk: int = 2048) -> None:
    """Raise `ValueError` naming the split, backbone and first row whose features hold a NaN or an infinity: a head
    trained on them would be NaN (and saved as if nothing happened)."""
    for split_name, split in data.items():
        for start in range(0, len(split), chunk):
            rows = split[start : start + chunk]
            for name in config.feature_shapes:
                finite = torch.isfinite(rows[name]).flatten(start_dim=1).all(dim=1)
                if not finite.all():
                    row = start + int((~finite).nonzero()[0])
                    raise ValueError(
                        f"Split {split_name!r}, backbone {name!r}, row {row}: the features hold NaN or infinite "
                        "values. Extract them again (float16 overflows above 65504: try --feature-dtype float32)."
                    )


# ---- metrics ----


def load_metric(problem_type: str) -> evaluate.EvaluationModule:
    """The repository's metric module (`metrics/fec_metrics`), loaded by path: no Hub access needed."""
    return evaluate.load(str(METRICS_PATH), config_name=problem_type)


def decide(logits: np.ndarray, problem_type: str, threshold: float) -> np.ndarray:
    """The model's decisions: the top label, or the multi-hot labels whose sigmoid score exceeds `threshold` (computed
    as the pipeline does, so that the scores here are the pipeline's)."""
    if problem_type == "multi_label_classification":
        return (torch.from_numpy(logits).float().sigmoid() > threshold).int().numpy()
    return logits.argmax(axis=-1)


def score(metric: evaluate.EvaluationModule, logits: np.ndarray, labels: np.ndarray, threshold: float) -> dict:
    problem_type = metric.config_name
    references = labels.astype(np.int32)
    return metric.compute(predictions=decide(logits, problem_type, threshold), references=references)


def choose_threshold(metric: evaluate.EvaluationModule, logits: np.ndarray, labels: np.ndarray, key: str) -> float:
    """The multi-label threshold with the best validation `key` score (ties: the one nearest 0.5)."""
    scores = {threshold: score(metric, logits, labels, threshold)[key] for threshold in THRESHOLDS}
    return max(THRESHOLDS, key=lambda t: (scores[t], -abs(t - 0.5)))


# ---- training ----


def _selection(args: TrainingArguments, problem_type: str) -> str:
    """The validation metric that selects checkpoints and seeds (`--metric_for_best_model`, "auto" resolved)."""
    metric = args.metric_for_best_model
    metric = SELECTION_METRICS[problem_type] if metric in (None, "auto") else metric.removeprefix("eval_")
    allowed = ("loss", *METRIC_KEYS[problem_type])
    if metric not in allowed:
        raise ValueError(f"--metric_for_best_model {metric!r} is not a score of {problem_type}; allowed: {allowed}.")
    return metric


def stopping_metrics(args: FusionArguments, problem_type: str) -> list[str]:
    """The validation metrics whose improvement resets the patience ("auto": loss and the data's headline score, the
    original's rule)."""
    metrics = args.early_stopping_metrics or ["auto"]
    if metrics == ["auto"]:
        return ["loss", SELECTION_METRICS[problem_type]]
    allowed = ("loss", *METRIC_KEYS[problem_type])
    unknown = [metric for metric in metrics if metric not in allowed]
    if unknown:
        raise ValueError(f"--early_stopping_metrics {unknown} are not scores of {problem_type}; allowed: {allowed}.")
    return list(dict.fromkeys(metrics))


@dataclass
class Protocol:
    """How each seed is stopped and which checkpoint it keeps (the arguments, resolved for the data's problem)."""

    metrics: list[str]
    patience: int
    selection: str
    checkpoint_selection: str

    def rule(self) -> StoppingRule:
        return StoppingRule(self.metrics, self.patience, self.selection, self.checkpoint_selection)


def build_model(config: LLMFusionConfig, seed: int, statistics: dict | None) -> LLMFusionForSequenceClassification:
    """A freshly initialised head for `seed` (the same weights whether the seed trains alone or beside others)."""
    set_seed(seed)
    model = LLMFusionForSequenceClassification(config)
    if config.standardize_features:
        model.set_feature_statistics(statistics)
    return model


def group_folder(runs_dir: Path, seeds: list[int]) -> Path:
    """Where seeds trained together keep their checkpoints: `seed-N` for one seed, `seeds-N-M-...` for several."""
    return runs_dir / (f"seed-{seeds[0]}" if len(seeds) == 1 else "seeds-" + "-".join(map(str, seeds)))


def train_seeds(
    config: LLMFusionConfig,
    data: DatasetDict,
    args: TrainingArguments,
    seeds: list[int],
    runs_dir: Path,
    protocol: Protocol,
    resume_from_checkpoint: str | None = None,
    statistics: dict | None = None,
) -> list[SeedResult]:
    """Train `seeds` with `Trainer`: one model for one seed, one `SeedStack` for several (one step advances them
    all). Each seed follows `protocol` on its own (own stopping, own kept checkpoint in `runs_dir/seed-N/kept`), then
    is finished by `finish_seed`. Checkpoints to resume from are written to `runs_dir/<group>/checkpoint-*`."""
    models = [build_model(config, seed, statistics) for seed in seeds]
    model = models[0] if len(seeds) == 1 else SeedStack(models)
    group_dir = group_folder(runs_dir, seeds)
    metric = load_metric(config.problem_type)
    scratch = LLMFusionForSequenceClassification(config)  # a single seed's weights, to save them

    def keep(seed: int) -> None:
        kept = model if model is models[0] else scratch
        if kept is scratch:
            scratch.load_state_dict(model.seed_state_dict(seeds.index(seed)))
        kept.save_pretrained(runs_dir / f"seed-{seed}" / "kept")

    if len(seeds) == 1:

        def compute_metrics(prediction: EvalPrediction) -> dict:
            return score(metric, prediction.predictions, prediction.label_ids, config.threshold)

        def seed_scores(metrics: dict, seed: int) -> dict[str, float]:
            keys = ("loss", *METRIC_KEYS[config.problem_type])
            return {key: metrics[f"eval_{key}"] for key in keys}

    else:

        def compute_metrics(prediction: EvalPrediction) -> dict:
            logits, labels = prediction.predictions, prediction.label_ids  # logits: (rows, seeds, labels)
            out = {}
            for index, seed in enumerate(seeds):
                scores = score(metric, logits[:, index], labels, config.threshold)
                scores["loss"] = validation_loss(logits[:, index], labels, config.problem_type)
                out.update({f"seed{seed}_{key}": value for key, value in scores.items()})
            return out

        def seed_scores(metrics: dict, seed: int) -> dict[str, float]:
            prefix = f"eval_seed{seed}_"
            return {key.removeprefix(prefix): value for key, value in metrics.items() if key.startswith(prefix)}

    progress = load_progress(resume_from_checkpoint, {seed: protocol.rule() for seed in seeds})
    callback = ProtocolCallback(
        progress, seed_scores, keep, model.pop_train_losses if isinstance(model, SeedStack) else lambda: None
    )
    group_args = dataclasses.replace(
        args, output_dir=str(group_dir), seed=seeds[0], metric_for_best_model=None, load_best_model_at_end=False,
        push_to_hub=False,
    )  # fmt: skip
    trainer = FusionTrainer(
        model=model, args=group_args, train_dataset=data["train"], eval_dataset=data["validation"],
        compute_metrics=compute_metrics, callbacks=[callback], seeds=seeds,
    )  # fmt: skip
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    training_time = time.perf_counter() - start
    results = []
    for seed in seeds:
        if progress[seed].kept_epoch is None:
            keep(seed)  # no evaluation ran (e.g. --max_steps shorter than an epoch): the last weights are kept
        results.append(finish_seed(config, data, args, seed, runs_dir / f"seed-{seed}", progress[seed], seeds,
                                   training_time))  # fmt: skip
    if group_dir.exists() and group_dir != runs_dir / f"seed-{seeds[0]}":
        shutil.rmtree(group_dir)  # its checkpoints only served to resume; every seed has its own folder now
    return results


def validation_loss(logits: np.ndarray, labels: np.ndarray, problem_type: str) -> float:
    """The loss the model trains on, averaged over rows (what `Trainer` reports as eval_loss for one model)."""
    logits = torch.from_numpy(logits).float()
    if problem_type == "multi_label_classification":
        return nn.functional.binary_cross_entropy_with_logits(logits, torch.from_numpy(labels).float()).item()
    return nn.functional.cross_entropy(logits, torch.from_numpy(labels).long()).item()


def finish_seed(
    config: LLMFusionConfig,
    data: DatasetDict,
    args: TrainingArguments,
    seed: int,
    run_dir: Path,
    progress: SeedProgress,
    trained_with: list[int],
    training_time: float,
) -> SeedResult:
    """Load the seed's kept checkpoint, choose the multi-label threshold on validation, score the test split once,
    save the model to `run_dir/model` and its result to `run_dir/result.json`."""
    start = time.perf_counter()
    model = LLMFusionForSequenceClassification.from_pretrained(run_dir / "kept", dtype=torch.float32)
    predict_args = dataclasses.replace(
        args, output_dir=str(run_dir), eval_strategy="no", save_strategy="no", push_to_hub=False, report_to="none",
        load_best_model_at_end=False, metric_for_best_model=None,
    )  # fmt: skip
    trainer = FusionTrainer(model=model, args=predict_args, seeds=[seed])
    metric = load_metric(config.problem_type)
    validation = trainer.predict(data["validation"], metric_key_prefix="eval")
    multi_label = config.problem_type == "multi_label_classification"
    if multi_label:
        selection = progress.rule.selection
        key = SELECTION_METRICS[config.problem_type] if selection == "loss" else selection
        model.config.threshold = choose_threshold(metric, validation.predictions, validation.label_ids, key)
    threshold = model.config.threshold
    test = trainer.predict(data["test"])
    decisions = decide(test.predictions, config.problem_type, threshold)
    label_names = [config.id2label[i] for i in range(config.num_labels)]
    per_label, confusion = per_label_scores(decisions, test.label_ids, label_names)
    result = SeedResult(
        seed=seed,
        epochs=progress.history[-1].epoch if progress.history else 0,
        best_epoch=progress.kept_epoch,
        wall_time_s=round(training_time + time.perf_counter() - start, 1),
        threshold=threshold if multi_label else None,
        validation={
            **score(metric, validation.predictions, validation.label_ids, threshold),
            "loss": validation.metrics["eval_loss"],
        },
        test=score(metric, test.predictions, test.label_ids, threshold),
        history=progress.history,
        per_label=per_label,
        confusion=confusion,
        trained_with=list(trained_with),
    )
    model.save_pretrained(run_dir / "model")
    # The checkpoints only served to resume this seed; its kept model and result are all that is needed now.
    for checkpoint in [*run_dir.glob("checkpoint-*"), run_dir / "kept"]:
        shutil.rmtree(checkpoint)
    result.save(run_dir / "result.json")
    return result


def best_run(runs: list[SeedResult], selection: str) -> SeedResult:
    """The run with the best validation `selection` score (the first on ties); the test split plays no part."""
    return max(runs, key=lambda run: run.validation[selection] * (-1 if selection == "loss" else 1))


def train(args: FusionArguments, training_args: TrainingArguments) -> RunResults:
    """Train `args.seeds` seeds on the features, save the best seed's model with its card in
    `training_args.output_dir` (and push it with `--push_to_hub`), and return the results (also in results.json).

    The seeds train together as one batched model (`--batch_seeds`, the default) or one after another. With
    `training_args.resume_from_checkpoint` set, finished seeds (their `runs/seed-N/result.json`) are reused and the
    interrupted ones continue from their last checkpoint, or from the checkpoint folder given.
    """
    if args.seeds < 1:
        raise ValueError(f"--seeds must be at least 1, got {args.seeds}.")
    features_dir = args.features_dir or default_features_dir(args.dataset)
    data, metadata = load_features(features_dir)
    check_dataset(metadata, args.dataset, features_dir)
    preset_head = metadata.head or {}
    head = {"sigma": args.sigma}
    for option in ("standardize_features", "encoders_in_tail"):
        value = getattr(args, option)
        head[option] = bool(preset_head.get(option, False)) if value is None else value
    config = build_config(metadata, args.backbones, **head)
    data = training_splits(data, config)
    check_finite(data, config)
    statistics = feature_statistics(data["train"], config) if config.standardize_features else None
    selection = _selection(training_args, config.problem_type)
    if args.checkpoint_selection not in CHECKPOINT_SELECTIONS:
        raise ValueError(
            f"--checkpoint_selection {args.checkpoint_selection!r}; allowed: {', '.join(CHECKPOINT_SELECTIONS)}."
        )
    protocol = Protocol(
        stopping_metrics(args, config.problem_type), args.early_stopping_patience, selection, args.checkpoint_selection
    )
    if training_args.push_to_hub:
        check_shareable(config)  # before hours of training, not after
    output_dir = Path(training_args.output_dir)
    runs_dir = output_dir / "runs"
    resume = training_args.resume_from_checkpoint
    given_checkpoint = resume if resume and Path(resume).is_dir() else None
    if resume and not given_checkpoint and resume.lower() != "true":
        raise ValueError(f"--resume_from_checkpoint {resume!r} is neither 'true' nor a checkpoint folder.")
    seeds = list(range(training_args.seed, training_args.seed + args.seeds))
    finished = {seed: SeedResult.load(runs_dir / f"seed-{seed}" / "result.json") for seed in seeds
                if resume and (runs_dir / f"seed-{seed}" / "result.json").exists()}  # fmt: skip
    if finished:
        logger.info(f"Seeds {sorted(finished)} finished earlier: reusing their results.")
    pending = [seed for seed in seeds if seed not in finished]
    groups = [pending] if args.batch_seeds and pending else [[seed] for seed in pending]
    if not resume and runs_dir.exists():
        shutil.rmtree(runs_dir)  # a fresh run must not pick up another run's checkpoints
    for group in groups:
        group_dir = group_folder(runs_dir, group)
        checkpoint = None
        if resume:
            checkpoint = given_checkpoint or (get_last_checkpoint(group_dir) if group_dir.is_dir() else None)
            given_checkpoint = None  # a checkpoint folder given serves the first unfinished group only
        logger.info(f"Training seeds {group}" + (f", resuming from {checkpoint}" if checkpoint else "") + ".")
        for result in train_seeds(config, data, training_args, group, runs_dir, protocol, checkpoint, statistics):
            finished[result.seed] = result
    runs = [finished[seed] for seed in seeds]
    results = RunResults(
        dataset=metadata.dataset_name,
        problem_type=config.problem_type,
        selection_metric=selection,
        early_stopping_metrics=protocol.metrics,
        checkpoint_selection=protocol.checkpoint_selection,
        best_seed=best_run(runs, selection).seed,
        runs=runs,
    )
    model = LLMFusionForSequenceClassification.from_pretrained(
        runs_dir / f"seed-{results.best_seed}" / "model", dtype=torch.float32
    )
    publish = PublishSpec(
        results=results,
        training_args=training_args,
        dataset_name=metadata.dataset_name,  # the publishable name, never a local folder
        early_stopping_patience=args.early_stopping_patience,
        license=args.license,
        feature_dtype=metadata.feature_dtype,
    )
    written = save_model_folder(model, output_dir, publish)
    if training_args.push_to_hub:
        push_to_hub(
            output_dir,
            written,
            training_args.hub_model_id or output_dir.name,
            token=training_args.hub_token,
            private=training_args.hub_private_repo,
        )
    return results


def parse_args(argv: list[str] | None = None) -> tuple[FusionArguments, FusionTrainingArguments]:
    parser = HfArgumentParser((FusionArguments, FusionTrainingArguments))
    # --features-dir and --output-dir default to the data set --dataset names.
    dataset = parser.parse_known_args(argv)[0].dataset
    parser.set_defaults(
        features_dir=str(default_features_dir(dataset)),
        output_dir=f"outputs/llm-fusion-{dataset.lower().replace('_', '-')}",
    )
    return parser.parse_args_into_dataclasses(args=argv)


def main(argv: list[str] | None = None) -> RunResults:
    args, training_args = parse_args(argv)
    keep_gradient_memory()
    logging.set_verbosity_info()
    logging.enable_explicit_format()
    results = train(args, training_args)
    print(format_results_table(results))
    print(f"Saved seed {results.best_seed} (best validation {results.selection_metric}) to {training_args.output_dir}")
    return results


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")
