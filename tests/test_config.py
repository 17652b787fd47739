"""Typed config: YAML then --section.key=value overrides; unknown keys and bad values fail early."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from medslm.config import ConfigError, load_saved_config, parse_config, parse_ratio, save_config
from medslm.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
SHIPPED = sorted((REPO / "configs").glob("*.yaml"))


PAPER = ("medgemma-4b.yaml", "llama-3.3-70b.yaml")  # they name no data: the user's own must be given
DATA = ["--data.medqa=/data/medqa/US", "--data.kormedmcqa=/data/KorMedMCQA"]


@pytest.mark.parametrize("path", SHIPPED, ids=[p.name for p in SHIPPED])
def test_every_shipped_config_loads_and_validates(path):
    cfg = parse_config(TrainConfig, ["--config", str(path), *(DATA if path.name in PAPER else [])])
    assert cfg.lora.r >= 1 and cfg.data.max_seq_len >= 16


@pytest.mark.parametrize("name", PAPER)
def test_paper_configs_name_no_data(name):
    with pytest.raises(ConfigError, match=r"no training data: give data\.medqa and/or data\.kormedmcqa.*or data\.packed"):
        parse_config(TrainConfig, ["--config", str(REPO / "configs" / name)])
    cfg = parse_config(TrainConfig, ["--config", str(REPO / "configs" / name), "--data.packed=/data/packed"])
    assert cfg.data.medqa == [] and cfg.data.kormedmcqa == []


def test_paper_settings_in_the_paper_configs():
    for name in PAPER:
        cfg = parse_config(TrainConfig, ["--config", str(REPO / "configs" / name), *DATA])
        assert (cfg.train.lr, cfg.train.warmup_steps, cfg.train.epochs) == (2e-4, 100, 3)
        assert (cfg.train.micro_batch_size, cfg.train.grad_accum, cfg.data.max_seq_len) == (4, 8, 2048)
        assert (cfg.lora.r, cfg.lora.alpha, cfg.lora.dropout) == (16, 64, 0.05)
        assert cfg.model.quantization == "nf4" and cfg.model.double_quant


def test_overrides_convert_types_and_lists():
    cfg = parse_config(
        TrainConfig,
        ["--train.lr=1e-3", "--lora.r", "8", "--data.medqa=a.jsonl,b.jsonl", "--data.packing=false", "--train.resume=auto"],
    )
    assert cfg.train.lr == 1e-3 and cfg.lora.r == 8
    assert cfg.data.medqa == ["a.jsonl", "b.jsonl"] and cfg.data.packing is False
    assert cfg.train.resume == "auto"


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--train.lrr=1"], "unknown key 'train.lrr'"),
        (["--nosuch.key=1"], "unknown key 'nosuch'"),
        (["--lora.r=eight"], "'lora.r' must be an integer"),
        (["--model.quantization=int8"], "must be one of"),
        (["--data.ratio=7-3"], "ratio must look like EN:KO"),
        (["--train.micro_batch_size=0"], "train.micro_batch_size must be >= 1"),
        (["--train.seed=99999999999999999999"], "train.seed must be in [0, 2**32)"),  # torch.manual_seed overflowed after the model loaded
        (["--data.ratio=²:3"], "ratio must look like EN:KO"),
        (["--train"], "needs a value"),
        (["positional"], "unexpected argument"),
    ],
)
def test_bad_overrides_are_clear_errors(argv, needle):
    with pytest.raises(ConfigError, match=re.escape(needle)):
        parse_config(TrainConfig, argv)


def test_unknown_key_in_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train:\n  lr: 1.0e-4\n  warmup: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown key 'train.warmup'"):
        parse_config(TrainConfig, ["--config", str(bad)])


def test_a_key_given_twice_in_a_yaml_file_is_refused_not_half_dropped(tmp_path):
    """PyYAML keeps the last of two `train:` sections: lr and max_steps of the first were silently
    replaced by defaults, and the run trained 6 steps instead of 2."""
    bad = tmp_path / "twice.yaml"
    bad.write_text("train:\n  lr: 1.0e-3\n  max_steps: 2\nlora:\n  r: 8\n  r: 16\n")
    with pytest.raises(ConfigError, match=r"twice.yaml:line 6: key 'r' is given twice in one mapping \(first at line 5\)"):
        parse_config(TrainConfig, ["--config", str(bad)])
    bad.write_text("train:\n  lr: 1.0e-3\n  max_steps: 2\ntrain:\n  progress: false\n")
    with pytest.raises(ConfigError, match=r"twice.yaml:line 4: key 'train' is given twice in one mapping \(first at line 1\)"):
        parse_config(TrainConfig, ["--config", str(bad)])
    bad.write_text("train:\n  lr: 1" + "0" * 400 + "\n")  # a YAML integer: float() overflowed with a traceback
    with pytest.raises(ConfigError, match=r"'train.lr' must be a finite number, got an integer of 401 digits"):
        parse_config(TrainConfig, ["--config", str(bad)])
    ok = tmp_path / "merge.yaml"  # YAML merge keys stay what safe_load accepted: merged keys may be overridden
    ok.write_text("x-common: &c\n  lr: 1.0e-3\n  max_steps: 2\ntrain:\n  <<: *c\n  max_steps: 3\n")
    from medslm.config import load_yaml

    assert load_yaml(ok)["train"] == {"lr": 1.0e-3, "max_steps": 3}
    bad.write_text("train:\n  ? [1, 2]\n  : 3\n")  # an unhashable key: one line, not a TypeError
    with pytest.raises(ConfigError, match=r"twice.yaml:line 2: not valid YAML: found unhashable key"):
        load_yaml(bad)
    bad.write_text("train:\n  lr: [1\n")
    with pytest.raises(ConfigError, match=r"twice.yaml:line 3: not valid YAML: expected ',' or ']'") as exc:
        parse_config(TrainConfig, ["--config", str(bad)])
    assert "\n" not in str(exc.value)


def test_saved_config_round_trips(tmp_path):
    cfg = parse_config(TrainConfig, ["--data.ratio=10:3", "--lora.target_modules=q_proj,v_proj"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_saved_config(TrainConfig, tmp_path / "c.yaml") == cfg


def test_a_saved_config_cut_at_a_line_boundary_is_refused_not_filled_with_defaults(tmp_path):
    """Still valid YAML after the cut: without the end line, the keys it lost would be defaults."""
    cfg = parse_config(TrainConfig, ["--data.ratio=10:3", "--train.lr=1e-3"])
    lines = save_config(cfg, tmp_path / "c.yaml").read_text().splitlines(keepends=True)
    (tmp_path / "cut.yaml").write_text("".join(lines[: len(lines) // 2]))
    with pytest.raises(ConfigError, match=r"cut.yaml: truncated\? it has no '# end of medslm config' line and lacks .*, which would take defaults"):
        load_saved_config(TrainConfig, tmp_path / "cut.yaml")
    (tmp_path / "whole.yaml").write_text("".join(lines[:-1]))  # every key, no end line (an older medslm): loads
    assert load_saved_config(TrainConfig, tmp_path / "whole.yaml") == cfg


def test_parse_ratio():
    assert parse_ratio("10:3") == (10, 3) and parse_ratio("0:1") == (0, 1)
    for bad in ("0:0", "a:b", "1:2:3", "1.5:2"):
        with pytest.raises(ConfigError):
            parse_ratio(bad)


def test_help_lists_every_key_with_type_default_and_doc():
    """train.py --help is generated from the typed config: every key, its type, its default and
    one line of doc from the field's comment (a key without one fails here)."""
    import subprocess
    import sys

    from medslm.config import config_keys

    keys = config_keys(TrainConfig)
    undocumented = [k for k, _tp, _default, doc in keys if not doc]
    assert not undocumented, f"config keys without a doc comment: {undocumented}"
    out = subprocess.run([sys.executable, "train.py", "--help"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0
    for key, tp, default, doc in keys:
        assert f"--{key}={default}  [{tp}]\n      {doc}" in out.stdout, key
    assert "--model.text_only=true  [true|false]" in out.stdout and "--lora.target_modules=all-linear  [list of str" in out.stdout
