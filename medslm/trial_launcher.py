"""Sweep trials of more than one process: each trial is ``torchrun --nproc_per_node N train.py``.

With ``--gpus-per-trial N`` (N > 1), or ``--procs-per-trial N`` on CPUs (gloo), a trial's Ray
worker holds the trial's resources (Ray sets ``CUDA_VISIBLE_DEVICES`` to the N GPUs it placed
the trial on, all on one node) and runs, as a child process,

    python -m torch.distributed.run --standalone --nproc_per_node N train.py --config OUT/trials/<trial>.yaml

i.e. exactly what a user runs by hand for that config: an N-rank FSDP job with its own rendezvous
on a free port (trials on one node do not collide). The trial's resolved config is written to
``OUT/trials/<trial>.yaml`` and torchrun's output to ``OUT/trials/<trial>.log``; the trial's
metrics are read back from its run folder (``metrics.jsonl``, ``packing_report.json``) and the
run is evaluated in the worker, as for one-process trials.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from medslm.config import save_config
from medslm.files import read_json

REPO = Path(__file__).resolve().parents[1]


def torchrun_command(config_file: Path, procs: int) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}",
            str(REPO / "train.py"), "--config", str(config_file)]


def result_of_run(run_dir: Path) -> dict[str, Any]:
    """What ``train.main`` returns, read back from a finished run folder (rank 0's records).

    Strict: the run finished, so a line that does not parse is damage, named by file and line
    (it is not skipped, as a line cut by a kill is when resuming)."""
    path = run_dir / "metrics.jsonl"
    records = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if line.strip():
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as exc:
                raise RuntimeError(f"{path}:line {n}: not valid JSON ({exc.msg}); the finished run's metrics are damaged") from None
    train = [r for r in records if r.get("kind") == "train"]
    if not train:
        raise RuntimeError(f"{path}: no training step was logged")
    report = read_json(run_dir / "packing_report.json")
    return {
        "output_dir": str(run_dir),
        "final_loss": train[-1]["loss"],
        "val_losses": [r["val_loss"] for r in records if r.get("kind") == "val"],
        "steps": train[-1]["step"],
        "peak_mem_gb": max(r.get("peak_mem_gb", 0.0) for r in train),  # already the max over ranks
        "packing_efficiency": report["packing_efficiency"],
    }


def train_torchrun(tc: Any, out: str, procs: int, threads: int) -> dict[str, Any]:
    """Train one trial's config as a ``procs``-rank torchrun job; returns what ``train.main`` returns
    (read back from the run folder). The caller (``sweep.run_trial``) evaluates it, as for one process."""
    from medslm.sweep import TORCHRUN_ENV

    run_dir = Path(tc.train.output_dir)
    trials = Path(out) / "trials"
    config_file = save_config(tc, trials / f"{run_dir.name}.yaml")
    log = trials / f"{run_dir.name}.log"
    env = {k: v for k, v in os.environ.items() if k not in TORCHRUN_ENV}
    env["OMP_NUM_THREADS"] = str(max(1, threads))
    with log.open("w", encoding="utf-8") as f:
        proc = subprocess.run(torchrun_command(config_file, procs), cwd=os.getcwd(), env=env, stdout=f, stderr=subprocess.STDOUT)
    if proc.returncode != 0:
        lines = [ln.strip() for ln in log.read_text(encoding="utf-8", errors="replace").splitlines() if ln.strip()]
        errors = [ln for ln in lines if ln.startswith("error:") or "Error" in ln]
        raise RuntimeError(f"torchrun --nproc_per_node {procs} train.py exited {proc.returncode}: "
                           f"{(errors or lines or ['no output'])[-1]} (full log: {log})")
    return {**result_of_run(run_dir), "procs": procs}
