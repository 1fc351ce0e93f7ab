"""The training recipes a run can follow: `paper`, the original protocol exactly, and `fast`, large batches that
train 5 seeds of the small head in minutes on a CPU. A preset names its recipe (`PRESETS[...]["protocol"]`, recorded
with the features); `--protocol` chooses another; any flag given on the command line wins over the recipe.

How `fast` was chosen: `python -m bench.choose_fast_recipe` trains one seed of each candidate on the small trio's
full ED features and keeps the best validation weighted-F1 (the test split is not read); its output is
`bench/results/fast_recipe_ed.txt`. On the `small-mean` features of GoEmotions 16 epochs scored better on validation
(`bench/results/fast_recipe_goe.txt`); on today's `small` features 8 score best there and within 0.25 of 12 on ED
(`bench/results/fast_recipe_epochs_*.txt`), so 8 epochs serve single-label data. Multi-label data trains 16
(`MULTI_LABEL_EPOCHS`).
"""

from __future__ import annotations

import math

PROTOCOLS: dict[str, dict] = {
    # The ProtocolArguments defaults (the original: Adam, lr 1e-4, batch 10, constant, up to 200 epochs).
    "paper": {},
    "fast": {
        "per_device_train_batch_size": 512,
        "per_device_eval_batch_size": 2048,
        "learning_rate": 1e-3,
        "lr_scheduler_type": "cosine",
        "warmup_steps": 0.1,
        "weight_decay": 0.01,
        "num_train_epochs": 8,
    },
}
PROTOCOL_CHOICES = ("auto", *PROTOCOLS)
MULTI_LABEL_EPOCHS = 16
"""`fast`'s epochs on multi-label data, whose macro-F1 (the metric that keeps a checkpoint) still climbs after 8: on
multi-label GoEmotions' `small` features one seed reached validation macro-F1 46.27 at 16 epochs (kept epoch 15)
against 43.21 at 8 (docs/results.md, multi-label GoEmotions, the default preset)."""
MIN_STEPS_PER_EPOCH = 32
"""`fast` on a small training split (a quick start's 500 rows) uses smaller batches, so that an epoch still has this
many steps: 8 epochs of one step each would barely move the head."""


def recipe(protocol: str, train_rows: int | None, problem_type: str | None = None) -> dict:
    """The `TrainingArguments` values of a recipe for a training split of `train_rows` rows (unknown: as written) of
    a problem type (`multi_label_classification`: `MULTI_LABEL_EPOCHS` for `fast`)."""
    values = dict(PROTOCOLS[protocol])
    if "num_train_epochs" in values and problem_type == "multi_label_classification":
        values["num_train_epochs"] = MULTI_LABEL_EPOCHS
    batch = values.get("per_device_train_batch_size")
    if batch and train_rows:
        values["per_device_train_batch_size"] = max(1, min(batch, math.ceil(train_rows / MIN_STEPS_PER_EPOCH)))
    return values


def protocol_name(protocol: str, preset_protocol: str | None) -> str:
    """The recipe a run follows: `protocol` as asked, or with `auto` the one the features' preset recorded
    (`paper` where none is recorded)."""
    if protocol not in PROTOCOL_CHOICES:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOL_CHOICES)}, got {protocol!r}.")
    return (preset_protocol or "paper") if protocol == "auto" else protocol
