"""The predict command: labels every good row of a file as the pipeline does, reports the bad ones by line and keeps
going, and answers --help without importing torch."""

from __future__ import annotations

import csv
import json

import pytest
import torch

import llm_fusion_fec.commands.predict as predict_command
import llm_fusion_fec.inference.predict as predict
import llm_fusion_fec.inference.streaming as streaming
from configuration_llm_fusion import LLMFusionConfig
from helpers import run_program, tiny_head_config
from modeling_llm_fusion import LLMFusionForSequenceClassification
from pipeline_fec import FECPipeline, save_for_pipeline

EMOTIONS = ["sad", "joyful", "angry", "afraid", "surprised"]


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, tiny_backbones):
    """A model saved as training saves it, its config naming Hub ids (the backbones come from --backbone-path)."""
    torch.manual_seed(0)
    hub_backbones = [{**spec, "model": f"fec-tests/tiny-{spec['name']}"} for spec in tiny_backbones]
    config = tiny_head_config(hub_backbones, EMOTIONS)
    folder = tmp_path_factory.mktemp("model")
    save_for_pipeline(LLMFusionForSequenceClassification(config), folder)
    return folder


@pytest.fixture(scope="module")
def backbone_args(tiny_backbones) -> list[str]:
    return [arg for spec in tiny_backbones for arg in ("--backbone-path", f"{spec['name']}={spec['model']}")]


@pytest.fixture(scope="module")
def pipe(model_folder, tiny_backbones) -> FECPipeline:
    """The pipeline on the same model: the reference for every label and score the command writes."""
    model = LLMFusionForSequenceClassification.from_pretrained(model_folder)
    paths = {spec["name"]: spec["model"] for spec in tiny_backbones}
    return FECPipeline(model=model, backbone_paths=paths, device="cpu")


def test_labels_a_csv_with_bad_rows(tmp_path, model_folder, backbone_args, pipe, capsys):
    source = tmp_path / "posts.csv"
    source.write_text(
        "id,text,label\n"
        "1,i finally got the job i wanted,joyful\n"
        "2,,sad\n"  # line 3: empty text
        '3,"my dog died\nlast week",sad\n'  # lines 4-5: a quoted text over two lines
        "4,   ,angry\n"  # line 6: only whitespace
        "5,someone broke into my car,angry\n",
        encoding="utf-8",
    )
    status = predict_command.main(
        ["--model", str(model_folder), "--input", str(source), "--batch-size", "2", *backbone_args]
    )
    err = capsys.readouterr().err
    assert status == 1
    assert f"{source}:3: the text is empty" in err and f"{source}:6: the text is empty" in err
    assert "2 of 5 rows could not be labelled (lines 3, 6)" in err
    with open(tmp_path / "posts.predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    # Every input row and column comes back in order; the gold `label` column is kept, the prediction is beside it.
    assert [row["id"] for row in rows] == ["1", "2", "3", "4", "5"]
    assert list(rows[0]) == ["id", "text", "label", "predicted_label", "predicted_score"]
    assert [row["label"] for row in rows] == ["joyful", "sad", "sad", "angry", "angry"]
    assert rows[2]["text"] == "my dog died\nlast week"
    for row in (rows[1], rows[3]):
        assert row["predicted_label"] == "" and row["predicted_score"] == ""
    for row in (rows[0], rows[2], rows[4]):
        (expected,) = pipe(row["text"])
        assert row["predicted_label"] == expected["label"]
        assert float(row["predicted_score"]) == pytest.approx(expected["score"], abs=1e-6)


def test_top_k_from_jsonl(tmp_path, model_folder, backbone_args, pipe, capsys):
    source, output = tmp_path / "posts.jsonl", tmp_path / "out" / "labels.jsonl"
    lines = [
        json.dumps({"body": "what a lovely surprise", "id": 1}),
        json.dumps({"body": 42, "id": 2}),
        "{not json",
        "",  # blank lines are no rows
        json.dumps({"id": 5}),
        json.dumps({"body": "i am nervous about the exam", "id": 6}),
    ]
    source.write_text("\n".join(lines) + "\n", encoding="utf-8")
    args = ["--model", str(model_folder), "--input", str(source), "--output", str(output), "--text-column", "body"]
    assert predict_command.main([*args, "--top-k", "2", *backbone_args]) == 1
    err = capsys.readouterr().err
    for line, problem in ((2, "the text is int (42), not a string"), (3, "not valid JSON"), (5, "no 'body' field")):
        assert f"{source}:{line}: {problem}" in err
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [record.get("id") for record in records] == [1, 2, None, 5, 6]
    assert [record["labels"] for record in records[1:4]] == ["", "", ""]
    for record in (records[0], records[4]):
        expected = pipe(record["body"], top_k=2)
        assert record["labels"] == [a["label"] for a in expected]
        assert record["scores"] == pytest.approx([a["score"] for a in expected], abs=1e-6)


def test_all_rows_labelled_exits_0(tmp_path, model_folder, backbone_args):
    source = tmp_path / "texts.txt"
    source.write_text("i finally got the job\nmy dog died\n", encoding="utf-8")
    assert predict_command.main(["--model", str(model_folder), "--input", str(source), *backbone_args]) == 0
    with open(tmp_path / "texts.predictions.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [row["text"] for row in rows] == ["i finally got the job", "my dog died"]
    assert all(row["label"] in EMOTIONS for row in rows)


@pytest.mark.parametrize(
    ("content", "extra", "message"),
    [
        ("body\nhello\n", [], "has no column 'text'; its header is ['body']"),
        ("text\nhello\n", ["--output", "out.tsv"], "--output must end in .csv, .jsonl or .parquet, got out.tsv"),
    ],
)
def test_unusable_input_is_refused_before_loading_the_model(tmp_path, capsys, monkeypatch, content, extra, message):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(streaming, "load_pipeline", lambda args: pytest.fail("the model was loaded"))
    (tmp_path / "in.csv").write_text(content, encoding="utf-8")
    assert predict_command.main(["--model", "no/such-model", "--input", "in.csv", *extra]) == 2
    assert message in capsys.readouterr().err


def test_help_imports_no_heavy_module():
    answer = run_program("script_help.py", "llm_fusion_fec.commands.predict", repo=True)
    assert answer["exit_code"] == 0
    assert "--backbone-path NAME=FOLDER" in answer["help"] and "--top-k" in answer["help"]
    assert sorted(name for name in ("torch", "datasets") if name in answer["modules"]) == []


# ---- loading exactly the model the folder holds ----


@pytest.fixture(scope="module")
def ensemble_folder(tmp_path_factory, model_folder):
    """An ensemble of three seeds' heads, saved as `train_fusion.py --seeds 3 --ensemble true` saves it."""
    from modeling_llm_fusion import LLMFusionEnsembleForSequenceClassification

    members = []
    for seed in (1, 2, 3):
        torch.manual_seed(seed)
        members.append(LLMFusionForSequenceClassification(LLMFusionConfig.from_pretrained(model_folder)))
    folder = tmp_path_factory.mktemp("ensemble")
    save_for_pipeline(LLMFusionEnsembleForSequenceClassification.from_members(members), folder)
    return folder


def test_an_ensemble_labels_the_same_twice_and_as_the_pipeline(
    ensemble_folder, tiny_backbones, backbone_args, tmp_path
):
    from transformers import pipeline

    texts = ["i finally got the job", "my dog died last week", "someone broke into my car"]
    (tmp_path / "in.txt").write_text("\n".join(texts) + "\n", encoding="utf-8")
    answers = []
    for run in ("first", "second"):
        output = tmp_path / f"{run}.jsonl"
        args = ["--model", str(ensemble_folder), "--input", str(tmp_path / "in.txt"), "--output", str(output)]
        assert predict_command.main([*args, *backbone_args]) == 0
        answers.append([json.loads(line) for line in output.read_text().splitlines()])
    assert answers[0] == answers[1]
    paths = {spec["name"]: spec["model"] for spec in tiny_backbones}
    served = pipeline("fec", model=str(ensemble_folder), trust_remote_code=True, backbone_paths=paths, device="cpu")
    for row, expected in zip(answers[0], served(texts), strict=True):
        assert row["label"] == expected["label"] and row["score"] == pytest.approx(expected["score"], abs=1e-6)


def test_weights_that_do_not_match_the_config_are_refused_in_one_line(ensemble_folder, tmp_path, capsys):
    import shutil

    from safetensors.torch import load_file, save_file

    broken = tmp_path / "broken"
    shutil.copytree(ensemble_folder, broken)
    weights = load_file(broken / "model.safetensors")
    save_file(
        {key: value for key, value in weights.items() if not key.startswith("members.2.")},
        broken / "model.safetensors",
    )
    (tmp_path / "in.txt").write_text("hello\n")
    assert predict_command.main(["--model", str(broken), "--input", str(tmp_path / "in.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "do not match its config" in err and "missing" in err and "members.2." in err


def test_a_features_folder_is_named_as_such(tmp_path, capsys):
    features = tmp_path / "features"
    features.mkdir()
    (features / "fec_features.json").write_text("{}")
    (tmp_path / "in.txt").write_text("hello\n")
    assert predict_command.main(["--model", str(features), "--input", str(tmp_path / "in.txt")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is a features folder" in err and "train_fusion.py" in err


def test_a_pickled_checkpoint_is_refused_in_one_line(model_folder, tmp_path, capsys):
    import shutil

    pickled = tmp_path / "pickled"
    shutil.copytree(model_folder, pickled)
    (pickled / "model.safetensors").unlink()
    torch.save({"x": torch.zeros(1)}, pickled / "pytorch_model.bin")
    (tmp_path / "in.txt").write_text("hello\n")
    assert predict_command.main(["--model", str(pickled), "--input", str(tmp_path / "in.txt")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1


def test_an_existing_output_is_kept_unless_overwrite(model_folder, backbone_args, tmp_path, capsys):
    (tmp_path / "in.txt").write_text("hello there\n")
    output = tmp_path / "out.csv"
    output.write_text("precious\n")
    args = ["--model", str(model_folder), "--input", str(tmp_path / "in.txt"), "--output", str(output), *backbone_args]
    assert predict_command.main(args) == 2
    assert output.read_text() == "precious\n" and "--overwrite" in capsys.readouterr().err
    assert predict_command.main([*args, "--overwrite"]) == 0
    assert output.read_text().startswith("text,label,score")


def test_a_repeated_backbone_path_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit:
        predict_command.main(["--model", "m", "--input", "x.txt", "--backbone-path", "llama=/a", "llama=/b"])
    assert exit.value.code == 2 and "gives llama twice" in capsys.readouterr().err


# ---- inputs read as the file holds them, outputs refused before any row is labelled ----


def test_a_txt_input_is_one_text_a_line_whatever_the_text_holds(tmp_path, model_folder, backbone_args, pipe):
    texts = ["i got the job\u2028and i am happy", "my dog\x85died", "a form\x0cfeed", "a lone\rreturn", "crlf line"]
    source = tmp_path / "texts.txt"
    source.write_bytes(("\n".join(texts[:4]) + "\n" + texts[4] + "\r\n").encode())
    output = tmp_path / "labels.jsonl"
    args = ["--model", str(model_folder), "--input", str(source), "--output", str(output), *backbone_args]
    assert predict_command.main(args) == 0
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").split("\n") if line]
    assert [record["text"] for record in records] == texts  # row i is line i of the file
    assert [record["label"] for record in records] == [answer[0]["label"] for answer in map(pipe, texts)]


def test_an_empty_line_of_a_txt_input_is_reported_by_its_line(tmp_path, pipe):
    from llm_fusion_fec import Labeller

    source = tmp_path / "texts.txt"
    source.write_text("one\u2028still one\n\nthree\n", encoding="utf-8")
    result = predict.label_file(Labeller.from_pipeline(pipe), source, tmp_path / "o.csv")
    assert [(row.line, row.text) for row in result.rows] == [(1, "one\u2028still one"), (2, ""), (3, "three")]
    assert result.problems() == "1 of 3 rows could not be labelled (lines 2)"


@pytest.mark.parametrize("suffix", [".csv", ".jsonl", ".txt"])
def test_an_input_that_is_not_utf8_is_named_with_its_line(tmp_path, capsys, monkeypatch, suffix):
    monkeypatch.setattr(streaming, "load_pipeline", lambda args: pytest.fail("the model was loaded"))
    lines = {".csv": ["text", "fine", "caf\xe9"], ".jsonl": ['{"text": "fine"}', '{"text": "caf\xe9"}']}
    lines = lines.get(suffix, ["fine", "still fine", "caf\xe9"])
    source = tmp_path / f"in{suffix}"
    source.write_bytes("\n".join(lines).encode("latin-1") + b"\n")
    assert predict_command.main(["--model", "no/such-model", "--input", str(source)]) == 2
    err = capsys.readouterr().err
    line = len(lines)
    assert err == (
        f"error: Input file {source} is not UTF-8 text (line {line} has byte 0xe9); the expected encoding is UTF-8: "
        "convert it, e.g. `iconv -f latin1 -t utf-8`.\n"
    )
    assert not (tmp_path / f"in.predictions{'.jsonl' if suffix == '.jsonl' else '.csv'}").exists()


@pytest.mark.parametrize("where", ["under-a-file", "deeper-under-a-file", "a-folder"])
def test_an_output_that_cannot_be_written_is_refused_before_labelling(tmp_path, capsys, monkeypatch, where):
    monkeypatch.setattr(streaming, "load_pipeline", lambda args: pytest.fail("the model was loaded"))
    (tmp_path / "in.txt").write_text("hello there\n")
    (tmp_path / "notes").write_text("a file\n")
    (tmp_path / "folder.csv").mkdir()
    output = {
        "under-a-file": tmp_path / "notes" / "out.csv",
        "deeper-under-a-file": tmp_path / "notes" / "sub" / "out.csv",
        "a-folder": tmp_path / "folder.csv",
    }[where]
    args = ["--model", "no/such-model", "--input", str(tmp_path / "in.txt"), "--output", str(output), "--overwrite"]
    assert predict_command.main(args) == 2
    err = capsys.readouterr().err
    expected = "is a folder" if where == "a-folder" else f"cannot be written: {tmp_path / 'notes'} is a file"
    assert err.count("\n") == 1 and expected in err
    assert (tmp_path / "notes").read_text() == "a file\n"


@pytest.mark.parametrize("link", ["hard", "symbolic"])
def test_the_input_under_another_name_is_never_the_output(tmp_path, capsys, monkeypatch, link):
    import os

    monkeypatch.setattr(streaming, "load_pipeline", lambda args: pytest.fail("the model was loaded"))
    source = tmp_path / "posts.csv"
    source.write_text("text\nhello there\n")
    output = tmp_path / "linked.csv"
    (os.link if link == "hard" else os.symlink)(source, output)
    args = ["--model", "no/such-model", "--input", str(source), "--output", str(output), "--overwrite"]
    assert predict_command.main(args) == 2
    assert f"--output {output} is the input file {source} (the same file); choose another." in capsys.readouterr().err
    assert source.read_text() == "text\nhello there\n"
