"""Shared fixtures: tiny random backbones built in code (no downloads) and paths to the real data and models."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

# Before anything imports huggingface_hub, which reads HF_HUB_OFFLINE once, when it is imported.
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest

from helpers import DATA_DIR, SHARED, build_tiny_backbones


@pytest.fixture(scope="session", autouse=True)
def float32_auto_dtype():
    """`--dtype auto` resolves to float32 in this process, on every CPU: on one with AMX it would be bfloat16, and the
    tests that compare extracted features with a float32 computation would pass or fail with the machine.
    tests/test_backends.py covers the AMX choice (patching `cpu_has_amx` over this, or calling the real one)."""
    import llm_fusion_fec.features.extraction as extraction

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(extraction, "cpu_has_amx", lambda: False)
        yield


@pytest.fixture(scope="session")
def tiny_backbones(tmp_path_factory) -> list[dict]:
    """Backbone descriptions for `LLMFusionConfig(backbones=...)`, pointing at tiny random local models."""
    return build_tiny_backbones(tmp_path_factory.mktemp("tiny_backbones"))


@pytest.fixture(scope="session")
def data_dir() -> Path:
    if not (DATA_DIR / "ED" / "train.csv").exists():
        pytest.skip(f"real data not found at {DATA_DIR}")
    return DATA_DIR


@pytest.fixture(scope="session")
def small_models() -> dict[str, str]:
    """The real small trio (SmolLM2-135M-Instruct, all-MiniLM-L6-v2, all-mpnet-base-v2) as local folders."""
    prepare = SHARED / "models" / "prepare.py"
    if not prepare.exists():
        pytest.skip(f"{prepare} not found")
    result = subprocess.run([sys.executable, str(prepare)], capture_output=True, text=True)
    if result.returncode:
        pytest.skip(f"prepare.py failed: {result.stderr[-500:]}")
    folders = dict(line.split("=", 1) for line in result.stdout.split() if "=" in line)
    return {
        "llama": folders["smollm2-135m-instruct"],
        "bert": folders["all-minilm-l6-v2"],
        "roberta": folders["all-mpnet-base-v2"],
    }
