import ast
import importlib.machinery
import importlib.util
import json
import re
import sys

import pytest
import torch

from configuration_llm_fusion import BackboneSpec, LLMFusionConfig
from helpers import REPO, run_program
from modeling_llm_fusion import (
    FeaturePlan,
    FrozenBackbone,
    LLMFusionEnsembleForSequenceClassification,
    LLMFusionForSequenceClassification,
    layers_needed,
    quantization_config,
)


def paper_features(batch: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(1)
    return {
        "llama": torch.randn(batch, 5, 4096),
        "bert": torch.randn(batch, 1024),
        "roberta": torch.randn(batch, 1024),
    }


def test_paper_head_has_the_original_parameter_count():
    model = LLMFusionForSequenceClassification(LLMFusionConfig(num_labels=32))
    layer_projections = 5 * (4096 * 1024 + 1024)
    mlp_in = 7 * 7 + 4096
    mlp = (mlp_in * 1024 + 1024) + (1024 * 256 + 256) + (256 * 32 + 32)
    assert layer_projections + mlp == 25_492_768
    assert sum(p.numel() for p in model.parameters()) == 25_492_768


def test_fuse_matches_a_direct_computation():
    config = LLMFusionConfig(num_labels=32, sigma=0.01)
    model = LLMFusionForSequenceClassification(config).eval()
    features = paper_features()
    fused = model.fuse(**features)
    assert fused.shape == (4, 49 + 4096)
    matrix = fused[:, :49].view(4, 7, 7)
    torch.testing.assert_close(matrix, matrix.transpose(1, 2))  # symmetric up to rounding: bmm's order varies by CPU
    assert matrix.abs().max() <= 1
    # Encoders are stacked after the 5 LLM layer vectors, unprojected at the paper's widths.
    bert, roberta = features["bert"], features["roberta"]
    for (i, a), (j, b) in [((5, bert), (5, bert)), ((5, bert), (6, roberta)), ((6, roberta), (6, roberta))]:
        expected = 2 * torch.sigmoid(0.01 * (a * b).sum(-1)) - 1
        torch.testing.assert_close(matrix[:, i, j], expected)
    torch.testing.assert_close(fused[:, 49:], features["llama"].mean(dim=1))


def test_mismatched_features_are_named():
    model = LLMFusionForSequenceClassification(LLMFusionConfig(num_labels=3))
    features = paper_features(2)
    with pytest.raises(ValueError, match=r"Missing features for backbone\(s\) \['roberta'\]"):
        model(llama=features["llama"], bert=features["bert"])
    with pytest.raises(ValueError, match=r"Features 'bert' have shape \(2, 768\)"):
        model(**{**features, "bert": torch.zeros(2, 768)})
    with pytest.raises(ValueError, match=r"Unexpected inputs \['gpt'\]"):
        model(**features, gpt=features["bert"])


def test_losses_single_and_multi_label():
    features = paper_features()
    single = LLMFusionForSequenceClassification(LLMFusionConfig(num_labels=3)).eval()
    labels = torch.tensor([0, 2, 1, 1])
    output = single(**features, labels=labels)
    torch.testing.assert_close(output.loss, torch.nn.functional.cross_entropy(output.logits, labels))
    assert single.config.problem_type == "single_label_classification"

    multi = LLMFusionForSequenceClassification(
        LLMFusionConfig(num_labels=3, problem_type="multi_label_classification")
    ).eval()
    targets = torch.tensor([[1.0, 0, 1], [0, 0, 1], [1, 1, 1], [0, 0, 0]])
    output = multi(**{k: v.half() for k, v in features.items()}, labels=targets)
    torch.testing.assert_close(
        output.loss, torch.nn.functional.binary_cross_entropy_with_logits(output.logits, targets)
    )


def test_any_backbone_set_and_widths(tiny_backbones):
    config = LLMFusionConfig(backbones=tiny_backbones, fusion_dim=16, mlp_dims=[8], num_labels=2)
    model = LLMFusionForSequenceClassification(config)
    # 3 LLM layers + 2 encoders (both projected to 16) -> 5 x 5 co-occurrence + the 32-wide LLM mean.
    assert model.fusion_width == 25 + 32
    features = {"llama": torch.randn(3, 3, 32), "bert": torch.randn(3, 32), "roberta": torch.randn(3, 24)}
    assert model(**features).logits.shape == (3, 2)


def test_save_and_load_with_trust_remote_code_in_a_fresh_process(tmp_path):
    model = LLMFusionForSequenceClassification(LLMFusionConfig(num_labels=4, mlp_dims=[64], fusion_dim=64)).eval()
    features = paper_features(3)
    expected = model(**features).logits
    model.save_pretrained(tmp_path / "model")
    torch.save(features, tmp_path / "features.pt")
    assert {"configuration_llm_fusion.py", "modeling_llm_fusion.py", "model.safetensors"} <= {
        p.name for p in (tmp_path / "model").iterdir()
    }
    loaded = run_program("remote_code_logits.py", tmp_path / "model", tmp_path / "features.pt", tmp_path / "logits.pt")
    assert loaded["module"].startswith("transformers_modules"), loaded["module"]
    assert torch.equal(torch.load(tmp_path / "logits.pt"), expected)


def test_modules_import_from_the_repo_root():
    modules = ("modeling_llm_fusion", "configuration_llm_fusion")
    assert run_program("import_from_repo.py", *modules, repo=True) == {
        name: str(REPO / f"{name}.py") for name in modules
    }


# ---- features: the one text -> features code path ----


def test_features_ignore_padding(tiny_backbones):
    short = "i am so happy"
    long = "someone broke into my car and i was furious, then nervous about the exam, then happy again " * 3
    for spec in tiny_backbones:
        backbone = FrozenBackbone.load(spec)
        alone = backbone([short])
        batched = backbone([long, short, "what a lovely surprise"])
        torch.testing.assert_close(batched[1:2], alone, atol=1e-5, rtol=1e-5)


def test_llm_features_are_the_per_layer_token_mean(tiny_backbones):
    spec = tiny_backbones[0]
    backbone = FrozenBackbone.load(spec)
    texts = ["my dog died last week", "what a lovely surprise from my friends and family!"]
    features = backbone(texts)
    assert features.shape == (2, spec["num_layers"], spec["hidden_size"])
    for row, text in enumerate(texts):
        ids = backbone.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            hidden = backbone.model(**ids, output_hidden_states=True).hidden_states
        last_layers_first = [hidden[-1 - i] for i in range(spec["num_layers"])]
        expected = torch.stack([layer[0].mean(dim=0) for layer in last_layers_first])
        torch.testing.assert_close(features[row], expected, atol=1e-5, rtol=1e-5)


PROMPT_EOL = 'This sentence : "{text}" means in one word:"'


def llm_spec(tiny_backbones, **keys) -> dict:
    """The tiny Llama (6 layers, 7 hidden states) with other feature keys; num_layers follows `layers`."""
    return {**{k: v for k, v in tiny_backbones[0].items() if k != "num_layers"}, **keys}


@pytest.mark.parametrize("pooling", ["layer_mean", "layer_last_token"])
@pytest.mark.parametrize("template", [None, PROMPT_EOL])
def test_chosen_layers_poolings_and_template_equal_an_independent_computation(tiny_backbones, pooling, template):
    layers = [0, -1, 3, -6]  # the embeddings, the top layer, and two in between, in this order
    backbone = FrozenBackbone.load(llm_spec(tiny_backbones, layers=layers, pooling=pooling, template=template))
    texts = ["my dog died last week", "what a lovely surprise from my friends and family!", "so happy"]
    features = backbone(texts)  # one padded batch: the short texts are padded on the right
    assert features.shape == (3, 4, 32)
    prefix, suffix = template.split("{text}") if template else ("", "")
    for row, text in enumerate(texts):
        ids = backbone.tokenizer(prefix + text + suffix, return_tensors="pt")  # alone: no padding at all
        with torch.no_grad():
            hidden = backbone.model(**ids, output_hidden_states=True).hidden_states
        assert len(hidden) == 7
        pooled = [hidden[i][0].mean(dim=0) if pooling == "layer_mean" else hidden[i][0, -1] for i in layers]
        torch.testing.assert_close(features[row], torch.stack(pooled), atol=1e-5, rtol=1e-5)
    # Batches are sorted by the length of what the model reads, template included.
    assert backbone.count_tokens(texts) == [len(backbone.tokenizer(prefix + t + suffix)["input_ids"]) for t in texts]


def test_the_in_prompt_mean_equals_a_masked_mean_over_the_texts_own_tokens(tiny_backbones):
    layers = [-1, -3]
    backbone = FrozenBackbone.load(
        llm_spec(tiny_backbones, layers=layers, pooling="layer_text_mean", template=PROMPT_EOL)
    )
    texts = ["my dog died last week", "what a lovely surprise from my friends and family", "so happy"]
    features = backbone(texts)  # one padded batch
    prefix, suffix = PROMPT_EOL.split("{text}")
    tokenizer = backbone.tokenizer
    for row, text in enumerate(texts):
        head = tokenizer(prefix)["input_ids"]  # <s> and the prompt's tokens before the text
        own = tokenizer(text, add_special_tokens=False)["input_ids"]
        tail = tokenizer(suffix, add_special_tokens=False)["input_ids"]
        ids = tokenizer(prefix + text + suffix, return_tensors="pt")
        assert ids["input_ids"][0].tolist() == head + own + tail  # the text's tokens sit at len(head) ...
        with torch.no_grad():
            hidden = backbone.model(**ids, output_hidden_states=True).hidden_states
        span = slice(len(head), len(head) + len(own))
        expected = torch.stack([hidden[i][0, span].mean(dim=0) for i in layers])
        torch.testing.assert_close(features[row], expected, atol=1e-5, rtol=1e-5)
    # Without a template the text is all there is: the in-prompt mean is the plain mean.
    plain = {"layers": layers, "template": None}
    torch.testing.assert_close(
        FrozenBackbone.load(llm_spec(tiny_backbones, pooling="layer_text_mean", **plain))(texts),
        FrozenBackbone.load(llm_spec(tiny_backbones, pooling="layer_mean", **plain))(texts),
    )
    short = llm_spec(tiny_backbones, pooling="layer_text_mean", template=PROMPT_EOL, max_length=4)
    with pytest.raises(ValueError, match=r"'llama': its template leaves no token of a text within max_length=4"):
        FrozenBackbone.load(short)(texts)


def test_a_prompts_last_token_and_its_text_mean_take_one_forward_pass(tiny_backbones):
    last = llm_spec(tiny_backbones, layers=[-4], pooling="layer_last_token", template=PROMPT_EOL)
    mean = {
        **llm_spec(tiny_backbones, layers=[-1, -2], pooling="layer_text_mean", template=PROMPT_EOL),
        "name": "mean",
    }
    window = {**llm_spec(tiny_backbones, layers=[-3]), "name": "window"}  # no prompt: a pass of its own
    config = LLMFusionConfig(backbones=[last, *tiny_backbones[1:], mean, window], fusion_dim=16, mlp_dims=[8])
    model = LLMFusionForSequenceClassification(config)
    loaded = model.load_backbones()
    assert loaded["mean"].reads_like(loaded["llama"]) and not loaded["window"].reads_like(loaded["llama"])
    passes = []
    loaded["llama"].model.register_forward_hook(lambda module, args, kwargs, out: passes.append(1), with_kwargs=True)
    texts = ["i finally got the job", "my dog died"]
    features = model.extract_features(texts)
    assert len(passes) == 2  # the prompted pass for both prompted views, and the window's
    assert list(features) == ["llama", "bert", "roberta", "mean", "window"]
    for spec in (last, mean, window):  # each view computes what it computes alone
        torch.testing.assert_close(features[spec["name"]], FrozenBackbone.load(spec)(texts))


def test_a_pass_runs_only_the_layers_below_the_deepest_state_its_views_read(tiny_backbones):
    token = llm_spec(tiny_backbones, layers=[-4], pooling="layer_last_token", template=PROMPT_EOL)
    mean = {**llm_spec(tiny_backbones, layers=[1, -5], pooling="layer_text_mean", template=PROMPT_EOL), "name": "m"}
    plan = FeaturePlan([token, mean])
    assert plan.passes == [plan.specs]  # one prompted pass serves both views
    whole = FrozenBackbone.load(token)
    assert layers_needed(plan.specs, whole.model.config) == 4  # hidden_states[3] is layer 2's output; 3 normalises
    backbone, view = plan.load(plan.specs)  # the model loaded with only the layers the views read
    assert len(backbone.model.layers) == 4 and view.model is backbone.model and len(whole.model.layers) == 6
    texts = ["my dog died last week", "what a lovely surprise from my friends and family", "so happy"]
    features = backbone.views(texts, [backbone, view])
    prefix, suffix = PROMPT_EOL.split("{text}")
    for row, text in enumerate(texts):  # every layer run, one text alone
        ids = whole.tokenizer(prefix + text + suffix, return_tensors="pt")
        with torch.no_grad():
            hidden = whole.model(**ids, output_hidden_states=True).hidden_states
        assert len(hidden) == 7
        torch.testing.assert_close(features[0][row, 0], hidden[-4][0, -1], atol=1e-5, rtol=1e-5)
        start = len(whole.tokenizer(prefix)["input_ids"])
        span = slice(start, start + len(whole.tokenizer(text, add_special_tokens=False)["input_ids"]))
        expected = torch.stack([hidden[i][0, span].mean(dim=0) for i in (1, -5)])
        torch.testing.assert_close(features[1][row], expected, atol=1e-5, rtol=1e-5)
    # Every layer runs for a view of the top two hidden states or of the last hidden state.
    for keys in ({"layers": [-2]}, {"layers": [0, -1]}, {"layers": None, "num_layers": 1}):
        assert layers_needed([BackboneSpec.from_dict({**token, **keys})], whole.model.config) is None
    encoder = FrozenBackbone.load(tiny_backbones[1])
    assert layers_needed([encoder.spec], encoder.model.config) is None


@pytest.mark.parametrize("pooling", ["pooler", "cls", "mean"])
def test_encoder_poolings_equal_an_independent_computation(tiny_backbones, pooling):
    spec = {**tiny_backbones[1], "pooling": pooling}
    backbone = FrozenBackbone.load(spec)
    texts = ["my dog died last week", "what a lovely surprise from my friends and family!", "so happy"]
    features = backbone(texts)  # one padded batch: the short texts are padded
    assert features.shape == (3, spec["hidden_size"])
    for row, text in enumerate(texts):
        with torch.no_grad():  # alone: no padding at all
            outputs = backbone.model(**backbone.tokenizer(text, return_tensors="pt"))
        hidden = outputs.last_hidden_state[0]
        expected = {"pooler": outputs.pooler_output[0], "cls": hidden[0], "mean": hidden.mean(dim=0)}[pooling]
        torch.testing.assert_close(features[row], expected, atol=1e-5, rtol=1e-5)


def test_the_default_layers_are_the_last_ones_last_first(tiny_backbones):
    texts = ["my dog died last week", "what a lovely surprise"]
    default = FrozenBackbone.load(tiny_backbones[0])(texts)  # num_layers=3, no layers
    explicit = FrozenBackbone.load(llm_spec(tiny_backbones, layers=[-1, -2, -3]))(texts)
    assert torch.equal(default, explicit)


def test_layers_outside_the_model_raise(tiny_backbones):
    with pytest.raises(ValueError, match=r"has 7 hidden states .*indices 0..6 or -7..-1\); layers \[7\] are out"):
        FrozenBackbone.load(llm_spec(tiny_backbones, layers=[-1, 7]))
    with pytest.raises(ValueError, match=r"layers \[-8\] are out of range"):
        FrozenBackbone.load(llm_spec(tiny_backbones, layers=[-8]))
    with pytest.raises(ValueError, match=r"layers \[1, -6\] name the same hidden state twice"):
        FrozenBackbone.load(llm_spec(tiny_backbones, layers=[1, -6]))


def test_head_and_saved_model_with_chosen_layers(tiny_backbones, tmp_path):
    llama = llm_spec(tiny_backbones, layers=[2, -1], pooling="layer_last_token", template=PROMPT_EOL)
    config = LLMFusionConfig(backbones=[llama, *tiny_backbones[1:]], fusion_dim=16, mlp_dims=[8], num_labels=3)
    model = LLMFusionForSequenceClassification(config).eval()
    assert len(model.layer_projections["llama"]) == 2
    assert model.fusion_width == (2 + 2) ** 2 + 32  # 2 LLM layers + 2 encoders, then the LLM mean
    texts = ["i finally got the job", "my dog died"]
    features = model.extract_features(texts)
    assert features["llama"].shape == (2, 2, 32)
    logits = model(**features).logits
    model.save_pretrained(tmp_path)
    loaded = LLMFusionForSequenceClassification.from_pretrained(tmp_path).eval()
    assert loaded.config.backbone("llama") == model.config.backbone("llama")
    # The saved config alone makes the loaded model compute the same features (as the pipeline does).
    again = loaded.extract_features(texts)
    torch.testing.assert_close(again["llama"], FrozenBackbone.load(llama)(texts))
    torch.testing.assert_close(loaded(**again).logits, logits)


def test_backbone_mismatches_raise(tiny_backbones):
    llama, bert = tiny_backbones[0], tiny_backbones[1]
    with pytest.raises(ValueError, match=r"has hidden size 32, but the config expects 64"):
        FrozenBackbone.load({**bert, "hidden_size": 64})
    with pytest.raises(ValueError, match=r"has 6 layers, fewer than num_layers=7"):
        FrozenBackbone.load({**llama, "num_layers": 7})
    with pytest.raises(ValueError, match=r"could not be loaded from '/nonexistent/model'"):
        FrozenBackbone.load({**bert, "model": "/nonexistent/model"})


@pytest.mark.parametrize(
    ("bitsandbytes_installed", "gpu", "reason"),
    [(False, True, "bitsandbytes is not installed"), (True, False, "no CUDA GPU is available")],
)
def test_quantization_without_bitsandbytes_or_a_gpu_is_refused(monkeypatch, bitsandbytes_installed, gpu, reason):
    find_spec = importlib.util.find_spec

    def find_spec_without_gpu_packages(name: str, *args):
        if name == "bitsandbytes":  # a stand-in for its spec when "installed": only its presence is asked
            return importlib.machinery.ModuleSpec(name, None) if bitsandbytes_installed else None
        return find_spec(name, *args)

    monkeypatch.setattr(importlib.util, "find_spec", find_spec_without_gpu_packages)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: gpu)
    spec = {"name": "llama", "model": "m", "pooling": "layer_mean", "hidden_size": 8, "quantization": "4bit"}
    message = "Backbone 'llama': 4-bit quantization needs bitsandbytes and a CUDA GPU: pip install bitsandbytes"
    with pytest.raises(ValueError, match=re.escape(f"{message} ({reason})")):
        FrozenBackbone.load(spec)  # refused before anything is loaded: "m" is not a model anywhere
    assert quantization_config(BackboneSpec.from_dict({**spec, "quantization": None}), torch.float32) is None


def test_two_views_of_one_llm_share_its_weights(tiny_backbones):
    prompt = llm_spec(tiny_backbones, layers=[-2], pooling="layer_last_token", template=PROMPT_EOL)
    window = {**llm_spec(tiny_backbones, layers=[-3, -4]), "name": "llama_window"}
    backbones = [prompt, *tiny_backbones[1:], window]
    config = LLMFusionConfig(backbones=backbones, fusion_dim=16, mlp_dims=[8], num_labels=3)
    model = LLMFusionForSequenceClassification(config).eval()
    assert model.fusion_width == (1 + 2 + 2) ** 2 + 32 + 32  # 3 LLM vectors + 2 encoders, then both LLM means
    loaded = model.load_backbones()
    assert loaded["llama_window"].model is loaded["llama"].model  # loaded once
    assert loaded["bert"].model is not loaded["llama"].model
    texts = ["i finally got the job", "my dog died"]
    features = model.extract_features(texts)
    for spec in (prompt, window):  # each view computes what it computes alone
        torch.testing.assert_close(features[spec["name"]], FrozenBackbone.load(spec)(texts))
    assert model(**features).logits.shape == (2, 3)


def test_one_folder_by_model_id_serves_every_view_of_that_model(tiny_backbones):
    folder = tiny_backbones[0]["model"]
    hub_id = "org/tiny-llama"  # what a preset records: a Hub id, loaded here from a local copy
    prompt = llm_spec(tiny_backbones, model=hub_id, layers=[-2], pooling="layer_last_token", template=PROMPT_EOL)
    window = {**llm_spec(tiny_backbones, model=hub_id, layers=[-3, -4]), "name": "llama_window"}
    config = LLMFusionConfig(
        backbones=[prompt, *tiny_backbones[1:], window], fusion_dim=16, mlp_dims=[8], num_labels=3
    )
    loaded = LLMFusionForSequenceClassification(config).load_backbones({hub_id: folder})
    assert loaded["llama_window"].model is loaded["llama"].model  # one folder, one load, both views
    texts = ["i finally got the job", "my dog died"]
    for spec in (prompt, window):
        torch.testing.assert_close(loaded[spec["name"]](texts), FrozenBackbone.load(spec, folder)(texts))
    with pytest.raises(ValueError, match=r"backbone_paths names unknown backbone\(s\) or model\(s\) \['org/other'\]"):
        LLMFusionForSequenceClassification(config).load_backbones({"org/other": folder})


def test_model_extracts_then_classifies(tiny_backbones):
    config = LLMFusionConfig(backbones=tiny_backbones, fusion_dim=32, mlp_dims=[16], num_labels=3)
    model = LLMFusionForSequenceClassification(config).eval()
    features = model.extract_features(["i finally got the job", "my dog died"])
    assert {k: tuple(v.shape) for k, v in features.items()} == {
        "llama": (2, 3, 32),
        "bert": (2, 32),
        "roberta": (2, 24),
    }
    assert model(**features).logits.shape == (2, 3)
    # Backbones never enter the head's checkpoint.
    assert model.state_dict().keys() == LLMFusionForSequenceClassification(config).state_dict().keys()
    with pytest.raises(TypeError, match=r"Text at position 1 is NoneType"):
        model.extract_features(["fine", None])
    with pytest.raises(ValueError, match=r"Text at position 0 is empty or only whitespace"):
        model.extract_features(["  "])


def test_standardized_features_round_trip(tmp_path):
    config = LLMFusionConfig(num_labels=3, mlp_dims=[16], fusion_dim=32, standardize_features=True)
    model = LLMFusionForSequenceClassification(config).eval()
    features = paper_features(3)
    statistics = {name: (value.mean(0), value.std(0)) for name, value in features.items()}
    model.set_feature_statistics(statistics)
    plain = LLMFusionForSequenceClassification(LLMFusionConfig(num_labels=3, mlp_dims=[16], fusion_dim=32)).eval()
    plain.load_state_dict({k: v for k, v in model.state_dict().items() if not k.endswith(("_mean", "_std"))})
    standardized = {name: (value - statistics[name][0]) / statistics[name][1] for name, value in features.items()}
    torch.testing.assert_close(model.fuse(**features), plain.fuse(**standardized))
    model.save_pretrained(tmp_path)
    loaded = LLMFusionForSequenceClassification.from_pretrained(tmp_path).eval()
    torch.testing.assert_close(loaded(**features).logits, model(**features).logits)
    with pytest.raises(ValueError, match="needs a config with standardize_features=True"):
        plain.set_feature_statistics(statistics)


def test_encoders_in_tail_appends_the_raw_encoder_vectors():
    config = LLMFusionConfig(num_labels=3, mlp_dims=[16], encoders_in_tail=True)
    model = LLMFusionForSequenceClassification(config).eval()
    assert model.fusion_width == 49 + 4096 + 1024 + 1024
    features = paper_features(2)
    fused = model.fuse(**features)
    torch.testing.assert_close(fused[:, 49 : 49 + 4096], features["llama"].mean(dim=1))
    torch.testing.assert_close(fused[:, 49 + 4096 :], torch.cat([features["bert"], features["roberta"]], dim=-1))


def small_head(seed: int, **config) -> LLMFusionForSequenceClassification:
    torch.manual_seed(seed)
    return LLMFusionForSequenceClassification(LLMFusionConfig(mlp_dims=[16], fusion_dim=32, **config)).eval()


@pytest.mark.parametrize("problem_type", ["single_label_classification", "multi_label_classification"])
def test_ensemble_probabilities_are_the_mean_of_its_members_and_it_loads_with_trust_remote_code(
    tmp_path, problem_type
):
    # Multi-label seeds each chose their own threshold on validation: they still make one ensemble.
    members = [small_head(seed, num_labels=4, problem_type=problem_type, threshold=0.1 * seed) for seed in (1, 2, 3)]
    features = paper_features(3)
    activation = torch.sigmoid if problem_type == "multi_label_classification" else lambda x: x.softmax(-1)
    expected = torch.stack([activation(member(**features).logits) for member in members]).mean(0)
    ensemble = LLMFusionEnsembleForSequenceClassification.from_members(members).eval()
    assert ensemble.config.ensemble_size == 3 and members[0].config.ensemble_size == 1
    torch.testing.assert_close(activation(ensemble(**features).logits), expected)
    ensemble.save_pretrained(tmp_path / "ensemble")
    torch.save(features, tmp_path / "features.pt")
    files = (tmp_path / "ensemble", tmp_path / "features.pt", tmp_path / "logits.pt")
    loaded = run_program("remote_code_logits.py", *files)
    assert loaded["class"] == "LLMFusionEnsembleForSequenceClassification", loaded["class"]
    torch.testing.assert_close(activation(torch.load(tmp_path / "logits.pt")), expected)


def test_ensemble_members_must_share_a_config():
    with pytest.raises(ValueError, match="must share one config"):
        LLMFusionEnsembleForSequenceClassification.from_members(
            [small_head(1, num_labels=4), small_head(2, num_labels=5)]
        )


# ---- the Hub files and folders saved before ----

HUB_FILES = ("configuration_llm_fusion.py", "modeling_llm_fusion.py", "pipeline_fec.py")
HANDLER = "llm_fusion_fec/serving/handler.py"  # saved into every model folder as handler.py
PREVIOUS_LAYOUT_MODEL = REPO / "tests" / "fixtures" / "previous-layout-model"


OPTIONAL_RUNTIMES = {"onnxruntime", "onnx"}
"""The extra `[onnx]`: imported only inside the functions of a backbone that runs with an ONNX backend."""


def imported_modules(tree, in_functions: bool = True) -> set[str]:
    """The top-level packages `tree` imports (`in_functions=False`: those imported when its module is)."""
    imported = set()
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level in (0, 1), "only single-dot relative imports travel with a Hub folder"
            imported.add((node.module or "").split(".")[0])
        elif in_functions or not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            imported |= imported_modules(node, in_functions)
    return imported


@pytest.mark.parametrize("file", [*HUB_FILES, HANDLER])
def test_hub_files_import_only_the_standard_library_torch_transformers_and_each_other(file):
    allowed = {"torch", "transformers", *(name.removesuffix(".py") for name in HUB_FILES)} | sys.stdlib_module_names
    tree = ast.parse((REPO / file).read_text())
    assert imported_modules(tree, in_functions=False) - allowed == set()
    assert imported_modules(tree) - allowed - OPTIONAL_RUNTIMES == set()  # the extra's, inside the functions using it


def test_a_folder_saved_by_the_previous_layout_loads_with_remote_code_and_with_this_code(tmp_path):
    """The fixture was saved (`save_for_pipeline`) by the flat layout of before the package, with its own copies of
    the Hub files; its logits on the saved features were recorded then."""
    expected = json.loads((PREVIOUS_LAYOUT_MODEL / "expected.json").read_text())
    features = {name: torch.tensor(values) for name, values in expected["features"].items()}
    torch.save(features, tmp_path / "features.pt")
    loaded = run_program("remote_code_logits.py", PREVIOUS_LAYOUT_MODEL, tmp_path / "features.pt", tmp_path / "l.pt")
    assert loaded["module"].startswith("transformers_modules")
    assert torch.allclose(torch.load(tmp_path / "l.pt"), torch.tensor(expected["logits"]), atol=1e-6)
    model = LLMFusionForSequenceClassification.from_pretrained(PREVIOUS_LAYOUT_MODEL, dtype=torch.float32).eval()
    with torch.no_grad():
        assert torch.allclose(model(**features).logits, torch.tensor(expected["logits"]), atol=1e-6)
