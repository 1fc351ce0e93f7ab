"""Reading labelled data sets: local folders and file lists, the built-in published splits, and the one-line errors
that name the file (split, row) and the fix."""

import shutil

import pytest

import llm_fusion_fec.data.datasets as fec_datasets
from helpers import write_csv_dataset
from llm_fusion_fec.data.datasets import load_data


def test_local_folder_dataset(tmp_path):
    folder = write_csv_dataset(tmp_path / "mine", [("so sad today", 0), ("what a day!", 1)])
    data, names, problem = load_data(str(folder))
    assert names == ["sad", "happy", "angry"] and problem == "single_label_classification"
    assert data["validation"]["label"] == [0, 1]


@pytest.mark.parametrize(
    ("rows", "kwargs", "message"),
    [
        ([("fine", 0), ("", 1)], {}, r"Split 'train' .*: Text at position 1 is (NoneType|empty)"),
        ([("fine", 0), ("   ", 1)], {}, r"Text at position 1 is empty or only whitespace"),
        ([("fine", 0), ("too far", 7)], {}, r"row 1: label 7 is outside the label set \(ids 0..2"),
        ([("fine", 0)], {"text_column": "body"}, r"has no column 'body'; it has \['text', 'label'\]"),
    ],
)
def test_bad_data_is_named(tmp_path, rows, kwargs, message):
    folder = write_csv_dataset(tmp_path / "bad", rows)
    with pytest.raises(ValueError, match=message):
        load_data(str(folder), **kwargs)


def test_unknown_dataset():
    with pytest.raises(ValueError, match=r"Unknown data set 'no_such_set'"):
        load_data("no_such_set")


# ---- bad data files: one line, naming the file (split, row) and the fix ----

HEADER = "text,label\n"
GOOD = HEADER + "fine,0\nalso fine,1\n"


@pytest.mark.parametrize(
    ("files", "message"),
    [
        ({"valid.csv": HEADER + '"fine,0\nok,1\n'}, r"valid\.csv is not valid CSV: EOF inside string starting at row"),
        ({"test.csv": HEADER + "fine,0\na,b,1\n"}, r"test\.csv is not valid CSV: Expected 2 fields in line 3, saw 3"),
        ({"test.csv": "text\nfine\n"}, r"Split 'test' \(.*test\.csv\) has no column 'label'; it has \['text'\]"),
        (
            {"train.csv": (HEADER + "caf\xe9,0\n").encode("latin-1")},
            r"train\.csv is not UTF-8 text \(line 2 has byte 0xe9\); the expected encoding is UTF-8",
        ),
        ({"valid.csv": HEADER}, r"valid\.csv has no rows"),
        (
            {
                "train.csv": None,
                "valid.csv": None,
                "test.csv": None,
                "train.jsonl": "",
                "valid.jsonl": '{"text": "a", "label": 0}\n',
                "test.jsonl": '{"text": "a", "label": 0}\n',
            },
            r"train\.jsonl is empty",
        ),
        (
            {"valid.csv": None, "valid.jsonl": '{"text": "a", "label": 0}\n'},
            r"mix formats \(train\.csv is CSV, valid\.jsonl is JSON, test\.csv is CSV\): use one format",
        ),
    ],
    ids=["unterminated-quote", "extra-fields", "missing-column", "latin-1", "header-only", "empty-jsonl", "mixed"],
)
def test_bad_data_files_are_named_in_one_line(tmp_path, capfd, files, message):
    folder = tmp_path / "bad"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"{split}.csv").write_text(GOOD)
    for name, content in files.items():
        if content is None:
            (folder / name).unlink()
        elif isinstance(content, bytes):
            (folder / name).write_bytes(content)
        else:
            (folder / name).write_text(content)
    with pytest.raises(ValueError, match=message) as error:
        load_data(str(folder))
    assert "\n" not in str(error.value)
    assert str(folder) not in capfd.readouterr().err  # nothing else reports the file (no reader's log)


def test_texts_that_look_like_missing_values_are_texts(tmp_path):
    folder = write_csv_dataset(tmp_path / "na", [("NaN", 0), ("null", 1), ("None", 2), ("NA", 0), ("n/a", 1)])
    data, _, _ = load_data(str(folder))
    assert data["test"]["text"] == ["NaN", "null", "None", "NA", "n/a"] and data["test"]["label"] == [0, 1, 2, 0, 1]


def test_malformed_multi_label_id_names_split_and_row(data_dir, tmp_path):
    folder = tmp_path / "go_emotions_multilabel"
    folder.mkdir()
    shutil.copy(data_dir / "go_emotions_multilabel" / "labels.txt", folder)
    for name in ("train", "dev", "test"):
        (folder / f"{name}.tsv").write_text("so happy\t17\tid1\nwhat\t3,x\tid2\n" if name == "dev" else "ok\t1\tid\n")
    with pytest.raises(ValueError, match=r"Split 'validation' \(.*dev\.tsv\), row 1: label '3,x' is not a comma-sep"):
        load_data("go_emotions_multilabel", data_dir=str(tmp_path))


def test_offline_without_data_dir(monkeypatch):
    unreachable = {**fec_datasets.BUILTIN_DATASETS["ED"], "base": "http://127.0.0.1:9/ED"}
    monkeypatch.setitem(fec_datasets.BUILTIN_DATASETS, "ED", unreachable)
    with pytest.raises(
        ValueError,
        match=r"^could not download http://127\.0\.0\.1:9/ED/\S+( \(.*\))?; pass --data-dir DIR with a local copy",
    ):
        load_data("ED")


# ---- errors that name the right file, row and value ----


def write_split_files(folder, text: str) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    for split in ("train", "valid", "test"):
        (folder / f"{split}.csv").write_text(text)
    return str(folder)


def test_a_label_name_among_ids_names_its_row(tmp_path):
    folder = write_split_files(tmp_path / "mixed", "text,label\nhello there,0\nnice day,joy\nbad day,1\n")
    with pytest.raises(ValueError, match=r"Split 'train', row 1: label 'joy' is a name where the other labels are"):
        load_data(folder)
    (tmp_path / "mixed" / "label2idx.txt").write_text("sad 0\nhappy 1\n")  # with names: row 1 is not one of them
    with pytest.raises(ValueError, match=r"Split 'train' \(.*train.csv\), row 1: label 'joy' is outside"):
        load_data(folder)


def test_a_huge_integer_label_names_its_row(tmp_path):
    folder = write_split_files(tmp_path / "huge", "text,label\nhello,0\nnice,99999999999999999999999\nbad,1\n")
    with pytest.raises(ValueError, match=r"Split 'train', row 1: label '99999999999999999999999' is far larger"):
        load_data(folder)


def test_a_name_given_twice_in_label2idx_names_the_file_and_the_name(tmp_path):
    folder = write_csv_dataset(tmp_path / "twice", [("fine", 0), ("also", 1)])
    (tmp_path / "twice" / "label2idx.txt").write_text("sad 0\nhappy 1\nsad 2\n")
    with pytest.raises(ValueError, match=r"label2idx.txt: label name 'sad' is given twice \(ids 0 and 2\)"):
        load_data(str(folder))


def test_a_column_named_twice_is_refused(tmp_path):
    folder = write_split_files(tmp_path / "dup", "text,text,label\nhello,x,0\nnice,y,1\n")
    with pytest.raises(ValueError, match=r"train.csv: the header names column 'text' twice"):
        load_data(folder)


@pytest.mark.parametrize("file", ["label2idx.txt", "labels.txt"])
def test_a_label_file_is_one_name_a_line_whatever_the_name_holds(tmp_path, file):
    folder = write_csv_dataset(tmp_path / "odd", [("fine", 0), ("also", 1), ("more", 2)])
    (folder / "label2idx.txt").unlink()
    names = ["sad\u2028ish", "hap\x85py", "an\x0cgry", "very\u00a0calm"]
    lines = [f"{name} {i}" for i, name in enumerate(names)] if file == "label2idx.txt" else names
    (folder / file).write_bytes(("\r\n".join(lines) + "\r\n").encode())
    _, label_names, _ = load_data(str(folder))
    assert label_names == names


def test_text_lines_end_at_line_feeds_only():
    from llm_fusion_fec.data.text_files import text_lines

    assert text_lines("a\u2028b\x85c\x0cd\x1ce\rf\r\ng\n\nh") == ["a\u2028b\x85c\x0cd\x1ce\rf", "g", "", "h"]
    assert text_lines("") == [] and text_lines("\n") == [""] and text_lines("x\r\n") == ["x"]
