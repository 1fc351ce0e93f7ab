"""Progress where stderr is no terminal (llm_fusion_fec.features.progress): a log file gets a line every
`PROGRESS_INTERVAL` seconds from extraction and from `--choose`'s sweep, a terminal tqdm's bar."""

from __future__ import annotations

import re
import sys
from types import SimpleNamespace

import pytest

import llm_fusion_fec.features.choice as choice
import llm_fusion_fec.features.progress as progress
from helpers import write_csv_dataset
from llm_fusion_fec.features.run import extract

SPEED_AND_ETA = r", \d+\.\d texts/s, ETA \d+:\d\d:\d\d"


@pytest.fixture
def every_step(monkeypatch):
    monkeypatch.setattr(progress, "PROGRESS_INTERVAL", 0)


def test_extraction_writes_progress_lines_into_a_log(tiny_backbones, tmp_path, capsys, every_step):
    folder = write_csv_dataset(tmp_path / "data", [(f"text number {i} of a day", i % 3) for i in range(10)])
    assert not sys.stderr.isatty()  # as in `fec extract ... 2> log`
    extract(str(folder), backbones=tiny_backbones[1:2], output_dir=str(tmp_path / "out"), shard_size=4)
    lines = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r"bert: train shard 1/3, 4/30 texts \(13%\)" + SPEED_AND_ETA, lines[0]), lines[0]
    assert any(re.fullmatch(r"bert: validation shard 3/3, 20/30 texts \(67%\)" + SPEED_AND_ETA, x) for x in lines)
    assert re.fullmatch(r"bert: done in \d+:\d\d:\d\d, 30/30 texts \(100%\)" + SPEED_AND_ETA, lines[-1]), lines[-1]


def test_no_line_before_the_interval_has_passed(tiny_backbones, tmp_path, capsys):
    folder = write_csv_dataset(tmp_path / "data", [(f"text number {i}", i % 3) for i in range(4)])
    assert progress.PROGRESS_INTERVAL == 10
    extract(str(folder), backbones=tiny_backbones[1:2], output_dir=str(tmp_path / "out"))
    assert "texts/s" not in capsys.readouterr().err  # a short run says nothing: the command's report follows


def test_the_sweep_of_choose_writes_progress_lines(tmp_path, capsys, monkeypatch, every_step):
    views = [{"name": name, "pooling": "layer_mean"} for name in ("llama_mean", "llama_eol_text", "llama_other")]
    monkeypatch.setattr(choice, "folder_scores", lambda *args: [choice.LayerScore([-1, -2], 0.5, c=0.01)])
    candidates = SimpleNamespace(metadata=SimpleNamespace(column_keys={}), output_dir=tmp_path)
    choice.swept_scores(candidates, views, "cpu")
    lines = capsys.readouterr().err.splitlines()
    start, speed = "--choose: probing the candidates: ", r", \d+\.\d candidates/s, ETA \d+:\d\d:\d\d"
    assert re.fullmatch(start + r"llama_mean swept, 1/3 candidates \(33%\)" + speed, lines[0])
    assert re.fullmatch(start + r"done in [\d:]+, 3/3 candidates \(100%\)" + speed, lines[-1])


def test_a_terminal_gets_the_bar(monkeypatch):
    from tqdm.auto import tqdm

    monkeypatch.setattr(sys, "stderr", SimpleNamespace(isatty=lambda: True, write=lambda text: None, flush=print))
    with progress.progress_bar(10, "bert") as bar:
        assert isinstance(bar, tqdm) and not bar.disable
    monkeypatch.setattr(sys, "stderr", SimpleNamespace(isatty=lambda: False))
    assert isinstance(progress.progress_bar(10, "bert"), progress.ProgressLines)
