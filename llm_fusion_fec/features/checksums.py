"""Checksums of a features folder's data: of its files as saved (`split_checksum`) and of its values whatever format
holds them (`content_digest`, the same for the saved Arrow files and their parquet copy).

The heavy libraries are imported by the functions that use them: importing this module costs nothing.
"""

from __future__ import annotations

import hashlib
import os
import typing
from pathlib import Path

if typing.TYPE_CHECKING:
    from collections.abc import Iterator

    import pyarrow as pa
    from datasets import Dataset


def file_sha256(path: str | os.PathLike) -> str:
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, "sha256").hexdigest()


def split_checksum(folder: Path) -> str:
    """sha256 of a saved split: its data files and their descriptions (not the cache files `map` may add)."""
    digest = hashlib.sha256()
    for path in sorted([*folder.glob("data-*.arrow"), folder / "state.json", folder / "dataset_info.json"]):
        digest.update(path.name.encode() + b"\0" + (bytes.fromhex(file_sha256(path)) if path.exists() else b""))
    return digest.hexdigest()


def content_digest(split: Dataset) -> str:
    """sha256 of a split's values, column by column in name order: for each column, a digest of each of its value
    streams (the texts' lengths and bytes, the lists' lengths, the numbers' bytes, where values are missing) over its
    rows in order. Neither the files' format nor how their rows are cut into chunks changes it: the saved Arrow files
    and their parquet copy (`fec push-features`) give the same digest, and reading it costs one pass over the data."""
    table = split.with_format("arrow")[:]
    digest = hashlib.sha256()
    for name in sorted(table.column_names):
        streams = {}
        for chunk in table.column(name).chunks:
            for key, values in _value_streams(chunk):
                streams.setdefault(key, hashlib.sha256()).update(values)
        digest.update(name.encode() + b"\0")
        for key in sorted(streams):
            digest.update(key.encode() + b"\0" + streams[key].digest())
    return digest.hexdigest()


def _value_streams(array: pa.Array, depth: int = 0) -> Iterator[tuple[str, typing.Any]]:
    """The buffers of one chunk of a column, each named by the stream it continues (`depth:kind`)."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.compute as pc

    if isinstance(array, pa.ExtensionArray):  # datasets' Array2D: its storage holds the values
        array = array.storage
    if array.null_count:
        yield f"{depth}:missing", array.is_null().to_numpy(zero_copy_only=False)
    kind = array.type
    if pa.types.is_fixed_size_list(kind):
        yield from _value_streams(array.flatten(), depth + 1)
    elif pa.types.is_list(kind) or pa.types.is_large_list(kind):
        yield f"{depth}:lengths", pc.list_value_length(array).fill_null(0).to_numpy().astype(np.int64)
        yield from _value_streams(array.flatten(), depth + 1)
    elif (
        pa.types.is_string(kind)
        or pa.types.is_binary(kind)
        or pa.types.is_large_string(kind)
        or (pa.types.is_large_binary(kind))
    ):
        wide = pa.types.is_large_string(kind) or pa.types.is_large_binary(kind)
        start = array.offset
        offsets = np.frombuffer(array.buffers()[1], dtype=np.int64 if wide else np.int32)[
            start : start + len(array) + 1
        ]
        yield f"{depth}:lengths", np.diff(offsets).astype(np.int64)
        if array.buffers()[2] is not None:
            yield f"{depth}:bytes", memoryview(array.buffers()[2])[offsets[0] : offsets[-1]]
    else:
        yield f"{depth}:values", np.ascontiguousarray(array.to_numpy(zero_copy_only=False))
