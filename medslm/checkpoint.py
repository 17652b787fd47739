"""Atomic, resumable checkpoints and the final PEFT adapter.

A checkpoint is a folder ``OUTPUT_DIR/checkpoints/step-00000012/`` holding the adapter weights
(``adapter.safetensors``, full tensors), the whole optimizer state, the scheduler, every rank's
RNG state, the data position and the resolved config. It is written under a hidden temporary
name and renamed into place, so a crash never leaves a half-written checkpoint that resume would
pick up. The last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch

STEP_PREFIX = "step-"


def checkpoint_root(output_dir: str | Path) -> Path:
    return Path(output_dir) / "checkpoints"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    root = checkpoint_root(output_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if p.is_dir() and p.name.startswith(STEP_PREFIX) and (p / "state.pt").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(STEP_PREFIX) :]))


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    found = list_checkpoints(output_dir)
    return found[-1] if found else None


def save_checkpoint(
    output_dir: str | Path,
    step: int,
    adapter: dict[str, torch.Tensor],
    state: dict[str, Any],
    config_yaml: str,
    keep: int,
) -> Path:
    """Write a checkpoint atomically (call on rank 0 only) and prune old ones."""
    from safetensors.torch import save_file

    root = checkpoint_root(output_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"{STEP_PREFIX}{step:08d}"
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".tmp-{step:08d}-"))
    save_file({k: v.contiguous() for k, v in adapter.items()}, str(tmp / "adapter.safetensors"))
    torch.save(state, tmp / "state.pt")
    (tmp / "config.yaml").write_text(config_yaml, encoding="utf-8")
    if final.exists():  # the same step saved again (a resumed run re-reaching it)
        shutil.rmtree(final)
    tmp.rename(final)
    for old in list_checkpoints(output_dir)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any], Path]:
    from safetensors.torch import load_file

    p = Path(path)
    if not (p / "state.pt").is_file() or not (p / "adapter.safetensors").is_file():
        raise FileNotFoundError(f"train.resume: {p} is not a medslm checkpoint (needs state.pt and adapter.safetensors)")
    state = torch.load(p / "state.pt", map_location="cpu", weights_only=False)
    return load_file(str(p / "adapter.safetensors")), state, p / "config.yaml"


def save_adapter(model: Any, adapter: dict[str, torch.Tensor], out_dir: str | Path, finish: Any = None) -> Path:
    """The final adapter in PEFT format (adapter_config.json + adapter_model.safetensors), atomically.

    ``finish(folder)``, if given, edits the written folder before it is renamed into place."""
    out = Path(out_dir)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}-"))
    model.save_pretrained(str(tmp), state_dict=adapter, safe_serialization=True)
    if finish is not None:
        finish(tmp)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
    return out
