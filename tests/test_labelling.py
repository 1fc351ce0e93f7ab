"""The Labeller: the pipeline's own answers for a list of texts and for batches of rows in Ray's formats (a pyarrow
table, a pandas frame, a dict of numpy arrays), an empty label where a text cannot be labelled."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from helpers import tiny_fusion_model
from llm_fusion_fec import Labeller
from pipeline_fec import FECPipeline

EMOTIONS = ["sad", "joyful", "angry", "afraid", "surprised"]
TEXTS = [
    "i finally got the job i wanted and i am so happy",
    "",
    "my dog died",
    "someone broke into my car, i was furious and i shouted at everyone for an hour",
    42,
    "what a lovely surprise",
]


@pytest.fixture(scope="module")
def single_label_model(tiny_backbones):
    return tiny_fusion_model(tiny_backbones, EMOTIONS, "single_label_classification")


@pytest.fixture(scope="module")
def multi_label_model(tiny_backbones):
    return tiny_fusion_model(tiny_backbones, EMOTIONS, "multi_label_classification")


def expected(model, texts, **parameters):
    """The pipeline's answers for the texts it can label, in one list, as a user calls it; None for the others."""
    good = [text for text in texts if isinstance(text, str) and text.strip()]
    answers = iter(FECPipeline(model=model, device="cpu")(good, batch_size=2, **parameters))
    return [next(answers) if isinstance(text, str) and text.strip() else None for text in texts]


@pytest.mark.parametrize("parameters", [{}, {"top_k": 2}])
def test_a_list_gets_the_pipelines_answers(single_label_model, parameters):
    labeller = Labeller(single_label_model, batch_size=2, device="cpu", **parameters)
    assert labeller.label_texts(TEXTS) == expected(single_label_model, TEXTS, **parameters)
    assert labeller.listed == bool(parameters)


def test_multi_label_with_a_threshold(multi_label_model):
    labeller = Labeller(multi_label_model, batch_size=2, device="cpu", threshold=0.45)
    answers = labeller.label_texts(TEXTS)
    assert answers == expected(multi_label_model, TEXTS, threshold=0.45)
    assert labeller.listed and all(isinstance(answer, list) for answer in answers if answer is not None)


def test_an_arrow_table_and_record_batch_get_columns(single_label_model):
    labeller = Labeller(single_label_model, batch_size=2, device="cpu")
    table = pa.table({"id": list(range(len(TEXTS))), "text": [str(text) if text != 42 else None for text in TEXTS]})
    labelled = labeller(table)
    assert labelled.column_names == ["id", "text", "label", "score"]
    answers = expected(single_label_model, table.column("text").to_pylist())
    assert labelled.column("label").to_pylist() == [a["label"] if a else "" for a in answers]
    assert labelled.column("score").to_pylist() == [a["score"] if a else None for a in answers]
    batch = labeller(table.to_batches()[0])
    assert isinstance(batch, pa.RecordBatch) and batch.column("label").to_pylist() == labelled["label"].to_pylist()


def test_a_pandas_frame_with_gold_labels_gets_predicted_columns(single_label_model):
    labeller = Labeller(single_label_model, batch_size=2, device="cpu", top_k=2, text_column="body")
    frame = pd.DataFrame({"body": TEXTS, "labels": ["x"] * len(TEXTS)})
    labelled = labeller(frame)
    assert list(labelled.columns) == ["body", "labels", "predicted_labels", "predicted_scores"]
    answers = expected(single_label_model, TEXTS, top_k=2)
    assert labelled["predicted_labels"].tolist() == [[a["label"] for a in x] if x else "" for x in answers]


def test_a_dict_of_numpy_arrays(multi_label_model):
    labeller = Labeller(multi_label_model, batch_size=3, device="cpu")
    texts = np.array([text for text in TEXTS if isinstance(text, str)])
    labelled = labeller({"text": texts, "id": np.arange(len(texts))})
    answers = expected(multi_label_model, list(texts))
    assert [list(x) if x != "" else "" for x in labelled["labels"]] == [
        [a["label"] for a in x] if x is not None else "" for x in answers
    ]
    assert labelled["scores"].shape == (len(texts),) and list(labelled["id"]) == list(range(len(texts)))
    top_2 = Labeller(multi_label_model, batch_size=3, device="cpu", top_k=2)({"text": texts})
    assert top_2["labels"].shape == (len(texts),) and top_2["labels"][1] == ""  # the empty text
    assert all(len(labels) == 2 for i, labels in enumerate(top_2["labels"]) if i != 1)


def test_a_missing_column_and_bad_parameters_are_named(single_label_model, tmp_path):
    labeller = Labeller(single_label_model, device="cpu")
    with pytest.raises(ValueError, match=r"The batch has no column 'text'; its columns are \['body'\]"):
        labeller({"body": ["hello"]})
    with pytest.raises(ValueError, match="threshold applies to multi-label models only"):
        Labeller(single_label_model, device="cpu", threshold=0.5)
    with pytest.raises(ValueError, match="Cannot load a model from"):
        Labeller(str(tmp_path / "no-such-model"))
