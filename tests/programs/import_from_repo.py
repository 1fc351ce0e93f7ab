"""Import modules from the repository root as its scripts do (`python train_fusion.py`: the root first on
`sys.path`, the modules not a package, so their relative imports fall back to absolute ones).

    python import_from_repo.py REPO MODULE [MODULE ...]

Prints, as JSON, the file each module was imported from.
"""

import importlib
import json
import sys

repo, *modules = sys.argv[1:]
sys.path.insert(0, repo)
print(json.dumps({name: importlib.import_module(name).__file__ for name in modules}))
