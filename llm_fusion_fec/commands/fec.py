"""The `fec` command: `fec extract`, `fec train`, `fec predict`, `fec space` and `fec push-features`.

Each subcommand is a module of this folder with a `main(argv, prog)`; it is imported only when it runs (and imports
torch only once its arguments are read), so `fec --help` and `fec COMMAND --help` answer at once. Exit status: 0
done; 1 the input was refused (the error, one line on stderr, names it); 2 a usage error (argparse's), or, for
`fec predict`, nothing could be labelled.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

COMMANDS = {
    "extract": "llm_fusion_fec.commands.extract",
    "train": "llm_fusion_fec.commands.train",
    "predict": "llm_fusion_fec.commands.predict",
    "space": "llm_fusion_fec.commands.space",
    "push-features": "llm_fusion_fec.commands.push_features",
}


def run(command: str, argv: Sequence[str], prog: str | None = None) -> int:
    """Run one subcommand: its exit status, or 1 with `error: ...` on stderr when it refuses its input."""
    module = importlib.import_module(COMMANDS[command])
    try:
        outcome = module.main(list(argv), prog)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return outcome if isinstance(outcome, int) else 0  # a command's returned results are not an exit status


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        return run(argv[0], argv[1:], prog=f"fec {argv[0]}")
    parser = argparse.ArgumentParser(
        prog="fec",
        description="Fine-grained emotion classification from frozen LLM and encoder features fused by a small head.",
        epilog="`fec COMMAND --help` shows a command's flags.",
    )
    commands = parser.add_subparsers(title="commands", metavar="COMMAND")
    for name, module in COMMANDS.items():
        commands.add_parser(name, help=importlib.import_module(module).__doc__.split("\n")[0])
    parser.parse_args(argv or ["--help"])  # --help exits 0; an unknown command exits 2
    return 2


if __name__ == "__main__":
    sys.exit(main())
