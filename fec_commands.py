"""The console commands `pip install` creates: `fec-extract`, `fec-train` (and `fec-predict`, `predict:main`).

Each runs a script's `main` as `python SCRIPT.py` does: a `ValueError` (a problem with the user's input, named by
the script) ends it with `error: ...` and exit status 1, without a traceback. The scripts' `main` return their
results for callers in Python, which a console entry point must not pass to `sys.exit`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable


def run(main: Callable[[], object]) -> int:
    """Run a script's `main`: exit status 0, or 1 with `error: ...` on stderr for a `ValueError`."""
    try:
        main()
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


def extract() -> int:
    """`fec-extract`: `python extract_features.py`."""
    from extract_features import main

    return run(main)


def train() -> int:
    """`fec-train`: `python train_fusion.py`."""
    from fec_arguments import print_training_help, wants_quick_help

    if wants_quick_help(sys.argv[1:]):  # at once, as `python train_fusion.py --help`
        print_training_help()
        return 0
    from train_fusion import main

    return run(main)
