"""The shape of the code the style guide asks for: the core never imports its command line, no import circle, no
function over 60 lines in the package or the Hub files."""

import ast
from pathlib import Path

from helpers import REPO

HUB_FILES = ["configuration_llm_fusion.py", "modeling_llm_fusion.py", "pipeline_fec.py"]
PACKAGE = REPO / "llm_fusion_fec"


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """The package modules `path` imports, at any depth of its code."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("llm_fusion_fec"):
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("llm_fusion_fec"))
    return found


def test_no_module_outside_commands_imports_the_command_line():
    offenders = {
        module_name(path): sorted(name for name in imports(path) if name.startswith("llm_fusion_fec.commands"))
        for path in PACKAGE.rglob("*.py")
        if "commands" not in path.relative_to(PACKAGE).parts
    }
    assert {module: names for module, names in offenders.items() if names} == {}


def test_the_package_has_no_import_circle():
    graph = {module_name(path): imports(path) for path in PACKAGE.rglob("*.py")}
    graph = {module: {name for name in names if name in graph and name != module} for module, names in graph.items()}

    def circle_from(module: str, path: tuple[str, ...]) -> tuple[str, ...] | None:
        for name in sorted(graph[module]):
            if name in path:
                return (*path[path.index(name) :], name)
            if found := circle_from(name, (*path, name)):
                return found
        return None

    assert {module: circle_from(module, (module,)) for module in graph} == dict.fromkeys(graph)


def test_no_function_is_over_60_lines():
    files = [*PACKAGE.rglob("*.py"), *(REPO / name for name in HUB_FILES)]
    long = [
        f"{path.relative_to(REPO)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)"
        for path in files
        for node in ast.walk(ast.parse(path.read_text()))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno + 1 > 60
    ]
    assert long == []
