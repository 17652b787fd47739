"""The paper's LoRA rank x alpha grid under Ray Tune: r in 8/16/32 x alpha in 32/64/128, one
train.py run + evaluation per trial.

    python sweeps/grid.py                                   # tiny embedded config, local Ray
    python sweeps/grid.py --ranks 8,16 --alphas 32 --train.max_steps=20 --out runs/sweep-grid
    python sweeps/grid.py --config configs/medgemma-4b.yaml --data.medqa=DIR --data.kormedmcqa=DIR --address auto --gpus-per-trial 1

Options: --config FILE (default configs/tiny.yaml), --ranks LIST, --alphas LIST, --out DIR
(default runs/sweep-grid), --address auto|ray://HOST:PORT (default: start Ray here),
--cpus-per-trial N (1), --gpus-per-trial N (0; N > 1: each trial is an N-process torchrun job,
one per GPU), --procs-per-trial N (processes per trial without GPUs: gloo), --retries N (1: a crashed trial is retried this
often, resuming from its checkpoint), --domain-rules FILE (topic rules for the evaluations), and
--section.key=value overrides for every trial's TrainConfig. Writes OUT/<trial>/ (e.g.
OUT/r16-a64: a train.py run with tb/, eval/ and trial.json), OUT/results.json, OUT/results.md and
Ray's own files in OUT/ray. Rerunning the same command into the same OUT skips finished trials and
resumes interrupted ones from their checkpoints. Exit 2 on bad options, 1 if any trial failed or
was interrupted. TensorBoard: tensorboard --logdir OUT.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from medslm.sweep import SweepConfig, cli_main, run_sweep  # noqa: E402

DEFAULT_OUT = "runs/sweep-grid"


def main(cfg: SweepConfig) -> list[dict]:
    cfg.kind = "grid"
    return run_sweep(cfg)


if __name__ == "__main__":
    raise SystemExit(cli_main("grid", sys.argv[1:], __doc__, DEFAULT_OUT))
