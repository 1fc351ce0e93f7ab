"""The "fec" pipeline: loaded from a saved folder in a fresh process, scores equal to the model's, behaves like
transformers' text-classification pipeline, and answers or clearly refuses whatever users send."""

from __future__ import annotations

import csv
import json
import re
import sys
import types
from typing import Any

import pytest
import torch
from transformers import pipeline
from transformers.pipelines.text_classification import ClassificationFunction, TextClassificationPipeline

from configuration_llm_fusion import BackboneSpec
from helpers import REPO, run_program, tiny_fusion_model
from modeling_llm_fusion import LLMFusionForSequenceClassification
from pipeline_fec import TASK_NOTE, TASKS, FECPipeline, save_for_pipeline

EMOTIONS = ["sad", "joyful", "angry", "afraid", "surprised", "proud", "lonely", "grateful"]
TEXTS = ["i finally got the job i wanted", "my dog died last week", "someone broke into my car", "what a surprise!"]


def model_logits(model: LLMFusionForSequenceClassification, texts: list[str]) -> torch.Tensor:
    """The model's logits on the features extracted from `texts`: the reference the pipeline must reproduce."""
    with torch.no_grad():
        return model(**model.extract_features(texts)).logits.float()


@pytest.fixture(scope="module")
def single_label_model(tiny_backbones) -> LLMFusionForSequenceClassification:
    return tiny_fusion_model(tiny_backbones, EMOTIONS, "single_label_classification")


@pytest.fixture(scope="module")
def multi_label_model(tiny_backbones) -> LLMFusionForSequenceClassification:
    model = tiny_fusion_model(tiny_backbones, EMOTIONS, "multi_label_classification")
    # A threshold in the middle of the scores, so that some labels are predicted and some are not.
    model.config.threshold = model_logits(model, TEXTS).sigmoid().median().item()
    return model


@pytest.fixture(scope="module", params=["single_label_classification", "multi_label_classification"])
def model(request, single_label_model, multi_label_model) -> LLMFusionForSequenceClassification:
    return single_label_model if request.param == "single_label_classification" else multi_label_model


@pytest.fixture(scope="module")
def ed_texts(data_dir) -> list[str]:
    with open(data_dir / "ED" / "test.csv", newline="", encoding="utf-8") as file:
        return [row["text"] for _, row in zip(range(12), csv.DictReader(file))]


def test_saved_model_loads_in_fresh_process_with_trust_remote_code(
    tmp_path, tiny_backbones, single_label_model, ed_texts
):
    folder, folder_from_pipe = tmp_path / "saved", tmp_path / "saved_by_pipeline"
    save_for_pipeline(single_label_model, folder)
    pipeline("fec", model=single_label_model, device="cpu").save_pretrained(folder_from_pipe)
    for saved in (folder, folder_from_pipe):
        for code_file in ("pipeline_fec.py", "modeling_llm_fusion.py", "configuration_llm_fusion.py"):
            assert (saved / code_file).read_text() == (REPO / code_file).read_text()
    configs = [json.loads((saved / "config.json").read_text()) for saved in (folder, folder_from_pipe)]
    assert configs[0]["custom_pipelines"] == configs[1]["custom_pipelines"]
    assert configs[0]["custom_pipelines"]["fec"]["impl"] == "pipeline_fec.FECPipeline"
    # The Hub's snippet for a text-classification model names that task: it must reach the same pipeline.
    assert configs[0]["custom_pipelines"]["text-classification"] == configs[0]["custom_pipelines"]["fec"]

    inputs = {
        "folders": {"saved": str(folder), "saved_by_pipeline": str(folder_from_pipe)},
        "backbone_paths": {spec["name"]: spec["model"] for spec in tiny_backbones},
        "texts": ed_texts,
    }
    answers = run_program("saved_pipelines.py", json.dumps(inputs))

    probabilities = model_logits(single_label_model, ed_texts).softmax(-1)
    for name in ("saved", "saved_by_pipeline"):
        for text_answers, expected in zip(answers[name]["all"], probabilities):
            assert [a["label"] for a in text_answers] == [EMOTIONS[i] for i in expected.argsort(descending=True)]
            scores = torch.tensor([a["score"] for a in sorted(text_answers, key=lambda a: EMOTIONS.index(a["label"]))])
            torch.testing.assert_close(scores, expected, atol=1e-4, rtol=0)
        assert_same_answers(answers[name]["one"], answers[name]["all"][0][:1])  # alone vs in a padded batch
    # pipeline("text-classification", ...), as the Hub writes it, is this pipeline: same answers as "fec".
    assert answers["hub_snippet"]["class"] == "FECPipeline"
    assert_same_answers(answers["hub_snippet"]["one"], answers["saved"]["one"])
    for hub_answer, fec_answer in zip(answers["hub_snippet"]["all"], answers["saved"]["all"], strict=True):
        assert_same_answers(hub_answer, fec_answer)
    # Without a task transformers refuses to guess, naming both tasks: what TASK_NOTE tells users.
    assert "multiple tasks available" in answers["inferred_task"]
    assert all(task in answers["inferred_task"] for task in TASKS)
    assert all(f'"{task}"' in TASK_NOTE for task in TASKS) and "RuntimeError" in TASK_NOTE
    assert answers["bfloat16"] == ["torch.bfloat16"] * 4
    refused_silently, refused, offline = answers["errors"]
    for message in (refused_silently, refused):
        assert "trust_remote_code=True" in message
    # Offline, the Hub ids in the config cannot be reached: the error names the backbone (backbone_paths fixes it).
    assert "Backbone 'llama' could not be loaded from 'fec-tests/tiny-llama'" in offline


def transformers_answer(model, logits: torch.Tensor, **kwargs) -> dict | list[dict]:
    """What transformers' text-classification pipeline answers for these logits (its postprocess, same config)."""
    stub = types.SimpleNamespace(model=types.SimpleNamespace(config=model.config))
    return TextClassificationPipeline.postprocess(stub, {"logits": logits.unsqueeze(0)}, **kwargs)


def assert_same_answers(actual: dict | list[dict], expected: dict | list[dict]) -> None:
    actual, expected = (actual, expected) if isinstance(actual, list) else ([actual], [expected])
    assert [a["label"] for a in actual] == [e["label"] for e in expected]
    for a, e in zip(actual, expected):
        assert type(a["score"]) is float and a["score"] == pytest.approx(e["score"], rel=1e-5, abs=1e-6)


@pytest.mark.parametrize("function_to_apply", [None, "softmax", "sigmoid", "none"])
@pytest.mark.parametrize("top_k", [1, 3, None, 100])
def test_top_k_and_function_to_apply_as_text_classification(model, function_to_apply, top_k):
    pipe = pipeline("fec", model=model, device="cpu")
    answers = pipe(TEXTS, top_k=top_k, function_to_apply=function_to_apply, batch_size=3)
    function = None if function_to_apply is None else ClassificationFunction[function_to_apply.upper()]
    for answer, logits in zip(answers, model_logits(model, TEXTS)):
        expected = transformers_answer(model, logits, function_to_apply=function, top_k=top_k, _legacy=False)
        assert_same_answers(answer, expected)


def test_single_label_default_is_the_top_label(single_label_model):
    pipe = pipeline("fec", model=single_label_model, device="cpu")
    logits = model_logits(single_label_model, TEXTS)
    # As transformers' pipeline, a lone text's answer comes in a list; a list of texts gets one dict per text.
    answer = pipe(TEXTS[0])
    assert isinstance(answer, list) and len(answer) == 1
    assert_same_answers(answer, [transformers_answer(single_label_model, logits[0])])
    for answer, text_logits in zip(pipe(TEXTS), logits):
        assert_same_answers(answer, transformers_answer(single_label_model, text_logits))


def test_multi_label_default_is_the_labels_above_threshold(multi_label_model):
    pipe = pipeline("fec", model=multi_label_model, device="cpu")
    threshold = multi_label_model.config.threshold
    all_logits = model_logits(multi_label_model, TEXTS)
    answers, raw_answers = pipe(TEXTS, batch_size=4), pipe(TEXTS, function_to_apply="none")
    assert pipe(TEXTS[1]) == answers[1]
    for answer, raw_answer, logits in zip(answers, raw_answers, all_logits):
        scores = logits.sigmoid()
        predicted = sorted((i for i in range(len(EMOTIONS)) if scores[i] > threshold), key=lambda i: -scores[i])
        assert [a["label"] for a in answer] == [EMOTIONS[i] for i in predicted]
        assert [a["score"] for a in answer] == pytest.approx([scores[i].item() for i in predicted], abs=1e-6)
        # Reporting logits instead of probabilities does not change which labels the model predicts.
        assert [a["label"] for a in raw_answer] == [a["label"] for a in answer]
        assert [a["score"] for a in raw_answer] == pytest.approx([logits[i].item() for i in predicted], abs=1e-5)
    assert 0 < sum(map(len, answers)) < len(TEXTS) * len(EMOTIONS)


def test_a_threshold_per_call_sets_which_labels_a_multi_label_model_predicts(multi_label_model, single_label_model):
    pipe = pipeline("fec", model=multi_label_model, device="cpu")
    scores = model_logits(multi_label_model, TEXTS).sigmoid()
    for threshold in (0.0, scores.median().item(), 1.0):
        answers = pipe(TEXTS, threshold=threshold)
        assert [len(answer) for answer in answers] == (scores > threshold).sum(-1).tolist()
    assert pipe(TEXTS) == pipe(TEXTS, threshold=multi_label_model.config.threshold)
    for bad in (-0.1, 1.5, "0.5", True):
        with pytest.raises(ValueError, match="threshold must be a number from 0 to 1"):
            pipe(TEXTS, threshold=bad)
    with pytest.raises(ValueError, match="threshold applies to multi-label models only"):
        pipeline("fec", model=single_label_model, device="cpu")(TEXTS, threshold=0.5)


def test_batches_streams_and_lists_give_the_same_answers(single_label_model):
    pipe = pipeline("fec", model=single_label_model, device="cpu")
    one_by_one = pipe(TEXTS, top_k=None)
    for answers in (pipe(TEXTS, top_k=None, batch_size=3), list(pipe((t for t in TEXTS), top_k=None, batch_size=2))):
        for answer, expected in zip(answers, one_by_one):
            assert_same_answers(answer, expected)
    assert pipe(tuple(TEXTS)) == pipe(TEXTS)
    assert pipe([]) == []


@pytest.mark.parametrize(
    "inputs, error, message",
    [
        ("", ValueError, "position 0 is empty or only whitespace: ''"),
        (" \n\t\u00a0", ValueError, "position 0 is empty or only whitespace"),
        (None, TypeError, "position 0 is NoneType"),
        (42, TypeError, r"position 0 is int \(42\)"),
        (2.5, TypeError, r"position 0 is float \(2.5\)"),
        ({"text": "hello"}, TypeError, "position 0 is dict"),
        (["fine", None, "fine"], TypeError, "position 1 is NoneType"),
        (["fine", "fine", "   "], ValueError, "position 2 is empty or only whitespace"),
        (["fine", 7], TypeError, r"position 1 is int \(7\)"),
        ("broken emoji \ud83d", ValueError, "position 0 is not valid Unicode"),
    ],
)
def test_bad_inputs_are_refused_naming_input_and_position(single_label_model, inputs, error, message):
    pipe = pipeline("fec", model=single_label_model, device="cpu")
    with pytest.raises(error, match=message):
        pipe(inputs)


def test_a_bad_text_in_a_stream_is_refused_naming_its_position_in_the_stream(single_label_model):
    pipe = pipeline("fec", model=single_label_model, device="cpu")
    answers = pipe((text for text in ["fine", "fine", "fine", None]), batch_size=2)
    assert next(answers)["label"] in EMOTIONS  # the first batch is answered: the stream is checked as it is drawn
    with pytest.raises(TypeError, match="Text at position 3 is NoneType"):
        list(answers)


@pytest.mark.parametrize(
    "text",
    ["😭😭😭", "我今天终于找到工作了", "أنا سعيد جدا", "Ich bin so glücklich!", "\u200b", "[PAD] <unk> </s>", "a"],
)
def test_unusual_texts_get_a_prediction(single_label_model, text):
    (answer,) = pipeline("fec", model=single_label_model, device="cpu")(text)
    assert answer["label"] in EMOTIONS and 0 < answer["score"] < 1


def test_long_texts_are_truncated_to_max_length(single_label_model):
    pipe = pipeline("fec", model=single_label_model, device="cpu")
    long_text = "i finally got the job i wanted and i am so happy " * 500  # thousands of tokens, max_length is 64
    # Everything after the first max_length tokens is cut: appending more text changes nothing.
    assert pipe(long_text, top_k=None) == pipe(long_text + " my dog died last week " * 50, top_k=None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"top_k": 0}, "top_k must be a positive integer or None"),
        ({"top_k": "3"}, "top_k must be a positive integer or None"),
        ({"function_to_apply": "relu"}, "function_to_apply must be one of"),
    ],
)
def test_bad_parameters_are_refused(single_label_model, kwargs, message):
    pipe = pipeline("fec", model=single_label_model, device="cpu")
    with pytest.raises(ValueError, match=message):
        pipe(TEXTS[0], **kwargs)


def test_pipeline_class_is_registered_for_the_fec_task(single_label_model):
    assert isinstance(pipeline("fec", model=single_label_model, device="cpu"), FECPipeline)


class TextClassificationOnFusionLogits(TextClassificationPipeline):
    """transformers' own text-classification pipeline (its `__call__`, parameters and `postprocess`) run on the fusion
    model's logits: what the "fec" pipeline must answer, shape and numbers."""

    def preprocess(self, inputs: str, **tokenizer_kwargs) -> dict[str, list[str]]:
        return {"texts": [inputs]}

    def _forward(self, model_inputs: dict[str, list[str]]) -> dict[str, torch.Tensor]:
        return {"logits": model_logits(self.model, model_inputs["texts"])}


def assert_same_shape_and_answers(actual: Any, expected: Any) -> None:
    """The same nesting of lists and dicts, the same labels, the same scores."""
    assert type(actual) is type(expected), (actual, expected)
    if isinstance(expected, list):
        assert len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_same_shape_and_answers(a, e)
    else:
        assert_same_answers(actual, expected)


@pytest.mark.parametrize("inputs", [TEXTS[0], TEXTS], ids=["string", "list"])
@pytest.mark.parametrize("kwargs", [{}, {"top_k": 1}, {"top_k": 3}, {"top_k": None}], ids=str)
def test_answers_have_the_shape_of_text_classification(single_label_model, inputs, kwargs):
    reference = TextClassificationOnFusionLogits(model=single_label_model, task="text-classification", device="cpu")
    pipe = pipeline("fec", model=single_label_model, device="cpu")
    assert_same_shape_and_answers(pipe(inputs, **kwargs), reference(inputs, **kwargs))


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, "4", True])
def test_bad_batch_size_is_refused(single_label_model, batch_size):
    message = f"batch_size must be a positive integer, got {batch_size!r}"
    pipe = pipeline("fec", model=single_label_model, device="cpu")
    for inputs in (TEXTS[:2], TEXTS[0], (t for t in TEXTS)):
        with pytest.raises(ValueError, match=re.escape(message)):
            pipe(inputs, batch_size=batch_size)
    with pytest.raises(ValueError, match=re.escape(message)):
        pipeline("fec", model=single_label_model, device="cpu", batch_size=batch_size)


def test_backbones_compute_in_their_recorded_dtype(tiny_backbones):
    """A model whose features were extracted in bfloat16 is served in bfloat16, unless `dtype=` says otherwise."""
    config = tiny_fusion_model(tiny_backbones, EMOTIONS, "single_label_classification").config
    config.backbones = [spec.replace(dtype="bfloat16") for spec in config.backbones]
    paths = {spec["name"]: spec["model"] for spec in tiny_backbones}

    def served(**kwargs) -> tuple[LLMFusionForSequenceClassification, set[torch.dtype], list]:
        torch.manual_seed(0)
        model = LLMFusionForSequenceClassification(config).eval()
        pipe = pipeline("fec", model=model, device="cpu", backbone_paths=paths, **kwargs)
        params = {p.dtype for b in model.load_backbones().values() for p in b.model.parameters()}
        return model, params, pipe(TEXTS, top_k=None)

    model, params, answers = served()
    assert params == {torch.bfloat16} and model.dtype == torch.float32  # the head keeps its saved dtype
    # The same answers as the model with its backbones loaded in bfloat16 by hand.
    reference = LLMFusionForSequenceClassification(config).eval()
    reference.load_state_dict(model.state_dict())
    reference.load_backbones(paths, device="cpu", dtype=torch.bfloat16)
    for answer, logits in zip(answers, model_logits(reference, TEXTS), strict=True):
        assert_same_answers(answer, transformers_answer(reference, logits, top_k=None, _legacy=False))
    _, params, _ = served(dtype=torch.float32)
    assert params == {torch.float32}


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_quantized_backbone_without_bitsandbytes_or_gpu_is_refused(tiny_backbones, monkeypatch, quantization):
    config = tiny_fusion_model(tiny_backbones, EMOTIONS, "single_label_classification").config
    config.backbones[0] = config.backbones[0].replace(quantization=quantization)
    paths = {spec["name"]: spec["model"] for spec in tiny_backbones}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    bits = quantization.removesuffix("bit")
    message = f"{bits}-bit quantization needs bitsandbytes and a CUDA GPU: pip install bitsandbytes"
    with pytest.raises(ValueError, match=re.escape(message)):
        pipeline("fec", model=LLMFusionForSequenceClassification(config), device="cpu", backbone_paths=paths)
    assert "bitsandbytes" not in sys.modules  # asking for it never imports it on a machine that cannot use it


def test_a_folder_given_for_one_view_serves_every_view_of_that_model(tiny_backbones):
    hub_id = "HuggingFaceTB/SmolLM2-135M-Instruct"  # not on this machine: the folder given by name must be used
    llm = {**tiny_backbones[0], "model": hub_id}
    views = [llm, {**llm, "name": "llama_window", "pooling": "layer_text_mean", "template": "Say: {text}"}]
    config = tiny_fusion_model(tiny_backbones[:2], EMOTIONS, "single_label_classification").config
    config.backbones = [BackboneSpec.from_dict(spec) for spec in (*views, tiny_backbones[1])]
    model = LLMFusionForSequenceClassification(config).eval()
    pipe = pipeline("fec", model=model, device="cpu", backbone_paths={"llama": tiny_backbones[0]["model"]})
    loaded = model.load_backbones()
    assert loaded["llama"].model is loaded["llama_window"].model  # one folder, one load
    assert len(pipe(TEXTS[:2])) == 2


def test_scores_are_the_softmax_of_the_trainers_logits_at_the_models_temperature(model, tmp_path, monkeypatch):
    """The temperature training fitted (`config.temperature`) divides the logits the Trainer scored before the
    softmax or sigmoid the pipeline reports; the top label stays, and multi-label decisions read those scores."""
    from datasets import Dataset
    from transformers import TrainingArguments

    from llm_fusion_fec.training.trainer import FusionTrainer

    features = {name: value.numpy() for name, value in model.extract_features(TEXTS).items()}
    args = TrainingArguments(tmp_path, report_to="none", use_cpu=True, remove_unused_columns=False)
    trainer_logits = torch.from_numpy(
        FusionTrainer(model=model, args=args).predict(Dataset.from_dict(features)).predictions
    )
    multi_label = model.config.problem_type == "multi_label_classification"
    untempered = pipeline("fec", model=model, device="cpu")(TEXTS, top_k=None)
    monkeypatch.setattr(model.config, "temperature", 2.5)
    pipe = pipeline("fec", model=model, device="cpu")
    expected = (trainer_logits / 2.5).sigmoid() if multi_label else (trainer_logits / 2.5).softmax(-1)
    for answer, before, row in zip(pipe(TEXTS, top_k=None), untempered, expected, strict=True):
        scores = torch.tensor([a["score"] for a in sorted(answer, key=lambda a: EMOTIONS.index(a["label"]))])
        torch.testing.assert_close(scores, row.float(), atol=1e-5, rtol=0)
        assert [a["label"] for a in answer] == [a["label"] for a in before]  # the ranking does not move
    if multi_label:
        threshold = model.config.threshold
        assert model.decide(trainer_logits).tolist() == (expected > threshold).int().tolist()
        for answer, row in zip(pipe(TEXTS), expected, strict=True):
            assert sorted(a["label"] for a in answer) == sorted(
                EMOTIONS[i] for i in range(len(row)) if row[i] > threshold
            )
