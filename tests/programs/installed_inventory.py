"""What `pip install .` put into the environment whose python runs this: the top-level names the distribution
installed into site-packages, where the package and the Hub modules are imported from, its commands (each entry
point resolved, which must not import torch), and which of its data files are installed.

    ENV/bin/python installed_inventory.py

Prints the inventory as JSON.
"""

import importlib.metadata
import importlib.util
import json
import sys
import sysconfig
from pathlib import Path

distribution = importlib.metadata.distribution("llm-fusion-fec")
top_level = sorted(
    {
        Path(str(file)).parts[0].removesuffix(".py")
        for file in distribution.files
        if not str(file).startswith(("..", "/")) and ".dist-info" not in str(file) and "__pycache__" not in str(file)
    }
)
names = ("llm_fusion_fec", "configuration_llm_fusion", "modeling_llm_fusion", "pipeline_fec")
modules = {name: importlib.util.find_spec(name).origin for name in names}
commands = {}
for entry in distribution.entry_points:
    if entry.group == "console_scripts":
        commands[entry.name] = entry.value
        entry.load()  # resolves without importing torch: the subcommands import what they need when run
package = Path(modules["llm_fusion_fec"]).parent
print(
    json.dumps(
        {
            "purelib": sysconfig.get_paths()["purelib"],
            "top_level": top_level,
            "modules": modules,
            "commands": commands,
            "torch_imported": "torch" in sys.modules,
            "metric": (package / "evaluation" / "fec_metrics" / "fec_metrics.py").is_file(),
            "card_template": (package / "publishing" / "model_card.md").is_file(),
        }
    )
)
