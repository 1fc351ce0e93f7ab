"""Train the fusion head on saved features; save (and push) the model with its card.

    fec train                                  # features/ED -> outputs/llm-fusion-ed, one seed
    fec train --seeds 5                        # the paper's protocol: 5 seeds, mean +- std
    fec train --seeds 5 --ensemble             # save the seeds' ensemble (the mean of their probabilities)
    fec train --seeds 5 --push_to_hub --hub_model_id ORG/NAME

Every `TrainingArguments` flag works. The defaults are the paper's protocol: Adam, lr 1e-4, batch 10, up to 200
epochs, validation after each epoch, the original's early stopping (loss or weighted-F1 resets a patience of 10).
Each seed's test split is scored once, on the checkpoint validation kept; the best seed by validation is saved
(with --ensemble, the seeds' ensemble, scored once too).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from llm_fusion_fec.arguments import FusionArguments, ProtocolArguments
from llm_fusion_fec.commands.parsing import command_parser

if TYPE_CHECKING:
    from transformers import TrainingArguments

    from llm_fusion_fec.evaluation.results import EnsembleResult, RunResults, SeedResult

EPILOG = """Every flag of transformers' TrainingArguments works too, e.g. --seed, --resume_from_checkpoint true,
--push_to_hub --hub_model_id ORG/NAME, --log_level info, --use_cpu; --help-all lists them all (it imports torch: a
few seconds)."""


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None):
    """The run's `FusionArguments` and `FusionTrainingArguments` (`--help-all`: the help of every flag)."""
    from llm_fusion_fec.training.run import FusionTrainingArguments, training_arguments_of

    argv = ["--help" if arg == "--help-all" else arg for arg in (sys.argv[1:] if argv is None else argv)]
    parser = command_parser([FusionArguments, FusionTrainingArguments], prog, __doc__)
    namespace = vars(parser.parse_args(argv))  # a usage error exits 2 here
    # The flags given: a parse where every default is a marker leaves the marker where none was.
    marker = object()
    unset = command_parser([FusionArguments, FusionTrainingArguments], prog, __doc__)
    unset.set_defaults(**dict.fromkeys(namespace, marker))
    given = {name for name, value in vars(unset.parse_args(argv)).items() if value is not marker}
    fusion = {name: namespace.pop(name) for name in list(namespace) if name in FusionArguments.__dataclass_fields__}
    if namespace["output_dir"] is None:
        del namespace["output_dir"]  # the data set's default folder
    return training_arguments_of(FusionArguments(**fusion), None, namespace, given)


def main(argv: Sequence[str] | None = None, prog: str | None = None):
    """`fec train`: train, print the results table and where the model went. `--help` shows this command's own
    flags and the protocol's at once, without importing torch."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(arg in ("-h", "--help") for arg in argv):
        command_parser([FusionArguments, ProtocolArguments], prog, __doc__, EPILOG).print_help()
        return 0
    from llm_fusion_fec.training import trainer

    trainer.flush_denormals()  # before any parallel torch work, so that every intra-op thread flushes
    args, training_args = parse_args(argv, prog)
    return run_command(args, training_args)


def run_command(args: FusionArguments, training_args: TrainingArguments) -> RunResults:
    """`fec train` once its arguments are read: quiet logs, the run, the results table and where the model went."""
    from transformers.utils import logging

    from llm_fusion_fec.training.run import run_training
    from llm_fusion_fec.training.trainer import keep_gradient_memory

    keep_gradient_memory()
    # Quiet by default (warnings only); --log_level info shows what Trainer does.
    logging.set_verbosity(training_args.get_process_log_level())
    logging.enable_explicit_format()
    if training_args.get_process_log_level() > logging.INFO:
        logging.disable_progress_bar()  # a bar per checkpoint written or read; Trainer's own bar stays
    results = run_training(args, training_args, SeedReport())
    print(format_results_table(results))
    saved = (
        f"the ensemble of seeds {results.ensemble.members}"
        if results.ensemble
        else f"seed {results.best_seed} (best validation {results.selection_metric})"
    )
    print(f"Saved {saved} to {training_args.output_dir}")
    return results


class SeedReport:
    """The lines that end each seed and the ensemble while the run goes on, on stderr (a `RunCallback`)."""

    def on_seed_end(self, result: SeedResult, number: tuple[int, int], selection: str) -> None:
        kept = f"kept epoch {result.best_epoch:g}" if result.best_epoch is not None else "kept its last weights"
        print(
            f"seed {number[0]}/{number[1]} ({result.seed}) done: {result.epochs:g} epochs in "
            f"{result.wall_time_s:.0f} s, {kept} (best validation {selection}); test {scores_line(result.test)}",
            file=sys.stderr,
        )

    def on_ensemble_end(self, result: EnsembleResult) -> None:
        print(f"ensemble of seeds {result.members}: test {scores_line(result.test)}", file=sys.stderr)


def scores_line(scores: dict[str, float]) -> str:
    return ", ".join(f"{name} {value:.4f}" for name, value in scores.items() if name != "loss")


def format_results_table(results: RunResults) -> str:
    """The results table the command prints (the model card's, `publishing/model_card.md`): one row per seed, then
    mean +- population std, then the ensemble if the run saved one, then the bag-of-words baseline if it was fitted;
    the test ECE of each row where the run measured it."""
    from llm_fusion_fec.evaluation.results import BASELINE_ROW

    keys, selection, ece = list(results.runs[0].test), results.selection_metric, results.test_ece
    header = ["seed", "epochs", "best epoch", "wall time (s)", f"validation {selection}", *[f"test {k}" for k in keys]]
    header += ["test ECE"] if ece else []
    lines = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]

    def row(first: list[str], result) -> str:
        cells = [*first, f"{result.validation[selection]:.4f}", *[f"{result.test[k]:.4f}" for k in keys]]
        cells += [f"{result.calibration.test_ece:.4f}"] if ece else []
        return "| " + " | ".join(cells) + " |"

    for run in results.runs:
        saved = run.seed == results.best_seed and not results.ensemble
        best_epoch = f"{run.best_epoch:g}" if run.best_epoch is not None else "-"
        first = [f"{run.seed} (saved)" if saved else str(run.seed), f"{run.epochs:g}", best_epoch]
        lines.append(row([*first, f"{run.wall_time_s:.0f}"], run))
    summary = [f"{results.test[k]['mean']:.4f} +- {results.test[k]['std']:.4f}" for k in keys]
    summary += [f"{ece['mean']:.4f} +- {ece['std']:.4f}"] if ece else []
    seeds = f"{len(results.runs)} seed{'s' if len(results.runs) > 1 else ''}"
    lines.append("| " + " | ".join([f"mean +- std ({seeds})", "", "", "", "", *summary]) + " |")
    if results.ensemble:
        members = len(results.ensemble.members)
        lines.append(row([f"ensemble of the {members} seeds (saved)", "", "", ""], results.ensemble))
    if results.baseline:
        lines.append(row([BASELINE_ROW, "", "", f"{results.baseline.wall_time_s:.0f}"], results.baseline))
    return "\n".join(lines)
