"""Resuming a run: which checkpoint, whether its config allows it, and restoring every state.

- ``train.resume=auto`` takes the newest checkpoint in the output_dir that loads and verifies;
  one that does not (truncated state, adapter or config) is skipped with a printed notice, and
  the run resumes from the one before. No loadable checkpoint: the run starts at step 0.
- ``train.resume=PATH`` must load: otherwise one line, exit 2.
- A checkpoint whose state.pt holds more than tensors and plain values is refused either way.
- Every config key must match the checkpoint's except those in ``RESUME_MAY_CHANGE``, the
  training rows must be the checkpoint's (count and digest), and the global batch must be the same; the world size may differ (the optimizer state is stored whole
  and keyed by parameter name; RNG streams are restored only under the same world size).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np
import torch

from medslm import distributed as D
from medslm.checkpoint import Checkpoint, CheckpointError, list_checkpoints, load_checkpoint
from medslm.cli import UserError
from medslm.config import to_dict
from medslm.optimizer import for_optimizer
from medslm.train_config import RESUME_MAY_CHANGE, TrainConfig


def rng_state() -> dict[str, Any]:
    """This process's RNG streams as tensors and plain values (``torch.load(weights_only=True)`` reads them)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    st: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def set_rng_state(st: dict[str, Any]) -> None:
    version, internal, gauss_next = st["python"]
    random.setstate((version, tuple(internal), gauss_next))
    name, keys, pos, has_gauss, gauss = st["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(st["torch"])
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def find_checkpoint(resume: str | None, output_dir: str, notice: Any = print) -> Checkpoint | None:
    """The checkpoint to resume from, loaded and verified, or None to start at step 0."""
    if not resume:
        return None
    if resume != "auto":
        return load_checkpoint(resume)  # CheckpointError / UnsafeCheckpointError: one line, exit 2
    found = list_checkpoints(output_dir)
    for path in reversed(found):
        try:
            return load_checkpoint(path)
        except CheckpointError as exc:  # UnsafeCheckpointError is not skipped: it stops the run
            notice(f"train.resume=auto: skipping {path.name}: {exc}")
    if found:
        notice(f"train.resume=auto: none of the {len(found)} checkpoints in {output_dir} loads: starting at step 0")
    return None


def _flat(tree: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = list(v) if isinstance(v, tuple) else v
    return out


def check_resume(cfg: TrainConfig, ckpt: Checkpoint, world_size: int, data: dict[str, Any] | None = None) -> list[str]:
    """Refuse (UserError) a checkpoint made with other step-changing settings or other training rows
    (``data``: :func:`medslm.dataset.training_rows_id`); return the keys that may change and did
    (``key: old -> new``)."""
    now, saved, default = _flat(to_dict(cfg)), _flat(ckpt.config), _flat(to_dict(TrainConfig()))
    diffs, changed = [], []
    for key, value in now.items():
        old = saved.get(key, default.get(key))  # a key newer than the checkpoint: its default then
        if old == value:
            continue
        if key in RESUME_MAY_CHANGE:
            changed.append(f"{key}: {old!r} -> {value!r}")
        else:
            diffs.append(f"{key}: checkpoint {old!r} vs now {value!r}")
    g_now = cfg.train.micro_batch_size * cfg.train.grad_accum * world_size
    if ckpt.state["global_batch_rows"] != g_now:
        diffs.append(
            f"global batch rows (micro_batch_size x grad_accum x world size): checkpoint {ckpt.state['global_batch_rows']} vs now {g_now}"
        )
    if diffs:
        raise UserError(f"train.resume: {ckpt.path} was made with settings that change the optimizer's steps: " + "; ".join(diffs))
    saved_data = ckpt.state.get("data")  # checkpoints from before it was recorded: not checked
    if data is not None and saved_data is not None and saved_data != data:
        raise UserError(
            f"train.resume: {ckpt.path} trained on other rows ({saved_data['rows']} rows, sha256 {saved_data['sha256'][:12]}) "
            f"than this run has ({data['rows']} rows, sha256 {data['sha256'][:12]}): the data files, their mix or their packing "
            "changed under the same config; resume with the data the run started on, or start a new run (another "
            "train.output_dir, or train.overwrite=true)"
        )
    return changed


def restore(cfg: TrainConfig, ckpt: Checkpoint, dist: D.DistState, model: Any, optimizer: Any, scheduler: Any,
            data: dict[str, Any] | None = None) -> int:
    """Check and load a checkpoint into the model, optimizer, scheduler and RNG; returns its step."""
    changed = check_resume(cfg, ckpt, dist.world_size, data)
    D.load_trainable_state_dict(model, ckpt.adapter)
    # under this run's train.adamw, whichever implementation wrote the checkpoint
    D.load_optimizer_state(model, optimizer, for_optimizer(ckpt.state["optimizer"], optimizer), dist)
    scheduler.load_state_dict(ckpt.state["scheduler"])
    same_world = ckpt.state["world_size"] == dist.world_size
    if same_world:
        set_rng_state(ckpt.state["rng"][dist.rank])
    if dist.is_main:
        print(f"resuming from {ckpt.path} (step {ckpt.step})")
        if changed:
            print(f"train.resume: keys that may change and did: {'; '.join(changed)}")
        if not same_world:
            print(
                f"train.resume: the checkpoint ran on {ckpt.state['world_size']} rank(s), this run on {dist.world_size}: "
                "the same rows and optimizer state, but dropout draws new random numbers"
            )
    return ckpt.step
