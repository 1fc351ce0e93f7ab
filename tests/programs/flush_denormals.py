"""Flush denormals as train_fusion.py does (first thing, after its imports), then multiply denormal numbers on two
intra-op threads; with `late`, flush only after a parallel operation has started the threads.

    python flush_denormals.py REPO [late]

Prints, as JSON, how many of the products stayed denormal (0: every thread flushed them).
"""

import json
import sys

repo, *mode = sys.argv[1:]
sys.path.insert(0, repo)
import torch  # noqa: E402

import train_fusion  # noqa: E402, F401  (its imports must start no threads)
from fusion_trainer import flush_denormals  # noqa: E402

torch.set_num_threads(2)
if mode != ["late"]:
    flush_denormals()
denormal = torch.full((1 << 22,), 1e-39)  # a parallel operation (starts the threads), split between them
if mode == ["late"]:
    flush_denormals()
print(json.dumps({"denormal_products": int((denormal * 1.0).count_nonzero())}))
