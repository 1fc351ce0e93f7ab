"""The Ray Data recipe of docs/using.md ("A Ray cluster"), run as it is written on a local Ray instance with tiny
backbones: its rows are `fec predict`'s for the same input (real tier: Ray starts a local cluster, about half a
minute on 2 cores; skipped where `ray` is not installed)."""

from __future__ import annotations

import importlib.util
import re

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

import llm_fusion_fec.commands.predict as predict_command
from helpers import CORPUS, REPO, run_program, tiny_head_config
from modeling_llm_fusion import LLMFusionForSequenceClassification
from pipeline_fec import save_for_pipeline

EMOTIONS = ["sad", "joyful", "angry", "afraid", "surprised"]


def docs_snippet(heading: str) -> str:
    """The first Python block under `heading` in docs/using.md."""
    page = (REPO / "docs" / "using.md").read_text(encoding="utf-8")
    section = page.split(f"\n{heading}\n", 1)[1]
    return re.search(r"^```python\n(.*?)^```", section, flags=re.M | re.S)[1]


def test_the_snippet_names_what_the_test_provides():
    snippet = docs_snippet("### A Ray cluster")
    assert 'read_parquet("posts.parquet")' in snippet and '"model": "outputs/llm-fusion-ed"' in snippet
    assert "map_batches(\n    Labeller," in snippet and 'write_parquet("posts-labelled")' in snippet


@pytest.mark.real
def test_the_ray_recipe_labels_as_fec_predict(tmp_path, tiny_backbones):
    if importlib.util.find_spec("ray") is None:
        pytest.skip('ray is not installed (pip install ".[ray]")')
    torch.manual_seed(0)
    config = tiny_head_config(tiny_backbones, EMOTIONS)  # local backbone folders: every actor reads them from there
    save_for_pipeline(LLMFusionForSequenceClassification(config), tmp_path / "outputs" / "llm-fusion-ed")
    texts = [f"{text} {'and more words ' * (i % 5)}".strip() for i, text in enumerate(CORPUS * 15)]  # 300
    texts[7], texts[123] = "", "   "  # cannot be labelled: an empty label and no score
    table = pa.table({"id": range(len(texts)), "text": texts, "source": ["forum"] * len(texts)})
    pq.write_table(table, tmp_path / "posts.parquet", row_group_size=100)
    snippet = tmp_path / "recipe.py"
    snippet.write_text(docs_snippet("### A Ray cluster"))
    # 3 CPUs: the snippet's 2 actors and one for Ray Data's read and write tasks (2 would leave it none).
    run_program("ray_recipe.py", snippet, tmp_path, 3, repo=True)
    model = tmp_path / "outputs" / "llm-fusion-ed"
    assert predict_command.main(["--model", str(model), "--input", str(tmp_path / "posts.parquet")]) == 1
    expected = pq.read_table(tmp_path / "posts.predictions.parquet").to_pylist()
    labelled = pq.read_table(tmp_path / "posts-labelled").sort_by("id").to_pylist()  # Ray keeps no order
    assert [row["id"] for row in labelled] == list(range(len(texts)))
    assert [{**row, "score": None} for row in labelled] == [{**row, "score": None} for row in expected]
    assert [row["score"] for row in labelled] == pytest.approx([row["score"] for row in expected], abs=1e-6)
    assert labelled[7]["label"] == "" and labelled[7]["score"] is None and labelled[0]["label"] in EMOTIONS
