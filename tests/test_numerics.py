"""Numbers: nan/inf in any config key and a LoRA alpha <= 0 are refused before anything loads; a
non-finite loss or gradient norm stops the run at that step; a NaN adapter is never written;
metrics.jsonl is strict JSON."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from conftest import tiny_run
from medslm.config import ConfigError, parse_config
from medslm.metrics import MetricsLogger
from medslm.numerics import NonFiniteError
from medslm.train_config import TrainConfig, TrainSection

FAST = tiny_run("--train.micro_batch_size=2", "--train.grad_accum=1", "--train.warmup_steps=0")


def _strict_lines(path: Path) -> list[dict]:
    def refuse(name):
        raise ValueError(f"{path}: {name} is not JSON")

    return [json.loads(line, parse_constant=refuse) for line in path.read_text().splitlines()]


@pytest.mark.parametrize(
    "argv, key",
    [
        (["--train.lr=inf"], "train.lr"),
        (["--train.lr=nan"], "train.lr"),
        (["--train.max_grad_norm=-inf"], "train.max_grad_norm"),
        (["--lora.dropout=NaN"], "lora.dropout"),
        (["--train.adam_betas=0.9,inf"], "train.adam_betas"),
    ],
)
def test_non_finite_numbers_in_any_key_are_refused(argv, key):
    with pytest.raises(ConfigError, match=f"'{key}' must be a finite number"):
        parse_config(TrainConfig, argv)


@pytest.mark.parametrize("lr", ["1e300", "2", "0", "-1e-4"])
def test_a_learning_rate_outside_zero_to_one_is_refused_before_training(lr):
    """lr=1e300 is finite but overflows inside AdamW's step (a traceback mid-run): refused up front."""
    with pytest.raises(ConfigError, match=r"train.lr must be in \(0, 1\]"):
        parse_config(TrainConfig, [f"--train.lr={lr}"])
    assert parse_config(TrainConfig, ["--train.lr=1"]).train.lr == 1.0


def test_non_finite_numbers_in_yaml_are_refused(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("train:\n  weight_decay: .nan\n")
    with pytest.raises(ConfigError, match=r"c.yaml: 'train.weight_decay' must be a finite number"):
        parse_config(TrainConfig, ["--config", str(f)])
    f.write_text("train:\n  epochs: .inf\n")  # an int key
    with pytest.raises(ConfigError, match="'train.epochs' must be an integer"):
        parse_config(TrainConfig, ["--config", str(f)])


@pytest.mark.parametrize("alpha", ["0", "-16"])
def test_a_lora_alpha_that_is_not_positive_is_refused(alpha):
    with pytest.raises(ConfigError, match=f"lora.alpha must be > 0, got {alpha}"):
        parse_config(TrainConfig, [f"--lora.alpha={alpha}"])


def test_metrics_jsonl_is_strict_json(tmp_path):
    log = MetricsLogger(tmp_path, enabled=True)
    log.log(1, {"loss": math.nan, "grad_norm": math.inf, "lr": 1e-3})
    log.close()
    (rec,) = _strict_lines(tmp_path / "metrics.jsonl")
    assert rec == {"step": 1, "kind": "train", "loss": None, "grad_norm": None, "lr": 1e-3}


def test_a_diverging_run_stops_at_the_first_non_finite_step_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    """lr=1e30 (set past the config's (0, 1] check, which refuses it up front) stands for any run
    that diverges: step 1 trains, step 2's loss is nan. Before the guard it trained on to an
    all-NaN adapter with exit 0."""
    from medslm.trainer import train

    out = tmp_path / "run"
    cfg = parse_config(TrainConfig, [*FAST, f"--train.output_dir={out}", "--train.max_steps=4", "--train.save_every=1"])
    cfg.train.lr = 1e30
    monkeypatch.setattr(TrainSection, "validate", lambda self: None)
    with pytest.raises(NonFiniteError, match=r"^step 2: the loss is nan .*the last checkpoint, .*step-00000001, is kept"):
        train(cfg)
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-00000001"]
    assert not (out / "adapter").exists()
    assert [r["step"] for r in _strict_lines(out / "metrics.jsonl")] == [1]


def test_an_adapter_holding_nan_is_never_written(tmp_path, monkeypatch):
    """An update that leaves a NaN in the adapter: neither a checkpoint nor the result is written."""
    from medslm.trainer import train

    step = torch.optim.AdamW.step

    def poisoned_step(self, *args, **kwargs):
        out = step(self, *args, **kwargs)
        with torch.no_grad():
            self.param_groups[0]["params"][0].view(-1)[0] = math.nan
        return out

    monkeypatch.setattr(torch.optim.AdamW, "step", poisoned_step)
    # no validation pass: its nan loss would stop the run first (tested in test_resume.py)
    monkeypatch.setattr("medslm.trainer.validation_loss", lambda s, dist: None)
    out = tmp_path / "run"
    cfg = parse_config(TrainConfig, [*FAST, f"--train.output_dir={out}", "--train.max_steps=1"])
    with pytest.raises(NonFiniteError, match=r"^step 1: 1 of the adapter's \d+ tensors hold nan or inf .*not written"):
        train(cfg)
    assert not (out / "adapter").exists()
    assert not list(out.glob("checkpoints/step-*"))
