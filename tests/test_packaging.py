"""`pip install .` gives working commands: the project's files are installed (and only those), train_fusion finds
its metric beside it, and fec-predict, fec-extract and fec-train answer --help from the installed copy."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from helpers import REPO, run_program

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
COMMANDS = PYPROJECT["project"]["scripts"]


def test_every_module_of_the_repository_root_is_installed():
    # A script that imports a new module (train_fusion -> fusion_trainer) fails once installed if it is not listed.
    assert sorted(path.stem for path in REPO.glob("*.py")) == sorted(PYPROJECT["tool"]["setuptools"]["py-modules"])


def run(command: list[str], cwd: Path) -> subprocess.CompletedProcess:
    """Run outside the repository and without its folders on the path: only the installed copy can be imported."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment (seeing this Python's packages: torch and the rest need no download) with the
    project installed from a copy of the files pyproject.toml names (the build writes into its source folder)."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    source.mkdir()
    setuptools = PYPROJECT["tool"]["setuptools"]
    for name in [f"{module}.py" for module in setuptools["py-modules"]] + ["pyproject.toml", "README.md"]:
        shutil.copy(REPO / name, source / name)
    for package in setuptools["packages"]:
        folder = Path(*package.split("."))
        shutil.copytree(
            REPO / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"), dirs_exist_ok=True
        )
    environment = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", environment], check=True)
    python = environment / "bin" / "python"
    # No build isolation and no dependencies: nothing is downloaded (setuptools and the dependencies are this
    # Python's); what is tested is that the project's own files install and run.
    result = run(
        [python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--no-cache-dir", source], root
    )
    assert result.returncode == 0, result.stderr[-3000:]
    return environment


def test_install_gives_the_modules_the_metric_and_the_commands(venv):
    installed = run_program("installed_inventory.py", python=venv / "bin" / "python")
    assert all(origin.startswith(installed["purelib"]) for origin in installed["modules"].values())
    assert installed["commands"] == COMMANDS
    assert COMMANDS == {"fec-extract": "fec_commands:extract", "fec-train": "fec_commands:train",
                        "fec-predict": "predict:main"}  # fmt: skip
    # train_fusion loads metrics/fec_metrics from beside its own file.
    assert installed["metric"] and not installed["bench"] and not installed["tests"]
    assert installed["card_template"]  # publish_fusion renders the card from templates/ beside its own file

    result = run([venv / "bin" / "fec-predict", "--help"], venv)
    assert result.returncode == 0 and "usage: fec-predict" in result.stdout


@pytest.mark.real  # slow rather than real: each command imports torch, transformers and datasets (~30 s on 2 cores)
@pytest.mark.parametrize(("command", "flag"), [("fec-extract", "--quantization"), ("fec-train", "--seeds")])
def test_installed_scripts_answer_help(venv, command, flag):
    result = run([venv / "bin" / command, "--help"], venv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert flag in result.stdout


@pytest.mark.real  # slow, as above
def test_installed_train_fusion_loads_its_metric(venv):
    computed = run_program("installed_metric.py", python=venv / "bin" / "python")
    assert computed == ["accuracy", "macro_f1", "weighted_f1"]


def test_failing_script_exits_1_with_the_error(capsys):
    import fec_commands

    def main():
        raise ValueError("Unknown data set 'nope'")

    assert fec_commands.run(main) == 1
    assert capsys.readouterr().err == "error: Unknown data set 'nope'\n"
    assert fec_commands.run(lambda: {"results": 1}) == 0  # a script's returned results are not an exit status
