"""Non-finite numbers stop a run: a NaN loss, gradient norm or adapter is never trained on or written.

Every rank computes the same global loss and gradient norm (and holds the full adapter when it is
saved), so every rank raises at the same step and the process group shuts down cleanly.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from medslm.checkpoint import latest_checkpoint
from medslm.cli import UserError


class NonFiniteError(UserError):
    """Training produced nan or inf: the run stops at that step (one line, exit 2)."""


def _last_good(output_dir: str | Path) -> str:
    last = latest_checkpoint(output_dir)
    return f"the last checkpoint, {last}, is kept" if last is not None else "no checkpoint was written before it"


def check_step(step: int, loss: float, grad_norm: float, output_dir: str | Path) -> None:
    """Raise before the optimizer applies a step whose loss or gradient norm is nan/inf."""
    if math.isfinite(loss) and math.isfinite(grad_norm):
        return
    raise NonFiniteError(
        f"step {step}: the loss is {loss} and the gradient norm {grad_norm}: training stopped before this update "
        f"({_last_good(output_dir)}); lower train.lr, or check the data and model.compute_dtype"
    )


def check_validation(step: int, val_loss: float, output_dir: str | Path) -> None:
    """Raise when the validation loss after ``step`` is nan/inf (finite training losses do not rule it out)."""
    if math.isfinite(val_loss):
        return
    raise NonFiniteError(
        f"step {step}: the validation loss is {val_loss}: training stopped before this step's checkpoint "
        f"({_last_good(output_dir)}); check model.compute_dtype (fp16 overflows) and the validation data"
    )


def check_adapter(adapter: dict[str, torch.Tensor], step: int, output_dir: str | Path) -> None:
    """Raise instead of writing an adapter that holds nan/inf (a checkpoint or the result)."""
    bad = [name for name, t in adapter.items() if not bool(torch.isfinite(t).all())]
    if bad:
        raise NonFiniteError(
            f"step {step}: {len(bad)} of the adapter's {len(adapter)} tensors hold nan or inf (first: {bad[0]}): "
            f"not written, training stopped ({_last_good(output_dir)}); lower train.lr"
        )
