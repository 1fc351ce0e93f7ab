"""`extract`: what `fec extract` and `extract_features.py` run, the fixed views of a preset (`extraction`) or the
LLM's views chosen on validation first (`--choose`, `choice`)."""

from __future__ import annotations

from llm_fusion_fec.arguments import ExtractArguments
from llm_fusion_fec.features.choice import choose
from llm_fusion_fec.features.extraction import ExtractionResult, arguments_of, extract_fixed


def extract(
    args: ExtractArguments | str = "ED",
    *,
    backbones: list[dict] | None = None,
    backbone_paths: dict[str, str] | None = None,
    **options,
) -> ExtractionResult:
    """Extract (or load from cache) the features of every split of a data set and save them as a `DatasetDict`:
    what `fec extract` does.

        from llm_fusion_fec import extract

        result = extract("ED", preset="small", limit=500)  # -> features/ED
        print(result.metadata.rows, result.output_dir)

    Args:
        args (`ExtractArguments` or `str`, *optional*, defaults to `"ED"`):
            The command line's arguments, or just the data set.
        backbones (`list[dict]`, *optional*):
            Backbone descriptions to extract, instead of those `args` name.
        backbone_paths (`dict[str, str]`, *optional*):
            Local folders of the backbones by name or model id, instead of `args.backbone_path`.
        options:
            `ExtractArguments` fields that replace those of `args` (`preset="small"`, `limit=500`, ...).

    With `choose=True` (`--choose`) the LLM's views are chosen on the validation split first (`choose`); otherwise
    the views `args` name are extracted (`extract_fixed`, which says what is cached, resumed and refused).
    """
    args = arguments_of(args, options)
    if args.choose:
        return choose(args, backbones=backbones, backbone_paths=backbone_paths)
    return extract_fixed(args, backbones=backbones, backbone_paths=backbone_paths)
