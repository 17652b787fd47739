"""train.auto_micro_batch: an out-of-memory error injected at a chosen micro-batch size makes the run
halve its micro-batch and double grad_accum, and the losses equal a run started that way."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from medslm.auto_batch import smaller_micro_batch
from medslm.config import parse_config
from medslm.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
FAST = [
    "--config", str(REPO / "configs" / "tiny.yaml"),
    "--data.max_seq_len=384",
    "--train.warmup_steps=2",
    "--train.progress=false",
    "--train.max_steps=3",
    "--train.save_every=0",
]


def _cfg(out: Path, *extra: str) -> TrainConfig:
    return parse_config(TrainConfig, [*FAST, f"--train.output_dir={out}", *extra])


def _records(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _inject_oom(monkeypatch, rows_at_least: int) -> list[int]:
    """Every second micro-batch of >= ``rows_at_least`` rows runs out of memory in its backward, so
    the step that fails has already accumulated gradients and drawn dropout masks."""
    from medslm import trainer

    real = trainer.batch_loss_sum
    seen: list[int] = []

    def batch_loss_sum(model, batch, packed, device):
        loss, n = real(model, batch, packed, device)
        rows = batch["input_ids"].shape[0]
        if rows >= rows_at_least:
            seen.append(rows)
            if len(seen) % 2 == 0:
                def boom(grad):
                    raise torch.cuda.OutOfMemoryError("CUDA out of memory (injected)")
                loss.register_hook(boom)
        return loss, n

    monkeypatch.setattr(trainer, "batch_loss_sum", batch_loss_sum)
    return seen


def test_smaller_micro_batch_keeps_the_rows_per_rank():
    assert [smaller_micro_batch(m) for m in (1, 2, 3, 4, 6, 8, 12)] == [0, 1, 1, 2, 3, 4, 6]


def test_oom_halves_the_micro_batch_and_the_losses_equal_a_run_started_there(tmp_path, monkeypatch, capsys):
    from medslm.trainer import train

    ref = train(_cfg(tmp_path / "ref", "--train.micro_batch_size=2", "--train.grad_accum=4"))
    seen = _inject_oom(monkeypatch, rows_at_least=4)
    got = train(_cfg(tmp_path / "auto", "--train.micro_batch_size=4", "--train.grad_accum=2", "--train.auto_micro_batch=true"))
    assert seen == [4, 4]  # the first micro-step of step 1 ran, the second ran out
    out = capsys.readouterr().out
    assert "retrying the step with micro_batch_size 2 x grad_accum 4 (global batch 8 rows, unchanged)" in out
    # same rows, same dropout draws: the same losses (dropout 0.05 is on)
    a = {r["step"]: r for r in _records(tmp_path / "ref") if r["kind"] == "train"}
    b = {r["step"]: r for r in _records(tmp_path / "auto") if r["kind"] == "train"}
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert b[step]["loss"] == pytest.approx(a[step]["loss"], rel=1e-6), step
        assert b[step]["grad_norm"] == pytest.approx(a[step]["grad_norm"], rel=1e-5), step
    assert got["final_loss"] == pytest.approx(ref["final_loss"], rel=1e-6)
    assert got["val_losses"] == pytest.approx(ref["val_losses"], rel=1e-6)
    # recorded: config.yaml (also the adapter's copy), metrics.jsonl, the result
    for path in (tmp_path / "auto" / "config.yaml", tmp_path / "auto" / "adapter" / "medslm_config.yaml"):
        saved = yaml.safe_load(path.read_text())["train"]
        assert (saved["micro_batch_size"], saved["grad_accum"]) == (2, 4), path
    events = [r for r in _records(tmp_path / "auto") if r["kind"] == "auto_micro_batch"]
    assert events == [{"step": 1, "kind": "auto_micro_batch", "micro_batch_size": 2, "grad_accum": 4,
                       "previous_micro_batch_size": 4, "previous_grad_accum": 2, "global_batch_rows": 8}]
    assert (got["micro_batch_size"], got["grad_accum"]) == (2, 4)


def test_without_the_option_or_at_micro_batch_1_the_error_stands(tmp_path, monkeypatch):
    from medslm.cli import UserError
    from medslm.trainer import train

    _inject_oom(monkeypatch, rows_at_least=1)
    with pytest.raises(UserError, match=r"CUDA out of memory at train.micro_batch_size=2.*auto_micro_batch=true"):
        train(_cfg(tmp_path / "off", "--train.micro_batch_size=2", "--train.grad_accum=1"))
    with pytest.raises(UserError, match="CUDA out of memory at train.micro_batch_size=1"):
        train(_cfg(tmp_path / "on", "--train.micro_batch_size=2", "--train.grad_accum=1", "--train.auto_micro_batch=true"))
