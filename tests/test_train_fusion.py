import dataclasses
import json
import re
import shutil
from pathlib import Path

import evaluate
import numpy as np
import pytest
import torch
from datasets import load_from_disk
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects
from safetensors.torch import load_file
from sklearn.metrics import accuracy_score, f1_score

import llm_fusion_fec.commands.train as train_command
import llm_fusion_fec.evaluation.metrics as fusion_metrics
import llm_fusion_fec.training.run as train_fusion
from helpers import REPO, rerecord_features, run_program
from llm_fusion_fec.commands.train import main
from llm_fusion_fec.data.splits import build_config, training_splits
from llm_fusion_fec.features.metadata import load_features
from llm_fusion_fec.features.run import extract
from llm_fusion_fec.training.trainer import FusionTrainer, ProtocolCallback
from modeling_llm_fusion import LLMFusionEnsembleForSequenceClassification, LLMFusionForSequenceClassification

SINGLE = "single_label_classification"
SPLITS = ("validation", "test")
LIMIT = 40  # rows per split: 4 steps per epoch at the paper's batch size of 10
TOKEN = "hf_DoNotLeakThisToken"
REPO_ID = "fec-tests/llm-fusion-ed"


@pytest.fixture(autouse=True)
def in_an_empty_folder(tmp_path, monkeypatch):
    """Run where there is no features/ or outputs/ folder: the defaults these tests read must not depend on what the
    working tree holds (a quick start's features/ED would choose its recipe)."""
    monkeypatch.chdir(tmp_path)


def hub_backbones(tiny_backbones: list[dict]) -> tuple[list[dict], dict[str, str]]:
    """The tiny backbones named by Hub ids (as a user's would be) and read from their local copies."""
    specs = [{**spec, "model": f"fec-tests/tiny-{spec['name']}"} for spec in tiny_backbones]
    return specs, {spec["name"]: spec["model"] for spec in tiny_backbones}


@pytest.fixture(scope="module")
def ed_features(tmp_path_factory, tiny_backbones, data_dir) -> Path:
    out = tmp_path_factory.mktemp("features") / "ED"
    specs, paths = hub_backbones(tiny_backbones)
    extract("ED", data_dir=str(data_dir), backbones=specs, backbone_paths=paths, output_dir=out, limit=LIMIT)
    return out


def cli(features: Path, output: Path, *extra: str) -> list[str]:
    return [
        "--features-dir",
        str(features),
        "--output-dir",
        str(output),
        "--max_steps",
        "8",
        "--disable_tqdm",
        "true",
        *extra,
    ]


@pytest.fixture(scope="module")
def ed_run(tmp_path_factory, ed_features) -> tuple[dict, Path, list]:
    """Two seeds of a short run, pushed to a mocked Hub: (returned results, output folder, recorded Hub calls)."""
    output = tmp_path_factory.mktemp("outputs") / "llm-fusion-ed"
    calls = []
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)))

        def upload_folder(self, **kwargs):
            calls.append(("upload_folder", kwargs, self.token))
            return type("Commit", (), {"commit_url": "https://hub/commit"})()

        patch.setattr(HfApi, "upload_folder", upload_folder)
        results = main(
            cli(ed_features, output, "--seeds", "2", "--push-to-hub", "--hub-model-id", REPO_ID, "--hub_token", TOKEN)
        ).to_dict()
    return results, output, calls


def test_metric_module_agrees_with_sklearn():
    rng = np.random.default_rng(0)
    single = evaluate.load(str(fusion_metrics.METRICS_PATH))
    references = rng.integers(0, 8, 300)
    predictions = np.where(rng.random(300) < 0.4, references, rng.integers(0, 10, 300))  # labels 8, 9 never true
    scores = single.compute(predictions=predictions, references=references)
    assert scores.keys() == {"accuracy", "weighted_f1", "macro_f1"}
    assert scores["accuracy"] == pytest.approx(accuracy_score(references, predictions), abs=1e-12)
    for average in ("weighted", "macro"):
        expected = f1_score(references, predictions, average=average, zero_division=0)
        assert scores[f"{average}_f1"] == pytest.approx(expected, abs=1e-12)

    multi = evaluate.load(str(fusion_metrics.METRICS_PATH), config_name="multi_label_classification")
    references = (rng.random((200, 6)) < 0.3).astype(int)
    references[:, 5] = 0  # a label never true...
    predictions = (rng.random((200, 6)) < 0.3).astype(int)
    predictions[:, 4] = 0  # ...and one never predicted
    scores = multi.compute(predictions=predictions, references=references)
    assert scores.keys() == {"micro_f1", "macro_f1"}
    for average in ("micro", "macro"):
        expected = f1_score(references, predictions, average=average, zero_division=0)
        assert scores[f"{average}_f1"] == pytest.approx(expected, abs=1e-12)


def test_score_is_the_metric_modules_compute():
    """`score` skips `metric.compute`'s Arrow round trip (for speed) and gives the same scores."""
    rng = np.random.default_rng(1)
    multi = fusion_metrics.load_metric("multi_label_classification")
    logits, labels = rng.normal(-1.0, 1.5, (120, 5)), (rng.random((120, 5)) < 0.3).astype(np.int64)
    for threshold in (0.2, 0.5):
        decisions = (torch.sigmoid(torch.from_numpy(logits)) > threshold).int().numpy()
        expected = multi.compute(predictions=decisions, references=labels)
        assert fusion_metrics.score(multi, logits, labels, threshold) == pytest.approx(expected, abs=1e-12)
    single = fusion_metrics.load_metric("single_label_classification")
    logits, labels = rng.normal(size=(120, 6)), rng.integers(0, 6, 120)
    expected = single.compute(predictions=logits.argmax(1), references=labels)
    assert fusion_metrics.score(single, logits, labels, 0.5) == pytest.approx(expected, abs=1e-12)


def test_training_reads_the_arrow_files_in_place(ed_features):
    data, metadata = load_features(ed_features)
    splits = training_splits(data, build_config(metadata))
    for name, split in splits.items():
        assert split.column_names == ["llama", "bert", "roberta", "labels"]
        # Backed by the features folder's own Arrow files (memory-mapped), not by a copy in RAM.
        assert [Path(f["filename"]).parent for f in split.cache_files] == [ed_features / name]
    row = splits["train"][0]
    assert row["llama"].shape == (3, 32) and row["labels"].dtype == torch.int64


def test_fusion_trainer_trains_exactly_as_trainer(ed_features, tmp_path):
    """FusionTrainer's shortcuts (no gradient norm, one Adam group, rows served from memory) leave the training itself
    as is."""
    from transformers import Trainer

    class ReferenceTrainer(Trainer):  # the plain Trainer, reading the rows in the protocol's order
        seeds = [0]
        get_train_dataloader = FusionTrainer.get_train_dataloader

    data, metadata = load_features(ed_features)
    config = build_config(metadata)
    train = training_splits(data, config)["train"]
    weights = []
    for trainer_class in (ReferenceTrainer, FusionTrainer):
        torch.manual_seed(0)
        model = LLMFusionForSequenceClassification(config)
        args = train_fusion.FusionTrainingArguments(
            output_dir=str(tmp_path / trainer_class.__name__),
            max_steps=6,
            eval_strategy="no",
            save_strategy="no",
            load_best_model_at_end=False,
            report_to="none",
            disable_tqdm=True,
            seed=0,
        )
        trainer = trainer_class(model=model, args=args, train_dataset=train)
        trainer.train()
        weights.append({name: value.clone() for name, value in model.state_dict().items()})
    assert len([group for group in trainer.optimizer.param_groups if group["params"]]) == 1
    for name, value in weights[0].items():
        torch.testing.assert_close(weights[1][name], value, msg=name)


def test_seeds_aggregate(ed_run):
    results, output, _ = ed_run
    assert json.loads((output / "results.json").read_text()) == results
    assert results["seeds"] == [42, 43] and results["selection_metric"] == "weighted_f1"
    runs = results["runs"]
    for key in ("accuracy", "weighted_f1", "macro_f1"):
        values = np.array([run["test"][key] for run in runs])
        assert results["test"][key]["mean"] == pytest.approx(values.mean(), abs=1e-12)
        assert results["test"][key]["std"] == pytest.approx(values.std(ddof=0), abs=1e-12)  # population std
    best = max(runs, key=lambda run: run["validation"]["weighted_f1"])
    assert results["best_seed"] == best["seed"]
    for run in runs:
        assert run["epochs"] == 2 and run["best_epoch"] in (1, 2) and run["wall_time_s"] > 0
        run_dir = output / "runs" / f"seed-{run['seed']}"
        assert json.loads((run_dir / "result.json").read_text()) == run
        assert not list(run_dir.glob("checkpoint-*"))  # a finished seed keeps only its model and result


def test_saved_folder_loads_in_a_fresh_process_with_identical_predictions(ed_run, ed_features, tmp_path):
    results, output, _ = ed_run
    files = {path.name for path in output.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "configuration_llm_fusion.py",
        "modeling_llm_fusion.py",
        "pipeline_fec.py",
        "training_args.json",
        "results.json",
        "README.md",
    } <= files
    test = load_from_disk(str(ed_features / "test")).with_format("torch")[:]
    torch.save({name: test[name] for name in ("llama", "bert", "roberta")}, tmp_path / "features.pt")
    saved = (output, tmp_path / "features.pt", tmp_path / "logits.pt")
    loaded = run_program("remote_code_logits.py", *saved, "--dtype", "float32")
    assert loaded["class"] == "LLMFusionForSequenceClassification"
    config = loaded["config"]
    assert config["problem_type"] == "single_label_classification"
    assert config["id2label"]["0"] == "sad" and len(config["id2label"]) == 32
    assert [spec["model"] for spec in config["backbones"]] == [
        "fec-tests/tiny-llama",
        "fec-tests/tiny-bert",
        "fec-tests/tiny-roberta",
    ]
    assert config["custom_pipelines"]["fec"]["impl"] == "pipeline_fec.FECPipeline"

    # The model that was scored in training (saved from memory right after scoring) predicts exactly the same.
    logits = torch.load(tmp_path / "logits.pt")
    seed_model = output / "runs" / f"seed-{results['best_seed']}" / "model"
    scored = LLMFusionForSequenceClassification.from_pretrained(seed_model, dtype=torch.float32).eval()
    with torch.no_grad():
        expected = scored(**{name: test[name] for name in ("llama", "bert", "roberta")}).logits
    torch.testing.assert_close(logits, expected, atol=0, rtol=0)
    labels, predictions = test["label"].numpy(), logits.argmax(-1).numpy()
    best = next(run for run in results["runs"] if run["seed"] == results["best_seed"])
    assert best["test"]["accuracy"] == pytest.approx(accuracy_score(labels, predictions), abs=1e-12)
    expected_f1 = f1_score(labels, predictions, average="weighted", zero_division=0)
    assert best["test"]["weighted_f1"] == pytest.approx(expected_f1, abs=1e-12)


def test_model_card_holds_the_measured_results(ed_run):
    results, output, _ = ed_run
    card = ModelCard.load(output / "README.md")
    best = next(run for run in results["runs"] if run["seed"] == results["best_seed"])
    measured = {(r.metric_type, (r.metric_args or {}).get("average")): r.metric_value for r in card.data.eval_results}
    assert measured == {
        ("accuracy", None): best["test"]["accuracy"],
        ("f1", "weighted"): best["test"]["weighted_f1"],
        ("f1", "macro"): best["test"]["macro_f1"],
    }
    assert card.data.datasets == ["facebook/empathetic_dialogues"]
    # The LLM as the one base model (several would be drawn as a merge); every backbone is in the body.
    assert card.data.base_model == "fec-tests/tiny-llama" and card.data.base_model_relation == "adapter"
    for name in ("fec-tests/tiny-llama", "fec-tests/tiny-bert", "fec-tests/tiny-roberta"):
        assert f"| `{name}` |" in card.text
    assert card.data.license == "cc-by-nc-4.0" and "custom_code" in card.data.tags
    for key, summary in results["test"].items():
        assert f"{summary['mean']:.4f} +- {summary['std']:.4f}" in card.text, key
    for run in results["runs"]:
        assert f"{run['test']['weighted_f1']:.4f}" in card.text
    assert f"seed {results['best_seed']}" in card.text
    assert f'pipeline("fec", model="{REPO_ID}", trust_remote_code=True)' in card.text
    assert f'pipeline("text-classification", model="{REPO_ID}", trust_remote_code=True)' in card.text


def test_push_uploads_the_folder_without_secrets_or_local_paths(ed_run, tmp_path_factory):
    _, output, calls = ed_run
    (create, repo_id, _), (upload, kwargs, token) = calls
    assert (create, repo_id) == ("create_repo", REPO_ID) and upload == "upload_folder"
    assert kwargs["repo_id"] == REPO_ID and Path(kwargs["folder_path"]) == output and token == TOKEN
    everything = [str(path.relative_to(output)) for path in output.rglob("*") if path.is_file()]
    uploaded = list(
        filter_repo_objects(
            everything, allow_patterns=kwargs.get("allow_patterns"), ignore_patterns=kwargs.get("ignore_patterns")
        )
    )
    assert {"config.json", "model.safetensors", "modeling_llm_fusion.py", "pipeline_fec.py", "README.md"} <= set(
        uploaded
    )
    assert not [path for path in uploaded if path.startswith("runs/")]
    local = [str(tmp_path_factory.getbasetemp()), str(REPO), str(Path.home()) + "/"]
    for path in uploaded:
        text = (output / path).read_bytes().decode("utf-8", errors="replace")
        assert TOKEN not in text, path
        assert not [folder for folder in local if folder in text], path


@pytest.mark.parametrize("seeds", ["1", "2"])
def test_interrupted_run_resumes_from_its_last_checkpoint(ed_features, tmp_path, monkeypatch, seeds):
    together = ["--batch_seeds", "true"]  # two seeds: the batched path (the default on an accelerator)
    save = ProtocolCallback.on_save

    def on_save(self, args, state, control, **kwargs):
        save(self, args, state, control, **kwargs)
        raise KeyboardInterrupt  # right after the first checkpoint is complete

    group = "seed-42" if seeds == "1" else "seeds-42-43"
    output = tmp_path / "resumed"
    with monkeypatch.context() as patch:
        patch.setattr(ProtocolCallback, "on_save", on_save)
        with pytest.raises(KeyboardInterrupt):
            main(cli(ed_features, output, "--seeds", seeds, *together))
    assert [path.name for path in (output / "runs" / group).glob("checkpoint-*")] == ["checkpoint-4"]
    resumed = main(cli(ed_features, output, "--seeds", seeds, *together, "--resume_from_checkpoint", "true")).to_dict()
    # Identical to the uninterrupted run: the checkpoint restored the weights, Adam, the RNGs and the stopping rules.
    uninterrupted = main(cli(ed_features, tmp_path / "uninterrupted", "--seeds", seeds, *together)).to_dict()
    for run, reference in zip(resumed["runs"], uninterrupted["runs"], strict=True):
        assert run["test"] == reference["test"] and run["history"] == reference["history"]
        assert run["validation"] == pytest.approx(reference["validation"])
        weights = [
            load_file(folder / "runs" / f"seed-{run['seed']}" / "model" / "model.safetensors")
            for folder in (output, tmp_path / "uninterrupted")
        ]
        assert weights[0].keys() == weights[1].keys()
        assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    # Finished seeds are reused, not retrained.
    monkeypatch.setattr(train_fusion, "train_seeds", lambda *a, **k: pytest.fail("every seed had finished"))
    again = main(cli(ed_features, output, "--seeds", seeds, *together, "--resume_from_checkpoint", "true")).to_dict()
    assert again["runs"] == resumed["runs"]


def test_multi_label_training_stores_the_threshold_chosen_on_validation(tiny_backbones, data_dir, tmp_path):
    features = tmp_path / "go_emotions_multilabel"
    extract(
        "go_emotions_multilabel", data_dir=str(data_dir), backbones=tiny_backbones, output_dir=features, limit=LIMIT
    )
    output = tmp_path / "out"
    results = main(cli(features, output, "--dataset", "go_emotions_multilabel", "--max_steps", "12")).to_dict()
    assert results["selection_metric"] == "macro_f1" and results["test"].keys() == {"micro_f1", "macro_f1"}
    threshold = results["runs"][0]["threshold"]
    model = LLMFusionForSequenceClassification.from_pretrained(output, dtype=torch.float32).eval()
    assert model.config.threshold == threshold and model.config.problem_type == "multi_label_classification"

    def scores(split: str, t: float, temperature: float = 1.0) -> tuple[float, float]:
        data = load_from_disk(str(features / split)).with_format("torch")[:]
        with torch.no_grad():
            logits = model(**{spec["name"]: data[spec["name"]] for spec in tiny_backbones}).logits
        probabilities = (logits / temperature).sigmoid()
        labels, predicted = data["label"].numpy().astype(int), (probabilities > t).numpy().astype(int)
        return tuple(f1_score(labels, predicted, average=a, zero_division=0) for a in ("micro", "macro"))

    # The threshold is chosen at every evaluation too: the kept checkpoint was scored as it now decides.
    run = results["runs"][0]
    kept = next(record for record in run["history"] if record["epoch"] == run["best_epoch"])
    assert all(record["validation"]["threshold"] in fusion_metrics.THRESHOLDS for record in run["history"])
    chosen = kept["validation"]["threshold"]
    best = max(scores("validation", t)[1] for t in fusion_metrics.THRESHOLDS)
    assert scores("validation", chosen)[1] == pytest.approx(best, abs=1e-12)
    assert kept["validation"]["macro_f1"] == pytest.approx(best, abs=1e-6)
    # The model decides by the sigmoid of its logits at its temperature (fitted on validation), against the threshold
    # restated on those scores: the same labels as the threshold chosen at temperature 1.
    temperature = model.config.temperature
    assert threshold == pytest.approx(1 / (1 + ((1 - chosen) / chosen) ** (1 / temperature)), abs=1e-12)
    assert scores("validation", threshold, temperature) == scores("validation", chosen)
    micro, macro = scores("test", threshold, temperature)
    assert (micro, macro) == scores("test", chosen)
    assert results["runs"][0]["test"] == pytest.approx({"micro_f1": micro, "macro_f1": macro}, abs=1e-12)
    # A run begun when evaluations scored at 0.5 (its record has no multi_label_threshold) is not resumed under this.
    record = output / "runs" / "run.json"
    record.write_text(json.dumps({k: v for k, v in json.loads(record.read_text()).items() if "threshold" not in k}))
    with pytest.raises(ValueError, match=r"made with other multi_label_threshold"):
        main(
            cli(
                features,
                output,
                "--dataset",
                "go_emotions_multilabel",
                "--max_steps",
                "12",
                "--resume_from_checkpoint",
                "true",
            )
        )


def _edited_copy(features: Path, target: Path, metadata=None, drop: str | None = None) -> Path:
    """A copy of the features, changed as extraction would have written it (so that checks after the verification
    of the folder against its record are reached)."""
    data = load_from_disk(str(features))
    if drop:
        data = data.remove_columns(drop)
    data.save_to_disk(str(target))
    shutil.copy(features / "fec_features.json", target / "fec_features.json")
    return rerecord_features(target, metadata)


def _wider_bert(metadata: dict) -> dict:
    metadata["backbones"][1]["hidden_size"] = 48
    return metadata


def _local_llama(metadata: dict) -> dict:
    metadata["backbones"][0]["model"] = "/models/llama"
    return metadata


@pytest.mark.parametrize(
    "edit, extra, message",
    [
        (None, ["--backbones", "llama", "gpt"], r"The features have no backbone\(s\) \['gpt'\]"),
        ({"drop": "roberta"}, [], "Split 'train' has no features for backbone 'roberta'"),
        ({"metadata": _wider_bert}, [], r"backbone 'bert' features are .*length=32.*records shape \(48,\)"),
        (None, ["--dataset", "go_emotion"], "are from the data set 'ED', not 'go_emotion'"),
        ({"drop": "label"}, [], "Split 'train' has no 'label' column"),
        (None, ["--metric_for_best_model", "micro_f1"], "'micro_f1' is not a score of single_label_classification"),
        ({"metadata": _local_llama}, ["--push_to_hub"], r"Backbone\(s\) \['/models/llama'\] are local paths"),
    ],
)
def test_bad_inputs_are_named(ed_features, tmp_path, edit, extra, message):
    features = _edited_copy(ed_features, tmp_path / "ED", **edit) if edit else ed_features
    with pytest.raises(ValueError, match=message):
        main(cli(features, tmp_path / "out", *extra))
    assert not (tmp_path / "out").exists()  # refused before any training


def test_not_a_features_folder(tmp_path):
    with pytest.raises(ValueError, match="is not a features folder"):
        main(cli(tmp_path, tmp_path / "out"))


def test_defaults_are_the_papers_protocol():
    args, training_args = train_command.parse_args(["--dataset", "go_emotion"])
    assert (args.features_dir, training_args.output_dir) == ("features/go_emotion", "outputs/llm-fusion-go-emotion")
    assert args.seeds == 1 and args.early_stopping_patience == 10
    assert training_args.learning_rate == 1e-4 and training_args.weight_decay == 0
    assert training_args.per_device_train_batch_size == 10 and training_args.num_train_epochs == 200
    assert training_args.lr_scheduler_type.value == "constant" and training_args.max_grad_norm == 0
    assert training_args.eval_strategy.value == "epoch" and training_args.load_best_model_at_end
    # No per-step read-back of the loss from a GPU; pinned batches only where an accelerator can use them.
    assert not training_args.logging_nan_inf_filter
    assert training_args.dataloader_pin_memory == torch.accelerator.is_available()


def test_quick_help_answers_without_torch_and_matches_the_full_parser():
    import subprocess
    import sys

    from transformers import TrainingArguments

    from llm_fusion_fec.arguments import FusionArguments, ProtocolArguments

    result = subprocess.run(
        [sys.executable, "-X", "importtime", "train_fusion.py", "--help"], cwd=REPO, capture_output=True, text=True
    )
    assert result.returncode == 0 and "--early_stopping_metrics" in result.stdout and "--help-all" in result.stdout
    imported = {line.split("|")[-1].strip().split(".")[0] for line in result.stderr.splitlines() if "|" in line}
    # transformers' argument parser only: transformers imports torch lazily, and nothing here asks for it.
    assert not imported & {"torch", "datasets"}, imported & {"torch", "datasets"}
    # Every protocol default overrides a real TrainingArguments field, and the full parser takes it over.
    training_fields = {spec.name for spec in dataclasses.fields(TrainingArguments)}
    assert {spec.name for spec in dataclasses.fields(ProtocolArguments)} <= training_fields
    args, training_args = train_command.parse_args([])
    assert training_args.output_dir == "outputs/llm-fusion-ed"  # the data set's default folder
    for spec in dataclasses.fields(ProtocolArguments):
        if spec.name == "output_dir":
            continue
        value = getattr(training_args, spec.name)
        assert getattr(value, "value", value) == spec.default, spec.name
    # `auto` resolves to the features' preset's recipe, and the data set to theirs: `paper` and ED where there are no
    # features to say otherwise.
    assert dataclasses.asdict(args) == dataclasses.asdict(
        FusionArguments(dataset="ED", features_dir="features/ED", protocol="paper")
    )


def test_standardized_features_use_training_statistics(ed_features, tmp_path):
    output = tmp_path / "out"
    main(cli(ed_features, output, "--standardize_features", "true", "--sigma", "0.01"))
    model = LLMFusionForSequenceClassification.from_pretrained(output, dtype=torch.float32).eval()
    assert model.config.standardize_features and model.config.sigma == 0.01
    train = load_from_disk(str(ed_features / "train")).with_format("torch")[:]
    for name in ("llama", "bert", "roberta"):
        values = train[name].double()
        torch.testing.assert_close(getattr(model, f"{name}_mean"), values.mean(0).float(), atol=1e-5, rtol=1e-4)
        expected_std = values.std(0, unbiased=False).float().clamp_min(1e-6)
        torch.testing.assert_close(getattr(model, f"{name}_std"), expected_std, atol=1e-5, rtol=1e-4)
    assert "standardised with the training set's mean" in (output / "README.md").read_text()


def test_an_output_folder_with_other_files_is_refused(ed_features, tmp_path):
    output = tmp_path / "out"
    output.mkdir()
    (output / ".env").write_text("HF_TOKEN=secret")
    with pytest.raises(ValueError, match=r"holds files this run did not write \(\.env\).*--overwrite_output_dir"):
        main(cli(ed_features, output))
    assert sorted(path.name for path in output.iterdir()) == [".env"]  # refused before anything was written
    main(cli(ed_features, output, "--overwrite_output_dir", "true"))
    main(cli(ed_features, output, "--overwrite_output_dir", "true", "--max_steps", "4"))  # its own files: no refusal
    (output / ".env").unlink()
    main(cli(ed_features, output, "--max_steps", "4"))  # a folder this package wrote is simply written again


@pytest.mark.parametrize(
    ("changed", "difference"),
    [
        (["--standardize_features", "true"], "head.standardize_features"),
        (["--learning_rate", "0.001"], "training.learning_rate"),
        (["--early_stopping_metrics", "loss"], "protocol.metrics"),
        (["--max_steps", "4", "--train_sampling_strategy", "group_by_length"], "training.train_sampling_strategy"),
    ],
)
def test_resuming_with_other_features_or_options_is_refused(ed_features, tmp_path, changed, difference):
    output = tmp_path / "out"
    main(cli(ed_features, output, "--max_steps", "4"))
    with pytest.raises(ValueError, match=rf"made with other {re.escape(difference)}"):
        main(cli(ed_features, output, "--resume_from_checkpoint", "true", *changed))


def test_resuming_runs_without_their_record_is_refused_and_keeps_them(ed_features, tmp_path):
    output = tmp_path / "out"
    main(cli(ed_features, output, "--max_steps", "4"))
    (output / "runs" / "run.json").unlink()  # e.g. seed folders copied from another run
    kept = sorted(path.name for path in (output / "runs").iterdir())
    with pytest.raises(ValueError, match=r"holds runs but no run\.json .* cannot be checked"):
        main(cli(ed_features, output, "--resume_from_checkpoint", "true", "--max_steps", "4"))
    assert sorted(path.name for path in (output / "runs").iterdir()) == kept and kept


def test_resuming_on_features_of_another_data_set_is_refused(ed_features, tmp_path):
    output = tmp_path / "out"
    main(cli(ed_features, output, "--max_steps", "4"))
    other = _edited_copy(
        ed_features,
        tmp_path / "go_emotion",
        metadata=lambda m: {**m, "dataset": "go_emotion", "dataset_name": "go_emotion"},
    )
    with pytest.raises(ValueError, match=r"made with other features\.dataset"):
        main(cli(other, output, "--dataset", "go_emotion", "--resume_from_checkpoint", "true"))


def test_non_finite_features_are_refused(ed_features, tmp_path):
    data = load_from_disk(str(ed_features))

    def poison(row, index):
        if index == 3:
            row["bert"] = [float("nan")] * len(row["bert"])
        return row

    data["validation"] = data["validation"].map(poison, with_indices=True)
    target = tmp_path / "ED"
    data.save_to_disk(str(target))
    (target / "fec_features.json").write_text((ed_features / "fec_features.json").read_text())
    rerecord_features(target)  # as if extracted so: the features pass their checksums, not this check
    with pytest.raises(ValueError, match="Split 'validation', backbone 'bert', row 3: the features hold NaN"):
        main(cli(target, tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_seeds_train_together_by_default_only_on_an_accelerator():
    args, _ = train_command.parse_args([])
    assert train_fusion.trains_together(args) == torch.accelerator.is_available()  # on a CPU the batch is slower
    for flag, expected in (("true", True), ("false", False)):
        assert train_fusion.trains_together(train_command.parse_args(["--batch_seeds", flag])[0]) is expected


def test_ensemble_of_the_seeds_is_saved_scored_and_served(ed_run, ed_features, tiny_backbones, tmp_path):
    results, output, _ = ed_run
    shutil.copytree(output / "runs", tmp_path / "runs")  # the run's two finished seeds: nothing is trained again
    ensemble = main(
        cli(ed_features, tmp_path, "--seeds", "2", "--ensemble", "true", "--resume_from_checkpoint", "true")
    ).to_dict()["ensemble"]
    assert ensemble["members"] == [42, 43]
    folders = [tmp_path / "runs" / f"seed-{seed}" / "model" for seed in (42, 43)]
    members = [LLMFusionForSequenceClassification.from_pretrained(folder, dtype=torch.float32) for folder in folders]
    test = load_from_disk(str(ed_features / "test")).with_format("torch")[:]
    features = {name: test[name] for name in ("llama", "bert", "roberta")}
    with torch.no_grad():
        probabilities = torch.stack([member.eval()(**features).logits.softmax(-1) for member in members]).mean(0)
    labels = test["label"].numpy()
    assert ensemble["test"]["accuracy"] == pytest.approx(accuracy_score(labels, probabilities.argmax(-1).numpy()))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["ensemble"] == ensemble and [run["seed"] for run in saved["runs"]] == [42, 43]
    # Its own temperature, fitted on its own validation logits (not a member's), is the one it serves.
    config = json.loads((tmp_path / "config.json").read_text())
    assert config.get("temperature", 1.0) == ensemble["calibration"]["temperature"]
    members[1].config.temperature = members[0].config.temperature + 0.5  # members may differ in temperature
    assert LLMFusionEnsembleForSequenceClassification.from_members(members).config.temperature == 1.0
    card = (tmp_path / "README.md").read_text()
    assert "The saved model is the ensemble of seeds 42, 43" in card and "ensemble of the 2 seeds (saved)" in card
    inputs = {
        "model": str(tmp_path),
        "backbone_paths": hub_backbones(tiny_backbones)[1],
        "text": "i finally got the job",
    }
    served = run_program("pipeline_answer.py", json.dumps(inputs))
    name, answer = served["class"], served["answer"]
    assert name == "LLMFusionEnsembleForSequenceClassification" and len(answer) == 1 and 0 < answer[0]["score"] <= 1
    with pytest.raises(ValueError, match="--seeds must be at least 2 for --ensemble, got 1"):
        main(cli(ed_features, tmp_path / "one", "--ensemble", "true"))


def test_the_default_output_folder_is_the_data_sets_folder_name_under_outputs(tmp_path):
    cases = {"ED": "llm-fusion-ed", str(tmp_path / "mydata"): "llm-fusion-mydata", "org/name": "llm-fusion-org--name"}
    for dataset, folder in cases.items():
        _, training_args = train_command.parse_args(["--dataset", dataset])
        assert training_args.output_dir == f"outputs/{folder}"


def test_an_invalid_hub_repo_id_is_refused_before_training():
    with pytest.raises(ValueError, match=r"--hub_model_id '\.\./x y' is not a Hub repository id"):
        train_command.parse_args(["--push_to_hub", "--hub_model_id", "../x y"])


def test_what_a_user_sees_while_training(ed_features, tmp_path, capfd):
    argv = cli(ed_features, tmp_path / "out", "--seeds", "2", "--ensemble", "true")
    main([arg for arg in argv if arg not in ("--disable_tqdm", "true")] + ["--disable_tqdm", "false"])
    err = capfd.readouterr().err
    assert "{'loss'" not in err and "'eval_" not in err  # no dict per log or evaluation
    evaluations = [
        line for line in err.replace("\r", "\n").splitlines() if " epoch " in line and "validation loss" in line
    ]
    assert [line.split(":")[0] for line in evaluations] == [
        "seed 1/2 (42) epoch 1",
        "seed 1/2 (42) epoch 2",
        "seed 2/2 (43) epoch 1",
        "seed 2/2 (43) epoch 2",
    ]
    assert all("weighted_f1" in line and "(best " in line and "patience " in line for line in evaluations)
    assert "seed 1/2 (42) done: 2 epochs" in err and "seed 2/2 (43) done: 2 epochs" in err
    assert "ensemble of seeds [42, 43]: test accuracy" in err


def test_a_cut_run_says_so_in_its_card_model_index_and_results(ed_run, ed_features):
    """The features were extracted with --limit: the scores are those of the first rows of test, not of test."""
    results, output, _ = ed_run
    assert load_features(ed_features)[1].limit == LIMIT
    assert results["limit"] == LIMIT and json.loads((output / "results.json").read_text())["limit"] == LIMIT
    card = ModelCard.load(output / "README.md")
    assert {(r.dataset_name, r.dataset_split) for r in card.data.eval_results} == {
        (f"Empathetic Dialogues (each split cut to its first {LIMIT} rows)", f"test[:{LIMIT}]")
    }
    assert f"on Empathetic Dialogues, each split cut to its first {LIMIT} rows (32 labels" in card.text
    assert f"The first {LIMIT} rows of the test split of Empathetic Dialogues (`--limit {LIMIT}`" in card.text
    assert f"- Trained on Empathetic Dialogues (each split cut to its first {LIMIT} rows) only" in card.text


def test_local_copies_of_the_backbones_are_named_by_their_files_digest(ed_run, ed_features, tiny_backbones):
    """The backbones were read from local folders, which have no Hub revision: the card shows what the features
    recorded of them, the sha256 of their files, and its limitations promise no revision that is not there."""
    from llm_fusion_fec.features.backbones import folder_digest

    _, output, _ = ed_run
    digests = load_features(ed_features)[1].local_weights
    assert digests == {spec["name"]: folder_digest(Path(spec["model"])) for spec in tiny_backbones}
    card = ModelCard.load(output / "README.md").text
    for name, digest in digests.items():
        assert f"| {name} | `fec-tests/tiny-{name}` | local files, sha256 `{digest[:12]}` |" in card
    limitations = card.split("## Limitations")[1].split("\n## ")[0]
    assert "same revisions" not in limitations
    assert "the same weights: for llama, bert, roberta, the files whose sha256 is shown" in limitations


def test_the_cards_examples_are_validation_texts_and_its_limitations_name_the_backbones(ed_run, ed_features):
    _, output, _ = ed_run
    card = ModelCard.load(output / "README.md")
    validation = set(load_features(ed_features)[0]["validation"]["text"])
    widget = [item["text"] for item in card.data.widget]
    assert 3 <= len(widget) <= 4 and set(widget) <= validation
    assert json.dumps(widget[0]) in card.text  # the usage snippet labels the first of them
    limitations = card.text.split("## Limitations")[1].split("\n## ")[0]
    assert "fec-tests/tiny-llama, fec-tests/tiny-bert, fec-tests/tiny-roberta" in limitations
    assert "which all run on a CPU" in limitations and "Llama 2" not in limitations and "7B" not in limitations


def test_without_dataset_the_features_name_it(tmp_path, tiny_backbones, data_dir):
    from llm_fusion_fec import extract as extract_features

    specs, paths = hub_backbones(tiny_backbones)
    folder = tmp_path / "goe"
    extract_features(
        "go_emotion",
        data_dir=str(data_dir / "go_emotion"),
        backbones=specs,
        backbone_paths=paths,
        output_dir=folder,
        limit=12,
    )
    # `--features_dir` alone: no `--dataset ED` default to contradict the features, which come from GoEmotions.
    results = main(["--features_dir", str(folder), "--max_steps", "2", "--report_to", "none"])
    assert results.dataset == "go_emotion" and Path("outputs/llm-fusion-go-emotion/config.json").is_file()


def test_a_train_split_of_one_class_is_refused_by_name(tmp_path, tiny_backbones):
    from helpers import write_csv_dataset

    folder = write_csv_dataset(tmp_path / "joyful", [("what a day", 1), ("so glad", 1), ("lovely", 1)])
    (folder / "test.csv").write_text("text,label\nso sad,0\nlovely,1\n")  # the other splits may hold more
    features = tmp_path / "features"
    extract(str(folder), backbones=tiny_backbones[1:2], output_dir=features)
    with pytest.raises(ValueError) as error:
        main(cli(features, tmp_path / "out"))
    assert str(error.value) == (
        f"The train split of {folder} has one class (happy): a classifier needs at least two. Extract the features of "
        "more rows (a larger --limit) or of another data set."
    )
    assert not (tmp_path / "out").exists()  # refused before any training


def test_each_row_reports_its_calibration_and_the_saved_model_serves_its_temperature(ed_run, ed_features):
    """Each seed's test ECE is that of the softmax of its logits at the temperature its config records (fitted on
    validation, kept only where it lowered the validation ECE); results.json, the table and the card carry them."""
    from llm_fusion_fec.evaluation.calibration import expected_calibration_error, probabilities_of

    results, output, _ = ed_run
    features = {split: load_from_disk(str(ed_features / split)).with_format("torch")[:] for split in SPLITS}
    for run in results["runs"]:
        calibration = run["calibration"]
        folder = output / "runs" / f"seed-{run['seed']}" / "model"
        model = LLMFusionForSequenceClassification.from_pretrained(folder, dtype=torch.float32).eval()
        assert model.config.temperature == calibration["temperature"] > 0
        eces = {}
        for split, data in features.items():
            with torch.no_grad():
                logits = model(**{name: data[name] for name in ("llama", "bert", "roberta")}).logits.numpy()
            labels = data["label"].numpy()
            eces[split] = [
                expected_calibration_error(probabilities_of(logits, SINGLE, t), labels, SINGLE)
                for t in (calibration["temperature"], 1.0)
            ]
        assert eces["validation"] == pytest.approx(
            [calibration["validation_ece"], calibration["validation_ece_uncalibrated"]], abs=1e-6
        )
        assert eces["test"] == pytest.approx([calibration["test_ece"], calibration["test_ece_uncalibrated"]], abs=1e-6)
        assert (
            calibration["temperature"] == 1.0
            or calibration["validation_ece"] < calibration["validation_ece_uncalibrated"]
        )
        assert sum(row["count"] for row in calibration["reliability"]) == len(features["test"]["label"])
    values = [run["calibration"]["test_ece"] for run in results["runs"]]
    assert results["test_ece"] == pytest.approx({"mean": np.mean(values), "std": np.std(values)}, abs=1e-12)
    card = ModelCard.load(output / "README.md").text
    assert "test ECE |" in card and f"{values[0]:.4f}" in card and "### Calibration (test, seed" in card
    assert "![Reliability diagram of the saved model on test](reliability_diagram.png)" in card
    assert (output / "reliability_diagram.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
