"""OS and format errors a user can meet are one line naming the path (exit 2); disk full says so."""

from __future__ import annotations

import errno
import json
import shutil
from pathlib import Path

import pytest

from conftest import medqa_row, write_jsonl
from medslm.cli import UserError, run_cli
from medslm import files
from medslm.files import json_line, writing


def _exit_line(fn, capsys) -> str:
    with pytest.raises(SystemExit) as exc:
        run_cli(fn)
    err = capsys.readouterr().err.strip()
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert exc.value.code == 2 and len(errors) == 1 and err.endswith(errors[0]) and "Traceback" not in err, err
    return errors[0]  # (progress bars of model loading may precede it on stderr)


def _disk_full(*args):
    """What a write or flush on a full disk raises: an OSError that names no file."""
    raise OSError(errno.ENOSPC, "No space left on device")


def _raise(exc: BaseException):
    def fn():
        raise exc

    return fn


def test_run_cli_names_the_path_of_every_os_error(tmp_path, capsys):
    p = str(tmp_path / "x")
    cases = [
        (OSError(errno.ENOSPC, "No space left on device", p), f"error: {p}: no space left on device"),
        (PermissionError(errno.EACCES, "Permission denied", p), f"error: {p}: permission denied"),
        (OSError(errno.EROFS, "Read-only file system", p), f"error: {p}: read-only file system"),
        (NotADirectoryError(errno.ENOTDIR, "Not a directory", p), f"error: {p}: not a directory"),
        (FileExistsError(errno.EEXIST, "File exists", p, None, p + "2"), f"error: {p} -> {p}2: file exists"),
        (OSError("could not load tokenizer 'x': offline"), "error: could not load tokenizer 'x': offline"),
    ]
    for exc, line in cases:
        assert _exit_line(_raise(exc), capsys) == line
    # a failed write() carries no path: the block that writes adds it
    with pytest.raises(OSError) as info:
        with writing(p):
            raise OSError(errno.ENOSPC, "No space left on device")
    assert _exit_line(_raise(info.value), capsys) == f"error: {p}: no space left on device"
    # safetensors' and pyarrow's own disk-full errors are recognised too
    with pytest.raises(OSError) as info:
        with writing(p):
            raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space left on device" })')
    assert info.value.errno == errno.ENOSPC and info.value.filename == p


def test_json_lines_escape_the_separators_that_splitlines_breaks_at():
    line = json_line({"subject": "a\u2028b\u2029c\x85d"})
    assert line.endswith("\n") and len(line.splitlines()) == 1 and json.loads(line)["subject"] == "a\u2028b\u2029c\x85d"


@pytest.fixture
def fake_run(tmp_path) -> Path:
    """A run folder as train.py leaves it, as far as evaluate.py checks before loading a model."""
    import torch
    from safetensors.torch import save_file

    from medslm.tokenizer import EMBEDDED_TOKENIZER_DIR

    run = tmp_path / "run"
    adapter = run / "adapter"
    shutil.copytree(EMBEDDED_TOKENIZER_DIR, adapter)
    (run / "config.yaml").write_text("model:\n  name_or_path: embedded\n  quantization: none\n# end of medslm config\n")
    (adapter / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 4}))
    save_file({"w": torch.zeros(64, 64)}, str(adapter / "adapter_model.safetensors"))
    return run


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name", ["adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "tokenizer_config.json"])
def test_evaluate_names_a_truncated_adapter_or_tokenizer_file(fake_run, name, capsys, tmp_path):
    import evaluate as entry

    _truncate(fake_run / "adapter" / name)
    for argv in (["--run", str(fake_run), "--out", str(tmp_path / "o")], ["lora-activations", "--run", str(fake_run)]):
        err = _exit_line(lambda: entry.main(entry.parse_args(argv)), capsys)
        assert err.startswith(f"error: {fake_run / 'adapter' / name}: not ") and ("JSON" in err or "safetensors" in err)


def test_a_truncated_tokenizer_file_is_named(tmp_path):
    from medslm.tokenizer import EMBEDDED_TOKENIZER_DIR, load_tokenizer

    shutil.copytree(EMBEDDED_TOKENIZER_DIR, tmp_path / "tok")
    _truncate(tmp_path / "tok" / "tokenizer.json")
    with pytest.raises(UserError, match=rf"{tmp_path / 'tok' / 'tokenizer.json'}: not valid JSON"):
        load_tokenizer(str(tmp_path / "tok"))


def test_evaluate_out_that_is_a_file_or_a_full_disk(tmp_path, capsys, monkeypatch):
    import evaluate as entry
    from medslm import evaluation

    f = write_jsonl(tmp_path / "d" / "test.jsonl", [medqa_row(i) for i in range(3)])
    (tmp_path / "file").write_text("x")
    argv = ["--model", "embedded", "--quantization", "none", "--medqa", str(f), "--no-progress", "--out"]
    loaded = []
    monkeypatch.setattr(evaluation, "load_for_eval", lambda *a: loaded.append(1) or (_ for _ in ()).throw(AssertionError))
    err = _exit_line(lambda: entry.main(entry.parse_args([*argv, str(tmp_path / "file" / "ev")])), capsys)
    assert err == f"error: {tmp_path / 'file' / 'ev'}: not a directory" and not loaded  # before the model loads
    monkeypatch.undo()

    monkeypatch.setattr(files.os, "fsync", _disk_full)  # the flush of a published file meets a full disk
    err = _exit_line(lambda: entry.main(entry.parse_args([*argv, str(tmp_path / "ev")])), capsys)
    assert err == f"error: {tmp_path / 'ev' / 'predictions.jsonl'}: no space left on device"
    assert not (tmp_path / "ev" / "predictions.jsonl").exists()


def test_compare_names_a_truncated_eval_json_and_a_full_disk(tmp_path, capsys, monkeypatch):
    import evaluate as entry

    from medslm.evaluation import summarise

    preds = [{"id": f"q{i}", "benchmark": "medqa", "subject": "step1", "gold": "A", "predicted": "A" if i % 2 == 0 else "B",
              "correct": i % 2 == 0} for i in range(6)]
    ev_doc = json.dumps({"model": {"name_or_path": "m"}, "scoring": "letter", "split": "test", "n_items": 6, "benchmarks": summarise(preds)})
    for name in ("a", "b"):
        ev = tmp_path / name
        ev.mkdir()
        (ev / "predictions.jsonl").write_text("".join(json_line(p) for p in preds))
        (ev / "eval.json").write_text(ev_doc)
    argv = ["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--resamples", "2000"]
    _truncate(tmp_path / "b" / "eval.json")  # read as 'nothing known' before: the metadata silently gone
    err = _exit_line(lambda: entry.main(entry.parse_args(argv)), capsys)
    assert err.startswith(f"error: {tmp_path / 'b' / 'eval.json'}: not valid JSON")
    (tmp_path / "b" / "eval.json").write_text(ev_doc)
    monkeypatch.setattr(files.os, "fsync", _disk_full)  # the flush of a published file meets a full disk
    err = _exit_line(lambda: entry.main(entry.parse_args(argv)), capsys)
    assert err == f"error: {tmp_path / 'a' / 'compare.json'}: no space left on device"


def test_train_disk_full_names_the_output_folder(tmp_path, capsys, monkeypatch):
    from medslm import trainer
    from medslm.config import parse_config
    from medslm.train_config import DEFAULT_CONFIG, TrainConfig

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer, "save_config", full)
    out = tmp_path / "run"
    cfg = parse_config(TrainConfig, ["--train.max_steps=1", "--train.progress=false", f"--train.output_dir={out}"], default_file=DEFAULT_CONFIG)
    assert _exit_line(lambda: trainer.train(cfg), capsys) == f"error: {out}: no space left on device"


def test_a_truncated_packed_dataset_is_named(tmp_path):
    import pack
    from medslm.dataset import DataConfig, read_pack

    out = tmp_path / "p"
    pack.main(pack.PackConfig(data=DataConfig(max_seq_len=512), out=str(out)))
    arrow = next((out / "train").glob("*.arrow"))
    _truncate(arrow)
    with pytest.raises(UserError, match=rf"data.packed: {out / 'train'}: not a readable dataset folder"):
        read_pack(out).rows()
    _truncate(out / "val" / "state.json")
    with pytest.raises(UserError, match=rf"{out / 'val'}: not a readable dataset folder"):
        load = read_pack(out)
        from medslm.dataset import load_packed_rows

        load_packed_rows(load.path / "val")


def test_a_checkpoint_state_written_on_a_full_disk_says_so(tmp_path, capsys, monkeypatch):
    """torch.save on a full disk raises 'file write failed' / 'unexpected pos' (not why): a failed
    state.pt on a file system with no room left is the one disk-full line naming the file."""
    import collections

    import torch

    from medslm import checkpoint

    def failing_save(obj, f, *a, **k):
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")

    monkeypatch.setattr(torch, "save", failing_save)
    usage = collections.namedtuple("usage", "total used free")
    save = lambda: checkpoint.save_checkpoint(tmp_path / "run", 3, {"w": torch.zeros(4)}, {"step": 3}, "train: {}\n", keep=2)  # noqa: E731
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: usage(1 << 30, 1 << 30, 0))
    err = _exit_line(save, capsys)
    assert err.startswith("error: ") and err.endswith("/state.pt: no space left on device") and str(tmp_path / "run") in err
    monkeypatch.setattr(files.shutil, "disk_usage", lambda p: usage(1 << 40, 0, 1 << 40))
    with pytest.raises(RuntimeError, match="unexpected pos"):  # room left: torch's own error, unchanged
        save()
