"""launch/multi_node.sh as 2 "nodes" x 1 process on this machine (c10d rendezvous, gloo), and
launch/slurm.sbatch through stand-ins for srun/scontrol: both equal one process with twice the
gradient accumulation, so the two nodes really formed one world."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ARGS = ["configs/tiny.yaml", "--data.max_seq_len=384", "--train.micro_batch_size=2", "--train.max_steps=2",
        "--train.warmup_steps=1", "--train.save_every=0", "--lora.dropout=0.0", "--train.progress=false",
        "--model.compute_dtype=float32"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _losses(run: Path) -> dict[int, float]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in recs if r["kind"] == "train"}


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    return {**env, "PYTHON": sys.executable, "OMP_NUM_THREADS": "1", "NPROC_PER_NODE": "1", **extra}


@pytest.fixture(scope="module")
def one_process(tmp_path_factory) -> dict[int, float]:
    out = tmp_path_factory.mktemp("one") / "run"
    res = subprocess.run([sys.executable, "train.py", "--config", *ARGS, "--train.grad_accum=2", f"--train.output_dir={out}"],
                         cwd=REPO, env=_env(), capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-2000:]
    return _losses(out)


def test_multi_node_sh_two_nodes_of_one_process(tmp_path, one_process):
    port = str(_free_port())
    out = tmp_path / "run"
    cmd = ["bash", "launch/multi_node.sh", *ARGS, "--train.grad_accum=1", f"--train.output_dir={out}"]
    common = dict(NNODES="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port, LOG_DIR=str(tmp_path / "logs"))
    nodes = [subprocess.Popen(cmd, cwd=REPO, env=_env(NODE_RANK=str(r), **common), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for r in (1, 0)]  # the non-host node first: it waits for node 0's rendezvous
    outs = [n.communicate(timeout=900) for n in nodes]
    for n, (o, e) in zip(nodes, outs):
        assert n.returncode == 0, e[-3000:]
    assert sum(o.count("done: 2 steps") for o, _ in outs) == 1  # one world, one rank 0
    assert _losses(out) == pytest.approx(one_process, rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["node0", "node1"]


def test_slurm_sbatch_runs_multi_node_on_each_node(tmp_path, one_process):
    """srun/scontrol stand-ins: srun runs its command once per node with SLURM_NODEID set."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\necho 127.0.0.1\necho 127.0.0.2\n")
    (bin_dir / "srun").write_text(
        "#!/usr/bin/env bash\nwhile [[ $1 == --* ]]; do shift; done\npids=()\n"
        "for ((i=SLURM_NNODES-1; i>=0; i--)); do SLURM_NODEID=$i \"$@\" & pids+=($!); done\n"
        "rc=0; for p in \"${pids[@]}\"; do wait $p || rc=$?; done; exit $rc\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    out = tmp_path / "run"
    env = _env(PATH=f"{bin_dir}:{os.environ['PATH']}", SLURM_NNODES="2", SLURM_JOB_NODELIST="node[1-2]", SLURM_JOB_ID="4242",
               SLURM_SUBMIT_DIR=str(REPO), SLURM_CPUS_PER_TASK="1", MASTER_PORT=str(_free_port()), LOG_DIR=str(tmp_path / "logs"))
    res = subprocess.run(["bash", str(REPO / "launch" / "slurm.sbatch"), *ARGS, "--train.grad_accum=1", f"--train.output_dir={out}"],
                         cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "job 4242, 2 nodes x 1 processes, rendezvous 127.0.0.1:" in res.stdout
    assert res.stdout.count("done: 2 steps") == 1
    assert _losses(out) == pytest.approx(one_process, rel=1e-4)
    assert sorted(p.name for p in (tmp_path / "logs").iterdir()) == ["node0", "node1"]
