"""The Gradio app of an LLM-fusion emotion classifier: the `app.py` of the Space that `fec space` writes.

A text box with the model card's example texts, the emotions and their scores as a labelled bar, top-k (and, for a
multi-label model, the threshold) as controls, and a file upload that labels a CSV, JSONL or TXT file with the code of
`fec predict` (its labelling core, `Labeller`, on the page's pipeline) and offers the labelled file for download.

In a Space this file runs as it is, beside `labelling.py` and `predict.py` (copies of the package's `fec predict` code)
and `space.json` (`SETTINGS_FILE`: the model, local backbone folders, fallback example texts): the app reads what it
shows from that JSON file and holds no value of its own, and it needs nothing but gradio, torch and transformers. The
model runs through its own pipeline, `pipeline_fec.py` of its repository (`pipeline(..., trust_remote_code=True)`).
The package's `build_demo` (`llm_fusion_fec.serving.space`) serves the same page with the package's pipeline.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

try:  # in the package
    from ..inference.labelling import Labeller
    from ..inference.predict import INPUT_SUFFIXES, label_file
except ImportError:  # in the Space: the copies of `fec predict`'s code beside this file
    from labelling import Labeller
    from predict import INPUT_SUFFIXES, label_file

SETTINGS_FILE = "space.json"
"""Beside the app: `{"model": ..., "backbone_paths": {...}, "examples": [...]}`, what `fec space` wrote."""
UPLOAD_BATCH_SIZE = 8
"""Texts of an uploaded file run through the backbones together: `fec predict`'s default `--batch-size`, so that an
upload gets the very rows `fec predict` writes for the file."""
ELEMENTS = ("text", "classify", "top-k", "threshold", "scores", "message", "upload", "label-file", "labelled")
"""The `elem_id`s of the page's parts, which a browser test finds them by."""


def card_examples(model: str | os.PathLike, fallback: Sequence[str] = ()) -> list[str]:
    """The example texts of the model card's widget (`widget: - text: ...`), or `fallback`."""
    from huggingface_hub import ModelCard

    folder = Path(model)
    try:
        card = ModelCard.load(folder / "README.md" if folder.is_dir() else str(model))
        widget = card.data.to_dict().get("widget") or []
    except Exception:  # no card, offline, or a card without a widget: the demo still works
        widget = []
    texts = [entry["text"] for entry in widget if isinstance(entry, dict) and isinstance(entry.get("text"), str)]
    return texts or list(fallback)


def error_line(error: BaseException) -> str:
    """The pipeline's error as the page shows it: its first line, with the lone text's position left out."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.replace("Text at position 0 is", "The text is", 1)


class Demo:
    """What the page's buttons run: the pipeline's answer for a text, the labelled file for an upload.

    Args:
        pipeline (`FECPipeline`): The model's pipeline (the package's, or the model's own remote code).
        examples (`list[str]`): Texts to offer under the text box.
    """

    def __init__(self, pipeline, examples: list[str]):
        self.pipeline = pipeline
        self.config = pipeline.model.config
        self.multi_label = self.config.problem_type == "multi_label_classification"
        self.examples = examples
        self.outputs = Path(tempfile.mkdtemp(prefix="fec-space-"))

    def classify(self, text: Any, top_k: float, threshold: float | None = None) -> tuple[dict | None, str]:
        """The `top_k` best emotions of `text` with their scores (for a multi-label model: of those above
        `threshold`), and a line for the page: the error, or why no emotion is shown."""
        try:
            if self.multi_label:
                answer = self.pipeline(text, threshold=float(threshold if threshold is not None else 0.5))
            else:
                answer = self.pipeline(text, top_k=int(top_k))
        except (TypeError, ValueError) as error:
            return None, f"Error: {error_line(error)}"
        scores = {entry["label"]: entry["score"] for entry in answer[: int(top_k)]}
        if not scores:
            return None, f"No emotion scores above the threshold {float(threshold):g}."
        return scores, ""

    def label_upload(self, path: str | None, threshold: float | None = None) -> tuple[str | None, str]:
        """The uploaded file labelled as `fec predict` labels it (each row's best emotion; for a multi-label model
        those above `threshold`), and a line for the page."""
        if not path:
            return None, "Error: choose a .csv, .jsonl or .txt file first."
        source = Path(path)
        suffix = ".jsonl" if source.suffix == ".jsonl" else ".csv"
        output = Path(tempfile.mkdtemp(dir=self.outputs)) / f"{source.stem}.predictions{suffix}"
        try:
            result = label_file(self.labeller(threshold), source, output)
        except (TypeError, ValueError) as error:
            return None, f"Error: {error_line(error)}"
        if result.unlabelled:
            first = result.unlabelled[0]
            return str(
                output
            ), f"{result.problems()}: line {first.line}: {first.problem.rstrip('.')}. They have an empty label."
        return str(output), f"Labelled {len(result.rows)} rows."

    def labeller(self, threshold: float | None = None) -> Labeller:
        """The labelling core of `fec predict` on the page's pipeline (for a multi-label model: at `threshold`)."""
        threshold = float(threshold) if self.multi_label and threshold is not None else None
        return Labeller.from_pipeline(self.pipeline, UPLOAD_BATCH_SIZE, threshold=threshold)

    def blocks(self):
        """The page, as a `gradio.Blocks`."""
        import gradio as gr

        name = Path(self.config.name_or_path or "LLM-fusion emotion classifier").name
        labels = self.config.num_labels
        with gr.Blocks(title=f"{name}: emotions") as blocks:
            gr.Markdown(
                f"# {name}\n{labels} emotions, {'several per text' if self.multi_label else 'one per text'}: a small "
                "fusion head over frozen LLM and encoder features (llm-fusion-fec)."
            )
            with gr.Row():
                with gr.Column():
                    text = gr.Textbox(label="Text", lines=3, elem_id="text")
                    top_k = gr.Slider(1, labels, value=min(5, labels), step=1, label="Top k", elem_id="top-k")
                    threshold = (
                        gr.Slider(0, 1, value=self.config.threshold, label="Threshold", elem_id="threshold")
                        if self.multi_label
                        else gr.State(None)
                    )
                    classify = gr.Button("Classify", variant="primary", elem_id="classify")
                    gr.Examples([[example] for example in self.examples], inputs=[text])
                with gr.Column():
                    scores = gr.Label(label="Emotions", elem_id="scores")
                    message = gr.Markdown(elem_id="message")
            with gr.Row():
                upload = gr.File(
                    label="Label a file: CSV (a text column), JSONL (a text field) or TXT (a text a line)",
                    file_types=list(INPUT_SUFFIXES),
                    elem_id="upload",
                )
                labelled = gr.File(label="Labelled file", elem_id="labelled")
            label_file_button = gr.Button("Label the file", elem_id="label-file")
            controls = [top_k, threshold]
            classify.click(self.classify, [text, *controls], [scores, message])
            text.submit(self.classify, [text, *controls], [scores, message])
            label_file_button.click(self.label_upload, [upload, threshold], [labelled, message])
        return blocks


def load_pipeline(model: str | os.PathLike, backbone_paths: dict[str, str] | None = None, device=None):
    """The model's own pipeline (its repository's `pipeline_fec.py`, `trust_remote_code=True`), on the GPU where
    there is one."""
    import torch
    from transformers import pipeline

    if device is None:
        device = 0 if torch.cuda.is_available() else "cpu"
    options = {"backbone_paths": backbone_paths} if backbone_paths else {}
    return pipeline("text-classification", model=str(model), trust_remote_code=True, device=device, **options)


def space_demo(folder: str | os.PathLike):
    """The page of the Space in `folder`, as its `SETTINGS_FILE` describes it."""
    settings = json.loads((Path(folder) / SETTINGS_FILE).read_text(encoding="utf-8"))
    pipeline = load_pipeline(settings["model"], settings.get("backbone_paths"))
    return Demo(pipeline, card_examples(settings["model"], settings.get("examples", []))).blocks()


if __name__ == "__main__":
    space_demo(Path(__file__).resolve().parent).launch()
