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
    # options that do not fit even without the question: truncating would cut into them
    res = _pack("--max-seq-len", "60", "--overlong", "truncate", "--out", str(tmp_path / "c"))
    assert res.returncode == 2 and "its options, answer cue and answer alone are" in res.stderr and "Traceback" not in res.stderr


def test_truncation_keeps_every_option_and_the_report_counts_what_is_in_the_pack():
    """--overlong truncate cut into option A when the options alone did not fit, and 'truncated'
    counted the training pool before the ratio subsample, not the pack."""
    from medslm.dataset import DataConfig, build_dataset, load_and_split
    from medslm.prompts import build_example, format_options
    from medslm.tokenizer import load_tokenizer

    tok = load_tokenizer(None)
    cfg = DataConfig(max_seq_len=100, overlong="truncate", ratio="10:3")
    built = build_dataset(cfg, tok)
    loaded = load_and_split(cfg)
    by_id = {it.id: it for s in loaded.splits.splits.values() for it in s}
    cut = 0
    for ex in {e.item_id: e for e in built.train}.values():
        item = by_id[ex.item_id]
        if len(ex) < len(build_example(item, tok, 10**6)):
            cut += 1
            assert tok.decode(ex.input_ids).endswith(format_options(item) + tok.decode(ex.labels[-2:])), item.id
    val_cut = sum(len(e) < len(build_example(by_id[e.item_id], tok, 10**6)) for e in built.val)
    assert cut > 0 and built.report["overlong"]["truncated"] == cut + val_cut


@pytest.mark.parametrize("name, text, want", [
    ("tok.csv", "a,b\n", "is a file; give a folder (with tokenizer.json) or a tokenizer.json file"),
    ("tokenizer.json", "{}", "not a tokenizer file the tokenizers library can read (Model missing"),
    ("tokenizer.json", '{"model": ', "not valid JSON"),
])
def test_a_file_that_is_no_tokenizer_is_one_line_exit_2(tmp_path, name, text, want):
    (tmp_path / name).write_text(text)
    res = _pack("--tokenizer", str(tmp_path / name), "--out", str(tmp_path / "o"))
    assert res.returncode == 2 and want in res.stderr and "Traceback" not in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1


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


# ---------------------------------------------------------------------------------------------
# A pack is published whole, and train.py reads only rows that match its report
# ---------------------------------------------------------------------------------------------


def _pack_cfg(out: Path, ratio: str = "5:5", seed: int = 0):
    import pack
    from medslm.dataset import DataConfig

    return pack.PackConfig(data=DataConfig(ratio=ratio, max_seq_len=512, seed=seed), out=str(out), global_batch_rows=4)


def _pack_in_process(out: Path, ratio: str = "5:5", seed: int = 0) -> dict:
    import pack

    return pack.main(_pack_cfg(out, ratio, seed))


def _languages(pack_dir: Path) -> dict[str, int]:
    from collections import Counter

    import datasets

    ids = [i for rec in datasets.load_from_disk(str(pack_dir / "train")) for i in rec["item_ids"]]
    return dict(Counter("en" if i.startswith("medqa/") else "ko" for i in ids))


def test_pack_writes_a_manifest_of_the_mix(tmp_path):
    report = _pack_in_process(tmp_path / "p", "10:3")
    lines = [json.loads(x) for x in (tmp_path / "p" / "mix_manifest.jsonl").read_text(encoding="utf-8").split("\n") if x]
    train = [m for m in lines if m["split"] == "train"]
    assert sum(m["copies"] for m in train) == report["num_samples"]
    assert {lang: sum(m["language"] == lang for m in train) for lang in ("en", "ko")} == report["per_language"] == _languages(tmp_path / "p")
    assert sum(m["split"] == "val" for m in lines) == report["val_samples"] and sum(m["split"] == "test" for m in lines) == report["test_items"]
    import datasets

    packed_ids = {i for rec in datasets.load_from_disk(str(tmp_path / "p" / "train")) for i in rec["item_ids"]}
    assert packed_ids == {m["id"] for m in train}
    assert all(set(m) >= {"id", "dataset", "subject", "split"} for m in lines)


def test_a_repack_that_fails_half_way_leaves_the_old_pack(tmp_path, monkeypatch):
    import datasets

    from medslm.dataset import read_pack

    out = tmp_path / "p"
    old = _pack_in_process(out, "5:5")
    assert set(old["per_language"]) == {"en", "ko"}
    real = datasets.Dataset.save_to_disk
    calls = []

    def fail_on_val(self, path, *a, **k):  # train/ is written, then the run dies
        calls.append(path)
        if path.endswith("val"):
            raise KeyboardInterrupt
        return real(self, path, *a, **k)

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", fail_on_val)
    with pytest.raises(KeyboardInterrupt):
        _pack_in_process(out, "1:0")
    assert len(calls) == 2
    report = json.loads((out / "packing_report.json").read_text())
    assert report["ratio"] == "5:5" and _languages(out) == report["per_language"] == old["per_language"]
    train, _ = read_pack(out).rows()  # verified against the report
    assert sum(len(r) for r in train) == old["num_samples"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]  # the temporary folder is gone


def test_a_repack_killed_half_way_leaves_the_old_pack_and_its_leftovers_are_removed(tmp_path):
    """A real SIGKILL while val/ is written: the old pack stays; the next pack.py removes the leftover."""
    out = tmp_path / "p"
    _pack_in_process(out, "5:5")
    script = (
        "import os, signal, sys, datasets, pack\n"
        "real = datasets.Dataset.save_to_disk\n"
        "def die(self, path, *a, **k):\n"
        "    if path.endswith('val'): os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return real(self, path, *a, **k)\n"
        "datasets.Dataset.save_to_disk = die\n"
        "pack.main(pack.parse_args(sys.argv[1:]))\n"
    )
    res = subprocess.run([sys.executable, "-c", script, "--out", str(out), "--ratio", "1:0", "--max-seq-len", "512"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == -9, res.stderr
    leftovers = [p for p in tmp_path.iterdir() if p.name != "p"]
    assert len(leftovers) == 1 and (leftovers[0] / "train").is_dir()  # the killed run's half-written pack
    report = json.loads((out / "packing_report.json").read_text())
    assert report["ratio"] == "5:5" and _languages(out) == report["per_language"]
    _pack_in_process(out, "1:0")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    assert _languages(out) == json.loads((out / "packing_report.json").read_text())["per_language"] == {"en": 58}


def test_train_refuses_a_pack_whose_rows_do_not_match_its_report(tmp_path):
    """A folder mixing two packs (one pack's rows under another's report) is refused before training."""
    import shutil

    from medslm.cli import UserError
    from medslm.dataset import read_pack

    import datasets

    a, en_only = tmp_path / "a", tmp_path / "en"
    _pack_in_process(a, "5:5")
    _pack_in_process(en_only, "1:0")
    edited = datasets.load_from_disk(str(a / "train")).to_dict()
    edited["input_ids"][0][3] += 1  # one token changed: the same rows and counts per language
    datasets.Dataset.from_dict(edited).save_to_disk(str(tmp_path / "edited"))
    read_pack(a).rows()  # a whole pack reads
    shutil.rmtree(a / "train")
    shutil.copytree(en_only / "train", a / "train")  # what an interrupted in-place re-pack left behind
    res = subprocess.run([sys.executable, "train.py", "--train.max_steps=1", f"--train.output_dir={tmp_path / 'run'}", f"--data.packed={a}"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 2 and "Traceback" not in res.stderr, res.stderr
    assert res.stderr.strip().count("\n") == 0 and f"{a / 'train'} does not match" in res.stderr and "re-run pack.py" in res.stderr
    assert not (tmp_path / "run" / "adapter").exists()
    shutil.rmtree(a / "train")
    shutil.copytree(tmp_path / "edited", a / "train")
    with pytest.raises(UserError, match="same counts but different content"):
        read_pack(a).rows()


def test_pack_disk_full_or_a_foreign_out_folder_is_one_line_and_keeps_the_old_pack(tmp_path, monkeypatch, capsys):
    import errno

    import datasets

    from medslm.cli import run_cli

    out = tmp_path / "p"
    _pack_in_process(out, "5:5")
    before = (out / "packing_report.json").read_text()

    def full(self, path, *a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")  # as a failed write() raises it: no path

    monkeypatch.setattr(datasets.Dataset, "save_to_disk", full)
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: _pack_in_process(out, "1:0"))
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and err == f"error: {out}: no space left on device"
    assert (out / "packing_report.json").read_text() == before and sorted(p.name for p in tmp_path.iterdir()) == ["p"]
    monkeypatch.undo()
    # a folder that is not a pack is never replaced; a file is not a folder
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    (tmp_path / "file").write_text("x")
    for target, says in ((tmp_path / "mine", "holds other files"), (tmp_path / "file", "is not a folder")):
        with pytest.raises(SystemExit) as exc:
            run_cli(lambda: _pack_in_process(target))
        err = capsys.readouterr().err.strip()
        assert exc.value.code == 2 and err.startswith(f"error: {target}: ") and says in err and "\n" not in err
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"

