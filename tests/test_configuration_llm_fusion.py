import copy
import json

import pytest

from configuration_llm_fusion import (
    POOLINGS,
    PRESETS,
    PROMPT_EOL,
    BackboneSpec,
    LLMFusionConfig,
    describe_pooling,
)


def test_defaults_are_the_papers():
    config = LLMFusionConfig()
    assert [(b["name"], b["model"], b["pooling"], b["num_layers"], b["hidden_size"]) for b in config.backbones] == [
        ("llama", "meta-llama/Llama-2-7b-chat-hf", "layer_mean", 5, 4096),
        ("bert", "bert-large-uncased", "pooler", 1, 1024),
        ("roberta", "roberta-large", "pooler", 1, 1024),
    ]
    assert (config.fusion_dim, config.sigma, config.dropout, config.mlp_dims) == (1024, 1.0, 0.5, [1024, 256])
    assert config.feature_shapes == {"llama": (5, 4096), "bert": (1024,), "roberta": (1024,)}


def test_small_preset_reads_two_views_of_the_llm_from_one_prompt():
    config = LLMFusionConfig.from_preset("small", num_labels=3)
    assert [(b["name"], b["model"], b["pooling"]) for b in config.backbones] == [
        ("llama", "HuggingFaceTB/SmolLM2-135M-Instruct", "layer_last_token"),
        ("llama_window", "HuggingFaceTB/SmolLM2-135M-Instruct", "layer_text_mean"),
        ("bert", "sentence-transformers/all-MiniLM-L6-v2", "mean"),
        ("roberta", "sentence-transformers/all-mpnet-base-v2", "mean"),
    ]
    token, window = config.backbones[:2]
    assert token["template"] == window["template"] == PROMPT_EOL  # one LLM pass a text gives both views
    assert config.feature_shapes == {"llama": (1, 576), "llama_window": (5, 576), "bert": (384,), "roberta": (768,)}
    assert config.num_labels == 3


def test_small_mean_preset_is_the_previous_small():
    config = LLMFusionConfig.from_preset("small-mean", num_labels=3)
    assert [(b["name"], b["pooling"]) for b in config.backbones] == [
        ("llama", "layer_mean"),
        ("bert", "pooler"),
        ("roberta", "pooler"),
    ]
    assert config.feature_shapes == {"llama": (5, 576), "bert": (384,), "roberta": (768,)}


def test_round_trips(tmp_path):
    labels = {0: "sad", 1: "joyful"}
    config = LLMFusionConfig.from_preset("small", id2label=labels, sigma=0.5, threshold=0.3)
    config.backbones[0] = config.backbones[0].replace(revision="abc123")
    again = LLMFusionConfig.from_dict(config.to_dict())
    config.save_pretrained(tmp_path)
    loaded = LLMFusionConfig.from_pretrained(tmp_path)
    for other in (again, loaded):
        assert other.backbones == config.backbones
        assert other.id2label == labels
        assert (other.sigma, other.threshold) == (0.5, 0.3)
    assert PRESETS["small"]["backbones"][0].get("revision") is None  # the preset itself was not mutated


def test_temperature_round_trips_and_defaults_to_none(tmp_path):
    assert LLMFusionConfig().temperature == 1.0
    config = LLMFusionConfig.from_preset("small", num_labels=3, temperature=1.75)
    config.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["temperature"] == 1.75
    for other in (LLMFusionConfig.from_dict(config.to_dict()), LLMFusionConfig.from_pretrained(tmp_path)):
        assert other.temperature == 1.75
    # A config saved before the temperature existed reads as none (1.0).
    saved = json.loads((tmp_path / "config.json").read_text())
    del saved["temperature"]
    (tmp_path / "config.json").write_text(json.dumps(saved))
    assert LLMFusionConfig.from_pretrained(tmp_path).temperature == 1.0


def test_backbone_dtype_and_quantization_round_trip(tmp_path):
    backbones = copy.deepcopy(PRESETS["paper"]["backbones"])
    backbones[0].update(dtype="bfloat16", quantization="4bit")
    backbones[1]["dtype"] = "float16"
    config = LLMFusionConfig(backbones=backbones)
    config.save_pretrained(tmp_path)
    for other in (config, LLMFusionConfig.from_dict(config.to_dict()), LLMFusionConfig.from_pretrained(tmp_path)):
        assert [(b["dtype"], b["quantization"]) for b in other.backbones] == [
            ("bfloat16", "4bit"),
            ("float16", None),
            (None, None),  # not recorded: float32, full precision
        ]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbones": []}, "at least one backbone"),
        ({"backbones": [{"name": "x", "model": "m", "pooling": "max", "hidden_size": 8}]}, "unknown pooling 'max'"),
        ({"backbones": [{"name": "x", "model": "m", "hidden_size": 0}]}, "hidden_size must be a positive"),
        (
            {"backbones": [{"name": "x", "model": "m", "pooling": "pooler", "num_layers": 3, "hidden_size": 8}]},
            "needs pooling 'layer_mean'",
        ),
        ({"backbones": [{"name": "labels", "model": "m", "hidden_size": 8}]}, "'labels' must be a Python identifier"),
        ({"backbones": [{"name": "a", "model": "m", "hidden_size": 8}] * 2}, "must be unique"),
        ({"backbones": [{"name": "a", "model": "m", "hidden_size": 8, "width": 3}]}, "Unknown backbone keys"),
        (
            {"backbones": [{"name": "a", "model": "m", "hidden_size": 8, "dtype": "float64"}]},
            "unknown dtype 'float64'; allowed: float32, bfloat16, float16 or None",
        ),
        (
            {"backbones": [{"name": "a", "model": "m", "hidden_size": 8, "quantization": "3bit"}]},
            "unknown quantization '3bit'; allowed: 8bit, 4bit or None",
        ),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"sigma": 0}, "sigma must be positive"),
        ({"mlp_dims": [64, 0]}, "mlp_dims must be positive"),
        ({"temperature": 0}, "temperature must be a positive finite number, got 0"),
        ({"temperature": -1.5}, "temperature must be a positive finite number, got -1.5"),
        ({"temperature": float("inf")}, "temperature must be a positive finite number, got inf"),
        ({"temperature": float("nan")}, "temperature must be a positive finite number, got nan"),
        ({"temperature": "2"}, "temperature must be a positive finite number, got '2'"),
        ({"temperature": True}, "temperature must be a positive finite number, got True"),
    ],
)
def test_bad_values_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LLMFusionConfig(**kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown preset 'huge'; allowed: paper, small"):
        LLMFusionConfig.from_preset("huge")


# ---- layer choice, last-token pooling, prompt template ----


def test_presets_of_one_view_read_the_last_layers_by_default():
    from configuration_llm_fusion import layer_indices

    for preset in ("paper", "small-mean"):
        llama = LLMFusionConfig.from_preset(preset).backbone("llama")
        assert (llama["layers"], llama["template"]) == (None, None)
        assert layer_indices(llama) == [-1, -2, -3, -4, -5]


def test_layers_pooling_and_template_round_trip(tmp_path):
    llama = {key: value for key, value in PRESETS["small-mean"]["backbones"][0].items() if key != "num_layers"}
    llama.update(pooling="layer_last_token", layers=(-12, 0, 7), template=PROMPT_EOL)
    config = LLMFusionConfig(backbones=[llama, *PRESETS["small-mean"]["backbones"][1:]], num_labels=3)
    spec = config.backbone("llama")
    assert (spec["layers"], spec["num_layers"], spec["pooling"], spec["template"]) == (
        [-12, 0, 7],
        3,
        "layer_last_token",
        PROMPT_EOL,
    )
    assert config.feature_shapes["llama"] == (3, 576)
    config.save_pretrained(tmp_path)
    for other in (LLMFusionConfig.from_dict(config.to_dict()), LLMFusionConfig.from_pretrained(tmp_path)):
        assert other.backbones == config.backbones
    # An explicit num_layers that agrees with layers is accepted.
    assert LLMFusionConfig(backbones=[{**llama, "num_layers": 3}]).backbones[0]["num_layers"] == 3


def llm(**keys) -> dict:
    return {"backbones": [{"name": "x", "model": "m", "pooling": "layer_mean", "hidden_size": 8, **keys}]}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        (llm(layers=[]), r"layers is empty"),
        (llm(layers=[-1, -2], num_layers=5), r"num_layers=5 contradicts layers=\[-1, -2\] \(2 layers\)"),
        (llm(layers=[-1, -1]), r"layers \[-1, -1\] name a hidden state twice"),
        (llm(layers=[-1, 2.0]), r"layers must be integers"),
        (llm(layers=[True]), r"layers must be integers"),
        (llm(layers="-1,-2"), r"layers must be a list of hidden-state indices"),
        (
            llm(pooling="pooler", layers=[-1]),
            r"layers needs a layer pooling \(layer_mean, layer_last_token, layer_text_mean\), not 'pooler'",
        ),
        (llm(template="no slot"), r"template must be a string with exactly one \{text\} slot, got 'no slot'"),
        (llm(template="{text} and {text}"), r"exactly one \{text\} slot"),
        (llm(template=["{text}"]), r"exactly one \{text\} slot"),
        (
            llm(pooling="last_token"),
            r"unknown pooling 'last_token'; allowed: layer_mean, layer_last_token, layer_text_mean, pooler",
        ),
    ],
)
def test_bad_layer_choices_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LLMFusionConfig(**kwargs)


def test_every_pooling_is_described_with_its_feature_shape():
    for pooling in POOLINGS:
        spec = BackboneSpec.from_dict(
            {
                "name": "b",
                "model": "org/b",
                "pooling": pooling,
                "hidden_size": 48,
                "num_layers": 3 if pooling == "layer_mean" else 1,
            }
        )
        config = LLMFusionConfig(backbones=[spec], token_pooling="attention" if pooling == "tokens" else None)
        shape = " x ".join("tokens" if size is None else str(size) for size in config.feature_shapes["b"])
        assert describe_pooling(spec).endswith(f"-> {shape}"), pooling
    assert "mean over the text's tokens" in describe_pooling(PRESETS["paper"]["backbones"][0])
    assert "pooler_output" in describe_pooling(BackboneSpec.from_dict(PRESETS["paper"]["backbones"][1]))
