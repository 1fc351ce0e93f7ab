"""LLM fusion classifier: frozen backbone features fused by a co-occurrence head.

Read top to bottom, the file follows the data: text -> frozen backbone features (`FrozenBackbone`, the one place
where features are computed, used by extraction and by the pipeline) -> fusion vector (`fuse`) -> MLP -> logits.
"""

from __future__ import annotations

import copy
import importlib.util
import math
import threading
from collections.abc import Sequence

import torch
from torch import nn
from transformers import AutoModel, AutoTokenizer, BitsAndBytesConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import ModelOutput, can_return_tuple, logging

try:
    from .configuration_llm_fusion import (
        LAYER_POOLINGS,
        TEXT_SLOT,
        LLMFusionConfig,
        feature_shape,
        layer_indices,
        normalize_backbone,
    )
except ImportError:  # imported from the repository root rather than as a Hub module
    from configuration_llm_fusion import (
        LAYER_POOLINGS,
        TEXT_SLOT,
        LLMFusionConfig,
        feature_shape,
        layer_indices,
        normalize_backbone,
    )

try:  # transformers records hidden states by hooks it puts on the layers a model has when first asked for them
    from transformers.utils.output_capturing import maybe_install_capturing_hooks as install_capturing_hooks
except ImportError:  # a version that records them otherwise
    install_capturing_hooks = None

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


def backbone_path(spec: dict, paths: dict[str, str]) -> str | None:
    """The local folder `paths` gives a backbone: by its name, or by its model id, which points every view of one
    model (other layers, another prompt) at one folder."""
    return paths.get(spec["name"]) or paths.get(spec["model"])


def shared_passes(backbones: Sequence[FrozenBackbone]) -> list[list[FrozenBackbone]]:
    """The backbones in groups that one forward pass serves: each backbone with every later one that reads like it
    (`FrozenBackbone.reads_like`), in their order."""
    groups, grouped = [], set()
    for i, backbone in enumerate(backbones):
        if i not in grouped:
            group = [j for j in range(i, len(backbones)) if j not in grouped and backbone.reads_like(backbones[j])]
            grouped.update(group)
            groups.append([backbones[j] for j in group])
    return groups


def paths_by_model(specs: Sequence[dict], paths: dict[str, str]) -> dict[str, str]:
    """`paths` with the folder given by a backbone's name also given to its model id (unless the id has its own):
    one folder for one backbone serves every view of that model."""
    models = {spec["name"]: spec["model"] for spec in specs}
    return {**{models[key]: path for key, path in paths.items() if key in models}, **paths}


def compute_dtype(spec: dict) -> torch.dtype:
    """The dtype a backbone computes its features in: the one its spec records (`dtype`), float32 if none."""
    return getattr(torch, spec.get("dtype") or "float32")


def quantization_config(
    spec: dict, dtype: torch.dtype, device: str | torch.device | None = None
) -> BitsAndBytesConfig | None:
    """The `quantization_config` that loads a backbone's weights as its spec records (`quantization`: `"8bit"` or
    `"4bit"`, through bitsandbytes), or `None` for full-precision weights.

    bitsandbytes is only looked for (never imported here) when a spec asks for it, so CPU-only installs without it
    work; without it, or without a CUDA GPU, this raises a `ValueError` saying what is needed.
    """
    quantization = spec.get("quantization")
    if quantization is None:
        return None
    bits = quantization.removesuffix("bit")
    if importlib.util.find_spec("bitsandbytes") is None:
        missing = "bitsandbytes is not installed"
    elif not torch.cuda.is_available():
        missing = "no CUDA GPU is available"
    elif device is not None and torch.device(device).type != "cuda":
        missing = f"the device is {device}"
    else:
        if quantization == "4bit":
            return BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_compute_dtype=dtype)
        return BitsAndBytesConfig(load_in_8bit=True)
    raise ValueError(
        f"Backbone {spec['name']!r}: {bits}-bit quantization needs bitsandbytes and a CUDA GPU: "
        f"pip install bitsandbytes ({missing})."
    )


# Held by each forward pass: a pass may run a model that other views share with fewer layers (`run_model`).
_ONE_PASS = threading.Lock()


class FrozenBackbone:
    """A frozen backbone with its tokenizer and pooling: texts in, one pooled feature per text out.

    Args:
        spec (`dict`): One entry of `LLMFusionConfig.backbones`.
        model (`PreTrainedModel`): The backbone without task head (`AutoModel`).
        tokenizer: Its tokenizer.
    """

    def __init__(self, spec: dict, model: PreTrainedModel, tokenizer):
        self.spec = normalize_backbone(spec)
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        if tokenizer.pad_token is None:
            # Decoders often have no pad token; padded positions are masked out of every pooling anyway.
            tokenizer.pad_token = tokenizer.eos_token or tokenizer.unk_token
            if tokenizer.pad_token is None:
                raise ValueError(f"Backbone {spec['name']!r}: the tokenizer has no pad, eos or unk token to pad with.")
        # Right padding keeps every real token at the position it has alone, so causal decoders see exactly the
        # unpadded text (left padding would shift the position ids of Llama-style models).
        tokenizer.padding_side = "right"
        # Longer texts are truncated: to the configured max_length, or to what the model can take if that is less.
        model_limit = tokenizer.model_max_length if tokenizer.model_max_length < 1_000_000 else self.spec["max_length"]
        self.max_length = min(self.spec["max_length"], model_limit)
        self.check_config(self.spec, model.config)
        self.texts_seen = self.tokens_seen = 0
        self.shallow_passes = True  # whether a pass may skip the layers above what it reads (`run_model`)

    @classmethod
    def load(
        cls,
        spec: dict,
        path: str | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        device_map: str | dict | None = None,
    ) -> FrozenBackbone:
        """Load the backbone `spec` names (or the local folder `path` instead) with its tokenizer.

        `dtype` is the compute dtype (pinned: transformers otherwise loads in the checkpoint's dtype); by default the
        one `spec` records (`compute_dtype`). With a recorded `quantization` the weights are loaded quantized by
        bitsandbytes (`quantization_config`), on a CUDA GPU. `device_map="auto"` spreads a model larger than one GPU
        over the available devices.
        """
        source = path or spec["model"]
        revision = None if path else spec.get("revision")
        dtype = dtype if dtype is not None else compute_dtype(spec)
        quantization = quantization_config(spec, dtype, device)
        if quantization is not None and device_map is None:
            # bitsandbytes places the weights while loading; a quantized model cannot be moved afterwards.
            device_map = {"": str(torch.device(device or "cuda"))}
        try:
            tokenizer = AutoTokenizer.from_pretrained(source, revision=revision)
            model = AutoModel.from_pretrained(
                source, revision=revision, dtype=dtype, device_map=device_map, quantization_config=quantization
            )
        except (OSError, ValueError) as error:
            # Offline, or without access to a gated model, a local copy of it is the way.
            hint = "" if path else f" (a local copy: backbone_paths={{{spec['name']!r}: FOLDER}}, --backbone-path)"
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"Backbone {spec['name']!r} could not be loaded from {source!r}{hint}: {first_line}"
            ) from error
        if device_map is None and device is not None:
            model.to(device)
        return cls(spec, model, tokenizer)

    @staticmethod
    def hidden_state_count(config) -> int:
        """Number of hidden states a model returns with `output_hidden_states=True`: the embeddings and each layer."""
        return config.get_text_config().num_hidden_layers + 1

    @staticmethod
    def check_config(spec: dict, config) -> None:
        """Raise `ValueError` if a model config (loaded or not) does not give the features `spec` describes."""
        config = config.get_text_config()
        name, width, layers = spec["name"], spec["hidden_size"], spec["num_layers"]
        if config.hidden_size != width:
            raise ValueError(
                f"Backbone {name!r} ({spec['model']}) has hidden size {config.hidden_size}, "
                f"but the config expects {width}."
            )
        if spec.get("layers") is None:
            if layers > config.num_hidden_layers:
                raise ValueError(
                    f"Backbone {name!r} ({spec['model']}) has {config.num_hidden_layers} layers, "
                    f"fewer than num_layers={layers}."
                )
            return
        count = FrozenBackbone.hidden_state_count(config)
        outside = [i for i in spec["layers"] if not -count <= i < count]
        if outside:
            raise ValueError(
                f"Backbone {name!r} ({spec['model']}) has {count} hidden states (embeddings and "
                f"{count - 1} layers: indices 0..{count - 1} or {-count}..-1); layers {outside} are out of range."
            )
        resolved = [i % count for i in spec["layers"]]
        if len(set(resolved)) != len(resolved):
            raise ValueError(
                f"Backbone {name!r}: layers {spec['layers']} name the same hidden state twice in a model with "
                f"{count} hidden states."
            )

    def reads_like(self, other: FrozenBackbone) -> bool:
        """Whether `other` reads the same tokens with the same weights (its model, template and length limit), so
        that one forward pass gives the features of both: views of one model that differ only in their layers or
        pooling, such as a prompt's last token and the text's mean inside the same prompt."""
        return other.model is self.model and same_input(self.spec, other.spec) and other.max_length == self.max_length

    def extract(
        self,
        texts: Sequence[str],
        batch_size: int = 16,
        max_tokens: int | None = None,
        dtype: torch.dtype = torch.float32,
        progress=None,
    ) -> torch.Tensor:
        """Features of many texts, in their order, on the CPU in `dtype`: computed in batches of similar length,
        so that little padding is computed (`batch_size` texts and `max_tokens` padded tokens at most a batch).
        `progress.update(n)` is called after each batch. `texts_seen` / `tokens_seen` count the work done. The texts
        are not checked here: their entry point checked them (`validate_texts`)."""
        return self.extract_views(texts, [self], batch_size, max_tokens, dtype, progress)[0]

    def extract_views(
        self,
        texts: Sequence[str],
        views: Sequence[FrozenBackbone],
        batch_size: int = 16,
        max_tokens: int | None = None,
        dtype: torch.dtype = torch.float32,
        progress=None,
    ) -> list[torch.Tensor]:
        """`extract` for several views that read like this backbone (`reads_like`), in one forward pass a batch."""
        lengths = self.count_tokens(texts)
        outs = [torch.empty((len(texts), *feature_shape(view.spec)), dtype=dtype) for view in views]
        for indices in length_sorted_batches(lengths, batch_size, max_tokens):
            for out, values in zip(outs, self.views([texts[i] for i in indices], views), strict=True):
                out[indices] = values.to("cpu", dtype)
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
        template = self.spec["template"]
        if template is None:
            return list(texts)
        # str.replace, not str.format: other braces in a template are plain text.
        return [template.replace(TEXT_SLOT, text) for text in texts]

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
        forward pass of this backbone's model."""
        if strangers := [view.spec["name"] for view in views if not self.reads_like(view)]:
            raise ValueError(f"Backbones {strangers} do not read the tokens {self.spec['name']!r} reads.")
        text_spans = any(view.spec["pooling"] == "layer_text_mean" for view in views) and self.spec["template"]
        batch = self.tokenizer(
            self.prompts(texts),
            padding=True,
            truncation=True,
            max_length=self.max_length,
            return_tensors="pt",
            return_offsets_mapping=bool(text_spans),
        )
        input_ids = batch["input_ids"].to(self.device)
        attention_mask = batch["attention_mask"].to(self.device)
        hidden = any(view.spec["pooling"] in LAYER_POOLINGS for view in views)
        with _ONE_PASS:
            outputs = self.run_model(input_ids, attention_mask, hidden, self.layers_needed(views))
        text_mask = self.text_mask(texts, batch["offset_mapping"]).to(self.device) if text_spans else attention_mask
        return [view.pool(outputs, attention_mask, text_mask) for view in views]

    def layers_needed(self, views: Sequence[FrozenBackbone]) -> int | None:
        """How many of the model's layers a forward pass for `views` has to run, when that is fewer than all: the
        layers below the deepest hidden state they read, and one more, since a model normalises the output of the
        last layer it runs (`hidden_states[-1]` is `last_hidden_state`). `None` when every layer is needed: a view
        pools the last hidden state, reads one of the top two, or the model keeps its layers elsewhere than in a
        `layers` list (BERT-style encoders keep them in `encoder.layer`)."""
        if any(view.spec["pooling"] not in LAYER_POOLINGS for view in views):
            return None
        layers = getattr(self.model, "layers", None)
        count = self.hidden_state_count(self.model.config)
        if not isinstance(layers, nn.ModuleList) or len(layers) != count - 1:
            return None
        needed = max(i % count for view in views for i in layer_indices(view.spec)) + 1
        return needed if needed < len(layers) else None

    def run_model(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, hidden: bool, needed: int | None
    ) -> ModelOutput:
        """The model's outputs, computed by its first `needed` layers only (all if `None`): the layers above the
        hidden states a pass reads cost time and change none of them. Views share the model, so the caller holds
        `_ONE_PASS` while the model runs shortened."""
        if needed is not None and self.shallow_passes:
            if install_capturing_hooks is not None:  # on every layer, before the model runs shortened for once
                install_capturing_hooks(self.model)
            layers = self.model.layers
            self.model.layers = layers[:needed]
            try:
                outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True)
            finally:
                self.model.layers = layers
            if len(outputs.hidden_states) == needed + 1:
                return outputs
            self.shallow_passes = False  # this model records its hidden states otherwise: it runs whole from now on
        return self.model(input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=hidden)

    def text_mask(self, texts: Sequence[str], offsets: torch.Tensor) -> torch.Tensor:
        """1 at the tokens of each text inside its prompt (the tokens whose characters overlap the text's), 0 at the
        template's own tokens and the padding: what `layer_text_mean` averages over."""
        start = self.spec["template"].index(TEXT_SLOT)
        ends = torch.tensor([start + len(text) for text in texts]).unsqueeze(1)
        mask = ((offsets[..., 0] < ends) & (offsets[..., 1] > start)).long()
        if (mask.sum(dim=1) == 0).any():
            raise ValueError(
                f"Backbone {self.spec['name']!r}: its template leaves no token of a text within max_length="
                f"{self.max_length} tokens; raise max_length or shorten the template."
            )
        return mask

    def pool(self, outputs, attention_mask: torch.Tensor, text_mask: torch.Tensor) -> torch.Tensor:
        """This backbone's feature from a forward pass's `outputs` (float32): `text_mask` marks the text's own tokens
        (the real tokens where there is no template)."""
        pooling = self.spec["pooling"]
        if pooling in LAYER_POOLINGS:
            # In feature order: by default the last k layers, last first (index i is the i-th layer from the top).
            # Indices count in all the model's hidden states: a shortened pass (`run_model`) returns the lower ones.
            count = self.hidden_state_count(self.model.config)
            layers = [outputs.hidden_states[i % count] for i in layer_indices(self.spec)]
            if pooling == "layer_last_token":
                # Right padding: a text's last real token sits at (its number of real tokens - 1).
                last = attention_mask.sum(dim=1) - 1
                rows = torch.arange(len(last), device=last.device)
                return torch.stack([layer[rows, last].float() for layer in layers], dim=1)
            mask = text_mask if pooling == "layer_text_mean" else attention_mask
            return torch.stack([token_mean(layer, mask) for layer in layers], dim=1)
        if pooling == "pooler":
            if getattr(outputs, "pooler_output", None) is None:
                raise ValueError(f"Backbone {self.spec['name']!r} has no pooler; use pooling 'cls' instead.")
            return outputs.pooler_output.float()
        if pooling == "mean":
            return token_mean(outputs.last_hidden_state, attention_mask)
        return outputs.last_hidden_state[:, 0].float()


def same_weights(spec: dict, path: str | None = None, dtype: torch.dtype | None = None) -> tuple:
    """What a loaded backbone depends on: its weights (a local folder, else its Hub id and revision), the dtype it
    computes in and its quantization. Backbone descriptions with equal keys share one loaded model."""
    source = (path, None) if path else (spec["model"], spec["revision"])
    return *source, dtype or compute_dtype(spec), spec["quantization"]


def same_input(a: dict, b: dict) -> bool:
    """Whether two backbone descriptions tokenize a text alike (the same template and length limit): given the same
    weights, one forward pass serves both."""
    return a["template"] == b["template"] and a["max_length"] == b["max_length"]


def token_mean(states: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The mean of `(batch, tokens, width)` hidden states over each text's real tokens, float32 `(batch, width)`:
    padding never enters a text's features."""
    mask = attention_mask.unsqueeze(-1).float()
    return (states.float() * mask).sum(dim=1) / mask.sum(dim=1)


def decide(logits: torch.Tensor, problem_type: str | None, threshold: float) -> torch.Tensor:
    """The decisions a model makes from its logits: the top label id of each row, or for multi-label problems the
    multi-hot rows of labels whose sigmoid score is above `threshold`. Training scores these and the pipeline answers
    with them: one rule for both."""
    if problem_type == "multi_label_classification":
        return (logits.float().sigmoid() > threshold).int()
    return logits.argmax(dim=-1)


class LLMFusionPreTrainedModel(PreTrainedModel):
    config_class = LLMFusionConfig
    base_model_prefix = "fusion"
    supports_gradient_checkpointing = False
    # forward's **kwargs are backbone features, not loss kwargs: `Trainer` must not pass `num_items_in_batch` in them.
    accepts_loss_kwargs = False

    def _init_weights(self, module: nn.Module) -> None:
        # PyTorch's default Linear initialisation, as the original head used.
        if isinstance(module, nn.Linear):
            module.reset_parameters()

    def __init__(self, config: LLMFusionConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self._backbones: dict[str, FrozenBackbone] = {}  # loaded on demand, never part of the state dict

    def output(self, logits: torch.Tensor, labels: torch.Tensor | None) -> SequenceClassifierOutput:
        """What `forward` returns for `logits`: with the loss when `labels` are given, by the config's problem type
        (`ForSequenceClassificationLoss`: set from the labels' dtype on first use, as transformers' heads do)."""
        loss = None if labels is None else self.loss_function(labels, logits, self.config)
        return SequenceClassifierOutput(loss=loss, logits=logits)

    def decide(self, logits: torch.Tensor) -> torch.Tensor:
        """This model's decisions for `logits` (`decide` with its problem type and its `config.threshold`)."""
        return decide(logits, self.config.problem_type, self.config.threshold)

    def load_backbones(
        self,
        paths: dict[str, str] | None = None,
        device: str | torch.device | None = None,
        dtype: torch.dtype | None = None,
        device_map: str | dict | None = None,
    ) -> dict[str, FrozenBackbone]:
        """Load (once) the frozen backbones the config names; `paths` points any of them at a local folder, by
        backbone name or by model id (`backbone_path`).

        Each backbone computes in the dtype its spec records (the one its training features were extracted with,
        float32 if none) and with its recorded quantization, unless `dtype` names another dtype for all of them.
        Backbones that read the same weights the same way (e.g. two views of one LLM: other layers or another
        prompt) share one loaded model.
        """
        paths = dict(paths or {})
        known = {key for spec in self.config.backbones for key in (spec["name"], spec["model"])}
        if unknown := sorted(set(paths) - known):
            raise ValueError(f"backbone_paths names unknown backbone(s) or model(s) {unknown}.")
        paths = paths_by_model(self.config.backbones, paths)
        paths = {spec["name"]: path for spec in self.config.backbones if (path := backbone_path(spec, paths))}
        device = device if device is not None else self.device

        def weights(spec: dict) -> tuple:
            return same_weights(spec, paths.get(spec["name"]), dtype)

        loaded = {weights(backbone.spec): backbone for backbone in self._backbones.values()}
        for spec in self.config.backbones:
            if spec["name"] not in self._backbones:
                twin = loaded.get(weights(spec))
                self._backbones[spec["name"]] = loaded[weights(spec)] = (
                    FrozenBackbone(spec, twin.model, twin.tokenizer)
                    if twin is not None
                    else FrozenBackbone.load(
                        spec, paths.get(spec["name"]), device=device, dtype=dtype, device_map=device_map
                    )
                )
        return self._backbones

    def extract_features(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Features of `texts` from every backbone (loaded with `load_backbones` first, or on first use). A text no
        backbone can read raises a `TypeError` or `ValueError` naming its position (`validate_texts`)."""
        return self.backbone_features(validate_texts(texts))

    def backbone_features(self, texts: list[str]) -> dict[str, torch.Tensor]:
        """`extract_features` for texts their caller has checked (`validate_texts`), as the pipeline checks its
        inputs, once and as the caller gave them."""
        backbones = self._backbones or self.load_backbones()
        features = {}
        for views in shared_passes(list(backbones.values())):
            for view, values in zip(views, views[0].views(texts, views), strict=True):
                # Clones are ordinary tensors: inference-mode tensors cannot enter autograd (fine-tuning the head).
                features[view.spec["name"]] = values.clone()
        return {name: features[name] for name in backbones}  # in the config's order


class LLMFusionForSequenceClassification(LLMFusionPreTrainedModel):
    """Fusion head over frozen backbone features.

    The features of each text, one keyword per backbone (`config.backbones[i]["name"]`):
    layer-pooled backbones (`layer_mean`, `layer_last_token`) give `(batch, k, width)`, encoders `(batch, width)`,
    in any float dtype.
    Each LLM layer vector goes through its own Linear+ReLU+Dropout to `fusion_dim`; encoder vectors are used as they
    are (or linearly projected when their width differs). The stacked vectors V give the co-occurrence matrix V V^T,
    power-normalised by `2 * sigmoid(sigma * x) - 1` and flattened, followed by the mean of the raw LLM layer
    vectors; an MLP maps that to the labels.
    """

    def __init__(self, config: LLMFusionConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.main_input_name = config.backbones[0]["name"]

        def block(width_in: int, width_out: int) -> nn.Sequential:
            return nn.Sequential(nn.Linear(width_in, width_out), nn.ReLU(), nn.Dropout(config.dropout))

        self.layer_projections = nn.ModuleDict()
        self.encoder_projections = nn.ModuleDict()
        num_vectors, tail_width = 0, 0
        for spec in config.backbones:
            name, width = spec["name"], spec["hidden_size"]
            if spec["pooling"] in LAYER_POOLINGS:
                self.layer_projections[name] = nn.ModuleList(
                    block(width, config.fusion_dim) for _ in range(spec["num_layers"])
                )
                num_vectors += spec["num_layers"]
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
                self.register_buffer(f"{name}_mean", torch.zeros(shape))
                self.register_buffer(f"{name}_std", torch.ones(shape))
        self.post_init()

    def _features(self, features: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        expected = self.config.feature_shapes
        missing = [name for name in expected if features.get(name) is None]
        if missing:
            raise ValueError(f"Missing features for backbone(s) {missing}; this model expects {list(expected)}.")
        unknown = sorted(set(features) - set(expected))
        if unknown:
            raise ValueError(f"Unexpected inputs {unknown}; this model expects {list(expected)} and `labels`.")
        checked = {}
        for name, shape in expected.items():
            value = torch.as_tensor(features[name], device=self.device)
            # (batch, *shape); leading dimensions before the batch are allowed (seeds trained together: SeedStack).
            if value.dim() <= len(shape) or tuple(value.shape[-len(shape) :]) != shape:
                raise ValueError(f"Features {name!r} have shape {tuple(value.shape)}, expected (batch, {shape}).")
            checked[name] = value.to(self.dtype)
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
        projected, then the encoders in config order), and the vectors that go to the MLP as they are: the mean of
        the raw LLM layer vectors (and, with `encoders_in_tail`, the raw encoder vectors in config order)."""
        features = self._features(features)
        if self.config.standardize_features:
            features = {
                name: (value - getattr(self, f"{name}_mean")) / getattr(self, f"{name}_std")
                for name, value in features.items()
            }
        llm_vectors, encoder_vectors, tails = [], [], []
        for spec in self.config.backbones:
            name, value = spec["name"], features[spec["name"]]
            if spec["pooling"] in LAYER_POOLINGS:
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
        multi-label thresholds may differ: the ensemble starts with the first one's (training chooses its own)."""

        def shared(config: LLMFusionConfig) -> dict:  # all but where each was loaded from and its own threshold
            ignored = ("ensemble_size", "threshold", "transformers_version")
            return {
                key: value for key, value in config.to_dict().items() if not key.startswith("_") and key not in ignored
            }

        if any(shared(member.config) != shared(members[0].config) for member in members):
            raise ValueError("The members of an ensemble must share one config (backbones, head and labels).")
        config = copy.deepcopy(members[0].config)
        config.ensemble_size = len(members)
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
    "FrozenBackbone",
    "length_sorted_batches",
    "LLMFusionEnsembleForSequenceClassification",
    "LLMFusionForSequenceClassification",
    "LLMFusionPreTrainedModel",
    "quantization_config",
    "validate_text",
    "validate_texts",
]
