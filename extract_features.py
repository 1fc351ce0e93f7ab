"""Extract the frozen backbones' features of a data set: `python extract_features.py ...` is `fec extract ...`.

python extract_features.py --dataset ED --preset small --limit 500
accelerate launch extract_features.py --dataset go_emotion     # rows split over processes
"""

import sys

from llm_fusion_fec.commands.fec import run

if __name__ == "__main__":
    sys.exit(run("extract", sys.argv[1:]))
