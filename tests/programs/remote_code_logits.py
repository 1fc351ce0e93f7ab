"""Load a saved model with `trust_remote_code` (its own copy of the model code: the repository's cannot be imported
here), run it on saved features and save its logits.

    python remote_code_logits.py MODEL_DIR FEATURES_PT LOGITS_PT [--dtype float32]

FEATURES_PT holds a dict of feature tensors, one per backbone (`torch.save`). Prints, as JSON, the model's class, the
module it was loaded from and its config.
"""

import argparse
import json

import torch
from transformers import AutoModelForSequenceClassification

parser = argparse.ArgumentParser()
parser.add_argument("model_dir")
parser.add_argument("features")
parser.add_argument("logits")
parser.add_argument("--dtype", default=None, help="load the model in this dtype (default: as saved)")
args = parser.parse_args()

dtype = {"dtype": getattr(torch, args.dtype)} if args.dtype else {}
model = AutoModelForSequenceClassification.from_pretrained(args.model_dir, trust_remote_code=True, **dtype).eval()
with torch.no_grad():
    logits = model(**torch.load(args.features)).logits
torch.save(logits, args.logits)
print(json.dumps({"class": type(model).__name__, "module": type(model).__module__, "config": model.config.to_dict()}))
