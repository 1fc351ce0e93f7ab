"""The reproduction script: its probes, and (real-data tier) its smoke version end to end (extraction, training,
probes, pipeline)."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from helpers import REPO
from llm_fusion_fec.features.sweep import fit_logistic


@pytest.mark.parametrize("c", [0.1, 1.0])
def test_one_vs_rest_probe_matches_sklearn(c):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6)).astype(np.float32)
    logits = x @ rng.standard_normal((6, 3)) + rng.standard_normal((300, 3))
    targets = (logits > 0.3).astype(np.float32)
    linear = fit_logistic(torch.from_numpy(x), torch.from_numpy(targets), c)
    for label in range(3):
        expected = LogisticRegression(C=c, tol=1e-8, max_iter=10_000).fit(x, targets[:, label])
        np.testing.assert_allclose(linear.weight[label].numpy(), expected.coef_[0], atol=2e-3)
        np.testing.assert_allclose(linear.bias[label].item(), expected.intercept_[0], atol=2e-3)


@pytest.mark.real
def test_reproduce_smoke_then_resume_then_pipeline(small_models, data_dir, tmp_path):
    command = [
        sys.executable,
        "-m",
        "bench.reproduce",
        "--limit",
        "30",
        "--seeds",
        "2",
        "--ablation-seeds",
        "1",
        "--epochs",
        "1",
        "--work-dir",
        str(tmp_path),
    ]
    first = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert first.returncode == 0, first.stderr[-3000:]
    results = json.loads((tmp_path / "results.json").read_text())["results"]
    for dataset in ("ED", "go_emotion"):
        rows = results[dataset]
        assert len(rows) == 3 + 7 + 1 + 2  # 3 probes, the fixed head on 7 subsets, the paper head, 2 fusion rows
        assert len(rows["fusion (paper configuration)"]["runs"]) == 2
        assert rows["fusion (paper configuration)"]["ensemble"]["members"] == [42, 43]  # 2 seeds: their ensemble too
        assert len(rows["head (fixed): bert + roberta"]["runs"]) == 1
        for row in rows.values():
            accuracy = row["test"]["accuracy"]
            assert 0 <= (accuracy["mean"] if isinstance(accuracy, dict) else accuracy) <= 1
    multi = results["go_emotions_multilabel"]
    assert sum(key.startswith("probe: one-vs-rest") for key in multi) == 3
    fusion = next(row for key, row in multi.items() if key.startswith("fusion"))
    assert all(0 < run["threshold"] < 1 for run in fusion["runs"])
    assert "| ED | paper: Llama-2-7b-chat" in (tmp_path / "results.md").read_text()
    assert (
        "| ED | fusion (paper configuration), ensemble of the 2 seeds | paper | 2 |"
        in (tmp_path / "results.md").read_text()
    )

    second = subprocess.run(command, cwd=REPO, capture_output=True, text=True)  # every stage is kept on disk
    assert second.returncode == 0, second.stderr[-3000:]
    assert "Loading weights" not in second.stderr
    assert json.loads((tmp_path / "results.json").read_text())["results"] == results
    # Reporting while asking for more seeds than are finished shows the rows with the seeds they have.
    report = subprocess.run(
        [*command, "--report-only", "--seeds", "5", "--ablation-seeds", "3"], cwd=REPO, capture_output=True, text=True
    )
    assert report.returncode == 0, report.stderr[-3000:]
    assert json.loads((tmp_path / "results.json").read_text())["results"] == results

    # The trained ED model (the ensemble of its 2 seeds) serves through the pipeline with the scores it has on the
    # extracted features.
    from datasets import load_from_disk
    from transformers import AutoModelForSequenceClassification, pipeline

    folder = tmp_path / "heads" / "fusion-fixed-ED"
    classifier = pipeline("fec", model=str(folder), trust_remote_code=True, backbone_paths=small_models)
    test = load_from_disk(str(tmp_path / "features" / "ED"))["test"].select(range(4))
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    features = {name: torch.tensor(test[name]) for name in ("llama", "bert", "roberta")}
    with torch.no_grad():
        expected = model(**features).logits.softmax(-1)
    outputs = classifier(list(test["text"]), top_k=None)
    for row, scores in enumerate(outputs):
        by_label = {item["label"]: item["score"] for item in scores}
        got = torch.tensor([by_label[model.config.id2label[i]] for i in range(model.config.num_labels)])
        # Features were stored as float16 and computed in bfloat16 or float32: close, not bit-equal.
        torch.testing.assert_close(got, expected[row], atol=2e-3, rtol=0)


def test_seed_history_marks_the_evaluations_that_reset_the_patience():
    from bench.seed_history import as_run_results, seed_lines

    history = [
        {"epoch": 1.0, "validation": {"loss": 1.5, "weighted_f1": 0.5}, "improved": ["loss", "weighted_f1"]},
        {"epoch": 2.0, "validation": {"loss": 1.4, "weighted_f1": 0.49}, "improved": ["loss"]},
        {"epoch": 3.0, "validation": {"loss": 1.6, "weighted_f1": 0.45}, "improved": []},
    ]
    run = {
        "seed": 42,
        "history": history,
        "epochs": 3.0,
        "best_epoch": 2.0,
        "test": {"accuracy": 0.5512, "weighted_f1": 0.5488, "macro_f1": 0.5},
    }
    results = {"selection_metric": "weighted_f1", "runs": [run]}
    assert seed_lines(results) == [
        "seed 42: 1: 1.5000 / 0.5000*, 2: 1.4000 / 0.4900*, 3: 1.6000 / 0.4500 -> 3 epochs run, epoch 2 kept, "
        "test 55.12 / 54.88"
    ]
    assert seed_lines(results, reaching=0.49)[0].endswith("; weighted_f1 first >= 0.49 at epoch 1")
    assert seed_lines(results, reaching=0.9)[0].endswith("; weighted_f1 first >= 0.9 at epoch never")
    # One seed's result.json (a finished seed of an unfinished run) reads as a run of that seed alone.
    assert as_run_results({**run, "validation": {"loss": 1.4, "weighted_f1": 0.49}}) == {
        "selection_metric": "weighted_f1",
        "runs": [{**run, "validation": {"loss": 1.4, "weighted_f1": 0.49}}],
    }
    assert as_run_results(results) is results
    assert as_run_results({**run, "validation": {"macro_f1": 0.4}})["selection_metric"] == "macro_f1"
    # A multi-label evaluation shows the threshold it was scored at.
    multi = {"epoch": 1.0, "validation": {"loss": 0.09, "macro_f1": 0.41, "threshold": 0.25}, "improved": ["loss"]}
    record = {"selection_metric": "macro_f1", "runs": [{**run, "history": [multi], "test": {"macro_f1": 0.42}}]}
    assert seed_lines(record)[0].startswith("seed 42: 1: 0.0900 / 0.4100 @0.25* -> 3 epochs run")
