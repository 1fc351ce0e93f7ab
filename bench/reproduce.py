"""Reproduce the paper's table with the real small backbones: fusion vs. each backbone, pairs, probes, multi-label.

    python -m bench.reproduce                    # everything; resumable: finished stages and seeds are skipped
    python -m bench.reproduce --limit 60 --seeds 2 --ablation-seeds 1 --epochs 2 --work-dir /tmp/smoke   # smoke

SmolLM2-135M-Instruct, all-MiniLM-L6-v2 and all-mpnet-base-v2 (from ../shared/models/prepare.py) stand in for
Llama-2-7b-chat, BERT-large and RoBERTa-large. Stages, each kept on disk under --work-dir and skipped when done,
cheapest first so that an interrupted run still leaves whole rows:

1. extract    all splits of ED, go_emotion and go_emotions_multilabel (extract_features.extract, cached per shard);
2. probe      logistic regression on each backbone's standardised features (C chosen on validation);
3. ablation   the fixed head (standardised features, encoder vectors also fed to the MLP) on every subset of the
              backbones (each alone, each pair, all three), and the paper's exact head on all three, fast protocol
              (--fast-* options), --ablation-seeds seeds;
4. multilabel one-vs-rest logistic-regression probes, and the fixed head (fast protocol) on multi-label
              GoEmotions, thresholds chosen on validation;
5. fusion     the fixed head on all three backbones with the paper protocol (Adam 1e-4, batch 10, early stopping
              10), --seeds seeds;
6. fusion-paper  the same with the paper's exact head.

Tables (paper format: accuracy and weighted-F1, mean +- population std over seeds) are printed and written to
WORK_DIR/results.json and WORK_DIR/results.md, with the wall time of each stage.
"""

from __future__ import annotations

import argparse
import itertools
import json
import re
import time
from pathlib import Path

import numpy as np
import torch
from transformers.utils import logging as hf_logging

from bench.bench_extract import small_trio_paths
from llm_fusion_fec.commands.train import parse_args
from llm_fusion_fec.evaluation.metrics import THRESHOLDS
from llm_fusion_fec.features.metadata import load_features
from llm_fusion_fec.features.run import extract
from llm_fusion_fec.features.sweep import fit_logistic
from llm_fusion_fec.training.run import run_training

ROOT = Path(__file__).resolve().parents[1]

DATA_DIR = ROOT.parent / "shared" / "data"
SINGLE_LABEL = ("ED", "go_emotion")
BACKBONES = ("llama", "bert", "roberta")
PAPER = {  # published, Llama-2-7b-chat + BERT-large + RoBERTa-large on a GPU (LLM-FusionClassifier README)
    "ED": {"accuracy": (60.44, 0.47), "weighted_f1": (59.80, 0.54)},
    "go_emotion": {"accuracy": (58.13, 0.40), "weighted_f1": (57.54, 0.23)},
}
STAGES = ("extract", "probe", "ablation", "multilabel", "fusion", "fusion-paper")  # in the order they run
PROBE_CS = (0.01, 0.1, 1.0)  # inverse L2 strengths tried by the probes
# The fix (not in the paper): standardised features, and the encoders' vectors fed to the MLP too.
FIXED = ["--standardize_features", "true", "--encoders_in_tail", "true"]
EXACT = ["--standardize_features", "false", "--encoders_in_tail", "false"]  # the paper's head, whatever the preset


class Stages:
    """Runs stages once: a stage's result is kept in WORK_DIR/done/NAME.json and reused on the next run."""

    def __init__(self, work_dir: Path, report_only: bool = False):
        self.done = work_dir / "done"
        self.done.mkdir(parents=True, exist_ok=True)
        self.report_only = report_only
        self.wall_times: dict[str, float] = {}

    def run(self, name: str, function, *args, **kwargs):
        """The stage's result; None for a stage not run yet when only reporting."""
        path = self.done / f"{name}.json"
        if self.report_only and not path.exists():
            return None
        if path.exists():
            result = json.loads(path.read_text())
        else:
            start = time.perf_counter()
            result = {"result": function(*args, **kwargs), "wall_time_s": round(time.perf_counter() - start, 1)}
            path.write_text(json.dumps(result, indent=2) + "\n")
        self.wall_times[name] = result["wall_time_s"]
        print(f"[{name}] {result['wall_time_s']:.0f} s", flush=True)
        return result["result"]


def extract_stage(dataset: str, output_dir: Path, folders: dict[str, str], args: argparse.Namespace) -> dict:
    result = extract(
        dataset,
        data_dir=str(DATA_DIR),
        preset="small-mean",  # the paper's way of reading the backbones, on the small trio
        backbone_paths=folders,
        output_dir=output_dir,
        limit=args.limit,
        dtype=args.dtype,
    )
    return {"rows": result.metadata.rows, "throughput": result.throughput}


def train_head(
    features_dir: Path, output_dir: Path, dataset: str, seeds: int, backbones: list[str] | None, protocol: list[str]
) -> dict:
    """Train with train_fusion (resuming finished seeds) and keep the figures of the results table."""
    argv = [
        "--dataset",
        dataset,
        "--features_dir",
        str(features_dir),
        "--output_dir",
        str(output_dir),
        "--seeds",
        str(seeds),
        "--resume_from_checkpoint",
        "true",
        "--disable_tqdm",
        "true",
        "--report_to",
        "none",
        *protocol,
    ]
    if backbones:
        argv += ["--backbones", *backbones]
    if seeds > 1:  # the seeds' ensemble too: scoring only, the seeds' rows are the same
        argv += ["--ensemble", "true"]
    results = run_training(*parse_args(argv)).to_dict()
    keep = ("seed", "epochs", "best_epoch", "wall_time_s", "threshold", "test", "history")
    ensemble = {"ensemble": {k: results["ensemble"][k] for k in ("members", "threshold", "test")}} if seeds > 1 else {}
    return {"test": results["test"], "runs": [{k: run[k] for k in keep} for run in results["runs"]], **ensemble}


def probe_inputs(data, name: str) -> tuple[np.ndarray, ...]:
    """Each split's features of one backbone as a float32 matrix (LLM layers flattened) and its labels."""
    out = []
    for split in ("train", "validation", "test"):
        table = data[split].with_format("numpy", columns=[name, "label"])[:]
        out += [table[name].reshape(len(table[name]), -1).astype(np.float32), np.asarray(table["label"])]
    return tuple(out)


def logistic_probe(features_dir: Path, name: str) -> dict:
    """Logistic regression on standardised features, C chosen on validation weighted-F1."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.preprocessing import StandardScaler

    data, _ = load_features(features_dir)
    x_train, y_train, x_val, y_val, x_test, y_test = probe_inputs(data, name)
    scaler = StandardScaler().fit(x_train)
    x_train, x_val, x_test = scaler.transform(x_train), scaler.transform(x_val), scaler.transform(x_test)
    fits = [LogisticRegression(C=c, max_iter=1000).fit(x_train, y_train) for c in PROBE_CS]
    model = max(fits, key=lambda fit: f1_score(y_val, fit.predict(x_val), average="weighted"))
    predicted = model.predict(x_test)
    test = {
        "accuracy": accuracy_score(y_test, predicted),
        "weighted_f1": f1_score(y_test, predicted, average="weighted"),
    }
    return {"C": model.C, "threshold": None, "test": test}


def multilabel_probe(features_dir: Path, name: str) -> dict:
    """One-vs-rest logistic regression on standardised features; C and the decision threshold chosen on validation
    macro-F1."""
    from sklearn.metrics import f1_score

    data, _ = load_features(features_dir)
    x_train, y_train, x_val, y_val, x_test, y_test = probe_inputs(data, name)
    mean, std = x_train.mean(0), x_train.std(0) + 1e-6
    x_train, x_val, x_test = (torch.from_numpy((x - mean) / std) for x in (x_train, x_val, x_test))
    best = None
    for c in PROBE_CS:
        linear = fit_logistic(x_train, torch.from_numpy(y_train.astype(np.float32)), c)
        val_scores, test_scores = linear(x_val).sigmoid().numpy(), linear(x_test).sigmoid().numpy()
        for threshold in THRESHOLDS:
            val = f1_score(y_val, val_scores > threshold, average="macro", zero_division=0)
            if best is None or val > best[0]:
                best = (val, c, threshold, test_scores)
    _, c, threshold, test_scores = best
    predicted = test_scores > threshold
    test = {
        "micro_f1": f1_score(y_test, predicted, average="micro", zero_division=0),
        "macro_f1": f1_score(y_test, predicted, average="macro", zero_division=0),
    }
    return {"C": c, "threshold": round(float(threshold), 2), "test": test}


def fmt(stat: dict | float) -> str:
    """A score in %: mean +- population std over seeds, or the value alone for a probe or a single seed."""
    if isinstance(stat, dict) and stat["std"] > 0:
        return f"{100 * stat['mean']:.2f} +- {100 * stat['std']:.2f}"
    return f"{100 * (stat['mean'] if isinstance(stat, dict) else stat):.2f}"


def epochs(row: dict) -> str:
    """Each seed's epochs run and, in brackets, the epoch whose checkpoint was kept ("-" for a probe)."""
    runs = row.get("runs", [])
    return ", ".join(f"{run['epochs']:g} ({run.get('best_epoch') or 0:g})" for run in runs) or "-"


def tables(results: dict, fast_protocol: str) -> str:
    lines = ["## Single-label: accuracy and weighted-F1 (%), test split", ""]
    lines += [
        "Backbones by the slot they fill: llama = SmolLM2-135M-Instruct, bert = all-MiniLM-L6-v2, roberta = "
        "all-mpnet-base-v2. Mean +- population std over seeds.",
        "",
    ]
    lines += [
        "| data set | model | protocol | seeds | accuracy | weighted-F1 | epochs run (kept) per seed |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for dataset in SINGLE_LABEL:
        paper = PAPER[dataset]
        lines.append(
            f"| {dataset} | paper: Llama-2-7b-chat + BERT-large + RoBERTa-large (published) | paper | 5 | "
            f"{paper['accuracy'][0]:.2f} +- {paper['accuracy'][1]:.2f} | "
            f"{paper['weighted_f1'][0]:.2f} +- {paper['weighted_f1'][1]:.2f} | - |"
        )
        for key, row in results.get(dataset, {}).items():
            protocol = "paper" if key.startswith("fusion") else fast_protocol if key.startswith("head") else "probe"
            count = len(row.get("runs", [])) or "-"
            test = row["test"]
            lines.append(
                f"| {dataset} | {key} | {protocol} | {count} | {fmt(test['accuracy'])} | "
                f"{fmt(test['weighted_f1'])} | {epochs(row)} |"
            )
            if row.get("ensemble"):
                test = row["ensemble"]["test"]
                lines.append(
                    f"| {dataset} | {key}, ensemble of the {count} seeds | {protocol} | {count} | "
                    f"{fmt(test['accuracy'])} | {fmt(test['weighted_f1'])} | - |"
                )
    multi = results.get("go_emotions_multilabel", {})
    if multi:
        lines += ["", "## Multi-label GoEmotions (28 labels): micro- and macro-F1 (%), test split", ""]
        lines += ["| model | seeds | threshold | micro-F1 | macro-F1 |", "| --- | --- | --- | --- | --- |"]
        for key, row in multi.items():
            thresholds = sorted({run["threshold"] for run in row["runs"]}) if "runs" in row else [row["threshold"]]
            count = len(row.get("runs", [])) or "-"
            lines.append(
                f"| {key} | {count} | {', '.join(map(str, thresholds))} | {fmt(row['test']['micro_f1'])} | "
                f"{fmt(row['test']['macro_f1'])} |"
            )
            if row.get("ensemble"):
                test = row["ensemble"]
                lines.append(
                    f"| {key}, ensemble of the {count} seeds | {count} | {test['threshold']} | "
                    f"{fmt(test['test']['micro_f1'])} | {fmt(test['test']['macro_f1'])} |"
                )
    return "\n".join(lines)


def parse_reproduce_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default=str(ROOT / "runs" / "reproduce"))
    parser.add_argument("--limit", type=int, default=None, help="first N rows of each split (smoke version)")
    parser.add_argument("--seeds", type=int, default=5, help="seeds of the headline fusion rows (paper: 5)")
    parser.add_argument("--ablation-seeds", type=int, default=3, help="seeds of each ablation row")
    parser.add_argument("--epochs", type=int, default=200, help="maximum epochs (paper: 200)")
    parser.add_argument("--fast-batch-size", type=int, default=100)
    parser.add_argument("--fast-learning-rate", type=float, default=1e-3)
    parser.add_argument("--dtype", default="float32", help="extraction compute dtype; bfloat16 is ~2x faster on AMX")
    parser.add_argument("--stages", nargs="+", default=list(STAGES), choices=STAGES)
    parser.add_argument("--datasets", nargs="+", default=list(SINGLE_LABEL))
    parser.add_argument(
        "--report-only",
        action="store_true",
        help="the tables of what is finished, each row with its most seeds; run nothing",
    )
    return parser.parse_args()


class Rows:
    """The rows of the results tables that each stage after extraction adds for one data set, every row a stage of
    its own (run once, then read back), on the features under WORK_DIR/features."""

    def __init__(self, args: argparse.Namespace, stages: Stages):
        self.args, self.stages, self.work = args, stages, Path(args.work_dir)
        self.paper = ["--num_train_epochs", str(args.epochs)]
        self.fast = [
            *self.paper,
            "--per_device_train_batch_size",
            str(args.fast_batch_size),
            "--learning_rate",
            str(args.fast_learning_rate),
        ]
        self.fast_protocol = f"fast (batch {args.fast_batch_size}, lr {args.fast_learning_rate:g})"

    def of_stage(self, stage: str, dataset: str) -> dict[str, dict | None]:
        stages = {
            "probe": self.probes,
            "ablation": self.ablation,
            "multilabel": self.multilabel,
            "fusion": self.fusion,
            "fusion-paper": self.fusion_paper,
        }
        return stages[stage](dataset)

    def head(self, stage: str, dataset: str, seeds: int, subset: list[str] | None, protocol: list[str]) -> dict | None:
        # The stage name holds its seeds: asking for more later trains only the missing ones (train_fusion resumes).
        if self.stages.report_only:  # the most seeds finished so far
            done = self.stages.done.iterdir()
            finished = [re.fullmatch(re.escape(stage) + r"-(\d+)seeds", path.stem) for path in done]
            seeds = max((int(match[1]) for match in finished if match), default=seeds)
        return self.stages.run(
            f"{stage}-{seeds}seeds",
            train_head,
            self.work / "features" / dataset,
            self.work / "heads" / stage,
            dataset,
            seeds,
            subset,
            protocol,
        )

    def probes(self, dataset: str) -> dict[str, dict | None]:
        features = self.work / "features" / dataset
        return {
            f"probe: logistic regression on {name}": self.stages.run(
                f"probe-{dataset}-{name}", logistic_probe, features, name
            )
            for name in BACKBONES
        }

    def ablation(self, dataset: str) -> dict[str, dict | None]:
        """The fixed head on every subset of the backbones, and the paper's exact head, fast protocol."""
        rows, seeds = {}, self.args.ablation_seeds
        for subset in [list(c) for r in (3, 1, 2) for c in itertools.combinations(BACKBONES, r)]:
            stage = f"ablation-fixed-{dataset}-{'-'.join(subset)}"
            rows["head (fixed): " + " + ".join(subset)] = self.head(
                stage, dataset, seeds, subset, [*self.fast, *FIXED]
            )
        rows["head (paper configuration): llama + bert + roberta"] = self.head(
            f"ablation-{dataset}-llama-bert-roberta", dataset, seeds, None, [*self.fast, *EXACT]
        )
        return rows

    def multilabel(self, dataset: str) -> dict[str, dict | None]:
        features = self.work / "features" / dataset
        rows = {
            f"probe: one-vs-rest logistic regression on {name}": self.stages.run(
                f"multilabel-probe-{name}", multilabel_probe, features, name
            )
            for name in BACKBONES
        }
        rows[f"fusion (fixed), {self.fast_protocol}"] = self.head(
            "multilabel-fusion-fixed", dataset, self.args.ablation_seeds, None, [*self.fast, *FIXED]
        )
        return rows

    def fusion(self, dataset: str) -> dict[str, dict | None]:
        """The paper protocol, the fixed head."""
        row = self.head(f"fusion-fixed-{dataset}", dataset, self.args.seeds, None, [*self.paper, *FIXED])
        return {"fusion (fixed: standardised, encoders in tail)": row}

    def fusion_paper(self, dataset: str) -> dict[str, dict | None]:
        """The paper protocol, the paper's exact head."""
        row = self.head(f"fusion-{dataset}", dataset, self.args.seeds, None, [*self.paper, *EXACT])
        return {"fusion (paper configuration)": row}


def write_report(work: Path, results: dict[str, dict], stages: Stages, fast_protocol: str) -> None:
    """Print the tables of the finished rows with each stage's wall time; write them to WORK_DIR/results.md and
    WORK_DIR/results.json."""
    results = {
        dataset: {key: row for key, row in rows.items() if row is not None} for dataset, rows in results.items()
    }
    text = tables(results, fast_protocol)
    text += "\n\n## Wall time of each stage (s)\n\n| stage | s |\n| --- | --- |\n"
    text += "\n".join(f"| {name} | {seconds:.0f} |" for name, seconds in stages.wall_times.items())
    print(text)
    (work / "results.md").write_text(text + "\n")
    (work / "results.json").write_text(json.dumps({"results": results, "wall_time_s": stages.wall_times}, indent=2))


def main() -> None:
    args = parse_reproduce_args()
    hf_logging.disable_progress_bar()  # a bar per checkpoint written or read, as train_fusion.py hides them
    work = Path(args.work_dir)
    stages = Stages(work, args.report_only)
    folders = small_trio_paths()
    datasets = [*args.datasets, *(["go_emotions_multilabel"] if "multilabel" in args.stages else [])]
    for dataset in datasets:
        if "extract" in args.stages or not (work / "features" / dataset).exists():
            stages.run(f"extract-{dataset}", extract_stage, dataset, work / "features" / dataset, folders, args)

    # Cheapest and most telling first, over all data sets: a session that stops early still leaves whole rows behind.
    rows = Rows(args, stages)
    results: dict[str, dict] = {dataset: {} for dataset in args.datasets}
    for stage in STAGES[1:]:
        if stage in args.stages:
            for dataset in ["go_emotions_multilabel"] if stage == "multilabel" else args.datasets:
                results.setdefault(dataset, {}).update(rows.of_stage(stage, dataset))
    write_report(work, results, stages, rows.fast_protocol)


if __name__ == "__main__":
    main()
