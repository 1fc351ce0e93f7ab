r"""Choose which hidden layers of the LLM feed the head, and how they are pooled, on the validation split, from
features folders a user extracted (`extract_features.py --choose` does it all in one command): the sweep of
`llm_fusion_fec.features.sweep` on each folder given, and the winner written as a backbone description that
extraction reads.

    python extract_features.py --dataset ED --preset small --all-layers --output-dir features/ED-all-layers
    python -m bench.sweep_layers features/ED-all-layers --window 5 --output llama-layers.json
    python extract_features.py --dataset ED --preset small --backbone-spec llama-layers.json \
        --cache-dir features/ED-all-layers/cache   # the chosen layers are cut from the all-layers column

    # poolings too: one all-layers folder each, the same data; the winner carries its pooling and template
    python extract_features.py --dataset ED --preset small --all-layers --output-dir features/ED-prompt-all-layers \
        --pooling llama=layer_last_token --template 'llama=This sentence : "{text}" means in one word:"' \
        --cache-dir features/ED-all-layers/cache   # the encoders' columns are reused
    python -m bench.sweep_layers features/ED-all-layers features/ED-prompt-all-layers --output llama-layers.json

    # an encoder's pooling: one folder per pooling (--pooling bert=mean in the second), the encoder named
    python -m bench.sweep_layers features/ED features/ED-mean --backbone bert --output bert-pooling.json
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

from configuration_llm_fusion import LAYER_POOLINGS
from llm_fusion_fec.features.sweep import (
    COMBINES,
    PROBE_STRENGTHS,
    SweepResult,
    chosen_words,
    strengths_words,
    sweep,
    table,
)


def add_strengths_argument(parser: argparse.ArgumentParser, each: str) -> None:
    """The scripts' `--c`: the probe's inverse L2 strengths, of which `each` (a candidate, a folder) keeps its best."""
    parser.add_argument(
        "--c",
        type=float,
        nargs="+",
        default=list(PROBE_STRENGTHS),
        metavar="C",
        help=f"inverse L2 strengths of the probe (sklearn's C); {each} keeps the one that scores best "
        "on validation (default: %(default)s)",
    )


def main(argv: list[str] | None = None) -> SweepResult:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "features_dirs",
        nargs="+",
        metavar="features_dir",
        help="features extracted by extract_features.py (best with --all-layers); several: one per "
        "pooling or prompt of the same data, ranked together",
    )
    parser.add_argument(
        "--backbone",
        help="the backbone to sweep (default: the only layer-pooled one); an encoder is "
        "swept across folders that pool it otherwise (--pooling NAME=pooler, NAME=mean)",
    )
    parser.add_argument("--window", type=int, default=5, help="k: the width of the windows of consecutive layers")
    parser.add_argument("--combine", choices=COMBINES, default="mean", help="a window's probe input")
    add_strengths_argument(parser, "each candidate")
    parser.add_argument("--device", help="where the probes are fitted (default: cuda if present)")
    parser.add_argument(
        "--output", help="the winning backbone description (default: in the first FEATURES_DIR, best-NAME.json)"
    )
    parser.add_argument(
        "--second-view",
        metavar="FILE",
        help="also write the best candidate of the folders other than the winner's (another pooling "
        "or prompt) as NAME_view2, for extract_features.py --add-backbone-spec: the head then reads "
        "both views (needs two or more folders)",
    )
    parser.add_argument("--results", help="also write every candidate's score to this JSON file")
    args = parser.parse_args(argv)
    if args.second_view and len(args.features_dirs) < 2:
        parser.error("--second-view needs two or more features folders (one per pooling or prompt).")
    result = sweep(args.features_dirs, args.backbone, args.window, args.combine, args.c, args.device)
    output = Path(args.output or Path(args.features_dirs[0]) / f"best-{result.backbone}.json")
    output.write_text(json.dumps(result.best_spec.to_dict(), indent=2) + "\n")
    if args.results:
        Path(args.results).write_text(json.dumps(asdict(result), indent=2) + "\n")
    layered = result.best_spec["pooling"] in LAYER_POOLINGS
    window = "the mean of its layer vectors" if result.combine == "mean" else "its layer vectors concatenated"
    print(
        f"{'Layers' if layered else 'Pooling'} of {result.backbone}: {result.metric} on the validation split "
        f"({result.validation_rows} rows) of a logistic-regression probe trained on the train split "
        f"({result.train_rows} rows), {strengths_words(args.c)}"
        + (f"; a window's input: {window}." if layered else ".")
    )
    print(table(result))
    pooling = f" ({result.poolings[result.scores[0].features]})" if len(result.poolings) > 1 and layered else ""
    print(f"Best: {chosen_words(result.best_spec)}{pooling} -> {output}")
    if args.second_view:
        Path(args.second_view).write_text(json.dumps(result.second_view.to_dict(), indent=2) + "\n")
        folder = next(row.features for row in result.scores if row.features != result.scores[0].features)
        print(f"Second view: {chosen_words(result.second_view)} ({result.poolings[folder]}) -> {args.second_view}")
        print(
            f"Extract both: python extract_features.py ... --backbone-spec {output} "
            f"--add-backbone-spec {args.second_view}"
        )
    else:
        print(f"Extract with them: python extract_features.py ... --backbone-spec {output}")
    return result


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:
        sys.exit(f"error: {error}")
