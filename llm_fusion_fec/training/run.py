"""Training a run: the seeds on saved features, each scored once on test, the best seed (or the seeds' ensemble)
saved with its card and pushed; what `fec train` does.

    from llm_fusion_fec import train

    results = train(dataset="ED", seeds=5, ensemble=True)  # features/ED -> outputs/llm-fusion-ed
"""

from __future__ import annotations

import copy
import dataclasses
import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import evaluate
import numpy as np
import torch
from datasets import DatasetDict
from transformers import PreTrainedModel, PrinterCallback, ProgressCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from configuration_llm_fusion import LLMFusionConfig
from llm_fusion_fec.arguments import DEFAULT_DATASET, FusionArguments, ProtocolArguments
from llm_fusion_fec.data.splits import build_config, check_dataset, check_finite, feature_statistics, training_splits
from llm_fusion_fec.evaluation.metrics import (
    SELECTION_METRICS,
    choose_threshold,
    load_metric,
    score,
    selection_metric,
    stopping_metrics,
    validation_loss,
)
from llm_fusion_fec.evaluation.results import EnsembleResult, RunResults, SeedResult, best_seed, per_label_scores
from llm_fusion_fec.features.metadata import (
    FeatureMetadata,
    default_features_dir,
    default_output_dir,
    load_features,
    locate_features,
    read_metadata,
)
from llm_fusion_fec.inference.loading import load_model
from llm_fusion_fec.publishing.card import FusionModelCardData
from llm_fusion_fec.publishing.hub import push_to_hub
from llm_fusion_fec.publishing.paths import check_hub_model_id, check_shareable
from llm_fusion_fec.publishing.saving import RUNS_DIR, check_output_folder, save_model_folder
from llm_fusion_fec.training.protocols import protocol_name, recipe
from llm_fusion_fec.training.trainer import (
    CHECKPOINT_SELECTIONS,
    FusionTrainer,
    ProtocolCallback,
    SeedProgress,
    SeedStack,
    StoppingRule,
    TrainingReport,
    build_model,
    check_run,
    group_folder,
    load_progress,
    per_seed_metrics,
    protocol_arguments,
)
from modeling_llm_fusion import LLMFusionEnsembleForSequenceClassification

logger = logging.get_logger(__name__)


@dataclass
class FusionTrainingArguments(ProtocolArguments, TrainingArguments):
    """`TrainingArguments` with the paper's protocol as defaults (`ProtocolArguments`), and the settings this head
    needs from `Trainer`."""

    load_best_model_at_end: bool = field(
        default=True, metadata={"help": "Keep the checkpoint with the best validation metric."}
    )
    restore_callback_states_from_checkpoint: bool = field(
        default=True, metadata={"help": "On resuming, restore the early-stopping count too."}
    )
    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Keep False: the features are keyword arguments (**features) that the model's forward "
            "signature does not list, so the Trainer would drop them."
        },
    )
    logging_nan_inf_filter: bool = field(
        default=False,
        metadata={
            "help": "Keep False on a GPU: the filter reads every step's loss back from the device, which "
            "stalls the next step; a NaN or infinite loss then shows in the logs as it is."
        },
    )
    dataloader_pin_memory: bool = field(
        default_factory=torch.accelerator.is_available,
        metadata={"help": "Pin batches in memory for a fast copy to the accelerator; off where there is none."},
    )


# ---- training ----


def train_seeds(
    setup: Setup,
    args: TrainingArguments,
    seeds: list[int],
    runs_dir: Path,
    checkpoint: str | None = None,
    numbers: dict[int, tuple[int, int]] | None = None,
) -> list[SeedResult]:
    """Train `seeds` with `Trainer`: one model for one seed, one `SeedStack` for several (one step advances them
    all). Each seed follows the protocol on its own (own stopping, own kept checkpoint in `runs_dir/seed-N/kept`),
    then `finish_seed` scores it. Checkpoints to resume from go to `group_folder(runs_dir, seeds)`."""
    config = setup.config
    models = [build_model(config, seed, setup.statistics) for seed in seeds]
    metric = load_metric(config.problem_type)

    def scores(logits: np.ndarray, labels: np.ndarray) -> dict[str, float]:
        loss = validation_loss(logits, labels, config.problem_type)
        if config.problem_type != "multi_label_classification":
            return {**score(metric, logits, labels, config.threshold), "loss": loss}
        threshold, at_threshold = validation_threshold(setup, metric, logits, labels)
        return {**at_threshold, "threshold": threshold, "loss": loss}

    trainer = FusionTrainer(
        model=models[0] if len(seeds) == 1 else SeedStack(models),
        train_dataset=setup.data["train"],
        args=protocol_arguments(args, group_folder(runs_dir, seeds), seeds[0]),
        eval_dataset=setup.data["validation"],
        compute_metrics=per_seed_metrics(seeds, scores),
        seeds=seeds,
    )
    progress = load_progress(checkpoint, {seed: copy.deepcopy(setup.rule) for seed in seeds})

    def keep(seed: int) -> None:
        trainer.seed_model(seed).save_pretrained(runs_dir / f"seed-{seed}" / "kept")

    trainer.add_callback(ProtocolCallback(progress, keep))
    # One line per seed and evaluation and a bar bounded by the stopping rule, instead of a dict per log.
    trainer.remove_callback(ProgressCallback)
    trainer.remove_callback(PrinterCallback)
    trainer.add_callback(
        TrainingReport(progress, numbers or {seed: (i + 1, len(seeds)) for i, seed in enumerate(seeds)})
    )
    start = time.perf_counter()
    trainer.train(resume_from_checkpoint=checkpoint)
    training_time = time.perf_counter() - start
    for seed in seeds:
        if progress[seed].kept_epoch is None:
            keep(seed)  # no evaluation ran (e.g. --max_steps shorter than an epoch): the last weights are kept
    results = [
        finish_seed(setup, args, metric, runs_dir / f"seed-{seed}", progress[seed], seeds, training_time)
        for seed in seeds
    ]
    if len(seeds) > 1:
        shutil.rmtree(group_folder(runs_dir, seeds), ignore_errors=True)  # every seed has its own folder now
    return results


def validation_threshold(
    setup: Setup, metric: evaluate.EvaluationModule, logits: np.ndarray, labels: np.ndarray
) -> tuple[float, dict]:
    """The multi-label decision threshold best on these validation rows by the selection metric (by the data's
    headline score when checkpoints are selected by loss), and the scores at it. Chosen at every evaluation, so the
    scores that stop a run and keep its checkpoint are those of the model as it will decide, and again for the kept
    checkpoint."""
    selection = setup.rule.selection
    key = SELECTION_METRICS[setup.config.problem_type] if selection == "loss" else selection
    return choose_threshold(metric, logits, labels, key)


def score_kept(
    setup: Setup,
    args: TrainingArguments,
    metric: evaluate.EvaluationModule,
    model: PreTrainedModel,
    run_dir: Path,
    seed: int,
) -> dict:
    """Score a trained model once: choose the multi-label threshold on validation (set in its config), then score
    validation and test. Returns `threshold`, `validation`, `test`, `per_label` and `confusion` (the result fields)."""
    config = setup.config
    predict_args = dataclasses.replace(
        protocol_arguments(args, run_dir, seed), eval_strategy="no", save_strategy="no", disable_tqdm=True
    )
    trainer = FusionTrainer(model=model, args=predict_args, seeds=[seed])
    validation = trainer.predict(setup.data["validation"], metric_key_prefix="eval")
    multi_label = config.problem_type == "multi_label_classification"
    if multi_label:  # the threshold is chosen on validation, and its validation scores come with it
        model.config.threshold, at_threshold = validation_threshold(
            setup, metric, validation.predictions, validation.label_ids
        )
    else:
        at_threshold = score(metric, validation.predictions, validation.label_ids, model.config.threshold)
    threshold = model.config.threshold
    test = trainer.predict(setup.data["test"])
    decisions = model.decide(torch.from_numpy(test.predictions)).numpy()
    per_label, confusion = per_label_scores(decisions, test.label_ids, [config.id2label[i] for i in config.id2label])
    return {
        "threshold": threshold if multi_label else None,
        "validation": {**at_threshold, "loss": validation.metrics["eval_loss"]},
        "test": score(metric, test.predictions, test.label_ids, threshold),
        "per_label": per_label,
        "confusion": confusion,
    }


def finish_seed(
    setup: Setup,
    args: TrainingArguments,
    metric: evaluate.EvaluationModule,
    run_dir: Path,
    progress: SeedProgress,
    trained_with: list[int],
    training_time: float,
) -> SeedResult:
    """Load the seed's kept checkpoint, score it once (`score_kept`), save the model to `run_dir/model` and its
    result to `run_dir/result.json`."""
    start, seed = time.perf_counter(), int(run_dir.name.removeprefix("seed-"))
    model = load_model(run_dir / "kept", dtype=torch.float32)
    scores = score_kept(setup, args, metric, model, run_dir, seed)
    result = SeedResult(
        seed=seed,
        epochs=progress.history[-1].epoch if progress.history else 0,
        best_epoch=progress.kept_epoch,
        wall_time_s=round(training_time + time.perf_counter() - start, 1),
        history=progress.history,
        trained_with=list(trained_with),
        **scores,
    )
    model.save_pretrained(run_dir / "model")
    # The checkpoints only served to resume this seed; its kept model and result are all that is needed now.
    for checkpoint in [*run_dir.glob("checkpoint-*"), run_dir / "kept"]:
        shutil.rmtree(checkpoint)
    result.save(run_dir / "result.json")
    return result


def ensemble_of(
    setup: Setup, args: TrainingArguments, runs_dir: Path, seeds: list[int]
) -> tuple[PreTrainedModel, EnsembleResult]:
    """The seed ensemble of the run's seeds (their saved models), scored once as one model (`score_kept`)."""
    members = [load_model(runs_dir / f"seed-{seed}" / "model", dtype=torch.float32) for seed in seeds]
    ensemble = LLMFusionEnsembleForSequenceClassification.from_members(members)
    scores = score_kept(setup, args, load_metric(setup.config.problem_type), ensemble, runs_dir, seeds[0])
    return ensemble, EnsembleResult(members=seeds, **scores)


@dataclass
class Setup:
    """What every seed of a run trains on: the config, the training splits, their statistics and the stopping rule."""

    metadata: FeatureMetadata
    config: LLMFusionConfig
    data: DatasetDict
    statistics: dict | None
    rule: StoppingRule  # every seed starts from a copy
    examples: tuple[str, ...] = ()  # validation texts for the card (`validation_examples`)


def prepare(args: FusionArguments, training_args: TrainingArguments) -> Setup:
    """Read and check the features, build the config (the head options the features' preset recorded, unless a
    flag says otherwise) and resolve the protocol; every refusal happens here, before any training."""
    minimum = 2 if args.ensemble else 1
    if args.seeds < minimum:
        raise ValueError(
            f"--seeds must be at least {minimum}{' for --ensemble' if args.ensemble else ''}, got {args.seeds}."
        )
    features_dir = args.features_dir or default_features_dir(args.dataset)
    data, metadata = load_features(features_dir)
    check_dataset(metadata, args.dataset, features_dir)
    head = {"sigma": args.sigma}
    for option in ("standardize_features", "encoders_in_tail"):
        value = getattr(args, option)
        head[option] = bool((metadata.head or {}).get(option, False)) if value is None else value
    if metadata.choice:  # how --choose chose the features: the card reports it
        head["feature_choice"] = metadata.choice
    config = build_config(metadata, args.backbones, **head, training_protocol=args.protocol)
    features, data = data, training_splits(data, config)
    examples = validation_examples(features["validation"].select_columns(["text", "label"]))
    check_finite(data, config)
    selection = selection_metric(training_args.metric_for_best_model, config.problem_type)
    if args.checkpoint_selection not in CHECKPOINT_SELECTIONS:
        raise ValueError(
            f"--checkpoint_selection {args.checkpoint_selection!r}; allowed: {', '.join(CHECKPOINT_SELECTIONS)}."
        )
    metrics = stopping_metrics(args.early_stopping_metrics, config.problem_type)
    rule = StoppingRule(metrics, args.early_stopping_patience, selection, args.checkpoint_selection)
    if training_args.push_to_hub:
        check_shareable(config)  # before hours of training, not after
    statistics = feature_statistics(data["train"], config) if config.standardize_features else None
    return Setup(metadata, config, data, statistics, rule, examples)


def train(
    args: FusionArguments | None = None, training_args: TrainingArguments | None = None, **options
) -> RunResults:
    """Train a run on saved features, save its model with the card and return its results: what `fec train` does.

        from llm_fusion_fec import train

        results = train(dataset="ED", seeds=5, ensemble=True, output_dir="outputs/ed")
        print(results.ensemble.test_metrics)

    Args:
        args (`FusionArguments`, *optional*):
            The run's arguments (data set, features, seeds, head options); defaults to `FusionArguments()`.
        training_args (`TrainingArguments`, *optional*):
            Defaults to `FusionTrainingArguments`: the paper's protocol.
        options:
            Fields of either that replace their values (`seeds=5`, `learning_rate=3e-4`, ...).
    """
    args, training_args = training_arguments_of(args, training_args, options)
    return run_training(args, training_args)


def training_arguments_of(
    args: FusionArguments | None,
    training_args: TrainingArguments | None,
    options: dict,
    given: set[str] | None = None,
) -> tuple[FusionArguments, TrainingArguments]:
    """The arguments with `options` applied to the dataclass each belongs to, the training recipe applied where the
    user set nothing (`given`: the options the user set, by default all of `options`; a `training_args` given is
    taken as it is), `args.protocol` resolved (`auto`: the features' preset's) and the folders a run defaults to
    (`features/<dataset name>`, `outputs/llm-fusion-<dataset name>`) filled in; an unknown option is refused."""
    fusion = {spec.name for spec in dataclasses.fields(FusionArguments)}
    training = {spec.name for spec in dataclasses.fields(FusionTrainingArguments) if spec.init}
    if unknown := sorted(set(options) - fusion - training):
        raise ValueError(
            f"Unknown training option {', '.join(unknown)}: not a field of FusionArguments or TrainingArguments."
        )
    given = set(options) if given is None else given
    args = dataclasses.replace(args or FusionArguments(), **{k: v for k, v in options.items() if k in fusion})
    if args.features_dir is None:
        args.features_dir = str(default_features_dir(args.dataset or DEFAULT_DATASET))
    else:
        args.features_dir = locate_features(args.features_dir)  # a Hub dataset id: its local copy
    metadata = features_metadata(args.features_dir)
    if args.dataset is None:  # the features' own data set
        args.dataset = metadata.dataset if metadata else DEFAULT_DATASET
    args.protocol = protocol_name(args.protocol, metadata.protocol if metadata else None)
    changes = {k: v for k, v in options.items() if k in training}
    if training_args is None:
        changes.setdefault("output_dir", str(default_output_dir(args.dataset)))
        train_rows, problem_type = (metadata.rows.get("train"), metadata.problem_type) if metadata else (None, None)
        values = {k: v for k, v in recipe(args.protocol, train_rows, problem_type).items() if k not in given}
        training_args = FusionTrainingArguments(**{**changes, **values})
    elif changes:
        training_args = dataclasses.replace(training_args, **changes)
    check_hub_model_id(training_args)
    return args, training_args


def features_metadata(features_dir: str) -> FeatureMetadata | None:
    """The features' metadata, for the recipe their preset recorded and the size of their training split; None where
    the folder is no features folder (`prepare` then refuses it with its own message)."""
    try:
        return read_metadata(features_dir)
    except ValueError:
        return None


def run_training(args: FusionArguments, training_args: TrainingArguments) -> RunResults:
    """Train `args.seeds` seeds on the features, save the best seed's model with its card in
    `training_args.output_dir` (and push it with `--push_to_hub`), and return the results (also in results.json).

    The seeds train together as one batched model or one after another (`trains_together`). With
    `training_args.resume_from_checkpoint` set, finished seeds (their `runs/seed-N/result.json`) are reused and the
    interrupted ones continue from their last checkpoint, or from the checkpoint folder given.
    """
    setup = prepare(args, training_args)
    output_dir, resume = Path(training_args.output_dir), training_args.resume_from_checkpoint
    runs_dir = output_dir / RUNS_DIR
    given_checkpoint = resume if resume and Path(resume).is_dir() else None
    if resume and not given_checkpoint and resume.lower() != "true":
        raise ValueError(f"--resume_from_checkpoint {resume!r} is neither 'true' nor a checkpoint folder.")
    check_output_folder(output_dir, args.overwrite_output_dir or bool(resume))
    check_run(runs_dir, run_signature(setup, args, training_args), bool(resume))
    seeds = list(range(training_args.seed, training_args.seed + args.seeds))
    finished = {
        seed: SeedResult.load(runs_dir / f"seed-{seed}" / "result.json")
        for seed in seeds
        if (runs_dir / f"seed-{seed}" / "result.json").exists()
    }
    pending = [seed for seed in seeds if seed not in finished]
    for group in [pending] if trains_together(args) and pending else [[seed] for seed in pending]:
        checkpoint = None
        if resume:
            group_dir = group_folder(runs_dir, group)
            checkpoint = given_checkpoint or (get_last_checkpoint(group_dir) if group_dir.is_dir() else None)
            given_checkpoint = None  # a checkpoint folder given serves the first unfinished group only
        logger.info(f"Training seeds {group}" + (f", resuming from {checkpoint}" if checkpoint else "") + ".")
        numbers = {seed: (seeds.index(seed) + 1, len(seeds)) for seed in group}
        for result in train_seeds(setup, training_args, group, runs_dir, checkpoint, numbers):
            finished[result.seed] = result
            report_seed(result, numbers[result.seed], setup.rule.selection)
    runs, rule = [finished[seed] for seed in seeds], setup.rule
    results = RunResults(
        dataset=setup.metadata.dataset_name,
        problem_type=setup.config.problem_type,
        selection_metric=rule.selection,
        early_stopping_metrics=rule.metrics,
        checkpoint_selection=rule.checkpoint_selection,
        best_seed=best_seed(runs, rule.selection),
        protocol=args.protocol,
        runs=runs,
    )
    if args.ensemble:
        model, results.ensemble = ensemble_of(setup, training_args, runs_dir, seeds)
        print(f"ensemble of seeds {seeds}: test {scores_line(results.ensemble.test)}", file=sys.stderr)
    else:
        model = load_model(runs_dir / f"seed-{results.best_seed}" / "model", dtype=torch.float32)
    publish = FusionModelCardData(
        examples=setup.examples,
        results=results,
        training_args=training_args,
        dataset_name=setup.metadata.dataset_name,
        early_stopping_patience=args.early_stopping_patience,
        license=args.license,
        feature_dtype=setup.metadata.feature_dtype,
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


def validation_examples(split, count: int = 4) -> tuple[str, ...]:
    """Texts of the validation split for the card's widget and snippet: the first of each label in row order (of
    each label set, for multi-label data), between 20 and 200 characters, at most `count`."""
    examples, seen = [], set()
    for text, label in zip(split["text"], split["label"], strict=True):
        key = tuple(label) if isinstance(label, list) else label
        if key not in seen and 20 <= len(text.strip()) <= 200:
            seen.add(key)
            examples.append(text)
            if len(examples) == count:
                break
    return tuple(examples)


def report_seed(result: SeedResult, number: tuple[int, int], selection: str) -> None:
    """The line that ends a seed: how long it ran, the epoch it kept, its test scores."""
    kept = f"kept epoch {result.best_epoch:g}" if result.best_epoch is not None else "kept its last weights"
    print(
        f"seed {number[0]}/{number[1]} ({result.seed}) done: {result.epochs:g} epochs in {result.wall_time_s:.0f} s, "
        f"{kept} (best validation {selection}); test {scores_line(result.test)}",
        file=sys.stderr,
    )


def scores_line(scores: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in scores.items() if name != "loss")


def trains_together(args: FusionArguments) -> bool:
    """Whether the seeds train as one batched model: `--batch_seeds`, by default on an accelerator only."""
    return torch.accelerator.is_available() if args.batch_seeds is None else args.batch_seeds


def run_signature(setup: Setup, args: FusionArguments, training_args: TrainingArguments) -> dict:
    """Everything a run's seeds depend on: a run resumed with anything else would mix two runs' results."""
    keys = (
        "learning_rate",
        "weight_decay",
        "per_device_train_batch_size",
        "num_train_epochs",
        "max_steps",
        "lr_scheduler_type",
        "max_grad_norm",
        "optim",
    )
    head = {
        key: getattr(setup.config, key)
        for key in ("fusion_dim", "sigma", "dropout", "mlp_dims", "standardize_features", "encoders_in_tail")
    }
    multi_label = setup.config.problem_type == "multi_label_classification"
    return json.loads(
        json.dumps(
            {
                "features": {
                    "dataset": setup.metadata.dataset_name,
                    "labels": setup.metadata.label_names,
                    "backbones": setup.config.backbones,
                    "columns": setup.metadata.column_keys,
                },
                "head": head,
                "protocol": dataclasses.asdict(setup.rule),
                "recipe": args.protocol,
                "batch_seeds": trains_together(args),
                # Multi-label evaluations were once scored at 0.5: a run begun then must not resume under this rule.
                "multi_label_threshold": "each evaluation" if multi_label else None,
                "training": {key: getattr(training_args, key) for key in keys},
            },
            default=str,
        )
    )
