"""The extraction cache's files written by two runs at once (llm_fusion_fec.features.cache): each writer its own
temporary name, so that neither dies and what is left is whole."""

from __future__ import annotations

import json
import os
import threading

import numpy as np
import pytest
from datasets import Dataset, List, Value

import llm_fusion_fec.features.cache as cache
from helpers import write_csv_dataset
from llm_fusion_fec.features.metadata import load_features
from llm_fusion_fec.features.run import extract
from modeling_llm_fusion import FrozenBackbone


def together(*writers):
    """Run the writers in threads at once; the errors they raised."""
    errors = []

    def run(writer):
        try:
            writer()
        except BaseException as error:  # noqa: BLE001 - the test reports whatever a writer raised
            errors.append(error)

    threads = [threading.Thread(target=run, args=(writer,)) for writer in writers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


@pytest.fixture
def moved_into_place_together(monkeypatch):
    """Every `os.replace` of two writers waits for the other's: both have written their temporary file before
    either moves it into place, the moment at which writers that share a temporary name collide."""
    barrier, replace = threading.Barrier(2, timeout=30), os.replace

    def replace_together(source, target):
        barrier.wait()
        replace(source, target)

    monkeypatch.setattr(os, "replace", replace_together)


def test_two_writers_of_one_json_file_each_write_a_whole_file(tmp_path, moved_into_place_together):
    path = tmp_path / "sweep.json"
    records = [{"writer": i, "views": list(range(1000))} for i in range(2)]
    assert together(*(lambda record=record: cache.write_json(path, record) for record in records)) == []
    assert json.loads(path.read_text()) in records
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sweep.json"]  # no temporary file left


def test_two_writers_of_one_shard_leave_a_shard_that_matches_its_record(tmp_path, moved_into_place_together):
    shard = tmp_path / "train" / "bert-key" / "shard-00000.arrow"
    values = np.arange(64, dtype=np.float16).reshape(8, 8)
    feature = List(Value("float16"), length=8)
    assert together(*(lambda: cache.write_shard(shard, "bert", values, feature) for _ in range(2))) == []
    assert cache.shard_problem(shard, 8) is None
    np.testing.assert_array_equal(np.array(Dataset.from_file(str(shard))["bert"], dtype=np.float16), values)
    assert sorted(p.name for p in shard.parent.iterdir()) == ["shard-00000.arrow", "shard-00000.json"]


def test_what_a_killed_writer_left_is_removed_and_a_running_ones_kept(tmp_path, monkeypatch):
    shard = tmp_path / "shard-00000.arrow"
    killed = tmp_path / f".shard-00000.arrow.{cache.socket.gethostname()}-999999999-0a1b.tmp"
    running = cache.temporary_name(shard)  # this process's own
    elsewhere = tmp_path / ".shard-00000.arrow.another-host-1-0a1b.tmp"
    for left in (killed, running, elsewhere):
        left.write_text("half a shard")
    cache.remove_abandoned(shard)
    assert not killed.exists() and running.exists() and elsewhere.exists()


def test_two_extractions_into_one_folder_at_once_both_finish(tiny_backbones, tmp_path):
    folder = write_csv_dataset(tmp_path / "data", [(f"text number {i} of a day", i % 3) for i in range(12)])
    out = tmp_path / "features"
    options = {"backbones": tiny_backbones[1:2], "output_dir": str(out), "shard_size": 4}
    assert together(*(lambda: extract(str(folder), **options) for _ in range(2))) == []
    data, metadata = load_features(out)
    assert metadata.rows == {"train": 12, "validation": 12, "test": 12}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FrozenBackbone, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))
        assert extract(str(folder), **options).computed == []  # both wrote the same, whole and checksummed
    leftovers = [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []
