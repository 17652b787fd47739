"""Ray Tune sweeps: the trial grid, validation before Ray starts, results with failed trials, and one
real 2-trial grid on the embedded tiny config (local Ray, 1 CPU per trial)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

from medslm.config import ConfigError
from medslm.sweep import (
    SweepConfig,
    build_trials,
    collect,
    parse_sweep_args,
    results_table,
    run_sweep,
)

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
FAST = ["--train.max_steps=2", "--data.max_seq_len=384", "--train.micro_batch_size=2"]


def test_default_grid_is_the_papers_3x3(tmp_path):
    cfg = parse_sweep_args("grid", ["--out", str(tmp_path)], "runs/sweep-grid")
    assert cfg.config == TINY and cfg.address is None and cfg.cpus_per_trial == 1 and cfg.gpus_per_trial == 0
    trials = build_trials(cfg)
    names = [n for n, _, _ in trials]
    assert names == [f"r{r}-a{a}" for r in (8, 16, 32) for a in (32, 64, 128)]
    for name, params, tc in trials:
        assert (tc.lora.r, tc.lora.alpha) == (params["r"], params["alpha"])
        assert tc.train.output_dir == str(tmp_path.resolve() / name)
        assert tc.train.progress is True  # as in the base config: plain lines in the Ray worker's log
    assert [p for _, p, _ in trials] == [{"r": r, "alpha": a} for r in (8, 16, 32) for a in (32, 64, 128)]
    assert {tc.train.resume for _, _, tc in trials} == {"auto"}  # a rerun continues each trial


def test_ratio_trials_names_and_values(tmp_path):
    cfg = parse_sweep_args("ratios", ["--out", str(tmp_path)], "runs/sweep-ratios")
    trials = build_trials(cfg)
    assert [n for n, _, _ in trials] == [
        "base", "ratio-5-5", "ratio-10-3", "ratio-7-3", "ratio-8-2", "ratio-4-6", "ratio-3-7", "ratio-2-8"
    ]  # base: the base model evaluated once on the same items, the default forgetting reference
    assert trials[0][1] == {"reference": "base"}
    trials = trials[1:]
    assert [tc.data.ratio for _, _, tc in trials] == ["5:5", "10:3", "7:3", "8:2", "4:6", "3:7", "2:8"]
    assert {tc.lora.r for _, _, tc in trials} == {16}  # from the config, not swept


def test_overrides_reach_every_trial(tmp_path):
    argv = ["--ranks=4,8", "--alphas", "16,32", "--out", str(tmp_path), *FAST, "--lora.dropout", "0.1"]
    cfg = parse_sweep_args("grid", argv, "x")
    trials = build_trials(cfg)
    assert len(trials) == 4
    for _, _, tc in trials:
        assert tc.train.max_steps == 2 and tc.data.max_seq_len == 384 and tc.train.micro_batch_size == 2
        assert tc.lora.dropout == 0.1


@pytest.mark.parametrize(
    "kind,argv,match",
    [
        ("ratios", ["--ratios", "5:5,7:x"], "ratio"),
        ("ratios", ["--ratios", "0:0"], "positive"),
        ("ratios", ["--ratios", "7:3,7:3"], "twice"),
        ("grid", ["--ranks", "8,abc"], "--ranks"),
        ("grid", ["--ranks", "0,8"], "--ranks"),
        ("grid", ["--alphas", "-4"], "--alphas"),
        ("grid", ["--ratios", "5:5"], "not an option"),
        ("grid", ["--lora.r=4"], "varies"),
        ("grid", ["--train.lr=-1"], "train.lr"),
        ("grid", ["--nosuch.key=1"], "unknown key"),
        ("grid", ["--cpus-per-trial", "0"], "cpus-per-trial"),
        ("ratios", ["--data.packed=out/packed"], "fixes the EN:KO mix"),
    ],
)
def test_bad_values_fail_before_ray_starts(monkeypatch, tmp_path, kind, argv, match):
    import ray
    from ray import tune

    def _no_ray(*_a, **_k):
        raise AssertionError("ray.init must not be reached")

    monkeypatch.setattr(ray, "init", _no_ray)
    monkeypatch.setattr(tune, "Tuner", _no_ray)
    with pytest.raises(ConfigError, match=match):
        run_sweep(parse_sweep_args(kind, [*argv, "--out", str(tmp_path)], "x"))
    # the same values given directly in a SweepConfig are caught by run_sweep too
    if kind == "grid" and argv[0] == "--ranks" and "abc" not in argv[1]:
        bad = SweepConfig(kind="grid", ranks=[int(v) for v in argv[1].split(",")], out=str(tmp_path))
        with pytest.raises(ConfigError):
            run_sweep(bad)


def test_failed_trial_is_reported_not_dropped(tmp_path):
    from medslm import trials as T

    cfg = SweepConfig(kind="grid", ranks=[4, 8], alphas=[16], out=str(tmp_path))
    trials = build_trials(cfg)
    metrics = {"final_loss": 1.5, "val_loss": 1.4, "acc_medqa": 0.5, "acc_kormedmcqa": 0.25}
    T.write_trial(tmp_path / "r4-a16", {"stage": "done", "config": T.config_key(trials[0][2]), "metrics": metrics})
    ok = SimpleNamespace(config={"trial": "r4-a16"}, error=None, metrics=metrics)
    bad = SimpleNamespace(config={"trial": "r8-a16"}, error=RuntimeError("boom\nlast line"), metrics={})
    records = collect(trials, [bad, ok], tmp_path)
    assert [r["trial"] for r in records] == ["r4-a16", "r8-a16"]
    assert records[0]["status"] == "ok" and records[0]["metrics"]["acc_medqa"] == 0.5
    assert records[1]["status"] == "failed" and "last line" in records[1]["error"]
    # a trial Tune never returned (the sweep was stopped) is interrupted, not failed
    assert collect(trials, [ok], tmp_path)[1]["status"] == "interrupted"
    table = results_table(records)
    assert "| r8-a16 |" in table and "failed" in table and "50.0%" in table


def test_real_two_trial_grid(tmp_path, ray_session):
    out = tmp_path / "sweep"
    cfg = parse_sweep_args(
        "grid", ["--config", TINY, "--ranks", "4,8", "--alphas", "16", "--out", str(out), "--cpus-per-trial", "1", *FAST],
        "x",
    )
    records = run_sweep(cfg)
    assert [r["trial"] for r in records] == ["r4-a16", "r8-a16"]
    assert all(r["status"] == "ok" for r in records), records
    for r in records:
        run = out / r["trial"]
        assert r["run_dir"] == str(run.resolve())
        ac = json.loads((run / "adapter" / "adapter_config.json").read_text())
        assert (ac["r"], ac["lora_alpha"]) == (r["params"]["r"], 16)
        assert (run / "tb").is_dir() and any((run / "tb").iterdir())
        assert (run / "eval" / "eval.json").is_file()
    doc = json.loads((out / "results.json").read_text())
    assert [t["trial"] for t in doc["trials"]] == ["r4-a16", "r8-a16"]
    for t in doc["trials"]:
        m = t["metrics"]
        for key in ("acc_medqa", "acc_kormedmcqa"):
            assert 0.0 <= m[key] <= 1.0
        assert m["steps"] == 2 and m["final_loss"] > 0 and m["val_loss"] > 0
        assert 0 < m["packing_efficiency"] <= 1
    md = (out / "results.md").read_text()
    assert "| r4-a16 |" in md and "| r8-a16 |" in md
    assert not os.environ.get("WORLD_SIZE")


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--gpus-per-trial", "1.5"], "whole number of GPUs"),
        (["--procs-per-trial", "two"], "must be an integer"),
        (["--procs-per-trial", "-1"], "procs-per-trial"),
    ],
)
def test_multi_process_trial_options_are_checked(tmp_path, argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_sweep_args("grid", [*argv, "--out", str(tmp_path)], "x")


def test_a_finished_multi_process_trial_is_read_back_strictly(tmp_path):
    """An N-process trial's result is read from its run folder: a damaged line of a finished run's
    metrics is named by file and line (never skipped into a shorter loss curve), and so is a
    truncated packing report."""
    from medslm.cli import UserError
    from medslm.trial_launcher import result_of_run

    run = tmp_path / "run"
    run.mkdir()
    lines = [{"step": 1, "kind": "train", "loss": 2.0, "peak_mem_gb": 1.5}, {"step": 1, "kind": "val", "val_loss": 2.5},
             {"step": 2, "kind": "train", "loss": 1.0, "peak_mem_gb": 1.25}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "packing_report.json").write_text(json.dumps({"packing_efficiency": 0.98}))
    got = result_of_run(run)
    assert (got["final_loss"], got["steps"], got["val_losses"], got["peak_mem_gb"], got["packing_efficiency"]) == (1.0, 2, [2.5], 1.5, 0.98)
    (run / "metrics.jsonl").write_text(json.dumps(lines[0]) + "\n" + '{"step": 2, "kind": "tr\n' + json.dumps(lines[2]) + "\n")
    with pytest.raises(RuntimeError, match=rf"{run / 'metrics.jsonl'}:line 2: not valid JSON"):
        result_of_run(run)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    (run / "packing_report.json").write_text('{"packing_eff')
    with pytest.raises(UserError, match=rf"{run / 'packing_report.json'}: not valid JSON"):
        result_of_run(run)


def test_two_process_trial_equals_torchrun_of_its_config(tmp_path, monkeypatch):
    """--procs-per-trial 2 (gloo on CPU; --gpus-per-trial 2 on GPUs) runs each trial as a 2-rank
    FSDP job: its losses equal `torchrun --nproc_per_node 2 train.py` on the trial's config."""
    import subprocess
    import sys

    import ray

    from medslm.sweep import procs_per_trial

    monkeypatch.setenv("RAY_USAGE_STATS_ENABLED", "0")
    out = tmp_path / "sweep"
    argv = ["--config", TINY, "--ranks", "4", "--alphas", "16", "--out", str(out), "--procs-per-trial", "2", *FAST,
            "--train.grad_accum=1", "--lora.dropout=0.0"]
    cfg = parse_sweep_args("grid", argv, "x")
    assert procs_per_trial(cfg) == 2 and procs_per_trial(parse_sweep_args("grid", ["--gpus-per-trial", "4", "--address", "auto"], "x")) == 4
    try:
        records = run_sweep(cfg)
    finally:
        ray.shutdown()
    assert [r["status"] for r in records] == ["ok"], records
    trial_cfg = out / "trials" / "r4-a16.yaml"
    log = (out / "trials" / "r4-a16.log").read_text()
    assert log.count("done: 2 steps") == 1  # one 2-rank job: rank 0 reports
    by_hand = tmp_path / "by-hand"
    env = {k: v for k, v in os.environ.items() if k not in ("WORLD_SIZE", "RANK", "LOCAL_RANK")}
    res = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "train.py",
                          "--config", str(trial_cfg), f"--train.output_dir={by_hand}"],
                         cwd=REPO, env={**env, "OMP_NUM_THREADS": "1"}, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]

    def losses(run):
        recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        return [(r["step"], r["kind"], r.get("loss", r.get("val_loss"))) for r in recs]

    a, b = losses(out / "r4-a16"), losses(by_hand)
    assert [x[:2] for x in a] == [x[:2] for x in b] and len(a) >= 3
    assert [x[2] for x in a] == pytest.approx([x[2] for x in b], rel=1e-6)
    m = records[0]["metrics"]
    assert m["final_loss"] == pytest.approx([x[2] for x in b if x[1] == "train"][-1], rel=1e-6)
    assert m["steps"] == 2 and 0 <= m["acc_medqa"] <= 1 and (out / "r4-a16" / "eval" / "eval.json").is_file()
