"""Checkpoints and resume: nothing is unpickled but tensors and plain values, a damaged checkpoint
is skipped (auto) or refused (explicit), the scheduler and optimizer continue exactly, keys that
change the optimizer's steps are checked, another world size resumes with the same losses."""

from __future__ import annotations

import builtins
import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_run
from medslm import trainer
from medslm.checkpoint import CheckpointError, UnsafeCheckpointError, load_checkpoint, save_checkpoint
from medslm.cli import UserError
from medslm.config import parse_config
from medslm.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
# dropout 0: a resumed run and an uninterrupted one, on any number of ranks, take the same steps
COMMON = tiny_run("--train.micro_batch_size=2", "--train.warmup_steps=2", "--train.max_steps=4", "--lora.dropout=0.0")


def _cfg(out: Path, *extra: str) -> TrainConfig:
    return parse_config(TrainConfig, [*COMMON, "--train.grad_accum=2", f"--train.output_dir={out}", *extra])


def _records(run: Path) -> dict[int, dict]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r for r in recs if r["kind"] == "train"}


def _same_steps(run: Path, ref: Path, steps: list[int], rel: float = 1e-5) -> None:
    a, b = _records(run), _records(ref)
    for step in steps:
        assert a[step]["loss"] == pytest.approx(b[step]["loss"], rel=rel), step
        assert a[step]["lr"] == pytest.approx(b[step]["lr"], rel=1e-9), step


def _cli(args: list[str], nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "train.py", *COMMON, *args]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train.py", *COMMON, *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def _one_line_error(res: subprocess.CompletedProcess) -> str:
    assert res.returncode == 2, res.stderr[-3000:]
    assert "Traceback" not in res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.startswith("error: ")]
    assert len(lines) == 1, res.stderr
    return lines[0]


def _step(run: Path, n: int) -> Path:
    return run / "checkpoints" / f"step-{n:08d}"


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.fixture(scope="module")
def ref(tmp_path_factory) -> Path:
    """An uninterrupted 4-step run with a checkpoint after every step."""
    out = tmp_path_factory.mktemp("ref") / "run"
    trainer.train(_cfg(out, "--train.save_every=1", "--train.keep_checkpoints=4"))
    assert sorted(_records(out)) == [1, 2, 3, 4]
    return out


def _train_printing(cfg: TrainConfig) -> str:
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        trainer.train(cfg)
    return printed.getvalue()


def test_resume_restores_the_scheduler_two_steps_on(ref, tmp_path):
    """Losses and the logged lr of steps 3 and 4 after resuming from step 2 (with warmup 2, a
    scheduler restarted at 0 logs half the lr at step 3; step 3's loss alone cannot tell)."""
    out = tmp_path / "resumed"
    printed = _train_printing(_cfg(out, f"--train.resume={_step(ref, 2)}", "--train.save_every=2"))
    assert sorted(_records(out)) == [3, 4]
    _same_steps(out, ref, [3, 4])
    assert "keys that may change and did: train.save_every: 1 -> 2" in printed


def test_resume_auto_skips_damaged_checkpoints_and_removes_leftovers(ref, tmp_path):
    """A run killed after step 4's checkpoint, whose last two checkpoints are damaged (a truncated
    state, a truncated config; a truncated adapter: the next test): it resumes from step 2 and
    ends as the uninterrupted run."""
    out = tmp_path / "cut"
    shutil.copytree(ref, out)
    shutil.rmtree(out / "adapter")
    _truncate(_step(out, 4) / "state.pt")
    _truncate(_step(out, 3) / "config.yaml")
    (out / "checkpoints" / ".tmp-00000005-1-abcd").mkdir()  # the kill came while writing step 5
    printed = _train_printing(_cfg(out, "--train.resume=auto", "--train.save_every=1", "--train.keep_checkpoints=4"))
    for n, what in ((4, "state.pt cannot be read"), (3, "config.yaml does not match")):
        assert f"train.resume=auto: skipping step-{n:08d}: " in printed and what in printed, (n, printed)
    assert "resuming from" in printed and "step-00000002 (step 2)" in printed
    assert "removed what a killed run left behind: checkpoints/.tmp-00000005-1-abcd" in printed
    assert sorted(_records(out)) == [1, 2, 3, 4]
    _same_steps(out, ref, [3, 4])
    assert [p.name for p in sorted((out / "checkpoints").iterdir())] == [f"step-{n:08d}" for n in (1, 2, 3, 4)]
    for n in (3, 4):
        load_checkpoint(_step(out, n))  # rewritten whole


def test_an_explicit_damaged_checkpoint_is_one_line_and_exit_2(ref, tmp_path):
    bad = tmp_path / "step-00000002"
    shutil.copytree(_step(ref, 2), bad)
    _truncate(bad / "adapter.safetensors")
    line = _one_line_error(_cli([f"--train.output_dir={tmp_path / 'run'}", f"--train.resume={bad}"]))
    assert "adapter.safetensors does not match the checksum" in line
    (bad / "state.pt").unlink()
    with pytest.raises(CheckpointError, match="missing state.pt"):
        load_checkpoint(bad)


class _WritesAFile:
    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (builtins.open, (str(self.target), "w"))


def test_a_state_file_that_would_run_code_is_refused_and_not_run(ref, tmp_path):
    ckpt = tmp_path / "run" / "checkpoints" / "step-00000002"
    shutil.copytree(_step(ref, 2), ckpt)
    state = torch.load(ckpt / "state.pt", weights_only=True)
    # the payload is real: unpickled the old way (weights_only=False), it creates its file
    probe = tmp_path / "probe.pt"
    torch.save({**state, "extra": _WritesAFile(tmp_path / "proof")}, probe)
    torch.load(probe, weights_only=False)
    assert (tmp_path / "proof").exists()

    target = tmp_path / "pwned"
    torch.save({**state, "extra": _WritesAFile(target)}, ckpt / "state.pt")
    line = _one_line_error(_cli([f"--train.output_dir={tmp_path / 'other'}", f"--train.resume={ckpt}"]))
    assert "could run code: refused" in line
    assert not target.exists()
    with pytest.raises(UnsafeCheckpointError):  # resume=auto does not skip it: it stops
        trainer.train(_cfg(tmp_path / "run", "--train.resume=auto"))
    assert not target.exists()


def test_a_key_that_changes_the_optimizers_steps_is_refused_on_resume(ref, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(ref, out)
    with pytest.raises(UserError, match=r"train.max_grad_norm: checkpoint 1.0 vs now 0.5"):
        trainer.train(_cfg(out, "--train.resume=auto", "--train.max_grad_norm=0.5"))
    assert "max_grad_norm: 1.0" in (out / "config.yaml").read_text()  # the run's record is not rewritten


def test_resuming_a_finished_run_reports_its_losses_not_nan(ref, tmp_path):
    """A finished run resumed takes no step: its result was final loss nan and no validation
    losses (exit 0), which a sweep trial rerun read as its metrics."""
    res = trainer.train(_cfg(tmp_path / "again", f"--train.resume={_step(ref, 4)}"))
    assert res["steps"] == 4 and res["final_loss"] == pytest.approx(_records(ref)[4]["loss"], rel=1e-12)
    logged = [json.loads(x) for x in (ref / "metrics.jsonl").read_text().splitlines()]
    vals = [r["val_loss"] for r in logged if r["kind"] == "val"]
    assert vals and res["val_losses"] == pytest.approx(vals, rel=1e-12)


def test_a_non_finite_validation_loss_stops_the_run_before_its_checkpoint(tmp_path, monkeypatch):
    from medslm.numerics import NonFiniteError

    monkeypatch.setattr(trainer, "validation_loss", lambda s, dist: float("nan"))
    with pytest.raises(NonFiniteError, match="step 4: the validation loss is nan"):
        trainer.train(_cfg(tmp_path / "run", "--train.save_every=2"))
    assert not _step(tmp_path / "run", 4).exists() and _step(tmp_path / "run", 2).exists()


def test_warmup_past_the_last_step_is_said(tmp_path, capsys):
    trainer.train(_cfg(tmp_path / "run", "--train.max_steps=1", "--train.warmup_steps=3"))
    err = capsys.readouterr().err
    assert "train.warmup_steps=3 is not below the run's 1 optimizer steps: the learning rate rises to" in err


def test_resume_on_other_training_rows_under_the_same_config_is_refused(tmp_path):
    """The same paths and config, but a data file changed between the crash and the resume: the run
    went on over fewer rows with a recomputed schedule, exit 0. The checkpoint's row digest refuses it."""
    data = tmp_path / "data"
    shutil.copytree(REPO / "data" / "samples" / "medqa", data / "medqa")
    args = [f"--data.medqa={data / 'medqa' / 'US'}", "--data.kormedmcqa=embedded", "--train.save_every=2", "--train.keep_checkpoints=2"]
    first = tmp_path / "first"
    trainer.train(_cfg(first, *args))
    state = torch.load(_step(first, 2) / "state.pt", weights_only=True)
    assert state["data"]["rows"] > 0 and len(state["data"]["sha256"]) == 64
    train_file = data / "medqa" / "US" / "train.jsonl"
    lines = train_file.read_text().splitlines()
    train_file.write_text("\n".join(lines[: len(lines) // 2]) + "\n")
    out = tmp_path / "resumed"
    with pytest.raises(UserError, match=r"step-00000002 trained on other rows \(\d+ rows, sha256 \w{12}\) than this run has"):
        trainer.train(_cfg(out, *args, f"--train.resume={_step(first, 2)}"))
    assert not (out / "mix_manifest.jsonl").exists()  # refused before anything is written
    train_file.write_text("\n".join(lines) + "\n")  # the data it started on: it resumes
    assert "resuming from" in _train_printing(_cfg(out, *args, f"--train.resume={_step(first, 2)}"))
    _same_steps(out, first, [3, 4])


def test_resume_under_another_world_size_with_the_same_global_batch(ref, tmp_path):
    """1 rank x grad-accum 2 -> 2 ranks (FSDP) x 1 from step 2, then back to 1 rank from step 3."""
    two = tmp_path / "two"
    res = _cli(["--train.grad_accum=1", f"--train.output_dir={two}", f"--train.resume={_step(ref, 2)}", "--train.save_every=1"], nproc=2)
    assert res.returncode == 0, res.stderr[-3000:]
    assert sorted(_records(two)) == [3, 4]
    _same_steps(two, ref, [3, 4], rel=1e-4)
    one = tmp_path / "one"
    printed = _train_printing(_cfg(one, f"--train.resume={_step(two, 3)}"))
    assert "the checkpoint ran on 2 rank(s), this run on 1" in printed
    _same_steps(one, ref, [4], rel=1e-4)


def test_a_checkpoint_is_fsynced_before_the_rename_that_publishes_it(tmp_path, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_rename = os.fsync, Path.rename

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(self, target):
        events.append(("rename", str(target)))
        return real_rename(self, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(Path, "rename", rename)
    adapter = {"a.lora_A.weight": torch.ones(2, 2)}
    state = {"global_step": 3, "optimizer": {}, "scheduler": {}, "rng": [], "world_size": 1, "global_batch_rows": 4}
    final = save_checkpoint(tmp_path, 3, adapter, state, "train: {}\n", keep=2)
    publish = events.index(("rename", str(final)))
    synced_before = {Path(p).name for kind, p in events[:publish] if kind == "fsync"}
    assert {"adapter.safetensors", "config.yaml", "state.pt"} <= synced_before
    assert any(Path(p).name.startswith(".tmp-00000003") for kind, p in events[:publish] if kind == "fsync")  # the folder
    assert ("fsync", str(tmp_path / "checkpoints")) in events[publish:]  # and the rename itself
    load_checkpoint(final)


def test_damaged_checkpoints_past_the_resume_point_do_not_push_out_the_new_ones(tmp_path):
    """After resume=auto skipped a damaged step-4, the resumed run's steps 1 and 2 are the last
    two checkpoints it has: pruning by name alone would delete them and keep the damaged one."""
    damaged = tmp_path / "checkpoints" / "step-00000004"
    damaged.mkdir(parents=True)
    for name in ("adapter.safetensors", "config.yaml", "state.pt"):
        (damaged / name).write_bytes(b"")
    adapter = {"a.lora_A.weight": torch.ones(2, 2)}
    state = {"optimizer": {}, "scheduler": {}, "rng": [], "world_size": 1, "global_batch_rows": 4}
    for step in (1, 2):
        save_checkpoint(tmp_path, step, adapter, {**state, "global_step": step}, "train: {}\n", keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000001", "step-00000002", "step-00000004"]
    save_checkpoint(tmp_path, 4, adapter, {**state, "global_step": 4}, "train: {}\n", keep=2)  # reached: replaced
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == ["step-00000002", "step-00000004"]
    assert load_checkpoint(tmp_path / "checkpoints" / "step-00000004").step == 4


def test_a_prune_killed_half_way_leaves_no_half_checkpoint_in_sight(tmp_path, monkeypatch):
    """Pruning moves a checkpoint out of sight before deleting it; a kill during the delete (here:
    one file removed, then the process dies) leaves only a hidden folder for the next start."""
    from medslm import checkpoint

    class Killed(BaseException):
        pass

    def dies_half_way(path, ignore_errors=False):
        next(p for p in Path(path).iterdir() if p.is_file()).unlink()
        raise Killed

    adapter = {"a.lora_A.weight": torch.ones(2, 2)}
    state = {"optimizer": {}, "scheduler": {}, "rng": [], "world_size": 1, "global_batch_rows": 4}
    for step in (1, 2):
        save_checkpoint(tmp_path, step, adapter, {**state, "global_step": step}, "train: {}\n", keep=2)
    monkeypatch.setattr(checkpoint.shutil, "rmtree", dies_half_way)
    with pytest.raises(Killed):
        save_checkpoint(tmp_path, 3, adapter, {**state, "global_step": 3}, "train: {}\n", keep=2)
    visible = [p for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith(".")]
    assert sorted(p.name for p in visible) == ["step-00000002", "step-00000003"]
    for p in visible:
        load_checkpoint(p)
