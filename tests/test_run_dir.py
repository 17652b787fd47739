"""One run per output folder: writable-folder checks before anything loads, the lock, refusing a
fresh start over an old run, overwrite, leftovers of a killed run, the user's umask."""

from __future__ import annotations

import contextlib
import io
import json
import os
import socket
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_run
from medslm import trainer
from medslm.cli import UserError
from medslm.config import ConfigError, parse_config
from medslm.distributed import DistState
from medslm.run_dir import LOCK_NAME, acquire_lock, open_run_dir
from medslm.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
FAST = tiny_run("--train.micro_batch_size=2", "--train.grad_accum=1", "--train.warmup_steps=1")
ONE = DistState(0, 1, 0, torch.device("cpu"), None)


def _cfg(out: Path, *extra: str) -> TrainConfig:
    return parse_config(TrainConfig, [*FAST, f"--train.output_dir={out}", *extra])


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "train.py", *FAST, *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr[-2000:]
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


@pytest.fixture
def no_loading(monkeypatch):
    """Fail the test if the run gets as far as loading data or a model."""

    def refuse(*_a, **_k):
        raise AssertionError("data or model loaded before the output folder was checked")

    monkeypatch.setattr(trainer, "build", refuse)


def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


# ---------------------------------------------------------------------------------------------
# A real run, and what it left (shared by the tests below: training is the slow part)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def first_run(tmp_path_factory):
    """A two-step run under umask 022 in a folder with a stale lock (a dead pid of this host);
    while it trains, a second train.py on the same folder is started."""
    out = tmp_path_factory.mktemp("runs") / "run"
    out.mkdir()
    stale = {"pid": _dead_pid(), "host": socket.gethostname(), "since": "earlier", "proc_start": None}
    (out / LOCK_NAME).write_text(json.dumps(stale))
    seen: dict = {}
    build = trainer.build

    def build_and_probe(cfg, dist):
        seen["lock"] = json.loads((out / LOCK_NAME).read_text())
        seen["second"] = _cli([f"--train.output_dir={out}", "--train.max_steps=1"])
        return build(cfg, dist)

    trainer.build = build_and_probe
    old_mask = os.umask(0o022)
    printed = io.StringIO()
    try:
        with contextlib.redirect_stdout(printed):
            trainer.train(_cfg(out, "--train.max_steps=2", "--train.save_every=1"))
    finally:
        os.umask(old_mask)
        trainer.build = build
    return {"out": out, "stale": stale, "seen": seen, "printed": printed.getvalue()}


def test_a_live_run_holds_the_lock_and_a_second_process_exits_2_naming_it(first_run):
    seen = first_run["seen"]
    assert seen["lock"]["pid"] == os.getpid() and seen["lock"]["host"] == socket.gethostname()
    line = _one_line_error(seen["second"])
    assert f"is in use by pid {os.getpid()} on host {socket.gethostname()}" in line
    assert not (first_run["out"] / LOCK_NAME).exists()  # released at the end


def test_a_stale_lock_of_a_dead_process_is_taken_over_with_a_notice(first_run):
    assert f"taking over the stale lock of pid {first_run['stale']['pid']}" in first_run["printed"]
    assert (first_run["out"] / "adapter" / "adapter_model.safetensors").is_file()


def test_run_folders_are_created_with_the_users_umask(first_run):
    out = first_run["out"]
    folders = [out / "checkpoints", out / "checkpoints" / "step-00000002", out / "adapter", out / "tb"]
    files = [*(out / "checkpoints" / "step-00000002").iterdir(), *(out / "adapter").iterdir(), out / "metrics.jsonl"]
    for p in folders:
        assert stat.S_IMODE(p.stat().st_mode) == 0o755, p
    for p in files:
        assert stat.S_IMODE(p.stat().st_mode) == 0o644, p


def test_a_fresh_start_over_an_old_run_is_refused_and_overwrite_starts_over(first_run, tmp_path, no_loading, monkeypatch):
    import shutil

    out = tmp_path / "run"
    shutil.copytree(first_run["out"], out)
    with pytest.raises(UserError, match=r"already holds a run .*--train.resume=auto.*--train.overwrite=true"):
        trainer.train(_cfg(out, "--train.max_steps=1"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001", "step-00000002"]

    # overwrite: the old run's files are gone before anything loads, the new run writes alone
    monkeypatch.undo()
    trainer.train(_cfg(out, "--train.max_steps=1", "--train.overwrite=true", "--train.save_every=1"))
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-00000001"]
    assert [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()] == [1, 1]  # train + val
    with pytest.raises(ConfigError, match="choose one"):
        _cfg(out, "--train.overwrite=true", "--train.resume=auto").validate()


# ---------------------------------------------------------------------------------------------
# Checks that need no training
# ---------------------------------------------------------------------------------------------


def test_an_empty_output_dir_is_refused():
    with pytest.raises(ConfigError, match="train.output_dir is empty"):
        parse_config(TrainConfig, ["--train.output_dir="])


def _read_only_dir(tmp_path: Path) -> Path:
    """A folder this process cannot write in (root ignores permission bits: /sys refuses it)."""
    if os.geteuid() == 0:
        if not Path("/sys").is_dir():
            pytest.skip("running as root without /sys: no read-only folder to try")
        return Path("/sys") / "medslm-run"
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    return ro / "run"


def test_unwritable_output_folders_fail_before_anything_loads(tmp_path, no_loading):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    with pytest.raises(UserError, match="a file is where the folder should be"):
        trainer.train(_cfg(a_file))
    with pytest.raises(UserError, match=r"a file is where the folder should be \(.*taken is a file\)"):
        trainer.train(_cfg(a_file / "run"))
    with pytest.raises(UserError, match="cannot (create the folder|write in)"):
        trainer.train(_cfg(_read_only_dir(tmp_path)))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "checkpoints").write_text("")
    with pytest.raises(UserError, match="checkpoints is a file"):
        trainer.train(_cfg(tmp_path / "run", "--train.resume=auto"))


def test_a_file_in_place_of_the_output_dir_is_one_line_and_exit_2(tmp_path):
    (tmp_path / "taken").write_text("")
    line = _one_line_error(_cli([f"--train.output_dir={tmp_path / 'taken'}"]))
    assert "a file is where the folder should be" in line


def test_a_lock_held_by_a_live_process_or_another_host_is_refused(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    held = acquire_lock(out)
    try:
        with pytest.raises(UserError, match=f"in use by pid {os.getpid()} on host"):
            open_run_dir(_cfg(out).train, ONE)
    finally:
        held.release()
    (out / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere-node-7", "since": "t"}))
    with pytest.raises(UserError, match=r"locked by pid 1 on host elsewhere-node-7 .*if that run has ended, delete"):
        open_run_dir(_cfg(out).train, ONE)
    (out / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "since": "t"}))
    lock = open_run_dir(_cfg(out).train, ONE)
    assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


def test_leftovers_of_a_killed_run_are_removed_at_start(tmp_path, capsys):
    out = tmp_path / "run"
    ck = out / "checkpoints"
    good = ck / "step-00000002"
    good.mkdir(parents=True)
    for name in ("adapter.safetensors", "config.yaml", "state.pt"):
        (good / name).write_text("x")
    half = ck / "step-00000001"  # a prune killed half-way
    half.mkdir()
    (half / "adapter.safetensors").write_text("x")
    (ck / ".tmp-00000003-123-abcd").mkdir()  # a checkpoint being written when the run died
    (ck / ".tmp-pruned-step-00000000").mkdir()
    (out / ".tmp-adapter-123-abcd").mkdir()  # the final adapter being written
    lock = open_run_dir(_cfg(out, "--train.resume=auto").train, ONE)
    lock.release()
    assert sorted(p.name for p in ck.iterdir()) == ["step-00000002"]
    assert not (out / ".tmp-adapter-123-abcd").exists()
    assert "removed what a killed run left behind" in capsys.readouterr().out
