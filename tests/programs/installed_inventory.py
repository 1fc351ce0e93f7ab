"""What `pip install .` put into the environment whose python runs this: where the project's modules are imported
from, its commands (each entry point resolved, which must not import torch), and which of its data files and
folders are installed.

    ENV/bin/python installed_inventory.py

Prints the inventory as JSON.
"""

import importlib.metadata
import importlib.util
import json
import sysconfig
from pathlib import Path

modules = {name: importlib.util.find_spec(name).origin for name in ("predict", "train_fusion", "pipeline_fec")}
commands = {}
for entry in importlib.metadata.entry_points(group="console_scripts"):
    if entry.name.startswith("fec-"):
        commands[entry.name] = entry.value
        entry.load()  # resolves without importing torch: the commands import their scripts when run
purelib = Path(sysconfig.get_paths()["purelib"])
print(json.dumps({"purelib": str(purelib), "modules": modules, "commands": commands,
                  "metric": (purelib / "metrics" / "fec_metrics" / "fec_metrics.py").is_file(),
                  "card_template": (purelib / "templates" / "model_card.md").is_file(),
                  "bench": (purelib / "bench").exists(), "tests": (purelib / "tests").exists()}))  # fmt: skip
