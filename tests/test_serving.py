"""Serving: the Inference Endpoints handler saved with every model, the Gradio Space (`fec space`) and its page's
functions, and the features shared as a Hub dataset (`fec push-features`) read back by training."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import shutil
import subprocess
import sys
import sysconfig
from importlib.metadata import distribution, packages_distributions, version
from pathlib import Path

import pytest
import torch
from huggingface_hub import HfApi, SpaceCard
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from safetensors.torch import load_file

from helpers import run_program, tiny_fusion_model, write_csv_dataset
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
    from llm_fusion_fec.serving.space import APP_SOURCE, SPACE_CODE

    monkeypatch.setitem(sys.modules, "gradio", None)  # writing the Space needs no Gradio
    assert fec(["space", "org/llm-fusion-ed", "--output_dir", str(tmp_path / "space")]) == 0
    space = tmp_path / "space"
    # The app and fec predict's code are the package's files as they are; what to show is data beside them.
    assert (space / "app.py").read_bytes() == APP_SOURCE.read_bytes()
    for name, source in SPACE_CODE.items():
        assert (space / name).read_bytes() == source.read_bytes()
    settings = json.loads((space / "space.json").read_text())
    assert settings["model"] == "org/llm-fusion-ed" and settings["backbone_paths"] == {}
    card = SpaceCard.load(space / "README.md").data.to_dict()
    assert card["sdk"] == "gradio" and card["app_file"] == "app.py" and card["models"] == ["org/llm-fusion-ed"]
    assert card["sdk_version"] == version("gradio") and card["title"] == "llm-fusion-ed emotions"
    requirements = (space / "requirements.txt").read_text().splitlines()
    assert requirements[0] == "torch" and requirements[-1] == f"gradio=={version('gradio')}"
    assert not any(line.startswith("llm-fusion-fec") for line in requirements)
    # Gradio and the rest are installed here: the notice says how to run the app, not what to install.
    out = capsys.readouterr().out
    assert f"Run it here: python {space / 'app.py'}" in out and "pip install" not in out


def test_the_notice_names_what_is_missing(tmp_path, monkeypatch, capsys):
    import llm_fusion_fec.serving.space as space_module

    def version_without_gradio(name):
        if name == "gradio":
            raise space_module.PackageNotFoundError(name)
        return version(name)

    monkeypatch.setattr(space_module, "version", version_without_gradio)
    assert fec(["space", "org/llm-fusion-ed", "--output_dir", str(tmp_path)]) == 0
    assert "gradio==5.0" in (tmp_path / "requirements.txt").read_text().splitlines()
    out = capsys.readouterr().out
    assert f"Run it here: pip install -r {tmp_path / 'requirements.txt'} (gradio missing here), then python" in out


HOSTILE = 'x"""\n__import__("os").system("touch PWNED")\n"""'
"""A model folder's name that, written into Python unescaped, would run a command."""


@pytest.fixture(scope="module")
def hostile_folder(model_folder, tmp_path_factory) -> Path:
    """The saved model in a folder whose name holds triple quotes, a newline and a call."""
    folder = tmp_path_factory.mktemp("hostile") / HOSTILE
    shutil.copytree(model_folder, folder)
    return folder


def test_a_folder_name_enters_the_space_as_data(hostile_folder, backbone_paths, tmp_path, monkeypatch):
    from llm_fusion_fec.serving.space import APP_SOURCE

    monkeypatch.chdir(tmp_path)
    paths = [f"{name}={folder}" for name, folder in backbone_paths.items()]
    assert fec(["space", str(hostile_folder), "--output_dir", "space", "--backbone_path", *paths]) == 0
    app = Path("space/app.py").read_text()
    assert app == APP_SOURCE.read_text() and "PWNED" not in app
    ast.parse(app)  # and it is Python
    settings = json.loads(Path("space/space.json").read_text())
    assert settings["model"] == str(hostile_folder.resolve()) and settings["backbone_paths"] == backbone_paths
    card = SpaceCard.load("space/README.md").data.to_dict()
    assert card["title"] == f"{HOSTILE} emotions" and "models" not in card
    assert not Path("PWNED").exists()


@pytest.mark.parametrize(
    "title", ["Emotions: a demo", "Emotions\nhardware: a100-large", "x\n---\nsdk: docker", "'quoted' \"title\" #"]
)
def test_a_title_reads_back_as_written_and_adds_no_key(title, tmp_path):
    assert fec(["space", "org/llm-fusion-ed", "--output_dir", str(tmp_path), "--title", title]) == 0
    card = SpaceCard.load(tmp_path / "README.md")
    assert card.data.title == title
    assert set(card.data.to_dict()) == {
        "title",
        "emoji",
        "colorFrom",
        "colorTo",
        "sdk",
        "sdk_version",
        "app_file",
        "models",
        "pinned",
    }
    assert card.data.sdk == "gradio" and card.data.app_file == "app.py"


def test_the_space_needs_only_what_its_requirements_install(model_folder, tmp_path):
    """Every requirement names a distribution installed here and satisfied by it (none is this package), and every
    module the Space's files and the model's own code import is the standard library's, one of those files, or
    installed by a requirement (with its dependencies)."""
    from llm_fusion_fec.serving.space import unmet_requirements, write_space

    write_space(str(model_folder), tmp_path)
    requirements = [Requirement(line) for line in (tmp_path / "requirements.txt").read_text().splitlines()]
    names = {canonicalize_name(requirement.name) for requirement in requirements}
    assert {"torch", "transformers", "gradio"} <= names and "llm-fusion-fec" not in names
    assert unmet_requirements([str(requirement) for requirement in requirements]) == []
    installed, providers_of = dependency_closure(names), packages_distributions()
    local = {path.stem for path in [*tmp_path.glob("*.py"), *model_folder.glob("*.py")]}
    for source in [*tmp_path.glob("*.py"), *model_folder.glob("*.py")]:
        # Every function of fec predict's file code: the command's own (which import this package) are elsewhere.
        # The Space's labeller is built on its pipeline and labels lists of texts: building one from a model (this
        # package's loading) and labelling a pyarrow batch (the Ray recipe's) are what it never runs.
        skipped = ("__init__", "_label_arrow", "arrow_cells") if source.name == "labelling.py" else ()
        if source.name == "modeling_llm_fusion.py":  # the ONNX backend's, which the requirements name where used
            skipped = ("import_onnx_runtime", "export_onnx", "float32_matmuls")
        for module in absolute_imports(source, skipped):
            if module in sys.stdlib_module_names or module in local:
                continue
            providers = {canonicalize_name(name) for name in providers_of.get(module, [])}
            assert providers & installed, f"{source.name} imports {module}, which no requirement installs"


def absolute_imports(source: Path, skipped: tuple[str, ...] = ()) -> set[str]:
    """The top-level modules a file imports by name (relative imports left out), but for those under
    `if TYPE_CHECKING` and in the functions named `skipped`."""
    modules, pending = set(), list(ast.parse(source.read_text()).body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import):
            modules.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            modules.add(node.module.split(".")[0])
        elif not (
            (isinstance(node, ast.FunctionDef) and node.name in skipped)
            or (isinstance(node, ast.If) and ast.unparse(node.test) == "TYPE_CHECKING")
        ):
            pending.extend(ast.iter_child_nodes(node))
    return modules


def dependency_closure(names: set[str]) -> set[str]:
    """The distributions `names` install: themselves and their dependencies (extras aside), as installed here."""
    seen, pending = set(), list(names)
    while pending:
        name = canonicalize_name(pending.pop())
        if name in seen:
            continue
        seen.add(name)
        for line in distribution(name).requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                pending.append(requirement.name)
    return seen


def test_fec_space_pushes_to_a_gradio_space(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw)))
    argv = ["space", "org/llm-fusion-ed", "--output_dir", str(tmp_path), "--push", "org/demo", "--private"]
    assert fec(argv) == 0
    (_, repo_id, options), (_, upload) = calls
    assert repo_id == "org/demo" and options["repo_type"] == "space" and options["space_sdk"] == "gradio"
    assert options["private"] and upload["repo_type"] == "space" and upload["folder_path"] == str(tmp_path)
    assert sorted(upload["allow_patterns"]) == sorted(path.name for path in tmp_path.iterdir())  # the Space's files


def test_fec_space_refuses_to_push_a_local_model(model_folder, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(HfApi, "create_repo", lambda *a, **k: pytest.fail("nothing is pushed"))
    assert fec(["space", str(model_folder), "--output_dir", str(tmp_path), "--push", "org/demo"]) == 1
    assert "--push needs the model's Hub id" in capsys.readouterr().err
    assert fec(["space", str(tmp_path / "nothing"), "--output_dir", str(tmp_path)]) == 1
    assert "is not a model folder" in capsys.readouterr().err


def test_without_gradio_the_demo_says_what_to_install(model_folder, monkeypatch):
    from llm_fusion_fec.serving.space import build_demo

    monkeypatch.setitem(sys.modules, "gradio", None)
    with pytest.raises(ValueError, match=r"needs Gradio, which is not installed: pip install 'gradio>=5.0'"):
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


UPLOADS = {
    "posts.csv": 'id,text\n1,i finally got the job i wanted\n2,"  "\n3,"my dog died\nlast week"\n4,someone broke in\n',
    "posts.jsonl": '{"text": "i am so happy", "n": 1}\n{"text": 7}\nnot json\n{"text": "my cat is ill", "n": [2]}\n',
    "lines.txt": "i am so happy\n\nmy cat is ill\r\nwe won the cup\n",
    "empty.csv": 'text\n""\n" "\n',  # no row can be labelled: the columns are still the labeller's
}
"""Files to upload, each with rows that cannot be labelled, and the page's line for them."""
UPLOAD_MESSAGES = {
    "posts.csv": "1 of 4 rows could not be labelled (lines 3): line 3: the text is empty or only whitespace: '  '",
    "posts.jsonl": "2 of 4 rows could not be labelled (lines 2, 3): line 2: the text is int (7), not a string",
    "lines.txt": "1 of 4 rows could not be labelled (lines 2): line 2: the text is empty or only whitespace: ''",
    "empty.csv": "2 of 2 rows could not be labelled (lines 2, 3): line 2: the text is empty or only whitespace: ''",
}


@pytest.mark.parametrize("name", list(UPLOADS))
def test_the_space_upload_writes_the_rows_fec_predict_writes(name, model_folder, backbone_args, reference, tmp_path):
    """The page's file upload and `fec predict` are one labelling path (the `Labeller`): the same file gives the
    same bytes, bad rows, columns and, for a multi-label model, its threshold or the page's."""
    from llm_fusion_fec.commands.predict import main as predict
    from llm_fusion_fec.serving.space import Demo

    source = tmp_path / name
    source.write_text(UPLOADS[name], encoding="utf-8")
    multi = reference.model.config.problem_type == MULTI
    for threshold in (None, 0.25) if multi else (None,):
        uploaded, message = Demo(reference, []).label_upload(str(source), threshold)
        output = tmp_path / f"{threshold}-{Path(uploaded).name}"
        flags = [] if threshold is None else ["--threshold", str(threshold)]
        argv = ["--model", str(model_folder), "--input", str(source), "--output", str(output), *backbone_args, *flags]
        assert predict(argv) == 1, message  # every file has a row that cannot be labelled
        assert Path(uploaded).read_bytes() == output.read_bytes()
    assert message == f"{UPLOAD_MESSAGES[name]}. They have an empty label."


@pytest.fixture(scope="module")
def backbone_args(backbone_paths) -> list[str]:
    return [arg for name, folder in backbone_paths.items() for arg in ("--backbone-path", f"{name}={folder}")]


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


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory) -> Path:
    """A new virtual environment that sees this Python's installed distributions (a path file naming their folder,
    as tests/test_packaging.py does) but not this project: its editable install is a path hook that only this
    environment's own site folder runs, and no program started from it has the repository on its path."""
    environment = tmp_path_factory.mktemp("space-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", environment], check=True)
    python = environment / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    (Path(purelib) / "this_python_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    return environment


@pytest.mark.real  # a fresh environment, pip's resolver and the app's imports: about a minute on 2 cores
def test_the_space_installs_offline_and_answers_without_this_package(
    hostile_folder, backbone_paths, reference, fresh_venv, tmp_path
):
    from llm_fusion_fec.serving.space import write_space

    if reference.model.config.problem_type == MULTI:
        pytest.skip("one model is enough: the app's code does not depend on the problem type")
    space = write_space(str(hostile_folder), tmp_path / "space", backbone_paths)
    python = fresh_venv / "bin" / "python"
    # pip resolves requirements.txt in the new environment from what is installed alone: no index, nothing new.
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    command = [sys.executable, "-m", "pip", "--python", str(python), "install", "--no-index", "--dry-run"]
    result = subprocess.run([*command, "-r", space / "requirements.txt"], capture_output=True, text=True, env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    lines = (space / "requirements.txt").read_text().splitlines()
    assert result.stdout.count("Requirement already satisfied") >= len(lines) and "Would install" not in result.stdout
    # This project's own record is among what the new environment sees (its editable install): none may name it.
    assert not [line for line in lines if canonicalize_name(Requirement(line).name) == "llm-fusion-fec"]

    upload = write_csv_dataset(tmp_path / "data", [("i am so happy", 1), ("", 0), ("my cat is ill", 0)]) / "test.csv"
    planted_before = planted(tmp_path)  # a PWNED at / may be older than this test (another run's): only new ones count
    answer = run_program("space_answer.py", space, TEXTS[0], upload, python=python)
    assert answer["project_modules"] == []  # the model's own code ran, from its folder
    assert answer["model_module"].startswith("transformers_modules.")
    expected = {entry["label"]: entry["score"] for entry in reference(TEXTS[0], top_k=3)}
    assert answer["scores"] == pytest.approx(expected, abs=1e-6) and answer["message"] == ""
    # An uploaded file is labelled as `fec predict` labels it, its empty text reported.
    assert answer["upload_message"].startswith("1 of 3 rows could not be labelled (lines 3)")
    from llm_fusion_fec.inference.labelling import Labeller
    from llm_fusion_fec.inference.predict import label_file
    from llm_fusion_fec.serving.space_app import UPLOAD_BATCH_SIZE

    labeller = Labeller.from_pipeline(reference, UPLOAD_BATCH_SIZE)
    expected_file = label_file(labeller, upload, tmp_path / "expected.csv").output
    assert answer["labelled"].splitlines()[:1] == expected_file.read_text().splitlines()[:1]
    for row, expected_row in zip(answer["labelled"].splitlines()[1:], expected_file.read_text().splitlines()[1:]):
        assert row.rsplit(",", 1)[0] == expected_row.rsplit(",", 1)[0]  # the text, gold and predicted labels
        assert float(row.rsplit(",", 1)[1] or 0) == pytest.approx(float(expected_row.rsplit(",", 1)[1] or 0), abs=1e-6)
    assert planted(tmp_path) == planted_before


def planted(tmp_path: Path) -> dict[Path, int]:
    """The files the hostile folder name would create (`PWNED`, at / or under `tmp_path`), with their times."""
    found = [path for path in [*Path("/").iterdir(), *tmp_path.rglob("*")] if path.name == "PWNED"]
    return {path: path.stat().st_mtime_ns for path in found}
