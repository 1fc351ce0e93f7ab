r"""Where the label hangs on a word: a trained head against the bag-of-words floor on the test texts that hold a cue
word, for single-label data.

    python -m bench.lexical_cues --features-dir features/GoE-tokens --model outputs/goe-tokens \
        --model outputs/goe-notokens --output bench/results/lexical_cues_goe.txt

A cue word is a word (the floor's own tokenisation, lower-cased) that at least `--min-texts` training texts hold and
of which at least `--precision` are of one label: found on the train split alone, never on test labels. The cue rows
are the test texts that hold a cue word; the rest are the other rows. Each model (a folder `fec train` wrote, its
saved head: the ensemble where it saved one) and the floor (`fit_bag_of_words`: C chosen on validation, as every run
fits it) are scored on both, with the accuracy of reading the cue word alone (its label; the first cue word's where a
text has several) as a yardstick.
"""

from __future__ import annotations

import argparse
import re
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import torch

from llm_fusion_fec.data.splits import training_splits
from llm_fusion_fec.evaluation.baseline import fit_bag_of_words, labelled_texts
from llm_fusion_fec.evaluation.metrics import SELECTION_METRICS
from llm_fusion_fec.features.metadata import load_features
from llm_fusion_fec.inference.loading import load_model
from llm_fusion_fec.training.trainer import InMemoryBatches, RowOrderBatches

WORD = re.compile(r"(?u)\b\w\w+\b")  # TfidfVectorizer's default token pattern: what the floor reads


def cue_words(texts: list[str], labels: np.ndarray, precision: float, min_texts: int) -> dict[str, int]:
    """Each word that at least `min_texts` of `texts` hold and of which at least `precision` are of one label, with
    that label."""
    per_word: dict[str, Counter] = defaultdict(Counter)
    for text, label in zip(texts, labels, strict=True):
        for word in set(WORD.findall(text.lower())):
            per_word[word][int(label)] += 1
    cues = {}
    for word, counts in per_word.items():
        label, count = counts.most_common(1)[0]
        if counts.total() >= min_texts and count / counts.total() >= precision:
            cues[word] = label
    return cues


def first_cue(text: str, cues: dict[str, int]) -> int | None:
    """The label of the first cue word of `text`, or None."""
    return next((cues[word] for word in WORD.findall(text.lower()) if word in cues), None)


@torch.inference_mode()
def head_predictions(model_dir: str, data) -> np.ndarray:
    """The saved head's label for each test row, from the features folder's test split."""
    model = load_model(model_dir, dtype=torch.float32).eval()
    test = training_splits(data, model.config)["test"]
    batches = InMemoryBatches(test, RowOrderBatches(len(test), 512), torch.device("cpu"), stacked=False)
    predictions = []
    for batch in batches:
        batch.pop("labels")
        predictions.append(model(**batch).logits.argmax(-1))
    return torch.cat(predictions).numpy()


def accuracy(predicted: np.ndarray, labels: np.ndarray, rows: np.ndarray) -> str:
    return f"{100 * np.mean(predicted[rows] == labels[rows]):.2f}" if rows.any() else "-"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features-dir", required=True, help="the features folder the models were trained on")
    parser.add_argument("--model", action="append", required=True, help="a folder `fec train` wrote (repeatable)")
    parser.add_argument("--precision", type=float, default=0.8, help="a cue word's share of texts of one label")
    parser.add_argument("--min-texts", type=int, default=20, help="training texts a cue word is in, at least")
    parser.add_argument("--output", help="also write the table to this file")
    options = parser.parse_args(argv)

    data, metadata = load_features(options.features_dir)
    if metadata.problem_type != "single_label_classification":
        parser.error("cue words are defined for single-label data only")
    train, validation, test = (labelled_texts(data[split]) for split in ("train", "validation", "test"))
    cues = cue_words(train.texts, train.labels, options.precision, options.min_texts)
    read = [first_cue(text, cues) for text in test.texts]
    cue_rows = np.array([label is not None for label in read])
    by_word = np.array([-1 if label is None else label for label in read])

    problem_type, num_labels = metadata.problem_type, len(metadata.label_names)
    floor = fit_bag_of_words(train, validation, problem_type, num_labels, SELECTION_METRICS[problem_type])
    rows = {"the bag-of-words floor (C chosen on validation)": floor.probabilities(test.texts).argmax(-1)}
    rows |= {f"head: {model}": head_predictions(model, data) for model in options.model}
    rows["the cue word alone (its label)"] = by_word

    names = ", ".join(sorted(cues, key=lambda word: (cues[word], word))[:40])
    lines = [
        f"# python -m bench.lexical_cues --features-dir {options.features_dir} "
        + " ".join(f"--model {model}" for model in options.model)
        + f" --precision {options.precision} --min-texts {options.min_texts}",
        f"{len(cues)} cue words from the train split (>= {options.min_texts} texts, >= {options.precision:.0%} one "
        f"label), e.g. {names}",
        f"test rows: {len(test.texts)}, of which {int(cue_rows.sum())} hold a cue word "
        f"({cue_rows.mean():.1%}), {int((~cue_rows).sum())} hold none",
        "",
        "| predictor | test accuracy, every row | cue rows | other rows |",
        "| --- | --- | --- | --- |",
    ]
    every, none = np.ones_like(cue_rows), np.zeros_like(cue_rows)
    for name, predicted in rows.items():
        alone = predicted is by_word  # it reads nothing on the other rows
        columns = [none if alone else every, cue_rows, none if alone else ~cue_rows]
        lines.append(f"| {name} | " + " | ".join(accuracy(predicted, test.labels, c) for c in columns) + " |")
    print("\n".join(lines))
    if options.output:
        Path(options.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
