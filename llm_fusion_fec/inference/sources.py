"""`fec predict`'s inputs read in chunks of rows, one chunk in memory at a time: CSV, JSONL and TXT files (read as
`predict.stream_rows` reads them), Parquet files, local `datasets` folders (`save_to_disk`, one split) and datasets on
the Hub (one split of one configuration, streamed: `datasets.load_dataset(..., streaming=True)`).

Opening a source reads it once through (before any model is loaded): its columns, its number of rows, that it can be
read at all (UTF-8, the text column), and its identity (sha256 of its bytes; for a Hub dataset, the commit it is read
at, with its configuration and split), which the progress record of a resumable run keeps.
"""

from __future__ import annotations

import hashlib
import itertools
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_fusion_fec.features.checksums import file_sha256, split_checksum
from llm_fusion_fec.inference.predict import INPUT_SUFFIXES, Row, check_jsonl_columns, stream_rows

COLUMNAR_SUFFIXES = (".parquet",)
COUNT_BATCH_ROWS = 10_000
"""Rows of a Hub dataset read at a time when it is read through to count its rows (its card may not say)."""


def hub_dataset_id(path: Path) -> str | None:
    """`path` as the id of a Hub dataset (`NAME` or `ORG/NAME`), or `None`: where it names no file or folder here, is
    a valid repository id, and is not a file name of a format `fec predict` reads (`posts.csv`) nor any other file
    name without an organisation (`posts.tsv`: a missing file, said as such)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    text = str(path)
    if path.exists() or path.suffix in (*INPUT_SUFFIXES, *COLUMNAR_SUFFIXES) or (path.suffix and "/" not in text):
        return None
    try:
        validate_repo_id(text)
    except HFValidationError:
        return None
    return text


def hub_problem(dataset_id: str, error: BaseException) -> str:
    """One line: why `dataset_id`, no file or folder here, cannot be read as a Hub dataset."""
    from huggingface_hub.errors import GatedRepoError, OfflineModeIsEnabled, RepositoryNotFoundError

    here = f"{dataset_id} is no file or folder here"
    if isinstance(error, OfflineModeIsEnabled):
        return f"{here}, and the Hub cannot be asked for it as a dataset: HF_HUB_OFFLINE is set (offline)."
    if isinstance(error, GatedRepoError):
        return f"{here}, and the Hub dataset {dataset_id} is gated: accept its conditions on its page, then log in."
    if isinstance(error, RepositoryNotFoundError):
        return f"{here}, nor a dataset on the Hub (none of that id, or a private one this machine's token cannot see)."
    return f"{here}, and the Hub cannot be reached to read it as a dataset ({' '.join(str(error).split())})."


@dataclass
class Chunk:
    """Rows `index * size` to `(index + 1) * size` of a source.

    Args:
        index (`int`): The chunk's place in the source (0: the first `size` rows).
        rows (`list[Row]`): Its rows: line (of a text file) or row number (1-based), fields, text, reading problem.
        table (`pyarrow.Table`, *optional*): The rows as a table, for a Parquet or `datasets` source (whose rows
            have no `fields` until asked for, `records()`).
    """

    index: int
    rows: list[Row]
    table: Any = None

    def records(self) -> list[dict[str, Any]]:
        """Each row's fields, as a dict."""
        if self.table is None:
            return [row.fields for row in self.rows]
        return self.table.to_pylist()


class Source:
    """An input of `fec predict`, read in chunks.

    Args:
        path (`Path`): A .csv, .jsonl, .txt or .parquet file, a folder a `datasets` object was saved to, or the id
            of a dataset on the Hub (`hub_dataset_id`).
        text_column (`str`): The column of the texts.
        split (`str`, *optional*): The split of a saved `DatasetDict` or a Hub dataset (needed where it holds
            several).
        config (`str`, *optional*): The configuration (subset) of a Hub dataset (needed where it holds several).
    """

    def __init__(self, path: Path, text_column: str, split: str | None = None, config: str | None = None):
        self.path, self.text_column, self.split = path, text_column, split
        dataset_id = hub_dataset_id(path)
        if config is not None and dataset_id is None:
            raise ValueError(f"--config {config} is for a Hub dataset --input; {path} is a file or folder here.")
        if dataset_id is not None:
            self._open_hub(dataset_id, config)
        elif path.is_dir():
            self._open_dataset()
        elif path.suffix in COLUMNAR_SUFFIXES:
            self._open_parquet()
        else:
            self._open_text()
        self.unit = "line" if self.kind == "text" else "row"

    def _open_hub(self, dataset_id: str, config: str | None) -> None:
        """The dataset `dataset_id` on the Hub at its newest commit (resolved now, and read at that commit only), one
        split of one configuration, streamed; read through once to count its rows."""
        import datasets
        from huggingface_hub import HfApi

        try:
            revision = HfApi().dataset_info(dataset_id).sha
        except Exception as error:  # offline, no such dataset, no access, no network: said in one line
            raise ValueError(hub_problem(dataset_id, error)) from None
        where = f"The Hub dataset {dataset_id} (commit {revision[:12]})"
        try:
            splits = datasets.load_dataset(dataset_id, name=config, revision=revision, streaming=True)
        except Exception as error:  # its files cannot be read, or it has several configurations
            raise ValueError(_hub_read_problem(where, config, error)) from None
        if self.split is None and len(splits) == 1:
            self.split = next(iter(splits))
        if self.split not in splits:
            given = "no --split" if self.split is None else f"--split {self.split}"
            raise ValueError(f"{where} holds the splits {list(splits)}; {given}: name one with --split.")
        self.dataset = splits[self.split].with_format("arrow")
        self.kind, self.columns, self.rows, self.schema = "hub", splits[self.split].column_names, 0, None
        for table in self.dataset.iter(batch_size=COUNT_BATCH_ROWS):  # its card may not say how many rows it has
            self.rows += table.num_rows
            self.columns, self.schema = self.columns or table.column_names, self.schema or table.schema
        self._check_column()
        config = splits[self.split].info.config_name
        self.identity = {"dataset": dataset_id, "revision": revision, "config": config, "split": self.split}

    def _open_text(self) -> None:
        if self.path.suffix not in INPUT_SUFFIXES:
            raise ValueError(f"{self.path} is not a {', '.join((*INPUT_SUFFIXES, *COLUMNAR_SUFFIXES))} file.")
        columns, rows = stream_rows(self.path, self.text_column)
        self.rows = sum(1 for _ in rows)  # the whole file is read once: not UTF-8 or no text column is said now
        if self.path.suffix == ".jsonl":
            check_jsonl_columns(self.path, self.text_column, columns, self.rows)
        self.kind, self.columns = "text", list(columns)
        self.identity = {"size": self.path.stat().st_size, "sha256": file_sha256(self.path)}

    def _open_parquet(self) -> None:
        import pyarrow.parquet as pq

        if not self.path.is_file():
            raise ValueError(f"{self.path} does not exist.")
        try:
            parquet = pq.ParquetFile(self.path)
        except Exception as error:  # pyarrow's own errors: not a Parquet file, a truncated one
            raise ValueError(f"{self.path} cannot be read as Parquet: {error}") from None
        self.kind, self.columns, self.rows = "parquet", parquet.schema_arrow.names, parquet.metadata.num_rows
        self._check_column()
        self.identity = {"size": self.path.stat().st_size, "sha256": file_sha256(self.path)}

    def _open_dataset(self) -> None:
        from datasets import Dataset, DatasetDict, load_from_disk

        try:
            data = load_from_disk(str(self.path))
        except FileNotFoundError:
            raise ValueError(f"{self.path} is a folder but no saved `datasets` data set (save_to_disk).") from None
        folder = self.path
        if isinstance(data, DatasetDict):
            splits = list(data)
            if self.split is None and len(splits) == 1:
                self.split = splits[0]
            if self.split not in data:
                given = "no --split" if self.split is None else f"--split {self.split}"
                raise ValueError(f"{self.path} holds the splits {splits}; {given}: name one with --split.")
            data, folder = data[self.split], self.path / self.split
        assert isinstance(data, Dataset)
        self.dataset = data.with_format("arrow")
        self.kind, self.columns, self.rows = "dataset", data.column_names, data.num_rows
        self._check_column()
        self.identity = {"split": self.split, "checksum": split_checksum(folder)}

    def _check_column(self) -> None:
        if self.text_column not in self.columns:
            raise ValueError(f"{self.path} has no column {self.text_column!r}; its columns are {self.columns}.")

    def chunks(self, size: int) -> Iterator[Chunk]:
        """The source's rows, `size` at a time, in order (the last chunk holds the rest)."""
        if self.kind == "text":
            rows = stream_rows(self.path, self.text_column)[1]
            for index in itertools.count():
                chunk = list(itertools.islice(rows, size))
                if not chunk:
                    return
                yield Chunk(index, chunk)
        tables = {"dataset": self._dataset_tables, "hub": self._hub_tables}.get(self.kind, self._parquet_tables)(size)
        for index, table in enumerate(tables):
            texts = table.column(self.text_column).to_pylist()
            yield Chunk(index, [Row(index * size + i + 1, None, text) for i, text in enumerate(texts)], table)

    def _dataset_tables(self, size: int) -> Iterator[Any]:
        for start in range(0, self.rows, size):
            yield self.dataset[start : start + size]

    def _hub_tables(self, size: int) -> Iterator[Any]:
        """Tables of exactly `size` rows (the last: the rest), as many rows in all as were counted."""
        read = 0
        for table in self.dataset.iter(batch_size=size):
            read += table.num_rows
            yield table
        if read != self.rows:  # the commit is fixed: only a broken download could give other rows
            raise ValueError(f"{self.path} gave {read} rows this time, {self.rows} when counted; run it again.")

    def _parquet_tables(self, size: int) -> Iterator[Any]:
        """Tables of exactly `size` rows (the last: the rest), whatever the file's row groups."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        pending, held = [], 0
        for batch in pq.ParquetFile(self.path).iter_batches(batch_size=size):
            pending.append(batch)
            held += batch.num_rows
            while held >= size:
                table = pa.Table.from_batches(pending).combine_chunks()
                yield table.slice(0, size)
                rest = table.slice(size)
                pending, held = rest.to_batches(), rest.num_rows
        if held:
            yield pa.Table.from_batches(pending).combine_chunks()

    def empty_table(self):
        """The source's columns without rows, as a pyarrow table (`None` for a text file)."""
        if self.kind == "dataset":
            return self.dataset[0:0]
        if self.kind == "hub":
            import pyarrow as pa

            features = self.dataset.features
            schema = self.schema or (features.arrow_schema if features is not None else None)
            return schema.empty_table() if schema is not None else pa.table({})
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).schema_arrow.empty_table()
        return None

    def chunk_sizes(self, size: int) -> list[int]:
        """The number of rows of each chunk."""
        full, rest = divmod(self.rows, size)
        return [size] * full + ([rest] if rest else [])


def _hub_read_problem(where: str, config: str | None, error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if lines and lines[0].startswith("Config name is missing") and len(lines) > 1:  # datasets' own words
        configs = lines[1].rpartition(": ")[2]
        return f"{where} holds several configurations ({configs}): name one with --config."
    given = f" with --config {config}" if config is not None else ""
    return f"{where} cannot be read{given}: {' '.join(lines) or type(error).__name__}"


MODEL_FILES = ("config.json", "*.safetensors", "*.bin")
"""A model folder's files that decide its labels (not its card, nor an output written into it)."""


def folder_digest(folder: Path) -> str:
    """sha256 of a model folder's config and weights (`MODEL_FILES`: names and contents)."""
    digest = hashlib.sha256()
    for path in sorted({path for pattern in MODEL_FILES for path in folder.glob(pattern)}):
        if path.is_file():
            digest.update(path.name.encode() + b"\0" + bytes.fromhex(file_sha256(path)))
    return digest.hexdigest()


def model_identity(model: str | os.PathLike) -> dict[str, str]:
    """What says a model is the one a progress record was written with: its folder's digest, or for a Hub id the
    commit its files come from (and its config's sha256)."""
    folder = Path(model)
    if folder.is_dir():
        return {"model": str(folder.resolve()), "digest": folder_digest(folder)}
    from huggingface_hub import hf_hub_download

    config = Path(hf_hub_download(str(model), "config.json"))  # .../snapshots/COMMIT/config.json
    return {"model": str(model), "revision": config.parent.name, "digest": file_sha256(config)}
