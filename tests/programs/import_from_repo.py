"""Import the Hub modules from the repository root as its scripts do (`python train_fusion.py`: the root on
`sys.path`, the modules not a package, so their relative imports fall back to absolute ones).

    PYTHONPATH=REPO python import_from_repo.py MODULE [MODULE ...]

Prints, as JSON, the file each module was imported from.
"""

import importlib
import json
import sys

modules = sys.argv[1:]
print(json.dumps({name: importlib.import_module(name).__file__ for name in modules}))
