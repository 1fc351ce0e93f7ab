"""Serving: the Inference Endpoints handler saved with every model, the Gradio Space (`fec space`) and its page's
functions, and the features shared as a Hub dataset (`fec push-features`) read back by training."""

from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi
from safetensors.torch import load_file

from helpers import tiny_fusion_model, write_csv_dataset
from llm_fusion_fec.commands.fec import main as fec
from llm_fusion_fec.features.metadata import METADATA_FILE
from llm_fusion_fec.publishing.saving import write_endpoint_files
from pipeline_fec import FECPipeline, save_for_pipeline

EMOTIONS = ["sad", "joyful", "angry", "afraid", "surprised"]
TEXTS = ["i finally got the job i wanted", "my dog died last week", "someone broke into my car"]
SINGLE, MULTI = "single_label_classification", "multi_label_classification"


@pytest.fixture(scope="module", params=[SINGLE, MULTI])
def model_folder(request, tiny_backbones, tmp_path_factory) -> Path:
    """A saved model folder as training writes it (model, pipeline, handler), its backbones named by Hub ids."""
    model = tiny_fusion_model(tiny_backbones, EMOTIONS, request.param)
    if request.param == MULTI:
        with torch.no_grad():
            model.config.threshold = model(**model.extract_features(TEXTS)).logits.sigmoid().median().item()
    folder = tmp_path_factory.mktemp("model")
    save_for_pipeline(model, folder)
    write_endpoint_files(model.config, folder)
    return folder


@pytest.fixture(scope="module")
def backbone_paths(tiny_backbones) -> dict[str, str]:
    return {spec["name"]: spec["model"] for spec in tiny_backbones}


@pytest.fixture(scope="module")
def reference(model_folder, backbone_paths) -> FECPipeline:
    """The package's own pipeline on the saved model: what every serving path must answer."""
    from llm_fusion_fec.inference.loading import load_model

    return FECPipeline(model=load_model(model_folder), backbone_paths=backbone_paths, device="cpu")


# ---- the Inference Endpoints handler ----


def endpoint_handler(folder: Path, backbone_paths: dict[str, str]):
    """`EndpointHandler` imported from the folder's `handler.py`, as Inference Endpoints imports it."""
    spec = importlib.util.spec_from_file_location(f"handler_{abs(hash(folder))}", folder / "handler.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.EndpointHandler(str(folder), device="cpu", backbone_paths=backbone_paths)


def test_the_endpoint_handler_answers_as_the_pipeline(model_folder, backbone_paths, reference):
    handler = endpoint_handler(model_folder, backbone_paths)
    assert handler({"inputs": TEXTS[0]}) == reference(TEXTS[0])
    assert handler({"inputs": TEXTS}) == reference(TEXTS)
    assert handler({"inputs": TEXTS, "parameters": {"top_k": 2}}) == reference(TEXTS, top_k=2)
    assert handler({"inputs": TEXTS[1], "parameters": {"top_k": None}}) == reference(TEXTS[1], top_k=None)
    with pytest.raises(ValueError, match=r"Unknown parameter\(s\) \['temperature'\]; this endpoint takes top_k"):
        handler({"inputs": TEXTS[0], "parameters": {"temperature": 2}})
    for empty, message in [("", "empty or only whitespace"), ([], "empty list"), ({}, "JSON object with")]:
        with pytest.raises(ValueError, match=message):
            handler(empty if isinstance(empty, dict) else {"inputs": empty})
    with pytest.raises(TypeError, match="position 1 is int"):
        handler({"inputs": ["fine", 3]})


@pytest.mark.parametrize("parameters", [[], 0, "", False, ["top_k", 3], "top_k=3", 3.5])
def test_parameters_that_are_no_json_object_are_refused_however_empty(parameters):
    from llm_fusion_fec.serving.handler import EndpointHandler

    handler = EndpointHandler.__new__(EndpointHandler)  # the checks come before the pipeline: none is loaded
    handler.pipeline = lambda inputs, **options: pytest.fail(f"answered with parameters {parameters!r}")
    with pytest.raises(ValueError, match=r'^"parameters" must be a JSON object such as \{"top_k": 3\}, got ') as error:
        handler({"inputs": TEXTS[0], "parameters": parameters})
    assert type(parameters).__name__ in str(error.value) and "\n" not in str(error.value)


def test_parameters_left_out_or_null_are_none():
    from llm_fusion_fec.serving.handler import EndpointHandler

    handler = EndpointHandler.__new__(EndpointHandler)
    handler.pipeline = lambda inputs, **options: [inputs, options]
    for data in ({"inputs": "x"}, {"inputs": "x", "parameters": None}, {"inputs": "x", "parameters": {}}):
        assert handler(data) == ["x", {}]
    assert handler({"inputs": "x", "parameters": {"top_k": 2}}) == ["x", {"top_k": 2}]


def test_the_folder_has_what_an_endpoint_installs(model_folder):
    requirements = (model_folder / "requirements.txt").read_text().split()
    assert requirements[0].startswith("transformers>=5.0,<6") and "bitsandbytes" not in requirements
    source = (model_folder / "handler.py").read_text()
    assert "class EndpointHandler" in source and "llm_fusion_fec" not in source.replace("llm_fusion_fec`", "")


# ---- the Space ----


def test_fec_space_writes_a_gradio_space_for_a_hub_model(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # writing the Space needs no Gradio
    assert fec(["space", "org/llm-fusion-ed", "--output_dir", str(tmp_path / "space")]) == 0
    app = (tmp_path / "space" / "app.py").read_text()
    assert "build_demo('org/llm-fusion-ed')" in app
    readme = (tmp_path / "space" / "README.md").read_text()
    header = readme.split("---")[1]
    for line in ("sdk: gradio", "app_file: app.py", "models:\n  - org/llm-fusion-ed", "sdk_version: "):
        assert line in header
    assert (tmp_path / "space" / "requirements.txt").read_text().startswith("llm-fusion-fec[demo]")
    assert "pip install 'llm-fusion-fec[demo]'" in capsys.readouterr().out


def test_fec_space_pushes_to_a_gradio_space(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    argv = ["space", "org/llm-fusion-ed", "--output_dir", str(tmp_path), "--push", "org/demo", "--private"]
    assert fec(argv) == 0
    (_, repo_id, options), (_, upload) = calls
    assert repo_id == "org/demo" and options["repo_type"] == "space" and options["space_sdk"] == "gradio"
    assert options["private"] and upload["repo_type"] == "space" and upload["folder_path"] == str(tmp_path)


def test_fec_space_refuses_to_push_a_local_model(model_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("nothing is pushed"))
    assert fec(["space", str(model_folder), "--output_dir", str(tmp_path), "--push", "org/demo"]) == 1
    assert "--push needs the model's Hub id" in capsys.readouterr().err
    assert fec(["space", str(tmp_path / "nothing"), "--output_dir", str(tmp_path)]) == 1
    assert "is not a model folder" in capsys.readouterr().err


def test_without_gradio_the_demo_says_what_to_install(model_folder, monkeypatch):
    from llm_fusion_fec.serving.space import build_demo

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(ValueError, match=r"needs Gradio.*pip install 'llm-fusion-fec\[demo\]'"):
        build_demo(model_folder)


def test_the_page_answers_as_the_pipeline(reference, tmp_path):
    from llm_fusion_fec.serving.space import Demo

    demo = Demo(reference, ["an example"])
    multi = reference.model.config.problem_type == MULTI
    threshold = reference.model.config.threshold
    for text in TEXTS:
        scores, message = demo.classify(text, 3, threshold)
        expected = reference(text)[:3] if multi else reference(text, top_k=3)
        assert scores == ({a["label"]: a["score"] for a in expected} or None)
        assert message == ("" if scores else f"No emotion scores above the threshold {threshold:g}.")
    assert demo.classify("   ", 3, threshold) == (None, "Error: The text is empty or only whitespace: '   '.")

    source = write_csv_dataset(tmp_path / "data", [("i am so happy", 1), ("", 0), ("my cat is ill", 0)])
    path, message = demo.label_upload(str(source / "train.csv"), threshold)
    empty = "the text is empty or only whitespace: ''"
    assert message == f"1 of 3 rows could not be labelled (lines 3): line 3: {empty}. They have an empty label."
    rows = Path(path).read_text().splitlines()
    assert rows[0] == ("text,label,labels,scores" if multi else "text,label,predicted_label,predicted_score")
    assert rows[2] == ",0,,"  # the empty text, written back with an empty label
    assert demo.label_upload(None, threshold) == (None, "Error: choose a .csv, .jsonl or .txt file first.")
    path, message = demo.label_upload(str(tmp_path / "texts.pdf"), threshold)
    assert path is None and message.startswith("Error: ") and ".csv, .jsonl, .txt" in message


# ---- the features as a Hub dataset ----


@pytest.fixture
def fake_hub(tmp_path, monkeypatch) -> Path:
    """A Hub of one folder: `upload_folder` copies into it, `snapshot_download` reads from it."""
    hub = tmp_path / "hub"

    def upload_folder(self, repo_id, folder_path, repo_type, **kwargs):
        shutil.copytree(folder_path, hub / repo_type / repo_id, dirs_exist_ok=True)
        return type("Commit", (), {"commit_url": f"https://hub/{repo_id}/commit"})()

    def snapshot_download(repo_id, repo_type=None, **kwargs):
        folder = hub / repo_type / repo_id
        if not folder.exists():
            raise FileNotFoundError(f"404: {repo_id}")
        return str(folder)

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kwargs: None)
    monkeypatch.setattr(HfApi, "upload_folder", upload_folder)
    monkeypatch.setattr("huggingface_hub.snapshot_download", snapshot_download)
    return hub


def test_features_pushed_to_the_hub_train_the_same_head(tiny_backbones, data_dir, tmp_path, fake_hub, capsys):
    from llm_fusion_fec import extract, train

    paths = {spec["name"]: spec["model"] for spec in tiny_backbones}
    specs = [{**spec, "model": f"fec-tests/tiny-{spec['name']}"} for spec in tiny_backbones]
    local = tmp_path / "features"
    extract("ED", data_dir=str(data_dir), backbones=specs, backbone_paths=paths, output_dir=local, limit=40)
    assert fec(["push-features", str(local), "org/ed-tiny-features", "--max_shard_size", "8KB"]) == 0
    assert "https://huggingface.co/datasets/org/ed-tiny-features" in capsys.readouterr().out

    pushed = fake_hub / "dataset" / "org" / "ed-tiny-features"
    shards = sorted(path.name for path in (pushed / "data").iterdir())
    assert len(shards) == 9 and "train-00002-of-00003.parquet" in shards  # about 17 KB a split in 8 KB shards
    card = (pushed / "README.md").read_text()
    assert "license: cc-by-nc-4.0" in card and "facebook/empathetic_dialogues" in card
    assert all(spec["model"] in card for spec in specs) and "--features_dir org/ed-tiny-features" in card
    assert json.loads((pushed / METADATA_FILE).read_text()) == json.loads((local / METADATA_FILE).read_text())

    options = {"seeds": 1, "max_steps": 4, "report_to": "none", "disable_tqdm": True}
    from_local = train(features_dir=str(local), output_dir=str(tmp_path / "a"), **options)
    from_hub = train(features_dir="org/ed-tiny-features", output_dir=str(tmp_path / "b"), **options)
    assert from_hub.dataset == from_local.dataset == "ED"
    assert from_hub.saved.test == from_local.saved.test
    weights = [load_file(tmp_path / name / "model.safetensors") for name in ("a", "b")]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_features_with_local_backbones_are_not_pushed(tiny_backbones, data_dir, tmp_path, fake_hub, capsys):
    from llm_fusion_fec import extract

    extract("ED", data_dir=str(data_dir), backbones=tiny_backbones, output_dir=tmp_path / "f", limit=10)
    assert fec(["push-features", str(tmp_path / "f"), "org/x"]) == 1
    assert "are local folders: nobody else could load them" in capsys.readouterr().err
    assert not fake_hub.exists()


def test_a_missing_hub_features_dataset_is_named(tmp_path, fake_hub, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert fec(["train", "--features_dir", "org/no-such-features"]) == 1
    error = capsys.readouterr().err
    assert "org/no-such-features is neither a features folder here nor a Hub dataset" in error and "404" in error
