"""Run a Space's `app.py` as the Space runs it (`python app.py`: its folder first on the path, `__main__`), with
Gradio's `launch` replaced by a stand-in that keeps the page, then answer one text with the page's Classify function.

    python space_answer.py SPACE_DIR TEXT UPLOAD

Prints, as JSON, the answer (scores and the page's line), the file UPLOAD labelled by the page's file function (its
text and the page's line), the module of the model's code, and every module of this project that was imported (the
Space must import none).
"""

import json
import runpy
import sys
from pathlib import Path

import gradio

PROJECT = ("llm_fusion_fec", "configuration_llm_fusion", "modeling_llm_fusion", "pipeline_fec")

folder, text, upload = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
pages = []
gradio.Blocks.launch = lambda self, *args, **kwargs: pages.append(self)
sys.path.insert(0, str(folder))
runpy.run_path(str(folder / "app.py"), run_name="__main__")
(page,) = pages
functions = {function.api_name: function.fn for function in page.fns.values()}
scores, message = functions["classify"](text, 3, None)
labelled, upload_message = functions["label_upload"](upload, None)
print(
    json.dumps(
        {
            "scores": scores,
            "message": message,
            "labelled": Path(labelled).read_text(),
            "upload_message": upload_message,
            "model_module": type(functions["classify"].__self__.pipeline.model).__module__,
            "project_modules": sorted(name for name in sys.modules if name.split(".")[0] in PROJECT),
        }
    )
)
