"""The ONNX Runtime backends (a backbone's `backend`: `"onnx"`, `"onnx-int8"`) and `--dtype auto`: the same features
as PyTorch's float32 (within rounding, or within int8's stated drift) for every view kind, exported once and reused,
recorded by extraction and served by the pipeline with the backend the head was trained on, refused in one line
where the runtime is missing or another backend is asked for."""

from __future__ import annotations

import csv
import importlib.util
import json
import re

import pytest
import torch
from transformers import pipeline

import modeling_llm_fusion
from configuration_llm_fusion import PRESETS, PROMPT_EOL, BackboneSpec
from helpers import CORPUS, write_csv_dataset
from llm_fusion_fec.data.splits import build_config
from llm_fusion_fec.features import extraction
from llm_fusion_fec.features.metadata import load_features
from llm_fusion_fec.features.run import extract
from llm_fusion_fec.inference.loading import check_backend
from llm_fusion_fec.publishing.saving import runtime_requirements
from modeling_llm_fusion import FeaturePlan, LLMFusionForSequenceClassification, OnnxBackbone
from pipeline_fec import save_for_pipeline

TEXTS = [*CORPUS[:5], "a much longer text than the others, " * 4, "hi"]
ROWS = [(f"text number {i} " + "word " * (i % 5) + "is about a day", i % 3) for i in range(12)]

INT8_COSINE = 0.95
"""The least cosine of an `"onnx-int8"` feature to float32's on the tiny random backbones (measured: 0.968 at worst,
the LLM's mean over its last layers; every other view above 0.99). Random weights are int8's worst case; the real
small trio's drift is measured by bench/bench_backend.py."""


@pytest.fixture(autouse=True, scope="module")
def onnx_cache(tmp_path_factory):
    """Exports go to a temporary `HF_HOME`, shared by this file's tests (each model is exported once)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("HF_HOME", str(tmp_path_factory.mktemp("hf_home")))
        yield


def every_view(tiny_backbones: list[dict]) -> list[BackboneSpec]:
    """A view of every kind the presets use (and a token view), on the tiny backbones."""
    llama, bert, roberta = tiny_backbones
    views = [
        {**llama, "name": "last", "pooling": "layer_last_token", "layers": [-3], "template": PROMPT_EOL},
        {**llama, "name": "window", "pooling": "layer_text_mean", "layers": [1, 2], "template": PROMPT_EOL},
        {**llama, "name": "window_tokens", "pooling": "tokens", "layers": [1, 2], "template": PROMPT_EOL},
        {**llama, "name": "mean"},
        {**bert, "name": "bert_pooler"},
        {**bert, "name": "bert_mean", "pooling": "mean"},
        {**bert, "name": "bert_cls", "pooling": "cls"},
        {**roberta, "name": "roberta_mean", "pooling": "mean"},
    ]
    return [
        BackboneSpec.from_dict({k: v for k, v in view.items() if k != "num_layers" or "layers" not in view})
        for view in views
    ]


def features(specs: list[BackboneSpec], backend: str | None, batch_size: int = 4) -> dict[str, torch.Tensor]:
    plan = FeaturePlan([spec.replace(backend=backend) for spec in specs])
    loaded = {view.spec.name: view for views in plan.models() for view in plan.load(views, "cpu")}
    return plan.features(loaded, TEXTS, batch_size)


@pytest.fixture(scope="module")
def float32_features(tiny_backbones) -> dict[str, torch.Tensor]:
    return features(every_view(tiny_backbones), None)


@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_every_view_kind_gives_float32_features_through_onnx_runtime(tiny_backbones, float32_features, backend):
    got = features(every_view(tiny_backbones), backend)
    assert list(got) == list(float32_features)
    for name, expected in float32_features.items():
        assert got[name].shape == expected.shape, name
        if name.endswith("_mask"):
            assert torch.equal(got[name], expected)
        elif backend == "onnx":  # the same computation in another runtime: equal within float32 rounding
            torch.testing.assert_close(got[name], expected, atol=1e-5, rtol=1e-5)
        else:
            rows = expected.flatten(0, -2), got[name].flatten(0, -2)
            cosine = torch.nn.functional.cosine_similarity(*rows, dim=-1)[rows[0].norm(dim=-1) > 0]
            assert cosine.min() > INT8_COSINE, (name, cosine.min())
            assert not torch.equal(*rows)  # int8 weights indeed: not float32's numbers


def test_the_export_is_cached_and_reused_and_keeps_only_the_outputs_read(tiny_backbones, monkeypatch):
    views = every_view(tiny_backbones)[:2]  # the LLM's last token at -3 and its text's mean at 1 and 2: layers 1..4
    features(views, "onnx")
    exports = []
    monkeypatch.setattr(modeling_llm_fusion, "export_onnx", lambda *args: exports.append(args))
    again = features(views, "onnx")  # loaded from the cache: nothing exported
    assert exports == []
    model = (
        FeaturePlan([spec.replace(backend="onnx") for spec in views])
        .load([spec.replace(backend="onnx") for spec in views], "cpu")[0]
        .model
    )
    assert isinstance(model, OnnxBackbone)
    assert model.output_names == ["hidden_states.1", "hidden_states.2", "hidden_states.4"]
    assert again["last"].shape == (len(TEXTS), 1, 32)
    cache = modeling_llm_fusion.onnx_cache_dir()
    assert not [path for path in cache.iterdir() if path.name.startswith(".")]  # no export left half done


def test_int8_keeps_the_feed_forward_output_products_in_float32(tiny_backbones):
    import onnx

    spec = BackboneSpec.from_dict({**tiny_backbones[0], "backend": "onnx-int8"})
    path = FeaturePlan([spec]).load([spec], "cpu")[0].model.path
    nodes = {node.name: node.op_type for node in onnx.load(str(path)).graph.node}
    kept = sorted(name for name, op in nodes.items() if op == "MatMul" and "/mlp/down_proj/" in name)
    assert len(kept) == 6  # one a layer
    assert any("/self_attn/q_proj/" in name and "MatMulInteger" in op for name, op in nodes.items())


def test_missing_onnxruntime_is_refused_in_one_line(tiny_backbones, monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else find_spec(name, *a)
    )
    spec = BackboneSpec.from_dict({**tiny_backbones[1], "backend": "onnx-int8"})
    message = (
        "Backbone 'bert' runs with backend 'onnx-int8', which needs onnxruntime and onnx: "
        'pip install "llm-fusion-fec[onnx]" (or pip install onnxruntime onnx).'
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        FeaturePlan([spec]).load([spec], "cpu")


def test_onnx_backends_refuse_another_dtype_quantization_and_device(tiny_backbones):
    spec = {**tiny_backbones[1], "backend": "onnx"}
    with pytest.raises(ValueError, match=r"backend 'onnx' computes in float32 \(ONNX Runtime\), not with dtype 'bf"):
        BackboneSpec.from_dict({**spec, "dtype": "bfloat16"})
    with pytest.raises(ValueError, match=r"unknown backend 'tensorrt'; allowed: torch, onnx, onnx-int8"):
        BackboneSpec.from_dict({**spec, "backend": "tensorrt"})
    assert BackboneSpec.from_dict({**spec, "backend": "torch"}).backend is None
    loaded = BackboneSpec.from_dict(spec)
    with pytest.raises(ValueError, match=r"Backbone 'bert': backend 'onnx' runs on the CPU, not on cuda"):
        FeaturePlan([loaded]).load([loaded], "cuda")


@pytest.mark.parametrize("amx", [True, False])
def test_dtype_auto_is_bfloat16_only_on_a_cpu_with_amx(monkeypatch, caplog, amx):
    monkeypatch.setattr(extraction, "cpu_has_amx", lambda: amx)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    extraction.cpu_auto_dtype.cache_clear()
    expected = "bfloat16" if amx else "float32"
    for dtype in (None, "auto"):
        assert extraction._device_and_dtype(None, dtype, 0, 1) == ("cpu", expected)
    assert extraction._device_and_dtype(None, None, 0, 1, backend="onnx-int8") == ("cpu", "float32")
    assert extraction._device_and_dtype("cuda", "auto", 0, 1) == ("cuda", "bfloat16")
    said = [record.message for record in caplog.records if "--dtype auto" in record.message]
    assert len(said) == 1 and f"compute in {expected} (this CPU has {'' if amx else 'no '}AMX" in said[0]
    extraction.cpu_auto_dtype.cache_clear()


CPU_HAS_AMX = extraction.cpu_has_amx  # the function itself: conftest's float32_auto_dtype replaces it while tests run


def test_amx_is_read_from_the_cpu_flags(monkeypatch, tmp_path):
    real_open = open

    def cpuinfo(flags: str):
        (tmp_path / "cpuinfo").write_text(f"processor\t: 0\nflags\t\t: {flags}\n")
        return lambda path, *a, **k: real_open(tmp_path / "cpuinfo" if path == "/proc/cpuinfo" else path, *a, **k)

    monkeypatch.setattr("builtins.open", cpuinfo("fpu avx2 fma amx_tile amx_bf16 amx_int8"))
    assert CPU_HAS_AMX()
    monkeypatch.setattr("builtins.open", cpuinfo("fpu avx2 fma avx512_bf16"))
    assert not CPU_HAS_AMX()


def test_extraction_records_the_backend_and_the_pipeline_serves_with_it(tiny_backbones, tmp_path):
    data = write_csv_dataset(tmp_path / "data", ROWS)
    out = tmp_path / "features"
    extract(str(data), backbones=tiny_backbones, output_dir=str(out), backend="onnx-int8", batch_size=32)
    features_, metadata = load_features(out)
    assert {spec.backend for spec in metadata.backbones} == {"onnx-int8"} and metadata.compute_dtype == "float32"
    torch.manual_seed(0)
    model = LLMFusionForSequenceClassification(build_config(metadata, fusion_dim=16, mlp_dims=[8])).eval()
    test = features_["test"].with_format("torch")[:]  # what the Trainer's evaluation feeds the head
    with torch.no_grad():
        trained = model(**{spec["name"]: test[spec["name"]] for spec in tiny_backbones}).logits.softmax(-1)
    save_for_pipeline(model, tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "config.json").read_text())
    assert [spec["backend"] for spec in saved["backbones"]] == ["onnx-int8"] * 3
    assert runtime_requirements(saved["backbones"])[-2:] == ["onnxruntime>=1.20", "onnx>=1.16"]  # an Endpoint's
    served_model = LLMFusionForSequenceClassification.from_pretrained(tmp_path / "model")
    classify = pipeline("fec", model=served_model, device="cpu")
    assert all(isinstance(view.model, OnnxBackbone) for view in served_model.load_backbones().values())
    # The same texts in the same batch as extraction's: int8's activation scales are a batch's, so equal numbers.
    answers = classify(list(test["text"]), top_k=None, batch_size=32)
    served = torch.tensor(
        [[{a["label"]: a["score"] for a in row}[name] for name in metadata.label_names] for row in answers]
    )
    torch.testing.assert_close(served, trained, atol=1e-6, rtol=0)


def test_another_backend_than_the_recorded_one_is_refused(tiny_backbones):
    specs = [BackboneSpec.from_dict({**spec, "backend": "onnx-int8"}) for spec in tiny_backbones]
    config = LLMFusionForSequenceClassification(build_config_of(specs)).config
    check_backend(config, None)
    check_backend(config, "onnx-int8")
    message = (
        "--backend torch: this model's backbones were extracted with another backend (llama (onnx-int8), "
        "bert (onnx-int8), roberta (onnx-int8)), and a model is served with the backend its head was trained on; "
        "leave --backend out."
    )
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        check_backend(config, "torch")
    with pytest.raises(ValueError, match=r"Unknown --backend 'int8'; allowed: torch, onnx, onnx-int8"):
        check_backend(config, "int8")
    assert runtime_requirements(tiny_backbones)[-1] == "accelerate"  # PyTorch alone needs no ONNX Runtime


def build_config_of(specs: list[BackboneSpec]):
    from configuration_llm_fusion import LLMFusionConfig

    return LLMFusionConfig(backbones=specs, fusion_dim=16, mlp_dims=[8], num_labels=3)


REAL_INT8_COSINE = (0.98, 0.93)
"""The least mean and the least single cosine of an `"onnx-int8"` feature of the real small trio to float32's
(measured on 640 ED test texts, bench/results/backend_cpu.txt: means 0.986-0.999, the least 0.952, mpnet's)."""


@pytest.mark.real
def test_the_small_trio_through_onnx_runtime(small_models, data_dir):
    """The `small` preset's views of the real backbones: float32's features through `onnx` (within rounding) and
    within the measured drift through `onnx-int8`."""
    with open(data_dir / "ED" / "test.csv", newline="", encoding="utf-8") as file:
        texts = [row["text"] for _, row in zip(range(32), csv.DictReader(file))]
    specs = [BackboneSpec.from_dict(spec) for spec in PRESETS["small"]["backbones"]]
    paths = {**small_models, "llama_window": small_models["llama"]}
    by_backend = {}
    for backend in (None, "onnx", "onnx-int8"):
        plan = FeaturePlan([spec.replace(backend=backend) for spec in specs], paths)
        loaded = {view.spec.name: view for views in plan.models() for view in plan.load(views, "cpu")}
        by_backend[backend] = plan.features(loaded, texts, 16)
    for name, expected in by_backend[None].items():
        for backend, (least_mean, least) in (("onnx", (0.99999, 0.9999)), ("onnx-int8", REAL_INT8_COSINE)):
            cosine = torch.nn.functional.cosine_similarity(by_backend[backend][name].float(), expected.float(), dim=-1)
            assert cosine.mean() >= least_mean and cosine.min() >= least, (name, backend, cosine.mean(), cosine.min())
