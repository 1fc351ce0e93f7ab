"""The scripts' command-line arguments that import nothing heavy, and the parser built from them: `--help` is instant.

`HfArgumentParser` imports transformers (about 3 s here) and `TrainingArguments` imports torch (about 4 s more), so
the quick `--help` of `train_fusion.py` and `extract_features.py` is built from plain dataclasses with argparse
(`argument_parser`), the way `HfArgumentParser` would build it: `--flag_name` and `--flag-name`, help and defaults
from each field, `--flag` alone or `--flag true|false` for booleans.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import typing
from dataclasses import dataclass, field
from pathlib import Path


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
                  "best validation score is saved (or, with --ensemble, the seeds' ensemble)."},
    )  # fmt: skip
    batch_seeds: bool | None = field(
        default=None,
        metadata={"help": "Train the --seeds seeds together as one batched model (one step advances every seed; each "
                  "keeps its own initialisation, data order, dropout, early stopping and checkpoint), or (false) one "
                  "after another. Default: together on a GPU or other accelerator, one after another on a CPU, where "
                  "the batched step costs about what the seeds' steps cost one by one (README, Training)."},
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
    ensemble: bool = field(
        default=False,
        metadata={"help": "Save the seed ensemble instead of the best seed: one model whose probabilities are the "
                  "mean of the --seeds seeds' (scored once on test like a seed; the seeds' own rows stay in "
                  "results.json)."},
    )  # fmt: skip
    overwrite_output_dir: bool = field(
        default=False,
        metadata={"help": "Write into an output folder that holds files this package did not write (they stay, and "
                  "are not uploaded)."},
    )  # fmt: skip
    license: str | None = field(
        default=None, metadata={"help": "Model card license; defaults to the training data's license."}
    )


@dataclass
class ProtocolArguments:
    """The paper's protocol as the defaults of `TrainingArguments` fields (`train_fusion.FusionTrainingArguments`
    takes them over).

    The original used `torch.optim.Adam` with a constant learning rate and no gradient clipping. Adam is AdamW with
    weight decay 0 (the default `--weight_decay`), so the default optimizer is the paper's.
    """

    output_dir: str | None = field(
        default="outputs/llm-fusion-ed", metadata={"help": "Defaults to outputs/llm-fusion-<dataset>."}
    )
    learning_rate: float = field(default=1e-4, metadata={"help": "Adam learning rate (paper: 1e-4)."})
    lr_scheduler_type: str = field(default="constant", metadata={"help": "Learning rate schedule (paper: constant)."})
    max_grad_norm: float = field(default=0.0, metadata={"help": "Gradient clipping norm; 0: none (paper)."})
    per_device_train_batch_size: int = field(default=10, metadata={"help": "Batch size (paper: 10)."})
    per_device_eval_batch_size: int = field(default=64, metadata={"help": "Evaluation batch size."})
    num_train_epochs: float = field(default=200, metadata={"help": "Maximum number of epochs (paper: 200)."})
    eval_strategy: str = field(default="epoch", metadata={"help": "Evaluate on validation."})
    save_strategy: str = field(default="epoch", metadata={"help": "Save a checkpoint (to resume)."})
    logging_strategy: str = field(default="epoch", metadata={"help": "Log the training loss."})
    save_total_limit: int | None = field(
        default=1, metadata={"help": "Checkpoints kept besides the best one (for resuming)."}
    )
    metric_for_best_model: str | None = field(
        default="auto",
        metadata={"help": "Validation metric that selects the checkpoint and the saved seed: loss, accuracy, "
                  "weighted_f1, macro_f1, micro_f1; auto: weighted_f1 (single-label) or macro_f1 (multi-label)."},
    )  # fmt: skip


TRAINING_EPILOG = """Every flag of transformers' TrainingArguments works too, e.g. --seed, --resume_from_checkpoint
true, --push_to_hub --hub_model_id ORG/NAME, --log_level info, --use_cpu; --help-all lists them all (it imports
transformers and torch: a few seconds)."""


class _HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Each flag's default in its help; the description and epilog as written."""


def argument_parser(*types: type, description: str, epilog: str | None = None) -> argparse.ArgumentParser:
    """An argparse parser of the dataclasses `types`' fields, as `HfArgumentParser` builds one, without importing
    transformers. A field with a `default_factory` shows and takes the factory's value."""
    parser = argparse.ArgumentParser(description=description, epilog=epilog, formatter_class=_HelpFormatter)
    for kind_of_arguments in types:
        hints = typing.get_type_hints(kind_of_arguments)
        for spec in dataclasses.fields(kind_of_arguments):
            kind, options = hints[spec.name], dict(spec.metadata)
            if type(None) in typing.get_args(kind):
                kind = next(arg for arg in typing.get_args(kind) if arg is not type(None))
            if typing.get_origin(kind) is list:
                kind, options["nargs"] = typing.get_args(kind)[0], "+"
            if kind is bool:  # `--flag` alone or `--flag true|false`, as HfArgumentParser takes it
                kind, options["nargs"], options["const"] = boolean, "?", True
            default = spec.default_factory() if spec.default_factory is not dataclasses.MISSING else spec.default
            flags = dict.fromkeys([f"--{spec.name}", f"--{spec.name.replace('_', '-')}"])
            parser.add_argument(*flags, dest=spec.name, type=kind, default=default, **options)
    return parser


def boolean(value: str) -> bool:
    """A command line's `true` / `false` (also yes/no, 1/0)."""
    if value.lower() in ("true", "yes", "1"):
        return True
    if value.lower() in ("false", "no", "0"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def wants_quick_help(argv: list[str]) -> bool:
    """Whether the command line asks for the quick `--help` (not `--help-all`)."""
    return any(arg in ("-h", "--help") for arg in argv)


def print_training_help() -> None:
    """The quick `--help` of `train_fusion.py` (and `fec-train`): its docstring, its own flags, the protocol's."""
    description = ast.get_docstring(ast.parse(Path(__file__).with_name("train_fusion.py").read_text()))
    argument_parser(FusionArguments, ProtocolArguments, description=description, epilog=TRAINING_EPILOG).print_help()


def check_at_least_one(flag: str, value: int | None, hint: str = "") -> None:
    """Refuse a size that cannot be meant (0 or less), naming the flag; None means the flag was left out."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ValueError(f"{flag} must be an integer of at least 1{hint}, got {value!r}.")


def name_value_pairs(items: list[str] | dict[str, str], flag: str) -> dict[str, str]:
    """`NAME=VALUE` items of a command-line flag as a dict, or `ValueError` naming the bad one."""
    if isinstance(items, dict):
        return dict(items)
    pairs = {}
    for item in items:
        name, sep, value = item.partition("=")
        if not sep or not name or not value:
            raise ValueError(f"{flag} expects NAME=VALUE, got {item!r}.")
        pairs[name] = value
    return pairs


__all__ = [
    "FusionArguments",
    "ProtocolArguments",
    "TRAINING_EPILOG",
    "argument_parser",
    "boolean",
    "check_at_least_one",
    "name_value_pairs",
    "print_training_help",
    "wants_quick_help",
]
