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
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple, Protocol

import evaluate
import numpy as np
import torch
from datasets import DatasetDict
from transformers import PreTrainedModel, PrinterCallback, ProgressCallback, TrainingArguments
from transformers.trainer_utils import get_last_checkpoint
from transformers.utils import logging

from configuration_llm_fusion import LLMFusionConfig
from llm_fusion_fec.arguments import DEFAULT_DATASET, FusionArguments, ProtocolArguments
from llm_fusion_fec.data.splits import (
    build_config,
    check_classes,
    check_dataset,
    check_finite,
    feature_statistics,
    training_splits,
)
from llm_fusion_fec.evaluation.baseline import (
    EmptyVocabulary,
    baseline_notice,
    fit_bag_of_words,
    labelled_texts,
    score_bag_of_words,
)
from llm_fusion_fec.evaluation.calibration import calibration_of, choose_temperature, threshold_at_temperature
from llm_fusion_fec.evaluation.metrics import (
    SELECTION_METRICS,
    choose_threshold,
    load_metric,
    score,
    selection_metric,
    stopping_metrics,
    validation_loss,
)
from llm_fusion_fec.evaluation.results import (
    BaselineResult,
    CheckpointScores,
    EnsembleResult,
    RunResults,
    SeedResult,
    per_label_scores,
)
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
    SAMPLING_STRATEGIES,
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
from modeling_llm_fusion import LLMFusionEnsembleForSequenceClassification, LLMFusionForSequenceClassification

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
    train_sampling_strategy: str = field(
        default="random",
        metadata={
            "help": "random (each seed's own order), or group_by_length: batches of texts of like length, so that "
            "token views are padded less (as transformers' LengthGroupedSampler groups them).",
        },
    )

    def __post_init__(self):
        if self.train_sampling_strategy not in SAMPLING_STRATEGIES:
            raise ValueError(
                f"--train_sampling_strategy {self.train_sampling_strategy!r}: the fusion head's trainer reads "
                f"{' or '.join(SAMPLING_STRATEGIES)}."
            )
        super().__post_init__()


# ---- training ----


class KeptWeights:
    """Each seed's kept checkpoint, held in memory: a model on the CPU per seed, whose weights each keep overwrites
    (`keep`), written to `runs_dir/seed-N/kept` only when `Trainer` saves a checkpoint (`save`), so that a run resumed
    from that checkpoint finds the weights its stopping rules kept. A finished seed's model comes from memory
    (`model`), and from that folder only where an earlier process kept it.

    Args:
        trainer (`FusionTrainer`): The trainer of the seeds (`seed_model` gives a seed's current weights).
        runs_dir (`Path`): The run's `runs/` folder.
    """

    def __init__(self, trainer: FusionTrainer, runs_dir: Path):
        self.trainer, self.runs_dir = trainer, runs_dir
        self.models: dict[int, LLMFusionForSequenceClassification] = {}
        self.unsaved: set[int] = set()

    def folder(self, seed: int) -> Path:
        return self.runs_dir / f"seed-{seed}" / "kept"

    def keep(self, seed: int) -> None:
        """Keep `seed`'s current weights (a copy: training goes on)."""
        current = self.trainer.seed_model(seed)
        if seed in self.models:
            self.models[seed].load_state_dict(current.state_dict())
        else:
            # Built without initialising weights it would overwrite: an initialisation would draw from the random
            # generator that training goes on drawing dropout masks from.
            with torch.device("meta"):
                model = LLMFusionForSequenceClassification(copy.deepcopy(current.config))
            state = {name: value.detach().to("cpu", copy=True) for name, value in current.state_dict().items()}
            model.load_state_dict(state, assign=True)
            self.models[seed] = model.eval()
        self.unsaved.add(seed)

    def save(self) -> None:
        """Write the weights kept since the last checkpoint to their folders."""
        for seed in sorted(self.unsaved):
            self.models[seed].save_pretrained(self.folder(seed))
        self.unsaved.clear()

    def model(self, seed: int) -> LLMFusionForSequenceClassification:
        """`seed`'s kept model, in float32: from memory, or from its folder where an earlier process kept it."""
        if seed in self.models:
            return self.models.pop(seed)
        return load_model(self.folder(seed), dtype=torch.float32)


class TrainedSeed(NamedTuple):
    """A seed trained and scored: its result, and its model (on the CPU) as `runs/seed-N/model` holds it."""

    result: SeedResult
    model: LLMFusionForSequenceClassification


def train_seeds(
    setup: Setup,
    args: TrainingArguments,
    seeds: list[int],
    runs_dir: Path,
    checkpoint: str | None = None,
    numbers: dict[int, tuple[int, int]] | None = None,
) -> list[TrainedSeed]:
    """Train `seeds` with `Trainer`: one model for one seed, one `SeedStack` for several (one step advances them
    all). Each seed follows the protocol on its own (own stopping, own kept checkpoint, `KeptWeights`), then
    `finish_seed` scores it. Checkpoints to resume from go to `group_folder(runs_dir, seeds)`."""
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
    kept = KeptWeights(trainer, runs_dir)
    trainer.add_callback(ProtocolCallback(progress, kept.keep, kept.save))
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
            kept.keep(seed)  # no evaluation ran (e.g. --max_steps shorter than an epoch): the last weights are kept
    trained = [
        finish_seed(setup, args, metric, runs_dir / f"seed-{seed}", progress[seed], seeds, training_time, kept)
        for seed in seeds
    ]
    if len(seeds) > 1:
        shutil.rmtree(group_folder(runs_dir, seeds), ignore_errors=True)  # every seed has its own folder now
    return trained


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
) -> CheckpointScores:
    """Score a trained model once: fit its temperature on validation (kept where it lowers the validation ECE) and
    choose the multi-label threshold on validation as every evaluation chose it, restated on the scores at that
    temperature (the same decisions: `threshold_at_temperature`); both go into its config, as the pipeline serves
    them. Then score validation and test, and the test ECE."""
    config, problem_type = setup.config, setup.config.problem_type
    predict_args = dataclasses.replace(
        protocol_arguments(args, run_dir, seed), eval_strategy="no", save_strategy="no", disable_tqdm=True
    )
    trainer = FusionTrainer(model=model, args=predict_args, seeds=[seed])
    validation = trainer.predict(setup.data["validation"], metric_key_prefix="eval")
    temperature = choose_temperature(validation.predictions, validation.label_ids, problem_type)
    multi_label = problem_type == "multi_label_classification"
    if multi_label:  # the threshold is chosen on validation, and its validation scores come with it
        chosen, at_threshold = validation_threshold(setup, metric, validation.predictions, validation.label_ids)
        model.config.threshold = threshold_at_temperature(chosen, temperature.temperature)
    else:
        at_threshold = score(metric, validation.predictions, validation.label_ids, model.config.threshold)
    model.config.temperature = temperature.temperature
    threshold = model.config.threshold
    test = trainer.predict(setup.data["test"])
    decisions = model.decide(torch.from_numpy(test.predictions)).numpy()
    per_label, confusion = per_label_scores(decisions, test.label_ids, [config.id2label[i] for i in config.id2label])
    return CheckpointScores(
        threshold=threshold if multi_label else None,
        validation={**at_threshold, "loss": validation.metrics["eval_loss"]},
        test=score(metric, test.predictions / temperature.temperature, test.label_ids, threshold),
        per_label=per_label,
        confusion=confusion,
        calibration=calibration_of(temperature, test.predictions, test.label_ids, problem_type),
    )


def finish_seed(
    setup: Setup,
    args: TrainingArguments,
    metric: evaluate.EvaluationModule,
    run_dir: Path,
    progress: SeedProgress,
    trained_with: list[int],
    training_time: float,
    kept: KeptWeights,
) -> TrainedSeed:
    """Take the seed's kept model, score it once (`score_kept`), save it to `run_dir/model` and its result to
    `run_dir/result.json`."""
    start, seed = time.perf_counter(), int(run_dir.name.removeprefix("seed-"))
    model = kept.model(seed)
    scores = score_kept(setup, args, metric, model, run_dir, seed)
    result = SeedResult(
        seed=seed,
        epochs=progress.history[-1].epoch if progress.history else 0,
        best_epoch=progress.kept_epoch,
        wall_time_s=round(training_time + time.perf_counter() - start, 1),
        history=progress.history,
        trained_with=list(trained_with),
        **vars(scores),  # its fields as they are (a calibration stays a `Calibration`)
    )
    model.save_pretrained(run_dir / "model")
    # As that folder reads back, so that a seed trained here and one a resumed run reads are the same model: without
    # what scoring's Trainer set in the config and no config attribute keeps (`use_cache`).
    model.config = LLMFusionConfig.from_dict(model.config.to_dict())
    # The checkpoints only served to resume this seed; its model and result are all that is needed now.
    for folder in [*run_dir.glob("checkpoint-*"), kept.folder(seed)]:
        if folder.is_dir():
            shutil.rmtree(folder)
    result.save(run_dir / "result.json")
    return TrainedSeed(result, model.cpu())


def ensemble_of(
    setup: Setup,
    args: TrainingArguments,
    runs_dir: Path,
    seeds: list[int],
    models: dict[int, LLMFusionForSequenceClassification],
) -> tuple[PreTrainedModel, EnsembleResult]:
    """The seed ensemble of the run's seeds, scored once as one model (`score_kept`): their `models` trained in this
    process, the saved models of the others."""
    members = [models[seed] if seed in models else saved_seed_model(runs_dir, seed) for seed in seeds]
    ensemble = LLMFusionEnsembleForSequenceClassification.from_members(members)
    scores = score_kept(setup, args, load_metric(setup.config.problem_type), ensemble, runs_dir, seeds[0])
    return ensemble, EnsembleResult(members=seeds, **vars(scores))


def saved_seed_model(runs_dir: Path, seed: int) -> LLMFusionForSequenceClassification:
    """A finished seed's model as saved in `runs/seed-N/model`, in float32."""
    return load_model(runs_dir / f"seed-{seed}" / "model", dtype=torch.float32)


@dataclass
class Setup:
    """What every seed of a run trains on: the config, the training splits, their statistics and the stopping rule."""

    metadata: FeatureMetadata
    config: LLMFusionConfig
    data: DatasetDict
    statistics: dict | None
    rule: StoppingRule  # every seed starts from a copy
    examples: tuple[str, ...] = ()  # validation texts for the card (`validation_examples`)
    texts: DatasetDict | None = None  # each split's `text` and `label` columns: the bag-of-words baseline's input


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
    head = head_options(args, metadata)
    config = build_config(metadata, args.backbones, **head, training_protocol=args.protocol)
    features, data = data, training_splits(data, config)
    check_classes(features["train"], config, metadata.dataset)
    texts = DatasetDict({split: features[split].select_columns(["text", "label"]) for split in data})
    examples = validation_examples(texts["validation"])
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
    return Setup(metadata, config, data, statistics, rule, examples, texts)


def head_options(args: FusionArguments, metadata: FeatureMetadata) -> dict:
    """The head's `LLMFusionConfig` keywords: the flags given, else what the features recorded (their preset's
    options; the token attention head for features with token views, unless `--backbones` names none of them)."""
    from configuration_llm_fusion import TOKENS

    recorded = metadata.head or {}
    head = {"sigma": args.sigma}
    for option in ("standardize_features", "encoders_in_tail"):
        value = getattr(args, option)
        head[option] = bool(recorded.get(option, False)) if value is None else value
    token_views = [spec.name for spec in metadata.backbones if spec.pooling == TOKENS]
    token_pooling = args.token_pooling or recorded.get("token_pooling")
    if args.token_pooling is None and args.backbones and not set(args.backbones) & set(token_views):
        token_pooling = None  # the views named are read as ever
    if token_pooling not in (None, "none"):
        head["token_pooling"] = token_pooling
        head["attention_queries"] = args.attention_queries or recorded.get("attention_queries", 1)
    elif args.attention_queries is not None:
        raise ValueError("--attention_queries sets the token attention head: pass --token_pooling attention too.")
    if metadata.choice:  # how --choose chose the features: the card reports it
        head["feature_choice"] = metadata.choice
    return head


def train(
    args: FusionArguments | None = None, training_args: TrainingArguments | None = None, **options
) -> RunResults:
    """Train a run on saved features, save its model with the card and return its results: what `fec train` does.

        from llm_fusion_fec import train

        results = train(dataset="ED", seeds=5, ensemble=True, output_dir="outputs/ed")
        print(results.ensemble.test)

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


class RunCallback(Protocol):
    """What `run_training` tells as a run goes, as `Trainer` tells its callbacks: `fec train` prints its report from
    it (library code prints nothing)."""

    def on_seed_end(self, result: SeedResult, number: tuple[int, int], selection: str) -> None:
        """A seed trained here has been scored: `number` is its place in the run (i, N), `selection` the validation
        metric that kept its checkpoint."""

    def on_ensemble_end(self, result: EnsembleResult) -> None:
        """The seeds' ensemble has been scored."""


def run_training(
    args: FusionArguments, training_args: TrainingArguments, callback: RunCallback | None = None
) -> RunResults:
    """Train `args.seeds` seeds on the features, save the best seed's model with its card in
    `training_args.output_dir` (and push it with `--push_to_hub`), and return the results (also in results.json).

    The seeds train together as one batched model or one after another (`trains_together`). With
    `training_args.resume_from_checkpoint` set, finished seeds (their `runs/seed-N/result.json`) are reused and the
    interrupted ones continue from their last checkpoint, or from the checkpoint folder given. `callback` hears of
    each seed and of the ensemble as they are scored.
    """
    setup = prepare(args, training_args)
    output_dir, resume = Path(training_args.output_dir), training_args.resume_from_checkpoint
    given_checkpoint = checkpoint_given(resume)
    runs_dir = output_dir / RUNS_DIR
    check_output_folder(output_dir, args.overwrite_output_dir or bool(resume))
    check_run(runs_dir, run_signature(setup, args, training_args), bool(resume))
    card_data = start_card_data(setup, args, training_args)
    if args.baseline:
        card_data.results.baseline = fit_baseline(setup)
    models = train_run_seeds(setup, args, training_args, card_data, given_checkpoint, callback)
    if args.ensemble:
        model, ensemble = ensemble_of(setup, training_args, runs_dir, card_data.results.seeds, models)
        card_data.add_ensemble(ensemble)
        if callback:
            callback.on_ensemble_end(ensemble)
    else:
        best = card_data.results.best_seed
        model = models[best] if best in models else saved_seed_model(runs_dir, best)
    publish(model, output_dir, card_data, training_args)
    if notice := baseline_notice(card_data.results):
        logger.warning(notice)
    return card_data.results


def fit_baseline(setup: Setup) -> BaselineResult | None:
    """The bag-of-words baseline of the run's texts (`llm_fusion_fec.evaluation.baseline`): fitted on train, chosen
    on validation by the run's selection metric, and only then scored once on test. None, with a warning, where the
    training texts hold no word to count."""
    start, config = time.perf_counter(), setup.config
    train, validation = (labelled_texts(setup.texts[split]) for split in ("train", "validation"))
    try:
        fitted = fit_bag_of_words(train, validation, config.problem_type, config.num_labels, setup.rule.selection)
    except EmptyVocabulary as error:
        logger.warning(f"{error} The head trains without it.")
        return None
    result = score_bag_of_words(fitted, labelled_texts(setup.texts["test"]), wall_time_s=time.perf_counter() - start)
    logger.info(
        f"Bag-of-words baseline: C {result.c:g} chosen on validation ({result.vocabulary} words and word pairs, "
        f"{result.wall_time_s:g} s); validation {setup.rule.selection} {result.validation[setup.rule.selection]:.4f}."
    )
    return result


def checkpoint_given(resume: str | None) -> str | None:
    """The checkpoint folder `--resume_from_checkpoint` names; None for `true` or without resuming."""
    given = resume if resume and Path(resume).is_dir() else None
    if resume and not given and resume.lower() != "true":
        raise ValueError(f"--resume_from_checkpoint {resume!r} is neither 'true' nor a checkpoint folder.")
    return given


def start_card_data(setup: Setup, args: FusionArguments, training_args: TrainingArguments) -> FusionModelCardData:
    """The card data of a run about to train: its data set, protocol and arguments, no seed's result yet."""
    rule = setup.rule
    results = RunResults(
        dataset=setup.metadata.dataset_name,
        problem_type=setup.config.problem_type,
        selection_metric=rule.selection,
        early_stopping_metrics=rule.metrics,
        checkpoint_selection=rule.checkpoint_selection,
        protocol=args.protocol,
        limit=setup.metadata.limit,
    )
    return FusionModelCardData(
        examples=setup.examples,
        results=results,
        training_args=training_args,
        dataset_name=setup.metadata.dataset_name,
        early_stopping_patience=args.early_stopping_patience,
        license=args.license,
        feature_dtype=setup.metadata.feature_dtype,
        local_weights=setup.metadata.local_weights,
    )


def train_run_seeds(
    setup: Setup,
    args: FusionArguments,
    training_args: TrainingArguments,
    card_data: FusionModelCardData,
    given_checkpoint: str | None,
    callback: RunCallback | None,
) -> dict[int, LLMFusionForSequenceClassification]:
    """Train the run's seeds that have not finished, in groups (`trains_together`), and add every seed's result to
    `card_data`, the finished ones' first. Returns the models trained here that the saved model needs: every seed's
    for an ensemble, else the best seed's if it trained here."""
    runs_dir, resume = Path(training_args.output_dir) / RUNS_DIR, training_args.resume_from_checkpoint
    seeds = list(range(training_args.seed, training_args.seed + args.seeds))
    for seed in seeds:
        if (runs_dir / f"seed-{seed}" / "result.json").exists():
            card_data.add_seed(SeedResult.load(runs_dir / f"seed-{seed}" / "result.json"))
    pending = [seed for seed in seeds if seed not in card_data.results.seeds]
    models = {}
    for group in [pending] if trains_together(args) and pending else [[seed] for seed in pending]:
        checkpoint = None
        if resume:
            group_dir = group_folder(runs_dir, group)
            checkpoint = given_checkpoint or (get_last_checkpoint(group_dir) if group_dir.is_dir() else None)
            given_checkpoint = None  # a checkpoint folder given serves the first unfinished group only
        logger.info(f"Training seeds {group}" + (f", resuming from {checkpoint}" if checkpoint else "") + ".")
        numbers = {seed: (seeds.index(seed) + 1, len(seeds)) for seed in group}
        for result, model in train_seeds(setup, training_args, group, runs_dir, checkpoint, numbers):
            card_data.add_seed(result)
            models[result.seed] = model
            if not args.ensemble:  # only the best seed's model is saved: the others need not stay in memory
                models = {seed: kept for seed, kept in models.items() if seed == card_data.results.best_seed}
            if callback:
                callback.on_seed_end(result, numbers[result.seed], setup.rule.selection)
    return models


def publish(
    model: PreTrainedModel, output_dir: Path, card_data: FusionModelCardData, training_args: TrainingArguments
) -> None:
    """Save the model folder with its card (`save_model_folder`), and push it with `--push_to_hub`."""
    written = save_model_folder(model, output_dir, card_data)
    if training_args.push_to_hub:
        push_to_hub(
            output_dir,
            written,
            training_args.hub_model_id or output_dir.name,
            token=training_args.hub_token,
            private=training_args.hub_private_repo,
        )


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
    if setup.config.token_pooling is not None:  # only when set, so that runs begun before it resume
        head |= {key: getattr(setup.config, key) for key in ("token_pooling", "attention_queries")}
    training = {key: getattr(training_args, key) for key in keys}
    if training_args.train_sampling_strategy != "random":  # only when set, so that runs begun before it resume
        training["train_sampling_strategy"] = training_args.train_sampling_strategy
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
                "training": training,
            },
            default=str,
        )
    )
