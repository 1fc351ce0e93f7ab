"""Training recipes: `paper` is the original protocol exactly; `fast` (the small preset's) trains with large
batches; the features' preset chooses, `--protocol` overrides it, and any flag given wins over the recipe."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

import llm_fusion_fec.commands.train as train_command
from llm_fusion_fec.commands.train import main
from llm_fusion_fec.features.run import extract
from llm_fusion_fec.training.protocols import MULTI_LABEL_EPOCHS, PROTOCOLS, recipe

LIMIT = 40


@pytest.fixture(scope="module")
def small_features(tmp_path_factory, tiny_backbones, data_dir) -> Path:
    """Features recorded as the small preset's (its head options and its `fast` recipe), from tiny backbones."""
    out = tmp_path_factory.mktemp("features") / "ED"
    extract("ED", data_dir=str(data_dir), preset="small", backbones=tiny_backbones, output_dir=out, limit=LIMIT)
    return out


@pytest.fixture(scope="module")
def paper_features(tmp_path_factory, tiny_backbones, data_dir) -> Path:
    out = tmp_path_factory.mktemp("features") / "ED"
    extract("ED", data_dir=str(data_dir), preset="paper", backbones=tiny_backbones, output_dir=out, limit=LIMIT)
    return out


def test_fast_batches_shrink_for_small_training_splits_only():
    assert recipe("fast", 17802)["per_device_train_batch_size"] == 512  # ED: 35 steps an epoch
    assert recipe("fast", 500)["per_device_train_batch_size"] == 16  # a quick start: 32 steps an epoch
    assert recipe("fast", None) == PROTOCOLS["fast"] and recipe("paper", 500) == {}
    assert recipe("fast", 43410, "multi_label_classification")["num_train_epochs"] == MULTI_LABEL_EPOCHS == 16
    assert recipe("fast", 43410, "single_label_classification")["num_train_epochs"] == 8
    assert recipe("paper", 43410, "multi_label_classification") == {}


def test_the_features_preset_chooses_the_recipe_and_flags_win(small_features, paper_features):
    args, training = train_command.parse_args(["--features_dir", str(small_features)])
    fast = PROTOCOLS["fast"]
    assert args.protocol == "fast" and training.per_device_train_batch_size == 2  # 40 rows: 32 steps of 2 (ceil)
    assert training.learning_rate == fast["learning_rate"] and training.num_train_epochs == fast["num_train_epochs"]
    assert training.weight_decay == fast["weight_decay"] and training.warmup_steps == fast["warmup_steps"]
    # A flag given wins over the recipe, whatever its value (here the paper's own default).
    _, training = train_command.parse_args(["--features_dir", str(small_features), "--learning_rate", "1e-4"])
    assert training.learning_rate == 1e-4 and training.per_device_train_batch_size == 2
    # --protocol paper forces the original anywhere; the paper preset's features train with it.
    for argv in (
        ["--features_dir", str(small_features), "--protocol", "paper"],
        ["--features_dir", str(paper_features)],
    ):
        args, training = train_command.parse_args(argv)
        assert args.protocol == "paper"
        assert training.per_device_train_batch_size == 10 and training.learning_rate == 1e-4
        assert training.lr_scheduler_type.value == "constant" and training.num_train_epochs == 200
        assert training.weight_decay == 0 and training.warmup_steps == 0
    args, training = train_command.parse_args(["--features_dir", str(paper_features), "--protocol", "fast"])
    assert args.protocol == "fast" and training.per_device_train_batch_size == 2


def quiet_run(features: Path, output: Path) -> list[str]:
    return [
        "--features_dir",
        str(features),
        "--output_dir",
        str(output),
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
    ]


def test_the_recipe_reaches_the_config_the_results_and_the_card(small_features, tmp_path):
    output = tmp_path / "model"
    results = main(quiet_run(small_features, output))
    assert results.protocol == "fast"
    assert json.loads((output / "config.json").read_text())["training_protocol"] == "fast"
    assert json.loads((output / "results.json").read_text())["protocol"] == "fast"
    card = (output / "README.md").read_text()
    assert "Recipe `fast`" in card and "batch size 2," in card and "cosine schedule" in card
    assert "linear warm-up over 10% of the steps" in card and "weight decay 0.01" in card


def test_fast_seeds_are_reproducible(small_features, tmp_path):
    weights = []
    for run in ("a", "b"):
        output = tmp_path / run
        main([*quiet_run(small_features, output), "--num_train_epochs", "3"])
        weights.append(load_file(output / "model.safetensors"))
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])


def test_an_unknown_protocol_is_a_usage_error(small_features, capsys):
    with pytest.raises(SystemExit) as exit:
        train_command.parse_args(["--features_dir", str(small_features), "--protocol", "quick"])
    assert exit.value.code == 2 and "invalid choice: 'quick'" in capsys.readouterr().err
