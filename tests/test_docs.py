"""The README and the pages in docs/: every relative link reaches a file, every #anchor a heading, and the README
stays a product page (at most 250 lines). Standard library only: no model, no network."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
README_MAX_LINES = 250

FENCE = re.compile(r"^ {0,3}(```|~~~).*?^ {0,3}\1[^\n]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`]*`")
# [text](target) or [text](target "title"); the text may run over lines, the target may not.
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
HEADING = re.compile(r"^ {0,3}#{1,6}[ \t]+(.+?)[ \t#]*$", re.MULTILINE)
EXTERNAL = re.compile(r"^[a-z][a-z0-9+.-]*:", re.IGNORECASE)  # http:, https:, mailto: ...


def prose(text: str) -> str:
    """The page without its code blocks and code spans, where brackets are not links."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: its text (a link's text, no markup), lowercased, punctuation other than
    hyphens, spaces and underscores dropped, spaces as hyphens."""
    text = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)
    text = re.sub(r"[^\w\- ]", "", text.lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """The anchors of a page's headings; a repeated heading gets -1, -2, ... as on GitHub."""
    found: set[str] = set()
    counts: dict[str, int] = {}
    for heading in HEADING.findall(FENCE.sub("", page.read_text(encoding="utf-8"))):
        base = slug(heading)
        found.add(base if base not in counts else f"{base}-{counts[base]}")
        counts[base] = counts.get(base, 0) + 1
    return found


def shown(path: Path) -> str:
    """A path as a message names it: from the repository root where it is inside."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file or heading anchor does not exist, with the reason."""
    problems = []
    for target in LINK.findall(prose(page.read_text(encoding="utf-8"))):
        if not target or EXTERNAL.match(target):
            continue
        path, _, anchor = target.partition("#")
        destination = (page.parent / path).resolve() if path else page
        if not destination.exists():
            problems.append(f"{target}: no file {shown(destination)}")
            continue
        if anchor:
            if destination.suffix != ".md":
                problems.append(f"{target}: an anchor into {destination.name}, which is not markdown")
            elif anchor not in anchors(destination):
                problems.append(f"{target}: no heading with the anchor #{anchor} in {shown(destination)}")
    return problems


def test_slug_follows_github():
    heading = "Choosing the LLM's layers, its pooling and a prompt"
    assert slug(heading) == "choosing-the-llms-layers-its-pooling-and-a-prompt"
    assert slug("Labelling a file: `fec predict`") == "labelling-a-file-fec-predict"
    assert slug("Multi-label GoEmotions, the fixed head") == "multi-label-goemotions-the-fixed-head"
    assert slug("See [the design](docs/design.md)") == "see-the-design"


def test_links_are_found_outside_code_only(tmp_path):
    page = tmp_path / "page.md"
    page.write_text(
        "# Top\n\n[ok](#top), [over two\nlines](#missing) and `[code](#not-a-link)`\n\n"
        "```\n[neither](#in-a-fence)\n```\n\n[web](https://example.org/#x) [file](nowhere.md)\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert len(problems) == 2
    assert problems[0].startswith("#missing: no heading")
    assert problems[1].startswith("nowhere.md: no file")


def test_the_pages_exist():
    assert (REPO / "README.md").is_file()
    assert len(PAGES) > 1, "docs/ holds no markdown page"


@pytest.mark.parametrize("page", PAGES, ids=[shown(page) for page in PAGES])
def test_relative_links_and_anchors_resolve(page):
    problems = broken_links(page)
    assert not problems, f"{shown(page)}: " + "; ".join(problems)


def test_readme_is_a_product_page():
    lines = len((REPO / "README.md").read_text(encoding="utf-8").splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES} (details go in docs/)"


# ---- pointers to the pages from the commands' help ----

# README.md#anchor, docs/page.md or docs/page.md#anchor; a bare "README" (no file, no heading) points nowhere.
PAGE_REFERENCE = re.compile(r"\b(README\.md|docs/[\w-]+\.md)(?:#([\w-]+))?")
BARE_README = re.compile(r"\bREADME\b(?!\.md)")


def help_texts() -> dict[str, str]:
    """What `--help` prints beside the usage: every argument's help (`llm_fusion_fec/arguments.py`) and each
    command's description (its module's docstring), by where it comes from."""
    import dataclasses
    import importlib
    import inspect

    from llm_fusion_fec import arguments

    texts = {}
    for name, cls in inspect.getmembers(arguments, dataclasses.is_dataclass):
        for spec in dataclasses.fields(cls):
            texts[f"{name}.{spec.name}"] = spec.metadata.get("help", "")
    for path in sorted((REPO / "llm_fusion_fec" / "commands").glob("*.py")):
        module = importlib.import_module(f"llm_fusion_fec.commands.{path.stem}")
        texts[f"fec {path.stem}"] = module.__doc__ or ""
    return texts


def broken_pointers(text: str) -> list[str]:
    """Each page or heading a help text points to that does not exist, and each bare mention of the README."""
    problems = [f"{match!r} names no file and no heading" for match in BARE_README.findall(text)]
    for page, anchor in PAGE_REFERENCE.findall(text):
        if not (REPO / page).is_file():
            problems.append(f"{page} does not exist")
        elif anchor and anchor not in anchors(REPO / page):
            problems.append(f"{page} has no heading #{anchor}")
    return problems


def test_help_points_only_to_headings_that_exist():
    texts = help_texts()
    assert "FusionArguments.batch_seeds" in texts and "fec train" in texts
    problems = {where: broken for where, text in texts.items() if (broken := broken_pointers(text))}
    assert problems == {}


def test_a_pointer_to_a_missing_heading_is_found():
    assert broken_pointers("see (README, Training)") == ["'README' names no file and no heading"]
    assert broken_pointers("see docs/training.md#no-such-heading") == [
        "docs/training.md has no heading #no-such-heading"
    ]
    assert broken_pointers("docs/nothing.md") == ["docs/nothing.md does not exist"]
    assert broken_pointers("docs/training.md#seeds-and-ensembles, README.md#install, the Space's README.md") == []
