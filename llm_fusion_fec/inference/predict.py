"""Labelling a file of texts with a trained model: the input's rows come back with the predicted label and score
(what `fec predict` does).

A row whose text cannot be labelled (empty, only whitespace, not a string, not valid JSON) is reported with its line
number on stderr and written with an empty label; the other rows are labelled all the same.

`fec space` copies this file beside the Space's app, which labels an uploaded file with it: at module level it imports
the standard library only.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

try:
    from ..data.text_files import not_utf8, text_lines
except ImportError:  # in a Space: the copy of text_files.py beside this file
    from text_files import not_utf8, text_lines

if TYPE_CHECKING:
    from llm_fusion_fec.arguments import PredictArguments

INPUT_SUFFIXES = (".csv", ".jsonl", ".txt")
OUTPUT_SUFFIXES = (".csv", ".jsonl")
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


def default_output(input_path: Path) -> Path:
    """Where the labelled rows go when `--output` is not given: beside the input, in its format (CSV for TXT)."""
    suffix = ".jsonl" if input_path.suffix == ".jsonl" else ".csv"
    return input_path.with_name(f"{input_path.stem}.predictions{suffix}")


# ---- reading ----


def read_rows(path: Path, text_column: str) -> tuple[list[str], list[Row]]:
    """The input's column names (in order) and rows. Raises `ValueError` for a file that cannot be read at all:
    an unknown format, text that is not UTF-8 (naming its first such line), or a text column that no row has.

    A TXT file holds one text a line, lines ending at `\n` or `\r\n` only (`text_lines`): a text may hold any other
    character, U+2028 or a form feed included, and row `i` is line `i` of the file."""
    if path.suffix not in INPUT_SUFFIXES:
        raise ValueError(f"{path} is not a {', '.join(INPUT_SUFFIXES)} file.")
    if not path.is_file():
        raise ValueError(f"{path} does not exist.")
    try:
        with open(path, newline="" if path.suffix in (".csv", ".txt") else None, encoding="utf-8-sig") as handle:
            if path.suffix == ".csv":
                return _csv_rows(handle, path, text_column)
            if path.suffix == ".jsonl":
                return _jsonl_rows(handle, path, text_column)
            rows = [Row(line, {TXT_COLUMN: text}, text) for line, text in enumerate(text_lines(handle.read()), 1)]
            return [TXT_COLUMN], rows
    except UnicodeDecodeError as error:
        raise ValueError(f"Input file {not_utf8(path, error)}") from None


def _csv_rows(handle, path: Path, text_column: str) -> tuple[list[str], list[Row]]:
    reader = csv.reader(handle)
    columns = next(reader, [])
    if text_column not in columns:
        raise ValueError(f"{path} has no column {text_column!r}; its header is {columns}.")
    rows, end = [], reader.line_num
    for values in reader:
        start, end = end + 1, reader.line_num  # a quoted text may span several lines
        if not values:  # a blank line is no row
            continue
        fields = dict(zip(columns, values))  # a short row lacks its last columns
        text = fields.get(text_column)
        problem = None if text is not None else f"no {text_column!r} value (the row has {len(values)} fields)"
        rows.append(Row(start, fields, text, problem))
    return columns, rows


def _jsonl_rows(handle, path: Path, text_column: str) -> tuple[list[str], list[Row]]:
    columns, rows = {}, []  # a dict keeps the fields in order of first appearance
    for line, content in enumerate(handle, 1):
        if not content.strip():
            continue
        try:
            fields = json.loads(content)
        except json.JSONDecodeError as error:
            rows.append(Row(line, {}, None, f"not valid JSON ({error})"))
            continue
        if not isinstance(fields, dict):
            rows.append(Row(line, {}, None, f"not a JSON object but {type(fields).__name__}"))
            continue
        columns.update(dict.fromkeys(fields))
        problem = None if text_column in fields else f"no {text_column!r} field"
        rows.append(Row(line, fields, fields.get(text_column), problem))
    if rows and text_column not in columns:
        raise ValueError(f"No row of {path} has a {text_column!r} field; they have {list(columns)}.")
    return list(columns), rows


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


def load_pipeline(args: PredictArguments):
    """The `FECPipeline` for `--model`, built from this package's code (no remote code is run)."""
    import torch

    from llm_fusion_fec.arguments import name_value_pairs
    from llm_fusion_fec.inference.loading import load_model
    from pipeline_fec import FECPipeline

    dtype = getattr(torch, args.dtype) if args.dtype else None
    if args.dtype and not isinstance(dtype, torch.dtype):
        raise ValueError(f"Unknown dtype {args.dtype!r}; use float32, bfloat16 or float16.")
    model = load_model(args.model, **({"dtype": dtype} if dtype else {}))
    check_backend(model.config, args.backend)
    return FECPipeline(
        model=model,
        backbone_paths=name_value_pairs(args.backbone_path, "--backbone-path"),
        device=args.device,
        dtype=dtype,
        batch_size=args.batch_size,
    )


def check_backend(config, backend: str | None) -> None:
    """Refuse, in one line, a `--backend` other than the one the model's backbones were extracted with (the features
    its head was trained on); `None` asks for nothing."""
    from configuration_llm_fusion import BACKENDS

    if backend is None:
        return
    if backend not in ("torch", *BACKENDS):
        raise ValueError(f"Unknown --backend {backend!r}; allowed: torch, {', '.join(BACKENDS)}.")
    recorded = {spec.name: spec.backend or "torch" for spec in config.backbones}
    if others := {name: used for name, used in recorded.items() if used != backend}:
        listed = ", ".join(f"{name} ({used})" for name, used in others.items())
        raise ValueError(
            f"--backend {backend}: this model's backbones were extracted with another backend ({listed}), and a "
            "model is served with the backend its head was trained on; leave --backend out."
        )


def prediction_columns(columns: list[str], listed: bool) -> tuple[str, str]:
    """Names of the label and score columns: `label`/`score`, `labels`/`scores` for lists of labels, prefixed with
    `predicted_` when the input has a column of that name already (e.g. the gold labels of a test split)."""
    names = ("labels", "scores") if listed else ("label", "score")
    return tuple(f"predicted_{name}" for name in names) if set(names) & set(columns) else names


def write_rows(path: Path, columns: list[str], rows: list[Row], answers: dict[int, Any]) -> None:
    """Write every input row with its answer (`answers[row index]`: a dict, or a list of dicts), in input order.
    Rows without an answer get an empty label and no score."""
    listed = any(isinstance(answer, list) for answer in answers.values())
    label_column, score_column = prediction_columns(columns, listed)
    records = []
    for i, row in enumerate(rows):
        answer = answers.get(i)
        if answer is None:
            label, score = "", None
        elif listed:
            label, score = [a["label"] for a in answer], [a["score"] for a in answer]
        else:
            label, score = answer["label"], answer["score"]
        records.append({**row.fields, label_column: label, score_column: score})
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="" if path.suffix == ".csv" else None, encoding="utf-8") as handle:
        if path.suffix == ".jsonl":
            for record in records:
                handle.write(json.dumps(record, ensure_ascii=False) + "\n")
            return
        writer = csv.DictWriter(handle, [*columns, label_column, score_column])
        writer.writeheader()
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
        if not bad:
            return ""
        lines = ", ".join(map(str, bad[:20])) + (", ..." if len(bad) > 20 else "")
        return f"{len(bad)} of {len(self.rows)} rows could not be labelled (lines {lines})"


def label_file(
    load_pipeline: Callable[[], Any],
    input_path: str | os.PathLike,
    output: str | os.PathLike,
    text_column: str = TXT_COLUMN,
    batch_size: int = 8,
    progress: bool = False,
    validate_text: Callable[[Any], Any] | None = None,
    **parameters,
) -> LabelledFile:
    """Label the texts of a CSV, JSONL or TXT file into `output`, every input row written back in order with its
    answer. The one labelling path of `fec predict` and of the Space's file upload.

    Rows whose text cannot be labelled (`text_problem`, by `validate_text`: the pipeline's check of one text, by
    default this package's) are written with an empty label; the rest are labelled all the same. `load_pipeline()`
    gives the `FECPipeline`; it is called only when some row can be labelled. `parameters` are the pipeline's
    (`top_k`, `threshold`); `ValueError` for a file that cannot be read at all.
    """
    input_path, output = Path(input_path), Path(output)
    columns, rows = read_rows(input_path, text_column)
    for row in rows:
        row.problem = row.problem or text_problem(row.text, validate_text)
    labellable = [i for i, row in enumerate(rows) if row.problem is None]
    answers = {}
    if labellable:
        from tqdm.auto import tqdm

        stream = load_pipeline()((rows[i].text for i in labellable), batch_size=batch_size, **parameters)
        if progress:
            stream = tqdm(stream, total=len(labellable), desc="Labelling", unit="text", file=sys.stderr, disable=None)
        answers = dict(zip(labellable, stream, strict=True))
    write_rows(output, columns, rows, answers)
    return LabelledFile(output, rows)


def check_output(output: Path, input_path: Path, overwrite: bool) -> None:
    """Refuse an output file that cannot be written, or must not be, before any row is labelled: another format than
    `OUTPUT_SUFFIXES`, the input file itself (by any name: a hard or symbolic link too, `--overwrite` or not), an
    existing file without `overwrite`, a folder, or a place under a file or a folder that cannot be written."""
    if output.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(f"--output must end in {' or '.join(OUTPUT_SUFFIXES)}, got {output}.")
    if output.resolve() == input_path.resolve() or (
        output.exists() and input_path.exists() and os.path.samefile(output, input_path)
    ):
        raise ValueError(f"--output {output} is the input file {input_path} (the same file); choose another.")
    if output.is_dir():
        raise ValueError(f"--output {output} is a folder; give a file in it.")
    if output.exists() and not overwrite:
        raise ValueError(f"{output} exists already; give another --output, or --overwrite to replace it.")
    folder = next(parent for parent in output.absolute().parents if parent.exists())  # `/` at the latest
    if not folder.is_dir():
        raise ValueError(f"--output {output} cannot be written: {folder} is a file, not a folder.")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"--output {output} cannot be written: no permission to write in {folder}.")


def predict(args: PredictArguments) -> int:
    """Label `args.input` into the output file; return the exit status (0: every row labelled, 1: some not)."""
    input_path = Path(args.input)
    output = Path(args.output) if args.output else default_output(input_path)
    check_output(output, input_path, args.overwrite)
    parameters = {} if args.top_k is None else {"top_k": None if args.top_k == "all" else int(args.top_k)}
    result = label_file(
        lambda: load_pipeline(args), input_path, output, args.text_column, args.batch_size, True, **parameters
    )
    for row in result.unlabelled:
        print(f"{input_path}:{row.line}: {row.problem}", file=sys.stderr)
    labelled = len(result.rows) - len(result.unlabelled)
    print(f"Labelled {labelled} of {len(result.rows)} rows of {input_path} -> {output}")
    if result.unlabelled:
        print(f"{result.problems()}; they have an empty label in {output}.", file=sys.stderr)
        return 1
    return 0
