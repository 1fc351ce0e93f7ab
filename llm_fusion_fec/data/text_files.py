"""Reading local text files line by line as an editor counts lines, and saying in one line why one is not UTF-8:
data set files and `fec predict`'s inputs alike. Standard library only (`fec space` copies it beside `predict.py`)."""

from __future__ import annotations

from pathlib import Path


def text_lines(text: str) -> list[str]:
    """The lines of a text file's content, split where the file's lines end: at `\n` (and `\r\n`) only, never at
    the other characters `str.splitlines` ends a line at (U+2028, U+0085, a form feed, a lone `\r`), so that line
    numbers are those of an editor and of `not_utf8`. A final line end ends the last line (no empty line after it)."""
    lines = text.split("\n")
    if lines[-1] == "":
        lines.pop()
    return [line.removesuffix("\r") for line in lines]


def _first_non_utf8_line(path: str) -> int | None:
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError:
                return number
    return None


def not_utf8(path: str | Path, error: UnicodeDecodeError) -> str:
    """Why a local text file could not be read, in one line naming the file, the first line that is not UTF-8 and
    its byte, and the fix: `fec predict`'s input files and a data set's files say it alike."""
    line = _first_non_utf8_line(str(path))
    where = f"line {line}" if line else "it"
    return (
        f"{path} is not UTF-8 text ({where} has byte 0x{error.object[error.start]:02x}); "
        "the expected encoding is UTF-8: convert it, e.g. `iconv -f latin1 -t utf-8`."
    )
