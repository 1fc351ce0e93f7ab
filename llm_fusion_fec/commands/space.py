"""Write a Gradio Space that demonstrates a trained model, and push it to the Hub.

    fec space org/llm-fusion-ed --output_dir space                        # app.py, space.json, requirements.txt, ...
    fec space org/llm-fusion-ed --output_dir space --push org/llm-fusion-ed-demo
    fec space outputs/llm-fusion-ed --output_dir demo --backbone_path llama=/models/llama   # a demo on this machine
    python space/app.py                                                   # run it here

The app runs the model's own pipeline (its repository's code, `trust_remote_code`) and needs only gradio, torch and
transformers: a text box with the card's examples, the emotions and their scores, top-k (and the threshold of a
multi-label model), and a file upload labelled as `fec predict` does.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_fusion_fec.arguments import SpaceArguments, name_value_pairs
from llm_fusion_fec.commands.parsing import command_parser, parse, positionals_as_flags

USAGE = "fec space MODEL --output_dir DIR [--push SPACE_ID] [options]"


def main(argv: Sequence[str] | None = None, prog: str | None = None) -> str:
    """`fec space`: write the Space's files (and push them); the folder, or the Space's URL."""
    parser = command_parser([SpaceArguments], prog, __doc__)
    parser.usage = USAGE
    (args,) = parse(parser, positionals_as_flags(argv, ["model"]))
    from llm_fusion_fec.publishing.paths import is_local_model
    from llm_fusion_fec.serving.space import SPACE_FILES, push_space, unmet_requirements, write_space

    backbone_paths = name_value_pairs(args.backbone_path, "--backbone_path")
    if args.push and (is_local_model(args.model) or backbone_paths):
        raise ValueError(
            f"--push needs the model's Hub id, not a folder, and no --backbone_path: the Space loads {args.model} "
            "and its backbones from the Hub (push the model first: train_fusion.py --push_to_hub)."
        )
    folder = write_space(args.model, args.output_dir, backbone_paths, args.title)
    print(f"Space for {args.model} -> {folder} ({', '.join(SPACE_FILES)})")
    if args.push:
        url = push_space(folder, args.push, private=args.private)
        print(f"Pushed to {url}")
        return url
    unmet = unmet_requirements((folder / "requirements.txt").read_text().splitlines())
    install = f"pip install -r {folder / 'requirements.txt'} ({', '.join(unmet)} missing here), then " if unmet else ""
    print(f"Run it here: {install}python {folder / 'app.py'}")
    return str(folder)
