"""``train.auto_micro_batch``: on CUDA out of memory in the first steps, halve the micro-batch.

The step that ran out of memory is retried from where it started: its partial gradients are
dropped, the RNG is put back (so dropout draws what a run started at the smaller micro-batch
draws), ``train.micro_batch_size`` is halved and ``train.grad_accum`` multiplied to match, so the
global batch (``micro_batch_size x grad_accum x world_size`` rows) and the rows of every step are
unchanged: the loss curve is the one a run started at the smaller micro-batch gives. An odd
micro-batch goes to its largest divisor at most half of it (3 -> 1, grad_accum x 3). The change is
printed, written to ``config.yaml`` (what evaluate.py and resume read) and logged in
``metrics.jsonl`` as a record of kind ``auto_micro_batch``. At micro-batch 1 the error stands.

Only the first :data:`WINDOW_STEPS` optimizer steps of a process adapt (the second is the first
with AdamW's state allocated, so it holds the step's peak); later the error stands, as without the
option. Under torchrun the ranks agree after every attempt (a max over ranks of "ran out"), so all
ranks shrink together, and FSDP2's half-done step is reset (``FSDPModule.reset_iter_state``,
torch >= 2.13; on an older torch the error stands). Packed rows all have the same shape, so every
rank of a homogeneous node runs out at the same micro-batch; a rank that alone runs out while the
others wait in one of FSDP's collectives cannot be recovered (they wait until the timeout).
Tested on 2 gloo ranks with the error raised as a micro-batch's backward starts. Raised inside a
decoder layer's backward (after FSDP reduce-scattered later layers), the recovery gave the same
losses in one run by hand but hung in two of three on gloo: under FSDP, treat it as experimental.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable
from typing import Any, TypeVar

import torch

from medslm import distributed as D
from medslm.config import save_config
from medslm.resume import rng_state, set_rng_state

T = TypeVar("T")
WINDOW_STEPS = 2


def smaller_micro_batch(micro: int) -> int:
    """The largest divisor of ``micro`` that is at most half of it (0 when ``micro`` is 1)."""
    for m in range(micro // 2, 0, -1):
        if micro % m == 0:
            return m
    return 0


class AutoMicroBatch:
    """Wraps one optimizer step's micro-steps; retries them at a smaller micro-batch on OOM."""

    def __init__(self, cfg: Any, dist: D.DistState, model: Any, params: list[torch.nn.Parameter], output_dir: str, logger: Any,
                 start_step: int):
        self.cfg = cfg
        self.dist = dist
        self.model = model
        self.params = params
        self.output_dir = output_dir
        self.logger = logger
        self.enabled = bool(cfg.train.auto_micro_batch)
        self.last_step = start_step + WINDOW_STEPS  # steps are counted from 1
        self.changes: list[dict[str, int]] = []
        if self.enabled and dist.is_main:
            t = cfg.train
            print(
                f"auto_micro_batch: on: micro_batch_size {t.micro_batch_size} x grad_accum {t.grad_accum} x "
                f"{dist.world_size} rank(s) = {t.micro_batch_size * t.grad_accum * dist.world_size} rows per step; "
                f"halved on CUDA out of memory in steps {start_step + 1}-{self.last_step}, global batch kept"
            )

    def run(self, step: int, micro_steps: Callable[[], T]) -> T:
        """``micro_steps()`` for optimizer step ``step`` (1-based), retried smaller on OOM."""
        if not self.enabled or step > self.last_step:
            return micro_steps()
        while True:
            rng = rng_state()
            ran_out = False
            try:
                result = micro_steps()
            except torch.cuda.OutOfMemoryError:
                ran_out = True  # handled below, once the traceback (and the activations it holds) is gone
            if self.dist.distributed:
                ran_out = D.all_reduce_max(self.dist, float(ran_out)) > 0
            if not ran_out:
                return result
            result = None
            self._reset(rng)
            self._shrink(step)

    def _reset(self, rng: dict[str, Any]) -> None:
        if not D.reset_after_failed_step(self.model):
            raise torch.cuda.OutOfMemoryError("out of memory under FSDP, which this torch cannot recover from (FSDP2 reset_iter_state needs torch >= 2.13)")
        for p in self.params:
            p.grad = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        set_rng_state(rng)

    def _shrink(self, step: int) -> None:
        t = self.cfg.train
        old_micro, old_accum = t.micro_batch_size, t.grad_accum
        new_micro = smaller_micro_batch(old_micro)
        if new_micro == 0:
            raise torch.cuda.OutOfMemoryError(f"out of memory at train.micro_batch_size=1 (auto_micro_batch has nothing left to halve)")
        t.micro_batch_size = new_micro
        t.grad_accum = old_accum * (old_micro // new_micro)
        rows = t.micro_batch_size * t.grad_accum * self.dist.world_size
        change = {"step": step, "micro_batch_size": t.micro_batch_size, "grad_accum": t.grad_accum,
                  "previous_micro_batch_size": old_micro, "previous_grad_accum": old_accum, "global_batch_rows": rows}
        self.changes.append(change)
        if self.dist.is_main:
            print(
                f"auto_micro_batch: CUDA out of memory in step {step} at micro_batch_size {old_micro}: retrying the step with "
                f"micro_batch_size {t.micro_batch_size} x grad_accum {t.grad_accum} (global batch {rows} rows, unchanged)"
            )
            save_config(self.cfg, os.path.join(self.output_dir, "config.yaml"))
            self.logger.log(step, {k: v for k, v in change.items() if k != "step"}, kind="auto_micro_batch")
