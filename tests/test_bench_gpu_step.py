"""bench/gpu_step.py at its CPU shape: medslm's real training path and TRL's SFTTrainer on the same
items in one run, one JSON line with the figures the GPU run reports."""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_gpu_step_bench_runs_medslm_and_trl_on_the_same_items(tmp_path):
    pytest.importorskip("trl")
    cmd = [sys.executable, "bench/gpu_step.py", "--shape", "tiny", "--configs", "eager,lora,trl", "--steps", "3",
           "--skip", "1", "--parity", "eager,lora", "--parity-steps", "3", "--profile", "lora", "--headline", "lora",
           "--trace", "lora", "--out", str(tmp_path / "out")]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "TOKENIZERS_PARALLELISM": "false"}
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    cfgs = out["configs"]
    assert not [name for name, c in cfgs.items() if "error" in c], cfgs
    for key in ("medslm_tokens_per_s", "trl_tokens_per_s", "speedup_vs_trl", "medslm_peak_gb", "trl_peak_gb", "matmul_share", "elementwise_share"):
        assert key in out, key
    assert out["medslm_tokens_per_s"] > 0 and out["trl_tokens_per_s"] > 0
    assert out["speedup_vs_trl"] == pytest.approx(out["medslm_tokens_per_s"] / out["trl_tokens_per_s"], rel=1e-2)
    # the same items: both sides train on about the same number of real tokens per step (2 x 512)
    assert cfgs["trl"]["tokens_per_step"] == pytest.approx(cfgs["eager"]["tokens_per_step"], rel=0.05)
    assert cfgs["eager"]["tokens_per_step"] > 0.9 * 2 * 512
    # the fused LoRA forward inside the real trainer is PEFT's function: same losses on CPU fp32
    assert out["loss_parity_vs_eager"]["lora"]["max_rel_loss_diff"] < 1e-6
    # parity runs take the same number of steps, profiled or not (the step count sets the schedule)
    runs = json.loads((tmp_path / "out" / "results.json").read_text())
    assert runs["eager"]["steps"] == runs["lora"]["steps"] == 3 + 3
    # the profiler's warm-up step traces and runs slower: it lies after the timed window
    assert runs["lora"]["timed_window"] == [2, 3] and runs["lora"]["profiled_from_step"] == 4
    assert runs["eager"]["timed_window"] == [2, 6] and runs["eager"]["profiled_from_step"] is None
    prof = json.loads((tmp_path / "out" / "profile_lora.json").read_text())
    assert sum(prof["shares"].values()) == pytest.approx(1.0, abs=1e-3)
    assert 0 < out["matmul_share"] < 1 and out["matmul_share"] == prof["shares"]["matmul"]
    # the unprofiled timed steps (2 and 3 of 3 + 3 profiled): their median step time, in ms
    assert prof["median_step_ms"] == pytest.approx(1e3 * statistics.median(runs["lora"]["step_s"][1:3]), abs=0.1)
    # the profiled timeline comes back for reading the gaps between kernels; the unprofiled run has none
    import gzip

    trace = json.loads(gzip.open(tmp_path / "out" / "trace_lora.json.gz").read())
    assert any(e.get("name", "").startswith("aten::mm") for e in trace["traceEvents"])
    assert not (tmp_path / "out" / "trace_eager.json.gz").exists()
    # time in Python's collector per timed step, per generation
    for name in ("eager", "lora"):
        assert runs[name]["gc_ms_per_step"] >= 0 and set(runs[name]["gc_collections_per_step"]) == {"gen0", "gen1", "gen2"}
        assert cfgs[name]["median_tokens_per_s"] > 0
        assert cfgs[name]["adamw"] == "unfused"  # train.adamw=auto on a CPU


def test_gpu_step_bench_refuses_a_configuration_named_twice(tmp_path):
    """Each configuration has one run folder and one result: naming one twice made the second run
    fail on the first's folder and replace its result; it is refused before any model is built."""
    proc = subprocess.run([sys.executable, "bench/gpu_step.py", "--shape", "tiny", "--configs", "eager,fast,eager", "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    assert "['eager'] named more than once" in proc.stderr
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("flag, value", [("--rows", "0"), ("--seq-len", "-512"), ("--layers", "0")])
def test_gpu_step_bench_refuses_a_step_shape_that_is_not_positive(tmp_path, flag, value):
    """--rows 0 would have silently meant the shape's default rows; every override must be >= 1,
    and it is refused before any model is built, naming the flag."""
    proc = subprocess.run([sys.executable, "bench/gpu_step.py", "--shape", "tiny", flag, value, "--out", str(tmp_path)],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert f"argument {flag}: must be a positive integer, got {value}" in proc.stderr
    assert not list(tmp_path.iterdir())


def test_the_window_clock_times_the_steps_after_skip_up_to_the_last_timed_one():
    """tokens/s in the bench is the timed steps' tokens over this clock's window: the end of step
    ``skip`` to the end of the last timed step (device-synchronised there on a GPU)."""
    import time

    import torch

    sys.path.insert(0, str(REPO))
    from bench.gpu_step import WindowClock

    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.1)
    clock = WindowClock(2, 4, cuda=False)
    try:
        for pause in (0.6, 0.6, 0.05, 0.05, 0.6):  # steps 1-2 (compile warm-up), 3-4 timed, 5 profiled
            time.sleep(pause)
            opt.step()
    finally:
        seconds = clock.close()
    assert 0.1 <= seconds < 0.5  # a window taking in step 2 or 5 would be over 0.7 s
    opt.step()
    assert clock.steps == 5  # the hook is gone once closed
    assert WindowClock(3, 3, cuda=False).close() is None  # no timed step: the bench falls back to the logged times


def test_trace_gaps_finds_the_idle_time_the_starved_stretch_and_the_host_waits():
    """bench/trace_gaps.py on a made-up timeline: kernels busy 0-10 ms and 30-40 ms, two short
    kernels between them (a host launching one by one), a 12 ms stream synchronisation and an
    optimizer step on the host inside the gap."""
    sys.path.insert(0, str(REPO))
    from bench.trace_gaps import gaps

    k = lambda ts, dur, name="k": {"ph": "X", "cat": "kernel", "ts": ts, "dur": dur, "name": name}  # noqa: E731
    trace = {"traceEvents": [
        k(1000, 10000), k(15000, 100), k(22000, 100, "multi_tensor_apply"), k(31000, 10000),
        {"ph": "X", "cat": "cuda_runtime", "ts": 2000, "dur": 12000, "tid": 7, "name": "cudaStreamSynchronize"},
        {"ph": "X", "cat": "cuda_runtime", "ts": 9000, "dur": 500, "tid": 7, "name": "cudaStreamSynchronize"},  # under 1 ms
        {"ph": "X", "cat": "user_annotation", "ts": 16000, "dur": 5000, "tid": 7, "name": "Optimizer.step#AdamW.step"},
        {"ph": "X", "cat": "cpu_op", "ts": 3000, "dur": 2000, "tid": 7, "name": "aten::mm"},  # while the device is busy
    ]}
    out = gaps(trace, top=2)
    assert (out["span_ms"], out["busy_ms"], out["idle_ms"]) == (40.0, 20.2, 19.8)
    assert [g["ms"] for g in out["longest_idle"]] == [8.9, 6.9]
    assert out["longest_idle"][0]["ended_by"] == "k" and out["longest_idle"][1]["ended_by"] == "multi_tensor_apply"
    (st,) = out["starved"]
    assert st["ms"] == 20.0 and st["at_ms"] == 10.0 and st["busy_share"] == 0.01
    assert [o["op"] for o in st["host_ops"]] == ["Optimizer.step#AdamW.step"]
    assert out["host_waits"] == [{"ms": 12.0, "at_ms": 1.0, "tid": 7, "call": "cudaStreamSynchronize"}]


@pytest.mark.parametrize("content,needle", [(None, "not a readable trace"), (b"{not json", "not a readable trace"),
                                            (b'{"schemaVersion": 1}', "no traceEvents list"),
                                            (b'{"traceEvents": []}', "no device kernels")])
def test_trace_gaps_names_the_file_it_cannot_read(tmp_path, content, needle):
    path = tmp_path / "trace_fast.json"
    if content is not None:
        path.write_bytes(content)
    proc = subprocess.run([sys.executable, "bench/trace_gaps.py", str(path)], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and needle in proc.stderr and "Traceback" not in proc.stderr
    assert f"error: {path}: " in proc.stderr


@pytest.mark.parametrize("rng,same", [("eager", True), ("inductor", False)])
def test_dropout_masks_bench_tells_eager_masks_from_other_ones_at_medgemmas_layer_shape(rng, same):
    """bench/dropout_masks.py on CPU (one MedGemma-4B-shaped layer, fp32): the fast path with
    model.compile_rng=eager draws eager's masks (gradients equal to rounding); with inductor's
    own masks, the control, the adapter gradients differ by about their size."""
    proc = subprocess.run([sys.executable, "bench/dropout_masks.py", "--layers", "1", "--seq-len", "64", "--rng", rng],
                          cwd=REPO, env={**os.environ, "OMP_NUM_THREADS": "2"}, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["same_masks"] is same and out["lever"] == "fast" and out["dtype"] == "float32"
    projections = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
    assert set(out["by_module"]) == {f"{p}.lora_{m}" for p in projections for m in "AB"}  # every adapted module, named
    if same:
        assert max(out["worst_grads"].values()) < 1e-4 and out["loss_rel_diff"] < 1e-5
    else:
        assert out["median_grad_diff"] > 0.3
