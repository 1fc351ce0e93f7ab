"""`--choose`: the LLM's views chosen on validation (llm_fusion_fec.features.choice), with the tiny backbones."""

import json

import numpy as np
import pytest

import llm_fusion_fec.features.choice as choice
from llm_fusion_fec.commands.extract import main as extract_main
from llm_fusion_fec.commands.train import main as train_main
from llm_fusion_fec.features.metadata import METADATA_FILE, load_features, read_metadata
from llm_fusion_fec.features.run import extract
from llm_fusion_fec.features.sweep import SWEEP_SPLITS
from modeling_llm_fusion import FrozenBackbone

WORDS = {0: "tears lost alone", 1: "won party sunshine", 2: "furious unfair shouting"}
MARK = "TESTROW"


def write_data(folder, rows=30):
    """Train, valid and test CSVs of three labels; every test text holds `MARK`."""
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        lines = ["text,label"]
        for i in range(rows):
            label = i % 3
            text = f"{WORDS[label]} {i}" + (f" {MARK}" if split == "test" else "")
            lines.append(f'"{text}",{label}')
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n")
    (folder / "label2idx.txt").write_text("sad 0\nhappy 1\nangry 2\n")
    return folder


@pytest.fixture(scope="module")
def chosen(tiny_backbones, tmp_path_factory):
    """One `--choose` run with the tiny trio, whose backbones refuse a test text until the choice is made."""
    root = tmp_path_factory.mktemp("choice")
    data = write_data(root / "data")
    state = {"chosen": False, "test_texts_before": 0}
    original_views, original_record = FrozenBackbone.extract_views, choice.choice_record

    def views(self, texts, *args, **kwargs):
        if not state["chosen"] and any(MARK in text for text in texts):
            raise AssertionError("a test text was read before the choice was made")
        return original_views(self, texts, *args, **kwargs)

    def record(*args, **kwargs):
        state["chosen"] = True
        return original_record(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(FrozenBackbone, "extract_views", views)
        patch.setattr(choice, "choice_record", record)
        result = extract(str(data), backbones=tiny_backbones, choose=True, output_dir=str(root / "out"), shard_size=16)
    assert state["chosen"]
    return result, root


def test_the_choice_never_reads_the_test_split(chosen):
    result, root = chosen
    candidates = root / "out" / "cache" / "choice-candidates"
    assert json.loads((candidates / METADATA_FILE).read_text())["rows"] == {"train": 30, "validation": 30}
    assert not (candidates / "test").exists()
    # The test split's columns in the cache are the chosen views' and the encoders', no candidate's.
    columns = {path.name.rsplit("-", 1)[0] for path in (root / "out" / "cache" / "test").iterdir()}
    assert columns == {"llama", "llama_window", "bert", "roberta"}
    assert result.metadata.choice["splits"] == list(SWEEP_SPLITS)


def test_the_folder_holds_the_best_token_and_the_best_window_and_the_encoders(chosen):
    result, _ = chosen
    names = [spec["name"] for spec in result.metadata.backbones]
    assert names == ["llama", "llama_window", "bert", "roberta"]
    token, window = result.metadata.backbones[:2]
    record = result.metadata.choice
    assert token["pooling"] == "layer_last_token" and len(token["layers"]) == 1
    assert window["pooling"] in ("layer_mean", "layer_text_mean") and len(window["layers"]) == choice.WINDOW
    assert record["chosen"]["llama"]["layers"] == token["layers"]
    assert record["chosen"]["llama_window"]["layers"] == window["layers"]
    assert record["chosen"]["llama"]["template"] == token["template"] in choice.PROMPTS.values()
    # The token scores at least every token candidate; the window at least every window candidate, or within the
    # margin of the best from the token's own pass.
    kinds = {"llama": choice.TOKEN_POOLINGS, "llama_window": choice.MEAN_POOLINGS}
    best = {
        name: max(c["score"] for c in record["candidates"].values() if c["pooling"] in poolings)
        for name, poolings in kinds.items()
    }
    assert record["chosen"]["llama"]["score"] == best["llama"]
    if record["chosen"]["llama_window"]["score"] < best["llama_window"]:
        assert record["chosen"]["llama_window"]["template"] == token["template"]
        assert record["chosen"]["llama_window"]["score"] >= best["llama_window"] - choice.SECOND_PASS_MARGIN
    assert record["second_pass_margin"] == choice.SECOND_PASS_MARGIN
    assert set(record["candidates"]) == {
        "llama_mean",
        "llama_eol_token",
        "llama_eol_text",
        "llama_feeling_token",
        "llama_feeling_text",
    }
    assert record["strengths"] == list(choice.STRENGTHS)


def test_the_window_of_the_tokens_own_pass_is_chosen_unless_another_beats_it_by_the_margin():
    views = choice.candidate_views({"name": "llama", "model": "m", "pooling": "layer_mean"}, choice.PROMPTS)

    def picked(eol_text):
        scores = [
            choice.LayerScore([-2], 0.49, "llama_feeling_token"),
            choice.LayerScore([-3], 0.48, "llama_eol_token"),
            choice.LayerScore([-14, -15, -16, -17, -18], 0.45, "llama_feeling_text"),
            choice.LayerScore([-11, -12, -13, -14, -15], eol_text, "llama_eol_text"),
            choice.LayerScore([-9, -10, -11, -12, -13], 0.44, "llama_mean"),
        ]
        token, window = choice.pick(scores, views)
        assert token.features == "llama_feeling_token"
        return window.features

    assert picked(0.4501) == "llama_feeling_text"  # as good: one LLM pass serves both views
    assert picked(0.454) == "llama_feeling_text"
    assert picked(0.46) == "llama_eol_text"  # better by more than the margin: worth a second pass


def test_the_chosen_features_are_those_of_the_chosen_views(chosen, tiny_backbones):
    result, root = chosen
    data, metadata = load_features(root / "out")
    for split in ("train", "test"):  # train cut from the candidates, test computed after the choice
        rows = data[split].with_format("numpy")[:]
        for spec in metadata.backbones[:2]:
            expected = FrozenBackbone.load(spec)(list(rows["text"])).numpy()
            np.testing.assert_allclose(rows[spec["name"]].astype(np.float32), expected, atol=2e-3, rtol=1e-2)


def test_a_rerun_reuses_everything(chosen, tiny_backbones, monkeypatch):
    result, root = chosen
    monkeypatch.setattr(choice, "folder_scores", lambda *a, **k: pytest.fail("swept again"))
    again = extract(
        str(root / "data"), backbones=tiny_backbones, choose=True, output_dir=str(root / "out"), shard_size=16
    )
    assert again.computed == [] and again.metadata.choice == result.metadata.choice


def test_the_choice_reaches_the_config_and_the_card(chosen, tmp_path):
    result, root = chosen
    output = tmp_path / "model"
    train_main(
        ["--features_dir", str(root / "out"), "--output_dir", str(output), "--num_train_epochs", "1"]
        + ["--report_to", "none", "--disable_tqdm", "true"]
    )
    assert json.loads((output / "config.json").read_text())["feature_choice"] == result.metadata.choice
    card = (output / "README.md").read_text()
    assert "### How the features were chosen" in card and "the test split played no part in it" in card
    for name, row in result.metadata.choice["candidates"].items():
        assert f"| {name} | {row['pooling']} |" in card
    token = result.metadata.choice["chosen"]["llama"]
    assert f"`llama` = {token['candidate']} at {token['layers'][0]};" in card


@pytest.mark.parametrize(
    "options, message",
    [
        ({"all_layers": True}, "--choose and --all-layers contradict each other"),
        ({"layers": ["llama=-1"]}, "--choose chooses llama's layers itself"),
        ({"choose_template": ["no slot"]}, "must hold {text} exactly once"),
    ],
)
def test_refusals(tiny_backbones, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        extract(str(write_data(tmp_path / "d")), backbones=tiny_backbones, choose=True, **options)


def test_a_preset_without_an_llm_is_refused(tiny_backbones, tmp_path):
    with pytest.raises(ValueError, match="--choose needs a layer-pooled backbone"):
        extract(str(write_data(tmp_path / "d")), backbones=tiny_backbones[1:], choose=True)


def test_the_command_prints_the_choice(tiny_backbones, tmp_path, capsys):
    data = write_data(tmp_path / "data", rows=12)
    overrides = [f"{spec['name']}={spec['model']}" for spec in tiny_backbones]
    extract_main(
        ["--dataset", str(data), "--preset", "small-mean", "--choose", "--output-dir", str(tmp_path / "out")]
        + ["--backbone", *overrides]
    )
    out = capsys.readouterr().out
    assert "Chosen on the validation split (12 rows) by weighted_f1 of a probe fitted on train (12 rows)" in out
    assert "-> llama = llama_" in out and "-> llama_window = llama_" in out
    assert [line.split()[0] for line in out.splitlines() if "; C " in line] == list(
        read_metadata(tmp_path / "out").choice["candidates"]
    )


def test_an_interrupted_sweep_resumes_with_the_next_view(tiny_backbones, tmp_path, monkeypatch):
    data = write_data(tmp_path / "data", rows=12)
    swept, original = [], choice.folder_scores

    def scores(folder, metadata, view, *args):
        if len(swept) == 2 and not resumed:
            raise KeyboardInterrupt
        swept.append(view["name"])
        return original(folder, metadata, view, *args)

    monkeypatch.setattr(choice, "folder_scores", scores)
    options = {"backbones": tiny_backbones, "choose": True, "output_dir": str(tmp_path / "out"), "shard_size": 8}
    resumed = False
    with pytest.raises(KeyboardInterrupt):
        extract(str(data), **options)
    resumed = True
    result = extract(str(data), **options)
    assert swept == ["llama_mean", "llama_eol_token", "llama_eol_text", "llama_feeling_token", "llama_feeling_text"]
    assert set(result.metadata.choice["candidates"]) == set(swept)


def test_a_sample_of_train_rows_chooses_and_every_row_is_extracted(tiny_backbones, tmp_path, capsys):
    data = write_data(tmp_path / "data", rows=30)
    out = tmp_path / "out"
    result = extract(
        str(data), backbones=tiny_backbones, choose=True, choose_train_rows=12, output_dir=str(out), shard_size=8
    )
    candidates = out / "cache" / "choice-candidates"
    assert read_metadata(candidates).rows == {"train": 12, "validation": 30}
    sampled = set(load_features(candidates)[0]["train"]["text"])
    train, metadata = load_features(out)
    assert len(sampled) == 12 and sampled < set(train["train"]["text"])
    assert metadata.rows["train"] == 30 and result.metadata.choice["rows"]["train"] == 12
    assert result.metadata.choice["train_sample_seed"] == 0
    assert "a random sample of train (seed 0)" in result.metadata.choice["probe"]
    rows = train["train"].with_format("numpy")[:]  # the chosen views computed on every train row
    for spec in metadata.backbones[:2]:
        expected = FrozenBackbone.load(spec)(list(rows["text"])).numpy()
        np.testing.assert_allclose(rows[spec["name"]].astype(np.float32), expected, atol=2e-3, rtol=1e-2)
    overrides = [f"{spec['name']}={spec['model']}" for spec in tiny_backbones]
    extract_main(
        ["--dataset", str(data), "--preset", "small-mean", "--choose", "--choose-train-rows", "12"]
        + ["--output-dir", str(tmp_path / "cli"), "--shard-size", "8", "--backbone", *overrides]
    )
    assert "a probe fitted on a random sample of train (seed 0) (12 rows)" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("rows", "given", "sampled"),
    [(3010, None, choice.TRAIN_ROWS), (30, None, None), (30, 12, 12), (30, 0, None), (30, 30, None), (30, 500, None)],
)
def test_the_probes_read_3000_train_rows_unless_told(tiny_backbones, tmp_path, monkeypatch, rows, given, sampled):
    """A sample of as many rows as train has, or more, is every row (`None`): read once, not sampled."""
    asked = []

    def candidates(*args, train_rows=None, **kwargs):
        asked.append(train_rows)
        raise KeyboardInterrupt  # what was asked is all this test needs

    monkeypatch.setattr(choice, "extract_fixed", candidates)
    with pytest.raises(KeyboardInterrupt):
        choice.choose(str(write_data(tmp_path / "d", rows)), backbones=tiny_backbones, choose_train_rows=given)
    assert choice.TRAIN_ROWS == 3000 and asked == [sampled]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"choose": True, "choose_train_rows": -1}, r"--choose-train-rows must be 0 \(every train row\) or at least"),
        ({"choose": True, "choose_train_rows": 1}, r"at least 2 \(a probe needs two classes\), got 1\.$"),
        ({"choose_train_rows": 5}, "--choose-train-rows samples the train rows that --choose probes"),
    ],
)
def test_a_bad_train_sample_is_refused(tiny_backbones, tmp_path, options, message):
    with pytest.raises(ValueError, match=message):
        extract(str(write_data(tmp_path / "d")), backbones=tiny_backbones, **options)


def refuse_model_loads(monkeypatch):
    monkeypatch.setattr(FrozenBackbone, "load_model", lambda *a, **k: pytest.fail("a model was loaded"))


def write_labels(folder, train_labels: list[int]):
    """`write_data`'s folder with a train split of these labels (validation and test keep all three)."""
    write_data(folder)
    rows = [f'"{WORDS[label]} {i}",{label}' for i, label in enumerate(train_labels)]
    (folder / "train.csv").write_text("text,label\n" + "\n".join(rows) + "\n")
    return folder


def test_train_rows_of_one_class_are_refused_before_any_extraction(tiny_backbones, tmp_path, monkeypatch):
    from llm_fusion_fec.data.datasets import load_data
    from llm_fusion_fec.features.extraction import train_sample

    refuse_model_loads(monkeypatch)
    data = write_labels(tmp_path / "one", [1] * 20)
    with pytest.raises(ValueError, match=r"^--choose: the train split of .*one has one class \(happy\): a probe"):
        extract(str(data), backbones=tiny_backbones, choose=True, choose_train_rows=0)
    data = write_labels(tmp_path / "rare", [2] + [0] * 19)
    assert set(train_sample(load_data(str(data))[0]["train"], 5)["label"]) == {0}  # the sample misses class 2
    with pytest.raises(ValueError, match=r"^--choose-train-rows 5: the 5 train rows sampled for the probes hold one "):
        extract(str(data), backbones=tiny_backbones, choose=True, choose_train_rows=5)
    assert not (tmp_path / "features").exists()


def test_an_llm_shorter_than_the_window_is_named_before_any_extraction(tiny_backbones, tmp_path, monkeypatch):
    from transformers import AutoConfig

    short = tmp_path / "short-llama"
    config = AutoConfig.from_pretrained(tiny_backbones[0]["model"])
    config.num_hidden_layers = choice.WINDOW - 2  # WINDOW - 1 hidden states with the embeddings
    config.save_pretrained(short)
    refuse_model_loads(monkeypatch)
    llm = {**tiny_backbones[0], "model": str(short), "num_layers": 2}
    with pytest.raises(ValueError) as error:
        extract(str(write_data(tmp_path / "d")), backbones=[llm], choose=True, output_dir=str(tmp_path / "out"))
    assert str(error.value) == (
        f"--choose: backbone 'llama' ({short}) has 3 hidden layers (4 hidden states with the embeddings), fewer than "
        "the window of 5 consecutive hidden states its window view averages: choose for an LLM of at least 4 layers."
    )
    assert not (tmp_path / "out").exists()


def test_every_train_row_is_read_once_and_recorded_as_every_row(tiny_backbones, tmp_path, monkeypatch):
    """`--choose-train-rows` of the train split's size: no sample drawn, the LLM reads each train text once."""
    read = []
    original = FrozenBackbone.extract_views

    def views(self, texts, *args, **kwargs):
        read.extend(text for text in texts if not text.endswith(MARK))
        return original(self, texts, *args, **kwargs)

    def swept(candidates, views, device):  # the sweep's scores (its probes are tested above)
        scores = []
        for view in views:
            layers = [-2] if view["pooling"] in choice.TOKEN_POOLINGS else [-2, -3, -4, -5, -6]
            scores.append(choice.LayerScore(layers, 0.5, view["name"], 0.01))
        return scores

    monkeypatch.setattr(FrozenBackbone, "extract_views", views)
    monkeypatch.setattr(choice, "swept_scores", swept)
    data = write_data(tmp_path / "data", rows=9)
    options = {"choose": True, "choose_train_rows": 9, "choose_template": ["{text} means"], "shard_size": 16}
    result = extract(str(data), backbones=tiny_backbones[:1], output_dir=str(tmp_path / "out"), **options)
    record = result.metadata.choice
    assert record["train_sample_seed"] is None and "fitted on train at each" in record["probe"]
    assert record["rows"]["train"] == result.metadata.rows["train"] == 9
    train = {f"{WORDS[i % 3]} {i}" for i in range(9)}
    # Two passes of the LLM (its plain mean; the prompt's token and text mean) over train and validation each.
    assert sorted(read) == sorted(list(train) * 4)
