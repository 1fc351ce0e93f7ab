"""Answer `--help` with a command of the repository (`MODULE.main(["--help"])`), and see which modules that imported.

    PYTHONPATH=REPO python script_help.py MODULE

Prints, as JSON: the help, the exit code (`null` if `main` returned) and the names of every module imported.
"""

import contextlib
import importlib
import io
import json
import sys

(module,) = sys.argv[1:]
exit_code = None
with contextlib.redirect_stdout(io.StringIO()) as help_text:
    try:
        importlib.import_module(module).main(["--help"])
    except SystemExit as exit:
        exit_code = exit.code
print(json.dumps({"help": help_text.getvalue(), "exit_code": exit_code, "modules": sorted(sys.modules)}))
