"""Label the texts of a file (CSV, JSONL, TXT, Parquet) or a saved `datasets` folder with a trained fusion model.

    fec predict --model outputs/llm-fusion-ed --input posts.csv               # -> posts.predictions.csv
    fec predict --model org/llm-fusion-ed --input posts.jsonl --text-column body --top-k 3
    fec predict --model outputs/llm-fusion-ed --input corpus.parquet --output labels.parquet \\
        --backbone-path llama=/models/Llama-2-7b-chat-hf
    torchrun --nproc-per-node 4 -m llm_fusion_fec.commands.fec predict --model ... --input ...   # 4 processes

The output holds the input's rows and columns plus `label` and `score` (`labels` and `scores` lists with --top-k or
for a multi-label model; prefixed `predicted_` if the input has such columns already). It runs this package's code:
no trust_remote_code. A row that cannot be labelled is reported by line on stderr and written with an empty label.
The input is labelled --chunk-size rows at a time, each chunk appended to the output: interrupted, the same command
goes on where it stopped (OUTPUT.progress.json) and ends with the same file.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from llm_fusion_fec.arguments import PredictArguments, name_value_pairs
from llm_fusion_fec.commands.parsing import command_parser

EPILOG = """Exit status: 0 every row labelled; 1 some rows could not be labelled (reported by line on stderr, written
with an empty label); 2 nothing done (bad flags, unreadable input, a model that cannot be loaded)."""


def parse_args(argv: Sequence[str] | None = None, prog: str | None = None) -> PredictArguments:
    parser = command_parser([PredictArguments], prog, __doc__, EPILOG)
    (args,) = parser.parse_dict(vars(parser.parse_args(list(sys.argv[1:] if argv is None else argv))))
    for flag, value in (("--batch-size", args.batch_size), ("--chunk-size", args.chunk_size)):
        if value < 1:
            parser.error(f"{flag} must be a positive integer, got {value}.")
    if args.max_tokens is not None and args.max_tokens < 1:
        parser.error(f"--max-tokens must be a positive integer, got {args.max_tokens}.")
    if args.threshold is not None and not 0 <= args.threshold <= 1:
        parser.error(f"--threshold must be a number from 0 to 1, got {args.threshold}.")
    if args.top_k is not None and args.top_k != "all" and (not args.top_k.isdigit() or int(args.top_k) < 1):
        parser.error(f"--top-k expects a positive integer or 'all', got {args.top_k!r}.")
    try:
        name_value_pairs(args.backbone_path, "--backbone-path")
    except ValueError as error:
        parser.error(str(error))
    return args


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """`fec predict`: label the file; the exit status says whether every row was labelled."""
    args = parse_args(argv, prog)
    from transformers.utils import logging

    from llm_fusion_fec.inference.streaming import predict

    # The command's own lines say what happens (and one line what went wrong): no bar per weights file loaded, and
    # no warnings of weights that do not match, which `load_model` refuses in its own words.
    logging.disable_progress_bar()
    logging.set_verbosity_error()

    try:
        return predict(args)
    except (ValueError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
