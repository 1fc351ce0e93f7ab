"""LCL's hard subsets of ED: four emotions close in meaning, a head trained and scored on their rows alone, beside the
bag-of-words floor fitted on the same rows and the published figures.

    python -m bench.hard_subsets features/ED-tokens --seeds 5 --output hard_subsets_ed.json
    python -m bench.hard_subsets features/ED-tokens --heads none --subsets a b   # the pooled views only

The subsets are those of LCL (Suresh and Ong, EMNLP 2021, Table 3), as its repository's README names them: each is
a 4-label data set of its own (train, validation and test rows of those labels, relabelled 0-3), a head trained on
it with the features' recipe (its batch sized for the subset's rows, as `train_fusion.py` sizes it) and `--seeds`
seeds, scored once on test, and the seeds' ensemble. `--heads`: `attention` (the token head the features record)
and `none` (the same folder without its token views). Every choice (checkpoint, temperature, the floor's strength)
is made on the subset's validation rows; the test rows are scored once per reported row. Flags after `--` go to
every head as `train_fusion.py` flags.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

SUBSETS: dict[str, tuple[str, ...]] = {
    "a": ("anxious", "apprehensive", "afraid", "terrified"),
    "b": ("devastated", "nostalgic", "sad", "sentimental"),
    "c": ("angry", "ashamed", "furious", "guilty"),
    "d": ("anticipating", "excited", "hopeful", "guilty"),
}
PUBLISHED: dict[str, dict[str, float]] = {
    # LCL, EMNLP 2021, Table 3: test accuracy, mean of 10 runs, fine-tuned (ELECTRA in the repository's runs).
    "cross-entropy (LCL, Table 3)": {"a": 56.1, "b": 63.2, "c": 54.3, "d": 67.3},
    "LCL (Table 3)": {"a": 57.5, "b": 64.2, "c": 55.6, "d": 69.5},
}


def restrict(setup, names: Sequence[str]):
    """The run's `Setup` on the rows of `names` alone, as a data set with only those labels: every split's features
    and texts cut to those rows (in their order), relabelled 0..len(names)-1 in the order of `names`, the config's
    labels and the standardisation statistics made anew."""
    from datasets import DatasetDict

    from configuration_llm_fusion import LLMFusionConfig
    from llm_fusion_fec.data.splits import feature_statistics
    from llm_fusion_fec.training.run import validation_examples

    config = setup.config
    if unknown := [name for name in names if name not in config.label2id]:
        raise ValueError(f"Labels {unknown} are not labels of these features; they have {list(config.label2id)}.")
    new_id = {config.label2id[name]: i for i, name in enumerate(names)}
    data, texts = {}, {}
    for split in setup.data:
        labels = np.asarray(setup.texts[split]["label"])
        rows = np.flatnonzero(np.isin(labels, list(new_id)))
        for name, column, splits in (("labels", data, setup.data), ("label", texts, setup.texts)):
            rows_of = splits[split].select(rows).with_format(None)
            column[split] = rows_of.map(
                lambda values: {name: [new_id[value] for value in values]},
                input_columns=name,
                batched=True,
                features=rows_of.features,  # as they were: a map would infer the token columns' type anew
                keep_in_memory=True,
            )
        data[split] = data[split].with_format("torch")
    labels = {"id2label": dict(enumerate(names)), "label2id": {name: i for i, name in enumerate(names)}}
    config = LLMFusionConfig.from_dict({**config.to_dict(), **labels})
    statistics = feature_statistics(data["train"], config) if config.standardize_features else None
    return dataclasses.replace(
        setup,
        config=config,
        data=DatasetDict(data),
        texts=DatasetDict(texts),
        statistics=statistics,
        examples=validation_examples(texts["validation"]),
    )


def load_head(features_dir: str, head: str, seeds: int, flags: list[str]):
    """The features read and checked once for a head (`prepare`), with its run's arguments: every subset cuts its
    rows from them."""
    from llm_fusion_fec.commands.train import parse_args
    from llm_fusion_fec.training.run import prepare

    argv = ["--features_dir", features_dir, "--seeds", str(seeds), *flags]
    args, training_args = parse_args([*argv, "--token_pooling", head, "--disable_tqdm", "true", "--report_to", "none"])
    given = {flag.split("=")[0].replace("-", "_") for flag in flags if flag.startswith("--")}
    return prepare(args, training_args), args.protocol, training_args, "__per_device_train_batch_size" in given


def subset_run(setup, protocol: str, training_args, batch_given: bool, names: Sequence[str], seeds: int, work_dir):
    """One head on one subset: its seeds trained one after another and scored once on test, their ensemble, and the
    bag-of-words floor of the subset's texts. Returns a record of test accuracies (%) and seconds."""
    from llm_fusion_fec.training.protocols import recipe
    from llm_fusion_fec.training.run import ensemble_of, fit_baseline, train_seeds

    head = setup.config.token_pooling or "none"
    setup = restrict(setup, names)
    if not batch_given:  # the recipe's batch for this many rows, as a run sizes it
        batch = recipe(protocol, len(setup.data["train"])).get("per_device_train_batch_size")
        training_args = dataclasses.replace(training_args, per_device_train_batch_size=batch or 10)
    floor = fit_baseline(setup)
    start, models, accuracies, validation, epochs = time.perf_counter(), {}, [], [], []
    for number, seed in enumerate(range(training_args.seed, training_args.seed + seeds), 1):
        numbers = {seed: (number, seeds)}  # the progress lines say "seed 2/5", as a run's do
        ((result, model),) = train_seeds(setup, training_args, [seed], work_dir / "runs", numbers=numbers)
        models[seed] = model
        accuracies.append(100 * result.test["accuracy"])
        validation.append(100 * result.validation["accuracy"])
        epochs.append(result.best_epoch)
    _, ensemble = ensemble_of(setup, training_args, work_dir / "runs", list(models), models)
    return {
        "head": head,
        "labels": list(names),
        "rows": {split: len(rows) for split, rows in setup.data.items()},
        "test_accuracy": accuracies,
        "validation_accuracy": validation,
        "kept_epochs": epochs,
        "ensemble_accuracy": 100 * ensemble.test["accuracy"],
        "floor_accuracy": 100 * floor.test["accuracy"] if floor else None,
        "seconds": round(time.perf_counter() - start, 1),
    }


def table(records: list[dict], subsets: Sequence[str]) -> str:
    """The published rows and ours, one column per subset: test accuracy, mean (std) of the seeds, the ensemble."""
    lines = [f"| row | {' | '.join(f'4-hard-{key}' for key in subsets)} |", f"| --- |{' --- |' * len(subsets)}"]
    for name, figures in PUBLISHED.items():
        lines.append(f"| {name}, published | {' | '.join(f'{figures[key]:.1f}' for key in subsets)} |")
    by_subset = {(record["subset"], record["head"]): record for record in records}
    for head in dict.fromkeys(record["head"] for record in records):
        cells = []
        for key in subsets:
            found = by_subset.get((key, head))
            values = found and np.asarray(found["test_accuracy"])
            cells.append(
                f"{values.mean():.1f} ({values.std():.1f}), ens. {found['ensemble_accuracy']:.1f}" if found else ""
            )
        seeds = len(next(record for record in records if record["head"] == head)["test_accuracy"])
        lines.append(f"| this project, head `{head}`, {seeds} seeds (std), ensemble | {' | '.join(cells)} |")
    floors = [by_subset.get((key, records[0]["head"]), {}).get("floor_accuracy") for key in subsets]
    lines.append(f"| bag-of-words floor | {' | '.join('' if f is None else f'{f:.1f}' for f in floors)} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("features_dir", help="ED's features folder (with token views for --heads attention)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds a head and subset (default 5)")
    parser.add_argument("--subsets", nargs="+", choices=list(SUBSETS), default=list(SUBSETS))
    parser.add_argument("--heads", nargs="+", choices=["attention", "none"], default=["attention", "none"])
    parser.add_argument("--work-dir", type=Path, default=Path("outputs/hard-subsets"), help="where the runs go")
    parser.add_argument("--output", type=Path, help="write the records as JSON here too (a rerun goes on from it)")
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = argv[argv.index("--") + 1 :] if "--" in argv else []
    options = parser.parse_args(argv[: argv.index("--")] if "--" in argv else argv)
    # A rerun with the same --output goes on after the last subset and head written there.
    records = json.loads(options.output.read_text()) if options.output and options.output.exists() else []
    done = {(record["subset"], record["head"]) for record in records}
    for head in options.heads:
        pending = [key for key in options.subsets if (key, head) not in done]
        loaded = load_head(options.features_dir, head, options.seeds, flags) if pending else None
        for key in pending:
            folder = options.work_dir / f"{key}-{head}"
            record = subset_run(*loaded, SUBSETS[key], options.seeds, folder)
            records.append({"subset": key, **record})
            print(
                f"4-hard-{key} {head}: test accuracy {np.mean(record['test_accuracy']):.2f} "
                f"+- {np.std(record['test_accuracy']):.2f}, ensemble {record['ensemble_accuracy']:.2f}, "
                f"floor {record['floor_accuracy'] or float('nan'):.2f}, {record['seconds']} s",
                flush=True,
            )
            if options.output:
                options.output.write_text(json.dumps(records, indent=2) + "\n")
    print(table(records, options.subsets))
    return records


if __name__ == "__main__":
    main()
