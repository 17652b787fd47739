"""Where a profiled GPU step's device sat idle, read from a timeline ``bench/gpu_step.py --trace`` saved.

    python bench/trace_gaps.py trace_fast.json.gz

Prints one JSON object: the device's busy and idle milliseconds over the profiled steps; the
longest single idle gaps (with the kernel that ended each); the starved stretches: runs of 1 ms
slices in which the device was less than half busy (a step boundary where the host launches
small kernels one by one shows as many short gaps, not one long one), each with its busy share
and the host operations over 1 ms inside it; and the host's waits for the device
(``cudaStreamSynchronize`` / ``cudaDeviceSynchronize`` over 1 ms, on which thread and when).
Times are in ms from the first kernel. The profiler slows the host, so host times are upper
bounds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math

DEVICE = ("kernel", "gpu_memcpy", "gpu_memset")
HOST = ("cpu_op", "user_annotation", "python_function")


def gaps(trace: dict, top: int = 5) -> dict:
    events = [e for e in trace["traceEvents"] if e.get("ph") == "X"]
    kernels = sorted((e for e in events if e.get("cat") in DEVICE), key=lambda e: e["ts"])
    if not kernels:
        raise ValueError("the trace holds no device kernels (a CPU run?)")
    t0 = kernels[0]["ts"]
    end = kernels[0]["ts"] + kernels[0]["dur"]
    idle = []  # (ms, start, the kernel that ended it)
    busy = kernels[0]["dur"]
    for e in kernels[1:]:
        if e["ts"] > end:
            idle.append(((e["ts"] - end) / 1e3, end, e["name"]))
        busy += max(0.0, e["ts"] + e["dur"] - max(end, e["ts"]))
        end = max(end, e["ts"] + e["dur"])
    idle.sort(reverse=True)
    waits = sorted((e for e in events if e.get("cat") in ("cuda_runtime", "cuda_driver") and "Synchronize" in e["name"]
                    and e["dur"] > 1e3), key=lambda e: e["ts"])
    ms = lambda ts: round((ts - t0) / 1e3, 2)  # noqa: E731
    return {
        "span_ms": round((end - t0) / 1e3, 2),
        "busy_ms": round(busy / 1e3, 2),
        "idle_ms": round((end - t0 - busy) / 1e3, 2),
        "longest_idle": [{"ms": round(d, 2), "at_ms": ms(s), "ended_by": n[:80]} for d, s, n in idle[:top]],
        "starved": [{**st, "at_ms": ms(st["at_ms"]), "host_ops": [
            {"ms": round(e["dur"] / 1e3, 2), "at_ms": ms(e["ts"]), "tid": e["tid"], "op": e["name"][:80]}
            for e in sorted(events, key=lambda e: e["ts"])
            if e.get("cat") in HOST and e["dur"] > 1e3 and st["at_ms"] <= e["ts"] < st["at_ms"] + st["ms"] * 1e3]}
            for st in starved(kernels, t0, end)[:top]],
        "host_waits": [{"ms": round(e["dur"] / 1e3, 2), "at_ms": ms(e["ts"]), "tid": e["tid"], "call": e["name"]} for e in waits],
    }


def starved(kernels: list[dict], t0: float, end: float, slice_us: float = 1e3) -> list[dict]:
    """Runs of ``slice_us`` slices with the device under half busy, longest first (``at_ms`` in
    the trace's own microseconds, for the caller to convert)."""
    n = math.ceil((end - t0) / slice_us)  # the last slice ends at or after the last kernel
    share = [0.0] * n
    for e in kernels:
        a, b = e["ts"] - t0, e["ts"] + e["dur"] - t0
        for i in range(int(a // slice_us), min(n, int(b // slice_us) + 1)):
            share[i] += max(0.0, min(b, (i + 1) * slice_us) - max(a, i * slice_us)) / slice_us
    runs, i = [], 0
    while i < n:
        if share[i] < 0.5:
            j = i
            while j < n and share[j] < 0.5:
                j += 1
            runs.append({"ms": round((j - i) * slice_us / 1e3, 2), "at_ms": t0 + i * slice_us,
                         "busy_share": round(sum(share[i:j]) / (j - i), 3)})
            i = j
        else:
            i += 1
    return sorted(runs, key=lambda r: -r["ms"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("trace", help="a trace_<name>.json.gz (or .json) from bench/gpu_step.py --trace")
    ap.add_argument("--top", type=int, default=5, help="idle stretches listed")
    a = ap.parse_args()
    opener = gzip.open if a.trace.endswith(".gz") else open
    try:
        with opener(a.trace, "rt") as f:
            trace = json.load(f)
    except (OSError, EOFError, json.JSONDecodeError) as e:  # missing, truncated gzip, not JSON
        raise SystemExit(f"error: {a.trace}: not a readable trace ({e})") from None
    if not isinstance(trace, dict) or not isinstance(trace.get("traceEvents"), list):
        raise SystemExit(f"error: {a.trace}: no traceEvents list (not a torch.profiler chrome trace)")
    try:
        out = gaps(trace, a.top)
    except ValueError as e:
        raise SystemExit(f"error: {a.trace}: {e}") from None
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
