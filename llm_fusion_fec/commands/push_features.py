"""Push a features folder to the Hub as a dataset, so that others train heads on it without extracting.

    fec push-features features/ED org/ed-llama2-features        # parquet shards, fec_features.json, a dataset card
    python train_fusion.py --features_dir org/ed-llama2-features # anyone: a head trained on the pushed features

The dataset card names the backbones, the source data set and its license (the texts are the source's).
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_fusion_fec.arguments import PushFeaturesArguments
from llm_fusion_fec.commands.parsing import command_parser, parse, positionals_as_flags

USAGE = "fec push-features FEATURES_DIR REPO_ID [--private] [--max_shard_size 500MB]"


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> str:
    """`fec push-features`: the dataset's commit URL."""
    parser = command_parser([PushFeaturesArguments], prog, __doc__)
    parser.usage = USAGE
    (args,) = parse(parser, positionals_as_flags(argv, ["features_dir", "repo_id"]))
    from llm_fusion_fec.publishing.features import push_features

    url = push_features(args.features_dir, args.repo_id, private=args.private, max_shard_size=args.max_shard_size)
    print(f"Features of {args.features_dir} -> https://huggingface.co/datasets/{args.repo_id} ({url})")
    return url
