"""Run a Ray Data snippet (docs/using.md's recipe) as it is written, in a folder, on a local Ray instance.

    python ray_recipe.py SNIPPET_FILE FOLDER NUM_CPUS

The snippet's relative paths are read from FOLDER (Ray's workers start in the folder the instance was started in).
Prints, as JSON: the seconds the snippet took.
"""

import json
import os
import sys
import time
from pathlib import Path

import ray

snippet_file, folder, num_cpus = sys.argv[1:]
os.chdir(folder)
ray.init(num_cpus=int(num_cpus), include_dashboard=False, log_to_driver=False)
try:
    start = time.perf_counter()
    exec(compile(Path(snippet_file).read_text(), snippet_file, "exec"), {"__name__": "__main__"})
    seconds = time.perf_counter() - start
finally:
    ray.shutdown()
print(json.dumps({"seconds": seconds}))
