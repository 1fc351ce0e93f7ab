"""The test confusion matrix of a single-label model as the PNG image its model card shows."""

from __future__ import annotations

import io

import numpy as np
from transformers.utils import logging

logger = logging.get_logger(__name__)

CONFUSION_MATRIX_FILE = "confusion_matrix.png"  # in the model folder, beside the card that shows it


def confusion_matrix_png(confusion: list[list[int]], labels: list[str]) -> bytes | None:
    """The test confusion matrix as a PNG drawn by matplotlib: true labels down, predicted labels across, both named,
    the count in every non-empty square, each square shaded by its share of the true label's texts (the diagonal
    shows each label's recall). About 0.42 inch a label, so 32 labels stay readable (about 1,600 pixels a side).

    Returns `None`, with a notice, where matplotlib is not installed: the card then lists the most frequent
    confusions without the image.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning(
            "matplotlib is not installed: the model card has no confusion-matrix image "
            "(pip install 'llm-fusion-fec[card]' draws one)."
        )
        return None
    counts = np.asarray(confusion, dtype=np.int64)
    shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    side = max(4.0, 0.42 * len(labels) + 2.5)
    figure = Figure(figsize=(side, side), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    axes.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    axes.set_xticks(range(len(labels)), labels, rotation=90)
    axes.set_yticks(range(len(labels)), labels)
    axes.set_xlabel("predicted label")
    axes.set_ylabel("true label")
    axes.set_title("Test confusion matrix: counts, shaded by share of the true label")
    size = 7 if len(labels) > 16 else 9
    for (row, column), count in np.ndenumerate(counts):
        if count:
            color = "white" if shares[row, column] > 0.5 else "black"
            axes.text(column, row, str(count), ha="center", va="center", fontsize=size, color=color)
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png")
    return image.getvalue()


__all__ = ["CONFUSION_MATRIX_FILE", "confusion_matrix_png"]
