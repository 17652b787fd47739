"""One small metrics interface: TensorBoard + JSON Lines on rank 0, a no-op elsewhere; peak memory."""

from __future__ import annotations

import json
import math
import resource
import threading
from pathlib import Path
from typing import Any

import torch


def strict_json(record: dict[str, Any]) -> dict[str, Any]:
    """nan and inf as null: ``json.dumps`` would write NaN/Infinity, which strict JSON readers reject."""
    return {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}


class MetricsLogger:
    """``log(step, {...})`` writes one strict JSON object per call to metrics.jsonl and scalars to TensorBoard."""

    def __init__(self, output_dir: str | Path, enabled: bool, resume_step: int = 0):
        self.enabled = enabled
        self._tb = None
        self._file = None
        if not enabled:
            return
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        path = out / "metrics.jsonl"
        if path.exists():  # a resumed run: drop records after the checkpoint we continue from
            kept = []
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut short by a kill
                if rec.get("step", 0) <= resume_step:
                    kept.append(line)
            path.write_text("".join(k + "\n" for k in kept), encoding="utf-8")
        self._file = path.open("a", encoding="utf-8")
        from torch.utils.tensorboard import SummaryWriter

        # events after the step this run starts from (all of them at step 0) belong to a run that was cut short
        self._tb = SummaryWriter(log_dir=str(out / "tb"), purge_step=resume_step + 1)

    def log(self, step: int, record: dict[str, Any], kind: str = "train") -> None:
        if not self.enabled:
            return
        rec = strict_json({"step": step, "kind": kind, **record})
        assert self._file is not None and self._tb is not None
        self._file.write(json.dumps(rec, ensure_ascii=False, allow_nan=False) + "\n")
        self._file.flush()
        for key, value in rec.items():
            if key in ("step", "kind"):
                continue
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._tb.add_scalar(f"{kind}/{key}", value, step)
        self._tb.flush()

    def text(self, tag: str, text: str) -> None:
        if self.enabled and self._tb is not None:
            self._tb.add_text(tag, text)

    def close(self) -> None:
        if self._file:
            self._file.close()
        if self._tb:
            self._tb.close()


class PeakMemory:
    """Peak memory in GB: torch's CUDA peak plus NVML samples every 30 s on GPU; peak RSS on CPU."""

    def __init__(self, device: torch.device, nvml_interval_s: float = 30.0):
        self.device = device
        self.nvml_peak_bytes = 0
        self._stop = threading.Event()
        self._thread = None
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)
            handle = _nvml_handle(device)
            if handle is not None:
                self._thread = threading.Thread(target=self._sample, args=(handle, nvml_interval_s), daemon=True)
                self._thread.start()

    def _sample(self, handle: Any, interval: float) -> None:
        import pynvml  # type: ignore[import-not-found]

        while True:
            used = pynvml.nvmlDeviceGetMemoryInfo(handle).used
            self.nvml_peak_bytes = max(self.nvml_peak_bytes, int(used))
            if self._stop.wait(interval):
                return

    def peak_gb(self) -> float:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) / 1e9
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 1e9  # Linux: KiB

    def nvml_peak_gb(self) -> float | None:
        return self.nvml_peak_bytes / 1e9 if self._thread is not None else None

    def close(self) -> None:
        self._stop.set()


def _nvml_handle(device: torch.device) -> Any:
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
    except Exception:  # no NVML: torch's own peak is still reported
        return None


def read_records(run_dir: str | Path) -> list[dict[str, Any]]:
    """The records of ``run_dir/metrics.jsonl`` in order ([] when there is none); a line cut short
    by a kill is left out."""
    path = Path(run_dir) / "metrics.jsonl"
    records = []
    for line in path.read_text(encoding="utf-8").splitlines() if path.is_file() else []:
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            records.append(rec)
    return records


def last_logged_step(run_dir: str | Path) -> int:
    """The highest step in ``run_dir/metrics.jsonl`` (0 when there is none)."""
    return max((r["step"] for r in read_records(run_dir) if isinstance(r.get("step"), int)), default=0)


def log_eval_accuracy(run_dir: str | Path, benchmarks: dict[str, Any], split: str) -> list[str]:
    """Write evaluate.py's accuracies into the run's TensorBoard folder, at the run's last step,
    as ``eval_<split>/<benchmark>`` and ``eval_<split>/<benchmark>/<subject>``; returns the tags."""
    from torch.utils.tensorboard import SummaryWriter

    step = last_logged_step(run_dir)
    tags = []
    writer = SummaryWriter(log_dir=str(Path(run_dir) / "tb"))
    try:
        for bench, summ in benchmarks.items():
            scalars = {f"eval_{split}/{bench}": summ["accuracy"]}
            scalars.update({f"eval_{split}/{bench}/{subj}": s["accuracy"] for subj, s in summ.get("subjects", {}).items()})
            for tag, value in scalars.items():
                writer.add_scalar(tag, value, step)
                tags.append(tag)
    finally:
        writer.close()
    return tags
