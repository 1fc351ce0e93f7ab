"""Train the fusion head on saved features: `python train_fusion.py ...` is `fec train ...`.

python train_fusion.py                         # features/ED -> outputs/llm-fusion-ed
python train_fusion.py --seeds 5 --ensemble    # the paper's 5 seeds, their ensemble saved
"""

import sys

from llm_fusion_fec.commands.fec import run

if __name__ == "__main__":
    sys.exit(run("train", sys.argv[1:]))
