"""Print the shell commands of a README section's fenced bash blocks, each command ended by a NUL byte, so that
`.ci/run` runs exactly what a newcomer copies from the README.

    python .ci/readme_commands.py SECTION [BLOCK]

SECTION is a `##` heading's text; BLOCK (1-based) picks one of its bash blocks (default: all). A command spans
several lines where a line ends with a backslash or leaves a quote open.
"""

import re
import sys
from pathlib import Path

section, *block = sys.argv[1:]
readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
match = re.search(rf"^## {re.escape(section)}\n(.*?)(?=^## |\Z)", readme, flags=re.M | re.S)
if match is None:
    sys.exit(f"README.md has no section '## {section}'")
blocks = re.findall(r"^```bash\n(.*?)^```", match[1], flags=re.M | re.S)
if block:
    blocks = [blocks[int(block[0]) - 1]]
for text in blocks:
    command = ""
    for line in text.splitlines():
        command += line + "\n"
        if line.endswith("\\") or command.count("'") % 2:
            continue
        if command.strip():
            sys.stdout.write(command.strip() + "\0")
        command = ""
