"""`fec predict`'s inputs read in chunks of rows, one chunk in memory at a time: CSV, JSONL and TXT files (read as
`predict.stream_rows` reads them), Parquet files and local `datasets` folders (`save_to_disk`, one split).

Opening a source reads it once through (before any model is loaded): its columns, its number of rows, that it can be
read at all (UTF-8, the text column), and its identity (sha256 of its bytes), which the progress record of a
resumable run keeps.
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
        path (`Path`): A .csv, .jsonl, .txt or .parquet file, or a folder a `datasets` object was saved to.
        text_column (`str`): The column of the texts.
        split (`str`, *optional*): The split of a saved `DatasetDict` (needed where it holds several).
    """

    def __init__(self, path: Path, text_column: str, split: str | None = None):
        self.path, self.text_column, self.split = path, text_column, split
        if path.is_dir():
            self._open_dataset()
        elif path.suffix in COLUMNAR_SUFFIXES:
            self._open_parquet()
        else:
            self._open_text()
        self.unit = "line" if self.kind == "text" else "row"

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
        tables = self._dataset_tables(size) if self.kind == "dataset" else self._parquet_tables(size)
        for index, table in enumerate(tables):
            texts = table.column(self.text_column).to_pylist()
            yield Chunk(index, [Row(index * size + i + 1, None, text) for i, text in enumerate(texts)], table)

    def _dataset_tables(self, size: int) -> Iterator[Any]:
        for start in range(0, self.rows, size):
            yield self.dataset[start : start + size]

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
        if self.kind == "parquet":
            import pyarrow.parquet as pq

            return pq.ParquetFile(self.path).schema_arrow.empty_table()
        return None

    def chunk_sizes(self, size: int) -> list[int]:
        """The number of rows of each chunk."""
        full, rest = divmod(self.rows, size)
        return [size] * full + ([rest] if rest else [])


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
