"""Labelling a file of texts with a trained model: the input's rows come back with the predicted label and score
(what `fec predict` does).

A row whose text cannot be labelled (empty, only whitespace, not a string, not valid JSON) is reported with its line
number on stderr and written with an empty label; the other rows are labelled all the same.

`fec space` copies this file beside the Space's app, which labels an uploaded file with it (`label_file`, through the
`Labeller` of `labelling.py`, copied beside it too): at module level it imports the standard library only.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    from ..data.text_files import not_utf8
except ImportError:  # in a Space: the copy of text_files.py beside this file
    from text_files import not_utf8

INPUT_SUFFIXES = (".csv", ".jsonl", ".txt")
OUTPUT_SUFFIXES = (".csv", ".jsonl", ".parquet")
TXT_COLUMN = "text"  # the one column of a .txt input, one text per line


@dataclass
class Row:
    """One row of the input file.

    Args:
        line (`int`): Line of the input file where the row starts (1-based, as editors count).
        fields (`dict[str, Any]`): The row's columns, written back unchanged beside the prediction.
        text (`Any`): The text to label, as the file holds it (checked before anything is labelled).
        problem (`str`, *optional*): Why the row cannot be labelled; `None` if it can.
    """

    line: int
    fields: dict[str, Any]
    text: Any
    problem: str | None = None


def default_output(input_path: Path, split: str | None = None, dataset_id: str | None = None) -> Path:
    """Where the labelled rows go when `--output` is not given: beside the input, in its format (CSV for TXT; Parquet
    for a `datasets` folder, `NAME.SPLIT.predictions.parquet`); for the Hub dataset `dataset_id`, that file in the
    working folder (`NAME` the last part of its id)."""
    if dataset_id is not None:
        name = dataset_id.rpartition("/")[2]
        return Path(f"{name}{f'.{split}' if split else ''}.predictions.parquet")
    if input_path.is_dir():
        return input_path.with_name(f"{input_path.name}{f'.{split}' if split else ''}.predictions.parquet")
    suffix = input_path.suffix if input_path.suffix in (".jsonl", ".parquet") else ".csv"
    return input_path.with_name(f"{input_path.stem}.predictions{suffix}")


# ---- reading ----


def read_rows(path: Path, text_column: str) -> tuple[list[str], list[Row]]:
    """The input's column names (in order) and rows. Raises `ValueError` for a file that cannot be read at all:
    an unknown format, text that is not UTF-8 (naming its first such line), or a text column that no row has.

    A TXT file holds one text a line, lines ending at `\n` or `\r\n` only (`text_lines`): a text may hold any other
    character, U+2028 or a form feed included, and row `i` is line `i` of the file."""
    columns, stream = stream_rows(path, text_column)
    rows = list(stream)
    if path.suffix == ".jsonl":
        check_jsonl_columns(path, text_column, columns, len(rows))
    return list(columns), rows


def stream_rows(path: Path, text_column: str) -> tuple[dict[str, None], Iterator[Row]]:
    """The input's columns and an iterator of its rows, read as they are drawn (one row in memory at a time). The
    columns of a CSV or TXT file are known at once; those of a JSONL file grow as its rows are drawn (a dict in order
    of first appearance). `ValueError` for an unknown format, a missing CSV column, or text that is not UTF-8."""
    if path.suffix not in INPUT_SUFFIXES:
        raise ValueError(f"{path} is not a {', '.join(INPUT_SUFFIXES)} file.")
    if not path.is_file():
        raise ValueError(f"{path} does not exist.")
    if path.suffix == ".txt":
        return {TXT_COLUMN: None}, _checked(path, _txt_rows(path))
    handle = open(path, newline="" if path.suffix == ".csv" else None, encoding="utf-8-sig")  # noqa: SIM115
    if path.suffix == ".jsonl":
        columns = {}
        return columns, _checked(path, _jsonl_rows(handle, text_column, columns), handle)
    try:
        reader = csv.reader(handle)
        header = next(reader, [])
    except UnicodeDecodeError as error:
        handle.close()
        raise ValueError(f"Input file {not_utf8(path, error)}") from None
    if text_column not in header:
        handle.close()
        raise ValueError(f"{path} has no column {text_column!r}; its header is {header}.")
    return dict.fromkeys(header), _checked(path, _csv_rows(reader, header, text_column), handle)


def check_jsonl_columns(path: Path, text_column: str, columns: dict[str, None], rows: int) -> None:
    """Refuse a JSONL file none of whose rows has the text field (once every row is read)."""
    if rows and text_column not in columns:
        raise ValueError(f"No row of {path} has a {text_column!r} field; they have {list(columns)}.")


def _checked(path: Path, rows: Iterator[Row], handle=None) -> Iterator[Row]:
    """`rows`, a `UnicodeDecodeError` said in one line naming the file's first line that is not UTF-8."""
    try:
        yield from rows
    except UnicodeDecodeError as error:
        raise ValueError(f"Input file {not_utf8(path, error)}") from None
    finally:
        if handle is not None:
            handle.close()


def _txt_rows(path: Path) -> Iterator[Row]:
    # Binary lines end at b"\n" only, as `text_lines` splits: U+2028, a form feed or a lone \r stay in the text.
    with open(path, "rb") as handle:
        for line, content in enumerate(handle, 1):
            text = content.removesuffix(b"\n").removesuffix(b"\r").decode("utf-8")
            if line == 1:
                text = text.removeprefix("\ufeff")  # as utf-8-sig reads a file's byte order mark
            yield Row(line, {TXT_COLUMN: text}, text)


def _csv_rows(reader, columns: list[str], text_column: str) -> Iterator[Row]:
    end = reader.line_num
    for values in reader:
        start, end = end + 1, reader.line_num  # a quoted text may span several lines
        if not values:  # a blank line is no row
            continue
        fields = dict(zip(columns, values))  # a short row lacks its last columns
        text = fields.get(text_column)
        problem = None if text is not None else f"no {text_column!r} value (the row has {len(values)} fields)"
        yield Row(start, fields, text, problem)


def _jsonl_rows(handle, text_column: str, columns: dict[str, None]) -> Iterator[Row]:
    for line, content in enumerate(handle, 1):
        if not content.strip():
            continue
        try:
            fields = json.loads(content)
        except json.JSONDecodeError as error:
            yield Row(line, {}, None, f"not valid JSON ({error})")
            continue
        if not isinstance(fields, dict):
            yield Row(line, {}, None, f"not a JSON object but {type(fields).__name__}")
            continue
        columns.update(dict.fromkeys(fields))
        problem = None if text_column in fields else f"no {text_column!r} field"
        yield Row(line, fields, fields.get(text_column), problem)


def text_problem(text: Any, validate_text: Callable[[Any], Any] | None = None) -> str | None:
    """Why `text` cannot be labelled (the pipeline's own check, `validate_text`: by default this package's), or
    `None`."""
    if validate_text is None:
        from modeling_llm_fusion import validate_text

    try:
        validate_text(text)
    except (TypeError, ValueError) as error:
        return str(error).replace("Text at position 0 is", "the text is", 1)
    return None


# ---- labelling and writing ----


def prediction_columns(columns: list[str], listed: bool) -> tuple[str, str]:
    """Names of the label and score columns: `label`/`score`, `labels`/`scores` for lists of labels, prefixed with
    `predicted_` when the input has a column of that name already (e.g. the gold labels of a test split)."""
    names = ("labels", "scores") if listed else ("label", "score")
    return tuple(f"predicted_{name}" for name in names) if set(names) & set(columns) else names


def answer_values(answer: dict | list[dict] | None, listed: bool) -> tuple[Any, Any]:
    """The label and score cells of one answer: `label`, `score`; lists of them for a list of answers (`listed`);
    `""` and `None` for a text that could not be labelled."""
    if answer is None:
        return "", None
    if listed:
        return [a["label"] for a in answer], [a["score"] for a in answer]
    return answer["label"], answer["score"]


def write_rows(path: Path, columns: list[str], rows: list[Row], answers: list[Any], listed: bool) -> None:
    """Write every input row with its answer (a dict, a list of dicts where `listed`, `None` for a row not labelled:
    an empty label and no score), in input order, as `fec predict` writes them."""
    names = [*columns, *prediction_columns(columns, listed)]
    records = labelled_records([row.fields for row in rows], answers, listed, names)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        if path.suffix == ".csv":
            csv.writer(handle).writerow(names)
        write_records(handle, records, path.suffix, names)


def labelled_records(
    fields: list[dict[str, Any]], answers: list[Any], listed: bool, names: list[str]
) -> Iterator[dict[str, Any]]:
    """Each row's fields with its answer's label and score (`answer_values`) in the last two of `names` (the
    output's columns, `prediction_columns` last)."""
    for row, answer in zip(fields, answers, strict=True):
        yield {**row, **dict(zip(names[-2:], answer_values(answer, listed), strict=True))}


def write_records(handle, records: Iterable[dict[str, Any]], suffix: str, names: list[str]) -> None:
    """Write labelled rows into an open text `handle` (`newline=""`) as the output's format holds them: a JSON object
    a line (`.jsonl`), or CSV rows of the columns `names` (no header), lists and dicts JSON-encoded."""
    if suffix == ".jsonl":
        for record in records:
            handle.write(json.dumps(record, ensure_ascii=False, default=str) + "\n")
        return
    writer = csv.DictWriter(handle, names)
    for record in records:
        # Lists (top-k labels and scores, or a JSONL input's nested values) are written as JSON.
        writer.writerow(
            {k: json.dumps(v, ensure_ascii=False) if isinstance(v, list | dict) else v for k, v in record.items()}
        )


@dataclass
class LabelledFile:
    """What `label_file` did.

    Args:
        output (`Path`): The labelled file.
        rows (`list[Row]`): The input's rows; those with a `problem` were written with an empty label.
    """

    output: Path
    rows: list[Row]

    @property
    def unlabelled(self) -> list[Row]:
        return [row for row in self.rows if row.problem]

    def problems(self) -> str:
        """One line: how many rows could not be labelled, and their lines ("" if every row was labelled)."""
        bad = [row.line for row in self.unlabelled]
        return problems_line(len(bad), len(self.rows), bad) if bad else ""


def problems_line(count: int, rows: int, lines: list[int], unit: str = "line") -> str:
    """How many of `rows` rows could not be labelled, and the first 20 of their `lines` (or row numbers)."""
    shown = ", ".join(map(str, lines[:20])) + (", ..." if count > 20 else "")
    return f"{count} of {rows} rows could not be labelled ({unit}s {shown})"


def label_file(labeller, input_path: str | os.PathLike, output: str | os.PathLike) -> LabelledFile:
    """Label the texts of a CSV, JSONL or TXT file into `output` (`.csv` or `.jsonl`) with `labeller` (a `Labeller`:
    its text column, top-k and threshold), every input row written back in order with its answer: the rows `fec
    predict` writes, in one piece (what the Space does with an uploaded file).

    Rows whose text cannot be labelled (`Labeller.problems`: the pipeline's own check) are written with an empty
    label; the rest are labelled all the same. `ValueError` for a file that cannot be read at all.
    """
    input_path, output = Path(input_path), Path(output)
    columns, rows = read_rows(input_path, labeller.text_column)
    problems = labeller.problems([row.text for row in rows])
    for row, problem in zip(rows, problems, strict=True):
        row.problem = row.problem or problem
    answers = labeller.label_texts([row.text for row in rows], [row.problem for row in rows])
    write_rows(output, columns, rows, answers, labeller.listed)
    return LabelledFile(output, rows)
