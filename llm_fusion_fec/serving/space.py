"""A Gradio demo of a trained model, and the Space that serves it (`fec space`).

`build_demo(model)` is the app: a text box with the model card's example texts, the emotions and their scores as a
labelled bar, top-k (and, for a multi-label model, the threshold) as controls, and a file upload that labels a CSV,
JSONL or TXT file with `fec predict`'s own code and offers the labelled file for download. The model runs through
this package's pipeline (`FECPipeline`, no remote code). `write_space` writes the three files of a Gradio Space
whose `app.py` calls `build_demo` with the model's Hub id; `push_space` uploads them.
"""

from __future__ import annotations

import os
import tempfile
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from llm_fusion_fec.inference.predict import INPUT_SUFFIXES, label_file

DEMO_EXTRA = "pip install 'llm-fusion-fec[demo]'"
"""What to install for the demo (Gradio)."""
DEFAULT_GRADIO = "5.0"  # the oldest Gradio the app is written for: the Space's sdk_version where Gradio is not here
ELEMENTS = ("text", "classify", "top-k", "threshold", "scores", "message", "upload", "label-file", "labelled")
"""The `elem_id`s of the page's parts, which a browser test finds them by."""


def import_gradio():
    try:
        import gradio
    except ImportError:
        raise ValueError(f"The demo needs Gradio, which is not installed: {DEMO_EXTRA}") from None
    return gradio


def card_examples(model: str | os.PathLike, config) -> list[str]:
    """The example texts of the model card's widget (`widget: - text: ...`), or the package's defaults."""
    from huggingface_hub import ModelCard

    from llm_fusion_fec.publishing.card import DEFAULT_EXAMPLES

    folder = Path(model)
    try:
        card = ModelCard.load(folder / "README.md" if folder.is_dir() else str(model))
        widget = card.data.to_dict().get("widget") or []
    except Exception:  # no card, offline, or a card without a widget: the demo still works
        widget = []
    texts = [entry["text"] for entry in widget if isinstance(entry, dict) and isinstance(entry.get("text"), str)]
    return texts or list(DEFAULT_EXAMPLES)


def error_line(error: BaseException) -> str:
    """The pipeline's error as the page shows it: its first line, with the lone text's position left out."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    return text.replace("Text at position 0 is", "The text is", 1)


class Demo:
    """What the page's buttons run: the pipeline's answer for a text, the labelled file for an upload.

    Args:
        pipeline (`FECPipeline`): The model's pipeline.
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
        parameters = {"threshold": float(threshold)} if self.multi_label else {}
        suffix = ".jsonl" if source.suffix == ".jsonl" else ".csv"
        output = Path(tempfile.mkdtemp(dir=self.outputs)) / f"{source.stem}.predictions{suffix}"
        try:
            result = label_file(lambda: self.pipeline, source, output, **parameters)
        except (TypeError, ValueError) as error:
            return None, f"Error: {error_line(error)}"
        if result.unlabelled:
            first = result.unlabelled[0]
            return str(
                output
            ), f"{result.problems()}: line {first.line}: {first.problem.rstrip('.')}. They have an empty label."
        return str(output), f"Labelled {len(result.rows)} rows."

    def blocks(self):
        """The page, as a `gradio.Blocks`."""
        gr = import_gradio()
        name = self.config.name_or_path or "LLM-fusion emotion classifier"
        labels = self.config.num_labels
        with gr.Blocks(title=f"{Path(name).name}: emotions") as blocks:
            gr.Markdown(
                f"# {Path(name).name}\n{labels} emotions, {'several per text' if self.multi_label else 'one per text'}"
                ": a small fusion head over frozen LLM and encoder features ([llm-fusion-fec]"
                "(https://pypi.org/project/llm-fusion-fec/))."
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


def load_demo_pipeline(model: str | os.PathLike, backbone_paths: dict[str, str] | None = None, device=None):
    """The model's `FECPipeline`, from this package's code, on the GPU where there is one."""
    import torch

    from llm_fusion_fec.inference.loading import load_model
    from pipeline_fec import FECPipeline

    if device is None:
        device = 0 if torch.cuda.is_available() else "cpu"
    return FECPipeline(model=load_model(model), backbone_paths=backbone_paths, device=device)


def build_demo(model: str | os.PathLike, backbone_paths: dict[str, str] | None = None, device=None):
    """The Gradio app of `model` (a Hub id or a model folder), ready to `launch()`."""
    import_gradio()
    pipeline = load_demo_pipeline(model, backbone_paths, device)
    return Demo(pipeline, card_examples(model, pipeline.model.config)).blocks()


# ---- the Space's files ----

APP = '''"""A demo of {model}, written by `fec space`: type a text or upload a file of texts, read the emotions."""

from llm_fusion_fec.serving.space import build_demo

demo = build_demo({model!r}{paths})

if __name__ == "__main__":
    demo.launch()
'''


def package_requirement() -> str:
    """This package, as the Space's requirements.txt installs it: the version that wrote the Space, with Gradio."""
    try:
        return f"llm-fusion-fec[demo]=={version('llm-fusion-fec')}"
    except PackageNotFoundError:  # run from a checkout that was never installed
        return "llm-fusion-fec[demo]"


def space_readme(model: str, title: str, local: bool) -> str:
    """The Space's README: its YAML (Gradio SDK, app file, the model it shows) and a line on what it is."""
    try:
        gradio_version = version("gradio")
    except PackageNotFoundError:
        gradio_version = DEFAULT_GRADIO
    models = "" if local else f"models:\n  - {model}\n"
    return (
        f"---\ntitle: {title}\nemoji: 🎭\ncolorFrom: indigo\ncolorTo: pink\nsdk: gradio\n"
        f"sdk_version: {gradio_version}\napp_file: app.py\n{models}pinned: false\n---\n\n"
        f"# {title}\n\nFine-grained emotion classification with [{model}]"
        f"({'https://huggingface.co/' + model if not local else model}): type a text, or upload a CSV, JSONL or TXT "
        "file of texts and download it labelled. Written by `fec space` of "
        "[llm-fusion-fec](https://pypi.org/project/llm-fusion-fec/).\n\n"
        "A backbone in a gated repository (e.g. Llama 2) needs an `HF_TOKEN` secret with access to it, in the "
        "Space's settings.\n"
    )


def write_space(
    model: str,
    output_dir: str | os.PathLike,
    backbone_paths: dict[str, str] | None = None,
    requirement: str | None = None,
    title: str | None = None,
) -> Path:
    """Write a Gradio Space for `model` into `output_dir`: `app.py`, `requirements.txt` and `README.md`.

    `model` is a Hub id (what a Space loads) or, for a demo on this machine, a model folder. `backbone_paths`
    (local copies of backbones) also make it a local demo. `requirement` is how the Space installs this package
    (default: this version from PyPI, `package_requirement()`); e.g. a `git+https://...` URL.
    """
    from llm_fusion_fec.publishing.paths import is_local_model

    local = is_local_model(model)
    if local:
        model = str(Path(model).expanduser().resolve())
        if not (Path(model) / "config.json").is_file():
            raise ValueError(f"{model} is not a model folder (no config.json) nor a Hub model id.")
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    paths = f", backbone_paths={backbone_paths!r}" if backbone_paths else ""
    (output_dir / "app.py").write_text(APP.format(model=model, paths=paths))
    (output_dir / "requirements.txt").write_text((requirement or package_requirement()) + "\n")
    title = title or f"{Path(model).name} emotions"
    (output_dir / "README.md").write_text(space_readme(model, title, local or bool(backbone_paths)))
    return output_dir


def push_space(output_dir: str | os.PathLike, space_id: str, private: bool = False, token: str | None = None) -> str:
    """Create (or update) the Gradio Space `space_id` with the files of `output_dir`; its URL."""
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
    api.upload_folder(repo_id=space_id, folder_path=str(output_dir), repo_type="space", commit_message="fec space")
    return f"https://huggingface.co/spaces/{space_id}"
