"""Extract the frozen backbones' features of a data set's splits: cached, resumable, on one machine or many GPUs.

    fec extract --dataset ED                                      # the paper's backbones -> features/ED
    fec extract --dataset ED --preset small --limit 500           # laptop-size backbones, 500 rows a split
    fec extract --dataset ED --preset small --choose              # the LLM's views chosen on validation first
    accelerate launch extract_features.py --dataset go_emotion    # rows split over processes, same result

Every split gets one feature column per backbone. Work is cached shard by shard and checksummed: a rerun skips what
is done (an interrupted run resumes), a changed backbone recomputes only its own column.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from llm_fusion_fec.arguments import ExtractArguments
from llm_fusion_fec.commands.parsing import command_parser, parse


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> ExtractArguments:
    (args,) = parse(command_parser([ExtractArguments], prog, __doc__), argv)
    return args


def main(argv: Sequence[str] | None = None, prog: str | None = None):
    """`fec extract`: extract, then report where the features are and how fast each backbone ran."""
    args = parse_args(argv, prog)
    logging.basicConfig(format="[%(levelname)s|%(name)s] %(message)s", level=args.log_level.upper())
    from llm_fusion_fec.features.choice import choice_table
    from llm_fusion_fec.features.run import extract

    result = extract(args)
    if int(os.environ.get("RANK", "0")) == 0:
        rows = ", ".join(f"{split} {n}" for split, n in result.metadata.rows.items())
        print(f"Features of {result.metadata.dataset} ({rows}) -> {result.output_dir}")
        if result.metadata.choice:
            print(choice_table(result.metadata.choice))
        if not result.computed:
            print("No model was loaded: every column came from the cache.")
        for name, speed in result.throughput.items():
            print(f"  {name:10s} {speed['texts_per_s']:9.1f} texts/s {speed['tokens_per_s']:11.1f} tokens/s")
    return result
