"""``train.gc``: Python's cyclic collector runs between training steps, not inside them, and is
put back as it was afterwards."""

from __future__ import annotations

import gc
import weakref

import pytest

from medslm import pygc
from medslm.config import ConfigError


class _Node:
    pass


def _cycle() -> weakref.ref:
    """A garbage reference cycle: only the cyclic collector frees it."""
    a = _Node()
    a.me = a
    return weakref.ref(a)


def _churn() -> None:
    kept = [[] for _ in range(20000)]  # live containers far past the young generation's threshold (700)
    del kept


def test_managed_policy_collects_between_steps_only_then_restores_the_collector():
    assert gc.isenabled() and gc.get_freeze_count() == 0
    with pygc.managed_collector("managed") as collector:
        assert not gc.isenabled()
        assert gc.get_freeze_count() > 0  # the objects alive before the loop: frozen, not walked again
        for step in range(pygc.SETTLE_STEPS + 2):  # settling steps (full + freeze), then young-only ones
            dead = _cycle()
            _churn()
            assert dead() is not None, step  # no automatic collection inside a step
            collector.after_step()
            assert dead() is None, step  # the step's garbage cycle goes between steps
    assert gc.isenabled() and gc.get_freeze_count() == 0
    assert collector.collections == pygc.SETTLE_STEPS + 3


def test_python_policy_leaves_automatic_collection_on():
    with pygc.managed_collector("python") as collector:
        assert gc.isenabled()
        dead = _cycle()
        _churn()
        assert dead() is None  # Python's own collector ran inside the "step"
        collector.after_step()
    assert collector.collections == 0 and gc.isenabled()


def test_an_error_in_the_loop_still_restores_the_collector():
    with pytest.raises(RuntimeError, match="boom"):
        with pygc.managed_collector("managed"):
            raise RuntimeError("boom")
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_objects_the_caller_froze_stay_frozen():
    gc.freeze()
    try:
        before = gc.get_freeze_count()
        with pygc.managed_collector("managed") as collector:
            collector.after_step()
        assert gc.get_freeze_count() >= before > 0 and gc.isenabled()
    finally:
        gc.unfreeze()


def test_an_unknown_policy_is_refused_by_name():
    with pytest.raises(ConfigError, match="train.gc: 'off' is not one of managed, python"):
        pygc.StepCollector("off")


def test_train_gc_is_checked_with_the_config_naming_where_it_came_from(tmp_path):
    from medslm.config import parse_config
    from medslm.train_config import TrainConfig

    with pytest.raises(ConfigError, match=r"--train.gc\): 'train.gc' must be one of \['managed', 'python'\], got 'off'"):
        parse_config(TrainConfig, ["--train.gc=off"]).validate()
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  gc: collect\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: 'train.gc' must be one of \['managed', 'python'\], got 'collect'"):
        parse_config(TrainConfig, ["--config", str(bad)]).validate()
