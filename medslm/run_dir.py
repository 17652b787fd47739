"""One run per output folder: checked before anything is loaded, locked while the run is live.

:func:`open_run_dir` runs on rank 0 before any data or model is loaded (other ranks learn the
outcome by broadcast, so every rank stops together):

- ``train.output_dir`` must be a folder this user can write: a file in its place, a read-only
  path or a full disk is one line, exit 2.
- It takes an exclusive lock, ``OUTPUT_DIR/.medslm.lock`` (``flock`` plus the holder's pid, host
  and start time). A second run on the same folder exits 2 naming the holder. A lock left by a
  process of this host that no longer exists is taken over with a printed notice; one from
  another host is refused (its liveness cannot be checked from here).
- A run that does not continue this folder's own checkpoints is refused if the folder already
  holds a run, unless ``train.overwrite=true``, which deletes the folder's contents first.
- Leftovers of a killed run (temporary folders, half-pruned checkpoints) are removed.

Folders and files are created with the user's umask, so a team on shared storage can read them.
"""

from __future__ import annotations

import contextlib
import datetime
import fcntl
import json
import os
import shutil
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from medslm import distributed as D
from medslm.checkpoint import TMP_PREFIX, checkpoint_root, remove_leftovers
from medslm.cli import UserError

LOCK_NAME = ".medslm.lock"
RUN_ENTRIES = ("config.yaml", "metrics.jsonl", "packing_report.json", "checkpoints", "adapter", "tb")


@dataclass
class RunLock:
    path: Path
    fd: int

    def release(self) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()  # before closing: a waiting process then sees a new file, not this one
        os.close(self.fd)


# ---------------------------------------------------------------------------------------------
# The folder
# ---------------------------------------------------------------------------------------------


def check_writable(out: Path) -> None:
    """Create ``out`` if needed and prove a file can be written in it; UserError in one line if not."""
    for p in (out, *out.parents):
        if p.exists() or p.is_symlink():
            if not p.is_dir():
                where = "" if p == out else f" ({p} is a file)"
                raise UserError(f"train.output_dir={out}: a file is where the folder should be{where}")
            break
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"train.output_dir={out}: cannot create the folder: {exc.strerror or exc}") from None
    for sub in ("checkpoints", "adapter"):
        if (out / sub).exists() and not (out / sub).is_dir():
            raise UserError(f"train.output_dir={out}: {out / sub} is a file where the run keeps a folder")
    for folder in (out, checkpoint_root(out)):
        if not folder.is_dir():
            continue
        probe = folder / f"{TMP_PREFIX}probe-{os.getpid()}"
        try:
            fd = os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            try:
                os.write(fd, b"medslm")
            finally:
                os.close(fd)
            probe.unlink()
        except OSError as exc:
            raise UserError(f"train.output_dir={out}: cannot write in {folder}: {exc.strerror or exc}") from None


def run_entries(out: Path) -> list[str]:
    """What of a previous run the folder holds (empty: no run)."""
    return [name for name in RUN_ENTRIES if (out / name).exists()]


def _clear(out: Path, keep: Path) -> int:
    n = 0
    for p in out.iterdir():
        if p == keep:
            continue
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
        n += 1
    return n


# ---------------------------------------------------------------------------------------------
# The lock
# ---------------------------------------------------------------------------------------------


def _proc_start(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), to tell a reused pid apart."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


def _alive(holder: dict[str, Any]) -> bool:
    pid = int(holder.get("pid", 0))
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process
    started = holder.get("proc_start")
    now = _proc_start(pid)
    return not (started and now and started != now)


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process (still starting)"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('since')})"


def _read_holder(fd: int) -> dict[str, Any] | None:
    try:
        raw = os.pread(fd, 4096, 0)
        holder = json.loads(raw.decode("utf-8")) if raw.strip() else None
    except (OSError, ValueError):
        return None
    return holder if isinstance(holder, dict) else None


def acquire_lock(out: Path) -> RunLock:
    """The exclusive lock on ``out``; UserError naming the holder if a live run has it."""
    path = out / LOCK_NAME
    host = socket.gethostname()
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _read_holder(fd)
            os.close(fd)
            raise UserError(
                f"train.output_dir={out} is in use by {_describe(holder)}: wait for that run to end, or choose another "
                "train.output_dir"
            ) from None
        except OSError:
            pass  # no flock on this file system: the recorded pid and host below still guard it
        try:
            same = os.stat(path).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder released and removed the file while we waited on it: try again
    holder = _read_holder(fd)
    if holder and holder.get("pid") != os.getpid():
        if holder.get("host") != host:
            os.close(fd)
            raise UserError(
                f"train.output_dir={out} is locked by {_describe(holder)}, which cannot be checked from {host}: "
                f"if that run has ended, delete {path}"
            )
        if _alive(holder):
            os.close(fd)
            raise UserError(
                f"train.output_dir={out} is in use by {_describe(holder)}: wait for that run to end, or choose another "
                "train.output_dir"
            )
        print(f"train.output_dir={out}: taking over the stale lock of {_describe(holder)}: that process no longer exists")
    me = {
        "pid": os.getpid(),
        "host": host,
        "since": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "proc_start": _proc_start(os.getpid()),
    }
    os.ftruncate(fd, 0)
    os.pwrite(fd, (json.dumps(me) + "\n").encode("utf-8"), 0)
    os.fsync(fd)
    return RunLock(path, fd)


# ---------------------------------------------------------------------------------------------
# Entry point
# ---------------------------------------------------------------------------------------------


def _continues_this_folder(resume: str | None, out: Path) -> bool:
    if resume == "auto":
        return True
    return bool(resume) and Path(resume).resolve().parent == checkpoint_root(out).resolve()


def check_inputs_outside(out: Path, inputs: list[str], overwrite: bool) -> None:
    """The folder a run writes must not be one it reads (a pack, the data, the model), nor hold one
    that train.overwrite=true would delete."""
    for name in inputs:
        path = Path(name).expanduser()
        if not path.exists():
            continue
        rp, ro = path.resolve(), out.resolve()
        if rp == ro:
            raise UserError(f"train.output_dir={out} is an input of this run ({name}): write the run to another folder")
        if overwrite and ro in rp.parents:
            raise UserError(f"train.overwrite=true would delete {name}, an input of this run inside train.output_dir={out}; "
                            "move it out, or write the run to another folder")


def _open(train: Any, inputs: list[str] | None = None) -> RunLock:
    out = Path(train.output_dir).absolute()
    check_inputs_outside(out, inputs or [], train.overwrite)
    check_writable(out)
    lock = acquire_lock(out)
    try:
        held = run_entries(out)
        continuing = _continues_this_folder(train.resume, out)
        if train.overwrite and continuing:
            raise UserError(f"train.overwrite=true would delete the checkpoint train.resume={train.resume} continues from")
        if held and not continuing:
            if not train.overwrite:
                raise UserError(
                    f"train.output_dir={out} already holds a run ({', '.join(held)}): continue it with "
                    "--train.resume=auto, start over with --train.overwrite=true (deletes everything in that folder "
                    "first), or choose another train.output_dir"
                )
            n = _clear(out, keep=lock.path)
            print(f"train.overwrite=true: deleted the previous run in {out} ({n} entries)")
        removed = remove_leftovers(out)
        if removed:
            print(f"{out}: removed what a killed run left behind: {', '.join(str(p.relative_to(out)) for p in removed)}")
        return lock
    except BaseException:
        lock.release()
        raise


def open_run_dir(train: Any, dist: D.DistState, inputs: list[str] | None = None) -> RunLock | None:
    """Check, lock and tidy ``train.output_dir`` on rank 0; every rank raises if it fails.
    ``inputs``: the local paths the run reads, which the run folder must not be or hold (when it
    would delete them).

    Call before loading data or a model; release the returned lock (rank 0) when the run ends.
    """
    lock, error = None, None
    if dist.is_main:
        try:
            lock = _open(train, inputs)
        except BaseException as exc:
            error = exc
    message = D.broadcast_object(dist, None if error is None else str(error) if isinstance(error, UserError) else repr(error))
    if error is not None:
        raise error
    if message is not None:
        raise UserError(message)
    return lock
