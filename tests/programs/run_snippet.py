"""Run a code snippet (e.g. a model card's) as it is written, one top-level statement at a time, as a notebook would.

    python run_snippet.py SNIPPET_FILE [NAME ...]

Prints, as JSON: the values of the snippet's expression statements in order (e.g. `classifier(text)`, whose answer a
card's comment describes), and the values of the variables NAME...; tensors are given as their shapes.
"""

import ast
import json
import sys
from pathlib import Path

import torch


def shapes(value):
    """`value` for JSON, with its tensors as their shapes."""
    if isinstance(value, torch.Tensor):
        return list(value.shape)
    if isinstance(value, dict):
        return {key: shapes(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [shapes(item) for item in value]
    return value


snippet_file, *names = sys.argv[1:]
namespace = {"__name__": "__main__"}
expressions = []
for statement in ast.parse(Path(snippet_file).read_text()).body:
    if isinstance(statement, ast.Expr):
        expressions.append(eval(compile(ast.Expression(statement.value), snippet_file, "eval"), namespace))
    else:
        exec(compile(ast.Module([statement], type_ignores=[]), snippet_file, "exec"), namespace)
print(json.dumps({"expressions": shapes(expressions), "names": {name: shapes(namespace[name]) for name in names}}))
