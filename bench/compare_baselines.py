r"""What a user would pick instead, measured side by side on the same splits and this machine: the fused head (the
features folder's preset and recipe, 5 seeds and their ensemble), logistic regression on the same features,
fine-tuning a small encoder end to end with the `Trainer`, SetFit in its few-shot regime (beside the fused head and
the linear probe trained on the same draws), and static `model2vec` embeddings with logistic regression.

    python -m bench.compare_baselines --dataset ED --data_dir ../shared/data/ED --features_dir features/ED-small
    python -m bench.compare_baselines --dataset ED --data_dir ../shared/data/ED --limit 200 --work_dir /tmp/quick

Every choice is made on the validation split (the fine-tuning learning rate and best epoch, the L2 strengths, the
multi-label thresholds); each row scores the test split once. Each row's figures go to WORK_DIR/rows/ROW.json as it
finishes, and a run skips the rows already there (resumable; delete a file to run its row again). A row records the
digest of the test rows it scored, so the table shows that every row scored the same ones. Without
`--features_dir`, the small preset's features are extracted into WORK_DIR/features first (with `--limit`, of the
first rows of each split). Needs the `compare` extra's packages (`setfit`, `model2vec`, scikit-learn) for their rows.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from bench.bench_extract import SMALL_TRIO, prepared_folders, small_trio_paths
from llm_fusion_fec.data.datasets import data_digest, load_data
from llm_fusion_fec.evaluation.metrics import SELECTION_METRICS, choose_threshold, load_metric, score

ROWS = ("fused", "linear", "finetune-minilm", "finetune-mpnet", "setfit", "model2vec")
MULTI_LABEL_ROWS = ("fused", "linear", "finetune-minilm", "finetune-mpnet")
ENCODERS = {"minilm": SMALL_TRIO["bert"], "mpnet": SMALL_TRIO["roberta"]}  # prepare.py's folder names


def folder_mb(*paths: str | Path) -> float:
    """Disk size of files and folders, in MB (what a user stores and serves)."""
    total = 0
    for path in map(Path, paths):
        files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        total += sum(file.stat().st_size for file in files)
    return total / 1e6


def texts_per_s(predict: Callable[[list[str]], object], texts: list[str]) -> float:
    """Texts a second of one call of `predict` on `texts`, after a warm-up call on a few of them."""
    predict(texts[:4])
    start = time.perf_counter()
    predict(texts)
    return len(texts) / (time.perf_counter() - start)


class Comparison:
    """The data, the features and the options shared by every row; `run(row)` computes a row or reads it back."""

    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.work = Path(args.work_dir)
        (self.work / "rows").mkdir(parents=True, exist_ok=True)
        self.data, self.label_names, self.problem_type = load_data(args.dataset, args.data_dir, limit=args.limit)
        self.multi_label = self.problem_type == "multi_label_classification"
        self.metric = load_metric(self.problem_type)
        self.selection = SELECTION_METRICS[self.problem_type]
        self.folders = prepared_folders()
        self.backbone_paths = small_trio_paths(self.folders)
        self.test_digest = data_digest(self.data["test"])
        self.infer_texts = self.data["test"]["text"][: args.infer_texts]
        self._features_dir = args.features_dir

    # --- shared pieces -------------------------------------------------------------------------------------------

    @property
    def features_dir(self) -> str:
        """The fused head's features: the folder given, else the small preset's, extracted here once."""
        if self._features_dir is None:
            from llm_fusion_fec import extract

            output = self.work / "features"
            extract(
                self.args.dataset,
                data_dir=self.args.data_dir,
                preset="small",
                limit=self.args.limit,
                output_dir=str(output),
                backbone_paths=self.backbone_paths,
            )
            self._features_dir = str(output)
        return self._features_dir

    def labels(self, split: str) -> np.ndarray:
        return np.asarray(self.data[split]["label"])

    def scores(self, val_logits: np.ndarray, test_logits: np.ndarray) -> tuple[dict, dict, float | None]:
        """Validation and test scores of a method's logits, the multi-label threshold chosen on validation."""
        threshold = None
        if self.multi_label:
            threshold, validation = choose_threshold(
                self.metric, val_logits, self.labels("validation"), self.selection
            )
        else:
            validation = score(self.metric, val_logits, self.labels("validation"), 0.5)
        return validation, score(self.metric, test_logits, self.labels("test"), threshold or 0.5), threshold

    def run(self, row: str) -> dict:
        path = self.work / "rows" / f"{row}.json"
        if path.is_file():
            return json.loads(path.read_text())
        print(f"--- {row}", flush=True)
        method = {"fused": self.fused, "linear": self.linear, "setfit": self.setfit, "model2vec": self.model2vec}
        start = time.perf_counter()
        records = self.finetune(row.split("-", 1)[1]) if row.startswith("finetune-") else method[row]()
        records = records if isinstance(records, list) else [records]
        for record in records:
            record.setdefault("test_digest", self.test_digest)
            record.setdefault("test_rows", len(self.data["test"]))
        result = {"row": row, "wall_s": time.perf_counter() - start, "records": records}
        path.write_text(json.dumps(result, indent=2) + "\n")
        return result

    # --- 1. the fused head ---------------------------------------------------------------------------------------

    def train_fused(self, features_dir: str, output: Path, seeds: int) -> tuple[object, float]:
        from llm_fusion_fec import train

        start = time.perf_counter()
        results = train(
            features_dir=features_dir,
            output_dir=str(output),
            seeds=seeds,
            ensemble=seeds > 1,
            overwrite_output_dir=True,
            report_to="none",
            disable_tqdm=True,
            resume_from_checkpoint="true",
        )
        return results, time.perf_counter() - start

    def fused(self) -> dict:
        from llm_fusion_fec.features.metadata import load_features
        from llm_fusion_fec.serving.space import load_demo_pipeline

        output = self.work / "fused"
        results, wall = self.train_fused(self.features_dir, output, self.args.seeds)
        features, _ = load_features(self.features_dir)
        best = results.ensemble.test if results.ensemble else results.runs[0].test
        seeds = {key: [run.test[key] for run in results.runs] for key in best}
        pipe = load_demo_pipeline(output, self.backbone_paths, "cpu")
        backbones = sorted(set(self.backbone_paths.values()))
        return {
            "method": f"fused head, {len(results.runs)} seeds" + (" + ensemble" if results.ensemble else ""),
            "test": best,
            "test_seed_mean": {key: float(np.mean(values)) for key, values in seeds.items()},
            "test_seed_std": {key: float(np.std(values)) for key, values in seeds.items()},
            "train_s": wall,
            "texts_per_s": texts_per_s(lambda texts: pipe(texts, batch_size=32), self.infer_texts),
            "disk_mb": folder_mb(output / "model.safetensors", *backbones),
            "test_digest": data_digest(features["test"].select_columns(["text", "label"])),
            "chosen": f"protocol {results.protocol}, checkpoints by validation",
        }

    # --- 2. logistic regression on the same features ------------------------------------------------------------

    def linear(self) -> dict:
        from bench.linear_baseline import fit_linear_baseline
        from llm_fusion_fec.data.splits import build_config
        from llm_fusion_fec.features.metadata import load_features, read_metadata

        start = time.perf_counter()
        baseline, probe = fit_linear_baseline(self.features_dir)
        wall = time.perf_counter() - start
        metadata = read_metadata(self.features_dir)
        features, _ = load_features(self.features_dir)
        return {
            "method": "logistic regression on the same features",
            "test": baseline.test,
            "train_s": wall,
            "texts_per_s": texts_per_s(self.probe_predictor(build_config(metadata), probe), self.infer_texts),
            "disk_mb": folder_mb(*sorted(set(self.backbone_paths.values()))),
            "test_digest": data_digest(features["test"].select_columns(["text", "label"])),
            "chosen": f"C {baseline.c:g}" + (f", threshold {baseline.threshold:g}" if baseline.threshold else ""),
        }

    def probe_predictor(self, config, probe) -> Callable[[list[str]], np.ndarray]:
        """The linear baseline's own inference path: the frozen backbones' features, then the probe."""
        from bench.probe_features import probe_input
        from modeling_llm_fusion import LLMFusionForSequenceClassification

        model = LLMFusionForSequenceClassification(config).eval()
        model.load_backbones(self.backbone_paths, device="cpu")

        def predict(texts: list[str]) -> np.ndarray:
            logits = []
            for start in range(0, len(texts), 32):
                features = model.backbone_features(texts[start : start + 32])
                logits.append(probe.logits(probe_input(features, config.backbones)))
            return np.concatenate(logits)

        return predict

    # --- 3. fine-tuning an encoder end to end -------------------------------------------------------------------

    def finetune(self, encoder: str) -> dict:
        from datasets import DatasetDict
        from transformers import (
            AutoModelForSequenceClassification,
            AutoTokenizer,
            DataCollatorWithPadding,
            EarlyStoppingCallback,
            Trainer,
            TrainingArguments,
            pipeline,
        )

        path = self.folders[ENCODERS[encoder]]
        tokenizer = AutoTokenizer.from_pretrained(path)
        data = DatasetDict(self.data).map(
            lambda batch: tokenizer(batch["text"], truncation=True, max_length=128), batched=True
        )
        data = data.rename_column("label", "labels").remove_columns(["text"])

        def compute_metrics(prediction) -> dict:
            logits, labels = prediction
            return (
                score(self.metric, logits, labels, 0.5)
                if not self.multi_label
                else {self.selection: choose_threshold(self.metric, logits, labels, self.selection)[1][self.selection]}
            )

        epochs = self.args.finetune_epochs.get(encoder, self.args.finetune_epochs["default"])
        tried = {}
        for learning_rate in self.args.finetune_lrs:
            folder = self.work / f"finetune-{encoder}" / f"lr{learning_rate:g}"
            done = folder / "chosen.json"
            if not done.is_file():
                model = AutoModelForSequenceClassification.from_pretrained(
                    path,
                    num_labels=len(self.label_names),
                    problem_type=self.problem_type,
                    id2label=dict(enumerate(self.label_names)),
                    label2id={name: i for i, name in enumerate(self.label_names)},
                    dtype=torch.float32,
                )
                arguments = TrainingArguments(
                    output_dir=str(folder / "checkpoints"),
                    learning_rate=learning_rate,
                    num_train_epochs=epochs,
                    per_device_train_batch_size=32,
                    per_device_eval_batch_size=128,
                    warmup_steps=0.1,
                    weight_decay=0.01,
                    eval_strategy="epoch",
                    save_strategy="epoch",
                    save_total_limit=1,
                    load_best_model_at_end=True,
                    metric_for_best_model=self.selection,
                    seed=42,
                    report_to="none",
                    disable_tqdm=True,
                )
                start = time.perf_counter()
                trainer = Trainer(
                    model=model,
                    args=arguments,
                    train_dataset=data["train"],
                    eval_dataset=data["validation"],
                    processing_class=tokenizer,
                    data_collator=DataCollatorWithPadding(tokenizer),
                    compute_metrics=compute_metrics,
                    callbacks=[EarlyStoppingCallback(early_stopping_patience=1)],
                )
                trainer.train()
                wall = time.perf_counter() - start
                trainer.save_model(str(folder / "model"))
                validation = trainer.predict(data["validation"]).predictions
                np.save(folder / "validation_logits.npy", validation)
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
                record = {"train_s": wall, "validation": float(trainer.state.best_metric)}
                done.write_text(json.dumps(record))
            tried[learning_rate] = json.loads(done.read_text())
        learning_rate = max(tried, key=lambda lr: tried[lr]["validation"])
        folder = self.work / f"finetune-{encoder}" / f"lr{learning_rate:g}"
        model = AutoModelForSequenceClassification.from_pretrained(str(folder / "model"), dtype=torch.float32).eval()
        collate = DataCollatorWithPadding(tokenizer)

        def logits_of(split) -> np.ndarray:
            out = []
            with torch.no_grad():
                for start in range(0, len(split), 128):
                    batch = collate([split[i] for i in range(start, min(start + 128, len(split)))])
                    batch.pop("labels", None)
                    out.append(model(**batch).logits.float().numpy())
            return np.concatenate(out)

        _, test, threshold = self.scores(np.load(folder / "validation_logits.npy"), logits_of(data["test"]))
        classify = pipeline("text-classification", model=model, tokenizer=tokenizer, device="cpu")
        chosen = f"lr {learning_rate:g} of {', '.join(f'{lr:g}' for lr in tried)}, best epoch by validation"
        return {
            "method": f"fine-tuned {ENCODERS[encoder]} ({epochs} epochs at most)",
            "test": test,
            "train_s": sum(record["train_s"] for record in tried.values()),
            "texts_per_s": texts_per_s(
                lambda texts: classify(texts, batch_size=32, truncation=True), self.infer_texts
            ),
            "disk_mb": folder_mb(folder / "model"),
            "chosen": chosen + (f", threshold {threshold:g}" if threshold else ""),
        }

    # --- 4. SetFit, few-shot, beside the fused head and the probe on the same draws ------------------------------

    def draw(self, shots: int, seed: int) -> list[int]:
        """`shots` train rows of each label (all of a label's rows where it has fewer), drawn with `seed`."""
        rng = np.random.default_rng(seed)
        labels = self.labels("train")
        rows = [
            rng.choice(np.flatnonzero(labels == label), size=min(shots, int((labels == label).sum())), replace=False)
            for label in np.unique(labels)
        ]
        return sorted(int(i) for i in np.concatenate(rows))

    def setfit(self) -> list[dict]:
        from setfit import SetFitModel, Trainer, TrainingArguments

        from bench.linear_baseline import linear_baseline

        records = []
        for shots in self.args.shots:
            for seed in range(self.args.draws):
                rows = self.draw(shots, seed)
                folder = self.work / "setfit" / f"{shots}-shot-{seed}"
                train = self.data["train"].select(rows)
                start = time.perf_counter()
                model = SetFitModel.from_pretrained(self.folders[ENCODERS["mpnet"]], labels=self.label_names)
                arguments = TrainingArguments(
                    output_dir=str(folder / "checkpoints"),
                    batch_size=16,
                    num_epochs=1,
                    max_steps=self.args.setfit_max_steps,
                    seed=seed,
                    report_to="none",
                )
                Trainer(model=model, args=arguments, train_dataset=train).train()
                wall = time.perf_counter() - start
                shutil.rmtree(folder / "checkpoints", ignore_errors=True)
                model.save_pretrained(str(folder))
                test = score(
                    self.metric, self.setfit_logits(model, self.data["test"]["text"]), self.labels("test"), 0.5
                )
                records.append(
                    {
                        "method": f"SetFit (all-mpnet-base-v2), {shots} per label, draw {seed}",
                        "shots": shots,
                        "draw": seed,
                        "train_rows": len(rows),
                        "test": test,
                        "train_s": wall,
                        "texts_per_s": texts_per_s(
                            lambda texts: model.predict(texts, batch_size=32), self.infer_texts
                        ),
                        "disk_mb": folder_mb(folder),
                    }
                )
                subset = self.subset_features(rows, self.work / "features-draws" / f"{shots}-shot-{seed}")
                results, wall = self.train_fused(
                    str(subset), self.work / "fused-draws" / f"{shots}-shot-{seed}", self.args.seeds
                )
                records.append(
                    {
                        "method": f"fused head on the same draw ({shots} per label, draw {seed})",
                        "shots": shots,
                        "draw": seed,
                        "train_rows": len(rows),
                        "test": results.ensemble.test if results.ensemble else results.runs[0].test,
                        "train_s": wall,
                    }
                )
                start = time.perf_counter()
                baseline = linear_baseline(subset)
                records.append(
                    {
                        "method": f"linear probe on the same draw ({shots} per label, draw {seed})",
                        "shots": shots,
                        "draw": seed,
                        "train_rows": len(rows),
                        "test": baseline.test,
                        "train_s": time.perf_counter() - start,
                    }
                )
        return records

    def setfit_logits(self, model, texts: list[str]) -> np.ndarray:
        """SetFit's class probabilities as log-probabilities over every label (a label its draw lacks: -inf)."""
        probabilities = np.asarray(model.predict_proba(texts, batch_size=32), dtype=np.float64)
        classes = [int(c) for c in getattr(model.model_head, "classes_", range(probabilities.shape[1]))]
        logits = np.full((len(texts), len(self.label_names)), -np.inf)
        logits[:, classes] = np.log(np.maximum(probabilities, 1e-12))
        return logits

    def subset_features(self, rows: list[int], output: Path) -> Path:
        """The features folder with its train split cut to `rows` (validation and test as they are)."""
        import datasets

        from llm_fusion_fec.features.checksums import content_digest, split_checksum
        from llm_fusion_fec.features.metadata import METADATA_FILE, load_features

        if (output / METADATA_FILE).is_file():
            return output
        features, metadata = load_features(self.features_dir)
        features["train"] = features["train"].select(rows)
        features.save_to_disk(str(output))
        features = datasets.load_from_disk(str(output))
        metadata = dataclasses.replace(  # the record of the cut folder, so that training verifies it
            metadata,
            rows={split: len(features[split]) for split in features},
            split_checksums={split: split_checksum(output / split) for split in features},
            content_digests={split: content_digest(features[split]) for split in features},
            data_digests={**metadata.data_digests, "train": data_digest(features["train"])},
        )
        (output / METADATA_FILE).write_text(json.dumps(metadata.sealed().to_dict(), indent=2) + "\n")
        return output

    # --- 5. static embeddings: model2vec + logistic regression --------------------------------------------------

    def model2vec(self) -> dict:
        import joblib
        from model2vec.distill import distill
        from sklearn.linear_model import LogisticRegression

        encoder = self.args.model2vec_encoder
        folder = self.work / "model2vec"
        start = time.perf_counter()
        static = distill(model_name=self.folders[ENCODERS[encoder]], pca_dims=256)
        x = {split: static.encode(self.data[split]["text"]) for split in ("train", "validation", "test")}
        fits = {}
        for c in self.args.cs:
            classifier = LogisticRegression(C=c, max_iter=2000).fit(x["train"], self.labels("train"))
            val = score(self.metric, classifier.predict_log_proba(x["validation"]), self.labels("validation"), 0.5)
            fits[c] = (val[self.selection], classifier)
        c = max(fits, key=lambda key: fits[key][0])
        classifier = fits[c][1]
        wall = time.perf_counter() - start
        static.save_pretrained(str(folder / "static"))
        joblib.dump(classifier, folder / "classifier.joblib")
        test = score(self.metric, classifier.predict_log_proba(x["test"]), self.labels("test"), 0.5)
        return {
            "method": f"model2vec distilled from {ENCODERS[encoder]} + logistic regression",
            "test": test,
            "train_s": wall,
            "texts_per_s": texts_per_s(lambda texts: classifier.predict(static.encode(texts)), self.infer_texts),
            "disk_mb": folder_mb(folder),
            "chosen": f"C {c:g} of {', '.join(f'{v:g}' for v in self.args.cs)}",
        }


def table(results: list[dict], problem_type: str) -> str:
    keys = ("macro_f1", "micro_f1") if problem_type == "multi_label_classification" else ("accuracy", "weighted_f1")
    header = f"| row | {' | '.join(keys)} | train s | texts/s | disk MB | chosen on validation | test rows |"
    lines = [header, "|" + " --- |" * (len(keys) + 6)]
    for result in results:
        for record in result["records"]:
            test = record["test"]
            figures = []
            for key in keys:
                figure = f"{100 * test[key]:.2f}"
                if "test_seed_mean" in record:
                    mean, std = record["test_seed_mean"][key], record["test_seed_std"][key]
                    figure += f" (seeds {100 * mean:.2f} +- {100 * std:.2f})"
                figures.append(figure)
            speed = f"{record['texts_per_s']:.1f}" if "texts_per_s" in record else "-"
            disk = f"{record['disk_mb']:.0f}" if "disk_mb" in record else "-"
            lines.append(
                f"| {record['method']} | {' | '.join(figures)} | {record['train_s']:.0f} | {speed} | {disk} | "
                f"{record.get('chosen', '-')} | {record['test_rows']} ({record['test_digest'][:8]}) |"
            )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="ED")
    parser.add_argument("--data_dir", help="the data set's folder (e.g. ../shared/data/ED)")
    parser.add_argument("--features_dir", help="the fused head's features (default: extract the small preset's)")
    parser.add_argument("--work_dir", default="runs/compare")
    parser.add_argument("--rows", nargs="+", choices=ROWS, help="default: every row the problem type has")
    parser.add_argument("--limit", type=int, help="the first N rows of each split: a quick run")
    parser.add_argument("--seeds", type=int, default=5, help="the fused head's seeds (ensembled when more than 1)")
    parser.add_argument("--finetune_lrs", nargs="+", type=float, default=[2e-5, 5e-5])
    parser.add_argument(
        "--finetune_epochs",
        nargs="+",
        default=["default=3"],
        metavar="[ENCODER=]EPOCHS",
        help="most epochs of fine-tuning (early stopping after 1 without a better validation score): "
        "`3`, or per encoder `default=3 mpnet=1`",
    )
    parser.add_argument("--shots", nargs="+", type=int, default=[8, 16, 64], help="SetFit's examples per label")
    parser.add_argument("--draws", type=int, default=3, help="draws of each few-shot size")
    parser.add_argument("--setfit_max_steps", type=int, default=-1, help="cap SetFit's contrastive steps (-1: none)")
    parser.add_argument("--model2vec_encoder", choices=ENCODERS, default="mpnet")
    parser.add_argument("--cs", nargs="+", type=float, default=[0.1, 1.0, 10.0, 100.0], help="model2vec probe's C")
    parser.add_argument("--infer_texts", type=int, default=256, help="test texts timed through each inference path")
    parser.add_argument("--output", type=Path, help="also write the table here")
    args = parser.parse_args(argv)
    args.finetune_epochs = {
        key: int(value)
        for key, value in (item.split("=", 1) if "=" in item else ("default", item) for item in args.finetune_epochs)
    }
    args.finetune_epochs.setdefault("default", 3)

    comparison = Comparison(args)
    default_rows = MULTI_LABEL_ROWS if comparison.multi_label else ROWS
    results = [comparison.run(row) for row in args.rows or default_rows]
    text = (
        f"{args.dataset}{f' (first {args.limit} rows of each split)' if args.limit else ''}: test "
        f"{len(comparison.data['test'])} rows, scored once a row; {torch.get_num_threads()} CPU threads.\n\n"
        + table(results, comparison.problem_type)
    )
    print(text)
    if args.output:
        args.output.write_text(text + "\n")
    return results


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")
