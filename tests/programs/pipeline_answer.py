"""Answer one text with the `"text-classification"` pipeline of a saved model folder, built with `trust_remote_code`
(the repository's modules cannot be imported here).

    python pipeline_answer.py '{"model": DIR, "backbone_paths": {NAME: DIR}, "text": TEXT}'

Prints, as JSON, the class of the pipeline's model and the answer.
"""

import json
import sys

from transformers import pipeline

inputs = json.loads(sys.argv[1])
classifier = pipeline(
    "text-classification", model=inputs["model"], trust_remote_code=True, backbone_paths=inputs["backbone_paths"]
)
print(json.dumps({"class": type(classifier.model).__name__, "answer": classifier(inputs["text"])}))
