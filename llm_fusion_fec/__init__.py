"""llm-fusion-fec: fine-grained emotion classification from frozen LLM and encoder features fused by a small head.

    from llm_fusion_fec import extract, train

    extract("ED", preset="small", limit=500)         # features/ED, as `fec extract`
    results = train(dataset="ED", seeds=5, ensemble=True)   # outputs/llm-fusion-ed, as `fec train`

The model itself is in the Hub files beside the package (`configuration_llm_fusion`, `modeling_llm_fusion`,
`pipeline_fec`). Names are imported when first used, so `import llm_fusion_fec` (and `fec --help`) stays instant.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_EXPORTS = {
    "extract": "llm_fusion_fec.features.run",
    "ExtractArguments": "llm_fusion_fec.arguments",
    "ExtractionResult": "llm_fusion_fec.features.extraction",
    "train": "llm_fusion_fec.training.run",
    "FusionArguments": "llm_fusion_fec.arguments",
    "RunResults": "llm_fusion_fec.evaluation.results",
    "Labeller": "llm_fusion_fec.inference.labelling",
}
__all__ = list(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
