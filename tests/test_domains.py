"""The rules-based domain tagger: the shipped rules on the sample data, rule semantics, bad rules
files, and the per-domain numbers in eval.json, predictions.jsonl and compare."""

from __future__ import annotations

import json
import unicodedata
from pathlib import Path

import numpy as np
import pytest

from conftest import kormed_row, medqa_row, write_jsonl
from medslm.data import DataError
from medslm.dataset import DataConfig, load_and_split
from medslm.domains import DEFAULT_RULES, domain_counts, load_rules, parse_rules
from medslm.forgetting import CompareConfig, compare
from medslm.records import MCQItem


def _ko(question: str, options=("가", "나", "다", "라", "마"), subject: str = "doctor") -> MCQItem:
    return MCQItem(f"k-{hash(question) & 0xFFFF}", "kormedmcqa", "ko", subject, question, tuple(options), 0)


def test_shipped_rules_tag_law_first_else_the_subject():
    rules = load_rules()
    assert rules.path == str(DEFAULT_RULES) and len(rules.sha256) == 64
    assert rules.tag(_ko("의료법상 의료인의 면허를 내주는 사람은?")) == "medical_law"
    assert rules.tag(_ko("「감염병의 예방 및 관리에 관한 법률」상 홍역은 몇 급 감염병인가?")) == "medical_law"
    assert rules.tag(_ko("약사법 제23조에 따른 조제의 예외는?", subject="pharm")) == "medical_law"
    assert rules.tag(_ko("다음 중 옳은 것은?", options=("보건소에 신고한다", "b", "c", "d", "e"), subject="nurse")) == "medical_law"
    # "법" inside another word is not law: 표기법 (notation), 요법 (therapy)
    assert rules.tag(_ko("FDI 치아 표기법에서 41번 치아는?", subject="dentist")) == "dentist"
    assert rules.tag(_ko("당뇨병 케톤산증의 일차 치료 요법은?")) == "doctor"
    # the Korean rules are limited to KorMedMCQA: an English item keeps its subject
    en = MCQItem("e", "medqa", "en", "step1", "Under the Medical Service Act (의료법), who ...?", ("a", "b", "c", "d"), 0)
    assert rules.tag(en) == "step1"


def test_counts_on_the_sample_data_are_what_the_readme_says():
    loaded = load_and_split(DataConfig())
    rules = load_rules()
    every = domain_counts(loaded.items["medqa"] + loaded.items["kormedmcqa"], rules)
    assert every["kormedmcqa"] == {
        "dentist": {"dentist": 55},
        "doctor": {"doctor": 33, "medical_law": 22},
        "nurse": {"medical_law": 4, "nurse": 51},
        "pharm": {"pharm": 55},
    }
    assert every["medqa"] == {"step1": {"step1": 39}, "step2&3": {"step2&3": 41}}
    test = domain_counts(loaded.splits.splits["test"], rules)["kormedmcqa"]
    assert sum(d.get("medical_law", 0) for d in test.values()) == 1
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    assert "`medical_law` 26 of 220" in readme and "1 of the 22 test items" in readme


def test_rules_are_data_a_user_replaces(tmp_path):
    text = """
version: 1
rules:
  - domain: pediatrics
    patterns: ['\\d+세 (여|남)아']
  - domain: law_in_options
    fields: [options]
    patterns: [법률]
  - domain: anything_else
    benchmarks: [medqa]
    patterns: [fever]
"""
    rules = parse_rules(text, "mine.yaml")
    assert [r.domain for r in rules.rules] == ["pediatrics", "law_in_options", "anything_else"]
    assert rules.tag(_ko("9세 여아가 외래를 방문하였다. 법률")) == "pediatrics"  # first rule wins
    assert rules.tag(_ko("법률상 옳은 것은?")) == "doctor"  # only the options are searched
    assert rules.tag(_ko("옳은 것은?", options=("법률", "b", "c", "d", "e"))) == "law_in_options"
    assert rules.tag(MCQItem("m", "medqa", "en", "step1", "A FEVER of 39 C", ("a", "b", "c", "d"), 0)) == "anything_else"
    # text and patterns are NFKC-normalised: decomposed Hangul (NFD) matches too
    nfd = unicodedata.normalize("NFD", "12세 남아가 왔다")
    assert nfd != "12세 남아가 왔다" and rules.tag(_ko(nfd)) == "pediatrics"


@pytest.mark.parametrize(
    "text,field,line",
    [
        ("version: 1\nrules:\n  - domain: law\n    patterns: ['(unclosed']\n", "rules[0].patterns[0]", 4),
        ("rules:\n  - domain: law\n    patterns:\n      - 의료법\n      - '.*'\n", "rules[0].patterns[1]", 5),
        ("rules:\n  - domain: Law!\n    patterns: [x]\n", "rules[0].domain", 2),
        ("rules:\n  - domain: law\n    patterns: [x]\n  - domain: law\n    patterns: [y]\n", "rules[1].domain", 4),
        ("rules:\n  - domain: law\n    pattern: [x]\n", "rules[0].pattern", 3),
        ("rules:\n  - domain: law\n    patterns: []\n", "rules[0].patterns", 2),
        ("rules:\n  - domain: law\n    fields: [answer]\n    patterns: [x]\n", "rules[0].fields", 2),
        ("rules:\n  - domain: law\n    benchmarks: [kormedmcq]\n    patterns: [x]\n", "rules[0].benchmarks", 2),  # misspelt: the rule would never fire
        ("version: 2\nrules: []\n", "version", 1),
        ("rules: [\n", "(file)", 2),
        ("- just a list\n", "rules", 1),
    ],
)
def test_bad_rules_files_name_file_line_and_field(text, field, line):
    with pytest.raises(DataError) as exc:
        parse_rules(text, "bad.yaml")
    assert exc.value.field == field
    assert exc.value.where == f"bad.yaml:line {line}"


def test_bad_rules_file_through_the_cli_is_one_line(tmp_path, capsys):
    from medslm import domains
    from medslm.cli import run_cli

    bad = tmp_path / "rules.yaml"
    bad.write_text("rules:\n  - domain: law\n    patterns: ['[']\n", encoding="utf-8")
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: domains.main(["--rules", str(bad)]))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{bad}:line 3" in err and "rules[0].patterns[0]" in err
    with pytest.raises(SystemExit):
        run_cli(lambda: domains.main(["--rules", str(tmp_path / "missing.yaml")]))
    assert "not found" in capsys.readouterr().err


def test_eval_json_and_predictions_carry_domains(tmp_path):
    from medslm.evaluation import EvalConfig, evaluate

    kormed = [kormed_row(i, subject=("doctor", "nurse")[i % 2]) for i in range(6)]
    kormed[0]["question"] = "의료법상 의료인의 면허를 내주는 사람은?"
    kormed[3]["question"] = "의료법상 간호기록부의 보존 기간으로 옳은 것은?"
    files = {"medqa": write_jsonl(tmp_path / "m.jsonl", [medqa_row(i) for i in range(3)]), "kormedmcqa": write_jsonl(tmp_path / "k.jsonl", kormed)}
    cfg = EvalConfig(model="embedded", quantization="none", medqa=[str(files["medqa"])], kormedmcqa=[str(files["kormedmcqa"])], out=str(tmp_path / "ev"), progress=False)
    res = evaluate(cfg)
    preds = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    by_q = {p["id"]: p for p in preds}
    law = [p for p in preds if p["domain"] == "medical_law"]
    assert len(law) == 2 and {p["subject"] for p in law} == {"doctor", "nurse"}
    assert all(p["domain"] == p["subject"] for p in preds if p["benchmark"] == "medqa")
    ev = json.loads((tmp_path / "ev" / "eval.json").read_text(encoding="utf-8"))
    doms = ev["benchmarks"]["kormedmcqa"]["domains"]
    assert set(doms) == {"medical_law", "doctor", "nurse"} and doms["medical_law"]["n"] == 2
    want = sum(by_q[p["id"]]["correct"] for p in law) / 2
    assert doms["medical_law"]["accuracy"] == want
    assert ev["domain_rules"]["path"] == str(DEFAULT_RULES)
    assert res["eval"]["benchmarks"] == ev["benchmarks"]
    # a user's rules file replaces the shipped one
    mine = tmp_path / "mine.yaml"
    mine.write_text("rules:\n  - domain: symptom\n    patterns: [증상]\n", encoding="utf-8")
    cfg.domain_rules, cfg.out = str(mine), str(tmp_path / "ev2")
    ev2 = evaluate(cfg)["eval"]
    assert set(ev2["benchmarks"]["kormedmcqa"]["domains"]) == {"symptom", "doctor", "nurse"}
    assert ev2["domain_rules"]["path"] == str(mine.resolve())


SUBJECTS = ("doctor", "nurse")


def _write(d: Path, correct: dict[str, bool], domains: dict[str, str] | None) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    lines = []
    for key, ok in correct.items():
        bench, subj = ("medqa", "step1") if key.startswith("medqa") else ("kormedmcqa", key.split("/")[1])
        rec = {"id": key, "benchmark": bench, "subject": subj, "gold": "A", "predicted": "A" if ok else "B", "correct": ok}
        if domains is not None:
            rec["domain"] = domains.get(key, subj)
        lines.append(rec)
    (d / "predictions.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return d


def test_compare_reports_each_domain_and_flags_law_forgetting(tmp_path, capsys):
    ids = [f"medqa/{i}" for i in range(20)] + [f"kormedmcqa/{s}/{i}" for s in SUBJECTS for i in range(40)]
    law = {k: "medical_law" for k in ids if k.startswith("kormedmcqa") and int(k.rsplit("/", 1)[1]) < 15}
    base_c = {k: True for k in ids}
    other_c = {k: not (k in law) for k in ids}  # every law item lost, nothing else
    base = _write(tmp_path / "base", base_c, law)
    other = _write(tmp_path / "r10-3", other_c, law)
    res = compare(CompareConfig(eval_dirs=[str(base), str(other)], out=str(tmp_path / "c.json"), n_resamples=2000))
    rows = {(r["benchmark"], r["subject"], r["domain"]): r for r in res["comparisons"][0]["rows"]}
    lawrow = rows[("kormedmcqa", "(all)", "medical_law")]
    assert lawrow["n"] == 30 and lawrow["delta_pp"] == -100.0 and lawrow["forgetting"]
    assert lawrow["b"] == 30 and lawrow["mcnemar_p"] < 1e-8
    assert rows[("kormedmcqa", "(all)", "doctor")]["n"] == 25 and rows[("kormedmcqa", "(all)", "doctor")]["delta_pp"] == 0
    # MedQA's domains are its subjects: no duplicate domain rows
    assert [k for k in rows if k[0] == "medqa"] == [("medqa", "(all)", "(all)"), ("medqa", "step1", "(all)")]
    assert "| kormedmcqa | (all) | medical_law | 30 |" in capsys.readouterr().out
    assert "note" not in res
    # predictions from before domains existed: no domain rows, and the result says why
    old = _write(tmp_path / "old", other_c, None)
    res = compare(CompareConfig(eval_dirs=[str(base), str(old)], out=str(tmp_path / "c2.json"), n_resamples=2000))
    assert {r["domain"] for r in res["comparisons"][0]["rows"]} == {"(all)"} and "domain" in res["note"]
    # evals tagged with different rules are not compared silently
    other_rules = _write(tmp_path / "other-rules", other_c, {k: "x" for k in law})
    with pytest.raises(Exception, match="different domain rules"):
        compare(CompareConfig(eval_dirs=[str(base), str(other_rules)], out=str(tmp_path / "c3.json"), n_resamples=2000))
    assert np.isfinite(lawrow["ci_low_pp"])
