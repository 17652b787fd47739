"""train.adamw: fused AdamW trains the same run as torch's unfused one; its nan guard on the device
stops a diverging run with the last good step's parameters although the host reads each step's
numbers one step late; a checkpoint of one implementation resumes under the other."""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from conftest import REPO, tiny_run
from medslm.config import ConfigError, parse_config
from medslm.numerics import NonFiniteError
from medslm.optimizer import StepReadback, for_optimizer, implementation, is_fused
from medslm.train_config import TrainConfig, TrainSection
from medslm.trainer import train

FAST = tiny_run("--train.micro_batch_size=2", "--train.grad_accum=1", "--train.warmup_steps=0")


def _records(run_dir) -> list[dict]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in recs if r.get("kind", "train") == "train"]


def test_auto_is_fused_on_cuda_only_and_a_bad_value_is_refused(tmp_path):
    assert implementation("auto", torch.device("cuda")) == "fused"
    assert implementation("auto", torch.device("cpu")) == "unfused"
    assert implementation("fused", torch.device("cpu")) == "fused"
    with pytest.raises(ConfigError, match="train.adamw"):
        parse_config(TrainConfig, [*FAST, "--train.adamw=apex"])


def test_the_readback_gates_the_fused_update_on_the_device_and_hands_steps_over_one_late():
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.AdamW([p], lr=0.1, fused=True)
    rb = StepReadback(opt, torch.device("cpu"))
    assert rb.deferred
    assert rb.submit(1, torch.tensor([2.0, 0.5, 1.0], dtype=torch.float64), {"k": 1}) == []
    assert float(opt.found_inf) == 0.0
    (done,) = rb.submit(2, torch.tensor([math.nan, 0.5, 1.0], dtype=torch.float64), {"k": 2})
    assert (done.step, done.loss_sum, done.grad_norm, done.peak_gb, done.host) == (1, 2.0, 0.5, 1.0, {"k": 1})
    assert float(opt.found_inf) == 1.0  # step 2's update is skipped on the device
    p.grad = torch.full((3,), math.nan)
    opt.step()
    assert torch.equal(p.detach(), torch.ones(3)) and float(opt.state[p]["step"]) == 0
    (late,) = rb.flush()
    assert late.step == 2 and math.isnan(late.loss_sum)
    assert rb.flush() == []
    unfused = StepReadback(torch.optim.AdamW([p], lr=0.1), torch.device("cpu"))
    assert not unfused.deferred  # torch's unfused AdamW takes no found_inf: the host checks first
    (now,) = unfused.submit(7, torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64), {})
    assert now.step == 7 and not hasattr(unfused.optimizer, "found_inf")


def test_fused_adamw_trains_the_run_unfused_adamw_trains(tmp_path):
    runs = {}
    for impl in ("unfused", "fused"):
        out = tmp_path / impl
        result = train(parse_config(TrainConfig, [*FAST, f"--train.output_dir={out}", "--train.max_steps=5", f"--train.adamw={impl}"]))
        assert result["adamw"] == impl
        runs[impl] = _records(out)
    for impl, recs in runs.items():
        assert [r["step"] for r in recs] == [1, 2, 3, 4, 5], impl  # every step logged once, in order, fused a step late or not
    a, b = ([r["loss"] for r in runs[k]] for k in ("unfused", "fused"))
    assert a[1] != a[0]  # the adapter trains
    assert max(abs(x - y) / abs(x) for x, y in zip(a, b)) < 1e-5
    assert [r["grad_norm"] for r in runs["fused"]] == pytest.approx([r["grad_norm"] for r in runs["unfused"]], rel=1e-4)


@pytest.mark.parametrize("impl,save_every", [("unfused", 0), ("fused", 0), ("fused", 1)])
def test_a_diverging_run_stops_with_the_last_good_steps_parameters_though_read_a_step_late(tmp_path, monkeypatch, impl, save_every):
    """lr=1e30 (past the config's check) diverges: step 1 trains, step 2's loss is nan. With fused
    AdamW the host learns that during step 3, after step 2's update was queued: the update must
    have been skipped on the device, and none queued after it. A checkpoint due at step 2 must
    not be written (its adapter is finite: the skipped update left step 1's)."""
    out = tmp_path / "run"
    cfg = parse_config(TrainConfig, [*FAST, f"--train.output_dir={out}", "--train.max_steps=6", f"--train.adamw={impl}",
                                     f"--train.save_every={save_every}"])
    cfg.train.lr = 1e30
    monkeypatch.setattr(TrainSection, "validate", lambda self: None)
    after_update: list[list[torch.Tensor]] = []

    def snapshot(opt, args, kwargs):
        after_update.append([p.detach().clone() for g in opt.param_groups for p in g["params"]])

    handle = register_optimizer_step_post_hook(snapshot)
    try:
        with pytest.raises(NonFiniteError, match=r"^step 2: the loss is nan .*stopped before this update"):
            train(cfg)
    finally:
        handle.remove()
    assert [r["step"] for r in _records(out)] == [1]
    assert not (out / "adapter").exists()
    if save_every:
        assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]
    assert len(after_update) == (2 if impl == "fused" else 1)  # fused: step 2's update was queued, gated
    step1 = after_update[0]
    assert all(torch.isfinite(t).all() for t in step1)
    for later in after_update[1:]:
        assert all(torch.equal(a, b) for a, b in zip(step1, later))


@pytest.mark.parametrize("first,then", [("unfused", "fused"), ("fused", "unfused")])
def test_a_checkpoint_resumes_under_the_other_implementation(tmp_path, first, then):
    ref = tmp_path / "ref"
    train(parse_config(TrainConfig, [*FAST, f"--train.output_dir={ref}", "--train.max_steps=4", "--train.save_every=2",
                                     f"--train.adamw={first}"]))
    seen: list[bool] = []
    handle = register_optimizer_step_post_hook(lambda opt, a, k: seen.append(is_fused(opt)))
    try:
        resumed = tmp_path / "resumed"
        train(parse_config(TrainConfig, [*FAST, f"--train.output_dir={resumed}", "--train.max_steps=4",
                                         f"--train.resume={ref / 'checkpoints' / 'step-00000002'}", f"--train.adamw={then}"]))
    finally:
        handle.remove()
    assert seen == [then == "fused"] * 2  # the run's own implementation, not the checkpoint's
    want = [r["loss"] for r in _records(ref) if r["step"] > 2]
    got = [r["loss"] for r in _records(resumed) if r["step"] > 2]
    assert len(got) == 2 and max(abs(x - y) / abs(x) for x, y in zip(want, got)) < 1e-5


def test_for_optimizer_takes_the_live_optimizers_flags_and_keeps_the_rest():
    p = torch.nn.Parameter(torch.ones(2))
    live = torch.optim.AdamW([p], lr=0.5, fused=True)
    saved = {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"params": [0], "lr": 0.1, "fused": None, "foreach": True}]}
    got = for_optimizer(saved, live)
    assert got["param_groups"][0] == {"params": [0], "lr": 0.1, "fused": True, "foreach": None}
    assert got["state"] is saved["state"] and saved["param_groups"][0]["fused"] is None  # the saved dict is not changed
    live.load_state_dict(got)
    assert is_fused(live) and live.state[p]["step"].dtype == torch.float32


TRAIN_FILES_ONLY = [  # the samples' training files, split as the datasets ship them: no validation rows
    "--data.split=official", f"--data.medqa={REPO / 'data/samples/medqa/US/train.jsonl'}",
    "--data.kormedmcqa=" + ",".join(str(p) for p in sorted(REPO.glob("data/samples/kormedmcqa/*/train-*.parquet"))),
]


@pytest.mark.parametrize("validation,reads_at", [(False, [6]), (True, [3, 6])])
def test_the_host_reads_ahead_of_time_only_for_a_validation_pass_a_checkpoint_or_the_end(tmp_path, monkeypatch, validation, reads_at):
    """Fused AdamW, epochs of 3 steps: without validation rows the pending step is read early only
    at the end; with them (the hash split's 10%), before each epoch's validation pass. An early
    read at every epoch end made the bench's 2-step epochs wait every other step."""
    from medslm.optimizer import StepReadback

    early: list[int] = []
    plain = StepReadback.flush

    def flush(self):
        got = plain(self)
        early.extend(n.step for n in got)
        return got

    monkeypatch.setattr(StepReadback, "flush", flush)
    out = tmp_path / "run"
    data = [] if validation else TRAIN_FILES_ONLY
    result = train(parse_config(TrainConfig, [*FAST, *data, f"--train.output_dir={out}", "--train.max_steps=6", "--train.adamw=fused",
                                              "--train.micro_batch_size=8", "--train.grad_accum=2"]))
    assert result["steps"] == 6 and len(result["val_losses"]) == (2 if validation else 0)
    assert early == reads_at
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("kind", "train")) for r in recs] == (
        [(s, "train") for s in range(1, 7)] if not validation else
        [(1, "train"), (2, "train"), (3, "train"), (3, "val"), (4, "train"), (5, "train"), (6, "train"), (6, "val")])
