"""The layer sweep (bench/sweep_layers.py): its probe, its candidates, that it finds the informative layer from train
and validation alone, and end to end from an --all-layers extraction to an extraction of the chosen layers."""

import json
import shutil

import numpy as np
import pytest
import torch

import llm_fusion_fec.commands.extract as extract_command
from bench import sweep_layers
from configuration_llm_fusion import BackboneSpec
from helpers import synthetic_features
from llm_fusion_fec.evaluation.metrics import load_metric
from llm_fusion_fec.features.metadata import load_features
from llm_fusion_fec.features.sweep import PROBE_STRENGTHS, best_probe, candidates, fit_logistic, sweep, swept_split


@pytest.mark.parametrize("c", [0.1, 1.0])
def test_multinomial_probe_matches_sklearn(c):
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6)).astype(np.float32)
    labels = (x @ rng.standard_normal((6, 4)) + rng.standard_normal((300, 4))).argmax(axis=1)
    linear = fit_logistic(torch.from_numpy(x), torch.from_numpy(labels), c)
    expected = LogisticRegression(C=c, tol=1e-8, max_iter=10_000).fit(x, labels)
    np.testing.assert_allclose(linear.weight.numpy(), expected.coef_, atol=2e-3)
    probabilities = linear(torch.from_numpy(x)).softmax(-1).numpy()
    np.testing.assert_allclose(probabilities, expected.predict_proba(x), atol=1e-3)


def test_the_probe_keeps_the_strength_that_scores_best_on_validation():
    rng = np.random.default_rng(0)

    def split(rows):  # 3 informative columns among 400: a strong L2 penalty drowns them
        labels = rng.integers(0, 3, rows)
        x = rng.standard_normal((rows, 400)).astype(np.float32)
        x[:, :3] += 2.0 * np.eye(3, dtype=np.float32)[labels]
        return torch.from_numpy(x), labels

    (x_train, y_train), (x_val, y_val) = split(60), split(300)
    metric, single = load_metric("single_label_classification"), "single_label_classification"
    alone = {c: best_probe(x_train, y_train, x_val, y_val, single, [c], metric) for c in (1e-3, 0.1)}
    assert [probe.c for probe in alone.values()] == [1e-3, 0.1]
    assert alone[0.1].score > alone[1e-3].score + 0.03  # the strengths score apart
    first, second = (
        best_probe(x_train, y_train, x_val, y_val, single, cs, metric) for cs in ([1e-3, 0.1], [0.1, 1e-3])
    )
    assert (first.c, first.score) == (second.c, second.score)  # the order given is moot
    assert first.c == 0.1 and first.score == pytest.approx(alone[0.1].score, abs=0.01)
    torch.testing.assert_close(first.linear.weight, second.linear.weight)
    # the fit at 0.1 starts from the one at 1e-3, and ends at the minimum a fit from scratch reaches
    torch.testing.assert_close(first.linear.weight, alone[0.1].linear.weight, atol=2e-3, rtol=0)


@pytest.mark.parametrize("c", [0.01, 1.0])
def test_a_warm_started_probe_reaches_the_same_minimum(c):
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.standard_normal((400, 20)).astype(np.float32))
    labels = torch.from_numpy((x.numpy() @ rng.standard_normal((20, 5))).argmax(axis=1))
    cold = fit_logistic(x, labels, c)
    warm = fit_logistic(x, labels, c, start=fit_logistic(x, labels, c / 10))
    torch.testing.assert_close(warm.weight, cold.weight, atol=2e-3, rtol=0)
    torch.testing.assert_close(warm.bias, cold.bias, atol=2e-3, rtol=0)


def test_candidates_are_single_layers_then_windows_of_consecutive_ones():
    assert candidates([-1, -2, -3, -4], 3) == [[-1], [-2], [-3], [-4], [-1, -2, -3], [-2, -3, -4]]
    assert candidates([0, 1, 2, 5, 6], 2) == [[6], [5], [2], [1], [0], [6, 5], [2, 1], [1, 0]]  # no 5..2 window
    assert candidates([-1, -2], 1) == [[-1], [-2]]
    with pytest.raises(ValueError, match=r"mix negative and non-negative hidden-state indices"):
        candidates([0, -1], 2)
    with pytest.raises(ValueError, match=r"only \('train', 'validation'\), not 'test'"):
        swept_split("anywhere", "test")


@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification"])
def test_sweep_finds_the_informative_layer(tmp_path, problem_type):
    folder = synthetic_features(tmp_path, problem_type, informative=-3)
    result = sweep(folder, window=2, device="cpu")
    assert result.metric == ("weighted_f1" if problem_type.startswith("single") else "macro_f1")
    assert len(result.scores) == 4 + 3
    singles = [row for row in result.scores if len(row.layers) == 1]
    assert singles[0].layers == [-3] and singles[0].score > singles[1].score + 0.2
    assert -3 in result.scores[0].layers
    assert result.best_spec["layers"] == result.scores[0].layers
    assert result.best_spec["num_layers"] == len(result.scores[0].layers)
    concat = sweep(folder, window=2, combine="concat", device="cpu")
    assert -3 in concat.scores[0].layers


def test_several_poolings_are_ranked_together_and_the_winner_keeps_its_pooling(tmp_path, capsys):
    mean = synthetic_features(tmp_path / "mean", "single_label_classification", informative=-3)
    prompted = synthetic_features(
        tmp_path / "prompted",
        "single_label_classification",
        informative=-2,
        strength=4.0,
        pooling="layer_last_token",
        template="Say: {text}",
    )
    result = sweep_layers.main([str(mean), str(prompted), "--window", "2", "--device", "cpu"])
    assert len(result.scores) == 2 * (4 + 3)
    assert {row.features for row in result.scores} == {str(mean), str(prompted)}
    best = result.scores[0]
    assert best.features == str(prompted) and -2 in best.layers
    assert (result.best_spec["pooling"], result.best_spec["template"]) == ("layer_last_token", "Say: {text}")
    assert json.loads((mean / "best-llama.json").read_text()) == result.best_spec  # in the first folder by default
    out = capsys.readouterr().out
    assert "layer_last_token, prompted" in out and "Best: layers" in out and "(layer_last_token, prompted)" in out
    assert "at the best of C = 0.0001, 0.001, 0.01, 0.1, 1;" in out
    assert {row.c for row in result.scores} <= set(PROBE_STRENGTHS)
    mean_rows = [row for row in result.scores if row.features == str(mean)]
    assert mean_rows[0].layers == [-3]  # each folder's own ranking is kept inside the joint one
    # The second view: the other folder's best, under a name of its own, for --add-backbone-spec.
    second = tmp_path / "second.json"
    again = sweep_layers.main(
        [str(mean), str(prompted), "--window", "2", "--device", "cpu", "--second-view", str(second)]
    )
    assert json.loads(second.read_text()) == again.second_view == result.second_view
    assert (again.second_view["name"], again.second_view["layers"]) == ("llama_view2", [-3])
    assert (again.second_view["pooling"], again.second_view["template"]) == ("layer_mean", None)
    assert f"--add-backbone-spec {second}" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        sweep_layers.main([str(mean), "--second-view", str(second)])
    assert "--second-view needs two or more features folders" in capsys.readouterr().err

    # Two prompts pool alike: each row names its folder.
    reworded = synthetic_features(
        tmp_path / "reworded",
        "single_label_classification",
        informative=-1,
        strength=6.0,
        pooling="layer_last_token",
        template="Feel: {text}",
    )
    sweep_layers.main([str(prompted), str(reworded), "--window", "2", "--device", "cpu", "--second-view", str(second)])
    out = capsys.readouterr().out
    assert "layer_last_token, prompted, prompted " in out and "layer_last_token, prompted, reworded " in out
    assert "(layer_last_token, prompted, reworded) ->" in out
    assert "Second view: layers [-2] (layer_last_token, prompted, prompted) ->" in out

    other = synthetic_features(tmp_path / "other", "single_label_classification", informative=-3, rows=200)
    with pytest.raises(ValueError, match=r"other holds other train or validation rows than .*mean"):
        sweep([mean, other], window=2, device="cpu")


def test_an_encoder_is_swept_across_its_poolings(tmp_path, capsys):
    pooler = synthetic_features(tmp_path / "pooler", "single_label_classification", -1, bert=("pooler", 0.3))
    mean = synthetic_features(tmp_path / "mean", "single_label_classification", -1, bert=("mean", 3.0))
    result = sweep_layers.main([str(pooler), str(mean), "--backbone", "bert", "--device", "cpu", "--c", "0.5"])
    assert [row.c for row in result.scores] == [0.5, 0.5]
    assert [(row.features, row.layers) for row in result.scores] == [(str(mean), []), (str(pooler), [])]
    assert result.scores[0].score > result.scores[1].score + 0.2
    assert result.best_spec == BackboneSpec.from_dict(
        {"name": "bert", "model": "e", "pooling": "mean", "hidden_size": 8}
    )
    out = capsys.readouterr().out
    assert "Pooling of bert" in out and "(its one vector)" in out and "Best: pooling mean" in out
    assert ", C = 0.5." in out
    with pytest.raises(ValueError, match=r"No backbone 'roberta' in .*; there are \['llama', 'bert'\]"):
        sweep(pooler, backbone="roberta", device="cpu")


def test_all_layers_sweep_then_extract_the_winner(tiny_backbones, data_dir, tmp_path, capsys):
    common = [
        "--dataset",
        "ED",
        "--data-dir",
        str(data_dir),
        "--preset",
        "small-mean",
        "--limit",
        "60",
        "--backbone",
        *(f"{spec['name']}={spec['model']}" for spec in tiny_backbones),
    ]
    everything = extract_command.main([*common, "--all-layers", "--output-dir", str(tmp_path / "all")])
    llama = everything.metadata.backbones[0]
    assert llama["layers"] == [-1, -2, -3, -4, -5, -6, -7] and llama["num_layers"] == 7  # 6 layers + embeddings
    all_layers = load_features(tmp_path / "all")[0]["train"].with_format("numpy")[:]["llama"]
    assert all_layers.shape == (60, 7, 32)

    shutil.rmtree(tmp_path / "all" / "test")  # the sweep must not need it: it never reads the test split
    spec_file = tmp_path / "llama-layers.json"
    result = sweep_layers.main(
        [
            str(tmp_path / "all"),
            "--window",
            "3",
            "--output",
            str(spec_file),
            "--results",
            str(tmp_path / "scores.json"),
            "--device",
            "cpu",
        ]
    )
    printed = capsys.readouterr().out.splitlines()
    header = next(i for i, line in enumerate(printed) if line.split()[:4] == ["rank", "k", "weighted_f1", "(%)"])
    ranked = printed[header + 1 : header + 13]
    assert [line.split()[0] for line in ranked] == [str(rank) for rank in range(1, 13)]
    assert printed[header + 13] == f"Best: layers {result.scores[0].layers} -> {spec_file}"
    assert len(result.scores) == 7 + 5 == len(json.loads((tmp_path / "scores.json").read_text())["scores"])
    chosen = json.loads(spec_file.read_text())
    assert chosen["layers"] == result.scores[0].layers and chosen["model"] == tiny_backbones[0]["model"]

    again = extract_command.main([*common, "--backbone-spec", str(spec_file), "--output-dir", str(tmp_path / "one")])
    assert again.metadata.backbones[0] == chosen
    features = load_features(tmp_path / "one")[0]["train"].with_format("numpy")[:]["llama"]
    # The chosen layers' features are the all-layers features at those hidden states: one feature code path.
    positions = [llama["layers"].index(i) for i in chosen["layers"]]
    np.testing.assert_array_equal(features, all_layers[:, positions])

    # With the all-layers folder's cache, the chosen layers are cut from it: no model is run, the same numbers.
    cut = extract_command.main(
        [
            *common,
            "--backbone-spec",
            str(spec_file),
            "--output-dir",
            str(tmp_path / "cut"),
            "--cache-dir",
            str(tmp_path / "all" / "cache"),
        ]
    )
    assert cut.computed == [] and cut.metadata.backbones == again.metadata.backbones
    for split in ("train", "test"):
        cut_split, computed_split = (
            load_features(tmp_path / f)[0][split].with_format("numpy")[:] for f in ("cut", "one")
        )
        np.testing.assert_array_equal(cut_split["llama"], computed_split["llama"])

    # A second view of the LLM under a name of its own is cut from the same all-layers column (keys ignore names).
    (tmp_path / "second.json").write_text(json.dumps({**chosen, "name": "llama_window"}))
    both = extract_command.main(
        [
            *common,
            "--backbone-spec",
            str(spec_file),
            "--add-backbone-spec",
            str(tmp_path / "second.json"),
            "--output-dir",
            str(tmp_path / "both"),
            "--cache-dir",
            str(tmp_path / "all" / "cache"),
            "--backbone-path",
            f"llama_window={tiny_backbones[0]['model']}",
        ]
    )
    assert both.computed == [] and [spec["name"] for spec in both.metadata.backbones][-1] == "llama_window"
    second = load_features(tmp_path / "both")[0]["train"].with_format("numpy")[:]["llama_window"]
    np.testing.assert_array_equal(second, features)

    # An all-layers shard that does not match its record is not cut from: that shard is computed.
    train_cache = tmp_path / "all" / "cache" / "train"
    whole = train_cache / f"llama-{everything.metadata.column_keys['llama']['train']}" / "shard-00000.arrow"
    whole.write_bytes(whole.read_bytes()[:-8] + bytes(8))
    shutil.rmtree(train_cache / f"llama-{cut.metadata.column_keys['llama']['train']}")  # the shard cut from it
    cache = ["--cache-dir", str(tmp_path / "all" / "cache")]
    again_cut = extract_command.main(
        [*common, "--backbone-spec", str(spec_file), "--output-dir", str(tmp_path / "cut-again"), *cache]
    )
    assert again_cut.computed == ["llama"] and again_cut.throughput["llama"]["texts"] == 60  # the train shard alone
    recomputed = load_features(tmp_path / "cut-again")[0]["train"].with_format("numpy")[:]["llama"]
    np.testing.assert_array_equal(recomputed, features)
