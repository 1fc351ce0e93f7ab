"""The `fec` commands' parsers: `HfArgumentParser` over the argument dataclasses of `llm_fusion_fec.arguments`.

`command_parser` imports `HfArgumentParser` (transformers' light argument module) when a command runs, so that
`fec --help` answers at once.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def command_parser(types: Sequence[type], prog: str | None, description: str, epilog: str | None = None):
    """The `HfArgumentParser` of a command's argument dataclasses: `--flag_name` and `--flag-name` for each field,
    its help and default, `--flag` alone or `--flag true|false` for booleans."""
    from transformers import HfArgumentParser

    formatter = type(
        "HelpFormatter", (argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter), {}
    )
    return HfArgumentParser(list(types), prog=prog, description=description, epilog=epilog, formatter_class=formatter)


def parse(parser, argv: Sequence[str] | None) -> tuple[Any, ...]:
    """The dataclasses of a command line. A usage error (an unknown flag, a value of the wrong type) ends the
    command with argparse's message and exit status 2; a dataclass that refuses its values raises `ValueError`."""
    namespace = parser.parse_args(list(sys.argv[1:] if argv is None else argv))
    return parser.parse_dict(vars(namespace))


def positionals_as_flags(argv: Sequence[str] | None, names: Sequence[str]) -> list[str]:
    """`argv` with its leading positional values given to the flags `names` in order (`fec space MODEL` is
    `fec space --model MODEL`): the dataclasses stay the one description of a command's arguments."""
    argv = list(sys.argv[1:] if argv is None else argv)
    flags = []
    for name in names:
        if not argv or argv[0].startswith("-"):
            break
        flags += [f"--{name}", argv.pop(0)]
    return flags + argv
