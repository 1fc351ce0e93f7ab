"""An Inference Endpoints handler for an LLM-fusion emotion classifier: `handler.py` at the model repository's root.

Inference Endpoints runs a repository's `handler.py` when it has one: `EndpointHandler(path)` once when the endpoint
starts, then `handler(data)` for each request, `data` being the request's JSON:

    {"inputs": "I finally got the job!", "parameters": {"top_k": 3}}
    {"inputs": ["text one", "text two"]}

The answer is the `text-classification` pipeline's, from the model's own pipeline (`pipeline_fec.py` beside this
file): the backbones load as `config.json` records them (their dtype and quantization), on the GPU where there is
one. Parameters other than `PARAMETERS`, an empty input and a text that is not a non-empty string are refused with a
`ValueError` that names them, which the endpoint returns as the request's error.

The package that trained the model saves this file into every model folder; it needs nothing but torch and
transformers.
"""

from __future__ import annotations

from typing import Any

import torch
from transformers import pipeline

PARAMETERS = ("top_k", "function_to_apply", "threshold", "batch_size")
"""The request parameters this handler takes: the pipeline's own (see `pipeline_fec.FECPipeline.__call__`)."""


class EndpointHandler:
    """The model's pipeline behind the Inference Endpoints contract.

    Args:
        path (`str`, *optional*, defaults to `""`):
            The model repository's local copy, as the endpoint passes it (the current folder if empty).
        device (`int`, `str` or `torch.device`, *optional*):
            Where the backbones and the head run; the first GPU if there is one, else the CPU.
        backbone_paths (`dict[str, str]`, *optional*):
            Local folders to load backbones from instead of the Hub ids of the config, by backbone name.
    """

    def __init__(self, path: str = "", device: Any = None, backbone_paths: dict[str, str] | None = None):
        if device is None:
            device = 0 if torch.cuda.is_available() else "cpu"
        options = {"backbone_paths": backbone_paths} if backbone_paths else {}
        self.pipeline = pipeline(
            "text-classification", model=path or ".", trust_remote_code=True, device=device, **options
        )

    def __call__(self, data: dict[str, Any]) -> list:
        """The pipeline's answer to `data["inputs"]` (a text or a list of texts) with `data["parameters"]`."""
        if not isinstance(data, dict) or "inputs" not in data:
            raise ValueError('The request must be a JSON object with "inputs": a text or a list of texts.')
        inputs, parameters = data["inputs"], data.get("parameters")
        if parameters is None:  # absent or null: no parameters; any other value that is no object is refused
            parameters = {}
        if not isinstance(parameters, dict):
            raise ValueError(
                f'"parameters" must be a JSON object such as {{"top_k": 3}}, got {type(parameters).__name__} '
                f"{parameters!r:.40}."
            )
        unknown = sorted(set(parameters) - set(PARAMETERS))
        if unknown:
            raise ValueError(f"Unknown parameter(s) {unknown}; this endpoint takes {', '.join(PARAMETERS)}.")
        if isinstance(inputs, list) and not inputs:
            raise ValueError('"inputs" is an empty list: send a text or a list of texts.')
        if not isinstance(inputs, str | list):
            raise ValueError(f'"inputs" must be a text or a list of texts, got {type(inputs).__name__}.')
        return self.pipeline(inputs, **parameters)
