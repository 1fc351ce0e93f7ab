"""Configuration of the LLM fusion classifier: which frozen backbones feed it and how its head is shaped."""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping
from dataclasses import dataclass

from transformers import PretrainedConfig

POOLINGS = ("layer_mean", "layer_last_token", "layer_text_mean", "pooler", "cls", "mean", "tokens")
"""How a backbone's hidden states become one feature:

- ``layer_mean``: for each selected hidden layer (``layers``; by default the last ``num_layers`` layers, last layer
  first), the mean over the text's real tokens (padding excluded) -> ``(num_layers, hidden_size)``. Used for the
  decoder LLM.
- ``layer_last_token``: for each selected hidden layer, the hidden state of the text's last real token (the last
  token before the padding; with a ``template`` it is the template's last token, as in PromptEOL)
  -> ``(num_layers, hidden_size)``. For decoders, whose last token has attended to the whole text.
- ``layer_text_mean``: for each selected hidden layer, the mean over the tokens of the text itself inside its
  ``template`` (the prompt's own tokens excluded; without a template, ``layer_mean``) -> ``(num_layers,
  hidden_size)``. A ``layer_last_token`` view of the same model and template reads the same tokens: the two share
  one forward pass (`FrozenBackbone.reads_like`), so a prompt's last token and the text's mean cost one LLM pass.
- ``pooler``: the encoder's pooled [CLS] output (``pooler_output``), as the original method used -> ``(hidden_size,)``.
- ``cls``: the encoder's last hidden state at the first token, for encoders without a pooler.
- ``mean``: the mean of the last hidden state over the text's real tokens (padding excluded) -> ``(hidden_size,)``:
  the pooling sentence-transformers encoders (such as all-MiniLM-L6-v2 and all-mpnet-base-v2) were trained with.
- ``tokens``: no pooling: for each of the text's own tokens (a ``template``'s tokens, special tokens and padding left
  out), its last hidden state, or with ``layers`` the mean of those hidden states -> ``(tokens, hidden_size)``, one
  row per token (a ragged feature, stored per token). A token view reads what the view it is made from reads
  (`token_view`), so the two share one forward pass; the head pools it by learned attention
  (`LLMFusionConfig.token_pooling`).

Any pooling can read its texts through a prompt ``template`` (a string with one ``{text}`` slot), filled in before
tokenization.
"""

LAYER_POOLINGS = ("layer_mean", "layer_last_token", "layer_text_mean")
"""The poolings that give one vector per selected hidden layer, `(num_layers, hidden_size)`: the LLM's features."""

TOKENS = "tokens"
"""The pooling that keeps one vector per token of the text (`(tokens, hidden_size)`): a token view."""

TOKEN_POOLINGS_OF_HEAD = ("attention",)
"""How the head can pool a token view (`LLMFusionConfig.token_pooling`)."""

MASK_SUFFIX = "_mask"
"""A token view `NAME` enters the head padded to the batch's longest text, with `NAME_mask` (1 at its tokens)."""

TEXT_SLOT = "{text}"
"""The slot of a backbone's `template` that each text fills."""

PROMPT_EOL = 'This sentence : "{text}" means in one word:"'
"""PromptEOL's template (Jiang et al., 2023): the LLM's state at its last token sums the text up in one word."""
FEELING_PROMPT = 'This sentence : "{text}" expresses the feeling, in one word:"'
"""PromptEOL's template asking for the feeling the text expresses."""

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
MINILM = "sentence-transformers/all-MiniLM-L6-v2"
MPNET = "sentence-transformers/all-mpnet-base-v2"

PRESETS: dict[str, dict] = {
    # The paper's backbones (Llama-2-7b-chat, BERT-large, RoBERTa-large) and its exact head.
    "paper": {
        "backbones": [
            {
                "name": "llama",
                "model": "meta-llama/Llama-2-7b-chat-hf",
                "pooling": "layer_mean",
                "num_layers": 5,
                "hidden_size": 4096,
            },
            {"name": "bert", "model": "bert-large-uncased", "pooling": "pooler", "hidden_size": 1024},
            {"name": "roberta", "model": "roberta-large", "pooling": "pooler", "hidden_size": 1024},
        ],
        "head": {"standardize_features": False, "encoders_in_tail": False},
        "protocol": "paper",  # the training recipe (llm_fusion_fec.training.protocols)
    },
    # Small real stand-ins that run on a laptop CPU (a Llama decoder, a BERT and an MPNet encoder), in the best fixed
    # recipe measured on ED and GoEmotions: two views of the LLM from one prompted pass (the prompt's last token at
    # one layer, the mean of the text's own tokens over a window of layers), the encoders mean-pooled, the head
    # options that make the head learn on them and the fast training recipe (measured: docs/results.md).
    "small": {
        "backbones": [
            {
                "name": "llama",
                "model": SMOLLM2,
                "pooling": "layer_last_token",
                "layers": [-8],
                "template": PROMPT_EOL,
                "hidden_size": 576,
            },
            {
                "name": "llama_window",
                "model": SMOLLM2,
                "pooling": "layer_text_mean",
                "layers": [-13, -14, -15, -16, -17],
                "template": PROMPT_EOL,
                "hidden_size": 576,
            },
            {"name": "bert", "model": MINILM, "pooling": "mean", "hidden_size": 384},
            {"name": "roberta", "model": MPNET, "pooling": "mean", "hidden_size": 768},
        ],
        "head": {"standardize_features": True, "encoders_in_tail": True},
        "protocol": "fast",
    },
    # The small backbones read as the paper reads its own (the LLM's last 5 layers averaged over the text, the
    # encoders' pooler output): the default `small` preset before the recipe above.
    "small-mean": {
        "backbones": [
            {"name": "llama", "model": SMOLLM2, "pooling": "layer_mean", "num_layers": 5, "hidden_size": 576},
            {"name": "bert", "model": MINILM, "pooling": "pooler", "hidden_size": 384},
            {"name": "roberta", "model": MPNET, "pooling": "pooler", "hidden_size": 768},
        ],
        "head": {"standardize_features": True, "encoders_in_tail": True},
        "protocol": "fast",
    },
}
"""Named backbone sets with the head options (`LLMFusionConfig` keywords) that suit them. Extraction records the
preset's head options with the features, and training uses them unless a flag says otherwise."""

DTYPES = ("float32", "bfloat16", "float16")
"""Compute dtypes a backbone can be recorded with (its `dtype` key); `None` means float32."""

FEATURE_DTYPES = ("float16", "float32")
"""Dtypes features can be stored in (`--feature-dtype`), and so the dtype a model's head is served its features in."""

QUANTIZATIONS = ("8bit", "4bit")
"""Weight quantizations a backbone can be recorded with (its `quantization` key, through bitsandbytes); `None` means
none."""

BACKENDS = ("onnx", "onnx-int8")
"""Runtimes a backbone can run in besides PyTorch (its `backend` key; `None`, or `"torch"` on the command line: PyTorch
eager): `"onnx"` exports the model to ONNX and runs it with ONNX Runtime in float32 (the same features within
rounding), `"onnx-int8"` with its weights quantized to int8 and its activations quantized batch by batch (dynamic
quantization: faster on a CPU, features close to float32's but not equal). Both run on the CPU, in float32."""

RESERVED_NAMES = {"labels", "return_dict", "self"}


BACKBONE_KEYS = (
    "name",
    "model",
    "revision",
    "pooling",
    "num_layers",
    "layers",
    "template",
    "hidden_size",
    "max_length",
    "dtype",
    "quantization",
    "backend",
)
"""The keys of a backbone description, in the order `config.json` and `fec_features.json` write them."""


@dataclass(frozen=True, kw_only=True, eq=False)
class BackboneSpec(Mapping):
    """One backbone of `LLMFusionConfig.backbones`: everything its features depend on. Frozen: a spec is normalised
    once where it enters (a preset, the command line's flags, a spec file, a saved config or features folder, through
    `BackboneSpec.from_dict`) and never edited afterwards; `replace` gives a new, checked one.

    Its fields are typed attributes (`spec.pooling`); like transformers' `ModelOutput`, it also reads as the mapping
    `config.json` stores (`spec["layers"]` is a list, `{**spec}` and `dict(spec)` its JSON form, `to_dict`).
    """

    name: str  # feature column and forward keyword
    model: str  # Hub id or local folder
    revision: str | None = None  # pinned revision (a commit once resolved)
    pooling: str = "pooler"  # one of POOLINGS
    num_layers: int = 1  # hidden layers a layer pooling reads (1 for an encoder pooling)
    layers: tuple[int, ...] | None = None  # hidden-state indices a layer pooling reads (None: the last num_layers)
    template: str | None = None  # prompt with one {text} slot, or None
    hidden_size: int  # feature width
    max_length: int = 512  # tokens read of a text
    dtype: str | None = None  # compute dtype of the features (None: float32)
    quantization: str | None = None  # "8bit", "4bit" or None
    backend: str | None = None  # "onnx", "onnx-int8" or None (PyTorch)

    @classmethod
    def from_dict(cls, spec: Mapping) -> BackboneSpec:
        """The spec a description holds, defaults filled in, or a `ValueError` naming the bad value; a `BackboneSpec`
        is returned as it is (it was checked when it was made).

        Whether `layers` exist in the model is checked when the model's config is at hand
        (`FrozenBackbone.check_config`)."""
        if isinstance(spec, BackboneSpec):
            return spec
        if not isinstance(spec, Mapping):
            raise ValueError(f"A backbone must be a dict with at least 'name' and 'model', got {spec!r}.")
        if unknown := set(spec) - set(BACKBONE_KEYS):
            raise ValueError(f"Unknown backbone keys {sorted(unknown)} in {dict(spec)!r}.")
        name = _checked_name(spec)
        pooling = spec.get("pooling", "pooler")
        if pooling not in POOLINGS:
            raise ValueError(f"Backbone {name!r}: unknown pooling {pooling!r}; allowed: {', '.join(POOLINGS)}.")
        layers, num_layers = _layers_and_count(name, pooling, spec)
        template = spec.get("template")
        if template is not None and (not isinstance(template, str) or template.count(TEXT_SLOT) != 1):
            raise ValueError(
                f"Backbone {name!r}: template must be a string with exactly one {TEXT_SLOT} slot, got {template!r}."
            )
        sizes = {
            "num_layers": num_layers,
            "hidden_size": spec.get("hidden_size"),
            "max_length": spec.get("max_length", 512),
        }
        for key, value in sizes.items():
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"Backbone {name!r}: {key} must be a positive integer, got {value!r}.")
        return cls(
            name=name,
            model=spec["model"],
            revision=spec.get("revision"),
            pooling=pooling,
            layers=layers,
            template=template,
            **sizes,
            **normalize_precision(spec),
        )

    def replace(self, **changes) -> BackboneSpec:
        """A new spec with `changes` applied, checked as `from_dict` checks a description."""
        return BackboneSpec.from_dict({**self.to_dict(), **changes})

    def to_dict(self) -> dict:
        """The JSON form `config.json` and `fec_features.json` hold."""
        return {key: self[key] for key in BACKBONE_KEYS}

    def __getitem__(self, key: str):
        if key not in BACKBONE_KEYS:
            raise KeyError(key)
        value = getattr(self, key)
        return list(value) if key == "layers" and value is not None else value

    def __iter__(self):
        return iter(BACKBONE_KEYS)

    def __eq__(self, other: object) -> bool:  # equal to a spec or a description of the same values
        return isinstance(other, Mapping) and self.to_dict() == dict(other)

    def __hash__(self) -> int:
        return hash(tuple(getattr(self, key) for key in BACKBONE_KEYS))

    def __len__(self) -> int:
        return len(BACKBONE_KEYS)


def _checked_name(spec: Mapping) -> str:
    """The backbone's name and model checked: a name that can be a feature column and a forward keyword."""
    name = spec.get("name")
    if not isinstance(name, str) or not name.isidentifier() or name in RESERVED_NAMES:
        raise ValueError(
            f"Backbone name {name!r} must be a Python identifier (it is a feature column and a forward keyword) "
            f"and not one of {sorted(RESERVED_NAMES)}."
        )
    if not isinstance(spec.get("model"), str) or not spec["model"]:
        raise ValueError(f"Backbone {name!r} needs 'model': a Hub id or a local folder, got {spec.get('model')!r}.")
    return name


def _layers_and_count(name: str, pooling: str, spec: Mapping) -> tuple[tuple[int, ...] | None, object]:
    """A description's `layers` (checked) and `num_layers` (their number; by default 5 for a layer pooling, 1
    otherwise), or a `ValueError` naming what contradicts what."""
    layers = spec.get("layers")
    if layers is not None:
        layers = tuple(_normalize_layers(name, pooling, layers))
        if spec.get("num_layers", len(layers)) != len(layers):
            raise ValueError(
                f"Backbone {name!r}: num_layers={spec['num_layers']!r} contradicts layers={list(layers)} "
                f"({len(layers)} layers); leave num_layers out."
            )
    num_layers = len(layers) if layers is not None else spec.get("num_layers", 5 if pooling in LAYER_POOLINGS else 1)
    if pooling not in (*LAYER_POOLINGS, TOKENS) and num_layers != 1:
        raise ValueError(
            f"Backbone {name!r}: num_layers={num_layers!r} needs pooling "
            f"{' or '.join(map(repr, (*LAYER_POOLINGS, TOKENS)))}, "
            f"not {pooling!r}."
        )
    return layers, num_layers


def _normalize_layers(name: str, pooling: str, layers) -> list[int]:
    """`layers` as a list of hidden-state indices, or a `ValueError` naming what is wrong with it."""
    if pooling not in (*LAYER_POOLINGS, TOKENS):
        raise ValueError(
            f"Backbone {name!r}: layers needs a layer pooling ({', '.join(LAYER_POOLINGS)}), not {pooling!r} "
            f"(or a token view, pooling {TOKENS!r})."
        )
    if isinstance(layers, str) or not isinstance(layers, list | tuple):
        raise ValueError(f"Backbone {name!r}: layers must be a list of hidden-state indices, got {layers!r}.")
    if not layers:
        raise ValueError(f"Backbone {name!r}: layers is empty; name at least one hidden-state index, or leave it out.")
    if any(not isinstance(i, int) or isinstance(i, bool) for i in layers):
        raise ValueError(f"Backbone {name!r}: layers must be integers (hidden-state indices), got {list(layers)!r}.")
    if len(set(layers)) != len(layers):
        raise ValueError(f"Backbone {name!r}: layers {list(layers)} name a hidden state twice.")
    return list(layers)


def layer_indices(spec: dict) -> list[int]:
    """The hidden-state indices a layer-pooled backbone reads, in feature order (`outputs.hidden_states[i]`;
    `hidden_states[0]` is the embeddings, negative indices count from the top): its `layers`, or by default the last
    `num_layers` layers, last first."""
    return list(spec["layers"]) if spec.get("layers") is not None else [-1 - i for i in range(spec["num_layers"])]


def token_view(spec: BackboneSpec, name: str | None = None) -> BackboneSpec:
    """The token view of a view (`--tokens NAME`): the per-token states of the tokens it reads, from the same forward
    pass (same model, template and length limit), named `name` (default `<its name>_tokens`). A layer-pooled view's
    token view averages each token over the view's layers (a window gives the per-token mean over its layers, one
    layer that layer's states); an encoder's reads its last hidden state."""
    if spec.pooling == TOKENS:
        raise ValueError(f"Backbone {spec.name!r} is a token view already.")
    layers = layer_indices(spec) if spec.pooling in LAYER_POOLINGS else None
    return spec.replace(
        name=name or f"{spec.name}_tokens", pooling=TOKENS, layers=layers, num_layers=len(layers) if layers else 1
    )


def describe_pooling(spec: BackboneSpec) -> str:
    """In words, how a backbone turns a text into its feature (for model cards and reports)."""
    if spec["pooling"] == TOKENS:
        if spec.get("layers") is None and spec["num_layers"] == 1:
            which = "its last hidden state"
        else:
            which = f"the mean of the hidden layers {layer_indices(spec)} (`hidden_states[i]`)"
        described = (
            f"for each of the text's own tokens (special tokens and the template's left out), {which} "
            f"-> tokens x {spec['hidden_size']}"
        )
    elif spec["pooling"] in LAYER_POOLINGS:
        if spec.get("layers") is None:
            which = f"each of the last {spec['num_layers']} hidden layers (last first)"
        else:
            which = f"each of the hidden layers {spec['layers']} (`hidden_states[i]`, in that order)"
        token = {
            "layer_mean": "the mean over the text's tokens (padding excluded)",
            "layer_last_token": "the hidden state of the text's last token",
            "layer_text_mean": "the mean over the text's own tokens inside the prompt (the prompt's excluded)",
        }[spec["pooling"]]
        described = f"for {which}, {token} -> {spec['num_layers']} x {spec['hidden_size']}"
    else:
        source = {
            "pooler": "pooled [CLS] output (`pooler_output`)",
            "cls": "[CLS] hidden state",
            "mean": "mean of the last hidden state over the text's tokens (padding excluded)",
        }[spec["pooling"]]
        described = f"{source} -> {spec['hidden_size']}"
    if spec.get("template") is not None:
        described += f"; each text read through the template {spec['template']!r}"
    return described


def normalize_precision(spec: dict) -> dict:
    """The `dtype`, `quantization` and `backend` a backbone was extracted with (`None` if not recorded: float32, no
    quantization, PyTorch; a `backend` of `"torch"` is `None`), or raise `ValueError` naming the bad value. All three
    change the features, so serving uses them too."""
    name, dtype, quantization = spec.get("name"), spec.get("dtype"), spec.get("quantization")
    backend = None if spec.get("backend") == "torch" else spec.get("backend")
    if dtype is not None and dtype not in DTYPES:
        raise ValueError(f"Backbone {name!r}: unknown dtype {dtype!r}; allowed: {', '.join(DTYPES)} or None.")
    if quantization is not None and quantization not in QUANTIZATIONS:
        raise ValueError(
            f"Backbone {name!r}: unknown quantization {quantization!r}; allowed: {', '.join(QUANTIZATIONS)} or None."
        )
    if backend is not None and backend not in BACKENDS:
        raise ValueError(f"Backbone {name!r}: unknown backend {backend!r}; allowed: torch, {', '.join(BACKENDS)}.")
    if backend is not None and (dtype not in (None, "float32") or quantization is not None):
        other = f"quantization {quantization!r}" if quantization is not None else f"dtype {dtype!r}"
        raise ValueError(
            f"Backbone {name!r}: backend {backend!r} computes in float32 (ONNX Runtime), not with {other}; "
            "leave it out, or use backend torch."
        )
    return {"dtype": dtype, "quantization": quantization, "backend": backend}


def describe_precision(spec: dict) -> str:
    """In words, what a backbone computes its features with (for model cards): its dtype, weights and runtime."""
    described = spec.get("dtype") or "float32"
    if spec.get("quantization"):
        described += f", {spec['quantization'].removesuffix('bit')}-bit weights (bitsandbytes)"
    if spec.get("backend") == "onnx":
        described += ", ONNX Runtime"
    elif spec.get("backend") == "onnx-int8":
        described += ", ONNX Runtime with int8 weights (dynamic quantization)"
    return described


def feature_shape(spec: BackboneSpec) -> tuple[int | None, ...]:
    """Shape of one text's feature from a backbone: `(num_layers, hidden_size)`, `(hidden_size,)`, or for a token
    view `(None, hidden_size)` (one row per token: its length varies from text to text)."""
    if spec["pooling"] == TOKENS:
        return (None, spec["hidden_size"])
    return (spec["num_layers"], spec["hidden_size"]) if spec["pooling"] in LAYER_POOLINGS else (spec["hidden_size"],)


def _check_token_head(backbones: list[BackboneSpec], token_pooling: str | None, attention_queries: int) -> None:
    """Refuse a token pooling the head does not have, token views without one (or one without token views), and a
    token view whose mask keyword would be another backbone's name."""
    if token_pooling not in (None, *TOKEN_POOLINGS_OF_HEAD):
        raise ValueError(f"token_pooling must be one of {TOKEN_POOLINGS_OF_HEAD} or None, got {token_pooling!r}.")
    if not isinstance(attention_queries, int) or isinstance(attention_queries, bool) or attention_queries < 1:
        raise ValueError(f"attention_queries must be a positive integer, got {attention_queries!r}.")
    token_views = [spec.name for spec in backbones if spec.pooling == TOKENS]
    if token_views and token_pooling is None:
        raise ValueError(
            f"Backbones {token_views} have pooling {TOKENS!r} (one vector per token): the head reads them with "
            f"token_pooling='attention'; set it, or leave those backbones out."
        )
    if token_pooling is not None and not token_views:
        raise ValueError(
            f"token_pooling={token_pooling!r} pools token views, but no backbone has pooling {TOKENS!r}: extract "
            "token-level features (`--tokens NAME`), or leave token_pooling out."
        )
    names = {spec.name for spec in backbones}
    if clashes := [name for name in token_views if name + MASK_SUFFIX in names]:
        raise ValueError(
            f"Backbone names {[n + MASK_SUFFIX for n in clashes]} are the masks of token views; rename them."
        )


class LLMFusionConfig(PretrainedConfig):
    r"""
    Configuration of [`LLMFusionForSequenceClassification`]: frozen features of several backbones (one decoder LLM
    pooled layer by layer, encoders pooled at [CLS]) fused by a co-occurrence head (LLM-FusionClassifier, after
    LLMEmbed, ACL 2024). The defaults are the paper's backbones and head.

    Args:
        backbones (`list[dict]`, *optional*, defaults to the `"paper"` preset):
            The backbones in order. Each dict has `name` (feature column and forward keyword), `model` (Hub id or local
            folder), `revision` (optional pinned revision), `pooling` (one of `"layer_mean"`, `"layer_last_token"`,
            `"layer_text_mean"`, `"pooler"`, `"cls"`, `"mean"`; see `POOLINGS`), `num_layers` (k, the number of
            hidden layers a layer pooling reads; by default the last k, last first), `layers` (optional, layer
            poolings only: the hidden-state indices to read, in feature order, as in `outputs.hidden_states[i]`,
            where 0 is the embeddings and negative indices count from the top; `num_layers` is then their number),
            `template` (optional: a prompt
            with one `{text}` slot that each text fills before tokenization, e.g. PromptEOL's `'This sentence :
            "{text}" means in one word:"'`), `hidden_size` (feature width) and `max_length` (tokens; longer texts,
            template included, are truncated at the end), `dtype` (the compute dtype the features were extracted with:
            `"float32"`, `"bfloat16"` or `"float16"`; `None` means float32) and `quantization` (`None`, `"8bit"` or
            `"4bit"`: the backbone's weights loaded quantized by bitsandbytes, which needs a CUDA GPU) and `backend`
            (`None`: PyTorch; `"onnx"` or `"onnx-int8"`: ONNX Runtime on the CPU, see `BACKENDS`). The pipeline
            loads each backbone with its recorded dtype, quantization and backend.
        fusion_dim (`int`, *optional*, defaults to 1024):
            Width of the vectors whose co-occurrence matrix is taken. LLM layers are projected to it by
            Linear+ReLU+Dropout; an encoder of another width by a Linear layer.
        sigma (`float`, *optional*, defaults to 1.0):
            Power normalisation `2 * sigmoid(sigma * x) - 1` of the co-occurrence values.
        dropout (`float`, *optional*, defaults to 0.5):
            Dropout after each projection and hidden MLP layer.
        mlp_dims (`list[int]`, *optional*, defaults to `[1024, 256]`):
            Hidden widths of the classifier MLP.
        threshold (`float`, *optional*, defaults to 0.5):
            Decision threshold on sigmoid scores for multi-label problems (chosen on validation by training).
        standardize_features (`bool`, *optional*, defaults to `False`):
            Standardise each feature dimension with the training set's mean and standard deviation (kept in the
            model) before the head sees it. Off in the paper; it tames backbones whose mean hidden states have a few
            huge dimensions, which otherwise dominate the head and saturate the power normalisation.
        encoders_in_tail (`bool`, *optional*, defaults to `False`):
            Also concatenate each encoder's vector to the MLP input, after the mean of the LLM layer vectors. In the
            paper only the LLM's features reach the MLP directly and the encoders enter through their co-occurrence
            values alone, which suits an LLM stronger than its encoders; with a small LLM the encoders' own features
            are needed.
        ensemble_size (`int`, *optional*, defaults to 1):
            Number of heads of this config whose probabilities a seed ensemble
            (`LLMFusionEnsembleForSequenceClassification`) averages; 1 for a single head.
        feature_dtype (`str`, *optional*):
            The dtype the training features were stored in (`"float16"` or `"float32"`; `None`: not recorded, served
            as computed). Serving rounds the backbones' features to it before the head, so that the head sees the
            numbers it was trained on.
        token_pooling (`str`, *optional*):
            How the head reads the token views (backbones with pooling `"tokens"`: one vector per token of the text):
            `"attention"` pools each by learned attention, `attention_queries` vectors per view (for each query, a
            masked softmax over the text's tokens of a learned linear score of each token, then the weighted mean of
            the token vectors). The pooled vectors enter the fusion as an LLM view's layer vectors do (each projected
            into the co-occurrence, their mean to the MLP). Each query starts at zero, where its weights are uniform:
            the head starts from the mean of the text's tokens and learns which words to weigh. `None` (the default):
            no token views, the head as it always was.
        attention_queries (`int`, *optional*, defaults to 1):
            Learned queries per token view with `token_pooling="attention"`: pooled vectors per view.
        temperature (`float`, *optional*, defaults to 1.0):
            The logits are divided by it before the softmax (or sigmoid) whose probabilities the pipeline reports and
            the multi-label `threshold` applies to. Training fits it on the validation split (lowest negative
            log-likelihood) and keeps it where it lowers the validation expected calibration error, so that a score
            reads as a confidence; single-label decisions (the top label) do not depend on it.
    """

    model_type = "llm_fusion"
    # Declared as a field: `save_pretrained` refuses an undeclared attribute named like a generation parameter.
    temperature: float = 1.0

    def __init__(
        self,
        backbones: list[dict] | None = None,
        fusion_dim: int = 1024,
        sigma: float = 1.0,
        dropout: float = 0.5,
        mlp_dims: list[int] | tuple[int, ...] = (1024, 256),
        threshold: float = 0.5,
        standardize_features: bool = False,
        encoders_in_tail: bool = False,
        ensemble_size: int = 1,
        feature_dtype: str | None = None,
        token_pooling: str | None = None,
        attention_queries: int = 1,
        temperature: float = 1.0,
        **kwargs,
    ):
        backbones = copy.deepcopy(PRESETS["paper"]["backbones"] if backbones is None else list(backbones))
        if not backbones:
            raise ValueError("LLMFusionConfig needs at least one backbone, got none.")
        self.backbones = [BackboneSpec.from_dict(spec) for spec in backbones]
        names = [spec["name"] for spec in self.backbones]
        if len(set(names)) != len(names):
            raise ValueError(f"Backbone names must be unique, got {names}.")
        if not isinstance(fusion_dim, int) or fusion_dim < 1:
            raise ValueError(f"fusion_dim must be a positive integer, got {fusion_dim!r}.")
        if not sigma > 0:
            raise ValueError(f"sigma must be positive, got {sigma!r}.")
        if not 0 <= dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {dropout!r}.")
        mlp_dims = list(mlp_dims)
        if any(not isinstance(d, int) or d < 1 for d in mlp_dims):
            raise ValueError(f"mlp_dims must be positive integers, got {mlp_dims!r}.")
        if not 0 < threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {threshold!r}.")
        if not isinstance(ensemble_size, int) or ensemble_size < 1:
            raise ValueError(f"ensemble_size must be a positive integer, got {ensemble_size!r}.")
        self.fusion_dim = fusion_dim
        self.sigma = float(sigma)
        self.dropout = float(dropout)
        self.mlp_dims = mlp_dims
        self.threshold = float(threshold)
        self.standardize_features = bool(standardize_features)
        self.encoders_in_tail = bool(encoders_in_tail)
        if feature_dtype not in (None, *FEATURE_DTYPES):
            raise ValueError(f"feature_dtype must be one of {FEATURE_DTYPES} or None, got {feature_dtype!r}.")
        if isinstance(temperature, bool) or not isinstance(temperature, int | float) or not 0 < temperature < math.inf:
            raise ValueError(f"temperature must be a positive finite number, got {temperature!r}.")
        self.ensemble_size = ensemble_size
        self.feature_dtype = feature_dtype
        _check_token_head(self.backbones, token_pooling, attention_queries)
        self.token_pooling = token_pooling
        self.attention_queries = attention_queries
        self.temperature = float(temperature)
        super().__init__(**kwargs)

    @classmethod
    def from_preset(cls, preset: str, **kwargs) -> LLMFusionConfig:
        """A config with a named preset's backbones and head options (`"paper"` or `"small"`); `kwargs` override."""
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset {preset!r}; allowed: {', '.join(PRESETS)}.")
        return cls(backbones=PRESETS[preset]["backbones"], **{**PRESETS[preset]["head"], **kwargs})

    def to_dict(self) -> dict:
        """The config as `config.json` holds it: each backbone in its JSON form (`BackboneSpec.to_dict`)."""
        output = super().to_dict()
        output["backbones"] = [spec.to_dict() for spec in self.backbones]
        return output

    def backbone(self, name: str) -> BackboneSpec:
        """The description of the backbone called `name`."""
        for spec in self.backbones:
            if spec["name"] == name:
                return spec
        raise ValueError(f"No backbone named {name!r}; this config has {[s['name'] for s in self.backbones]}.")

    @property
    def feature_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """Shape of one text's feature for each backbone: `(k, width)` for the layer poolings, `(None, width)` for the
        token views (one row per token), `(width,)` otherwise."""
        return {spec["name"]: feature_shape(spec) for spec in self.backbones}

    @property
    def token_views(self) -> list[str]:
        """The names of the token views (pooling `"tokens"`), in backbone order."""
        return [spec.name for spec in self.backbones if spec.pooling == TOKENS]


__all__ = [
    "BACKENDS",
    "BackboneSpec",
    "MASK_SUFFIX",
    "TOKENS",
    "describe_precision",
    "DTYPES",
    "FEATURE_DTYPES",
    "LAYER_POOLINGS",
    "LLMFusionConfig",
    "POOLINGS",
    "PRESETS",
    "QUANTIZATIONS",
    "token_view",
]
