"""Token-level features (`--tokens`, pooling `"tokens"`): the per-token states of each text's own tokens, stored in
the cached shards beside the pooled views and equal to an independent computation of the same hidden states."""

from __future__ import annotations

import functools

import numpy as np
import pytest
import torch
from datasets import Array2D, Dataset, DatasetDict, Features, Value
from transformers import AutoModel, AutoTokenizer, pipeline

from configuration_llm_fusion import BackboneSpec, LLMFusionConfig, token_view
from helpers import CORPUS, write_csv_dataset
from llm_fusion_fec.data.splits import check_finite, training_splits
from llm_fusion_fec.features.extraction import TOKEN_ATTENTION_QUERIES
from llm_fusion_fec.features.metadata import METADATA_FILE, load_features
from llm_fusion_fec.features.run import extract
from llm_fusion_fec.training.run import FusionTrainingArguments, train
from llm_fusion_fec.training.trainer import FusionTrainer, SeedStack, TokenRows, build_model
from modeling_llm_fusion import (
    FeaturePlan,
    FrozenBackbone,
    LLMFusionForSequenceClassification,
    TokenAttentionPooling,
    layers_needed,
    pad_token_states,
)

TEMPLATE = 'This sentence : "{text}" means'
WINDOW = [-3, -4, -5]
ROWS = [(text, i % 3) for i, text in enumerate(CORPUS[:12])]


def window_view(tiny_backbones) -> dict:
    """The tiny LLM read as the `small` preset reads its window: the mean of the text's own tokens in a prompt."""
    return {**tiny_backbones[0], "pooling": "layer_text_mean", "layers": WINDOW, "num_layers": 3, "template": TEMPLATE}


@pytest.fixture(scope="module")
def token_features(tmp_path_factory, tiny_backbones):
    root = tmp_path_factory.mktemp("tokens")
    data = write_csv_dataset(root / "data", ROWS)
    backbones = [window_view(tiny_backbones), tiny_backbones[1]]
    # Shards of 5 rows, batches of 4: the texts of a shard are padded together, and rows cross shard boundaries.
    options = {"backbones": backbones, "tokens": ["llama", "bert"], "output_dir": str(root / "out"), "shard_size": 5}
    result = extract(str(data), batch_size=4, **options)
    return result, options, data


@functools.cache
def load(folder: str):
    return AutoTokenizer.from_pretrained(folder), AutoModel.from_pretrained(folder).eval()


def own_token_states(folder: str, text: str, template: str | None, layers: list[int] | None) -> np.ndarray:
    """Independently of the feature code: the text alone through the model, its own tokens (those whose characters
    lie in its slot of the prompt, special tokens left out), each the mean of `layers`' hidden states (or the last
    hidden state), in float16."""
    tokenizer, model = load(folder)
    prompt = template.replace("{text}", text) if template else text
    start = template.index("{text}") if template else 0
    encoded = tokenizer(prompt, return_offsets_mapping=True, return_special_tokens_mask=True, return_tensors="pt")
    with torch.no_grad():
        outputs = model(input_ids=encoded["input_ids"], output_hidden_states=True)
    states = (
        outputs.last_hidden_state[0]
        if layers is None
        else torch.stack([outputs.hidden_states[i][0] for i in layers]).mean(0)
    )
    spans = encoded["offset_mapping"][0].tolist()
    special = encoded["special_tokens_mask"][0].tolist()
    own = [i for i, (a, b) in enumerate(spans) if not special[i] and a < start + len(text) and b > start]
    return states[own].numpy().astype(np.float16)


def test_token_features_equal_an_independent_computation(token_features, tiny_backbones):
    result, _, _ = token_features
    data, metadata = load_features(result.output_dir)
    assert [spec.name for spec in metadata.backbones] == ["llama", "bert", "llama_tokens", "bert_tokens"]
    assert metadata.head["token_pooling"] == "attention"  # training reads them by default
    assert metadata.head["attention_queries"] == TOKEN_ATTENTION_QUERIES
    for split in data.values():
        assert split.features["llama_tokens"] == Array2D(shape=(None, 32), dtype="float16")
        assert split.features["bert_tokens"] == Array2D(shape=(None, 32), dtype="float16")
    rows = data["test"].with_format("numpy")[:]  # every split holds the same texts
    for text, llama, llama_tokens, bert_tokens in zip(
        rows["text"], rows["llama"], rows["llama_tokens"], rows["bert_tokens"], strict=True
    ):
        expected = own_token_states(tiny_backbones[0]["model"], text, TEMPLATE, WINDOW)
        assert llama_tokens.shape == expected.shape
        assert np.array_equal(llama_tokens, llama_tokens.astype(np.float16))  # stored as float16
        np.testing.assert_allclose(llama_tokens.astype(np.float32), expected, atol=2e-3, rtol=1e-2)
        expected = own_token_states(tiny_backbones[1]["model"], text, None, None)
        assert bert_tokens.shape == expected.shape  # [CLS] and [SEP] left out
        np.testing.assert_allclose(bert_tokens.astype(np.float32), expected, atol=2e-3, rtol=1e-2)
        # The pooled view, still stored, is the mean of the very same tokens.
        np.testing.assert_allclose(
            llama.astype(np.float32).mean(0), llama_tokens.astype(np.float32).mean(0), atol=2e-3, rtol=1e-2
        )


def test_a_token_view_shares_its_views_forward_pass(tiny_backbones):
    window = BackboneSpec.from_dict(window_view(tiny_backbones))
    bert = BackboneSpec.from_dict(tiny_backbones[1])
    plan = FeaturePlan([window, bert, token_view(window), token_view(bert)])
    assert [[spec.name for spec in views] for views in plan.passes] == [
        ["llama", "llama_tokens"],
        ["bert", "bert_tokens"],
    ]
    # A token view of a window runs only the layers the window needs, like the window itself (of 6 layers, 5 run).
    config = FrozenBackbone.model_config(window)
    assert layers_needed([window, token_view(window)], config) == layers_needed([window], config) == 5


def test_token_features_resume_from_their_verified_shards(token_features, monkeypatch):
    result, options, data = token_features
    before = np.concatenate(load_features(result.output_dir)[0]["train"].with_format("numpy")["llama_tokens"])

    def refuse(*args, **kwargs):
        raise AssertionError("a cache hit must not load any backbone")

    monkeypatch.setattr(FrozenBackbone, "load_model", staticmethod(refuse))
    assert extract(str(data), batch_size=4, **options).computed == []
    monkeypatch.undo()
    # A damaged token shard is recomputed, alone, and the column reads as before.
    shard = next((result.output_dir / "cache" / "train").glob("llama_tokens-*/shard-00001.arrow"))
    shard.write_bytes(shard.read_bytes()[:-16])
    (result.output_dir / METADATA_FILE).unlink()  # the output is rebuilt from the cache, checking every shard
    again = extract(str(data), batch_size=4, **options)
    assert again.computed == ["llama_tokens"]
    after = np.concatenate(load_features(again.output_dir)[0]["train"].with_format("numpy")["llama_tokens"])
    np.testing.assert_array_equal(after, before)


def test_tokens_names_a_backbone(tiny_backbones, tmp_path):
    data = write_csv_dataset(tmp_path / "data", ROWS)
    with pytest.raises(ValueError, match=r"--tokens llama_windw: no backbone 'llama_windw'; the backbones are"):
        extract(str(data), backbones=tiny_backbones, tokens=["llama_windw"], output_dir=str(tmp_path / "out"))


# ---- the head that pools them by learned attention ----

CUES = {"happy": 0, "died": 1, "furious": 2}
FILLER = [
    "i",
    "finally",
    "got",
    "the",
    "job",
    "wanted",
    "and",
    "am",
    "so",
    "my",
    "dog",
    "last",
    "week",
    "still",
    "miss",
    "him",
    "someone",
    "broke",
    "into",
    "car",
]


def lexical_rows(count: int, seed: int) -> list[tuple[str, int]]:
    """Texts whose label hangs on one cue word among fillers, at a random place."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(count):
        cue = list(CUES)[i % 3]
        words = list(rng.choice(FILLER, size=int(rng.integers(4, 9))))
        words.insert(int(rng.integers(0, len(words) + 1)), cue)
        rows.append((" ".join(words), CUES[cue]))
    return rows


@pytest.fixture(scope="module")
def lexical_features(tmp_path_factory, tiny_backbones):
    root = tmp_path_factory.mktemp("lexical")
    data = write_csv_dataset(root / "data", lexical_rows(48, 0))
    backbones = [window_view(tiny_backbones), tiny_backbones[1]]
    extract(str(data), backbones=backbones, tokens=["llama"], output_dir=str(root / "features"), batch_size=8)
    return root / "features"


def test_the_attention_head_starts_as_the_mean_of_the_text_tokens(tiny_backbones):
    pooling = TokenAttentionPooling(8, 3)
    pooling.reset_parameters()
    states, mask = pad_token_states([torch.randn(4, 8), torch.randn(2, 8), torch.randn(5, 8)])
    pooled = pooling(states, mask)
    assert pooled.shape == (3, 3, 8)
    for row, length in enumerate([4, 2, 5]):
        torch.testing.assert_close(pooled[row], states[row, :length].mean(0).expand(3, 8))
    # Padding never counts, whatever it holds.
    torch.testing.assert_close(pooling(states.masked_fill(~mask.unsqueeze(-1), 1e4), mask), pooled)


def test_a_training_batch_pads_as_the_pipeline_pads():
    texts = [torch.randn(n, 6).half() for n in (3, 1, 4, 2)]
    values, lengths = torch.cat(texts), torch.tensor([3, 1, 4, 2])
    rows = TokenRows(values, lengths, torch.device("cpu"))
    for indices in (torch.tensor([2, 0]), torch.tensor([1, 3, 1])):
        padded, mask = rows.gather(indices)
        expected, expected_mask = pad_token_states([texts[i] for i in indices])
        assert torch.equal(padded, expected) and torch.equal(mask, expected_mask)


def test_seeds_stacked_compute_what_each_seed_computes_alone_on_token_views(tiny_backbones):
    specs = [BackboneSpec.from_dict(window_view(tiny_backbones)), BackboneSpec.from_dict(tiny_backbones[1])]
    config = LLMFusionConfig(
        backbones=[*specs, token_view(specs[0])],
        num_labels=3,
        fusion_dim=8,
        mlp_dims=[8],
        dropout=0.0,
        token_pooling="attention",
        attention_queries=2,
    )
    models = [build_model(config, seed, None) for seed in (3, 4)]
    for model in models:  # queries away from zero, so that the weights differ from token to token
        model.token_attention["llama_tokens"].scores.weight.data.normal_()
    stack = SeedStack(models).eval()
    states, mask = pad_token_states([torch.randn(n, 32) for n in (5, 2, 7)])
    features = {"llama": torch.randn(3, 3, 32), "bert": torch.randn(3, 32), "llama_tokens": states}
    shared = stack(**features, llama_tokens_mask=mask).logits  # (rows, seeds, labels)
    for index, model in enumerate(models):
        torch.testing.assert_close(shared[:, index], model.eval()(**features, llama_tokens_mask=mask).logits)
        state = stack.seed_state_dict(index)
        assert all(torch.equal(state[name], value) for name, value in model.state_dict().items())


def test_the_attention_head_trains_saves_reloads_and_serves_as_the_trainer_predicts(lexical_features, tmp_path):
    output = tmp_path / "model"
    results = train(
        features_dir=str(lexical_features),
        output_dir=str(output),
        num_train_epochs=6,
        per_device_train_batch_size=16,
        learning_rate=3e-3,
        early_stopping_patience=100,
        standardize_features=True,
        train_sampling_strategy="group_by_length",  # batches of like length: what it changes is less padding
        save_strategy="no",  # no checkpoint to resume from: seconds saved
        load_best_model_at_end=False,
        disable_tqdm=True,
        report_to="none",
    )
    losses = [record.train_loss for record in results.runs[0].history]
    assert losses[-1] < 0.5 * losses[0]
    model = LLMFusionForSequenceClassification.from_pretrained(output).eval()
    assert model.config.token_pooling == "attention" and model.config.token_views == ["llama_tokens"]
    assert model.config.attention_queries == TOKEN_ATTENTION_QUERIES  # as the features recorded
    assert "token_attention.llama_tokens.scores.weight" in model.state_dict()
    card = (output / "README.md").read_text()
    assert "The token views (llama_tokens: one vector per token of the text) are first pooled" in card
    assert "llama_tokens (2, tokens, 32), llama_tokens_mask (2, tokens)" in card
    # The Trainer's predictions on the stored test features (padded by its collator, batches of 5)...
    data, _ = load_features(lexical_features)
    test = training_splits(data, model.config)["test"]
    args = FusionTrainingArguments(
        output_dir=str(tmp_path / "predict"),
        per_device_eval_batch_size=5,
        eval_strategy="no",
        save_strategy="no",
        report_to="none",
    )
    logits = torch.from_numpy(FusionTrainer(model=model, args=args).predict(test).predictions)
    predicted = (logits / model.config.temperature).softmax(-1)  # at the temperature training fitted
    # ...are what the pipeline serves from the texts, its token states computed by the same feature plan.
    classify = pipeline("fec", model=model, device="cpu")
    answers = classify(list(data["test"]["text"]), top_k=None, batch_size=4)
    labels = [model.config.id2label[i] for i in range(3)]
    served = torch.tensor([[{a["label"]: a["score"] for a in row}[label] for label in labels] for row in answers])
    torch.testing.assert_close(served, predicted, atol=1e-5, rtol=0)


def test_token_views_are_left_out_without_the_attention_head(lexical_features, tmp_path):
    results = train(
        features_dir=str(lexical_features),
        output_dir=str(tmp_path / "model"),
        token_pooling="none",
        train_sampling_strategy="group_by_length",  # nothing to group: read in random order, with a warning
        max_steps=2,
        disable_tqdm=True,
        report_to="none",
    )
    assert results.runs
    model = LLMFusionForSequenceClassification.from_pretrained(tmp_path / "model")
    assert [spec.name for spec in model.config.backbones] == ["llama", "bert"]
    assert model.config.token_pooling is None
    assert not any(name.startswith("token_attention") for name in model.state_dict())


def test_the_bench_compares_the_heads_on_validation(lexical_features, tmp_path, capsys):
    from bench.token_head import main

    records = main(
        [
            str(lexical_features),
            "--seeds",
            "1",
            "--queries",
            "2",
            "--work-dir",
            str(tmp_path),
            "--",
            "--max_steps",
            "2",
        ]
    )
    assert [record["head"] for record in records] == ["no token views", "attention, 2 queries"]
    assert all(0 <= record["seeds"][0]["validation"]["accuracy"] <= 1 for record in records)
    assert "attention, 2 queries" in capsys.readouterr().out


def test_a_hard_subset_is_a_data_set_of_its_own_labels(lexical_features, tmp_path):
    from bench.hard_subsets import load_head, restrict, subset_run, table
    from llm_fusion_fec.commands.train import parse_args
    from llm_fusion_fec.training.run import prepare

    setup = prepare(*parse_args(["--features_dir", str(lexical_features), "--output_dir", str(tmp_path / "x")]))
    subset = restrict(setup, ["angry", "sad"])
    assert subset.config.id2label == {0: "angry", 1: "sad"} and subset.config.num_labels == 2
    for split in ("train", "validation", "test"):
        labels = np.asarray(setup.texts[split]["label"])
        rows = np.flatnonzero(labels != 1)  # happy (1) left out; angry (2) -> 0, sad (0) -> 1
        assert subset.texts[split]["text"] == [setup.texts[split]["text"][i] for i in rows]
        features, expected = subset.data[split][:], setup.data[split].select(rows)[:]
        assert features["labels"].tolist() == list(subset.texts[split]["label"]) == (labels[rows] == 0).tolist()
        assert torch.equal(features["llama"], expected["llama"])
    with pytest.raises(ValueError, match=r"Labels \['calm'\] are not labels of these features"):
        restrict(setup, ["angry", "calm"])

    loaded = load_head(str(lexical_features), "attention", 2, ["--max_steps", "2"])
    record = subset_run(*loaded, ["angry", "sad"], 2, tmp_path / "run")
    assert record["rows"] == dict.fromkeys(("train", "validation", "test"), 32)
    assert len(record["test_accuracy"]) == 2 and 0 <= record["ensemble_accuracy"] <= 100
    assert record["floor_accuracy"] == 100.0  # the cue word gives the label
    lines = table([{"subset": "a", **record}], ["a"]).splitlines()
    assert lines[-2].startswith("| this project, head `attention`, 2 seeds (std), ensemble | ")
    assert lines[-1] == "| bag-of-words floor | 100.0 |"


def test_non_finite_token_features_are_refused_naming_the_row():
    spec = BackboneSpec.from_dict({"name": "llama_tokens", "model": "m", "pooling": "tokens", "hidden_size": 4})
    config = LLMFusionConfig(backbones=[spec], num_labels=3, token_pooling="attention")
    rows = [np.ones((n, 4), dtype=np.float16) for n in (3, 2, 4, 1)]
    rows[2][3, 1] = np.inf  # the last token of row 2
    split = Dataset.from_dict(
        {"llama_tokens": rows, "labels": [0, 1, 2, 0]},
        features=Features({"llama_tokens": Array2D(shape=(None, 4), dtype="float16"), "labels": Value("int64")}),
    )
    with pytest.raises(ValueError, match="Split 'test', backbone 'llama_tokens', row 2: the features hold NaN"):
        check_finite(DatasetDict({"test": split.with_format("torch")}), config)


def test_the_token_head_is_refused_without_token_views(tiny_backbones):
    with pytest.raises(
        ValueError, match=r"no backbone has pooling 'tokens': extract token-level features \(`--tokens"
    ):
        LLMFusionConfig(backbones=tiny_backbones, token_pooling="attention")
    token = BackboneSpec.from_dict(tiny_backbones[2]).replace(name="roberta_tokens", pooling="tokens")
    with pytest.raises(ValueError, match=r"Backbones \['roberta_tokens'\] have pooling 'tokens'.*token_pooling"):
        LLMFusionConfig(backbones=[*tiny_backbones, token])
    with pytest.raises(ValueError, match="token_pooling must be one of"):
        LLMFusionConfig(backbones=[*tiny_backbones, token], token_pooling="max")
