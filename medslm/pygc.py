"""``train.gc``: when Python's cyclic garbage collector runs during training.

A compiled model (``model.compile``) leaves about a million long-lived Python objects behind
(dynamo's guards and bytecode, FX graphs, inductor's generated code and sympy caches). CPython's
automatic collector runs whenever allocations cross its thresholds, inside whatever code is
running then: its young collections run dozens of times per step, and now and then a full
collection walks every one of those objects. At tiny shape on a 2-core CPU that heap took 0.4 s
per full collection, and a compiled training run spent 2.1 s in 7 of them; on the H100 a profiled
step stalled 0.44 s inside a Python-implemented op with the GPU idle. Once the step is limited by
the host (the compiled MedGemma-4B step is: its kernels take 400 ms of a 441-610 ms step),
collector time is step time.

``managed`` (the default) takes the collector off the step's critical path:

- before the loop and after each of the first ``SETTLE_STEPS`` steps (where the compiles and the
  recompile for dynamic lengths happen), a full collection, then ``gc.freeze()``: what survives is
  moved to the permanent generation, which later collections do not walk;
- automatic collection is off during the loop; between steps, one collection of the young
  generations (the step's own garbage cycles), and every ``FULL_EVERY`` steps a full one (cheap:
  the frozen objects are skipped);
- on leaving the loop (normally or by an error) the collector is put back as it was and the
  frozen objects are released to it (unless the caller had frozen objects of its own before:
  ``gc.unfreeze`` would release those too, so everything then stays frozen).

Memory is still freed by reference counting at once; only objects in reference cycles wait for
the collection between steps. ``python`` leaves the collector alone (what the loop did before).
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator

from medslm.config import ConfigError

POLICIES = ("managed", "python")
SETTLE_STEPS = 3  # compile (step 1), the recompile with a dynamic length (step 2), one to spare
FULL_EVERY = 100  # steps between full collections once settled


class StepCollector:
    """Collections at step boundaries (``managed``) or none of its own (``python``)."""

    def __init__(self, policy: str):
        if policy not in POLICIES:
            raise ConfigError(f"train.gc: {policy!r} is not one of {', '.join(POLICIES)}")
        self.policy = policy
        self.steps = 0
        self.collections = 0  # the ones this object ran

    @property
    def managed(self) -> bool:
        return self.policy == "managed"

    def _full_and_freeze(self) -> None:
        gc.collect()
        gc.freeze()
        self.collections += 1

    def start(self) -> None:
        if self.managed:
            self._full_and_freeze()
            gc.disable()

    def after_step(self) -> None:
        """Call once per optimizer step, after the step's work has been queued."""
        if not self.managed:
            return
        self.steps += 1
        if self.steps <= SETTLE_STEPS or self.steps % FULL_EVERY == 0:
            self._full_and_freeze()
        else:
            gc.collect(1)
            self.collections += 1


@contextlib.contextmanager
def managed_collector(policy: str) -> Iterator[StepCollector]:
    """The loop's collector policy; restores the collector's state on exit, whatever happens."""
    collector = StepCollector(policy)
    was_enabled = gc.isenabled()
    # objects the caller froze itself stay frozen: unfreeze() cannot tell theirs from ours
    caller_froze = gc.get_freeze_count() > 0
    try:
        collector.start()
        yield collector
    finally:
        if collector.managed:
            if not caller_froze:
                gc.unfreeze()
            if was_enabled:
                gc.enable()
