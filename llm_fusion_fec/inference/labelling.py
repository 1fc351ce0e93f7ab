"""The labelling core: a model's pipeline built once (backbones loaded once), labelling lists of texts and batches of
rows (a pyarrow table or record batch, a pandas frame, a dict of lists or numpy arrays, as Ray Data hands them) with
the pipeline's own answers. `fec predict` streams a file through it; the Space's file upload labels a file through it
(`predict.label_file`); a Ray Data recipe maps batches through it.

    from llm_fusion_fec import Labeller

    labeller = Labeller("outputs/llm-fusion-ed", batch_size=32)
    labeller.label_texts(["i finally got the job", ""])  # [{"label": "joyful", "score": 0.91}, None]
    table = labeller(pyarrow.table({"text": [...]}))     # the table with `label` and `score` columns appended

At module level this file imports the standard library only (the heavy libraries are imported when a labeller is
built or a batch of their kind is labelled): `fec space` copies it beside the Space's app with `predict.py`, and the
app builds its labeller on the model's own pipeline (`Labeller.from_pipeline`, lists of texts: no import of this
package nor pyarrow there).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

try:
    from .predict import answer_values, prediction_columns, text_problem
except ImportError:  # in a Space: the copy of predict.py beside this file
    from predict import answer_values, prediction_columns, text_problem


class Labeller:
    """Labels texts with a fusion model exactly as its `FECPipeline` does: the texts a call gets are sorted by token
    count into batches of `batch_size` (and at most `max_tokens` padded tokens), as the pipeline sorts a list.

    A text that cannot be labelled (empty, only whitespace, not a string: the pipeline's own check) gets no answer
    (`None`; an empty label and no score in a batch of rows); the others are labelled all the same.

    Args:
        model (`str`, `os.PathLike` or `PreTrainedModel`):
            A model folder or Hub id (loaded by `load_model`: `ValueError` in one line if it cannot be), or a loaded
            fusion model.
        backbone_paths (`dict[str, str]`, *optional*):
            Local folders to load backbones from instead of the Hub, by backbone name or model id.
        device (`str`, *optional*):
            Where the backbones and the head run (default: the first GPU if there is one).
        dtype (`str`, *optional*):
            Compute dtype of every backbone and the head (default: each backbone's recorded one).
        batch_size (`int`, *optional*, defaults to 32):
            Texts run through the backbones together.
        text_column (`str`, *optional*, defaults to `"text"`):
            The column of a batch of rows that holds the texts.
        top_k (`int` or `"all"`, *optional*):
            Give the `top_k` best labels of each text (`"all"`: every label), as lists.
        threshold (`float`, *optional*):
            Multi-label models only: the score above which a label is given (default: the model's).
        max_tokens (`int`, *optional*):
            At most this many padded tokens a forward pass, as the pipeline's `max_tokens`.
    """

    def __init__(
        self,
        model: str | os.PathLike | Any,
        backbone_paths: dict[str, str] | None = None,
        device: str | None = None,
        dtype: str | None = None,
        batch_size: int = 32,
        text_column: str = "text",
        top_k: int | str | None = None,
        threshold: float | None = None,
        max_tokens: int | None = None,
    ):
        from llm_fusion_fec.inference.loading import build_pipeline

        pipeline = build_pipeline(model, backbone_paths, device, dtype, batch_size, max_tokens)
        self._setup(pipeline, batch_size, text_column, top_k, threshold)

    @classmethod
    def from_pipeline(
        cls,
        pipeline: Any,
        batch_size: int = 32,
        text_column: str = "text",
        top_k: int | str | None = None,
        threshold: float | None = None,
    ) -> Labeller:
        """A labeller on a pipeline built already (this package's `FECPipeline`, or the model's own remote code)."""
        labeller = cls.__new__(cls)
        labeller._setup(pipeline, batch_size, text_column, top_k, threshold)
        return labeller

    def _setup(self, pipeline, batch_size: int, text_column: str, top_k, threshold) -> None:
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}.")
        self.pipeline, self.batch_size, self.text_column = pipeline, batch_size, text_column
        self.parameters = {}
        if top_k is not None:
            self.parameters["top_k"] = None if top_k == "all" else top_k
        if threshold is not None:
            self.parameters["threshold"] = threshold
        pipeline._sanitize_parameters(**self.parameters)  # a bad top_k or threshold is refused now, in one line
        config = pipeline.model.config
        self.listed = top_k is not None or config.problem_type == "multi_label_classification"
        """Whether an answer is a list of labels (top-k, or a multi-label model): `labels`/`scores` columns."""
        # The pipeline's own check of a text, from the code the model runs (the package's or the repository's).
        self.validate_text = sys.modules[type(pipeline.model).__module__].validate_text

    def problems(self, texts: Sequence[Any]) -> list[str | None]:
        """Why each text cannot be labelled, `None` for those that can (`text_problem`, the pipeline's check)."""
        return [text_problem(text, self.validate_text) for text in texts]

    def label_texts(
        self,
        texts: Sequence[Any],
        problems: Sequence[str | None] | None = None,
        on_batch: Callable[[int], Any] | None = None,
    ) -> list[dict | list[dict] | None]:
        """The pipeline's answer for each text (a dict, or a list of dicts for top-k or a multi-label model), `None`
        where a text cannot be labelled. `problems` are those texts' `problems` if known; `on_batch(n)` is called
        after each batch of `n` texts (progress)."""
        problems = self.problems(texts) if problems is None else problems
        good = [i for i, problem in enumerate(problems) if problem is None]
        answers: list[Any] = [None] * len(texts)
        good_texts = [_plain(texts[i]) for i in good]
        # The pipeline's batches of the whole list, run one at a time (each is one batch to the pipeline too), so
        # that progress can be told between them.
        for batch in self.pipeline.length_batches(good_texts, self.batch_size) if good_texts else []:
            batch_texts = [good_texts[j] for j in batch]
            batch_answers = self.pipeline(batch_texts, batch_size=self.batch_size, **self.parameters)
            for j, answer in zip(batch, batch_answers, strict=True):
                answers[good[j]] = answer
            if on_batch is not None:
                on_batch(len(batch))
        return answers

    def columns(self, names: Sequence[str]) -> tuple[str, str]:
        """The label and score columns added to a batch with columns `names` (`prediction_columns`)."""
        return prediction_columns(list(names), self.listed)

    def __call__(self, batch: Any) -> Any:
        """`batch` (a pyarrow `Table` or `RecordBatch`, a pandas `DataFrame`, or a dict of lists or numpy arrays)
        with the label and score columns appended: `label`/`score`, or `labels`/`scores` lists for top-k or a
        multi-label model, prefixed `predicted_` where the batch has such columns."""
        kind = type(batch).__module__.split(".")[0]
        if kind == "pyarrow":
            return self._label_arrow(batch)
        if kind == "pandas":
            texts = self._texts(batch.columns, lambda: batch[self.text_column].tolist())
            labels, scores = self._cells(texts)
            label_column, score_column = self.columns(list(batch.columns))
            return batch.assign(**{label_column: labels, score_column: scores})
        if isinstance(batch, Mapping):
            return self._label_dict(batch)
        raise TypeError(
            f"A batch is a pyarrow Table or RecordBatch, a pandas DataFrame or a dict of columns, not a "
            f"{type(batch).__name__}."
        )

    def _texts(self, names, read: Callable[[], list]) -> list:
        if self.text_column not in list(names):
            raise ValueError(f"The batch has no column {self.text_column!r}; its columns are {list(names)}.")
        return read()

    def _cells(self, texts: Sequence[Any]) -> tuple[list, list]:
        values = [answer_values(answer, self.listed) for answer in self.label_texts(texts)]
        return [label for label, _ in values], [score for _, score in values]

    def _label_dict(self, batch: Mapping) -> dict:
        texts = self._texts(batch, lambda: list(batch[self.text_column]))
        labels, scores = self._cells(texts)
        label_column, score_column = self.columns(list(batch))
        if any(type(column).__module__ == "numpy" for column in batch.values()):  # Ray's "numpy" batch format
            import numpy as np

            if self.listed:  # one list a row (np.array would make equal-length lists a second axis)
                labels, scores = _object_array(labels), _object_array(scores)
            else:
                labels, scores = np.array(labels, dtype=str), np.array(scores, dtype=float)
        return {**batch, label_column: labels, score_column: scores}

    def _label_arrow(self, batch):
        texts = self._texts(batch.schema.names, lambda: batch.column(self.text_column).to_pylist())
        labels, scores = self.arrow_cells(self.label_texts(texts))
        label_column, score_column = self.columns(batch.schema.names)
        return batch.append_column(label_column, labels).append_column(score_column, scores)

    def arrow_cells(self, answers: Sequence[dict | list[dict] | None]) -> tuple[Any, Any]:
        """The label and score columns of `answers` as pyarrow arrays: strings and floats, or lists of them."""
        import pyarrow as pa

        values = [answer_values(answer, self.listed) for answer in answers]
        if self.listed:  # a text not labelled has no list: null, where a text with no label above the threshold has []
            labels = [None if answer is None else label for answer, (label, _) in zip(answers, values, strict=True)]
            return pa.array(labels, pa.list_(pa.string())), pa.array([s for _, s in values], pa.list_(pa.float64()))
        return pa.array([label for label, _ in values], pa.string()), pa.array([s for _, s in values], pa.float64())


def _plain(text: Any) -> Any:
    """A text as the pipeline takes it: a numpy string (an element of Ray's numpy batches) as a `str`."""
    return str(text) if isinstance(text, str) and type(text) is not str else text


def _object_array(values: list):
    import numpy as np

    array = np.empty(len(values), dtype=object)
    array[:] = values
    return array
