"""Build the fusion pipeline from saved model folders with `trust_remote_code`, where the project's modules cannot
be imported (not even an installed copy: they are refused here): only the code saved with the model runs.

    python saved_pipelines.py '{"folders": {"saved": DIR, ...}, "backbone_paths": {NAME: DIR}, "texts": [...]}'

Prints, as JSON: for each folder, the answers to the first text alone and to all texts with `top_k=None`; as the
Hub's snippet builds it (task "text-classification"), the class and the same answers from the folder "saved"; the
error when no task is named; the dtypes of the head and backbones with `dtype=torch.bfloat16`; and the errors when
no backbone paths are given, without and with `trust_remote_code`.
"""

import importlib.abc
import io
import json
import sys

import torch
from transformers import pipeline

PROJECT_MODULES = {"configuration_llm_fusion", "modeling_llm_fusion", "pipeline_fec", "llm_fusion_fec"}


class RefuseProjectModules(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in PROJECT_MODULES:
            raise ModuleNotFoundError(f"{name} is refused here: only the code saved with the model may run")
        return None


sys.meta_path.insert(0, RefuseProjectModules())
inputs = json.loads(sys.argv[1])
paths, texts, folder = inputs["backbone_paths"], inputs["texts"], inputs["folders"]["saved"]
answers = {}
for name, saved in inputs["folders"].items():
    pipe = pipeline("fec", model=saved, trust_remote_code=True, backbone_paths=paths, device="cpu")
    answers[name] = {"one": pipe(texts[0]), "all": pipe(texts, top_k=None, batch_size=5)}
hub = pipeline("text-classification", model=folder, trust_remote_code=True, backbone_paths=paths, device="cpu")
answers["hub_snippet"] = {"class": type(hub).__name__, "one": hub(texts[0]), "all": hub(texts, top_k=None)}
try:  # no task: transformers does not choose between the two tasks the config declares
    pipeline(model=folder, trust_remote_code=True, backbone_paths=paths, device="cpu")
except RuntimeError as error:
    answers["inferred_task"] = str(error)
half = pipeline("fec", model=folder, trust_remote_code=True, backbone_paths=paths, dtype=torch.bfloat16)
answers["bfloat16"] = [str(half.model.dtype)] + [str(b.model.dtype) for b in half.model.load_backbones().values()]
errors = []
sys.stdin = io.StringIO("")  # nobody answers transformers' prompt
for kwargs in ({}, {"trust_remote_code": False}, {"trust_remote_code": True}):
    try:
        pipeline("fec", model=folder, **kwargs)
    except ValueError as error:
        errors.append(str(error))
answers["errors"] = errors
print()  # transformers prompted on stdout: the answers go on a line of their own
print(json.dumps(answers))
