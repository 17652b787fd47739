"""Atomic, verified, resumable checkpoints and the final PEFT adapter.

A checkpoint is a folder ``OUTPUT_DIR/checkpoints/step-00000012/`` holding the adapter weights
(``adapter.safetensors``, full tensors), the resolved config (``config.yaml``) and ``state.pt``:
the whole optimizer state, the scheduler, every rank's RNG state, the data position and the
SHA-256 of the two other files. Every file is written into a hidden ``.tmp-*`` folder, fsynced
with the folder, and the folder is renamed into place (then its parent is fsynced), so a crash or
a power cut never publishes a half-written checkpoint; pruning renames a checkpoint out of sight
before deleting it. Leftovers of a killed run (``.tmp-*`` folders, step folders missing a file)
are removed by :func:`remove_leftovers` when the next run starts.

``state.pt`` is read with ``torch.load(weights_only=True)``: tensors and plain values only, never
arbitrary objects, so a checkpoint cannot run code. A checkpoint that cannot be read, or whose
files do not match the checksums in its state, raises :class:`CheckpointError`; one holding
objects that are not tensors or plain values raises :class:`UnsafeCheckpointError`.
"""

from __future__ import annotations

import hashlib
import os
import pickle
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml

from medslm.cli import UserError
from medslm.files import torch_save

STEP_PREFIX = "step-"
TMP_PREFIX = ".tmp-"
CHECKPOINT_FILES = ("adapter.safetensors", "config.yaml", "state.pt")
STATE_KEYS = ("global_step", "optimizer", "scheduler", "rng", "world_size", "global_batch_rows", "files")


class CheckpointError(UserError):
    """A checkpoint that cannot be used: missing, truncated or changed files (one line)."""


class UnsafeCheckpointError(UserError):
    """A state.pt holding objects other than tensors and plain values: loading it could run code."""


@dataclass
class Checkpoint:
    path: Path
    adapter: dict[str, torch.Tensor]
    state: dict[str, Any]
    config: dict[str, Any]  # the resolved config the checkpoint was made with

    @property
    def step(self) -> int:
        return int(self.state["global_step"])


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def _step_of(p: Path) -> int | None:
    tail = p.name[len(STEP_PREFIX) :]
    return int(tail) if p.name.startswith(STEP_PREFIX) and tail.isascii() and tail.isdigit() else None


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Published checkpoint folders, oldest first (whether they load is checked by :func:`load_checkpoint`)."""
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and _step_of(p) is not None and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: _step_of(p) or 0)


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


# ---------------------------------------------------------------------------------------------
# Durable writes
# ---------------------------------------------------------------------------------------------


def make_temp_dir(parent: Path, label: str) -> Path:
    """A hidden folder created with the user's umask (``tempfile.mkdtemp`` would make it 0700)."""
    parent.mkdir(parents=True, exist_ok=True)
    while True:
        tmp = parent / f"{TMP_PREFIX}{label}-{os.getpid()}-{secrets.token_hex(4)}"
        try:
            tmp.mkdir()
            return tmp
        except FileExistsError:
            continue


def fsync_path(path: Path) -> None:
    """Flush a file, or a folder's entries, to the disk."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def current_umask() -> int:
    try:  # Linux: read it without changing it (os.umask sets it, racing other threads)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def publish(tmp: Path, final: Path) -> None:
    """Give every file in ``tmp`` the user's umask (safetensors writes 0600), fsync them and ``tmp``,
    then rename it to ``final`` and fsync the parent.

    An existing ``final`` is moved aside first and deleted after, so there is always one whole copy.
    """
    mask = current_umask()
    for f in sorted(tmp.rglob("*")):
        if f.is_file() and not f.is_symlink():
            os.chmod(f, 0o666 & ~mask)
            fsync_path(f)
    fsync_path(tmp)
    old = None
    if final.exists():
        old = final.parent / f"{TMP_PREFIX}old-{final.name}-{secrets.token_hex(4)}"
        final.rename(old)
    tmp.rename(final)
    fsync_path(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    adapter: dict[str, torch.Tensor],
    state: dict[str, Any],
    config_yaml: str,
    keep: int,
) -> Path:
    """Write a checkpoint atomically and durably (call on rank 0 only) and prune old ones."""
    from safetensors.torch import save_file

    root = checkpoint_root(output_dir)
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = make_temp_dir(root, f"{step:08d}")
    save_file({k: v.contiguous() for k, v in adapter.items()}, str(tmp / "adapter.safetensors"))
    (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
    files = {name: _sha256(tmp / name) for name in ("adapter.safetensors", "config.yaml")}
    torch_save({**state, "files": files}, tmp / "state.pt")
    publish(tmp, final)
    # Checkpoints past this step are a damaged future that resume=auto skipped: this run rewrites
    # them as it reaches them, and they must not push its own checkpoints out of the last ``keep``.
    for old in [c for c in list_checkpoints(output_dir) if (_step_of(c) or 0) <= step][:-keep]:
        hidden = root / f"{TMP_PREFIX}pruned-{old.name}"
        old.rename(hidden)  # out of sight at once: a kill mid-delete leaves no half checkpoint
        shutil.rmtree(hidden, ignore_errors=True)
    return final


def remove_leftovers(output_dir: str | Path) -> list[Path]:
    """Delete what a killed run left behind: ``.tmp-*`` folders and step folders missing a file.

    Call only while holding the run folder's lock (a live run's temporary folders look the same).
    """
    out = Path(output_dir)
    removed = []
    for folder in (out, checkpoint_root(out)):
        if not folder.is_dir():
            continue
        for p in sorted(folder.iterdir()):
            half = folder != out and _step_of(p) is not None and p.is_dir() and not all((p / f).is_file() for f in CHECKPOINT_FILES)
            if p.name.startswith(TMP_PREFIX) or half:
                if p.is_dir():
                    shutil.rmtree(p, ignore_errors=True)
                else:
                    p.unlink(missing_ok=True)
                removed.append(p)
    return removed


# ---------------------------------------------------------------------------------------------
# Verified reads
# ---------------------------------------------------------------------------------------------


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def load_checkpoint(path: str | Path) -> Checkpoint:
    """Read and verify a checkpoint; :class:`CheckpointError` or :class:`UnsafeCheckpointError` if unusable."""
    from safetensors.torch import load_file

    p = Path(path)
    if not p.is_dir():
        what = "is not a folder" if p.exists() else "does not exist"
        raise CheckpointError(f"{p} {what}: a checkpoint is a folder like OUTPUT_DIR/checkpoints/step-00000012")
    missing = [f for f in CHECKPOINT_FILES if not (p / f).is_file()]
    if missing:
        raise CheckpointError(f"{p} is not a medslm checkpoint (missing {', '.join(missing)})")
    try:
        state = torch.load(p / "state.pt", map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower():
            raise UnsafeCheckpointError(
                f"{p / 'state.pt'} holds objects other than tensors and plain values, and loading it could run code: "
                "refused (a checkpoint of an older medslm, or a file that was replaced)"
            ) from None
        raise CheckpointError(f"{p / 'state.pt'} cannot be read ({_first_line(exc)})") from None
    except Exception as exc:  # truncated zip, bad magic, ...: torch raises RuntimeError and friends
        raise CheckpointError(f"{p / 'state.pt'} cannot be read, it is truncated or damaged ({_first_line(exc)})") from None
    lacking = [k for k in STATE_KEYS if not isinstance(state, dict) or k not in state]
    if lacking:
        raise CheckpointError(f"{p / 'state.pt'} lacks {', '.join(lacking)} (not written by this version of medslm)")
    for name, digest in state["files"].items():
        if _sha256(p / name) != digest:
            raise CheckpointError(f"{p / name} does not match the checksum in state.pt: truncated or changed after it was written")
    try:
        adapter = load_file(str(p / "adapter.safetensors"))
        config = yaml.safe_load((p / "config.yaml").read_text(encoding="utf-8"))
    except Exception as exc:
        raise CheckpointError(f"{p} cannot be read ({_first_line(exc)})") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{p / 'config.yaml'} is not a config mapping")
    return Checkpoint(p, adapter, state, config)


# ---------------------------------------------------------------------------------------------
# The final adapter
# ---------------------------------------------------------------------------------------------


def save_adapter(
    model: Any, adapter: dict[str, torch.Tensor], out_dir: str | Path, also: Callable[[Path], Any] | None = None
) -> Path:
    """The final adapter in PEFT format (adapter_config.json + adapter_model.safetensors), atomically.

    ``also(folder)`` writes companions (tokenizer, config) into the folder before it is published.
    """
    out = Path(out_dir)
    tmp = make_temp_dir(out.parent, out.name)
    model.save_pretrained(str(tmp), state_dict=adapter, safe_serialization=True)
    if also is not None:
        also(tmp)
    publish(tmp, out)
    return out
