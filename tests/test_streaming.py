"""`fec predict` streaming: chunk by chunk, the pipeline's answers; Parquet and `datasets` folders in and out; after a
kill -9 the same command goes on and ends with the very bytes of an uninterrupted run; a changed input, model or
setting is refused; two processes under torchrun write what one writes."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import llm_fusion_fec.commands.predict as predict_command
import llm_fusion_fec.inference.streaming as streaming
from helpers import CORPUS, REPO, tiny_head_config
from modeling_llm_fusion import LLMFusionEnsembleForSequenceClassification, LLMFusionForSequenceClassification
from pipeline_fec import FECPipeline, save_for_pipeline

EMOTIONS = ["sad", "joyful", "angry", "afraid", "surprised"]
TEXTS = [f"{text} {'and then some more words' * (i % 3)}".strip() for i, text in enumerate(CORPUS)]  # 20 texts


def saved_model(folder, tiny_backbones, problem_type="single_label_classification", members=1):
    specs = [{**spec, "model": f"fec-tests/tiny-{spec['name']}"} for spec in tiny_backbones]
    heads = []
    for seed in range(members):
        torch.manual_seed(seed)
        heads.append(LLMFusionForSequenceClassification(tiny_head_config(specs, EMOTIONS, problem_type)))
    model = heads[0] if members == 1 else LLMFusionEnsembleForSequenceClassification.from_members(heads)
    save_for_pipeline(model, folder)
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory, tiny_backbones):
    root = tmp_path_factory.mktemp("models")
    return {
        "single": saved_model(root / "single", tiny_backbones),
        "multi": saved_model(root / "multi", tiny_backbones, "multi_label_classification"),
        "ensemble": saved_model(root / "ensemble", tiny_backbones, members=3),
    }


@pytest.fixture(scope="module")
def backbone_args(tiny_backbones) -> list[str]:
    return [arg for spec in tiny_backbones for arg in ("--backbone-path", f"{spec['name']}={spec['model']}")]


def pipeline_answers(folder, tiny_backbones, texts, **parameters):
    """The pipeline's answers for the texts it can label, in one list; None for the others."""
    from llm_fusion_fec.inference.loading import load_model

    paths = {spec["name"]: spec["model"] for spec in tiny_backbones}
    pipe = FECPipeline(model=load_model(folder), backbone_paths=paths, device="cpu")
    good = [text for text in texts if isinstance(text, str) and text.strip()]
    answers = iter(pipe(good, batch_size=3, **parameters))
    return [next(answers) if isinstance(text, str) and text.strip() else None for text in texts]


def predict(model, source, output, backbone_args, *extra):
    args = ["--model", str(model), "--input", str(source), "--output", str(output), "--batch-size", "3"]
    return predict_command.main([*args, *backbone_args, *extra])


def write_csv(path, texts):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", "text"])
        writer.writerows(enumerate(texts))
    return path


@pytest.mark.parametrize(
    ("kind", "extra", "parameters"),
    [("single", [], {}), ("multi", ["--threshold", "0.45"], {"threshold": 0.45}), ("ensemble", [], {})],
)
def test_chunks_give_the_pipelines_answers(
    models, tiny_backbones, backbone_args, tmp_path, capsys, kind, extra, parameters
):
    texts = [*TEXTS[:7], "", *TEXTS[7:], "   "]
    source = write_csv(tmp_path / "in.csv", texts)
    output = tmp_path / "out.jsonl"
    assert predict(models[kind], source, output, backbone_args, "--chunk-size", "4", *extra) == 1
    err = capsys.readouterr().err
    assert f"{source}:9: the text is empty" in err and "2 of 22 rows could not be labelled (lines 9, 23)" in err
    records = [json.loads(line) for line in output.read_text(encoding="utf-8").splitlines()]
    assert [record["text"] for record in records] == texts
    column = "labels" if kind == "multi" else "label"
    for record, expected in zip(records, pipeline_answers(models[kind], tiny_backbones, texts, **parameters)):
        if expected is None:
            assert record[column] == "" and record[column.replace("label", "score")] is None
        elif kind == "multi":
            assert record["labels"] == [a["label"] for a in expected]
            assert record["scores"] == pytest.approx([a["score"] for a in expected], abs=1e-6)
        else:
            assert record["label"] == expected["label"] and record["score"] == pytest.approx(expected["score"], 1e-6)
    assert not streaming.record_path(output).exists() and not streaming.parts_folder(output).exists()


def test_the_report_names_the_first_20_bad_lines_and_counts_all(models, backbone_args, tmp_path, capsys):
    source = tmp_path / "in.txt"
    source.write_text("\n".join(["i am happy"] + [""] * 25 + ["i am sad"]) + "\n", encoding="utf-8")
    assert predict(models["single"], source, tmp_path / "o.csv", backbone_args, "--chunk-size", "5") == 1
    err = capsys.readouterr().err
    lines = ", ".join(str(line) for line in range(2, 22))
    assert f"25 of 27 rows could not be labelled (lines {lines}, ...)" in err
    assert err.count(": the text is empty") == 20


def test_parquet_in_and_out(models, tiny_backbones, backbone_args, tmp_path):
    texts = [*TEXTS[:9], None, *TEXTS[9:]]
    table = pa.table({"id": pa.array(range(len(texts)), pa.int32()), "text": texts, "label": ["x"] * len(texts)})
    pq.write_table(table, tmp_path / "in.parquet", row_group_size=7)  # row groups unlike the chunks
    assert (
        predict(
            models["single"], tmp_path / "in.parquet", tmp_path / "out.parquet", backbone_args, "--chunk-size", "6"
        )
        == 1
    )
    labelled = pq.ParquetFile(tmp_path / "out.parquet")
    assert labelled.metadata.num_row_groups == 4  # one a chunk
    result = labelled.read()
    assert result.schema.field("id").type == pa.int32()  # the input's columns as they were
    assert result.column_names == ["id", "text", "label", "predicted_label", "predicted_score"]
    expected = pipeline_answers(models["single"], tiny_backbones, texts)
    assert result.column("predicted_label").to_pylist() == [a["label"] if a else "" for a in expected]
    assert result.column("predicted_score").to_pylist() == pytest.approx(
        [a["score"] if a else None for a in expected], abs=1e-6
    )


def test_a_datasets_folder_with_a_split(models, tiny_backbones, backbone_args, tmp_path):
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "corpus"
    DatasetDict(
        {"train": Dataset.from_dict({"text": TEXTS[:3]}), "test": Dataset.from_dict({"text": TEXTS})}
    ).save_to_disk(folder)
    args = ["--model", str(models["single"]), "--input", str(folder), "--chunk-size", "8", *backbone_args]
    assert predict_command.main(args) == 2  # two splits, none named
    assert predict_command.main([*args, "--split", "test", "--top-k", "2"]) == 0
    result = pq.read_table(tmp_path / "corpus.test.predictions.parquet")
    expected = pipeline_answers(models["single"], tiny_backbones, TEXTS, top_k=2)
    assert result.column("labels").to_pylist() == [[a["label"] for a in answer] for answer in expected]


def test_a_datasets_folder_without_split_is_named(models, backbone_args, tmp_path, capsys):
    from datasets import Dataset, DatasetDict

    folder = tmp_path / "corpus"
    DatasetDict(
        {"train": Dataset.from_dict({"text": ["a"]}), "test": Dataset.from_dict({"text": ["b"]})}
    ).save_to_disk(folder)
    assert predict_command.main(["--model", str(models["single"]), "--input", str(folder), *backbone_args]) == 2
    assert (
        f"{folder} holds the splits ['train', 'test']; no --split: name one with --split." in capsys.readouterr().err
    )


# ---- resuming ----


def interrupted(monkeypatch, chunks: int):
    """Make the run stop (as Ctrl-C stops it) once `chunks` chunks are labelled."""
    labelled = []
    label_chunk = streaming.label_chunk

    def stop_after(*args, **kwargs):
        if len(labelled) == chunks:
            raise KeyboardInterrupt
        labelled.append(1)
        return label_chunk(*args, **kwargs)

    monkeypatch.setattr(streaming, "label_chunk", stop_after)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_a_stopped_run_goes_on_to_the_same_bytes(models, backbone_args, tmp_path, monkeypatch, suffix):
    source = write_csv(tmp_path / "in.csv", TEXTS)
    whole, resumed = tmp_path / f"whole{suffix}", tmp_path / f"resumed{suffix}"
    assert predict(models["single"], source, whole, backbone_args, "--chunk-size", "3") == 0
    with monkeypatch.context() as patch:
        interrupted(patch, 3)
        with pytest.raises(KeyboardInterrupt):
            predict(models["single"], source, resumed, backbone_args, "--chunk-size", "3")
    record = json.loads(streaming.record_path(resumed).read_text())
    assert record["chunks_done"] == 3 and record["rows_done"] == 9
    assert predict(models["single"], source, resumed, backbone_args, "--chunk-size", "3") == 0
    assert resumed.read_bytes() == whole.read_bytes()
    assert not streaming.record_path(resumed).exists()


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_a_chunk_written_but_not_recorded_is_written_once(models, backbone_args, tmp_path, monkeypatch, suffix):
    """Killed after a chunk reached the output (or its part file) and before its record: the rerun cuts it off (or
    takes the part) and writes it once."""
    source = write_csv(tmp_path / "in.csv", TEXTS)
    whole, resumed = tmp_path / f"whole{suffix}", tmp_path / f"resumed{suffix}"
    assert predict(models["single"], source, whole, backbone_args, "--chunk-size", "3") == 0
    saves, save = [], streaming.ProgressRecord.save

    def stop_at_the_fourth_save(record, path):
        saves.append(record.chunks_done)
        if len(saves) == 4:  # the new record, the header (CSV, JSONL only), then one a chunk
            raise KeyboardInterrupt
        save(record, path)

    with monkeypatch.context() as patch:
        patch.setattr(streaming.ProgressRecord, "save", stop_at_the_fourth_save)
        with pytest.raises(KeyboardInterrupt):
            predict(models["single"], source, resumed, backbone_args, "--chunk-size", "3")
    written = json.loads(streaming.record_path(resumed).read_text())["chunks_done"]
    assert written == saves[-1] - 1  # one chunk more is in the output or its part file than the record says
    if suffix == ".jsonl":
        assert len(resumed.read_text().splitlines()) == 3 * (written + 1)
    else:
        assert streaming.Parts(streaming.parts_folder(resumed), True).done(written)
    assert predict(models["single"], source, resumed, backbone_args, "--chunk-size", "3") == 0
    assert resumed.read_bytes() == whole.read_bytes()


def test_a_changed_input_model_or_setting_is_refused(models, backbone_args, tmp_path, monkeypatch, capsys):
    source = write_csv(tmp_path / "in.csv", TEXTS)
    output = tmp_path / "out.csv"
    with monkeypatch.context() as patch:
        interrupted(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            predict(models["single"], source, output, backbone_args, "--chunk-size", "3")
    capsys.readouterr()
    partial = output.read_bytes()
    write_csv(source, [*TEXTS[:-1], "another text"])
    assert predict(models["single"], source, output, backbone_args, "--chunk-size", "3") == 2
    assert capsys.readouterr().err == (
        f"error: {output} was written from another input: {source} has changed since (its size); pass --overwrite to "
        "start again.\n"
    )
    write_csv(source, TEXTS)
    assert predict(models["ensemble"], source, output, backbone_args, "--chunk-size", "3") == 2
    err = capsys.readouterr().err
    assert f"error: {output} was written by another model ({models['single']}, digest" in err
    assert err.count("\n") == 1 and err.endswith("pass --overwrite to start again.\n")
    assert predict(models["single"], source, output, backbone_args, "--chunk-size", "4") == 2
    assert f"{output} was written with --chunk-size 3, this run is with --chunk-size 4; pass --overwrite" in (
        capsys.readouterr().err
    )
    assert predict(models["single"], source, output, backbone_args, "--chunk-size", "3", "--top-k", "2") == 2
    assert f"{output} was written without --top-k, this run is with --top-k 2; pass" in capsys.readouterr().err
    assert output.read_bytes() == partial  # nothing was written by the refused runs
    assert predict(models["ensemble"], source, output, backbone_args, "--chunk-size", "4", "--overwrite") == 0
    assert len(output.read_text().splitlines()) == len(TEXTS) + 1


def test_kill_9_at_a_random_chunk_then_rerun(models, backbone_args, tmp_path):
    """The command killed (SIGKILL) in a fresh process while it writes, then run again to the end."""
    source = write_csv(tmp_path / "in.csv", TEXTS)
    whole, resumed = tmp_path / "whole.jsonl", tmp_path / "resumed.jsonl"
    assert predict(models["single"], source, whole, backbone_args, "--chunk-size", "2") == 0
    args = [
        "--model",
        models["single"],
        "--input",
        source,
        "--output",
        resumed,
        "--chunk-size",
        "2",
        "--batch-size",
        "3",
    ]
    command = [sys.executable, "-m", "llm_fusion_fec.commands.fec", "predict", *map(str, args), *backbone_args]
    # For tests only: a pause after a chunk is appended and before its record is written, where the kill lands.
    env = {**os.environ, "PYTHONPATH": str(REPO), streaming.CHUNK_DELAY_VARIABLE: "0.3"}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    chunks, record = random.Random().randint(1, 7), streaming.record_path(resumed)
    deadline = time.monotonic() + 600  # a fresh process on a loaded machine can take minutes to write its chunks
    while time.monotonic() < deadline and process.poll() is None:
        if record.exists() and json.loads(record.read_text() or "{}").get("chunks_done", 0) >= chunks:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert process.returncode == -signal.SIGKILL, process.stderr.read().decode()[-2000:]
    assert record.exists(), f"no chunk was recorded in 600 s, where the kill was to land after chunk {chunks}"
    assert json.loads(record.read_text())["chunks_done"] < len(TEXTS) // 2, f"killed after chunk {chunks}: too late"
    assert predict(models["single"], source, resumed, backbone_args, "--chunk-size", "2") == 0
    assert resumed.read_bytes() == whole.read_bytes()


@pytest.mark.real  # slow: two fresh processes under torchrun (about 20 s here)
def test_two_processes_under_torchrun_write_what_one_writes(models, backbone_args, tmp_path):
    source = write_csv(tmp_path / "in.csv", TEXTS)
    one, two = tmp_path / "one.csv", tmp_path / "two.csv"
    assert predict(models["single"], source, one, backbone_args, "--chunk-size", "3") == 0
    args = ["--model", models["single"], "--input", source, "--output", two, "--chunk-size", "3", "--batch-size", "3"]
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable))
    command = [torchrun, "--nproc-per-node", "2", "-m", "llm_fusion_fec.commands.fec", "predict", *map(str, args)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    result = subprocess.run([*command, *backbone_args], env=env, capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert two.read_bytes() == one.read_bytes()
    assert result.stdout.count("Labelled 20 of 20 rows") == 1  # the first process reports


def test_progress_lines_in_a_log_file(models, backbone_args, tmp_path, monkeypatch, capsys):
    import llm_fusion_fec.features.progress as progress

    monkeypatch.setattr(progress, "PROGRESS_INTERVAL", 0)  # a line at every step (stderr here is no terminal)
    source = write_csv(tmp_path / "in.csv", TEXTS[:6])
    assert predict(models["single"], source, tmp_path / "out.csv", backbone_args, "--chunk-size", "4") == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("Labelling:")]
    assert lines[0].startswith("Labelling: chunk 1/2, 3/6 texts (50%), ") and "texts/s, ETA" in lines[0]
    assert lines[-1].startswith("Labelling: done in ")


# ---- a dataset on the Hub ----


class FakeHub:
    """Hub datasets as folders laid out as their repositories are (data files, a README with `configs:`), each at a
    commit: `HfApi.dataset_info` answers the commit (404 for an id it does not hold), and `datasets.load_dataset`
    reads the folder of a held id with the same streaming builder it reads a repository with, once asked for that
    commit. What `load_dataset` was asked is in `calls`."""

    def __init__(self, root, monkeypatch):
        import datasets
        import httpx
        from huggingface_hub import HfApi
        from huggingface_hub.errors import RepositoryNotFoundError

        self.root, self.commits, self.calls, self.pushes = root, {}, [], 0
        load_dataset = datasets.load_dataset

        def dataset_info(api, repo_id, **kwargs):
            if repo_id not in self.commits:
                url = f"https://huggingface.co/api/datasets/{repo_id}"
                response = httpx.Response(404, request=httpx.Request("GET", url))
                raise RepositoryNotFoundError(
                    f"404 Client Error. Repository Not Found for url: {url}.", response=response
                )
            return type("DatasetInfo", (), {"id": repo_id, "sha": self.commits[repo_id]})()

        def load(path, **kwargs):
            self.calls.append((path, kwargs))
            assert kwargs["revision"] == self.commits[path], "read at another commit than the one resolved"
            return load_dataset(str(self.root / path), **kwargs)

        monkeypatch.setattr(HfApi, "dataset_info", dataset_info)
        monkeypatch.setattr(datasets, "load_dataset", load)

    def add(self, repo_id: str, files: dict[str, pa.Table], readme: str = "") -> str:
        """A dataset `repo_id` with parquet `files` (path: table), at a new commit (returned)."""
        for name, table in files.items():
            (self.root / repo_id / name).parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(table, self.root / repo_id / name)
        if readme:
            (self.root / repo_id / "README.md").write_text(readme)
        self.pushes += 1
        self.commits[repo_id] = hashlib.sha1(f"{repo_id}@{self.pushes}".encode()).hexdigest()
        return self.commits[repo_id]


@pytest.fixture
def hub(tmp_path, monkeypatch) -> FakeHub:
    monkeypatch.chdir(tmp_path)  # where the default output of a Hub dataset goes
    return FakeHub(tmp_path / "hub", monkeypatch)


def corpus_files(texts=TEXTS) -> dict[str, pa.Table]:
    """A train split in two shards of 7 and 13 rows (neither a multiple of the chunks) and a test split."""
    ids = pa.array(range(len(texts)), pa.int32())
    table = pa.table({"id": ids, "text": texts})
    return {
        "data/train-00000-of-00002.parquet": table.slice(0, 7),
        "data/train-00001-of-00002.parquet": table.slice(7),
        "data/test-00000-of-00001.parquet": table.slice(0, 2),
    }


def test_a_hub_dataset_split_is_streamed_at_its_commit(models, tiny_backbones, backbone_args, hub, tmp_path, capsys):
    texts = [*TEXTS[:9], None, *TEXTS[9:]]
    commit = hub.add("org/corpus", corpus_files(texts))
    args = ["--model", str(models["single"]), "--input", "org/corpus", "--chunk-size", "6", *backbone_args]
    assert predict_command.main(args) == 2
    err = capsys.readouterr().err
    assert err == (
        f"error: The Hub dataset org/corpus (commit {commit[:12]}) holds the splits ['train', 'test']; no --split: "
        "name one with --split.\n"
    )
    assert predict_command.main([*args, "--split", "train"]) == 1
    assert "org/corpus: row 10: the text is NoneType (None), not a string.\n" in capsys.readouterr().err
    assert {(path, kwargs["revision"], kwargs["streaming"]) for path, kwargs in hub.calls} == {
        ("org/corpus", commit, True)
    }
    result = pq.ParquetFile(tmp_path / "corpus.train.predictions.parquet")
    assert result.metadata.num_row_groups == 4  # one a chunk: 6, 6, 6, 3 rows over shards of 7 and 14
    result = result.read()
    assert result.column("id").to_pylist() == list(range(len(texts))) and result.schema.field("id").type == pa.int32()
    expected = pipeline_answers(models["single"], tiny_backbones, texts)
    assert result.column("label").to_pylist() == [a["label"] if a else "" for a in expected]
    scores = result.column("score").to_pylist()
    assert scores[9] is None and scores[:9] + scores[10:] == pytest.approx([a["score"] for a in expected if a], 1e-6)


def test_a_hub_dataset_run_goes_on_at_its_commit_only(models, backbone_args, hub, tmp_path, monkeypatch, capsys):
    first = hub.add("org/corpus", corpus_files())
    whole, resumed = tmp_path / "whole.csv", tmp_path / "resumed.csv"
    args = ["--model", str(models["single"]), "--input", "org/corpus", "--split", "train", "--chunk-size", "3"]
    args = [*args, "--batch-size", "3", *backbone_args]
    assert predict_command.main([*args, "--output", str(whole)]) == 0
    with monkeypatch.context() as patch:
        interrupted(patch, 2)
        with pytest.raises(KeyboardInterrupt):
            predict_command.main([*args, "--output", str(resumed)])
    record = json.loads(streaming.record_path(resumed).read_text())
    assert record["input"] == {"dataset": "org/corpus", "revision": first, "config": "default", "split": "train"}
    assert record["chunks_done"] == 2
    partial = resumed.read_bytes()
    second = hub.add("org/corpus", {"data/test-00000-of-00001.parquet": pa.table({"id": [0], "text": ["new"]})})
    capsys.readouterr()
    assert predict_command.main([*args, "--output", str(resumed)]) == 2
    assert capsys.readouterr().err == (
        f"error: {resumed} was written from another input: org/corpus has changed since (its commit was "
        f"{first[:12]}, now {second[:12]}); pass --overwrite to start again.\n"
    )
    assert resumed.read_bytes() == partial
    hub.commits["org/corpus"] = first  # back at the commit it was written from (another file in the folder aside)
    assert predict_command.main([*args, "--output", str(resumed)]) == 0
    assert resumed.read_bytes() == whole.read_bytes()


CONFIGS_README = """---
configs:
- config_name: posts
  data_files:
  - split: train
    path: posts/*.parquet
- config_name: replies
  data_files:
  - split: train
    path: replies/*.parquet
---
"""


def test_a_hub_dataset_configuration(models, tiny_backbones, backbone_args, hub, tmp_path, capsys):
    posts, replies = pa.table({"body": TEXTS[:4]}), pa.table({"body": TEXTS[4:9]})
    commit = hub.add("org/forum", {"posts/0.parquet": posts, "replies/0.parquet": replies}, CONFIGS_README)
    args = ["--model", str(models["single"]), "--input", "org/forum", "--text-column", "body", *backbone_args]
    assert predict_command.main(args) == 2
    assert capsys.readouterr().err == (
        f"error: The Hub dataset org/forum (commit {commit[:12]}) holds several configurations (['posts', "
        "'replies']): name one with --config.\n"
    )
    output = tmp_path / "replies.jsonl"
    assert predict_command.main([*args, "--config", "replies", "--output", str(output)]) == 0
    assert "Labelled 5 of 5 rows of org/forum" in capsys.readouterr().out
    records = [json.loads(line) for line in output.read_text().splitlines()]
    expected = pipeline_answers(models["single"], tiny_backbones, TEXTS[4:9])
    assert [(r["body"], r["label"]) for r in records] == [(t, a["label"]) for t, a in zip(TEXTS[4:9], expected)]
    source = write_csv(tmp_path / "in.csv", TEXTS[:2])
    assert predict(models["single"], source, tmp_path / "out.csv", backbone_args, "--config", "replies") == 2
    assert (
        capsys.readouterr().err
        == f"error: --config replies is for a Hub dataset --input; {source} is a file or folder here.\n"
    )


def test_an_unknown_or_offline_hub_dataset_is_named(hub, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(streaming, "load_pipeline", lambda args: pytest.fail("the model was loaded"))
    args = ["--model", "no/such-model", "--input"]
    assert predict_command.main([*args, "org/nothing", "--split", "train"]) == 2
    assert capsys.readouterr().err == (
        "error: org/nothing is no file or folder here, nor a dataset on the Hub (none of that id, or a private one "
        "this machine's token cannot see).\n"
    )
    monkeypatch.undo()  # the Hub library itself, offline as every test is (HF_HUB_OFFLINE=1): no network
    monkeypatch.setattr(streaming, "load_pipeline", lambda args: pytest.fail("the model was loaded"))
    assert predict_command.main([*args, "org/corpus", "--split", "train"]) == 2
    assert capsys.readouterr().err == (
        "error: org/corpus is no file or folder here, and the Hub cannot be asked for it as a dataset: HF_HUB_OFFLINE "
        "is set (offline).\n"
    )
    assert predict_command.main([*args, str(tmp_path / "posts.csv")]) == 2  # a missing file is said as such
    assert capsys.readouterr().err == f"error: {tmp_path / 'posts.csv'} does not exist.\n"
