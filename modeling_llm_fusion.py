"""LLM fusion classifier: frozen backbone features fused by a co-occurrence head.

Read top to bottom, the file follows the data: text -> frozen backbone features (`FrozenBackbone`, the one place
where features are computed, used by extraction and by the pipeline) -> fusion vector (`fuse`) -> MLP -> logits.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import importlib.util
import json
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling, SequenceClassifierOutput
from transformers.utils import cached_file, can_return_tuple, logging

try:
    from .configuration_llm_fusion import (
        LAYER_POOLINGS,
        MASK_SUFFIX,
        TEXT_SLOT,
        TOKENS,
        BackboneSpec,
        LLMFusionConfig,
        feature_shape,
        layer_indices,
    )
except ImportError:  # imported from the repository root rather than as a Hub module
    from configuration_llm_fusion import (
        LAYER_POOLINGS,
        MASK_SUFFIX,
        TEXT_SLOT,
        TOKENS,
        BackboneSpec,
        LLMFusionConfig,
        feature_shape,
        layer_indices,
    )

logger = logging.get_logger(__name__)

FEATURE_CODE_VERSION = "1"
"""Bumped whenever a change to `FrozenBackbone` changes the features it computes (part of the extraction cache key)."""


def validate_texts(texts: Sequence) -> list[str]:
    """Return `texts` as a list, or raise naming the first text that no backbone can turn into features.

    Texts are checked once, where they enter: `LLMFusionPreTrainedModel.extract_features`, the pipeline and
    `llm_fusion_fec.data.datasets.load_data`; `FrozenBackbone` computes on texts checked there.
    """
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"Expected a list of strings, got {type(texts).__name__}.")
    return [validate_text(text, position) for position, text in enumerate(texts)]


def validate_text(text: object, position: int = 0) -> str:
    """Return `text`, or raise a `TypeError` or `ValueError` naming its `position` if no backbone can turn it into
    features (not a string, empty or only whitespace, or not valid Unicode)."""
    if not isinstance(text, str):
        raise TypeError(f"Text at position {position} is {type(text).__name__} ({text!r}), not a string.")
    if not text.strip():
        raise ValueError(f"Text at position {position} is empty or only whitespace: {text!r}.")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates (half of a broken emoji) would fail deep inside a tokenizer
        raise ValueError(f"Text at position {position} is not valid Unicode (lone surrogate): {text!r}.") from None
    return text


def length_sorted_batches(lengths: Sequence[int], batch_size: int, max_tokens: int | None = None) -> list[list[int]]:
    """Indices grouped into batches of similar length, longest first (so a batch too big fails at once).

    A batch holds at most `batch_size` texts and, with `max_tokens`, at most that many padded tokens.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches, current = [], []
    for i in order:
        longest = lengths[current[0]] if current else lengths[i]
        if current and (len(current) >= batch_size or (max_tokens and (len(current) + 1) * longest > max_tokens)):
            batches.append(current)
            current = []
        current.append(i)
    if current:
        batches.append(current)
    return batches


def backbone_folders(specs: Sequence[BackboneSpec], paths: Mapping[str, str]) -> dict[str, str]:
    """The local folder of each backbone that `paths` gives one, by backbone name: `paths` names a backbone or a model
    id, and the folder given for one backbone (or for its model id) serves every view of that model (other layers,
    another prompt)."""
    models = {spec.name: spec.model for spec in specs}
    paths = {**{models[key]: path for key, path in paths.items() if key in models}, **paths}
    return {spec.name: path for spec in specs if (path := paths.get(spec.name) or paths.get(spec.model))}


def compute_dtype(spec: BackboneSpec) -> torch.dtype:
    """The dtype a backbone computes its features in: the one its spec records (`dtype`), float32 if none."""
    return getattr(torch, spec.dtype or "float32")


def quantization_config(
    spec: BackboneSpec, dtype: torch.dtype, device: str | torch.device | None = None
) -> BitsAndBytesConfig | None:
    """The `quantization_config` that loads a backbone's weights as its spec records (`quantization`: `"8bit"` or
    `"4bit"`, through bitsandbytes), or `None` for full-precision weights.

    bitsandbytes is only looked for (never imported here) when a spec asks for it, so CPU-only installs without it
    work; without it, or without a CUDA GPU, this raises a `ValueError` saying what is needed.
    """
    if spec.quantization is None:
        return None
    bits = spec.quantization.removesuffix("bit")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing = "bitsandbytes is not installed"
    elif not torch.cuda.is_available():
        missing = "no CUDA GPU is available"
    elif device is not None and torch.device(device).type != "cuda":
        missing = f"the device is {device}"
    else:
        if spec.quantization == "4bit":
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype)
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(
        f"Backbone {spec.name!r}: {bits}-bit quantization needs bitsandbytes and a CUDA GPU: "
        f"pip install bitsandbytes ({missing})."
    )


def hidden_state_count(config) -> int:
    """Number of hidden states a model returns with `output_hidden_states=True`: the embeddings and each layer."""
    return config.get_text_config().num_hidden_layers + 1


def layers_needed(specs: Sequence[BackboneSpec], config) -> int | None:
    """How many of a model's layers a forward pass for the views `specs` has to run, when that is fewer than all:
    the layers below the deepest hidden state they read, and one more, since a model normalises the output of the
    last layer it runs (`hidden_states[-1]` is `last_hidden_state`). `None` when every layer is needed (a view pools
    or keeps the last hidden state or reads one of the top two) or the model is part of a composite config.

    The model is then loaded with only these layers (`FeaturePlan.load`): the layers above cost time and memory and
    change none of the hidden states read."""
    if any(spec.pooling not in (*LAYER_POOLINGS, TOKENS) for spec in specs) or config.get_text_config() is not config:
        return None
    count = hidden_state_count(config)
    needed = max(i % count for spec in specs for i in layer_indices(spec)) + 1
    return needed if needed < count - 1 else None


def weights_key(spec: BackboneSpec, path: str | None = None, dtype: torch.dtype | None = None) -> tuple:
    """What a loaded model depends on: its weights (a local folder, else its Hub id and revision), the dtype it
    computes in, its quantization and its runtime (`backend`). Views with equal keys share one loaded model."""
    source = (path, None) if path else (spec.model, spec.revision)
    return *source, dtype or compute_dtype(spec), spec.quantization, spec.backend


def input_key(spec: BackboneSpec) -> tuple:
    """What a model reads of a text (its template and length limit): views of one loaded model with equal keys share
    one forward pass, e.g. a prompt's last token and the text's mean inside that prompt."""
    return spec.template, spec.max_length


class FeaturePlan:
    """The one plan from texts to features, used alike by extraction, `--choose`, the pipeline and labelling: which
    views (backbone specs) share a loaded model and a forward pass, how texts are batched, and in which dtype the
    features come out.

    Args:
        specs (`Sequence[BackboneSpec]`): The views, in feature order.
        paths (`Mapping[str, str]`, *optional*): Local folders by backbone name or model id (`backbone_folders`).
        dtype (`torch.dtype`, *optional*): The compute dtype of every backbone; by default each spec's own.
    """

    def __init__(
        self, specs: Sequence[BackboneSpec], paths: Mapping[str, str] | None = None, dtype: torch.dtype | None = None
    ):
        self.specs = tuple(BackboneSpec.from_dict(spec) for spec in specs)
        self.paths = backbone_folders(self.specs, paths or {})
        self.dtype = dtype
        self.passes: list[tuple[BackboneSpec, ...]] = []
        """The views in groups that one forward pass serves (same weights, same input), in order of first view."""
        for spec in self.specs:
            same = [i for i, views in enumerate(self.passes) if self.pass_key(views[0]) == self.pass_key(spec)]
            if same:
                self.passes[same[0]] += (spec,)
            else:
                self.passes.append((spec,))

    def weights(self, spec: BackboneSpec) -> tuple:
        """`weights_key` of a view with this plan's folders and dtype: the model it is computed by."""
        return weights_key(spec, self.paths.get(spec.name), self.dtype)

    def pass_key(self, spec: BackboneSpec) -> tuple:
        return self.weights(spec), input_key(spec)

    def models(self, passes: Sequence[tuple[BackboneSpec, ...]] | None = None) -> list[tuple[BackboneSpec, ...]]:
        """The views of `passes` (default: all) grouped by the model that computes them: one load each."""
        groups: dict[tuple, tuple[BackboneSpec, ...]] = {}
        for views in self.passes if passes is None else passes:
            key = self.weights(views[0])
            groups[key] = groups.get(key, ()) + views
        return list(groups.values())

    def load(
        self,
        views: Sequence[BackboneSpec],
        device: str | torch.device | None = None,
        device_map: str | dict | None = None,
    ) -> list[FrozenBackbone]:
        """Load the model of `views` (views of one model, `models`) once, with only the layers they read
        (`layers_needed`), and return a `FrozenBackbone` per view, all sharing it."""
        first = views[0]
        config = FrozenBackbone.model_config(first, self.paths.get(first.name))
        for spec in views:
            FrozenBackbone.check_config(spec, config)
        if first.backend is not None:  # ONNX Runtime: the same tokens in, the same outputs out
            model, tokenizer = OnnxBackbone.load(views, self.paths.get(first.name), config, device, self.dtype)
        else:
            model, tokenizer = FrozenBackbone.load_model(
                first, self.paths.get(first.name), device, self.dtype, device_map, layers_needed(views, config)
            )
        return [FrozenBackbone(spec, model, tokenizer, config) for spec in views]

    def features(
        self,
        backbones: Mapping[str, FrozenBackbone],
        texts: Sequence[str],
        batch_size: int | None = None,
        max_tokens: int | None = None,
        dtype: torch.dtype = torch.float32,
        device: str | torch.device = "cpu",
    ) -> dict[str, torch.Tensor]:
        """Every view's features of `texts`, by name in feature order: one forward pass a batch for each pass of
        loaded `backbones` (by name), batched as `FrozenBackbone.extract_views` batches. A token view comes padded
        to the longest text, with its mask after it (`pad_token_states`), as the head reads it."""
        features = {}
        for views in self.passes:
            loaded = [backbones[spec.name] for spec in views]
            values = loaded[0].extract_views(texts, loaded, batch_size or len(texts), max_tokens, dtype, device=device)
            features.update(zip((spec.name for spec in views), values, strict=True))
        ordered = {}
        for spec in self.specs:
            if spec.pooling == TOKENS:
                ordered[spec.name], ordered[spec.name + MASK_SUFFIX] = pad_token_states(features[spec.name])
            else:
                ordered[spec.name] = features[spec.name]
        return ordered


class FrozenBackbone:
    """A frozen backbone with its tokenizer and pooling: texts in, one pooled feature per text out.

    Args:
        spec (`BackboneSpec`): One entry of `LLMFusionConfig.backbones`.
        model (`PreTrainedModel`): The backbone without task head (`AutoModel`), possibly with only its lower layers
            (`FeaturePlan.load`).
        tokenizer: Its tokenizer.
        config (*optional*): The whole model's config (default: `model.config`): the hidden states `spec` indexes.
    """

    def __init__(self, spec: BackboneSpec, model: PreTrainedModel, tokenizer, config=None):
        self.spec = BackboneSpec.from_dict(spec)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            # Decoders often have no pad token; padded positions are masked out of every pooling anyway.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            if tokenizer.pad_token is None:
                raise ValueError(
                    f"Backbone {self.spec.name!r}: the tokenizer has no pad, eos or unk token to pad with."
                )
        # Right padding keeps every real token at the position it has alone, so causal decoders see exactly the
        # unpadded text (left padding would shift the position ids of Llama-style models).
        tokenizer.padding_side = "right"
        # Longer texts are truncated: to the configured max_length, or to what the model can take if that is less.
        model_limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else self.spec.max_length
        self.max_length = min(self.spec.max_length, model_limit)
        config = config if config is not None else model.config
        self.check_config(self.spec, config)
        self.hidden_states = hidden_state_count(config)
        self.texts_seen = self.tokens_seen = 0

    @classmethod
    def load(
        cls,
        spec: BackboneSpec,
        path: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        device_map: str | dict | None = None,
    ) -> FrozenBackbone:
        """Load the backbone `spec` names (or the local folder `path` instead) with its tokenizer, whole: a
        `FeaturePlan` of this one view (`FeaturePlan.load`) loads only the layers it reads."""
        spec = BackboneSpec.from_dict(spec)
        if spec.backend is not None:  # exported with the outputs this view reads (`OnnxBackbone.load`)
            return FeaturePlan([spec], {spec.name: path} if path else {}, dtype).load([spec], device, device_map)[0]
        model, tokenizer = cls.load_model(spec, path, device, dtype, device_map)
        return cls(spec, model, tokenizer)

    @staticmethod
    def load_model(
        spec: BackboneSpec,
        path: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        device_map: str | dict | None = None,
        num_layers: int | None = None,
    ) -> tuple[PreTrainedModel, object]:
        """The model `spec` names (or the local folder `path`) and its tokenizer, with its first `num_layers` layers
        only where given.

        `dtype` is the compute dtype (pinned: transformers otherwise loads in the checkpoint's dtype); by default the
        one `spec` records (`compute_dtype`). With a recorded `quantization` the weights are loaded quantized by
        bitsandbytes (`quantization_config`), on a CUDA GPU. `device_map="auto"` spreads a model larger than one GPU
        over the available devices.
        """
        source, revision = (path, None) if path else (spec.model, spec.revision)
        dtype = dtype if dtype is not None else compute_dtype(spec)
        quantization = quantization_config(spec, dtype, device)
        if quantization is not None and device_map is None:
            # bitsandbytes places the weights while loading; a quantized model cannot be moved afterwards.
            device_map = {"": str(torch.device(device or "cuda"))}
        shortened = {} if num_layers is None else {"num_hidden_layers": num_layers}
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
            with _unused_weights_unreported(bool(shortened)):
                model = AutoModel.from_pretrained(
                    source,
                    revision=revision,
                    dtype=dtype,
                    device_map=device_map,
                    quantization_config=quantization,
                    **shortened,
                )
        except (OSError, ValueError) as error:
            raise FrozenBackbone.unloadable(spec, path, error) from error
        if device_map is None and device is not None:
            model.to(device)
        return model, tokenizer

    @staticmethod
    def model_config(spec: BackboneSpec, path: str | None = None):
        """The backbone's model config, read without loading weights; a clear error if it cannot be loaded."""
        try:
            return AutoConfig.from_pretrained(path or spec.model, revision=None if path else spec.revision)
        except (OSError, ValueError) as error:
            raise FrozenBackbone.unloadable(spec, path, error) from error

    @staticmethod
    def unloadable(spec: BackboneSpec, path: str | None, error: Exception) -> ValueError:
        """The one-line error for a backbone that cannot be loaded: offline, or without access to a gated model, a
        local copy of it is the way."""
        hint = (
            ""
            if path
            else f" (a local copy: --backbone-path {spec.name}=FOLDER), or backbone_paths={{{spec.name!r}: FOLDER}}"
        )
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        return ValueError(
            f"Backbone {spec.name!r} could not be loaded from {path or spec.model!r}{hint}: {first_line}"
        )

    @staticmethod
    def check_config(spec: BackboneSpec, config) -> None:
        """Raise `ValueError` if a model config (loaded or not) does not give the features `spec` describes."""
        config = config.get_text_config()
        if config.hidden_size != spec.hidden_size:
            raise ValueError(
                f"Backbone {spec.name!r} ({spec.model}) has hidden size {config.hidden_size}, "
                f"but the config expects {spec.hidden_size}."
            )
        if spec.layers is None:
            if spec.num_layers > config.num_hidden_layers:
                raise ValueError(
                    f"Backbone {spec.name!r} ({spec.model}) has {config.num_hidden_layers} layers, "
                    f"fewer than num_layers={spec.num_layers}."
                )
            return
        count = config.num_hidden_layers + 1
        if outside := [i for i in spec.layers if not -count <= i < count]:
            raise ValueError(
                f"Backbone {spec.name!r} ({spec.model}) has {count} hidden states (embeddings and "
                f"{count - 1} layers: indices 0..{count - 1} or {-count}..-1); layers {outside} are out of range."
            )
        if len({i % count for i in spec.layers}) != len(spec.layers):
            raise ValueError(
                f"Backbone {spec.name!r}: layers {list(spec.layers)} name the same hidden state twice in a model with "
                f"{count} hidden states."
            )

    def reads_like(self, other: FrozenBackbone) -> bool:
        """Whether `other` reads the same tokens with the same loaded model (`input_key`), so that one forward pass
        gives the features of both."""
        return other.model is self.model and input_key(self.spec) == input_key(other.spec)

    def extract(
        self,
        texts: Sequence[str],
        batch_size: int = 16,
        max_tokens: int | None = None,
        dtype: torch.dtype = torch.float32,
        progress=None,
    ) -> torch.Tensor:
        """Features of many texts, in their order, on the CPU in `dtype` (`extract_views` of this view alone)."""
        return self.extract_views(texts, [self], batch_size, max_tokens, dtype, progress)[0]

    def extract_views(
        self,
        texts: Sequence[str],
        views: Sequence[FrozenBackbone],
        batch_size: int = 16,
        max_tokens: int | None = None,
        dtype: torch.dtype = torch.float32,
        progress=None,
        device: str | torch.device = "cpu",
    ) -> list[torch.Tensor | list[torch.Tensor]]:
        """The features of each of `views` (backbones that read like this one, `reads_like`) for many texts, in their
        order, on `device` in `dtype` (the dtype the features are stored in: training and serving see the same
        numbers). Texts are computed in batches of similar length, so that little padding is computed: at most
        `batch_size` texts and `max_tokens` padded tokens a batch, one forward pass each (`views`).
        `progress.update(n)` is called after each batch; `texts_seen` / `tokens_seen` count the work done. The texts
        are not checked here: their entry point checked them (`validate_texts`). A token view's features are a list
        of `(tokens, width)` tensors, one per text."""
        lengths = self.count_tokens(texts)
        outs = [
            [None] * len(texts)
            if view.spec.pooling == TOKENS
            else torch.empty((len(texts), *feature_shape(view.spec)), dtype=dtype, device=device)
            for view in views
        ]
        for indices in length_sorted_batches(lengths, batch_size, max_tokens):
            for out, values in zip(outs, self.views([texts[i] for i in indices], views), strict=True):
                if isinstance(out, list):
                    for i, states in zip(indices, values, strict=True):
                        out[i] = states.to(device, dtype)
                else:
                    out[indices] = values.to(device, dtype)
            if progress is not None:
                progress.update(len(indices))
        self.texts_seen += len(texts)
        self.tokens_seen += sum(lengths)
        return outs

    @property
    def device(self) -> torch.device:
        return self.model.device

    def prompts(self, texts: Sequence[str]) -> list[str]:
        """What the tokenizer reads: each text, or the spec's `template` with the text in its `{text}` slot."""
        if self.spec.template is None:
            return list(texts)
        # str.replace, not str.format: other braces in a template are plain text.
        return [self.spec.template.replace(TEXT_SLOT, text) for text in texts]

    def count_tokens(self, texts: Sequence[str]) -> list[int]:
        """Number of tokens each text has after truncation (to sort texts into batches of similar length)."""
        ids = self.tokenizer(self.prompts(texts), truncation=True, max_length=self.max_length)["input_ids"]
        return [len(row) for row in ids]

    def __call__(self, texts: Sequence[str]) -> torch.Tensor:
        """Features of `texts` (checked by their entry point, `validate_texts`), float32 on the backbone's device:
        `(batch, k, width)` or `(batch, width)`."""
        return self.views(texts, [self])[0]

    @torch.inference_mode()
    def views(self, texts: Sequence[str], views: Sequence[FrozenBackbone]) -> list[torch.Tensor]:
        """The features of each of `views` (backbones that read like this one, `reads_like`) for `texts`, from one
        forward pass of this backbone's model, float32."""
        if strangers := [view.spec.name for view in views if not self.reads_like(view)]:
            raise ValueError(f"Backbones {strangers} do not read the tokens {self.spec.name!r} reads.")
        text_spans = any(view.spec.pooling == "layer_text_mean" for view in views) and self.spec.template
        own_tokens = any(view.spec.pooling == TOKENS for view in views)
        batch = self.tokenizer(
            self.prompts(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_offsets_mapping=bool(text_spans) or own_tokens,
            return_special_tokens_mask=own_tokens,
        )
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        hidden = any(view.reads_hidden_states for view in views)
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
        text_mask = self.text_mask(texts, batch["offset_mapping"]).to(self.device) if text_spans else attention_mask
        if own_tokens:  # the text's own tokens: within its slot of the prompt, neither special nor padding
            own = self.text_mask(texts, batch["offset_mapping"]) * (1 - batch["special_tokens_mask"])
            token_mask = own.to(self.device) * attention_mask
        return [
            view.token_states(outputs, token_mask)
            if view.spec.pooling == TOKENS
            else view.pool(outputs, attention_mask, text_mask)
            for view in views
        ]

    @property
    def reads_hidden_states(self) -> bool:
        """Whether this view reads `hidden_states` (`reads_hidden_states`)."""
        return reads_hidden_states(self.spec)

    def text_mask(self, texts: Sequence[str], offsets: torch.Tensor) -> torch.Tensor:
        """1 at the tokens of each text inside its prompt (the tokens whose characters overlap the text's), 0 at the
        template's own tokens and the padding: what `layer_text_mean` averages over (and, special tokens left out,
        what a token view keeps)."""
        start = self.spec.template.index(TEXT_SLOT) if self.spec.template is not None else 0
        ends = torch.tensor([start + len(text) for text in texts]).unsqueeze(1)
        mask = ((offsets[..., 0] < ends) & (offsets[..., 1] > start)).long()
        if (mask.sum(dim=1) == 0).any():
            raise ValueError(
                f"Backbone {self.spec.name!r}: its template leaves no token of a text within max_length="
                f"{self.max_length} tokens; raise max_length or shorten the template."
            )
        return mask

    def token_states(self, outputs, token_mask: torch.Tensor) -> list[torch.Tensor]:
        """This token view's features from a forward pass's `outputs`: for each text, the float32 `(tokens, width)`
        states of its own tokens (`token_mask`), each the mean over the view's layers (`layers`), or the last hidden
        state."""
        if self.reads_hidden_states:
            layers = [outputs.hidden_states[i % self.hidden_states].float() for i in layer_indices(self.spec)]
            states = torch.stack(layers).mean(dim=0)
        else:
            states = outputs.last_hidden_state.float()
        return [row[mask.bool()] for row, mask in zip(states, token_mask, strict=True)]

    def pool(self, outputs, attention_mask: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """This backbone's feature from a forward pass's `outputs` (float32): `text_mask` marks the text's own tokens
        (the real tokens where there is no template)."""
        pooling = self.spec.pooling
        if pooling in LAYER_POOLINGS:
            # In feature order: by default the last k layers, last first (index i is the i-th layer from the top).
            # Indices count in all the model's hidden states: a model loaded with its lower layers returns those.
            layers = [outputs.hidden_states[i % self.hidden_states] for i in layer_indices(self.spec)]
            if pooling == "layer_last_token":
                # Right padding: a text's last real token sits at (its number of real tokens - 1).
                last = attention_mask.sum(dim=1) - 1
                rows = torch.arange(len(last), device=last.device)
                return torch.stack([layer[rows, last].float() for layer in layers], dim=1)
            mask = text_mask if pooling == "layer_text_mean" else attention_mask
            return torch.stack([token_mean(layer, mask) for layer in layers], dim=1)
        if pooling == "pooler":
            if getattr(outputs, "pooler_output", None) is None:
                raise ValueError(f"Backbone {self.spec.name!r} has no pooler; use pooling 'cls' instead.")
            return outputs.pooler_output.float()
        if pooling == "mean":
            return token_mean(outputs.last_hidden_state, attention_mask)
        return outputs.last_hidden_state[:, 0].float()


def reads_hidden_states(spec: BackboneSpec) -> bool:
    """Whether a view reads `hidden_states` (a layer pooling, or a token view of chosen layers), not only the model's
    last hidden state or pooled output."""
    if spec.pooling == TOKENS:
        return spec.layers is not None or spec.num_layers > 1
    return spec.pooling in LAYER_POOLINGS


ONNX_OPSET = 17
INT8_WEIGHTS = "QUInt8"
"""How `"onnx-int8"` stores weights (`onnxruntime.quantization.QuantType`): unsigned, one scale per tensor. Measured on
the small trio (64 ED texts, an AVX2 CPU without VNNI), as the mean cosine of the features to float32's: signed weights
(QInt8) saturate the 16-bit sums of that CPU's int8 kernel (as onnxruntime's quantization guide warns), QUInt8 lifts
MiniLM from 0.96 to 0.98 and mpnet from 0.70 to 0.82; one scale per channel broke SmolLM2 and mpnet (0.27, 0.01)."""
FLOAT32_MATMULS = ("/mlp/down_proj/", "/output/dense/")
"""The matrix products `"onnx-int8"` keeps in float32 (exported node names holding one of these, attention's own left
out): the feed-forward blocks' output projections, whose inputs (after the GELU or SwiGLU) have the outliers that one
uint8 scale per batch loses. Measured as above: mean cosine SmolLM2 (the prompt's last token) 0.94 -> 0.99, MiniLM
0.98 -> 0.995, mpnet 0.82 -> 0.987, for about a third of the products left in float32."""


class OnnxBackbone(nn.Module):
    """A backbone exported to ONNX and run by ONNX Runtime on the CPU (a backbone's `backend`: `"onnx"`, or
    `"onnx-int8"` with int8 weights): called as the transformers model it was exported from is called by
    `FrozenBackbone.views` (token ids and attention mask in), it returns what the views read of it: the hidden states
    they index (`hidden_states[i]`, the others `None`), `last_hidden_state` and `pooler_output` where they read them.
    Tokenization, prompts and pooling stay `FrozenBackbone`'s: only running the model changes.

    Args:
        session (`onnxruntime.InferenceSession`): The exported model.
        config: The whole model's config.
        path (`Path`, *optional*): The exported model's file.
    """

    def __init__(self, session, config, path: Path | None = None):
        super().__init__()
        self.session, self.config, self.path = session, config, path
        self.output_names = [output.name for output in session.get_outputs()]

    @property
    def device(self) -> torch.device:
        return torch.device("cpu")

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, output_hidden_states: bool = False):
        arrays = self.session.run(None, {"input_ids": input_ids.numpy(), "attention_mask": attention_mask.numpy()})
        outputs = {name: torch.from_numpy(array) for name, array in zip(self.output_names, arrays, strict=True)}
        indices = [int(name.split(".")[1]) for name in outputs if name.startswith("hidden_states.")]
        hidden = [outputs.get(f"hidden_states.{i}") for i in range(max(indices) + 1)] if indices else None
        return BaseModelOutputWithPooling(
            last_hidden_state=outputs.get("last_hidden_state"),
            pooler_output=outputs.get("pooler_output"),
            hidden_states=None if hidden is None else tuple(hidden),
        )

    @classmethod
    def load(
        cls,
        views: Sequence[BackboneSpec],
        path: str | None,
        config,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
    ) -> tuple[OnnxBackbone, object]:
        """The model of `views` (views of one model, one `backend`) exported with the outputs they read and its
        tokenizer: exported once (`export_onnx`) into the cache (`onnx_cache_dir`), then loaded from there."""
        spec = views[0]
        ort = import_onnx_runtime(spec)
        if device is not None and torch.device(device).type != "cpu":
            raise ValueError(f"Backbone {spec.name!r}: backend {spec.backend!r} runs on the CPU, not on {device}.")
        if dtype not in (None, torch.float32):
            raise ValueError(f"Backbone {spec.name!r}: backend {spec.backend!r} computes in float32, not {dtype}.")
        outputs = onnx_outputs(views, config)
        num_layers = layers_needed(views, config)
        folder = onnx_cache_dir() / onnx_key(spec, path, outputs, num_layers, ort.__version__)
        if not (folder / "model.onnx").exists():
            export_onnx(spec, path, outputs, num_layers, folder)
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        session = ort.InferenceSession(str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"])
        tokenizer = AutoTokenizer.from_pretrained(path or spec.model, revision=None if path else spec.revision)
        return cls(session, config, folder / "model.onnx"), tokenizer


def import_onnx_runtime(spec: BackboneSpec):
    """`onnxruntime`, or the one-line `ValueError` saying that backbone `spec` needs it and how to install it."""
    if importlib.util.find_spec("onnxruntime") is None or importlib.util.find_spec("onnx") is None:
        raise ValueError(
            f"Backbone {spec.name!r} runs with backend {spec.backend!r}, which needs onnxruntime and onnx: "
            'pip install "llm-fusion-fec[onnx]" (or pip install onnxruntime onnx).'
        )
    import onnxruntime

    return onnxruntime


def onnx_outputs(views: Sequence[BackboneSpec], config) -> dict[str, object]:
    """What the views of one model read of its outputs: the hidden-state indices (counted in the whole model's),
    `last_hidden_state`, `pooler_output`; the ONNX export returns these only."""
    count = hidden_state_count(config)
    indices = {i % count for spec in views if reads_hidden_states(spec) for i in layer_indices(spec)}
    return {
        "hidden_states": sorted(indices),
        "last_hidden_state": any(
            spec.pooling in ("mean", "cls", TOKENS) for spec in views if not reads_hidden_states(spec)
        ),
        "pooler_output": any(spec.pooling == "pooler" for spec in views),
    }


def onnx_cache_dir() -> Path:
    """Where exported backbones are kept: `$HF_HOME/llm_fusion_fec/onnx` (by default `~/.cache/huggingface/...`)."""
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME", "~/.cache"), "huggingface")
    return Path(home).expanduser() / "llm_fusion_fec" / "onnx"


def onnx_key(spec: BackboneSpec, path: str | None, outputs: dict, num_layers: int | None, ort_version: str) -> str:
    """The cache folder name of an export: everything it depends on. The weights are named by their files (resolved
    path, size and modification time: a Hub snapshot's files are named by their content), not hashed, so that a key
    costs no read of the weights."""
    folder = Path(cached_file(path or spec.model, "config.json", revision=None if path else spec.revision)).parent
    files = sorted(
        (str(file.relative_to(folder)), os.path.realpath(file), file.stat().st_size, file.stat().st_mtime_ns)
        for file in folder.rglob("*")
        if file.is_file()
    )
    fields = {
        "weights": files,
        "outputs": outputs,
        "num_layers": num_layers,
        "backend": spec.backend,
        "versions": [ort_version, torch.__version__, transformers_version(), ONNX_OPSET],
        "int8": [INT8_WEIGHTS, FLOAT32_MATMULS],
    }
    return hashlib.sha256(json.dumps(fields, sort_keys=True).encode()).hexdigest()[:20]


def transformers_version() -> str:
    import transformers

    return transformers.__version__


class _ExportedOutputs(nn.Module):
    """The model as exported: token ids and mask in, the outputs the views read (`onnx_outputs`) out, as a tuple."""

    def __init__(self, model: PreTrainedModel, outputs: dict):
        super().__init__()
        self.model, self.outputs = model, outputs

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, ...]:
        hidden = bool(self.outputs["hidden_states"])
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)
        values = [out.hidden_states[i] for i in self.outputs["hidden_states"]]
        values += [out.last_hidden_state] if self.outputs["last_hidden_state"] else []
        return tuple(values + ([out.pooler_output] if self.outputs["pooler_output"] else []))


def export_onnx(spec: BackboneSpec, path: str | None, outputs: dict, num_layers: int | None, folder: Path) -> None:
    """Export the model `spec` names (its first `num_layers` layers) to `folder/model.onnx` with `outputs`, in float32,
    and for `"onnx-int8"` quantize its weights to 8 bits (`INT8_WEIGHTS`; activations quantized batch by batch:
    `onnxruntime.quantization.quantize_dynamic`), but for the products `FLOAT32_MATMULS` names. Written in a temporary
    folder, then moved into place whole."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    logger.warning(f"Backbone {spec.name!r}: exporting to ONNX ({spec.backend}) once, into {folder}.")
    model, _ = FrozenBackbone.load_model(spec, path, "cpu", torch.float32, num_layers=num_layers)
    names = [f"hidden_states.{i}" for i in outputs["hidden_states"]]
    names += ["last_hidden_state"] * outputs["last_hidden_state"] + ["pooler_output"] * outputs["pooler_output"]
    axes = {"input_ids": {0: "batch", 1: "tokens"}, "attention_mask": {0: "batch", 1: "tokens"}}
    axes |= {name: {0: "batch"} if name == "pooler_output" else {0: "batch", 1: "tokens"} for name in names}
    # Two texts, the second padded: the traced graph must not take every text's mask to be all ones.
    input_ids = torch.full((2, 8), min(5, model.config.get_text_config().vocab_size - 1))
    attention_mask = torch.tensor([[1] * 8, [1] * 5 + [0] * 3])
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".export-"))
    try:
        exported = staging / ("float32.onnx" if spec.backend == "onnx-int8" else "model.onnx")
        # The tracer warns of every Python branch on a shape; the export is checked against PyTorch's features
        # on other batch sizes and lengths (tests/test_backends.py), so the warnings say nothing to a user.
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _ExportedOutputs(model.eval(), outputs),
                (input_ids, attention_mask),
                str(exported),
                input_names=["input_ids", "attention_mask"],
                output_names=names,
                dynamic_axes=axes,
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
        if spec.backend == "onnx-int8":
            quantize_dynamic(
                exported,
                staging / "model.onnx",
                weight_type=getattr(QuantType, INT8_WEIGHTS),
                nodes_to_exclude=float32_matmuls(exported),
            )
            exported.unlink()
        os.replace(staging, folder)
    except OSError:
        if not (folder / "model.onnx").exists():  # another process exported it first: that one is used
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def float32_matmuls(path: Path) -> list[str]:
    """The names of the matrix products of the exported model at `path` that stay float32 (`FLOAT32_MATMULS`)."""
    import onnx

    nodes = onnx.load(str(path), load_external_data=False).graph.node
    return [
        node.name
        for node in nodes
        if node.op_type == "MatMul" and "attention" not in node.name and any(p in node.name for p in FLOAT32_MATMULS)
    ]


@contextlib.contextmanager
def _unused_weights_unreported(quiet: bool):
    """Loading a model with fewer layers than its checkpoint leaves the upper layers' weights unused, on purpose:
    transformers' loading report of them is silenced for that load."""
    if not quiet:
        yield
        return
    verbosity = logging.get_verbosity()
    logging.set_verbosity_error()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)


def token_mean(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of `(batch, tokens, width)` hidden states over each text's real tokens, float32 `(batch, width)`:
    padding never enters a text's features."""
    mask = attention_mask.unsqueeze(-1).float()
    return (states.float() * mask).sum(dim=1) / mask.sum(dim=1)


def pad_token_states(states: Sequence[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """A token view's features as the head reads them: the texts' `(tokens, width)` states padded with zeros to the
    longest, `(texts, longest, width)`, and the mask `(texts, longest)`, True at each text's tokens."""
    lengths = torch.tensor([len(rows) for rows in states])
    padded = nn.utils.rnn.pad_sequence(list(states), batch_first=True)
    return padded, (torch.arange(padded.shape[1]) < lengths.unsqueeze(1)).to(padded.device)


def decide(logits: torch.Tensor, problem_type: str | None, threshold: float) -> torch.Tensor:
    """The decisions a model makes from its logits: the top label id of each row, or for multi-label problems the
    multi-hot rows of labels whose sigmoid score is above `threshold`. Training scores these and the pipeline answers
    with them: one rule for both."""
    if problem_type == "multi_label_classification":
        return (logits.float().sigmoid() > threshold).int()
    return logits.argmax(dim=-1)


class TokenAttentionPooling(nn.Module):
    """A token view pooled by learned attention: for each of `queries` learned queries, a linear score of every
    token, a softmax over the text's tokens (padding masked out), and the weighted mean of the token vectors.

    The scores start at zero, where every query's weights are uniform: the pooled vectors start as the mean of the
    text's tokens, and training moves each query's weight to the tokens that tell the labels apart.

    Args:
        width (`int`): Width of the token vectors.
        queries (`int`): Number of learned queries: pooled vectors per text.
    """

    def __init__(self, width: int, queries: int):
        super().__init__()
        self.scores = nn.Linear(width, queries)

    def reset_parameters(self) -> None:
        nn.init.zeros_(self.scores.weight)
        nn.init.zeros_(self.scores.bias)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """`(..., batch, tokens, width)` states and their `(..., batch, tokens)` mask -> `(..., batch, queries,
        width)`. The score layer reads the tokens of the whole batch as one matrix, as a seed stack's layers need."""
        scores = self.scores(states.flatten(-3, -2)).unflatten(-2, states.shape[-3:-1])  # (..., batch, tokens, q)
        weights = scores.masked_fill(~mask.unsqueeze(-1), float("-inf")).softmax(dim=-2)
        return weights.transpose(-1, -2) @ states


class LLMFusionPreTrainedModel(PreTrainedModel):
    config_class = LLMFusionConfig
    base_model_prefix = "fusion"
    supports_gradient_checkpointing = False
    # forward's **kwargs are backbone features, not loss kwargs: `Trainer` must not pass `num_items_in_batch` in them.
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's default Linear initialisation, as the original head used; the attention scores at zero (after
        # their Linear: children are initialised first).
        if isinstance(module, nn.Linear | TokenAttentionPooling):
            module.reset_parameters()

    def __init__(self, config: LLMFusionConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self._backbones: dict[str, FrozenBackbone] = {}  # loaded on demand, never part of the state dict
        self._plan: FeaturePlan | None = None  # how the loaded backbones turn texts into features

    def output(self, logits: torch.Tensor, labels: torch.Tensor | None) -> SequenceClassifierOutput:
        """What `forward` returns for `logits`: with the loss when `labels` are given, by the config's problem type
        (`ForSequenceClassificationLoss`: set from the labels' dtype on first use, as transformers' heads do)."""
        loss = None if labels is None else self.loss_function(labels, logits, self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def decide(self, logits: torch.Tensor) -> torch.Tensor:
        """This model's decisions for `logits` (`decide` with its problem type and its `config.threshold`, on the
        logits divided by its `config.temperature`, as the pipeline decides)."""
        return decide(logits / self.config.temperature, self.config.problem_type, self.config.threshold)

    def feature_plan(self, paths: Mapping[str, str] | None = None, dtype: torch.dtype | None = None) -> FeaturePlan:
        """The `FeaturePlan` of this model's backbones (the one extraction followed); `paths` points any of them at a
        local folder, by backbone name or by model id (`backbone_folders`); `dtype` computes all of them in it."""
        paths = dict(paths or {})
        known = {key for spec in self.config.backbones for key in (spec.name, spec.model)}
        if unknown := sorted(set(paths) - known):
            raise ValueError(f"backbone_paths names unknown backbone(s) or model(s) {unknown}.")
        return FeaturePlan(self.config.backbones, paths, dtype)

    def load_backbones(
        self,
        paths: dict[str, str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        device_map: str | dict | None = None,
    ) -> dict[str, FrozenBackbone]:
        """Load (once) the frozen backbones the config names, as `feature_plan` plans them: one loaded model for the
        views of the same weights (e.g. two views of one LLM: other layers or another prompt), with only the layers
        they read.

        Each backbone computes in the dtype its spec records (the one its training features were extracted with,
        float32 if none) and with its recorded quantization, unless `dtype` names another dtype for all of them.
        """
        plan = self.feature_plan(paths, dtype)
        if self._plan is None:
            self._plan = plan
        device = device if device is not None else self.device
        for views in plan.models():
            if missing := [spec for spec in views if spec.name not in self._backbones]:
                self._backbones.update({view.spec.name: view for view in plan.load(missing, device, device_map)})
        return {spec.name: self._backbones[spec.name] for spec in self.config.backbones}

    def extract_features(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Features of `texts` from every backbone (loaded with `load_backbones` first, or on first use). A text no
        backbone can read raises a `TypeError` or `ValueError` naming its position (`validate_texts`)."""
        return self.backbone_features(validate_texts(texts))

    def backbone_features(
        self, texts: list[str], batch_size: int | None = None, max_tokens: int | None = None
    ) -> dict[str, torch.Tensor]:
        """`extract_features` for texts their caller has checked (`validate_texts`), as the pipeline checks its
        inputs, once and as the caller gave them: computed by the `feature_plan` extraction followed, in batches of
        at most `batch_size` texts (default: all) and `max_tokens` padded tokens, and rounded to the dtype the
        training features were stored in (`config.feature_dtype`), so that the head sees what it was trained on."""
        backbones = self.load_backbones() if self._plan is None else self._backbones
        dtype = getattr(torch, self.config.feature_dtype or "float32")
        return self._plan.features(backbones, texts, batch_size, max_tokens, dtype, device=self.device)


class LLMFusionForSequenceClassification(LLMFusionPreTrainedModel):
    """Fusion head over frozen backbone features.

    The features of each text, one keyword per backbone (`config.backbones[i]["name"]`):
    layer-pooled backbones (`layer_mean`, `layer_last_token`) give `(batch, k, width)`, encoders `(batch, width)`,
    in any float dtype; a token view (pooling `"tokens"`, with `config.token_pooling`) gives `(batch, tokens, width)`
    padded to the longest text, with its mask `NAME_mask` `(batch, tokens)` (True at the text's tokens; left out:
    every token counts).
    A token view is first pooled by learned attention (`TokenAttentionPooling`) into `attention_queries` vectors,
    which then go where an LLM view's layer vectors go. Each LLM layer vector goes through its own Linear+ReLU+Dropout
    to `fusion_dim`; encoder vectors are used as they are (or linearly projected when their width differs). The
    stacked vectors V give the co-occurrence matrix V V^T, power-normalised by `2 * sigmoid(sigma * x) - 1` and
    flattened, followed by the mean of the raw LLM layer vectors; an MLP maps that to the labels.
    """

    def __init__(self, config: LLMFusionConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.main_input_name = config.backbones[0]["name"]

        def block(width_in: int, width_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(width_in, width_out), nn.ReLU(), nn.Dropout(config.dropout))

        self.layer_projections = nn.ModuleDict()
        self.encoder_projections = nn.ModuleDict()
        self.token_attention = nn.ModuleDict()  # empty without token views: the state dict is the head's as ever
        num_vectors, tail_width = 0, 0
        for spec in config.backbones:
            name, width = spec["name"], spec["hidden_size"]
            if spec["pooling"] in (*LAYER_POOLINGS, TOKENS):
                vectors = spec["num_layers"]
                if spec["pooling"] == TOKENS:  # pooled into `attention_queries` vectors, then read as layers are
                    vectors = config.attention_queries
                    self.token_attention[name] = TokenAttentionPooling(width, vectors)
                self.layer_projections[name] = nn.ModuleList(block(width, config.fusion_dim) for _ in range(vectors))
                num_vectors += vectors
                tail_width += width
            else:
                # Identity at the paper's widths keeps the head exactly the original.
                self.encoder_projections[name] = (
                    nn.Identity() if width == config.fusion_dim else nn.Linear(width, config.fusion_dim)
                )
                num_vectors += 1
                tail_width += width if config.encoders_in_tail else 0
        self.fusion_width = num_vectors * num_vectors + tail_width

        layers, width_in = [], self.fusion_width
        for width_out in config.mlp_dims:
            layers.append(block(width_in, width_out))
            width_in = width_out
        layers.append(nn.Linear(width_in, config.num_labels))
        self.classifier = nn.Sequential(*layers)
        if config.standardize_features:
            # Training-set statistics, saved with the weights so that serving standardises exactly as training did.
            for name, shape in config.feature_shapes.items():
                shape = shape[1:] if shape[0] is None else shape  # a token view's statistics are per dimension
                self.register_buffer(f"{name}_mean", torch.zeros(shape))
                self.register_buffer(f"{name}_std", torch.ones(shape))
        self.post_init()

    def _features(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        expected = self.config.feature_shapes
        masks = [name + MASK_SUFFIX for name in self.config.token_views]
        missing = [name for name in expected if features.get(name) is None]
        if missing:
            raise ValueError(f"Missing features for backbone(s) {missing}; this model expects {list(expected)}.")
        unknown = sorted(set(features) - set(expected) - set(masks))
        if unknown:
            masked = f", the masks {masks}" if masks else ""
            raise ValueError(f"Unexpected inputs {unknown}; this model expects {list(expected)}{masked} and `labels`.")
        checked = {}
        for name, shape in expected.items():
            value = torch.as_tensor(features[name], device=self.device)
            # (batch, *shape); leading dimensions before the batch are allowed (seeds trained together: SeedStack).
            got = tuple(value.shape[-len(shape) :])
            if value.dim() <= len(shape) or any(want not in (None, size) for size, want in zip(got, shape)):
                wanted = ", ".join("tokens" if size is None else str(size) for size in shape)
                raise ValueError(f"Features {name!r} have shape {tuple(value.shape)}, expected (batch, {wanted}).")
            checked[name] = value.to(self.dtype) if shape[0] is not None else value  # (`fusion_vectors` converts)
            if shape[0] is None:  # a token view: its mask, every token where none is given
                mask = features.get(name + MASK_SUFFIX)
                mask = torch.ones(value.shape[:-1], dtype=torch.bool, device=self.device) if mask is None else mask
                checked[name + MASK_SUFFIX] = torch.as_tensor(mask, device=self.device).bool()
                if checked[name + MASK_SUFFIX].shape != value.shape[:-1]:
                    raise ValueError(
                        f"{name + MASK_SUFFIX!r} has shape {tuple(checked[name + MASK_SUFFIX].shape)}, expected "
                        f"{tuple(value.shape[:-1])}: the shape of {name!r} without its width."
                    )
        return checked

    def set_feature_statistics(self, statistics: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
        """Set the `(mean, std)` of each backbone's features (`standardize_features`), e.g. from the training set."""
        if not self.config.standardize_features:
            raise ValueError("set_feature_statistics needs a config with standardize_features=True.")
        for name, (mean, std) in statistics.items():
            getattr(self, f"{name}_mean").copy_(torch.as_tensor(mean))
            # A constant dimension stays constant (0) instead of dividing by zero.
            getattr(self, f"{name}_std").copy_(torch.as_tensor(std).clamp_min(1e-6))

    def fusion_vectors(self, **features: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The stacked vectors V `(batch, vectors, fusion_dim)` whose co-occurrence V V^T is taken (LLM layer vectors
        and token views' pooled vectors projected, then the encoders in config order), and the vectors that go to the
        MLP as they are: the mean of the raw LLM layer vectors and of each token view's pooled vectors (and, with
        `encoders_in_tail`, the raw encoder vectors in config order)."""
        features = self._features(features)
        if self.config.standardize_features:
            features |= {
                name: (features[name] - getattr(self, f"{name}_mean")) / getattr(self, f"{name}_std")
                for name, shape in self.config.feature_shapes.items()
                if shape[0] is not None
            }
        for name in self.config.token_views:  # the largest inputs: copied once, standardised in place
            features[name] = features[name].to(self.dtype, copy=self.config.standardize_features)
            if self.config.standardize_features:
                features[name].sub_(getattr(self, f"{name}_mean")).div_(getattr(self, f"{name}_std"))
        llm_vectors, encoder_vectors, tails = [], [], []
        for spec in self.config.backbones:
            name, value = spec["name"], features[spec["name"]]
            if spec["pooling"] == TOKENS:
                value = self.token_attention[name](value, features[name + MASK_SUFFIX])
            if spec["pooling"] in (*LAYER_POOLINGS, TOKENS):
                projections = self.layer_projections[name]
                llm_vectors += [projection(value[..., i, :]) for i, projection in enumerate(projections)]
                tails.append(value.mean(dim=-2))
            else:
                encoder_vectors.append(self.encoder_projections[name](value))
                if self.config.encoders_in_tail:
                    tails.append(value)
        return torch.stack(llm_vectors + encoder_vectors, dim=-2), tails

    def fuse(self, **features: torch.Tensor) -> torch.Tensor:
        """The vector that enters the MLP: the power-normalised co-occurrence values of `fusion_vectors`, flattened,
        then the vectors that go to the MLP as they are."""
        stacked, tails = self.fusion_vectors(**features)
        co_occurrence = stacked @ stacked.transpose(-1, -2)
        normalised = 2 * torch.sigmoid(self.config.sigma * co_occurrence) - 1
        return torch.cat([normalised.flatten(start_dim=-2), *tails], dim=-1)

    @can_return_tuple
    def forward(self, labels: torch.Tensor | None = None, **features: torch.Tensor) -> SequenceClassifierOutput:
        """Logits (and loss when `labels` are given) for precomputed features, one keyword per backbone
        (`return_dict=False`: a tuple)."""
        return self.output(self.classifier(self.fuse(**features)), labels)


class LLMFusionEnsembleForSequenceClassification(LLMFusionPreTrainedModel):
    """A seed ensemble: `config.ensemble_size` fusion heads of one config over the same backbone features.

    Its probabilities are the mean of its members' (softmax for single-label problems, sigmoid for multi-label ones;
    regression outputs are averaged), and its logits are their log-odds (`log` of the mean softmax, `logit` of the
    mean sigmoid), so that the pipeline, `decide` and the loss read it as they read one head. The backbones are loaded
    once and shared by the members.
    """

    def __init__(self, config: LLMFusionConfig):
        super().__init__(config)
        self.members = nn.ModuleList(LLMFusionForSequenceClassification(config) for _ in range(config.ensemble_size))
        self.main_input_name = config.backbones[0]["name"]
        self.post_init()

    @classmethod
    def from_members(
        cls, members: Sequence[LLMFusionForSequenceClassification]
    ) -> LLMFusionEnsembleForSequenceClassification:
        """The ensemble of trained heads of one config (e.g. the seeds of a run), their weights copied. The members'
        multi-label thresholds may differ: the ensemble starts with the first one's (training chooses its own). Their
        temperatures may differ too: the ensemble averages its members' probabilities at temperature 1 and starts with
        none of its own (training fits its own)."""

        def shared(config: LLMFusionConfig) -> dict:  # all but where each was loaded from and its own calibration
            ignored = ("ensemble_size", "threshold", "temperature", "transformers_version")
            return {
                key: value for key, value in config.to_dict().items() if not key.startswith("_") and key not in ignored
            }

        if any(shared(member.config) != shared(members[0].config) for member in members):
            raise ValueError("The members of an ensemble must share one config (backbones, head and labels).")
        config = copy.deepcopy(members[0].config)
        config.ensemble_size, config.temperature = len(members), 1.0
        ensemble = cls(config)
        for target, member in zip(ensemble.members, members):
            target.load_state_dict(member.state_dict())
        return ensemble.to(members[0].device, members[0].dtype)

    @can_return_tuple
    def forward(self, labels: torch.Tensor | None = None, **features: torch.Tensor) -> SequenceClassifierOutput:
        """The ensemble's logits (and loss when `labels` are given) for precomputed features, one keyword per
        backbone, as `LLMFusionForSequenceClassification.forward`."""
        logits = torch.stack([member(**features).logits for member in self.members])
        if self.config.problem_type == "multi_label_classification":
            logits = torch.logit(logits.sigmoid().mean(0), eps=1e-7)
        elif self.config.problem_type == "regression" or self.config.num_labels == 1:
            logits = logits.mean(0)
        else:  # the log of the mean softmax, computed stably
            logits = torch.logsumexp(logits.log_softmax(-1), dim=0) - math.log(len(self.members))
        return self.output(logits, labels)


LLMFusionConfig.register_for_auto_class()
LLMFusionForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")
LLMFusionEnsembleForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")

__all__ = [
    "compute_dtype",
    "pad_token_states",
    "TokenAttentionPooling",
    "FeaturePlan",
    "FrozenBackbone",
    "length_sorted_batches",
    "OnnxBackbone",
    "LLMFusionEnsembleForSequenceClassification",
    "LLMFusionForSequenceClassification",
    "LLMFusionPreTrainedModel",
    "quantization_config",
    "validate_text",
    "validate_texts",
]
