"""The Python API, `from llm_fusion_fec import extract, train`: what the two commands do, as the docs show it."""

from __future__ import annotations

import subprocess
import sys

import pytest

from helpers import REPO


def test_importing_the_package_imports_nothing_heavy():
    heavy = "('torch', 'transformers', 'datasets')"
    code = f"import sys, llm_fusion_fec; print(sorted(m for m in {heavy} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_extract_then_train_as_the_commands_do(tiny_backbones, data_dir, tmp_path):
    from llm_fusion_fec import ExtractArguments, extract, train

    paths = {spec["name"]: spec["model"] for spec in tiny_backbones}
    specs = [{**spec, "model": f"fec-tests/tiny-{spec['name']}"} for spec in tiny_backbones]
    features = tmp_path / "features"
    result = extract(
        "ED", data_dir=str(data_dir), backbones=specs, backbone_paths=paths, output_dir=features, limit=30
    )
    assert result.metadata.rows == {"train": 30, "validation": 30, "test": 30} and result.output_dir == features
    # The arguments dataclass of `fec extract` works too, and a second call loads no model.
    again = extract(
        ExtractArguments(dataset="ED", data_dir=str(data_dir), output_dir=str(features), limit=30),
        backbones=specs,
        backbone_paths=paths,
    )
    assert again.computed == []

    results = train(
        dataset="ED",
        features_dir=str(features),
        output_dir=str(tmp_path / "model"),
        seeds=2,
        ensemble=True,
        max_steps=6,
        report_to="none",
        disable_tqdm=True,
    )
    assert [run.seed for run in results.runs] == [42, 43] and results.ensemble.members == [42, 43]
    assert 0 <= results.ensemble.test["accuracy"] <= 1 and (tmp_path / "model" / "model.safetensors").is_file()


def test_unknown_options_are_named():
    from llm_fusion_fec import extract, train

    with pytest.raises(ValueError, match=r"Unknown extraction option batchsize"):
        extract("ED", batchsize=4)
    with pytest.raises(ValueError, match=r"Unknown training option learningrate"):
        train(learningrate=1e-3)
