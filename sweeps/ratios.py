"""The paper's EN:KO ratio experiments under Ray Tune: 5:5, 10:3, 7:3, 8:2, 4:6, 3:7, 2:8, one
train.py run + evaluation per ratio (LoRA settings from the config).

    python sweeps/ratios.py                                 # tiny embedded config, local Ray
    python sweeps/ratios.py --ratios 5:5,10:3 --train.max_steps=20 --out runs/sweep-ratios
    python sweeps/ratios.py --config configs/medgemma-4b.yaml --address auto --gpus-per-trial 1

Options: --config FILE (default configs/tiny.yaml), --ratios LIST, --out DIR (default
runs/sweep-ratios), --address auto|ray://HOST:PORT (default: start Ray here), --cpus-per-trial N
(1), --gpus-per-trial N (0; N > 1: each trial is an N-process torchrun job, one per GPU),
--procs-per-trial N (processes per trial without GPUs: gloo), and --section.key=value overrides
for every trial's TrainConfig.
Writes OUT/<trial>/ (e.g. OUT/ratio-10-3: a train.py run with tb/ and eval/), OUT/results.json,
OUT/results.md and Ray's own files in OUT/ray. Exit 2 on bad options, 1 if any trial failed.
Compare two mixes afterwards: python evaluate.py compare OUT/ratio-5-5/eval OUT/ratio-10-3/eval
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medslm.sweep import SweepConfig, cli_main, run_sweep  # noqa: E402

DEFAULT_OUT = "runs/sweep-ratios"


def main(cfg: SweepConfig) -> list[dict]:
    cfg.kind = "ratios"
    return run_sweep(cfg)


if __name__ == "__main__":
    raise SystemExit(cli_main("ratios", sys.argv[1:], __doc__, DEFAULT_OUT))
