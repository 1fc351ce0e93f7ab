"""`fec predict` on a file of any size: read in chunks, labelled chunk by chunk, each finished chunk appended to the
output, and a progress record beside it, so that the same command run again after any interruption (a kill -9
included) goes on where it stopped and ends with exactly the file an uninterrupted run writes.

- A CSV or JSONL output grows chunk by chunk. The record (`OUTPUT.progress.json`) says how many chunks are in it and
  its length then; a rerun cuts the output back to that length (a chunk appended after the last record goes) and goes
  on with the next chunk.
- A Parquet output is written at the end: each chunk is a part file in a hidden folder beside it
  (`.OUTPUT.parts/`), and the parts, once all there, are written in order into the output, one row group each.
- Under `torchrun` / `accelerate launch` each process labels the chunks `i % world == rank` into part files; process
  0 appends them in order, so the output is the one a single process writes (the chunks are the same whatever the
  number of processes, so a rerun may use another number).

The record keeps what the output was written from: the input (size, sha256), the model (its folder's digest or the
Hub commit) and every setting that changes a label or the file; a rerun where any of them changed is refused, and
`--overwrite` starts again. The record goes when the output is finished.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from llm_fusion_fec.inference.predict import (
    INPUT_SUFFIXES,
    OUTPUT_SUFFIXES,
    default_output,
    labelled_records,
    problems_line,
    write_records,
)
from llm_fusion_fec.inference.sources import Chunk, Source, hub_dataset_id

if TYPE_CHECKING:
    from llm_fusion_fec.arguments import PredictArguments

RECORD_SUFFIX = ".progress.json"
REPORTED_ROWS = 20
"""Rows that could not be labelled whose line the report names (the rest are counted)."""
CHUNK_DELAY_VARIABLE = "FEC_PREDICT_CHUNK_DELAY"
"""For tests only: seconds to wait after a chunk is written and before its record is, so that a test can kill the
command between the two."""


def record_path(output: Path) -> Path:
    return output.with_name(output.name + RECORD_SUFFIX)


def parts_folder(output: Path) -> Path:
    return output.with_name(f".{output.name}.parts")


@dataclass
class ProgressRecord:
    """What an unfinished output was written from and how far it got: `OUTPUT.progress.json`.

    Args:
        input (`dict`): The input's path and identity (`Source.identity`).
        model (`dict`): The model's identity (`model_identity`).
        settings (`dict`): Every flag that changes a label or the file, by flag name (`--chunk-size` included).
        rows (`int`): Rows of the input.
        chunks_done (`int`): Chunks written into the output (a Parquet output: into part files) so far.
        rows_done (`int`): Their rows.
        output_bytes (`int`): Length of a CSV or JSONL output after them.
        labelled (`int`): Their rows that were labelled.
        unlabelled (`int`): Their rows that could not be.
        first_unlabelled (`list`): `[line, problem]` of the first `REPORTED_ROWS` of those.
    """

    input: dict[str, Any]
    model: dict[str, Any]
    settings: dict[str, Any]
    rows: int
    chunks_done: int = 0
    rows_done: int = 0
    output_bytes: int = 0
    labelled: int = 0
    unlabelled: int = 0
    first_unlabelled: list[list] = field(default_factory=list)

    @classmethod
    def load(cls, path: Path) -> ProgressRecord | None:
        if not path.is_file():
            return None
        try:
            return cls(**json.loads(path.read_text(encoding="utf-8")))
        except (ValueError, TypeError):
            raise ValueError(
                f"{path} is not a progress record of `fec predict`; remove it or pass --overwrite."
            ) from None

    def save(self, path: Path) -> None:
        """Write the record whole or not at all (a new file renamed over the old one)."""
        _write_atomically(path, json.dumps(asdict(self), ensure_ascii=False, indent=1).encode())

    def refusal(self, other: ProgressRecord, output: Path, input_path: str) -> str | None:
        """Why an output recorded as `self` cannot be continued by a run that would record `other`, or `None`."""
        again = "pass --overwrite to start again"
        # Another split or configuration of the same data is said as the flag that chose it (below).
        if _without_part(self.input) != _without_part(other.input):
            changed = "its content" if self.input.get("size") == other.input.get("size") else "its size"
            if "revision" in self.input and "revision" in other.input:  # a Hub dataset, at another commit now
                changed = f"its commit was {self.input['revision'][:12]}, now {other.input['revision'][:12]}"
            return f"{output} was written from another input: {input_path} has changed since ({changed}); {again}."
        if _without_name(self.model) != _without_name(other.model):  # the same model moved is the same model
            return (
                f"{output} was written by another model ({self.model['model']}, digest {self.model['digest'][:12]}; "
                f"now {other.model['model']}, digest {other.model['digest'][:12]}); {again}."
            )
        for name, value in other.settings.items():
            if self.settings.get(name) != value:
                before, now = (
                    f"with {name} {v}" if v is not None else f"without {name}"
                    for v in (self.settings.get(name), value)
                )
                return f"{output} was written {before}, this run is {now}; {again}."
        if self.input != other.input:  # the split chosen where none is named (the only one) is another now
            before, now = (_part(identity) for identity in (self.input, other.input))
            return f"{output} was written from {before} of {input_path}, this run reads {now}; {again}."
        return None

    def add(self, summary: dict[str, Any]) -> None:
        """Count one more chunk in (its `ChunkResult.summary()`)."""
        self.chunks_done += 1
        self.rows_done += summary["rows"]
        self.labelled += summary["labelled"]
        self.unlabelled += len(summary["unlabelled"]) + summary["unlabelled_more"]
        self.first_unlabelled = (self.first_unlabelled + summary["unlabelled"])[:REPORTED_ROWS]


@dataclass
class ChunkResult:
    """A labelled chunk: its payload for the output (bytes of CSV or JSONL, or a pyarrow table) and its counts."""

    index: int
    payload: Any
    rows: int
    labelled: int
    unlabelled: list[list]
    unlabelled_more: int

    def summary(self) -> dict[str, Any]:
        return {
            "rows": self.rows,
            "labelled": self.labelled,
            "unlabelled": self.unlabelled,
            "unlabelled_more": self.unlabelled_more,
        }


def _without_part(identity: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in identity.items() if key not in ("split", "config")}


def _part(identity: dict[str, Any]) -> str:
    config = identity.get("config")
    return f"split {identity.get('split')}" + (f" of configuration {config}" if config else "")


def _without_name(model: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in model.items() if key != "model"}


def _write_atomically(path: Path, content: bytes) -> None:
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as handle:
        handle.write(content)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, path)


# ---- the output's bytes ----


class Output:
    """How labelled chunks become the output file: their bytes (CSV, JSONL) or tables (Parquet)."""

    def __init__(self, path: Path, source: Source, labeller):
        self.path, self.source, self.labeller = path, source, labeller
        self.columns = source.columns
        self.label_column, self.score_column = labeller.columns(self.columns)
        self.parquet = path.suffix == ".parquet"

    def header(self) -> bytes:
        """What the output starts with before any row: a CSV header, else nothing."""
        if self.path.suffix != ".csv":
            return b""
        text = io.StringIO(newline="")
        csv.writer(text).writerow([*self.columns, self.label_column, self.score_column])
        return text.getvalue().encode("utf-8")

    def payload(self, chunk: Chunk, answers: list) -> Any:
        """The chunk's rows with their answers, as the output holds them."""
        if self.parquet:
            return self._table(chunk, answers)
        names = [*self.columns, self.label_column, self.score_column]
        text = io.StringIO(newline="")
        write_records(
            text, labelled_records(chunk.records(), answers, self.labeller.listed, names), self.path.suffix, names
        )
        return text.getvalue().encode("utf-8")

    def empty_table(self):
        """A Parquet output's table without rows (an empty input's), else `None`."""
        return self._table(Chunk(0, [], self.source.empty_table()), []) if self.parquet else None

    def _table(self, chunk: Chunk, answers: list):
        import pyarrow as pa

        table = chunk.table
        if table is None:  # a text file's rows: CSV and TXT cells are strings, JSONL values as pyarrow infers them
            records = chunk.records()
            string = pa.string() if self.source.path.suffix != ".jsonl" else None
            columns = {}
            for name in self.columns:
                try:
                    columns[name] = pa.array([record.get(name) for record in records], string)
                except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
                    raise ValueError(
                        f"Field {name!r} of {self.source.path} has values of several types in rows "
                        f"{chunk.rows[0].line}-{chunk.rows[-1].line} ({error}): Parquet needs one type a column; "
                        "write a .jsonl or .csv output instead."
                    ) from None
            table = pa.table(columns)
        labels, scores = self.labeller.arrow_cells(answers)
        return table.append_column(self.label_column, labels).append_column(self.score_column, scores)


def label_chunk(chunk: Chunk, labeller, output: Output, bar) -> ChunkResult:
    """Label a chunk's rows (those that can be: an empty label for the others) into its payload for the output."""
    texts = [row.text for row in chunk.rows]
    problems = [row.problem or problem for row, problem in zip(chunk.rows, labeller.problems(texts), strict=True)]
    answers = labeller.label_texts(texts, problems, on_batch=bar.update)
    unlabelled = [[row.line, problem] for row, problem in zip(chunk.rows, problems, strict=True) if problem]
    bar.update(len(unlabelled))
    return ChunkResult(
        chunk.index,
        output.payload(chunk, answers),
        len(chunk.rows),
        len(chunk.rows) - len(unlabelled),
        unlabelled[:REPORTED_ROWS],
        max(0, len(unlabelled) - REPORTED_ROWS),
    )


class Parts:
    """Labelled chunks waiting in the hidden folder beside the output: `NNNNNNNN.json` (the counts) and, written
    last (so that its presence says the chunk is done), `NNNNNNNN.part` (CSV or JSONL bytes) or `.parquet`."""

    def __init__(self, folder: Path, parquet: bool):
        self.folder, self.suffix = folder, ".parquet" if parquet else ".part"

    def path(self, index: int) -> Path:
        return self.folder / f"{index:08d}{self.suffix}"

    def done(self, index: int) -> bool:
        return self.path(index).is_file()

    def write(self, result: ChunkResult) -> None:
        self.folder.mkdir(exist_ok=True)
        _write_atomically(self.folder / f"{result.index:08d}.json", json.dumps(result.summary()).encode())
        if self.suffix == ".parquet":
            import pyarrow.parquet as pq

            temporary = self.path(result.index).with_suffix(".tmp")
            pq.write_table(result.payload, temporary)
            os.replace(temporary, self.path(result.index))
        else:
            _write_atomically(self.path(result.index), result.payload)

    def summary(self, index: int) -> dict[str, Any]:
        return json.loads((self.folder / f"{index:08d}.json").read_text())

    def remove(self, index: int) -> None:
        for path in (self.path(index), self.folder / f"{index:08d}.json"):
            path.unlink(missing_ok=True)


class Appender:
    """Process 0's writing: the chunks into the output in input order, the record after each (see the module)."""

    def __init__(self, output: Output, record: ProgressRecord, parts: Parts, chunks: int):
        self.output, self.record, self.parts, self.chunks = output, record, parts, chunks
        self.file = record_path(output.path)
        self.delay = float(os.environ.get(CHUNK_DELAY_VARIABLE) or 0)
        self.handle = None
        if not output.parquet:  # cut back to what the record counts, or start with the header
            self.handle = open(output.path, "r+b" if output.path.exists() else "w+b")  # noqa: SIM115
            self.handle.truncate(record.output_bytes)
            self.handle.seek(record.output_bytes)
            if record.output_bytes == 0:
                self._append(output.header())
                self.record.output_bytes = self.handle.tell()
                self.record.save(self.file)
            for index in range(record.chunks_done):  # parts appended before the last run stopped
                parts.remove(index)

    @property
    def next(self) -> int:
        return self.record.chunks_done

    def _append(self, content: bytes) -> None:
        self.handle.write(content)
        self.handle.flush()
        os.fsync(self.handle.fileno())

    def _count(self, summary: dict[str, Any]) -> None:
        if self.delay:
            time.sleep(self.delay)
        self.record.add(summary)
        if self.handle is not None:
            self.record.output_bytes = self.handle.tell()
        self.record.save(self.file)

    def take(self, result: ChunkResult) -> None:
        """Write this process's own chunk, the next one of the output."""
        if self.output.parquet:
            self.parts.write(result)
        else:
            self._append(result.payload)
        self._count(result.summary())

    def drain(self) -> None:
        """Write the next chunks that other processes (or an earlier run) left as parts, in order."""
        while self.next < self.chunks and self.parts.done(self.next):
            summary = self.parts.summary(self.next)
            if not self.output.parquet:
                self._append(self.parts.path(self.next).read_bytes())
            self._count(summary)
            if not self.output.parquet:
                self.parts.remove(self.next - 1)

    def finish(self, empty_table) -> None:
        """Once every chunk is in (waiting for the other processes' parts): close the output, or write the Parquet
        output from its parts; then remove the parts and the record."""
        while self.next < self.chunks:
            self.drain()
            if self.next < self.chunks:
                time.sleep(0.2)
        if self.handle is not None:
            self.handle.close()
        else:
            self._merge(empty_table)
        shutil.rmtree(self.parts.folder, ignore_errors=True)
        self.file.unlink(missing_ok=True)

    def _merge(self, empty_table) -> None:
        """The parts into the Parquet output in order, one row group each, in the schema they share."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        paths = [self.parts.path(index) for index in range(self.chunks)]
        schema = empty_table.schema
        if paths:
            try:
                schema = pa.unify_schemas([pq.read_schema(path) for path in paths], promote_options="permissive")
            except (pa.ArrowInvalid, pa.ArrowTypeError) as error:
                raise ValueError(
                    f"The chunks of {self.output.path} hold a column in several types ({error}): Parquet needs one "
                    "type a column; write a .jsonl or .csv output instead."
                ) from None
        temporary = self.output.path.with_name(self.output.path.name + ".tmp")
        with pq.ParquetWriter(temporary, schema) as writer:
            if not paths:
                writer.write_table(empty_table.cast(schema))
            for path in paths:
                table = pq.read_table(path).cast(schema)
                writer.write_table(table, row_group_size=max(1, table.num_rows))
        os.replace(temporary, self.output.path)


# ---- the command ----


def settings_of(args) -> dict[str, Any]:
    """The flags of `fec predict` that change a label or the output's bytes, by flag name."""
    return {
        "--text-column": args.text_column,
        "--split": args.split,
        "--config": args.config,
        "--top-k": args.top_k,
        "--threshold": args.threshold,
        "--batch-size": args.batch_size,
        "--max-tokens": args.max_tokens,
        "--dtype": args.dtype,
        "--backbone-path": sorted(args.backbone_path),
        "--chunk-size": args.chunk_size,
    }


def label_stream(args: PredictArguments, input_path: Path, output: Path, load_labeller) -> ProgressRecord | None:
    """Label `input_path` into `output` as the module says (`load_labeller(args)` gives the `Labeller`, `args` naming
    this process's device). Returns the finished output's record in process 0 (`None` in the others). `ValueError`
    in one line for an input that cannot be read, an output that cannot be written or continued, a model that
    cannot be loaded: all of them before anything is written or removed."""
    from llm_fusion_fec.distributed import barrier, distributed, local_device
    from llm_fusion_fec.inference.sources import model_identity

    source = Source(input_path, args.text_column, args.split, args.config)
    saved = None if args.overwrite else ProgressRecord.load(record_path(output))
    check_output(output, input_path, args.overwrite or saved is not None)
    rank, world = distributed()
    # A model that cannot be loaded is said before anything is removed; each process of a launch on its own GPU.
    labeller = load_labeller(dataclasses.replace(args, device=local_device(args.device, rank, world)))
    wanted = ProgressRecord(source.identity, model_identity(args.model), settings_of(args), source.rows)
    if saved is not None:
        refusal = saved.refusal(wanted, output, str(input_path))
        if refusal is None and output.suffix != ".parquet" and _length(output) < saved.output_bytes:
            refusal = (
                f"{output} is shorter than its progress record says ({_length(output)} of {saved.output_bytes} "
                "bytes): it was changed since; pass --overwrite to start again."
            )
        if refusal:
            raise ValueError(refusal)
    barrier(world)
    if rank == 0 and saved is None:  # a new output: nothing of an earlier one is kept
        output.unlink(missing_ok=True)
        shutil.rmtree(parts_folder(output), ignore_errors=True)
        output.parent.mkdir(parents=True, exist_ok=True)
        wanted.save(record_path(output))
    barrier(world)
    record = ProgressRecord.load(record_path(output))
    result = _label_chunks(source, labeller, Output(output, source, labeller), record, args.chunk_size, rank, world)
    barrier(world)
    return result


def _length(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def _label_chunks(source: Source, labeller, output: Output, record, size: int, rank: int, world: int):
    from llm_fusion_fec.distributed import barrier
    from llm_fusion_fec.features.progress import progress_bar

    sizes = source.chunk_sizes(size)
    parts = Parts(parts_folder(output.path), output.parquet)
    # This process's chunks: those not written nor left as parts by an earlier run (seen before process 0 takes any).
    mine = [i for i in range(record.chunks_done, len(sizes)) if i % world == rank and not parts.done(i)]
    pending = set(mine)
    barrier(world)
    appender = Appender(output, record, parts, len(sizes)) if rank == 0 else None
    if appender is not None:
        appender.drain()
    description = "Labelling" if world == 1 else f"Labelling [rank {rank}/{world}]"
    with progress_bar(sum(sizes[i] for i in mine), description) as bar:
        for chunk in source.chunks(size) if mine else ():
            if chunk.index not in pending:
                continue
            bar.set_postfix_str(f"chunk {chunk.index + 1}/{len(sizes)}")
            result = label_chunk(chunk, labeller, output, bar)
            if appender is not None and appender.next == chunk.index:
                appender.take(result)
            else:
                parts.write(result)
            if appender is not None:
                appender.drain()
            if chunk.index == mine[-1]:
                break
    if appender is None:
        return None
    appender.finish(output.empty_table())
    return appender.record


def load_pipeline(args: PredictArguments):
    """The `FECPipeline` for `--model`, built from this package's code (no remote code is run)."""
    from llm_fusion_fec.arguments import name_value_pairs
    from llm_fusion_fec.inference.loading import build_pipeline

    return build_pipeline(
        args.model,
        name_value_pairs(args.backbone_path, "--backbone-path"),
        args.device,
        args.dtype,
        args.batch_size,
        getattr(args, "max_tokens", None),
        args.backend,
    )


def check_output(output: Path, input_path: Path, overwrite: bool) -> None:
    """Refuse an output file that cannot be written, or must not be, before any row is labelled: another format than
    `OUTPUT_SUFFIXES`, the input file itself (by any name: a hard or symbolic link too, `--overwrite` or not), an
    existing file without `overwrite` (or a progress record to continue it by), a folder, or a place under a file or
    a folder that cannot be written."""
    if output.suffix not in OUTPUT_SUFFIXES:
        raise ValueError(
            f"--output must end in {', '.join(OUTPUT_SUFFIXES[:-1])} or {OUTPUT_SUFFIXES[-1]}, got {output}."
        )
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
    """Label `args.input` into the output file, streaming (`inference.streaming`); return the exit status (0: every
    row labelled, 1: some not)."""
    from llm_fusion_fec.inference.labelling import Labeller

    input_path = Path(args.input)
    output = Path(args.output) if args.output else default_output(input_path, args.split, hub_dataset_id(input_path))
    top_k = None if args.top_k is None else args.top_k if args.top_k == "all" else int(args.top_k)
    record = label_stream(
        args,
        input_path,
        output,
        lambda args: Labeller.from_pipeline(
            load_pipeline(args), args.batch_size, args.text_column, top_k, args.threshold
        ),
    )
    if record is None:  # another process than the first of a multi-process launch: the first one reports
        return 0
    unit = "line" if input_path.is_file() and input_path.suffix in INPUT_SUFFIXES else "row"
    for line, problem in record.first_unlabelled:
        print(
            f"{input_path}:{line}: {problem}" if unit == "line" else f"{input_path}: row {line}: {problem}",
            file=sys.stderr,
        )
    print(f"Labelled {record.labelled} of {record.rows} rows of {input_path} -> {output}")
    if record.unlabelled:
        lines = [line for line, _ in record.first_unlabelled]
        print(
            f"{problems_line(record.unlabelled, record.rows, lines, unit)}; they have an empty label in {output}.",
            file=sys.stderr,
        )
        return 1
    return 0
