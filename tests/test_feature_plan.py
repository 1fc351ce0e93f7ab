"""One source of truth from text to features (`FeaturePlan`, `BackboneSpec`): extraction and the pipeline follow one
plan, a spec is normalised once, and the head sees the same numbers in serving as in training."""

import pytest
import torch
from transformers import pipeline

import modeling_llm_fusion
from configuration_llm_fusion import PRESETS, BackboneSpec, LLMFusionConfig
from helpers import write_csv_dataset
from llm_fusion_fec.data.splits import build_config
from llm_fusion_fec.features.metadata import load_features
from llm_fusion_fec.features.run import extract
from modeling_llm_fusion import FeaturePlan, LLMFusionForSequenceClassification
from pipeline_fec import save_for_pipeline

ROWS = [(f"text number {i} " + "word " * (i % 5) + "is about a day", i % 3) for i in range(12)]


def spy_on_extraction_plans(monkeypatch) -> list[list[tuple[str, ...]]]:
    """The passes of every `FeaturePlan` extraction builds, by view name."""
    plans = []

    class Spied(FeaturePlan):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            plans.append([tuple(spec.name for spec in views) for views in self.passes])

    monkeypatch.setattr(modeling_llm_fusion, "FeaturePlan", Spied)
    return plans


@pytest.mark.parametrize("preset", list(PRESETS))
def test_extraction_and_the_pipeline_plan_every_preset_alike(preset):
    # What extraction plans (the specs with their recorded compute dtype, the dtype given) and what a model of those
    # features serves with (its config read back from JSON, each backbone in its recorded dtype).
    specs = [BackboneSpec.from_dict(spec).replace(dtype="float32") for spec in PRESETS[preset]["backbones"]]
    extracted = FeaturePlan(specs, {}, torch.float32)
    config = LLMFusionConfig.from_dict(LLMFusionConfig(backbones=specs).to_dict())
    served = LLMFusionForSequenceClassification(config).feature_plan()
    assert served.passes == extracted.passes and served.models() == extracted.models()
    if preset == "small":  # the LLM's two views read one prompt: one pass, one loaded model
        assert [[spec.name for spec in views] for views in served.passes] == [
            ["llama", "llama_window"],
            ["bert"],
            ["roberta"],
        ]


def test_extraction_and_the_pipeline_follow_one_plan_for_choose_outputs(tiny_backbones, tmp_path, monkeypatch):
    data = write_csv_dataset(tmp_path / "data", ROWS * 3)
    result = extract(str(data), backbones=tiny_backbones, choose=True, output_dir=str(tmp_path / "out"), shard_size=16)
    assert result.metadata.choice is not None
    model = LLMFusionForSequenceClassification(build_config(result.metadata))
    served = [tuple(spec.name for spec in views) for views in model.feature_plan().passes]
    # The chosen views extracted afresh (the choice's own run cut some from the cached candidates, computing none).
    plans = spy_on_extraction_plans(monkeypatch)
    extract(str(data), backbones=result.metadata.backbones, output_dir=str(tmp_path / "again"), shard_size=16)
    assert plans == [served]
    assert len(served) == len({spec.template for spec in result.metadata.backbones[:2]}) + 2


def test_a_spec_is_normalised_once_per_run(tiny_backbones, tmp_path, monkeypatch):
    normalised = []
    from_dict = BackboneSpec.from_dict.__func__

    def counted(cls, spec):
        result = from_dict(cls, spec)
        if not isinstance(spec, BackboneSpec):
            normalised.append(result)
        return result

    monkeypatch.setattr(BackboneSpec, "from_dict", classmethod(counted))
    data = write_csv_dataset(tmp_path / "data", ROWS)
    overrides = [f"{spec['name']}={spec['model']}" for spec in tiny_backbones]
    extract(str(data), preset="small-mean", backbone=overrides, output_dir=str(tmp_path / "out"), shard_size=8)
    # Each spec is normalised where it is made (the preset's, with the overridden models, with the compute dtype
    # recorded, the all-layers column the cache may hold) and never again: no spec twice.
    assert len(set(normalised)) == len(normalised)
    assert [spec.name for spec in normalised if spec.dtype == "float32" and spec.num_layers < 7] == [
        "llama",
        "bert",
        "roberta",
    ]


@pytest.mark.parametrize("feature_dtype", ["float16", "float32"])
def test_the_pipeline_serves_the_head_what_training_read(tiny_backbones, tmp_path, feature_dtype):
    data = write_csv_dataset(tmp_path / "data", ROWS)
    out = tmp_path / "features"
    extract(str(data), backbones=tiny_backbones, output_dir=str(out), feature_dtype=feature_dtype, batch_size=32)
    features, metadata = load_features(out)
    torch.manual_seed(0)
    model = LLMFusionForSequenceClassification(build_config(metadata, fusion_dim=16, mlp_dims=[8])).eval()
    assert model.config.feature_dtype == feature_dtype
    test = features["test"].with_format("torch")[:]  # what the Trainer's evaluation feeds the head
    with torch.no_grad():
        trained = model(**{spec["name"]: test[spec["name"]] for spec in tiny_backbones}).logits.softmax(-1)
    save_for_pipeline(model, tmp_path / "model")
    # Read back as a user loads it (the config from JSON); this file's classes, so that the registered "fec" task
    # keeps this file's pipeline class for the other tests.
    served_model = LLMFusionForSequenceClassification.from_pretrained(tmp_path / "model")
    classify = pipeline("fec", model=served_model, device="cpu")
    answers = classify(list(test["text"]), top_k=None, batch_size=32)
    served = torch.tensor(
        [[{a["label"]: a["score"] for a in row}[name] for name in metadata.label_names] for row in answers]
    )
    torch.testing.assert_close(served, trained, atol=1e-6, rtol=0)
