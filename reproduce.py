"""The paper's Tables 5-7 and Fig. 2 in one command (what launch/reproduce_paper.sh runs).

    python reproduce.py --smoke                        # the embedded default on a CPU: mechanics only
    python reproduce.py --model /models/medgemma-4b-it --medqa /data/medqa/US --kormedmcqa /data/KorMedMCQA

Options: --smoke, --config FILE (default configs/medgemma-4b.yaml; configs/tiny.yaml with
--smoke), --model PATH, --medqa PATH..., --kormedmcqa PATH..., --out DIR (default
runs/reproduce), --nproc N (processes of the FSDP rows; default every visible GPU), --ratios LIST
(the ratio sweep; default the paper's seven, 5:5,10:3 with --smoke), and --section.key=value
overrides for every training. Writes OUT/{pack,table5,sweep,fig2}/ and OUT/REPORT.md beside the
paper's numbers. Rerunning skips what finished. Exit 2 on bad options or a failed step.
"""

from __future__ import annotations

import sys

from medslm.cli import run_cli
from medslm.reproduce import ReproduceConfig, parse_args
from medslm.reproduce import main as reproduce


def main(cfg: ReproduceConfig) -> dict:
    return reproduce(cfg)


if __name__ == "__main__":
    run_cli(lambda: main(parse_args(sys.argv[1:])))
