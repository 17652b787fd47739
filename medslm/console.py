"""What an operator reads: the start banner, warnings, and progress that suits where stdout goes.

On a terminal, progress is a tqdm bar (on stderr). When stdout is a file or a pipe (SLURM, nohup,
Ray workers), tqdm's carriage returns make the log unreadable, so the same progress becomes one
plain line on stdout every ``every`` steps::

    train step 40/300 | epoch 0.40 | loss 1.2345 | lr 2.00e-04 | tok/s 1,234 | peak 3.21 GB | eta 0:12:34

transformers' and the hub's own bars (model loading, downloads) are silenced with
:func:`quiet_hf_progress` where a run does not want them.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Iterator
from typing import Any, TextIO


def interactive(stream: TextIO | None = None) -> bool:
    """Is ``stream`` (stdout) a terminal? Logs written to files get plain lines instead of bars."""
    stream = stream if stream is not None else sys.stdout
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_eta(seconds: float) -> str:
    if not math.isfinite(seconds) or seconds < 0:
        return "?"
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


class Progress:
    """``update(n, **fields)``; a tqdm bar on a terminal, plain lines every ``every`` units elsewhere,
    nothing when disabled. ``fields`` are preformatted strings (``loss="1.2345"``)."""

    def __init__(
        self,
        total: int,
        desc: str,
        unit: str = "step",
        initial: int = 0,
        enabled: bool = True,
        every: int = 1,
        stream: TextIO | None = None,
        clock: Any = time.monotonic,
    ):
        self.total, self.desc, self.unit = total, desc, unit
        self.done = initial
        self.every = max(1, every)
        self.stream = stream if stream is not None else sys.stdout
        self._clock = clock
        self._t0 = clock()
        self._start = initial
        self._bar = None
        self.mode = "off"
        if enabled:
            self.mode = "bar" if interactive(self.stream) else "lines"
        if self.mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, dynamic_ncols=True, file=sys.stderr)

    def eta_s(self) -> float:
        done = self.done - self._start
        if done <= 0:
            return float("nan")
        return (self._clock() - self._t0) / done * (self.total - self.done)

    def line(self, **fields: str) -> str:
        parts = [f"{self.desc} {self.unit} {self.done}/{self.total}", *(f"{k} {v}" for k, v in fields.items())]
        parts.append(f"eta {format_eta(self.eta_s())}")
        return " | ".join(parts)

    def update(self, n: int = 1, **fields: str) -> None:
        before = self.done
        self.done += n
        if self.mode == "bar":
            assert self._bar is not None
            self._bar.update(n)
            if fields:
                self._bar.set_postfix(fields)
        elif self.mode == "lines":
            crossed = self.done // self.every > before // self.every
            if crossed or self.done >= self.total:
                print(self.line(**fields), file=self.stream, flush=True)

    def note(self, text: str) -> None:
        """A line between updates (e.g. a validation loss), in either mode; nothing when disabled."""
        if self.mode == "bar":
            from tqdm import tqdm

            tqdm.write(text, file=sys.stderr)
        elif self.mode == "lines":
            print(text, file=self.stream, flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def progress_iter(items: list[Any], desc: str, unit: str, enabled: bool) -> Iterator[Any]:
    """Iterate with a :class:`Progress` (a line every tenth of the way when not on a terminal)."""
    with Progress(len(items), desc, unit, enabled=enabled, every=max(1, len(items) // 10)) as bar:
        for x in items:
            yield x
            bar.update(1)


@contextlib.contextmanager
def quiet_hf_progress(quiet: bool = True) -> Iterator[None]:
    """Silence transformers' and huggingface_hub's progress bars (loading weights, downloads)
    inside the block, and restore them after."""
    if not quiet:
        yield
        return
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars
    from transformers.utils import logging as hf_logging

    hub_was_off = are_progress_bars_disabled()
    tf_was_on = hf_logging.is_progress_bar_enabled()
    disable_progress_bars()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if not hub_was_off:
            enable_progress_bars()
        if tf_was_on:
            hf_logging.enable_progress_bar()


def warn(message: str) -> None:
    print(f"warning: {message}", file=sys.stderr, flush=True)


def sample_data_warning(model_name: str, data: Any) -> str | None:
    """A non-embedded model trained or evaluated on the embedded sample items says so."""
    from medslm.modeling import EMBEDDED

    if model_name in EMBEDDED:
        return None
    on_samples = [k for k in ("medqa", "kormedmcqa") if "embedded" in (getattr(data, k, None) or [])]
    if not on_samples:
        return None
    keys = " and ".join(f"data.{k}" for k in on_samples)
    fix = " ".join(f"--data.{k}=..." for k in on_samples)
    return (
        f"model {model_name!r} is a real model, but {keys} {'is' if len(on_samples) == 1 else 'are'} the embedded sample "
        f"items (a few dozen, for smoke tests): its numbers mean nothing; give your data with {fix}"
    )


def _count(n: int) -> str:
    return f"{n:,d}"


def train_banner(
    *,
    cfg: Any,
    model: Any,
    dist: Any,
    report: dict[str, Any],
    trainable: int,
    n_rows: int,
    n_val_rows: int,
    steps_per_epoch: int,
    total_steps: int,
    global_rows: int,
    output_dir: str,
    start_step: int,
    resume_path: Any,
) -> str:
    """The lines rank 0 prints before the first step."""
    from medslm.multimodal import describe

    m, t = cfg.model, cfg.train
    quant = f"nf4{' + double quant' if m.double_quant else ''}" if m.quantization == "nf4" else "none (bf16/fp32 base)"
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    dtype = next((p.dtype for p in base.parameters() if p.is_floating_point()), None)
    fsdp = dist.distributed and cfg.distributed.fsdp
    dev = str(dist.device) if dist.world_size == 1 else f"{dist.device.type} x {dist.world_size} (rank 0 on {dist.device})"
    lang = report.get("per_language", {})
    subjects = (report.get("mix") or {}).get("by_subject", {})
    lang_text = ", ".join(f"{k} {_count(v)}" for k, v in lang.items()) or "?"
    subj_text = ", ".join(f"{k} {_count(v)}" for k, v in subjects.items())
    packing = f"packed rows of {report.get('max_seq_len', cfg.data.max_seq_len)} tokens" if cfg.data.packing else "one example per row"
    eff = report.get("packing_efficiency")
    lines = [
        "medslm train",
        f"  model       {m.name_or_path} ({describe(model)})",
        f"  quantised   {quant}; compute {str(dtype).replace('torch.', '') if dtype else '?'}; "
        f"activation checkpointing {'on' if m.gradient_checkpointing else 'off'}",
        f"  adapter     LoRA r{cfg.lora.r} alpha {cfg.lora.alpha} dropout {cfg.lora.dropout}: {_count(trainable)} trainable parameters",
        f"  devices     {dev}; world size {dist.world_size}; FSDP2 adapter sharding {'on' if fsdp else 'off'}"
        + ("" if fsdp or dist.world_size == 1 else " (gradients all-reduced)"),
        f"  data        {_count(report.get('num_samples', 0))} training items ({lang_text}; ratio {report.get('ratio', cfg.data.ratio)}), "
        f"{_count(report.get('val_samples', 0))} validation, {_count(report.get('test_items', 0))} test held out",
    ]
    if subj_text:
        lines.append(f"  subjects    {subj_text}")
    lines += [
        f"  rows        {_count(n_rows)} {packing}" + (f" (efficiency {eff:.1%})" if eff is not None and cfg.data.packing else "")
        + f", {_count(n_val_rows)} validation rows",
        f"  steps       {_count(steps_per_epoch)}/epoch x {t.epochs} epochs" + (f", capped at max_steps {t.max_steps}" if t.max_steps else "")
        + f" = {_count(total_steps)} steps; global batch {global_rows} rows "
        f"({t.micro_batch_size} x grad_accum {t.grad_accum} x {dist.world_size} rank{'s' if dist.world_size > 1 else ''})",
        f"  output      {output_dir}",
    ]
    if resume_path is not None:
        lines.append(f"  resumed     from step {start_step} ({resume_path})")
    return "\n".join(lines)


__all__ = ["Progress", "format_eta", "interactive", "progress_iter", "quiet_hf_progress", "sample_data_warning", "train_banner", "warn"]
