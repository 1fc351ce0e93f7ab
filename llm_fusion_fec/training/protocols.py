"""The training recipes a run can follow: `paper`, the original protocol exactly, and `fast`, large batches that
train 5 seeds of the small head in minutes on a CPU. A preset names its recipe (`PRESETS[...]["protocol"]`, recorded
with the features); `--protocol` chooses another; any flag given on the command line wins over the recipe.

How `fast` was chosen: `python -m bench.choose_fast_recipe` trains one seed of each candidate on the small trio's
full ED features and keeps the best validation weighted-F1 (the test split is not read); its output is
`bench/results/fast_recipe_ed.txt`.
"""

from __future__ import annotations

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


def protocol_name(protocol: str, preset_protocol: str | None) -> str:
    """The recipe a run follows: `protocol` as asked, or with `auto` the one the features' preset recorded
    (`paper` where none is recorded)."""
    if protocol not in PROTOCOL_CHOICES:
        raise ValueError(f"--protocol must be one of {', '.join(PROTOCOL_CHOICES)}, got {protocol!r}.")
    return (preset_protocol or "paper") if protocol == "auto" else protocol
