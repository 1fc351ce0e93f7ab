"""Flush denormals as train_fusion.py does (first thing, after its imports), then multiply denormal numbers on two
intra-op threads; with `late`, flush only after a parallel operation has started the threads.

    PYTHONPATH=REPO python flush_denormals.py [late]

Prints, as JSON, how many of the products stayed denormal (0: every thread flushed them).
"""

import json
import sys

import torch

import llm_fusion_fec.training.run as train_fusion  # noqa: F401  (its imports must start no threads)
from llm_fusion_fec.training.trainer import flush_denormals

mode = sys.argv[1:]

torch.set_num_threads(2)
if mode != ["late"]:
    flush_denormals()
denormal = torch.full((1 << 22,), 1e-39)  # a parallel operation (starts the threads), split between them
if mode == ["late"]:
    flush_denormals()
print(json.dumps({"denormal_products": int((denormal * 1.0).count_nonzero())}))
