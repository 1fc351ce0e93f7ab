import pytest

from configuration_llm_fusion import POOLINGS, PRESETS, LLMFusionConfig, describe_pooling, normalize_backbone


def test_defaults_are_the_papers():
    config = LLMFusionConfig()
    assert [(b["name"], b["model"], b["pooling"], b["num_layers"], b["hidden_size"]) for b in config.backbones] == [
        ("llama", "meta-llama/Llama-2-7b-chat-hf", "layer_mean", 5, 4096),
        ("bert", "bert-large-uncased", "pooler", 1, 1024),
        ("roberta", "roberta-large", "pooler", 1, 1024),
    ]
    assert (config.fusion_dim, config.sigma, config.dropout, config.mlp_dims) == (1024, 1.0, 0.5, [1024, 256])
    assert config.feature_shapes == {"llama": (5, 4096), "bert": (1024,), "roberta": (1024,)}


def test_small_preset():
    config = LLMFusionConfig.from_preset("small", num_labels=3)
    assert [b["model"] for b in config.backbones] == [
        "HuggingFaceTB/SmolLM2-135M-Instruct",
        "sentence-transformers/all-MiniLM-L6-v2",
        "sentence-transformers/all-mpnet-base-v2",
    ]
    assert config.feature_shapes == {"llama": (5, 576), "bert": (384,), "roberta": (768,)}
    assert config.num_labels == 3


def test_round_trips(tmp_path):
    labels = {0: "sad", 1: "joyful"}
    config = LLMFusionConfig.from_preset("small", id2label=labels, sigma=0.5, threshold=0.3)
    config.backbones[0]["revision"] = "abc123"
    again = LLMFusionConfig.from_dict(config.to_dict())
    config.save_pretrained(tmp_path)
    loaded = LLMFusionConfig.from_pretrained(tmp_path)
    for other in (again, loaded):
        assert other.backbones == config.backbones
        assert other.id2label == labels
        assert (other.sigma, other.threshold) == (0.5, 0.3)
    assert PRESETS["small"]["backbones"][0].get("revision") is None  # the preset itself was not mutated


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"backbones": []}, "at least one backbone"),
        ({"backbones": [{"name": "x", "model": "m", "pooling": "max", "hidden_size": 8}]}, "unknown pooling 'max'"),
        ({"backbones": [{"name": "x", "model": "m", "hidden_size": 0}]}, "hidden_size must be a positive"),
        ({"backbones": [{"name": "x", "model": "m", "pooling": "pooler", "num_layers": 3, "hidden_size": 8}]},
         "needs pooling 'layer_mean'"),
        ({"backbones": [{"name": "labels", "model": "m", "hidden_size": 8}]}, "'labels' must be a Python identifier"),
        ({"backbones": [{"name": "a", "model": "m", "hidden_size": 8}] * 2}, "must be unique"),
        ({"backbones": [{"name": "a", "model": "m", "hidden_size": 8, "width": 3}]}, "Unknown backbone keys"),
        ({"dropout": 1.0}, "dropout must be in"),
        ({"sigma": 0}, "sigma must be positive"),
        ({"mlp_dims": [64, 0]}, "mlp_dims must be positive"),
    ],
)  # fmt: skip
def test_bad_values_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        LLMFusionConfig(**kwargs)


def test_unknown_preset():
    with pytest.raises(ValueError, match="Unknown preset 'huge'; allowed: paper, small"):
        LLMFusionConfig.from_preset("huge")


def test_every_pooling_is_described_with_its_feature_shape():
    for pooling in POOLINGS:
        spec = normalize_backbone({"name": "b", "model": "org/b", "pooling": pooling, "hidden_size": 48,
                                   "num_layers": 3 if pooling == "layer_mean" else 1})  # fmt: skip
        shape = " x ".join(map(str, LLMFusionConfig(backbones=[spec]).feature_shapes["b"]))
        assert describe_pooling(spec).endswith(f"-> {shape}"), pooling
    assert "mean over the text's tokens" in describe_pooling(PRESETS["paper"]["backbones"][0])
    assert "pooler_output" in describe_pooling(normalize_backbone(PRESETS["paper"]["backbones"][1]))
