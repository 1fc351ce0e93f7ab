"""`pip install .` into a fresh virtual environment, with build isolation on as a user has it: the package, the three
Hub modules and the `fec` command are installed, and nothing else lands at the top of site-packages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tomllib
from pathlib import Path

import pytest

from helpers import REPO, run_program

PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
HUB_MODULES = ["configuration_llm_fusion", "modeling_llm_fusion", "pipeline_fec"]


def run(command: list, cwd: Path) -> subprocess.CompletedProcess:
    """Run outside the repository and without its folders on the path: only the installed copy can be imported."""
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}
    return subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh virtual environment (seeing this Python's packages, so that torch and the rest need no download) with
    the project installed from a copy of its files (those git does not ignore). The build runs isolated: pip fetches
    the build backend that pyproject.toml names, whatever setuptools this Python has."""
    root = tmp_path_factory.mktemp("packaging")
    source = root / "source"
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    for name in files:
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(REPO / name, source / name)
    environment = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", environment], check=True)
    python = environment / "bin" / "python"
    # This Python's packages (torch, transformers, ...) without its copy of this project: a path file in the new
    # environment's site-packages names the folder they are in. (`--system-site-packages` would give the base
    # interpreter's instead, which inside a virtual environment are not these.)
    new_purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], root).stdout
    (Path(new_purelib.strip()) / "this_python_packages.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    result = run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-cache-dir", source], root)
    assert result.returncode == 0, result.stderr[-3000:]
    return environment


def test_install_gives_the_package_the_hub_modules_and_the_command(venv):
    installed = run_program("installed_inventory.py", python=venv / "bin" / "python")
    # Nothing generic (predict, metrics, templates, fusion_*, fec_*) at the top of site-packages.
    assert installed["top_level"] == sorted(["llm_fusion_fec", *HUB_MODULES])
    assert all(origin.startswith(installed["purelib"]) for origin in installed["modules"].values())
    assert installed["commands"] == {"fec": "llm_fusion_fec.commands.fec:main"} == PYPROJECT["project"]["scripts"]
    assert not installed["torch_imported"]
    assert installed["metric"] and installed["card_template"]  # package data, read from beside the code

    result = run([venv / "bin" / "fec", "--help"], venv)
    assert result.returncode == 0 and "usage: fec" in result.stdout
    assert all(command in result.stdout for command in ("extract", "train", "predict"))
    result = run([venv / "bin" / "fec", "predict", "--help"], venv)
    assert result.returncode == 0 and "usage: fec predict" in result.stdout


def test_a_usage_error_exits_2_and_a_refused_input_1(venv):
    unknown = run([venv / "bin" / "fec", "nope"], venv)
    assert unknown.returncode == 2 and "invalid choice: 'nope'" in unknown.stderr
    bad_flag = run([venv / "bin" / "fec", "extract", "--no-such-flag"], venv)
    assert bad_flag.returncode == 2 and "--no-such-flag" in bad_flag.stderr


@pytest.mark.real  # slow rather than real: each command imports torch, transformers and datasets (~30 s on 2 cores)
@pytest.mark.parametrize(("command", "flag"), [("extract", "--quantization"), ("train", "--seeds")])
def test_installed_commands_answer_help(venv, command, flag):
    result = run([venv / "bin" / "fec", command, "--help"], venv)
    assert result.returncode == 0, result.stderr[-3000:]
    assert flag in result.stdout


@pytest.mark.real  # slow, as above
def test_installed_package_loads_its_metric(venv):
    computed = run_program("installed_metric.py", python=venv / "bin" / "python")
    assert computed == ["accuracy", "macro_f1", "weighted_f1"]


@pytest.mark.real  # slow: imports datasets and torch
def test_installed_command_refuses_an_unknown_data_set_with_exit_1(venv):
    result = run([venv / "bin" / "fec", "extract", "--dataset", "no_such_set"], venv)
    assert result.returncode == 1 and result.stderr.startswith("error: ") and "no_such_set" in result.stderr


def test_failing_command_exits_1_with_the_error(capsys, monkeypatch):
    import llm_fusion_fec.commands.extract as extract_command
    from llm_fusion_fec.commands.fec import run as run_command

    def main(argv, prog):
        raise ValueError("Unknown data set 'nope'")

    monkeypatch.setattr(extract_command, "main", main)
    assert run_command("extract", []) == 1
    assert capsys.readouterr().err == "error: Unknown data set 'nope'\n"
    monkeypatch.setattr(extract_command, "main", lambda argv, prog: {"results": 1})
    assert run_command("extract", []) == 0  # a command's returned results are not an exit status
