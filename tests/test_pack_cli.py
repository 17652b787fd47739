"""pack.py end to end: the packed dataset and report are written, reload, and agree."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import medqa_row, write_jsonl
from medslm.dataset import load_packed_rows

REPO = Path(__file__).resolve().parents[1]


def _pack(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "pack.py", *args], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_pack_embedded_default_writes_reloadable_rows_and_report(tmp_path):
    res = _pack("--out", str(tmp_path), "--ratio", "10:3", "--max-seq-len", "512", "--global-batch-rows", "4")
    assert res.returncode == 0, res.stderr
    assert "efficiency" in res.stdout
    report = json.loads((tmp_path / "packing_report.json").read_text())
    for key in (
        "num_samples", "num_rows", "real_tokens", "max_seq_len", "packing_efficiency", "padding_fraction_unpacked",
        "steps_per_epoch_unpacked", "steps_per_epoch_packed", "per_language", "skipped_invalid", "overlong",
    ):
        assert key in report, key
    en, ko = report["per_language"]["en"], report["per_language"]["ko"]
    assert abs(en / ko - 10 / 3) < 0.1
    assert set(report["mix"]["by_subject"]) >= {"ko/doctor", "ko/nurse", "ko/pharm", "ko/dentist"}
    rows = load_packed_rows(tmp_path / "train")
    assert len(rows) == report["num_rows"]
    assert sum(len(ex["input_ids"]) for r in rows for ex in r) == report["real_tokens"]
    assert sum(len(r) for r in rows) == report["num_samples"]
    assert all(sum(len(ex["input_ids"]) for ex in r) <= 512 for r in rows)
    assert report["packing_efficiency"] == pytest.approx(report["real_tokens"] / (report["num_rows"] * 512))
    assert report["steps_per_epoch_packed"] < report["steps_per_epoch_unpacked"]


def test_pack_bad_row_exits_2_naming_file_line_field(tmp_path):
    rows = [medqa_row(i) for i in range(4)]
    rows[2]["answer_idx"] = "Q"
    f = write_jsonl(tmp_path / "train.jsonl", rows)
    res = _pack("--medqa", str(f), "--kormedmcqa", "--ratio", "1:0", "--out", str(tmp_path / "o"))
    assert res.returncode == 2
    assert "train.jsonl:line 3: field 'answer_idx'" in res.stderr and "Traceback" not in res.stderr
    ok = _pack("--medqa", str(f), "--kormedmcqa", "--ratio", "1:0", "--skip-invalid", "--split", "official", "--out", str(tmp_path / "o"))
    assert ok.returncode == 0, ok.stderr
    report = json.loads((tmp_path / "o" / "packing_report.json").read_text())
    assert report["skipped_invalid"]["count"] == 1 and report["num_samples"] == 3


def test_pack_overlong_policies(tmp_path):
    res = _pack("--max-seq-len", "150", "--out", str(tmp_path / "a"))
    assert res.returncode == 2 and "over max_seq_len=150" in res.stderr
    res = _pack("--max-seq-len", "150", "--overlong", "truncate", "--out", str(tmp_path / "b"))
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "b" / "packing_report.json").read_text())
    assert report["overlong"]["truncated"] > 0 and report["max_tokens_per_sample"] <= 150


def test_every_pack_flag_has_help_text():
    sys.path.insert(0, str(REPO))
    from pack import build_parser

    actions = [a for a in build_parser()._actions if a.dest != "help"]
    assert len(actions) == 16
    assert [a.option_strings[0] for a in actions if not (a.help or "").strip()] == []


def test_pack_steps_per_epoch_use_the_train_configs_global_batch(tmp_path):
    """--config + --world-size: the global batch train.py will use (micro_batch_size x grad_accum x
    ranks), said in the output; without them the assumption is named."""
    import math

    import yaml

    cfg = yaml.safe_load((REPO / "configs" / "tiny.yaml").read_text())["train"]
    rows = cfg["micro_batch_size"] * cfg["grad_accum"] * 2
    res = _pack("--out", str(tmp_path / "a"), "--max-seq-len", "512", "--config", "configs/tiny.yaml", "--world-size", "2")
    assert res.returncode == 0, res.stderr
    report = json.loads((tmp_path / "a" / "packing_report.json").read_text())
    assert report["global_batch_rows"] == rows
    assert report["steps_per_epoch_packed"] == math.ceil(report["num_rows"] / rows)
    assert f"at {rows} rows/step (configs/tiny.yaml: {cfg['micro_batch_size']} x grad_accum {cfg['grad_accum']} x 2 ranks)" in res.stdout
    res = _pack("--out", str(tmp_path / "b"), "--max-seq-len", "512")
    assert res.returncode == 0 and "at 128 rows/step (assumed: the paper's 4 GPUs x 4 rows x grad_accum 8)" in res.stdout
    res = _pack("--out", str(tmp_path / "c"), "--world-size", "2")
    assert res.returncode == 2 and "--world-size needs --config" in res.stderr
