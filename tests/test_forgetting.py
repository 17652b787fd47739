"""evaluate.py compare: paired comparison of eval dirs by item id (forgetting, the paper's Table 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from medslm.evaluation import summarise
from medslm.forgetting import CompareConfig, compare, read_predictions
from medslm.stats import compare_correctness

SUBJECTS = ("doctor", "nurse", "pharm", "dentist")


def _write_eval(d: Path, correct: dict[str, bool], gold: str = "A", scoring: str = "letter") -> Path:
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for key, ok in correct.items():
        bench, subj = ("medqa", "step1") if key.startswith("medqa") else ("kormedmcqa", key.split("/")[1])
        lines.append({"id": key, "benchmark": bench, "subject": subj, "language": "en" if bench == "medqa" else "ko",
                      "gold": gold, "predicted": gold if ok else "B", "correct": ok, "scores": [0.0, -1.0, -2.0, -3.0]})
    # written in a different order each time: matching is by id, not position
    rng = np.random.default_rng(len(d.name))
    order = rng.permutation(len(lines))
    (d / "predictions.jsonl").write_text("".join(json.dumps(lines[i]) + "\n" for i in order))
    (d / "eval.json").write_text(json.dumps({"model": {"name_or_path": "embedded", "adapter": str(d)}, "scoring": scoring, "split": "test",
                                             "n_items": len(lines), "benchmarks": summarise(lines)}))
    return d


def _ids() -> list[str]:
    return [f"medqa/US/test.jsonl/{i}" for i in range(40)] + [f"kormedmcqa/{s}/2020-1-{i}" for s in SUBJECTS for i in range(30)]


def _correct(seed: int, p: float, drop: dict[str, float] | None = None) -> dict[str, bool]:
    rng = np.random.default_rng(seed)
    out = {}
    for key in _ids():
        subj = key.split("/")[1] if key.startswith("kormed") else "medqa"
        out[key] = bool(rng.random() < p - (drop or {}).get(subj, 0.0))
    return out


def test_compare_reports_each_benchmark_and_subject(tmp_path, capsys):
    base_c = _correct(0, 0.8)
    other_c = dict(base_c)
    for i in range(30):  # nurse: 20 of 30 right answers lost
        key = f"kormedmcqa/nurse/2020-1-{i}"
        if other_c[key] and sum(not other_c[f"kormedmcqa/nurse/2020-1-{j}"] for j in range(30)) < 25:
            other_c[key] = False
    base = _write_eval(tmp_path / "r5-5", base_c)
    other = _write_eval(tmp_path / "r10-3", other_c)
    res = compare(CompareConfig(eval_dirs=[str(base), str(other)], out=str(tmp_path / "cmp" / "compare.json")))
    rows = {(r["benchmark"], r["subject"]): r for r in res["comparisons"][0]["rows"]}
    assert set(rows) == {("medqa", "(all)"), ("medqa", "step1"), ("kormedmcqa", "(all)")} | {("kormedmcqa", s) for s in SUBJECTS}
    nurse = rows[("kormedmcqa", "nurse")]
    assert nurse["delta_pp"] < 0 and nurse["forgetting"] and nurse["mcnemar_p"] < 0.05
    assert nurse["ci_high_pp"] < 0
    assert rows[("medqa", "(all)")]["delta_pp"] == 0 and not rows[("medqa", "(all)")]["forgetting"]
    # the numbers are exactly medslm.stats on the id-aligned vectors
    ids = sorted(k for k in base_c if "/nurse/" in k)
    want = compare_correctness(np.array([base_c[k] for k in ids]), np.array([other_c[k] for k in ids]), n_resamples=10_000, seed=0)
    assert {k: nurse[k] for k in want} == want
    assert res["n_resamples"] == 10_000 and res["seed"] == 0
    out = capsys.readouterr().out
    assert "| kormedmcqa | nurse |" in out and "**yes**" in out
    saved = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    assert saved["comparisons"][0]["rows"] == res["comparisons"][0]["rows"]
    assert (tmp_path / "cmp" / "compare.md").read_text().startswith("### ")
    # seeded: the same result again
    again = compare(CompareConfig(eval_dirs=[str(base), str(other)], out=str(tmp_path / "cmp2.json")))
    assert again["comparisons"] == res["comparisons"]


def test_compare_many_through_the_cli(tmp_path, capsys):
    import evaluate as entry

    dirs = [_write_eval(tmp_path / f"e{i}", _correct(i, 0.6)) for i in range(3)]
    cfg = entry.parse_args(["compare", *map(str, dirs), "--out", str(tmp_path / "c.json"), "--resamples", "2000", "--seed", "3"])
    assert isinstance(cfg, CompareConfig) and cfg.n_resamples == 2000 and cfg.seed == 3
    res = entry.main(cfg)
    assert [c["other"] for c in res["comparisons"]] == [str(dirs[1]), str(dirs[2])]
    assert capsys.readouterr().out.count("### ") == 2


def _cli_error(argv: list[str], capsys) -> str:
    import evaluate as entry
    from medslm.cli import run_cli

    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: entry.main(entry.parse_args(argv)))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1, err
    return err


def test_different_items_are_an_error(tmp_path, capsys):
    c = _correct(0, 0.7)
    base = _write_eval(tmp_path / "a", c)
    fewer = _write_eval(tmp_path / "b", {k: v for k, v in c.items() if k != "medqa/US/test.jsonl/7"})
    err = _cli_error(["compare", str(base), str(fewer), "--out", str(tmp_path / "x.json")], capsys)
    assert "different items" in err and "medqa/US/test.jsonl/7" in err
    other_gold = _write_eval(tmp_path / "c", c, gold="C")
    err = _cli_error(["compare", str(base), str(other_gold), "--out", str(tmp_path / "x.json")], capsys)
    assert "gold" in err
    assert not (tmp_path / "x.json").exists()


def test_bad_compare_arguments(tmp_path, capsys):
    base = _write_eval(tmp_path / "a", _correct(0, 0.7))
    assert "at least one" in _cli_error(["compare", str(base)], capsys)
    assert "2000" in _cli_error(["compare", str(base), str(base), "--resamples", "100"], capsys)
    assert "predictions.jsonl" in _cli_error(["compare", str(base), str(tmp_path / "missing")], capsys)
    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "predictions.jsonl").write_text('{"id": "x"}\n')
    assert "line 1" in _cli_error(["compare", str(base), str(tmp_path / "broken")], capsys)


def _edit_line(path: Path, lineno: int, edit) -> None:
    lines = path.read_text().splitlines()
    rec = json.loads(lines[lineno - 1])
    edit(rec)
    lines[lineno - 1] = json.dumps(rec)
    path.write_text("\n".join(lines) + "\n")


def test_an_edited_or_inconsistent_eval_folder_is_refused_naming_file_line_and_field(tmp_path, capsys):
    """A wrong number with exit 0 is the worst outcome: predictions whose `correct` contradicts
    predicted/gold, or an eval.json whose counts are not its predictions', stop compare."""
    c = _correct(0, 0.7)
    base = _write_eval(tmp_path / "a", c)

    def other(name: str) -> Path:
        return _write_eval(tmp_path / name, _correct(1, 0.6))

    flipped = other("flipped")
    first = json.loads((flipped / "predictions.jsonl").read_text().splitlines()[0])
    _edit_line(flipped / "predictions.jsonl", 1, lambda r: r.update(correct=not r["correct"]))
    err = _cli_error(["compare", str(base), str(flipped), "--out", str(tmp_path / "x.json")], capsys)
    assert f"{flipped / 'predictions.jsonl'}:line 1: field 'correct' is {str(not first['correct']).lower()}" in err

    edited = other("edited")
    ev = json.loads((edited / "eval.json").read_text())
    ev["benchmarks"]["kormedmcqa"]["subjects"]["nurse"]["accuracy"] = 0.99
    (edited / "eval.json").write_text(json.dumps(ev))
    err = _cli_error(["compare", str(base), str(edited), "--out", str(tmp_path / "x.json")], capsys)
    assert f"{edited / 'eval.json'}: field 'benchmarks.kormedmcqa.subjects.nurse.accuracy' is 0.99" in err and "correct" in err

    fewer = other("fewer")
    ev = json.loads((fewer / "eval.json").read_text())
    ev["benchmarks"]["medqa"]["n"] += 1
    (fewer / "eval.json").write_text(json.dumps(ev))
    assert "field 'benchmarks.medqa.n'" in _cli_error(["compare", str(base), str(fewer), "--out", str(tmp_path / "x.json")], capsys)

    for name, edit, want in (("letter", lambda r: r.update(predicted="Z"), "field 'predicted' must be an option letter"),
                             ("listid", lambda r: r.update(id=[1]), "field 'id' must be a non-empty string")):
        d = other(name)
        _edit_line(d / "predictions.jsonl", 3, edit)
        assert f"{d / 'predictions.jsonl'}:line 3: {want}" in _cli_error(["compare", str(base), str(d), "--out", str(tmp_path / "x.json")], capsys)
    binary = other("binary")
    raw = (binary / "predictions.jsonl").read_bytes().split(b"\n")
    raw[4] = raw[4].replace(b"medqa", b"med\xffqa", 1) if b"medqa" in raw[4] else raw[4].replace(b"kormedmcqa", b"kor\xffmedmcqa", 1)
    (binary / "predictions.jsonl").write_bytes(b"\n".join(raw))
    assert f"{binary / 'predictions.jsonl'}:line 5: not valid UTF-8" in _cli_error(["compare", str(base), str(binary), "--out", str(tmp_path / "x.json")], capsys)
    assert not (tmp_path / "x.json").exists()


def test_read_predictions_accepts_the_file_itself(tmp_path):
    d = _write_eval(tmp_path / "a", _correct(0, 0.7))
    assert read_predictions(d / "predictions.jsonl") == read_predictions(d)


def test_mixed_scoring_methods_warn(tmp_path, capsys):
    c = _correct(1, 0.5)
    a = _write_eval(tmp_path / "a", c)
    b = _write_eval(tmp_path / "b", c, scoring="option_text")
    res = compare(CompareConfig(eval_dirs=[str(a), str(b)], out=str(tmp_path / "c.json"), n_resamples=2000))
    assert "scoring" in res["warning"] and "warning" in capsys.readouterr().out


def test_compare_writes_beside_the_base_eval_not_into_the_current_folder(tmp_path, monkeypatch):
    import evaluate as evaluate_cli

    base = _write_eval(tmp_path / "runs" / "r5-5" / "eval", _correct(0, 0.8))
    other = _write_eval(tmp_path / "runs" / "r10-3" / "eval", _correct(1, 0.8))
    cwd = tmp_path / "elsewhere"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    evaluate_cli.main(evaluate_cli.parse_args(["compare", str(base), str(other), "--resamples", "2000"]))
    assert (base / "compare.json").is_file() and (base / "compare.md").is_file()
    assert list(cwd.iterdir()) == []
    evaluate_cli.main(evaluate_cli.parse_args(["compare", str(base), str(other), "--resamples", "2000", "--out", str(tmp_path / "c.json")]))
    assert (tmp_path / "c.json").is_file()
