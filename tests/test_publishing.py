import ast
import builtins
import io
import json
import os
import platform
import re
from pathlib import Path

import datasets
import numpy as np
import pytest
import torch
import transformers
from huggingface_hub import HfApi, ModelCard
from huggingface_hub.utils import filter_repo_objects
from transformers import TrainingArguments

from configuration_llm_fusion import LLMFusionConfig, describe_pooling
from helpers import REPO, run_program
from llm_fusion_fec.commands.train import format_results_table
from llm_fusion_fec.evaluation.calibration import TemperatureChoice, calibration_of
from llm_fusion_fec.evaluation.results import BASELINE_ROW, BaselineResult, RunResults, SeedResult, per_label_scores
from llm_fusion_fec.publishing.card import CHECKPOINT_SELECTION_TEXTS, FusionModelCardData, model_card
from llm_fusion_fec.publishing.confusion import confusion_matrix_png
from llm_fusion_fec.publishing.hub import push_to_hub
from llm_fusion_fec.publishing.paths import check_shareable
from llm_fusion_fec.publishing.reliability import reliability_diagram_png
from llm_fusion_fec.publishing.saving import save_model_folder, training_arguments
from llm_fusion_fec.training.trainer import CHECKPOINT_SELECTIONS
from modeling_llm_fusion import LLMFusionForSequenceClassification

LABELS = ["sad", "joyful", "furious", "anxious", "proud", "afraid"]
TOKEN = "hf_DoNotLeakThisToken"
REPO_ID = "fec-tests/llm-fusion-ed"
SINGLE, MULTI = "single_label_classification", "multi_label_classification"


def hub_backbones(tiny_backbones: list[dict]) -> list[dict]:
    """The tiny backbones named by Hub ids, as a shareable model's are."""
    return [{**spec, "model": f"fec-tests/tiny-{spec['name']}"} for spec in tiny_backbones]


def make_model(backbones: list[dict], problem_type: str = SINGLE, **head) -> LLMFusionForSequenceClassification:
    config = LLMFusionConfig(
        backbones=backbones,
        id2label=dict(enumerate(LABELS)),
        label2id={name: i for i, name in enumerate(LABELS)},
        problem_type=problem_type,
        fusion_dim=64,
        mlp_dims=[32],
        **head,
    )
    torch.manual_seed(0)
    return LLMFusionForSequenceClassification(config)


def make_results(problem_type: str = SINGLE, dataset: str = "ED", **protocol) -> RunResults:
    """Two seeds with different scores; seed 43 has the better validation score, seed 42 the better test score."""
    rng = np.random.default_rng(0)
    selection = "weighted_f1" if problem_type == SINGLE else "macro_f1"
    runs = []
    for seed, validation in ((42, 0.40), (43, 0.55)):
        if problem_type == SINGLE:
            references = rng.integers(0, len(LABELS), 120)
            decisions = np.where(rng.random(120) < 0.6, references, rng.integers(0, len(LABELS), 120))
            test = {"accuracy": 0.61 - seed / 1000, "weighted_f1": 0.6 - seed / 1000, "macro_f1": 0.5 - seed / 1000}
        else:
            references = (rng.random((120, len(LABELS))) < 0.3).astype(int)
            decisions = (rng.random((120, len(LABELS))) < 0.3).astype(int)
            test = {"micro_f1": 0.45 - seed / 1000, "macro_f1": 0.4 - seed / 1000}
        per_label, confusion = per_label_scores(decisions, references, LABELS)
        runs.append(
            SeedResult(
                seed=seed,
                epochs=14,
                best_epoch=4,
                wall_time_s=12.5,
                threshold=None if problem_type == SINGLE else 0.35,
                validation={selection: validation, "loss": 1.2},
                test=test,
                per_label=per_label,
                confusion=confusion,
                trained_with=[42, 43],
            )
        )
    defaults = {"early_stopping_metrics": [selection], "checkpoint_selection": "best"}
    return RunResults(
        dataset=dataset,
        problem_type=problem_type,
        selection_metric=selection,
        best_seed=43,
        runs=runs,
        **{**defaults, **protocol},
    )


def make_args(tmp_path: Path, **overrides) -> TrainingArguments:
    """Training arguments holding local paths and a token, as a real run's do."""
    (tmp_path / "checkpoint-4").mkdir(parents=True, exist_ok=True)
    values = {
        "output_dir": str(tmp_path / "out"),
        "run_name": str(tmp_path / "run"),
        "hub_token": TOKEN,
        "resume_from_checkpoint": str(tmp_path / "checkpoint-4"),
        "report_to": "none",
        "learning_rate": 1e-4,
        "per_device_train_batch_size": 10,
        "num_train_epochs": 200,
        "eval_strategy": "epoch",
        "lr_scheduler_type": "constant",
        "max_grad_norm": 0.0,
        **overrides,
    }
    return TrainingArguments(**values)


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)


def undefined_names(code: str) -> set[str]:
    """Names a snippet reads before anything binds them (module-level code: imports, assignments)."""
    bound = set(dir(builtins))
    undefined = set()
    for statement in ast.parse(code).body:
        for node in ast.walk(statement):
            if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id not in bound:
                undefined.add(node.id)
        for node in ast.walk(statement):
            if isinstance(node, ast.alias):
                bound.add((node.asname or node.name).split(".")[0])
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
                bound.add(node.id)
    return undefined


def read_png(data: bytes) -> np.ndarray:
    """Decode a PNG with Pillow (an independent reader) as an `(height, width, 3)` RGB array."""
    from PIL import Image

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB"))


@pytest.fixture(scope="module")
def published(tmp_path_factory, tiny_backbones) -> tuple[Path, list[str], RunResults, FusionModelCardData]:
    """A single-label model published with a Hub id; the data set was given as a local folder."""
    root = tmp_path_factory.mktemp("published")
    results = make_results(dataset=str(root / "data" / "ED"))
    spec = FusionModelCardData(results, make_args(root, hub_model_id=REPO_ID), "ED", early_stopping_patience=10)
    folder = root / "llm-fusion-ed"
    written = save_model_folder(make_model(hub_backbones(tiny_backbones), standardize_features=True), folder, spec)
    return folder, written, results, spec


@pytest.fixture(scope="module")
def published_multi_label(tmp_path_factory, tiny_backbones) -> tuple[Path, list[str], RunResults]:
    """A multi-label model published without --hub-model-id."""
    root = tmp_path_factory.mktemp("published_multi_label")
    results = make_results(MULTI, "go_emotions_multilabel")
    spec = FusionModelCardData(results, make_args(root), "go_emotions_multilabel", early_stopping_patience=10)
    folder = root / "llm-fusion-go-emotions-multilabel"
    written = save_model_folder(make_model(hub_backbones(tiny_backbones), MULTI, encoders_in_tail=True), folder, spec)
    return folder, written, results


# ---- the folder ----


def test_folder_holds_the_model_its_results_and_its_card(published, published_multi_label):
    folder, written, results, _ = published
    files = [path.relative_to(folder) for path in folder.rglob("*") if path.is_file()]
    assert written == sorted(str(path) for path in files if path.parts[0] != "runs")  # runs/: this machine's record
    assert {
        "config.json",
        "model.safetensors",
        "configuration_llm_fusion.py",
        "modeling_llm_fusion.py",
        "pipeline_fec.py",
        "handler.py",  # Inference Endpoints
        "requirements.txt",  # what an endpoint installs
        "results.json",
        "training_args.json",
        "README.md",
        "confusion_matrix.png",
    } == set(written)
    saved = RunResults.load(folder / "results.json")
    assert saved.dataset == "ED"  # the publishable name, not the local folder the data came from
    assert saved.to_dict() == {**results.to_dict(), "dataset": "ED"}
    arguments = json.loads((folder / "training_args.json").read_text())
    assert arguments["learning_rate"] == 1e-4 and arguments["seeds"] == [42, 43]
    assert arguments["early_stopping_patience"] == 10 and arguments["metric_for_best_model"] == "weighted_f1"
    # Multi-label: no confusion matrix.
    folder, written, _ = published_multi_label
    assert "confusion_matrix.png" not in written and not (folder / "confusion_matrix.png").exists()


def test_folder_lists_only_what_it_wrote(tmp_path, tiny_backbones):
    folder = tmp_path / "out"
    (folder / "runs" / "seed-42").mkdir(parents=True)
    (folder / "runs" / "seed-42" / "result.json").write_text("{}")
    (folder / "notes.txt").write_text("mine")
    spec = FusionModelCardData(make_results(), make_args(tmp_path), "ED", early_stopping_patience=10)
    written = save_model_folder(make_model(hub_backbones(tiny_backbones)), folder, spec)
    assert "notes.txt" not in written and not [name for name in written if name.startswith("runs")]
    assert (folder / "notes.txt").read_text() == "mine"  # left alone
    assert not list(folder.glob(".saving-*"))  # the staging folder is gone


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_every_saved_file_gets_the_mode_of_a_new_file(tmp_path, tiny_backbones, umask):
    spec = FusionModelCardData(make_results(), make_args(tmp_path), "ED", early_stopping_patience=10)
    previous = os.umask(umask)
    try:
        written = save_model_folder(make_model(hub_backbones(tiny_backbones)), tmp_path / "out", spec)
    finally:
        os.umask(previous)
    modes = {name: oct((tmp_path / "out" / name).stat().st_mode & 0o777) for name in written}
    assert modes == dict.fromkeys(written, oct(0o666 & ~umask))  # model.safetensors too (safetensors writes 0600)


# ---- the card ----


def test_card_loads_back_with_the_saved_seeds_measured_scores(published):
    folder, _, results, _ = published
    card = ModelCard.load(folder / "README.md")
    best = results.best
    assert best.seed == 43 and results.runs[0].test != best.test  # the saved seed is not the best on test
    measured = {(r.metric_type, (r.metric_args or {}).get("average")): r.metric_value for r in card.data.eval_results}
    assert measured == {
        ("accuracy", None): best.test["accuracy"],
        ("f1", "weighted"): best.test["weighted_f1"],
        ("f1", "macro"): best.test["macro_f1"],
    }
    assert {(r.dataset_type, r.dataset_split) for r in card.data.eval_results} == {
        ("facebook/empathetic_dialogues", "test")
    }
    assert card.data.model_name == REPO_ID and card.data.license == "cc-by-nc-4.0"
    assert card.data.datasets == ["facebook/empathetic_dialogues"] and card.data.pipeline_tag == "text-classification"
    # One base model, the LLM, as an adapter on it: several would be drawn by the Hub as a merge.
    assert card.data.base_model == "fec-tests/tiny-llama" and card.data.base_model_relation == "adapter"
    widget = card.data.widget
    assert 3 <= len(widget) <= 5 and all(isinstance(item["text"], str) and item["text"].strip() for item in widget)
    for key, summary in results.test.items():
        assert f"{summary['mean']:.4f} +- {summary['std']:.4f}" in card.text, key
    assert "| 43 (saved) |" in card.text
    assert format_results_table(results) in card.text  # the table the train command prints
    assert "{{" not in card.text and "{%" not in card.text


def test_card_snippets_name_the_repository_and_define_every_name(published, published_multi_label):
    card = ModelCard.load(published[0] / "README.md")
    assert f'pipeline("text-classification", model="{REPO_ID}", trust_remote_code=True)' in card.text
    assert f'pipeline("fec", model="{REPO_ID}", trust_remote_code=True)' in card.text
    blocks = python_blocks(card.text)
    assert len(blocks) == 2 and "model.extract_features(texts)" in blocks[1]
    for code in blocks:
        assert undefined_names(code) == set(), code
    # The check catches the old card's snippet, which used `features` without defining it.
    assert undefined_names("from transformers import AutoModel\nmodel = AutoModel()\nmodel(**features)") == {
        "features"
    }
    # The widget's texts are the snippets' texts.
    assert json.dumps(card.data.widget[0]["text"]) in blocks[0]
    # Without --hub-model-id: a placeholder, and a sentence saying to replace it.
    folder = published_multi_label[0]
    text = (folder / "README.md").read_text()
    placeholder = f"YOUR_ORG/{folder.name}"
    assert f'pipeline("text-classification", model="{placeholder}", trust_remote_code=True)' in text
    assert f"Replace `{placeholder}` below with the id of the repository" in text


def test_card_features_snippet_runs(tmp_path, tiny_backbones):
    """The snippet that computes features and logits runs as written, in a fresh process (the model id is a local
    folder, and the backbones are the tiny local ones)."""
    folder = tmp_path / "model"
    spec = FusionModelCardData(
        make_results(), make_args(tmp_path, hub_model_id=str(folder)), "ED", early_stopping_patience=3
    )
    save_model_folder(make_model(tiny_backbones), folder, spec)
    assert ModelCard.load(folder / "README.md").data.base_model is None  # a local folder is no base model
    snippet = python_blocks((folder / "README.md").read_text())[1]
    (tmp_path / "snippet.py").write_text(snippet)
    shapes = run_program("run_snippet.py", tmp_path / "snippet.py", "features", "logits")["names"]
    expected = {"llama": [2, 3, 32], "bert": [2, 32], "roberta": [2, 24], "": [2, len(LABELS)]}
    assert {**shapes["features"], "": shapes["logits"]} == expected
    # The comments in the snippet say the same shapes.
    assert "llama (2, 3, 32), bert (2, 32), roberta (2, 24)" in snippet and f"# (2, {len(LABELS)})" in snippet


def test_card_pipeline_snippet_runs(tmp_path, tiny_backbones):
    """The `text-classification` snippet runs as written and answers as its comments say."""
    folder = tmp_path / "model"
    spec = FusionModelCardData(
        make_results(), make_args(tmp_path, hub_model_id=str(folder)), "ED", early_stopping_patience=3
    )
    save_model_folder(make_model(tiny_backbones), folder, spec)
    if "text-classification" not in json.loads((folder / "config.json").read_text())["custom_pipelines"]:
        pytest.skip("save_for_pipeline does not map the text-classification task to the fusion pipeline yet")
    (tmp_path / "snippet.py").write_text(python_blocks((folder / "README.md").read_text())[0])
    single, batch = run_program("run_snippet.py", tmp_path / "snippet.py")["expressions"]  # the two classifier calls
    assert len(single) == 1 and single[0]["label"] in LABELS and 0 < single[0]["score"] <= 1
    assert len(batch) == 2 and all(len(answer) == 3 for answer in batch)


def test_card_has_each_labels_scores_and_the_confusion_matrix(published, published_multi_label):
    folder, _, results, _ = published
    text = (folder / "README.md").read_text()
    for label in LABELS:
        scores = results.best.per_label[label]
        row = (
            f"| {label} | {scores['precision']:.4f} | {scores['recall']:.4f} | {scores['f1']:.4f} | "
            f"{scores['support']} |"
        )
        assert row in text, label
    assert "](confusion_matrix.png)" in text
    image = read_png((folder / "confusion_matrix.png").read_bytes())
    assert image.shape[0] == image.shape[1] >= 400
    # The most frequent confusion is named with its count.
    confusion = np.array(results.best.confusion)
    np.fill_diagonal(confusion, 0)
    true, predicted = np.unravel_index(confusion.argmax(), confusion.shape)
    assert f"| {LABELS[true]} | {LABELS[predicted]} | {confusion.max()} |" in text
    # Multi-label: per-label scores, no confusion matrix.
    folder, _, results = published_multi_label
    text = (folder / "README.md").read_text()
    scores = results.best.per_label["afraid"]
    assert f"| afraid | {scores['precision']:.4f} | {scores['recall']:.4f} |" in text
    assert "confusion_matrix.png" not in text


def test_confusion_matrix_names_the_labels_and_counts_and_is_readable_at_32_labels():
    labels = [f"emotion_{i}" for i in range(32)]
    counts = (np.eye(32, dtype=int) * 7 + np.roll(np.eye(32, dtype=int), 1, axis=1)).tolist()
    image = read_png(confusion_matrix_png(counts, labels))
    assert image.shape[0] == image.shape[1] >= 1500  # about 0.42 inch (42 pixels) a label, plus the axes
    assert image.min() < 60 and (image == 255).all(axis=2).mean() > 0.1  # dark squares, white margins
    # The names and the counts are drawn: other names, or another count, give another image.
    renamed = read_png(confusion_matrix_png(counts, [f"feeling_{i}" for i in range(32)]))
    recounted = read_png(
        confusion_matrix_png([[c + (i == j == 0) for j, c in enumerate(row)] for i, row in enumerate(counts)], labels)
    )
    assert (renamed != image).any() and (recounted != image).any()


def test_without_matplotlib_the_card_has_no_image_and_says_why(tmp_path, tiny_backbones, monkeypatch, caplog):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if it were not installed
    model = make_model(hub_backbones(tiny_backbones))
    spec = FusionModelCardData(make_results(), make_args(tmp_path), "ED", early_stopping_patience=10)
    with caplog.at_level("WARNING"):
        written = save_model_folder(model, tmp_path / "out", spec)
    assert "confusion_matrix.png" not in written and not (tmp_path / "out" / "confusion_matrix.png").exists()
    assert "confusion_matrix.png" not in (tmp_path / "out" / "README.md").read_text()
    assert "pip install 'llm-fusion-fec[card]'" in caplog.text


def test_card_states_the_protocol_as_trained_the_head_and_the_versions(tmp_path, tiny_backbones):
    results = make_results(early_stopping_metrics=["weighted_f1", "loss"], checkpoint_selection="last_improvement")
    args = make_args(tmp_path, learning_rate=3e-4, per_device_train_batch_size=16, num_train_epochs=50)
    model = make_model(hub_backbones(tiny_backbones), encoders_in_tail=True)
    save_model_folder(model, tmp_path / "out", FusionModelCardData(results, args, "ED", early_stopping_patience=7))
    text = (tmp_path / "out" / "README.md").read_text()
    for fact in (
        "learning rate 0.0003",
        "constant schedule",
        "batch size 16",
        "at most 50 epochs",
        "no gradient clipping",
        "after 7 evaluations without improvement of validation weighted_f1 or loss",
        "the last evaluation at which any early-stopping metric improved",
        "Seeds 42, 43",
        "Seeds 42+43 were trained together as one batched model",
        "`standardize_features=False`",
        "`encoders_in_tail=True`",
        "followed by the mean of the raw llama layer vectors and the raw encoder vectors",
        "MLP (32 -> 6 labels)",
    ):
        assert fact in text, fact
    # Each backbone's feature is described by the config's own description of its pooling.
    for spec in model.config.backbones:
        assert f"| {spec['name']} | `{spec['model']}` | - | {describe_pooling(spec)} |" in text
    for name, value in (
        ("Python", platform.python_version()),
        ("PyTorch", torch.__version__),
        ("Transformers", transformers.__version__),
        ("Datasets", datasets.__version__),
    ):
        assert f"- {name}: {value}" in text
    entries = re.findall(r"```bibtex\n(@\w+\{.*?\n\})\n```", text, flags=re.DOTALL)
    assert len(entries) == 2 and "TODO" not in text
    paper = dict(re.findall(r"^\s+(\w+) = \"?(.*?)\"?,$", entries[0], flags=re.MULTILINE))
    assert entries[0].startswith("@inproceedings{")
    assert paper["author"] == "Liu, Chun and Zhang, Hongguang and Zhao, Kainan and Ju, Xinghai and Yang, Lin"
    assert paper["title"].replace("{", "").replace("}", "").startswith("LLMEmbed: Rethinking Lightweight LLM's")
    assert paper["year"] == "2024" and "Association for Computational Linguistics" in paper["booktitle"]
    assert entries[1].count("{") == entries[1].count("}")
    assert "https://github.com/havelhakimi/LLM-FusionClassifier" in entries[1]


def test_card_describes_two_views_of_one_llm(tmp_path, tiny_backbones):
    backbones = hub_backbones(tiny_backbones)
    window = {**backbones[0], "name": "llama_window", "num_layers": 2, "layers": [-3, -4]}
    model = make_model([*backbones, window], standardize_features=True)
    save_model_folder(model, tmp_path / "out", FusionModelCardData(make_results(), make_args(tmp_path), "ED", 10))
    text = (tmp_path / "out" / "README.md").read_text()
    assert "4 backbones (llama, bert, roberta, llama_window: views of 3 models, each loaded once)" in text
    layers = tiny_backbones[0]["num_layers"] + 2
    assert f"Each of the {layers} layer vectors of llama and llama_window is projected" in text
    assert "the mean of the raw llama and llama_window layer vectors (one mean each);" in text
    encoders = make_model(backbones[1:])
    save_model_folder(encoders, tmp_path / "enc", FusionModelCardData(make_results(), make_args(tmp_path), "ED", 10))
    text = (tmp_path / "enc" / "README.md").read_text()
    assert "The encoder vectors are stacked (projected" in text and "flattened; an MLP" in text


def test_the_card_shows_each_backbones_weights_as_recorded_and_a_cut_test_split(tiny_backbones):
    """A pinned revision, a local folder's digest and a backbone of which nothing was recorded, each as it is; a
    --limit run's model-index names the cut split and reads back through `ModelCard`."""
    pinned, local, unknown = hub_backbones(tiny_backbones)
    model = make_model([{**pinned, "revision": "0123abcd"}, local, unknown])
    digest = "f" * 64
    results = make_results(limit=500)
    card_data = FusionModelCardData(results, make_args(Path("/tmp")), "ED", 10, local_weights={local["name"]: digest})
    card = ModelCard(str(model_card(model, card_data, "llm-fusion-ed")))
    assert f"| {pinned['name']} | `{pinned['model']}` | 0123abcd |" in card.text
    assert f"| {local['name']} | `{local['model']}` | local files, sha256 `ffffffffffff` |" in card.text
    assert f"| {unknown['name']} | `{unknown['model']}` | - |" in card.text
    limitations = card.text.split("## Limitations")[1]
    assert (
        f"the same weights: the revisions shown; for {local['name']}, the files whose sha256 is shown (a local folder "
        f"has no Hub revision); for {unknown['name']}, weights that were not recorded; the same pooling"
    ) in limitations
    splits = {(r.dataset_name, r.dataset_type, r.dataset_split) for r in card.data.eval_results}
    assert splits == {
        ("Empathetic Dialogues (each split cut to its first 500 rows)", "facebook/empathetic_dialogues", "test[:500]")
    }
    assert RunResults.from_dict(json.loads(json.dumps(results.to_dict()))).limit == 500


def test_every_checkpoint_selection_is_described():
    assert set(CHECKPOINT_SELECTION_TEXTS) == set(CHECKPOINT_SELECTIONS)


def test_results_table_has_each_seed_and_the_mean():
    results = make_results()
    table = format_results_table(results).splitlines()
    assert len(table) == 2 + 2 + 1 and table[3].startswith("| 43 (saved) | 14 | 4 | 12 | 0.5500 |")
    accuracy = [run.test["accuracy"] for run in results.runs]
    assert f"{np.mean(accuracy):.4f} +- {np.std(accuracy):.4f}" in table[-1]


# ---- no local paths ----


def test_no_local_path_or_token_leaves_the_machine(published, tmp_path_factory):
    folder, written, _, _ = published
    arguments = json.loads((folder / "training_args.json").read_text())
    for key in ("output_dir", "logging_dir", "resume_from_checkpoint", "hub_token", "run_name"):
        assert key not in arguments, key  # run_name: the local folder the arguments were given
    local = [str(tmp_path_factory.getbasetemp()), str(REPO), str(Path.home()) + "/"]
    for name in written:
        text = (folder / name).read_bytes().decode("utf-8", errors="replace")
        assert TOKEN not in text, name
        assert not [path for path in local if path in text], name


def test_training_arguments_drop_values_that_are_local_paths(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("logs").mkdir()
    spec = FusionModelCardData(make_results(), make_args(tmp_path, run_name="logs", hub_model_id=REPO_ID), "ED", 10)
    arguments = training_arguments(spec)
    assert "run_name" not in arguments  # a relative folder that exists here
    assert arguments["hub_model_id"] == REPO_ID and arguments["optim"] == spec.training_args.optim


@pytest.mark.parametrize("name", ["/data/ED", "~/data/ED", "./ED", "../data/ED", ""])
def test_the_data_set_is_named_not_located(name):
    with pytest.raises(ValueError, match="dataset_name must be the data set's publishable name"):
        FusionModelCardData(make_results(), TrainingArguments(output_dir="out", report_to="none"), name, 10)


# ---- the Hub ----


@pytest.fixture
def hub(monkeypatch) -> list:
    """HfApi's create_repo and upload_folder, recorded instead of called."""
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create_repo", repo_id, kw)))

    def upload_folder(self, **kwargs):
        calls.append(("upload_folder", kwargs, self.token))
        return type("Commit", (), {"commit_url": "https://hub/commit"})()

    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    return calls


def test_push_uploads_only_the_files_this_run_wrote(tmp_path, tiny_backbones, hub):
    folder = tmp_path / "out"
    folder.mkdir()
    # What an earlier run or someone else left: a file with a local path, a stale weight shard, a seed's run.
    (folder / "notes.txt").write_text(f"features in {tmp_path}")
    (folder / "model-00001-of-00002.safetensors").write_bytes(b"stale")
    (folder / "runs" / "seed-42").mkdir(parents=True)
    (folder / "runs" / "seed-42" / "result.json").write_text("{}")
    spec = FusionModelCardData(
        make_results(), make_args(tmp_path, hub_model_id=REPO_ID), "ED", early_stopping_patience=10
    )
    written = save_model_folder(make_model(hub_backbones(tiny_backbones)), folder, spec)
    # A written name that is also a pattern ([draft] matches one letter), beside a file that pattern would match.
    (folder / "notes [draft].md").write_text("written")
    (folder / "notes d.md").write_text("not written")
    assert (
        push_to_hub(folder, [*written, "notes [draft].md"], REPO_ID, token=TOKEN, private=True) == "https://hub/commit"
    )
    (create, repo_id, options), (upload, kwargs, token) = hub
    assert (create, repo_id, options["private"]) == ("create_repo", REPO_ID, True) and upload == "upload_folder"
    assert kwargs["repo_id"] == REPO_ID and Path(kwargs["folder_path"]) == folder and token == TOKEN
    everything = [str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file()]
    uploaded = filter_repo_objects(
        everything, allow_patterns=kwargs.get("allow_patterns"), ignore_patterns=kwargs.get("ignore_patterns")
    )
    assert sorted(uploaded) == sorted([*written, "notes [draft].md"])


@pytest.mark.parametrize("files", [["runs/seed-42/result.json"], ["../secrets.txt"], ["missing.json"], []])
def test_push_refuses_files_it_did_not_write(tmp_path, files, hub):
    LLMFusionConfig(backbones=[{"name": "bert", "model": "org/bert", "hidden_size": 8}]).save_pretrained(tmp_path)
    (tmp_path / "runs" / "seed-42").mkdir(parents=True)
    (tmp_path / "runs" / "seed-42" / "result.json").write_text("{}")
    with pytest.raises(ValueError, match="Cannot upload"):
        push_to_hub(tmp_path, files, REPO_ID)
    assert hub == []


@pytest.mark.parametrize("where", ["absolute", "relative folder", "bare folder", "dot", "home", "not a repo id"])
def test_push_refuses_backbones_named_by_local_folders(tmp_path, tiny_backbones, monkeypatch, hub, where):
    llama = Path(tiny_backbones[0]["model"])
    monkeypatch.chdir(llama.parent.parent)
    model = {
        "absolute": str(llama),
        "relative folder": f"{llama.parent.name}/llama",
        "bare folder": "llama",
        "dot": "./models/llama",
        "home": "~/models/llama",
        "not a repo id": "models/llama/v2",
    }[where]
    if where == "bare folder":
        monkeypatch.chdir(llama.parent)
    config = LLMFusionConfig(backbones=[{**tiny_backbones[0], "model": model}, *hub_backbones(tiny_backbones)[1:]])
    config.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"Backbone\(s\) \[.*\] are local paths"):
        push_to_hub(tmp_path, ["config.json"], REPO_ID)
    assert hub == []  # refused before anything was created


def test_hub_ids_are_shareable(tiny_backbones):
    check_shareable(LLMFusionConfig(backbones=hub_backbones(tiny_backbones)))


# ---- calibration and the bag-of-words baseline ----


def with_calibration(results: RunResults, baseline_score: float) -> RunResults:
    """`results` with each seed's calibration (seed 43's temperature kept, seed 42's not) and a baseline scoring
    `baseline_score` on validation."""
    rng = np.random.default_rng(2)
    logits, labels = rng.normal(0, 3, (200, len(LABELS))), rng.integers(0, len(LABELS), 200)
    for run, temperature in zip(results.runs, (1.0, 2.5)):
        choice = TemperatureChoice(temperature, 0.05 + temperature / 100, 0.09)
        run.calibration = calibration_of(choice, logits, labels, SINGLE)
    baseline_calibration = calibration_of(TemperatureChoice(1.0, 0.2, 0.2), logits / 3, labels, SINGLE)
    results.baseline = BaselineResult(
        method="TF-IDF of words and word pairs (sublinear tf) + logistic regression",
        c=3.0,
        strengths=[0.3, 1.0, 3.0, 10.0, 30.0],
        threshold=None,
        validation={"weighted_f1": baseline_score, "loss": 1.5},
        test={"accuracy": 0.52, "weighted_f1": 0.51, "macro_f1": 0.45},
        calibration=baseline_calibration,
        vocabulary=12345,
        wall_time_s=8.4,
    )
    return results


@pytest.mark.parametrize("baseline_score", [0.30, 0.60])
def test_card_and_results_carry_each_rows_ece_and_the_baseline(tmp_path, tiny_backbones, baseline_score):
    results = with_calibration(make_results(), baseline_score)
    spec = FusionModelCardData(results, make_args(tmp_path), "ED", early_stopping_patience=10)
    written = save_model_folder(make_model(hub_backbones(tiny_backbones)), tmp_path / "out", spec)
    assert RunResults.load(tmp_path / "out" / "results.json").to_dict() == results.to_dict()
    text = (tmp_path / "out" / "README.md").read_text()
    table = format_results_table(results)
    assert table in text  # the table the train command prints, ECE column and baseline row included
    lines = table.splitlines()
    assert lines[0].endswith("| test macro_f1 | test ECE |") and lines[-1].startswith(f"| {BASELINE_ROW} |  |  | 8 |")
    eces = [run.calibration.test_ece for run in results.runs]
    assert lines[2].endswith(f" | {eces[0]:.4f} |") and lines[3].endswith(f" | {eces[1]:.4f} |")
    assert lines[4].endswith(f" | {np.mean(eces):.4f} +- {np.std(eces):.4f} |")
    assert lines[-1].endswith(f"| 0.5200 | 0.5100 | 0.4500 | {results.baseline.calibration.test_ece:.4f} |")
    assert "fitted on the train split at C = 0.3, 1, 3, 10, 30 (12,345 words and word pairs), C = 3 chosen" in text
    # The saved seed (43, best on validation: 0.55) kept its temperature: the card says what it did.
    saved = results.best.calibration
    assert "divides its logits by the temperature 2.5 (`config.temperature`) before the softmax" in text
    assert f"from {saved.validation_ece_uncalibrated:.4f} to {saved.validation_ece:.4f}" in text
    assert "reliability_diagram.png" in written and "](reliability_diagram.png)" in text
    image = read_png((tmp_path / "out" / "reliability_diagram.png").read_bytes())
    assert image.shape[0] > image.shape[1] >= 400 and image.min() < 100
    if baseline_score > 0.55:  # above the seeds' validation mean (0.475)
        assert "**On validation it beats the head** (weighted_f1 0.6000 against 0.4750, the 2-seed mean)" in text
    else:
        assert "On validation the head beats it (weighted_f1 0.4750, the 2-seed mean, against 0.3000)" in text


def test_without_matplotlib_the_card_shows_the_reliability_table(tmp_path, tiny_backbones, monkeypatch, caplog):
    import sys

    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # as if it were not installed
    results = with_calibration(make_results(), 0.3)
    spec = FusionModelCardData(results, make_args(tmp_path), "ED", early_stopping_patience=10)
    with caplog.at_level("WARNING"):
        written = save_model_folder(make_model(hub_backbones(tiny_backbones)), tmp_path / "out", spec)
    assert "reliability_diagram.png" not in written and "shows its reliability table" in caplog.text
    text = (tmp_path / "out" / "README.md").read_text()
    assert "| top label's probability | count | mean probability | share right |" in text
    for row in results.best.calibration.reliability:
        line = f"| ({row['lower']:.2f}, {row['upper']:.2f}] | {row['count']} | {row['confidence']:.4f} |"
        assert (line in text) == (row["count"] > 0)


def test_reliability_diagram_draws_its_table():
    table = calibration_of(TemperatureChoice(1.0, 0, 0), np.eye(4) * 3, np.array([0, 1, 2, 0]), SINGLE).reliability
    image = read_png(reliability_diagram_png(table, "top label's probability"))
    moved = [{**row, "accuracy": 1 - row["accuracy"]} if row["count"] else row for row in table]
    assert (read_png(reliability_diagram_png(moved, "top label's probability")) != image).any()
