"""The `"fec"` pipeline: texts in, emotions out, through the backbones' feature code and the fusion head.

```python
from transformers import pipeline

classifier = pipeline("text-classification", model="org/llm-fusion-ed", trust_remote_code=True)  # or "fec"
classifier("I finally got the job!")  # [{"label": "joyful", "score": 0.91}]
```

This file travels with the model (`save_for_pipeline` copies it and names it in `config.json`'s
`custom_pipelines` for both tasks, `"fec"` and `"text-classification"`), so `pipeline()` finds it with
`trust_remote_code=True` wherever the model is.
"""

from __future__ import annotations

import itertools
import os
import shutil
import types
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from transformers import AutoModelForSequenceClassification, Pipeline, PreTrainedModel
from transformers.pipelines import PIPELINE_REGISTRY

try:
    from .modeling_llm_fusion import decide, length_sorted_batches, validate_text, validate_texts
except ImportError:  # imported from the repository root rather than as a Hub module
    from modeling_llm_fusion import decide, length_sorted_batches, validate_text, validate_texts

TASK = "fec"
TASKS = (TASK, "text-classification")
"""The tasks `config.json` maps to `FECPipeline`: `"fec"`, and `"text-classification"`, the model card's
`pipeline_tag`, which the Hub's "Use this model" snippet names."""
TASK_NOTE = (
    'Name the task when you build the pipeline, "text-classification" (as the Hub\'s snippet does) or "fec": the '
    "model declares both, and transformers refuses to guess between them, so `pipeline(model=..., "
    "trust_remote_code=True)` without a task raises a RuntimeError."
)
"""One sentence for the model card and the README on building this model's pipeline."""
FUNCTIONS = ("softmax", "sigmoid", "none")
SORT_WINDOW = 32
"""Batches of a stream of texts drawn at once and sorted by length: sorting helps, and an answer waits for at most
this many batches."""
_NOT_GIVEN = object()  # `top_k=None` means "all labels", so "not given" needs its own marker


class FECPipeline(Pipeline):
    """Fine-grained emotion classification with an [`LLMFusionForSequenceClassification`] model.

    The pipeline loads the frozen backbones the model's config names (Hub id at the pinned revision), turns each
    text into features with the model's own feature code (`model.extract_features`, the code that extracted the
    training features) and runs the fusion head on them. It answers like the `"text-classification"` pipeline:

    - a string gives a list holding its top `{"label": str, "score": float}`; a list of strings gives one
      `{"label", "score"}` dict per text;
    - `top_k=k` gives the `k` best labels, `top_k=None` all labels, sorted by score: a list of dicts for a string, a
      list of such lists for a list of strings;
    - for a multi-label model (`config.problem_type == "multi_label_classification"`) the default answer is the
      list of labels whose sigmoid score is above `config.threshold` (possibly empty; `threshold=t` sets another),
      sorted by score (a list for a string, a list of lists for a list of strings).
    - a score is the softmax (or sigmoid) of the logits divided by `config.temperature`, the temperature training
      fitted on the validation split so that scores read as confidences (1.0: the logits as they are).

    Long texts are truncated: each backbone reads at most its `max_length` tokens of a text. A text that is not a
    non-empty string raises a `TypeError` or `ValueError` naming its position, before anything runs (in a stream:
    its position in the stream, once the texts before it are answered).

    Args:
        model (`LLMFusionForSequenceClassification`):
            The fusion model. Its backbones are loaded when the pipeline is built (kept if already loaded).
        backbone_paths (`dict[str, str]`, *optional*):
            Local folders to load backbones from instead of the Hub ids in the config, by backbone name, e.g.
            `{"llama": "/models/Llama-2-7b-chat-hf"}` for offline machines or mirrors.
        dtype (`torch.dtype` or `str`, *optional*):
            Compute dtype of the backbones and the head. By default each backbone computes in the dtype its features
            were extracted with (its `dtype` in `config.backbones`, float32 if none; a recorded `quantization` and
            `backend`, e.g. ONNX Runtime with int8 weights, are used too) and the head keeps its saved dtype.
        device (`int`, `str` or `torch.device`, *optional*):
            Where the backbones and the head run, as for every pipeline.
        batch_size (`int`, *optional*, defaults to 1):
            Texts run through the backbones together; a positive integer.
        max_tokens (`int`, *optional*):
            At most this many padded tokens a forward pass (texts x padded length), as extraction's `--max-tokens`.
        function_to_apply (`str`, *optional*):
            `"softmax"` (default for single-label models), `"sigmoid"` (default for multi-label models), each of the
            logits divided by `config.temperature`, or `"none"` (the raw logits).
        top_k (`int` or `None`, *optional*):
            Number of labels to return per text; `None` returns all of them.
    """

    _load_processor = False
    _load_image_processor = False
    _load_video_processor = False
    _load_feature_extractor = False
    _load_tokenizer = False  # each backbone brings its own tokenizer

    def __init__(
        self,
        model: PreTrainedModel,
        backbone_paths: dict[str, str] | None = None,
        dtype: torch.dtype | str | None = None,
        max_tokens: int | None = None,
        **kwargs,
    ):
        super().__init__(model=model, **kwargs)
        if max_tokens is not None:
            check_batch_size(max_tokens, "max_tokens")
        self.max_tokens = max_tokens
        if self._batch_size is not None:
            check_batch_size(self._batch_size)
        # Dropout must be off whatever mode the model was handed over in.
        self.model.eval()
        if isinstance(dtype, str) and dtype != "auto":
            dtype = getattr(torch, dtype)
        # `pipeline()` passes dtype="auto" by default: the head then keeps its saved dtype, and each backbone computes
        # in the dtype it was extracted with (None below), as training saw it.
        backbone_dtype = dtype if isinstance(dtype, torch.dtype) else None
        self.model.load_backbones(backbone_paths, device=self.device, dtype=backbone_dtype)

    def _sanitize_parameters(
        self, function_to_apply: str | None = None, top_k: Any = _NOT_GIVEN, threshold: float | None = None
    ) -> tuple[dict, dict, dict]:
        postprocess_params = {}
        if threshold is not None:
            if self.model.config.problem_type != "multi_label_classification":
                raise ValueError("threshold applies to multi-label models only; this model picks one label per text.")
            if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold <= 1:
                raise ValueError(f"threshold must be a number from 0 to 1, got {threshold!r}.")
            postprocess_params["threshold"] = float(threshold)
        if function_to_apply is not None:
            if not isinstance(function_to_apply, str) or function_to_apply.lower() not in FUNCTIONS:
                raise ValueError(f"function_to_apply must be one of {FUNCTIONS}, got {function_to_apply!r}.")
            postprocess_params["function_to_apply"] = function_to_apply.lower()
        if top_k is not _NOT_GIVEN:
            if top_k is not None and (not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1):
                raise ValueError(f"top_k must be a positive integer or None (all labels), got {top_k!r}.")
            postprocess_params["top_k"] = top_k
        return {}, {}, postprocess_params

    def __call__(self, inputs: str | list[str], **kwargs) -> list | Iterator[dict | list]:
        """Classify one text or a list of texts.

        Args:
            inputs (`str` or `list[str]`):
                The text(s). A generator or a `torch` dataset of texts is streamed: the answers come as an iterator.
            top_k (`int` or `None`, *optional*):
                How many labels to return per text (`None`: all), sorted by score.
            function_to_apply (`str`, *optional*):
                `"softmax"`, `"sigmoid"` or `"none"`; the default depends on the model's problem type.
            threshold (`float`, *optional*):
                Multi-label models only: the sigmoid score above which a label is predicted, instead of
                `config.threshold` (the one chosen on validation).
            batch_size (`int`, *optional*, defaults to 1):
                Texts run through the backbones together; a positive integer.

        Return:
            As the `"text-classification"` pipeline: for a string, a list of `{"label", "score"}` dicts (its top
            label by default; the `top_k` best with `top_k`; the labels above the threshold for a multi-label
            model); for a list of strings, one answer per text: a dict (single-label default) or a list of dicts.
            Labels are `str`, scores `float`.
        """
        if kwargs.get("batch_size") is not None:
            check_batch_size(kwargs["batch_size"])
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        # The texts are checked here, once, as the caller gave them: an error names the bad text's position in the
        # caller's list, or in the stream.
        if isinstance(inputs, list):
            validate_texts(inputs)
            if not inputs:
                return []
        elif isinstance(inputs, (types.GeneratorType, torch.utils.data.Dataset)):
            # A stream is checked text by text as it is drawn, before the batch it joins runs.
            inputs = (validate_text(text, position) for position, text in enumerate(inputs))
        else:
            validate_text(inputs)
        answers = super().__call__(inputs, **kwargs)
        # The text-classification pipeline answers a lone string with a list, its top label included.
        return [answers] if isinstance(inputs, str) and isinstance(answers, dict) else answers

    def save_pretrained(self, save_directory: str | os.PathLike, **kwargs) -> None:
        """Save the model with this pipeline, as `save_for_pipeline` does (`kwargs` go to `model.save_pretrained`)."""
        save_for_pipeline(self.model, save_directory, **kwargs)

    def preprocess(self, inputs: str | list[str]) -> dict[str, list[str]]:
        # Tokenizing is the backbones' business (each has its own tokenizer, inside `extract_features`).
        return {"texts": [inputs] if isinstance(inputs, str) else list(inputs)}

    def _forward(self, model_inputs: dict[str, list[str]]) -> dict[str, torch.Tensor]:
        # The texts were checked in `__call__`; the features are computed as extraction computed them (the model's
        # `feature_plan`), in the dtype the head was trained on.
        features = self.model.backbone_features(model_inputs["texts"], max_tokens=self.max_tokens)
        return {"logits": self.model(**features).logits}

    def get_iterator(
        self,
        inputs: Iterable[str],
        num_workers: int,
        batch_size: int,
        preprocess_params: dict,
        forward_params: dict,
        postprocess_params: dict,
    ) -> Iterator[dict | list]:
        """One answer per text, in input order, computed `batch_size` texts at a time.

        The base class collates token ids padded by the pipeline's tokenizer; here a batch is just its texts, which
        each backbone tokenizes and pads itself. Texts of similar length are batched together, as extraction batches
        them, so that a batch pads little: a list is sorted by token count as a whole, a stream `SORT_WINDOW`
        batches at a time.
        """
        texts = iter(inputs)
        window = None if isinstance(inputs, list) else batch_size * SORT_WINDOW
        while True:
            chunk, refused = [], None
            try:  # a stream checks each text as it is drawn: the texts drawn before a bad one are answered first
                chunk.extend(itertools.islice(texts, window))
            except (TypeError, ValueError) as error:
                refused = error
            answers = [None] * len(chunk)
            for batch in self.length_batches(chunk, batch_size):
                model_inputs = self.preprocess([chunk[i] for i in batch], **preprocess_params)
                logits = self.forward(model_inputs, **forward_params)["logits"]
                for i, row in zip(batch, logits, strict=True):
                    answers[i] = self.postprocess({"logits": row.unsqueeze(0)}, **postprocess_params)
            yield from answers
            if refused is not None:
                raise refused
            if window is None or len(chunk) < window:
                return

    def length_batches(self, texts: list[str], batch_size: int) -> list[list[int]]:
        """Indices of `texts` in batches of similar length, as extraction makes them, by the first backbone's token
        count (the LLM's, in every preset: the backbone whose padding costs most)."""
        if batch_size == 1 or len(texts) <= 1:  # nothing to sort (an empty last window of a stream included)
            return [[i] for i in range(len(texts))]
        backbone = next(iter(self.model.load_backbones().values()))
        return length_sorted_batches(backbone.count_tokens(texts), batch_size, self.max_tokens)

    def postprocess(
        self,
        model_outputs: dict[str, torch.Tensor],
        function_to_apply: str | None = None,
        top_k: Any = _NOT_GIVEN,
        threshold: float | None = None,
    ) -> dict | list[dict]:
        config = self.model.config
        multi_label = config.problem_type == "multi_label_classification"
        if function_to_apply is None:  # the defaults of the text-classification pipeline
            if config.problem_type == "regression":
                function_to_apply = "none"
            elif multi_label or config.num_labels == 1:
                function_to_apply = "sigmoid"
            else:
                function_to_apply = "softmax"
        logits = model_outputs["logits"][0].float()
        # The temperature fitted on validation (1.0: none) makes the scores read as confidences; the top label and the
        # ranking stay as they are, and a multi-label threshold applies to the scores as reported.
        calibrated = logits / config.temperature
        functions = {"softmax": calibrated.softmax(-1), "sigmoid": calibrated.sigmoid(), "none": logits}
        scores = functions[function_to_apply].tolist()
        # A stable sort, as the text-classification pipeline's: equal scores keep the label order.
        ranked = sorted(range(len(scores)), key=lambda i: scores[i], reverse=True)
        if top_k is not _NOT_GIVEN:
            chosen = ranked if top_k is None else ranked[:top_k]
        elif multi_label:
            # The model's decision is its sigmoid scores against the threshold chosen on validation, whatever
            # function the caller wants the scores reported in.
            cutoff = config.threshold if threshold is None else threshold
            predicted = decide(calibrated, config.problem_type, cutoff).tolist()
            chosen = [i for i in ranked if predicted[i]]
        else:
            return {"label": config.id2label[ranked[0]], "score": scores[ranked[0]]}
        return [{"label": config.id2label[i], "score": scores[i]} for i in chosen]


def check_batch_size(batch_size: Any, name: str = "batch_size") -> None:
    """Raise `ValueError` unless `batch_size` is a positive integer (0 would answer nothing, -1 fail deep inside)."""
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size < 1:
        raise ValueError(f"{name} must be a positive integer, got {batch_size!r}.")


def custom_pipelines() -> dict[str, dict]:
    """`config.json`'s `custom_pipelines`: every task in `TASKS` runs `FECPipeline` from this file."""
    entry = {
        "impl": f"{Path(__file__).stem}.{FECPipeline.__name__}",
        "pt": [AutoModelForSequenceClassification.__name__],
        "type": "text",
    }
    return {task: dict(entry) for task in TASKS}


def save_for_pipeline(model: PreTrainedModel, save_directory: str | os.PathLike, **kwargs) -> None:
    """Save `model` (weights, config, modeling code) with this pipeline, for
    `pipeline("text-classification", model=save_directory, trust_remote_code=True)` (or `"fec"`).

    Writes `custom_pipelines` (`custom_pipelines()`) into `config.json` and copies this file next to it;
    `FECPipeline.save_pretrained` does the same. `kwargs` go to `model.save_pretrained`. To publish, upload the whole
    folder (e.g. `huggingface_hub.upload_folder`): `model.push_to_hub` alone would leave this file out.
    """
    model.config.custom_pipelines = custom_pipelines()
    model.save_pretrained(save_directory, **kwargs)
    shutil.copyfile(__file__, Path(save_directory) / Path(__file__).name)


PIPELINE_REGISTRY.register_pipeline(
    TASK, pipeline_class=FECPipeline, pt_model=AutoModelForSequenceClassification, type="text"
)

__all__ = ["FECPipeline", "TASK_NOTE", "TASKS", "check_batch_size", "custom_pipelines", "save_for_pipeline"]
