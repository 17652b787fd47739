"""What an operator reads: progress as plain lines in a log file, bars only on a terminal, quiet
model loading, the banner and the world size a run records."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
import yaml

from medslm import console


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_every_n_steps_with_eta_when_stdout_is_a_file():
    out, clock = io.StringIO(), _Clock()
    bar = console.Progress(10, "train", "step", enabled=True, every=4, stream=out, clock=clock)
    assert bar.mode == "lines"
    for _ in range(10):
        clock.t += 2.0  # two seconds a step
        bar.update(1, loss="1.0000", lr="1.00e-04")
    bar.close()
    lines = out.getvalue().splitlines()
    assert lines == [
        "train step 4/10 | loss 1.0000 | lr 1.00e-04 | eta 0:00:12",
        "train step 8/10 | loss 1.0000 | lr 1.00e-04 | eta 0:00:04",
        "train step 10/10 | loss 1.0000 | lr 1.00e-04 | eta 0:00:00",  # the last step always gets its line
    ]
    assert "\r" not in out.getvalue()


def test_resumed_progress_counts_eta_from_where_it_started():
    out, clock = io.StringIO(), _Clock()
    bar = console.Progress(100, "train", "step", initial=90, every=5, stream=out, clock=clock)
    for _ in range(5):
        clock.t += 1.0
        bar.update(1)
    assert out.getvalue().splitlines() == ["train step 95/100 | eta 0:00:05"]


def test_a_terminal_gets_a_bar_and_disabled_progress_prints_nothing(capsys):
    bar = console.Progress(3, "x", stream=_Tty())
    bar.update(3)
    bar.close()
    assert bar.mode == "bar" and "3/3" in capsys.readouterr().err
    out = io.StringIO()
    quiet = console.Progress(3, "x", enabled=False, stream=out)
    quiet.update(3)
    quiet.note("validation loss 1.0")
    quiet.close()
    assert quiet.mode == "off" and out.getvalue() == "" and capsys.readouterr() == ("", "")


@pytest.mark.parametrize("progress", [True, False])
def test_evaluate_no_progress_silences_the_model_loading_bars(monkeypatch, capsys, progress):
    """On a terminal, --no-progress (progress=False) also hides transformers' loading bars."""
    from medslm.evaluation import EvalConfig, load_for_eval

    monkeypatch.setattr(console, "interactive", lambda stream=None: True)
    load_for_eval(EvalConfig(model="embedded", quantization="none", progress=progress))
    assert ("Loading weights" in capsys.readouterr().err) == progress


def test_sample_data_warning_only_for_a_real_model_on_the_samples():
    from medslm.dataset import DataConfig

    assert console.sample_data_warning("embedded", DataConfig()) is None
    assert console.sample_data_warning("/models/llama", DataConfig(medqa=["/data/us"], kormedmcqa=["/data/ko"])) is None
    text = console.sample_data_warning("/models/llama", DataConfig(medqa=["/data/us"]))
    assert "data.kormedmcqa is the embedded sample" in text and "data.medqa" not in text


def test_world_size_is_recorded_and_checked(tmp_path, capsys):
    from medslm.cli import UserError
    from medslm.config import parse_config
    from medslm.train_config import TrainConfig
    from medslm.trainer import train

    base = ["--data.max_seq_len=384", "--train.micro_batch_size=8", "--train.grad_accum=1", "--train.progress=false",
            "--model.quantization=none", "--model.gradient_checkpointing=false"]
    with pytest.raises(UserError, match=r"distributed.world_size: the config says 2 ranks but this run has 1"):
        train(parse_config(TrainConfig, [*base, "--distributed.world_size=2", f"--train.output_dir={tmp_path / 'x'}"]))
    train(parse_config(TrainConfig, [*base, "--train.max_steps=1", f"--train.output_dir={tmp_path / 'run'}"]))
    saved = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    assert saved["distributed"]["world_size"] == 1
    banner = capsys.readouterr().out
    for part in ("medslm train", "model       embedded (LlamaForCausalLM)", "world size 1", "FSDP2 adapter sharding off",
                 "training items (en ", "subjects    en/", "steps       ", "global batch 8 rows", f"output      {Path(tmp_path / 'run')}"):
        assert part in banner, part
