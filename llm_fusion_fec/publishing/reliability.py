"""The reliability diagram of the saved model on test, as the PNG image its model card shows."""

from __future__ import annotations

import io

from transformers.utils import logging

from llm_fusion_fec.evaluation.results import ReliabilityBin

logger = logging.get_logger(__name__)

RELIABILITY_DIAGRAM_FILE = "reliability_diagram.png"  # in the model folder, beside the card that shows it


def reliability_diagram_png(table: list[ReliabilityBin], confidence: str) -> bytes | None:
    """The reliability diagram of a test reliability table, drawn by matplotlib: for each confidence bin, a bar up to
    the share of right answers in it, the bin's mean confidence marked on it, the diagonal a perfectly calibrated
    model would follow, and the number of confidences per bin below. `confidence` names what was binned (e.g. "top
    label's probability").

    Returns `None`, with a notice, where matplotlib is not installed: the card then shows the table instead.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        logger.warning(
            "matplotlib is not installed: the model card shows its reliability table without the diagram "
            "(pip install 'llm-fusion-fec[card]' draws one)."
        )
        return None
    figure = Figure(figsize=(5.5, 6.5), dpi=100)
    FigureCanvasAgg(figure)
    top, bottom = figure.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    filled = [row for row in table if row["count"]]
    width = table[0]["upper"] - table[0]["lower"]
    lefts = [row["lower"] for row in filled]
    top.bar(lefts, [row["accuracy"] for row in filled], width=width, align="edge", color="#4c72b0", edgecolor="white")
    centres = [row["lower"] + width / 2 for row in filled]
    top.scatter(centres, [row["confidence"] for row in filled], color="#dd8452", zorder=3, label="mean confidence")
    top.plot([0, 1], [0, 1], linestyle="--", color="grey", label="perfect calibration")
    top.set_xlim(0, 1)
    top.set_ylim(0, 1)
    top.set_ylabel("share right")
    top.set_title("Reliability on test")
    top.legend(loc="upper left")
    bottom.bar(lefts, [row["count"] for row in filled], width=width, align="edge", color="#8c8c8c")
    bottom.set_xlabel(confidence)
    bottom.set_ylabel("count")
    figure.tight_layout()
    image = io.BytesIO()
    figure.savefig(image, format="png")
    return image.getvalue()


__all__ = ["RELIABILITY_DIAGRAM_FILE", "reliability_diagram_png"]
