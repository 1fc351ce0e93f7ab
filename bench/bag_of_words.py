r"""The bag-of-words floor of each data set: the baseline every training run fits beside the head
(`llm_fusion_fec/evaluation/baseline.py`: TF-IDF of words and word pairs, logistic regression, its C chosen on the
validation split by the run's selection metric), fitted here on the data set's texts alone, no features needed, and
scored once on the test split.

    python -m bench.bag_of_words --data-dir ../shared/data ED go_emotion go_emotions_multilabel

One line a data set: the chosen C, the test scores (accuracy and weighted-F1; macro- and micro-F1 for multi-label),
the test ECE, and the seconds the fit and the choice took.
"""

from __future__ import annotations

import argparse
import time

from llm_fusion_fec.data.datasets import load_data
from llm_fusion_fec.evaluation.baseline import fit_bag_of_words, labelled_texts, score_bag_of_words
from llm_fusion_fec.evaluation.metrics import SELECTION_METRICS


def floor_line(dataset: str, data_dir: str | None) -> str:
    data, label_names, problem_type = load_data(dataset, data_dir)
    start = time.perf_counter()
    train, validation = labelled_texts(data["train"]), labelled_texts(data["validation"])
    fitted = fit_bag_of_words(train, validation, problem_type, len(label_names), SELECTION_METRICS[problem_type])
    result = score_bag_of_words(fitted, labelled_texts(data["test"]), wall_time_s=time.perf_counter() - start)
    shown = ("macro_f1", "micro_f1") if problem_type == "multi_label_classification" else ("accuracy", "weighted_f1")
    scores = ", ".join(f"{name} {100 * result.test[name]:.2f}" for name in shown)
    return (
        f"{dataset}: C {result.c:g}, vocabulary {result.vocabulary:,}; test {scores}; "
        f"test ECE {result.calibration.test_ece:.4f}; {result.wall_time_s:.1f} s"
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("datasets", nargs="+", help="data set names or folders")
    parser.add_argument("--data-dir", help="a local copy of the built-in data sets (e.g. ../shared/data)")
    options = parser.parse_args(argv)
    for dataset in options.datasets:
        print(floor_line(dataset, options.data_dir), flush=True)


if __name__ == "__main__":
    main()
