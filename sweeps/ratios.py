"""The paper's EN:KO ratio experiments under Ray Tune: 5:5, 10:3, 7:3, 8:2, 4:6, 3:7, 2:8, one
train.py run + evaluation per ratio (LoRA settings from the config), the base model evaluated once
on the same items, and a decision report.

    python sweeps/ratios.py                                 # tiny embedded config, local Ray
    python sweeps/ratios.py --ratios 5:5,10:3 --train.max_steps=20 --out runs/sweep-ratios
    python sweeps/ratios.py --config configs/medgemma-4b.yaml --data.medqa=DIR --data.kormedmcqa=DIR --address auto --gpus-per-trial 1
    python sweeps/ratios.py --out runs/sweep-ratios --report-only --reference 5:5

Options: --config FILE (default configs/tiny.yaml), --ratios LIST, --out DIR (default
runs/sweep-ratios), --address auto|ray://HOST:PORT (default: start Ray here), --cpus-per-trial N
(1), --gpus-per-trial N (0; N > 1: each trial is an N-process torchrun job,
one per GPU), --procs-per-trial N (processes per trial without GPUs: gloo), --retries N (1: a crashed trial is retried this often, resuming from
its checkpoint), --domain-rules FILE (topic rules; default medslm/assets/domain_rules.yaml), and
--section.key=value overrides for every trial's TrainConfig.
Decision report: --reference base|RATIO (forgetting against the base model before fine-tuning,
default, or a swept ratio such as 5:5), --weights-education / --weights-clinical /
--weights-legal METRIC=W,... (the uses' objectives; METRIC: medqa, kormedmcqa, subject:NAME,
domain:NAME; defaults medqa=0.7,kormedmcqa=0.3 / medqa=0.5,kormedmcqa=0.5 /
kormedmcqa=0.5,domain:medical_law=0.5), --report-only (rebuild it from finished trials; run nothing).
Writes OUT/<trial>/ (e.g. OUT/ratio-10-3: a train.py run with tb/, eval/ and trial.json; OUT/base:
the base model's eval), OUT/results.{json,md}, OUT/report.md, OUT/tradeoff.png,
OUT/recommendation.json and Ray's own files in OUT/ray. Rerunning the same command into the same
OUT skips finished trials and resumes interrupted ones from their checkpoints; a folder made with
another config is refused. Exit 2 on bad options, 1 if any trial failed or was interrupted.
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
