"""Reading a labelled data set: the published splits built in (ED, go_emotion, go_emotions_multilabel), a local
folder or `split=file` list of CSV/TSV/JSON files, or a Hub id. `load_data` returns the splits with a `text` and a
`label` column, or refuses in one line naming the file (split, row) and the fix, before any model is loaded.

The heavy libraries (datasets, numpy) are imported by the functions that use them, so that importing this module costs
nothing.
"""

from __future__ import annotations

import errno
import functools
import hashlib
import json
import re
import typing
import warnings
from collections.abc import Sequence
from pathlib import Path

from llm_fusion_fec.arguments import check_at_least_one
from llm_fusion_fec.data.text_files import not_utf8, text_lines
from llm_fusion_fec.features.checksums import file_sha256

if typing.TYPE_CHECKING:
    from datasets import Dataset, DatasetDict
    from datasets.features.features import FeatureType

SPLITS = ("train", "validation", "test")
SPLIT_ALIASES = {
    "train": "train",
    "validation": "validation",
    "valid": "validation",
    "dev": "validation",
    "test": "test",
}
# The published splits: the data/ folders of LLM-FusionClassifier (ED, go_emotion) and GoEmotions-pytorch.
BUILTIN_DATASETS = {
    "ED": {
        "base": "https://raw.githubusercontent.com/havelhakimi/LLM-FusionClassifier/main/data/ED",
        "files": {"train": "train.csv", "validation": "valid.csv", "test": "test.csv"},
        "labels": "label2idx.txt",
    },
    "go_emotion": {
        "base": "https://raw.githubusercontent.com/havelhakimi/LLM-FusionClassifier/main/data/go_emotion",
        "files": {"train": "train.csv", "validation": "valid.csv", "test": "test.csv"},
        "labels": "label2idx.txt",
    },
    "go_emotions_multilabel": {
        "base": "https://raw.githubusercontent.com/monologg/GoEmotions-pytorch/master/data/original",
        "files": {"train": "train.tsv", "validation": "dev.tsv", "test": "test.tsv"},
        "labels": "labels.txt",
        "multilabel": True,
    },
}
# Data file formats by suffix: the `datasets` builder that reads them, its options, and the format's name.
FILE_FORMATS = {
    ".csv": ("csv", {}, "CSV"),
    ".tsv": ("csv", {"sep": "\t"}, "TSV"),
    ".json": ("json", {}, "JSON"),
    ".jsonl": ("json", {}, "JSON"),
}


def dataset_name(dataset: str) -> str:
    """The name of a data set as a folder name: the default features folder is `features/<dataset_name>`.

    Built-in names stay as they are, a Hub id `org/name` becomes `org--name`. A local data set (a folder, or a
    `split=file,...` list) is named by its folder (the one it resolves to, `some/dir/..` giving `some`; for a list,
    the one holding its train file) and the start of `local_dataset_digest`, its content: two folders both named
    `ED` get two names, and neither is the built-in `ED`. Only `[A-Za-z0-9._-]` is kept; the result is never empty,
    `.`, `..`, nor a built-in name unless `dataset` is that name.
    """
    if dataset in BUILTIN_DATASETS:
        return dataset
    if "=" in dataset:
        pairs = [item.partition("=") for item in dataset.split(",")]
        paths = {SPLIT_ALIASES.get(split.strip(), split.strip()): path for split, _, path in pairs}
        name = Path(paths.get("train") or next(iter(paths.values()))).resolve().parent.name
    elif re.fullmatch(r"[\w.-]+/[\w.-]+", dataset) and not Path(dataset).is_dir():
        name = dataset.replace("/", "--")
    else:
        name = Path(dataset).resolve().name
    name = re.sub(r"[^A-Za-z0-9._-]+", "-", name).lstrip(".")
    if (digest := local_dataset_digest(dataset)) is not None:
        return f"{name.strip('-') or 'dataset'}-{digest[:8]}"
    name = name or "dataset"
    return f"{name}-local" if name in BUILTIN_DATASETS else name


def local_dataset_digest(dataset: str) -> str | None:
    """sha256 of a local data set's files: each split's file (by split) and the label names beside them; what tells
    it apart from another data set, whatever its folder's name. None for a built-in name, a Hub id, or a path that
    holds no data set that `load_data` would read."""
    if dataset in BUILTIN_DATASETS:
        return None
    try:
        files = _local_files(dataset)
    except (ValueError, OSError):
        return None
    if files is None or not all(Path(path).is_file() for path in files.values()):
        return None
    beside = Path(next(iter(files.values()))).parent
    labels = next((beside / name for name in ("label2idx.txt", "labels.txt") if (beside / name).is_file()), None)
    digest = hashlib.sha256()
    for part, path in [*files.items(), *([("label names", labels)] if labels else [])]:
        digest.update(part.encode() + b"\0" + bytes.fromhex(_file_digest(str(Path(path).resolve()), *_stamp(path))))
    return digest.hexdigest()


def _stamp(path: str | Path) -> tuple[int, int]:
    status = Path(path).stat()
    return status.st_size, status.st_mtime_ns


@functools.lru_cache(maxsize=64)
def _file_digest(path: str, size: int, mtime_ns: int) -> str:
    """sha256 of a file, computed once per size and modification time (a data set is named several times a run)."""
    return file_sha256(path)


def _is_url(path: str) -> bool:
    return "://" in path


def one_line(error: BaseException) -> str:
    """An error's message on one line."""
    return " ".join(str(error).split())


def _causes(error: BaseException) -> list[BaseException]:
    """An error and the errors it was raised from, outermost first."""
    causes = []
    while error is not None and error not in causes:
        causes.append(error)
        error = error.__cause__ or error.__context__
    return causes


def _read_error(path: str, error: BaseException) -> str:
    """One line saying why a data file could not be read, naming the file and the fix."""
    if _is_url(path):
        detail = one_line(error)
        reason = f" ({detail})" if detail and path not in detail else ""
        return f"could not download {path}{reason}; pass --data-dir DIR with a local copy of the data set's files."
    causes = _causes(error)
    kind = FILE_FORMATS.get(Path(path).suffix, (None, None, "text"))[2]
    if isinstance(causes[0], FileNotFoundError) or not Path(path).exists():
        return f"Data file {path} not found."
    if Path(path).stat().st_size == 0:
        return f"Data file {path} is empty: add its rows (after a header line in a CSV or TSV file)."
    for cause in causes:
        if isinstance(cause, UnicodeDecodeError):
            return f"Data file {not_utf8(path, cause)}"
        if type(cause).__name__ == "ParserError":  # pandas: an unclosed quote, a row with extra fields
            detail = one_line(cause).removeprefix("Error tokenizing data. C error: ")
            return f"Data file {path} is not valid {kind}: {detail}. Close the quote or fix the row's fields."
        if "corresponds to no data" in str(cause):
            return f"Data file {path} has no rows (at most a header): add its rows."
    return f"Data file {path} could not be read as {kind}: {one_line(causes[-1])}"


def _read_file(path: str, label_column: str | None = None, **options) -> Dataset:
    """One data file (local or URL) as a `Dataset`, or a `ValueError` that says in one line what is wrong with it."""
    import datasets

    builder, defaults, _ = FILE_FORMATS[Path(path).suffix]
    if builder == "csv":
        # Texts such as "NaN", "null" or "None" are texts: only an empty label cell is a missing value.
        defaults = {**defaults, "keep_default_na": False, "na_values": {label_column: [""]} if label_column else None}
        # Labels are read as text and turned into ids here (`_label_ids`): a column of ids with one name among them,
        # or an id too large for an integer column, is then refused naming its row, not read as another type.
        if label_column:
            defaults["converters"] = {label_column: str}
        _check_csv_header(path, defaults.get("sep", ","))
    verbosity = datasets.logging.get_verbosity()
    datasets.logging.set_verbosity(datasets.logging.CRITICAL)  # the reader's own error log: ours says it in one line
    try:
        with warnings.catch_warnings():
            # pandas says the label converter wins over the column's dtype, which is what it is there for.
            warnings.filterwarnings("ignore", message="Both a converter and dtype were specified")
            data = datasets.load_dataset(builder, data_files={"train": path}, split="train", **{**defaults, **options})
    except Exception as error:  # the readers raise many types; the message classifies them
        if any(isinstance(cause, OSError) and cause.errno == errno.ENOSPC for cause in _causes(error)):
            raise  # a full disk (the `datasets` cache) is not the file's fault
        raise ValueError(_read_error(path, error)) from error
    finally:
        datasets.logging.set_verbosity(verbosity)
    if len(data) == 0:
        raise ValueError(f"Data file {path} has no rows (at most a header): add its rows.")
    return data


def _check_csv_header(path: str, separator: str) -> None:
    """Refuse a header that names a column twice: the reader would silently keep one of them."""
    import csv

    import fsspec

    try:
        with fsspec.open(path, "r", encoding="utf-8", newline="") as handle:
            header = next(csv.reader(handle, delimiter=separator), [])
    except (OSError, UnicodeDecodeError):
        return  # the reader says what is wrong with the file
    if repeated := sorted({name for name in header if header.count(name) > 1}):
        raise ValueError(f"Data file {path}: the header names column {repeated[0]!r} twice; rename one of them.")


def _read_label_names(path: str) -> list[str]:
    import fsspec  # datasets' own file layer: local paths and URLs alike

    try:
        with fsspec.open(path, "r", encoding="utf-8", newline="") as handle:
            # Fields are parted by spaces and tabs: other white space (U+00A0, U+2028, ...) belongs to the name.
            rows = [re.split(r"[ \t]+", line.strip()) for line in text_lines(handle.read()) if line.strip()]
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(_read_error(path, error)) from error
    if all(len(row) == 2 and row[1].isdigit() for row in rows):  # "name id" lines (label2idx.txt)
        names = {int(i): name for name, i in rows}
        if sorted(names) != list(range(len(names))):
            raise ValueError(f"{path}: the label ids must be 0..{len(names) - 1}, each once; got {sorted(names)}.")
        names = [names[i] for i in range(len(names))]
    else:
        names = [" ".join(row) for row in rows]  # one name per line, line i = id i (labels.txt)
    if repeated := [name for i, name in enumerate(names) if name in names[:i]]:
        first = names.index(repeated[0])
        raise ValueError(
            f"{path}: label name {repeated[0]!r} is given twice (ids {first} and "
            f"{names.index(repeated[0], first + 1)}); give each label one name."
        )
    return names


def _builtin(name: str, data_dir: str | None) -> tuple[dict[str, str], dict, list[str], bool]:
    """A built-in data set's files ({split: path or URL}), the options to read them, its label names and whether
    it is multi-label."""
    import datasets

    spec = BUILTIN_DATASETS[name]
    base = str(Path(data_dir) / name) if data_dir and (Path(data_dir) / name).is_dir() else (data_dir or spec["base"])
    files = {split: f"{base}/{file}" for split, file in spec["files"].items()}
    options = {}
    if spec.get("multilabel"):
        # text<TAB>comma-separated label ids<TAB>comment id, no header, no quoting.
        columns = datasets.Features(
            {"text": datasets.Value("string"), "label": datasets.Value("string"), "id": datasets.Value("string")}
        )
        options = {"header": None, "quoting": 3, "column_names": list(columns), "features": columns}
    return files, options, _read_label_names(f"{base}/{spec['labels']}"), bool(spec.get("multilabel"))


def _local_files(dataset: str) -> dict[str, str] | None:
    """`split=path,...` pairs or a folder of train/valid/test files, as {split: path}; None if neither. Refuses
    two files for one split, a file type that cannot be read and a mix of formats."""
    if "=" in dataset:
        files = {}
        for item in dataset.split(","):
            split, sep, path = item.partition("=")
            if not sep or not split.strip() or not path.strip():
                raise ValueError(f"{dataset!r}: expected split=file pairs separated by commas, got {item!r}.")
            files[SPLIT_ALIASES.get(split.strip(), split.strip())] = path.strip()
    elif Path(dataset).is_dir():
        files = {}
        for path in sorted(Path(dataset).iterdir()):
            if path.suffix in FILE_FORMATS and path.stem in SPLIT_ALIASES:
                split = SPLIT_ALIASES[path.stem]
                if split in files:
                    raise ValueError(f"Both {files[split]} and {path} are the {split!r} split; keep one of them.")
                files[split] = str(path)
        if not files:
            raise ValueError(f"No train/valid/test .csv, .tsv, .json or .jsonl files in {dataset!r}.")
    else:
        return None
    unknown = [path for path in files.values() if Path(path).suffix not in FILE_FORMATS]
    if unknown:
        raise ValueError(f"Cannot read {unknown[0]}: data files must be .csv, .tsv, .json or .jsonl.")
    files = dict(sorted(files.items(), key=lambda item: SPLITS.index(item[0]) if item[0] in SPLITS else len(SPLITS)))
    formats = {split: FILE_FORMATS[Path(path).suffix][2] for split, path in files.items()}
    if len(set(formats.values())) > 1:
        mix = ", ".join(f"{Path(files[split]).name} is {kind}" for split, kind in formats.items())
        raise ValueError(f"The data files of {dataset!r} mix formats ({mix}): use one format for every split.")
    return files


def _label_names_beside(path: str) -> list[str] | None:
    for candidate in ("label2idx.txt", "labels.txt"):
        if (Path(path).parent / candidate).exists():
            return _read_label_names(str(Path(path).parent / candidate))
    return None


def _label_ids(value, label_names: list[str], multilabel: bool) -> list[int] | int | None:
    """A raw label as a label id, or a list of them for multi-label data (None where the value is not one). A
    single-label value that is no label name nor integer comes back as it is, for the caller to refuse."""
    if multilabel:
        if isinstance(value, str):
            parts = [part.strip() for part in value.split(",")]
            return [int(part) for part in parts] if all(part.isdigit() for part in parts) else None
        return list(value) if isinstance(value, list) else None
    if isinstance(value, str) and value in label_names:
        return label_names.index(value)
    if isinstance(value, str) and value.strip().isdigit():  # an id, read as text
        return int(value)
    if isinstance(value, float) and value.is_integer():  # an integer column with a missing cell is read as floats
        return int(value)
    return value


def load_data(
    dataset: str,
    data_dir: str | None = None,
    text_column: str = "text",
    label_column: str = "label",
    limit: int | None = None,
) -> tuple[DatasetDict, list[str], str]:
    """Load a data set as a `DatasetDict` with columns `text` and `label`, its label names and its problem type.

    Single-label labels are integer ids; multi-label ones (comma-separated ids in one column, or lists) become
    multi-hot float vectors. Raises `ValueError` in one line naming the file (or split) and row for a file that
    cannot be read, a missing split or column, an empty text or a label outside the label set, before any model is
    loaded. Texts are read as they are written: "NaN" or "null" in a CSV is a text, not a missing value.
    """
    from datasets import DatasetDict

    from modeling_llm_fusion import validate_texts

    check_at_least_one("--limit", limit, " (leave it out to use every row)")
    data, files, label_names, multilabel = _read_splits(dataset, data_dir, label_column)
    data, where = _named_splits(data, files, dataset, text_column, label_column)
    if limit is not None:
        data = {name: split.select(range(min(limit, len(split)))) for name, split in data.items()}
    raw_labels = {name: split[label_column] for name, split in data.items()}
    label_names, multilabel = _label_set(data["train"].features[label_column], raw_labels, label_names, multilabel)

    out = DatasetDict()
    for name, split in data.items():
        texts = split[text_column]
        try:
            validate_texts(texts)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{where[name]}: {error} (row index = position)") from None
        labels = _checked_labels(raw_labels[name], label_names, multilabel, where[name])
        out[name] = _labelled_split(texts, labels, label_names, multilabel)
    problem_type = "multi_label_classification" if multilabel else "single_label_classification"
    return out, label_names, problem_type


def _read_splits(
    dataset: str, data_dir: str | None, label_column: str
) -> tuple[dict[str, Dataset], dict[str, str], list[str] | None, bool]:
    """Read a data set's splits, by the names its files give them (`valid`, `dev`, ...).

    Returns the splits, the file of each (none for a Hub data set), the label names the data set comes with (`None`
    where it names none) and whether it is known to be multi-label. Raises `ValueError` for a data set that is none
    of the kinds `load_data` reads or a file that cannot be read.
    """
    import datasets

    if dataset in BUILTIN_DATASETS:
        files, options, label_names, multilabel = _builtin(dataset, data_dir)
        data = {split: _read_file(path, label_column, **options) for split, path in files.items()}
        return data, files, label_names, multilabel
    if (files := _local_files(dataset)) is not None:
        data = {split: _read_file(path, label_column) for split, path in files.items()}
        return data, files, _label_names_beside(next(iter(files.values()))), False
    if "/" in dataset and not Path(dataset).suffix:  # a Hub data set id, ORG/NAME
        try:
            return dict(datasets.load_dataset(dataset)), {}, None, False
        except Exception as error:  # the Hub answers with many error types
            raise ValueError(
                f"Unknown data set {dataset!r}: not one of {', '.join(BUILTIN_DATASETS)}, not a local folder or "
                f"split=file list, and it could not be loaded from the Hub ({one_line(error)})."
            ) from error
    raise ValueError(
        f"Unknown data set {dataset!r}: not one of {', '.join(BUILTIN_DATASETS)}, a local folder, a "
        "split=file list or a Hub id (ORG/NAME)."
    )


def _named_splits(
    data: dict[str, Dataset], files: dict[str, str], dataset: str, text_column: str, label_column: str
) -> tuple[dict[str, Dataset], dict[str, str]]:
    """The three splits of `SPLITS` in order (a `valid` or `dev` split is `validation`), and how an error names each:
    `Split 'NAME' (FILE)`, or the data set where there is no file. Raises `ValueError` for a missing split or
    column."""
    data = {SPLIT_ALIASES.get(name, name): split for name, split in data.items()}
    files = {SPLIT_ALIASES.get(name, name): path for name, path in files.items()}
    missing = [split for split in SPLITS if split not in data]
    if missing:
        raise ValueError(f"Data set {dataset!r} has splits {sorted(data)}; missing {missing}.")
    where = {split: f"Split {split!r} ({files.get(split, dataset)})" for split in SPLITS}
    for name in SPLITS:
        for column in (text_column, label_column):
            if column not in data[name].column_names:
                raise ValueError(
                    f"{where[name]} has no column {column!r}; it has {data[name].column_names}. "
                    "Pass --text-column/--label-column, or add the column."
                )
    return {name: data[name] for name in SPLITS}, where


def _label_set(
    label_feature: FeatureType, raw_labels: dict[str, list], label_names: list[str] | None, multilabel: bool
) -> tuple[list[str], bool]:
    """The label names and whether the data is multi-label, where the data set's files did not name them.

    They come from the train split's label feature (the names of a `ClassLabel`; a list feature is multi-label), or
    else from the labels themselves: integer ids give `"0"` to the largest id, strings their sorted set.
    """
    import datasets
    from datasets import ClassLabel, List

    if label_names is not None:
        return label_names, multilabel
    if isinstance(label_feature, ClassLabel):
        return label_feature.names, multilabel
    if isinstance(label_feature, List | datasets.Sequence):
        multilabel = True
        if isinstance(label_feature.feature, ClassLabel):
            return label_feature.feature.names, multilabel
    if multilabel:  # lists of ids without names: ids 0..the largest
        ids = [i for labels in raw_labels.values() for v in labels for i in _label_ids(v, [], True) or []]
        return [str(i) for i in range(max((i for i in ids if isinstance(i, int)), default=-1) + 1)], multilabel
    values = {_label_ids(v, [], False) for labels in raw_labels.values() for v in labels if v is not None}
    ids = {v for v in values if isinstance(v, int) and not isinstance(v, bool)}
    if values and values == ids:
        if max(ids) >= max(1000, 10 * len(ids)):  # ids 0..max would be label names: refuse what cannot be meant
            split, row, value = next(
                (split, row, value)
                for split, labels in raw_labels.items()
                for row, value in enumerate(labels)
                if value is not None and _label_ids(value, [], False) == max(ids)
            )
            raise ValueError(
                f"Split {split!r}, row {row}: label {value!r} is far larger than the other ids ({len(ids)} distinct "
                "ids); label ids are 0..number of labels - 1."
            )
        return [str(i) for i in range(max(values) + 1)], multilabel
    if ids:  # ids and names mixed, and no file of label names to say which name an id is
        split, row, value = next(
            (split, row, value)
            for split, labels in raw_labels.items()
            for row, value in enumerate(labels)
            if value is not None and not isinstance(_label_ids(value, [], False), int)
        )
        raise ValueError(
            f"Split {split!r}, row {row}: label {value!r} is a name where the other labels are integer ids; use one "
            "kind, or give the names of the ids in a label2idx.txt beside the data files."
        )
    return sorted({str(v) for v in values}), multilabel  # string labels: ids in sorted order


def _checked_labels(raw_labels: list, label_names: list[str], multilabel: bool, where: str) -> list:
    """One split's labels as label ids (lists of ids for multi-label data); `ValueError` naming the split (`where`)
    and the row of a missing label or one outside the label set."""
    labels = []
    for row, value in enumerate(raw_labels):
        if value is None or value == "":
            raise ValueError(f"{where}, row {row}: the label is missing.")
        ids = _label_ids(value, label_names, multilabel)
        if multilabel and ids is None:
            raise ValueError(
                f"{where}, row {row}: label {value!r} is not a comma-separated list of label ids "
                f"(ids 0..{len(label_names) - 1})."
            )
        checked = ids if multilabel else [ids]
        if not checked or any(
            not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < len(label_names) for i in checked
        ):
            raise ValueError(
                f"{where}, row {row}: label {ids if isinstance(ids, int) else repr(value)} is outside the label set "
                f"(ids 0..{len(label_names) - 1}: {', '.join(label_names[:5])}, ...)."
            )
        labels.append(ids)
    return labels


def _labelled_split(texts: list[str], labels: list, label_names: list[str], multilabel: bool) -> Dataset:
    """One split as a `Dataset` of `text` and `label`: a `ClassLabel` id, or a multi-hot float vector."""
    import datasets
    import numpy as np
    from datasets import ClassLabel, Dataset, List, Value

    if multilabel:
        hot = np.zeros((len(labels), len(label_names)), dtype=np.float32)
        for row, ids in enumerate(labels):
            hot[row, ids] = 1.0
        labels, label_type = hot, List(Value("float32"), len(label_names))
    else:
        label_type = ClassLabel(names=label_names)
    features = datasets.Features({"text": Value("string"), "label": label_type})
    return Dataset.from_dict({"text": texts, "label": labels}, features=features)


def one_class(labels: Sequence[int], label_names: list[str]) -> str | None:
    """The name of the one class single-label `labels` (ids) all belong to, or None where they hold two or more (or
    none): a classifier, or a probe, fitted on them could only answer that class."""
    ids = set(labels)
    return label_names[ids.pop()] if len(ids) == 1 else None


def data_digest(split: Dataset) -> str:
    """sha256 of a split's texts and labels in order: what the saved output must be rebuilt for when it changes."""
    digest = hashlib.sha256()
    for text, label in zip(split["text"], split["label"]):
        digest.update(json.dumps([text, label]).encode())
        digest.update(b"\n")
    return digest.hexdigest()


def texts_digest(split: Dataset) -> str:
    """sha256 of a split's texts in order: the part of the data features depend on (labels are not)."""
    digest = hashlib.sha256()
    for text in split["text"]:
        digest.update(text.encode())
        digest.update(b"\0")
    return digest.hexdigest()
