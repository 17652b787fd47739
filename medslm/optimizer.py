"""``train.adamw``: which AdamW runs, and when the host reads each step's loss and gradient norm.

Every optimizer step produces numbers the host needs: the step's loss (summed over ranks), the
gradient norm and the peak memory. The loss and the norm guard the run (a nan or inf stops it
before that step's update, :func:`medslm.numerics.check_step`) and all three are logged. Reading
them is a device-to-host copy, and that copy waits for every kernel queued before it.

- ``unfused`` (torch's own choice: AdamW over lists of tensors on CUDA, per tensor on a CPU; the
  default off CUDA): the host reads the numbers right after clipping, checks them, and only then
  queues the update. The read waits for the whole backward pass; then, while the host launches the
  update (at MedGemma 4B's shape a few kernels per list operation over 476 adapter tensors), logs,
  collates the next rows and starts the next forward, the GPU has next to nothing to do: 37 ms
  at 2-6% busy between two profiled MedGemma-4B steps on one H100, whose unprofiled median step
  (440 ms) exceeded its kernels' time (406 ms) by 33 ms (BENCHMARKS.md, call 4 and
  ``bench/trace_gaps.py``).
- ``fused`` (torch's fused AdamW, the default on CUDA): the guard moves to the device. A flag, 1 when
  the loss or the norm is not finite, goes to the fused kernel as ``found_inf`` (the mechanism
  torch's GradScaler uses), and the kernel then leaves the parameters, both moments and the step
  count as they were. The numbers are copied to pinned host memory without waiting, and the host
  reads them one step later, when the device has long since computed them: the host never waits
  at a step boundary, so it launches the next step while the device finishes this one (at most
  one step ahead: the next read waits for this step's numbers). A non-finite step still stops the
  run with the parameters of the last good step: its own update was skipped on the device, and
  the check raises before the next step's update is queued (that next step's forward and backward
  run for nothing). Before a checkpoint, a validation pass and at the end of the run the read is
  brought forward (:meth:`StepReadback.flush`), so a checkpoint's step is always checked.

A checkpoint written by one implementation resumes under the other (:func:`for_optimizer`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

IMPLEMENTATIONS = ("auto", "fused", "unfused")


def implementation(mode: str, device: torch.device) -> str:
    """``fused`` or ``unfused`` for ``train.adamw`` (``auto``: fused on CUDA, unfused elsewhere)."""
    if mode not in IMPLEMENTATIONS:
        raise ValueError(f"train.adamw: {mode!r} is not one of {', '.join(IMPLEMENTATIONS)}")
    if mode == "auto":
        return "fused" if device.type == "cuda" else "unfused"
    return mode


def build_adamw(params: list[torch.nn.Parameter], t_cfg: Any, device: torch.device) -> torch.optim.AdamW:
    """AdamW over ``params`` with ``t_cfg``'s (a ``TrainSection``) settings and implementation."""
    fused = implementation(t_cfg.adamw, device) == "fused"
    return torch.optim.AdamW(
        params, lr=t_cfg.lr, betas=tuple(t_cfg.adam_betas), weight_decay=t_cfg.weight_decay, fused=fused or None
    )


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    return all(g.get("fused") for g in optimizer.param_groups)


def for_optimizer(osd: dict[str, Any], optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A saved optimizer state with its implementation flags set to ``optimizer``'s.

    ``Optimizer.load_state_dict`` takes every group setting from the saved state, ``fused`` and
    ``foreach`` included, and places the step counts by them (fused: on the parameter's device);
    a fused checkpoint loaded as it is would turn an unfused optimizer fused, and the reverse would
    leave the guard below handing ``found_inf`` to an optimizer that refuses it."""
    live = optimizer.param_groups[0]
    flags = {k: live.get(k) for k in ("fused", "foreach")}
    return {**osd, "param_groups": [{**g, **flags} for g in osd["param_groups"]]}


@dataclass
class StepNumbers:
    """What the host learns of one optimizer step."""

    step: int
    loss_sum: float  # summed over ranks; divide by the step's supervised tokens
    grad_norm: float
    peak_gb: float  # the largest over ranks
    step_time_s: float  # host time from the previous step's boundary (or the last pause) to this one's
    host: dict[str, Any] = field(default_factory=dict)  # what the host knew when it queued the step


class StepReadback:
    """Each step's numbers to the host: now (unfused AdamW) or one step later (fused, guarded on
    the device). See the module docstring."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device):
        self.optimizer = optimizer
        self.device = device
        self.deferred = is_fused(optimizer)
        self._pending: tuple[int, torch.Tensor, Any, float, dict[str, Any]] | None = None
        self._mark = time.perf_counter()

    def pause_ended(self) -> None:
        """Start the next step's clock here (after a checkpoint or a validation pass)."""
        self._mark = time.perf_counter()

    def _elapsed(self) -> float:
        now = time.perf_counter()
        dt, self._mark = now - self._mark, now
        return dt

    def submit(self, step: int, values: torch.Tensor, host: dict[str, Any]) -> list[StepNumbers]:
        """Hand over step ``step``'s ``values`` (a device tensor: loss sum, gradient norm, peak GB),
        before its update is queued. Returns the steps whose numbers are now known, oldest first:
        this one (unfused: check it before queueing the update), or the one before (fused: this
        step's update is gated on the device)."""
        if not self.deferred:
            loss_sum, grad_norm, peak = values.tolist()
            return [StepNumbers(step, loss_sum, grad_norm, peak, self._elapsed(), host)]
        # 1.0 when not finite: the fused kernel then changes nothing (parameters, moments, step count)
        self.optimizer.found_inf = (~torch.isfinite(values[:2]).all()).to(torch.float32)
        if values.is_cuda:
            buf = torch.empty(values.shape, dtype=values.dtype, pin_memory=True)
            buf.copy_(values, non_blocking=True)
            event: Any = torch.cuda.Event()
            event.record()
        else:
            buf, event = values.detach().clone(), None
        done = self._resolve()
        self._pending = (step, buf, event, self._elapsed(), host)
        return done

    def flush(self) -> list[StepNumbers]:
        """The numbers still on their way (fused), read now: waits for the device to reach them."""
        return self._resolve()

    def _resolve(self) -> list[StepNumbers]:
        if self._pending is None:
            return []
        step, buf, event, dt, host = self._pending
        self._pending = None
        if event is not None:
            event.synchronize()
        loss_sum, grad_norm, peak = buf.tolist()
        return [StepNumbers(step, loss_sum, grad_norm, peak, dt, host)]
