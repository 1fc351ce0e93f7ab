"""The training engine of the fusion head: the original's stopping rule, the protocol's data order, and several
seeds trained together as one batched model inside `Trainer`.

Read top to bottom: the stopping rule of one seed (`StoppingRule`) -> the order each seed reads the training rows in
(`SeedOrderBatches`, served from memory by `InMemoryBatches`) -> N seeds as one model (`SeedStack`) -> the `Trainer`
subclass (`FusionTrainer`) and the callback that applies the rule to every seed at each evaluation
(`ProtocolCallback`).
"""

from __future__ import annotations

import copy
import ctypes
import dataclasses
import json
import math
import shutil
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn
from transformers import (
    EvalPrediction,
    Trainer,
    TrainerCallback,
    TrainingArguments,
    set_seed,
)
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.trainer_pt_utils import get_length_grouped_indices
from transformers.utils import logging

from configuration_llm_fusion import MASK_SUFFIX, LLMFusionConfig
from llm_fusion_fec.data.splits import is_token_column, token_rows
from llm_fusion_fec.evaluation.results import EpochRecord
from modeling_llm_fusion import LLMFusionForSequenceClassification

CHECKPOINT_SELECTIONS = ("best", "last_improvement")
PROTOCOL_FILE = "protocol.json"  # the stopping rules' state, saved in each checkpoint folder to resume

logger = logging.get_logger(__name__)


class NonFiniteError(ValueError):
    """Training produced a NaN or infinite loss: the run stops and nothing of it is saved as a result."""


# ---- the stopping rule of one seed ----


def improves(metric: str, value: float, previous: float | None) -> bool:
    """Whether `value` is a strictly better validation `metric` than `previous` (loss: lower; scores: higher)."""
    if previous is None:
        return True
    return value < previous if metric == "loss" else value > previous


@dataclass
class StoppingRule:
    """Early stopping and checkpoint keeping for one seed, as in the original code (LLM-FusionClassifier `main.py`).

    The original tracks the best validation loss and the best validation weighted-F1 separately; an evaluation that
    improves either resets the patience count, and training stops once `patience` evaluations in a row improved
    neither. `metrics` generalises the pair.

    Args:
        metrics (`list[str]`): Validation metrics whose improvement resets the patience (original: loss, weighted_f1).
        patience (`int`): Evaluations in a row without improvement after which the seed stops.
        selection (`str`): The metric whose best value keeps a checkpoint with `checkpoint_selection="best"`.
        checkpoint_selection (`str`): `"best"` keeps the checkpoint with the best validation `selection`;
            `"last_improvement"` keeps the last one at which any of `metrics` improved (what the original reported).
    """

    metrics: list[str]
    patience: int
    selection: str
    checkpoint_selection: str = "best"
    best: dict[str, float] = field(default_factory=dict)
    wait: int = 0

    @property
    def stopped(self) -> bool:
        return self.wait >= self.patience

    def update(self, scores: dict[str, float]) -> tuple[list[str], bool]:
        """Apply one evaluation's validation `scores`: returns the metrics that improved and whether to keep it."""
        improved = []
        for metric in dict.fromkeys([*self.metrics, self.selection]):
            if improves(metric, scores[metric], self.best.get(metric)):
                self.best[metric] = scores[metric]
                improved.append(metric)
        resets = any(metric in improved for metric in self.metrics)
        self.wait = 0 if resets else self.wait + 1
        keep = self.selection in improved if self.checkpoint_selection == "best" else resets
        return improved, keep


# ---- the data order ----


SAMPLING_STRATEGIES = ("random", "group_by_length")


def epoch_order(seed: int, epoch: int, num_rows: int, lengths: list[int] | None = None, batch_size: int = 1):
    """The order in which `seed` reads the training rows in `epoch`: one fixed permutation per (seed, epoch), the
    same whether the seed trains alone or beside others. With each row's `lengths`, the permutation's rows are
    grouped into batches of `batch_size` rows of like length, as transformers' `LengthGroupedSampler` groups them
    (`train_sampling_strategy="group_by_length"`): less padding in each batch of token views."""
    generator = torch.Generator().manual_seed(seed * 2**20 + epoch)
    if lengths is None:
        return torch.randperm(num_rows, generator=generator)
    return torch.tensor(get_length_grouped_indices(lengths, batch_size, generator=generator))


class SeedOrderBatches:
    """The rows of each step: `batch_size` rows of every seed, each seed in its own `epoch_order`, seeds one after the
    other (`(num_seeds * batch_size,)` indices; the last step of an epoch may be shorter, equally for every seed).
    With each row's `lengths`, a batch holds rows of like length (`epoch_order`)."""

    def __init__(self, num_rows: int, batch_size: int, seeds: list[int], lengths: torch.Tensor | None = None):
        self.num_rows, self.batch_size, self.seeds = num_rows, batch_size, list(seeds)
        self.lengths = None if lengths is None else lengths.tolist()
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        orders = torch.stack(
            [epoch_order(seed, self.epoch, self.num_rows, self.lengths, self.batch_size) for seed in self.seeds]
        )
        for start in range(0, self.num_rows, self.batch_size):
            yield orders[:, start : start + self.batch_size].reshape(-1)


class RowOrderBatches:
    """The rows in their order, `batch_size` at a time: what evaluation and prediction read (`InMemoryBatches`)."""

    seeds = ()

    def __init__(self, num_rows: int, batch_size: int):
        self.num_rows, self.batch_size = num_rows, batch_size

    def __len__(self) -> int:
        return math.ceil(self.num_rows / self.batch_size)

    def __iter__(self) -> Iterator[torch.Tensor]:
        for start in range(0, self.num_rows, self.batch_size):
            yield torch.arange(start, min(start + self.batch_size, self.num_rows))


class TokenRows:
    """A token view's column held on the training device as stored: the token rows of every text one after the
    other, and where each text's begin. `gather` pads a batch's texts to the longest with zeros, with the mask, as
    `pad_token_states` pads the pipeline's.

    Args:
        values (`torch.Tensor`): `(tokens, width)`, the texts' rows one after the other (`token_rows`).
        lengths (`torch.Tensor`): `(texts,)`, each text's number of rows.
        device (`torch.device`): Where they are held and batches are gathered.
    """

    def __init__(self, values: torch.Tensor, lengths: torch.Tensor, device: torch.device):
        # A row of zeros after the last text's: what every padded position reads, so that a batch is one gather.
        self.values = torch.cat([values, values.new_zeros(1, values.shape[1])]).to(device)
        self.lengths = lengths.to(device)
        self.starts = self.lengths.cumsum(0) - self.lengths

    def gather(self, indices: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The texts `indices` as `(texts, longest, width)` rows padded with zeros, and the `(texts, longest)` mask."""
        lengths = self.lengths[indices]
        positions = torch.arange(int(lengths.max()), device=lengths.device)
        mask = positions < lengths.unsqueeze(1)
        rows = torch.where(mask, self.starts[indices].unsqueeze(1) + positions, len(self.values) - 1)
        return self.values.index_select(0, rows.flatten()).view(*rows.shape, -1), mask


class InMemoryBatches:
    """A split held as tensors on the training device, served in `SeedOrderBatches` order (training) or
    `RowOrderBatches` order (evaluation and prediction).

    Replaces the Arrow-backed `DataLoader` during training: no per-row reads or collation, and on a GPU the features
    are copied to the device once and every batch is indexed there (one small index copy per epoch, nothing read back
    to the host). With several seeds, each tensor of a batch gets a leading seed dimension `(seeds, batch, ...)`. A
    token view's column is held as its rows one after the other (`TokenRows`), and each batch pads its texts and
    adds the view's mask (`NAME_mask`).
    """

    def __init__(self, split, batches: SeedOrderBatches | RowOrderBatches, device: torch.device, stacked: bool):
        self.dataset = split  # `Trainer.num_examples` reads its length
        self.batches, self.stacked = batches, stacked
        tokens = [name for name in split.column_names if is_token_column(split.features[name])]
        fixed = [name for name in split.column_names if name not in tokens]
        table = split.select_columns(fixed).with_format("torch")[:]
        self.columns = {name: table[name].to(device) for name in fixed}
        self.tokens = {name: TokenRows(*token_rows(split, name), device) for name in tokens}
        self.device = device

    def set_epoch(self, epoch: int) -> None:
        self.batches.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.batches)

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        num_seeds = len(self.batches.seeds)
        for indices in [index.to(self.device) for index in self.batches]:
            batch = {name: column[indices] for name, column in self.columns.items()}
            for name, rows in self.tokens.items():
                batch[name], batch[name + MASK_SUFFIX] = rows.gather(indices)
            if self.stacked:
                batch = {name: value.view(num_seeds, -1, *value.shape[1:]) for name, value in batch.items()}
            yield batch


# ---- N seeds as one model ----


def build_model(config: LLMFusionConfig, seed: int, statistics: dict | None) -> LLMFusionForSequenceClassification:
    """A freshly initialised head for `seed` (the same weights whether the seed trains alone or beside others), with
    the training set's feature `statistics` when the config standardises features."""
    set_seed(seed)
    model = LLMFusionForSequenceClassification(config)
    if config.standardize_features:
        model.set_feature_statistics(statistics)
    return model


def group_folder(runs_dir: Path, seeds: list[int]) -> Path:
    """Where seeds trained together keep their checkpoints: `seed-N` for one seed, `seeds-N-M-...` for several."""
    return runs_dir / (f"seed-{seeds[0]}" if len(seeds) == 1 else "seeds-" + "-".join(map(str, seeds)))


class StackedLinear(nn.Module):
    """The `nn.Linear` layers of several seeds as one: weights `(seeds, in, out)`, biases `(seeds, 1, out)`, one
    batched matrix product for inputs `(seeds, batch, in)`.

    The weights are stored transposed (`in, out`), so that the gradient a batched product writes has their layout: a
    transposed gradient would cost a copy of every weight at every step.
    """

    def __init__(self, linears: list[nn.Linear]):
        super().__init__()
        self.weight = nn.Parameter(torch.stack([linear.weight.detach().t() for linear in linears]))
        self.bias = nn.Parameter(torch.stack([linear.bias.detach() for linear in linears]).unsqueeze(1))

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return torch.baddbmm(self.bias, inputs, self.weight)

    def seed_weights(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The `nn.Linear` weight `(out, in)` and bias of seed number `index`."""
        return self.weight[index].detach().t().contiguous(), self.bias[index, 0].detach()


class SeedStack(nn.Module):
    """Several fusion heads of one config trained together: the heads' module with every `nn.Linear` replaced by a
    `StackedLinear` of all seeds, so that one forward (batched matrix products) and one optimizer step advance every
    seed. Each seed keeps its own weights, and dropout draws its masks independently for every seed and row.

    Training inputs carry a seed dimension (`(seeds, batch, ...)`: every seed its own rows); evaluation inputs do
    not (every seed scores the same rows). The loss is the sum of the seeds' losses, so each seed's gradients are its
    own loss's, and Adam (elementwise) updates each seed as if it trained alone. Logits come as `(batch, seeds,
    labels)`, so that `Trainer` gathers them along the batch like any model's.
    """

    accepts_loss_kwargs = False

    def __init__(self, models: list[LLMFusionForSequenceClassification]):
        super().__init__()
        for name, value in models[0].named_buffers():  # the feature statistics: one copy serves every seed
            if any(not torch.equal(model.get_buffer(name), value) for model in models):
                raise ValueError(f"Seeds trained together must share their buffer {name!r} (training statistics).")
        self.heads = copy.deepcopy(models[0])
        self.heads.config = models[0].config  # one config: what the loss sets (problem_type) reaches the saved seeds
        for name, module in models[0].named_modules():
            if isinstance(module, nn.Linear):
                parent, _, attribute = name.rpartition(".")
                stacked = StackedLinear([model.get_submodule(name) for model in models])
                setattr(self.heads.get_submodule(parent), attribute, stacked)
        self.num_seeds = len(models)
        # A single head to hold one seed's weights (`FusionTrainer.seed_model`); not a submodule.
        object.__setattr__(self, "template", models[0])
        self.config = models[0].config
        self.main_input_name = models[0].main_input_name
        self.train_loss_sums = torch.zeros(self.num_seeds)
        self.train_steps = 0

    def forward(self, labels: torch.Tensor | None = None, **features: torch.Tensor) -> SequenceClassifierOutput:
        name, shape = next(iter(self.config.feature_shapes.items()))
        stacked = features[name].dim() == len(shape) + 2
        if not stacked:  # evaluation: every seed scores the same rows
            features = {key: value.expand(self.num_seeds, *value.shape) for key, value in features.items()}
            labels = None if labels is None else labels.expand(self.num_seeds, *labels.shape)
        logits = self.heads(**features).logits  # (seeds, batch, labels)
        loss = None
        if labels is not None:
            losses = torch.stack(
                [self.heads.loss_function(labels[i], logits[i], self.heads.config) for i in range(self.num_seeds)]
            )
            loss = losses.sum()
            if stacked and self.training:
                self.train_loss_sums = self.train_loss_sums.to(loss.device) + losses.detach()
                self.train_steps += 1
        return SequenceClassifierOutput(loss=loss, logits=logits if stacked else logits.transpose(0, 1))

    def pop_train_losses(self) -> list[float] | None:
        """Each seed's mean training loss since the last call (one read from the device per epoch)."""
        if not self.train_steps:
            return None
        losses = (self.train_loss_sums / self.train_steps).tolist()
        self.train_loss_sums, self.train_steps = torch.zeros(self.num_seeds), 0
        return losses

    def seed_state_dict(self, index: int) -> dict[str, torch.Tensor]:
        """The state dict of seed number `index` as a single `LLMFusionForSequenceClassification`."""
        state = dict(self.heads.named_buffers())
        for name, module in self.heads.named_modules():
            if isinstance(module, StackedLinear):
                prefix = f"{name}." if name else ""
                state[prefix + "weight"], state[prefix + "bias"] = module.seed_weights(index)
        return state


# ---- the Trainer ----


def keep_gradient_memory() -> None:
    """Let glibc's malloc serve blocks up to 32 MiB from its heap instead of a fresh `mmap` each.

    With the default (a 128 KiB threshold, raised only by chance as such blocks are freed), the gradients that
    backward allocates each step come from new mappings that the kernel zero-fills page by page: in `Trainer`, which
    frees the gradients after the optimizer step, this made each step of the fusion head 1.5x slower on a CPU. The
    largest gradient, a 4096 x 1024 projection in float32, is 16 MiB. Process-wide: call it from a script's `main`.
    """
    if sys.platform != "linux":
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # another C library (musl): nothing to tune
        return
    m_mmap_threshold = -3  # from malloc.h
    libc.mallopt(m_mmap_threshold, 32 * 2**20)


def flush_denormals() -> bool:
    """Treat float32 values under 1.2e-38 (denormals) as zero in this process's CPU arithmetic; False where the CPU
    has no such mode.

    The paper's head on unstandardised features pushes co-occurrence values far into the sigmoid's flat ends, whose
    gradients, and the Adam state of units that stop receiving any, pass through the denormal range; x86 CPUs
    compute on denormals many times slower. Only values under 1.2e-38 change. The mode is per thread and torch's
    intra-op threads copy it from the main thread when they are created, never after: call this before the
    process's first parallel torch operation (first thing in a script's `main`), or only the main thread flushes.
    """
    return torch.set_flush_denormal(True)


def protocol_arguments(args: TrainingArguments, output_dir: Path, seed: int) -> TrainingArguments:
    """The training arguments of one `Trainer`: keeping checkpoints is the protocol's business, not `Trainer`'s."""
    return dataclasses.replace(
        args,
        output_dir=str(output_dir),
        seed=seed,
        metric_for_best_model=None,
        load_best_model_at_end=False,
        push_to_hub=False,
    )


class FusionTrainer(Trainer):
    """`Trainer` for the fusion head (one seed, or a `SeedStack` of several) under the paper protocol.

    - Data order: each seed reads the training rows in its own `epoch_order`, from tensors held in memory
      (`InMemoryBatches`); `seeds` names the seeds (the model's seed dimension, in order). Evaluation and prediction
      read their splits in order, from memory too.
    - No gradient norm when gradients are not clipped (the paper's protocol): `Trainer` would compute it after every
      step for its logs, a sixth of a step of this small head on a CPU.
    - One parameter group without weight decay (Adam, the paper's optimizer): one fused AdamW call per step, not two.
    - A cheap FLOPs count (the head has no embeddings to leave out).
    - Token views (a config's `token_views`) are padded with their masks in every batch (`TokenRows`);
      `train_sampling_strategy="group_by_length"` batches rows of like length (less padding).
    """

    def __init__(self, *args, seeds: list[int] | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.seeds = seeds or [self.args.seed]
        self._seed_model: LLMFusionForSequenceClassification | None = None

    def seed_model(self, seed: int) -> LLMFusionForSequenceClassification:
        """The current weights of `seed` as a single model (the model itself when it trains one seed)."""
        if not isinstance(self.model, SeedStack):
            return self.model
        if self._seed_model is None:
            self._seed_model = copy.deepcopy(self.model.template)
        self._seed_model.load_state_dict(self.model.seed_state_dict(self.seeds.index(seed)))
        return self._seed_model

    def get_train_dataloader(self) -> InMemoryBatches:
        batches = SeedOrderBatches(len(self.train_dataset), self._train_batch_size, self.seeds)
        data = InMemoryBatches(self.train_dataset, batches, self.args.device, isinstance(self.model, SeedStack))
        if self.args.train_sampling_strategy == "group_by_length":
            if data.tokens:  # each text's rows over its token views, as held for the batches
                batches.lengths = sum(rows.lengths for rows in data.tokens.values()).tolist()
            else:
                logger.warning(
                    "group_by_length: these features have no token views to group; rows are read in random order."
                )
        return data

    def get_eval_dataloader(self, eval_dataset=None) -> InMemoryBatches:
        return self.get_test_dataloader(self.eval_dataset if eval_dataset is None else eval_dataset)

    def get_test_dataloader(self, test_dataset) -> InMemoryBatches:
        # Token views read row by row from Arrow cost seconds a pass; held in memory, milliseconds.
        batches = RowOrderBatches(len(test_dataset), self.args.eval_batch_size)
        return InMemoryBatches(test_dataset, batches, self.args.device, stacked=False)

    def _get_grad_norm(self, model, grad_norm=None):
        if grad_norm is None and not self.args.max_grad_norm:
            return None  # no "grad_norm" in the logs
        return super()._get_grad_norm(model, grad_norm=grad_norm)

    def get_decay_parameter_names(self, model: torch.nn.Module) -> list[str]:
        if self.args.weight_decay == 0:
            return [name for name, _ in model.named_parameters()]  # one group: the other one is empty
        return super().get_decay_parameter_names(model)

    def floating_point_ops(self, inputs: dict[str, torch.Tensor]) -> int:
        # Forward and backward: about 6 FLOPs per parameter and text (a SeedStack's labels: (seeds, batch, ...)).
        if not hasattr(self, "_head_parameters"):
            self._head_parameters = sum(p.numel() for p in self.model.parameters())
        return 6 * inputs["labels"].shape[1 if isinstance(self.model, SeedStack) else 0] * self._head_parameters


# ---- the protocol, applied at each evaluation ----


def per_seed_metrics(
    seeds: list[int], scores: Callable[[np.ndarray, np.ndarray], dict[str, float]]
) -> Callable[[EvalPrediction], dict[str, float]]:
    """`compute_metrics` for `FusionTrainer`: `scores(logits, labels)` of each seed under `seed{N}_{name}` keys, from
    the logits of one model `(rows, labels)` or of a `SeedStack` `(rows, seeds, labels)`."""

    def compute(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions
        logits = logits[:, None] if logits.ndim == 2 else logits
        metrics = {}
        for index, seed in enumerate(seeds):
            metrics.update(
                {f"seed{seed}_{key}": value for key, value in scores(logits[:, index], prediction.label_ids).items()}
            )
        return metrics

    return compute


def seed_scores(metrics: dict[str, float], seed: int) -> dict[str, float]:
    """One seed's validation scores among an evaluation's metrics (see `per_seed_metrics`)."""
    prefix = f"eval_seed{seed}_"
    return {key.removeprefix(prefix): value for key, value in metrics.items() if key.startswith(prefix)}


@dataclass
class SeedProgress:
    """Where one seed stands: its rule, every evaluation so far, and the epoch of its kept checkpoint."""

    rule: StoppingRule
    history: list[EpochRecord] = field(default_factory=list)
    kept_epoch: float | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> SeedProgress:
        return cls(
            rule=StoppingRule(**data["rule"]),
            history=[EpochRecord(**record) for record in data["history"]],
            kept_epoch=data["kept_epoch"],
        )


class ProtocolCallback(TrainerCallback):
    """Applies each seed's `StoppingRule` after every evaluation: records the evaluation, keeps the seed's
    checkpoint when the rule says so (`keep(seed)`), and stops training once every seed has stopped. A seed that has
    stopped is no longer updated, so nothing later changes what was kept for it. Each checkpoint `Trainer` saves gets
    the rules' state, after the kept weights are saved (`save_kept()`), so that a run resumes from it as it was.

    Args:
        progress (`dict[int, SeedProgress]`): Per seed, its rule and record (restored from a checkpoint to resume).
        keep (`Callable`): `keep(seed)` keeps that seed's current weights as its kept checkpoint.
        save_kept (`Callable`, *optional*): `save_kept()` writes the weights kept so far where a resumed run finds
            them; without it, `keep` is taken to write them itself.
    """

    def __init__(
        self,
        progress: dict[int, SeedProgress],
        keep: Callable[[int], None],
        save_kept: Callable[[], None] | None = None,
    ):
        self.progress, self.keep, self.save_kept = progress, keep, save_kept
        self.logged_loss: float | None = None

    def on_log(self, args, state, control, logs=None, **kwargs):
        if logs and "loss" in logs:
            self.logged_loss = logs["loss"]
            if not math.isfinite(logs["loss"]):
                raise NonFiniteError(
                    f"The training loss became {logs['loss']} by step {state.global_step} (epoch {state.epoch:g}): "
                    "nothing of this run is saved. Check the features for extreme values, or lower --learning_rate."
                )

    def on_evaluate(self, args, state, control, metrics=None, model=None, **kwargs):
        losses = model.pop_train_losses() if isinstance(model, SeedStack) else None
        for index, (seed, progress) in enumerate(self.progress.items()):
            if progress.rule.stopped:
                continue
            scores = seed_scores(metrics, seed)
            if not math.isfinite(scores["loss"]):
                raise NonFiniteError(
                    f"Seed {seed}: the validation loss became {scores['loss']} at epoch {state.epoch:g}: nothing of "
                    "this run is saved. Check the features for extreme values, or lower --learning_rate."
                )
            improved, keep = progress.rule.update(scores)
            train_loss = losses[index] if losses else self.logged_loss
            progress.history.append(EpochRecord(round(state.epoch, 2), train_loss, scores, improved))
            if keep:
                self.keep(seed)
                progress.kept_epoch = round(state.epoch, 2)
        if all(progress.rule.stopped for progress in self.progress.values()):
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        checkpoint = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        if checkpoint.is_dir():
            if self.save_kept is not None:
                self.save_kept()
            state_file = {str(seed): progress.to_dict() for seed, progress in self.progress.items()}
            (checkpoint / PROTOCOL_FILE).write_text(json.dumps(state_file, indent=2) + "\n")


class TrainingReport(TrainerCallback):
    """What a user sees while seeds train, in place of `Trainer`'s own bar and its dict per log: a bar of steps whose
    total (and so its ETA) is bounded by what the stopping rule can still run, and one line per seed and evaluation
    (seed i/N, epoch, validation loss and selection metric, best so far, patience left).

    Args:
        progress (`dict[int, SeedProgress]`): The seeds of this `Trainer`, as `ProtocolCallback` updates them (it
            runs first).
        numbers (`dict[int, tuple[int, int]]`): Each seed's place in the whole run: (i, N).
    """

    def __init__(self, progress: dict[int, SeedProgress], numbers: dict[int, tuple[int, int]]):
        self.progress, self.numbers = progress, numbers
        self.bar = None

    def _bound(self, args, state) -> int:
        """Steps the run can still take: until every seed's patience would run out, within the epochs allowed."""
        steps_per_epoch = max(1, state.max_steps // max(1, math.ceil(args.num_train_epochs)))
        left = max((p.rule.patience - p.rule.wait for p in self.progress.values() if not p.rule.stopped), default=0)
        return min(state.max_steps, state.global_step + left * steps_per_epoch)

    def on_train_begin(self, args, state, control, **kwargs):
        if state.is_world_process_zero and not args.disable_tqdm:
            from tqdm.auto import tqdm

            first, count = self.numbers[next(iter(self.progress))]
            seeds = (
                f"seed {first}/{count}"
                if len(self.progress) == 1
                else f"seeds {first}-{first + len(self.progress) - 1}/{count}"
            )
            self.bar = tqdm(
                total=self._bound(args, state), initial=state.global_step, desc=seeds, unit="step", file=sys.stderr
            )

    def on_step_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.update(state.global_step - self.bar.n)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if not state.is_world_process_zero:
            return
        for seed, progress in self.progress.items():
            if not progress.history or progress.history[-1].epoch != round(state.epoch, 2):
                continue  # stopped before this evaluation
            rule, record = progress.rule, progress.history[-1]
            i, count = self.numbers[seed]
            selection = record.validation[rule.selection]
            line = (
                f"seed {i}/{count} ({seed}) epoch {state.epoch:.0f}: validation loss {record.validation['loss']:.4f}, "
                f"{rule.selection} {selection:.4f} (best {rule.best[rule.selection]:.4f}), "
                + ("stopped" if rule.stopped else f"patience {rule.patience - rule.wait}/{rule.patience}")
            )
            (self.bar.write if self.bar is not None else print)(line, file=sys.stderr)
        if self.bar is not None:
            self.bar.total = self._bound(args, state)
            self.bar.refresh()

    def on_train_end(self, args, state, control, **kwargs):
        if self.bar is not None:
            self.bar.total = self.bar.n  # early stopping ended it: the bar is complete
            self.bar.close()
            self.bar = None


def load_progress(checkpoint: str | Path | None, rules: dict[int, StoppingRule]) -> dict[int, SeedProgress]:
    """Each seed's progress: fresh, or as saved in `checkpoint` (refused if it was made with another rule)."""
    if checkpoint is None:
        return {seed: SeedProgress(rule) for seed, rule in rules.items()}
    path = Path(checkpoint) / PROTOCOL_FILE
    if not path.exists():
        raise ValueError(f"{checkpoint} has no {PROTOCOL_FILE}: it was not written by this version of train_fusion.")
    saved = {int(seed): SeedProgress.from_dict(data) for seed, data in json.loads(path.read_text()).items()}
    if sorted(saved) != sorted(rules):
        raise ValueError(f"{checkpoint} holds seeds {sorted(saved)}, but this run trains {sorted(rules)}.")
    for seed, rule in rules.items():
        old = saved[seed].rule
        if (old.metrics, old.patience, old.selection, old.checkpoint_selection) != (
            rule.metrics,
            rule.patience,
            rule.selection,
            rule.checkpoint_selection,
        ):
            raise ValueError(
                f"{checkpoint} was trained with early stopping on {old.metrics} (patience {old.patience}, keeping "
                f"{old.checkpoint_selection} by {old.selection}), not {rule.metrics} (patience {rule.patience}, "
                f"keeping {rule.checkpoint_selection} by {rule.selection}): start a new run or pass the same options."
            )
    return saved


def _flatten(signature: dict) -> dict:
    return {
        f"{part}.{key}": value
        for part, values in signature.items()
        for key, value in (values.items() if isinstance(values, dict) else [("", values)])
    }


def check_run(runs_dir: Path, signature: dict, resume: bool) -> None:
    """Start a run's record (`runs/run.json`), or, resuming, refuse a run made from other features or options,
    naming what differs, and runs without a record (nothing to check them against: they are not deleted)."""
    record = runs_dir / "run.json"
    if resume and not record.exists() and runs_dir.exists() and any(runs_dir.iterdir()):
        raise ValueError(
            f"--resume_from_checkpoint: {runs_dir} holds runs but no run.json recording the features and options "
            "they were made with, so they cannot be checked; restore its run.json, or move the folder away to start "
            "a new run."
        )
    if resume and record.exists():
        before, now = _flatten(json.loads(record.read_text())), _flatten(signature)
        differences = [key for key in now if before.get(key) != now[key]]
        if differences:
            raise ValueError(
                f"--resume_from_checkpoint: the run in {runs_dir} was made with other {', '.join(differences)}; "
                "resume it with the same features and options, or start a new run (another --output_dir)."
            )
        return
    if runs_dir.exists():
        shutil.rmtree(runs_dir)  # a fresh run must not pick up another run's checkpoints or results
    runs_dir.mkdir(parents=True)
    record.write_text(json.dumps(signature, indent=2) + "\n")


__all__ = [
    "CHECKPOINT_SELECTIONS",
    "FusionTrainer",
    "TokenRows",
    "InMemoryBatches",
    "NonFiniteError",
    "ProtocolCallback",
    "SeedOrderBatches",
    "SeedProgress",
    "SeedStack",
    "StackedLinear",
    "StoppingRule",
    "build_model",
    "check_run",
    "epoch_order",
    "flush_denormals",
    "group_folder",
    "keep_gradient_memory",
    "load_progress",
    "per_seed_metrics",
    "protocol_arguments",
    "seed_scores",
]
