"""The ratio sweep as a decision: rerun/resume/retry semantics of sweep trials, the recommendation's
statistics, and one real 2-ratio sweep (+ the base model) whose report, plot and recommendation
are checked against the trial files."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import markdown_table
from medslm import trials as T
from medslm.config import ConfigError
from medslm.forgetting import compare_predictions, read_predictions
from medslm.report import BASE, ReportConfig, Trial, pareto, recommend
from medslm.sweep import build_trials, collect, parse_sweep_args, run_sweep

REPO = Path(__file__).resolve().parents[1]
TINY = str(REPO / "configs" / "tiny.yaml")
FAST = ["--train.max_steps=2", "--data.max_seq_len=384", "--train.micro_batch_size=2", "--train.save_every=1"]


# ---------------------------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------------------------


def test_sweep_options_for_retries_reference_weights_and_report(tmp_path):
    cfg = parse_sweep_args("ratios", ["--ratios", "5:5,10:3", "--out", str(tmp_path), "--retries", "3", "--reference", "5:5",
                                      "--weights-legal", "kormedmcqa=1,domain:medical_law=2", "--report-only",
                                      "--domain-rules", "x.yaml"], "x")
    assert cfg.retries == 3 and cfg.report.reference == "5:5" and cfg.report_only and cfg.domain_rules == "x.yaml"
    assert cfg.report.weights["legal"] == {"kormedmcqa": 1.0, "domain:medical_law": 2.0}
    assert cfg.report.weights["clinical"] == {"medqa": 0.5, "kormedmcqa": 0.5}  # the others keep their defaults
    assert [n for n, _, _ in build_trials(cfg)] == ["ratio-5-5", "ratio-10-3"]  # no base trial when 5:5 is the reference
    assert parse_sweep_args("ratios", ["--out", str(tmp_path)], "x").retries == 1  # retried once by default


@pytest.mark.parametrize(
    "kind,argv,match",
    [
        ("ratios", ["--retries", "-1"], "--retries"),
        ("ratios", ["--retries", "1.5"], "--retries"),
        ("ratios", ["--ratios", "5:5,10:3", "--reference", "7:3"], "not one of the swept ratios"),
        ("ratios", ["--reference", "best"], "--reference"),
        ("ratios", ["--weights-legal", "kormedmcqa"], "METRIC=WEIGHT"),
        ("ratios", ["--weights-legal", "medqa=-1"], ">= 0"),
        ("ratios", ["--weights-legal", "medqa=0"], "positive"),
        ("ratios", ["--weights-legal", "german=1"], "METRIC=WEIGHT"),
        ("ratios", ["--weights-other", "medqa=1"], "unknown option"),
        ("grid", ["--gpus-per-trial", "nan"], "--gpus-per-trial must be a number >= 0, got nan"),  # Ray waited forever for nan GPUs
        ("grid", ["--address", ""], "--address is empty"),  # an unset variable started a local Ray treated as remote
        ("ratios", ["--ratios", "5:5,abc"], "--ratios: ratio must look like EN:KO"),
        ("grid", ["--reference", "base"], "ratio sweep"),
        ("grid", ["--report-only"], "ratio sweep"),
    ],
)
def test_bad_sweep_options_are_one_line_errors(tmp_path, kind, argv, match):
    with pytest.raises(ConfigError, match=match):
        parse_sweep_args(kind, [*argv, "--out", str(tmp_path)], "x")


# ---------------------------------------------------------------------------------------------
# Rerun, resume, retry
# ---------------------------------------------------------------------------------------------


def _ratio_trials(tmp_path, *extra):
    return build_trials(parse_sweep_args("ratios", ["--ratios", "5:5,10:3", "--out", str(tmp_path), *FAST, *extra], "x"))


def test_a_sweep_that_could_only_mislabel_its_trials_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="lora.enabled=false: a rank x alpha grid needs LoRA"):
        build_trials(parse_sweep_args("grid", ["--ranks", "4,8", "--alphas", "16", "--out", str(tmp_path), *FAST,
                                               "--lora.enabled=false", "--model.quantization=none"], "x"))
    with pytest.raises(ConfigError, match="--out is empty"):
        parse_sweep_args("grid", ["--out", ""], "x")


def test_a_rerun_with_other_processes_per_trial_is_another_config(tmp_path):
    """The trial key held no world size: a rerun with --procs-per-trial 2 reused trials trained at
    half the global batch as 'finished earlier'."""
    (name, _, one) = _ratio_trials(tmp_path)[1]
    (_, _, two) = _ratio_trials(tmp_path, "--procs-per-trial", "2")[1]
    assert one.distributed.world_size == 1 and two.distributed.world_size == 2
    key = {"domain_rules_sha256": "abc"}
    T.write_trial(one.train.output_dir, {"stage": "done", "config": T.config_key(one), "eval_key": key})
    assert T.plan(name, one, key) == "done"
    with pytest.raises(ConfigError, match=r"distributed.world_size: 1 then, 2 now"):
        T.plan(name, two, key)
    # a trial.json from before the key held it: the world size its run recorded in config.yaml
    old = T.config_key(one)
    old["distributed"]["world_size"] = None
    T.write_trial(one.train.output_dir, {"stage": "done", "config": old, "eval_key": key})
    (Path(one.train.output_dir) / "config.yaml").write_text("distributed:\n  world_size: 1\n")
    assert T.plan(name, one, key) == "done"
    with pytest.raises(ConfigError, match=r"distributed.world_size: 1 then, 2 now"):
        T.plan(name, two, key)


def test_plan_skips_done_reevaluates_and_refuses_another_config(tmp_path):
    trials = _ratio_trials(tmp_path)
    (name, params, tc) = trials[1]
    key = {"domain_rules_sha256": "abc"}
    assert T.plan(name, tc, key) == "new"
    ckpt = Path(tc.train.output_dir) / "checkpoints" / "step-00000001"
    ckpt.mkdir(parents=True)
    (ckpt / "state.pt").write_bytes(b"")
    assert T.plan(name, tc, key) == "resume"
    T.write_trial(tc.train.output_dir, {"stage": "running", "config": T.config_key(tc)})
    assert T.plan(name, tc, key) == "resume"
    T.write_trial(tc.train.output_dir, {"stage": "done", "config": T.config_key(tc), "eval_key": key})
    assert T.plan(name, tc, key) == "done"
    assert T.plan(name, tc, {"domain_rules_sha256": "other"}) == "evaluate"  # new rules: evaluate again, no training
    # progress, resume and output_dir change no result
    tc.train.progress, tc.train.resume = True, None
    assert T.plan(name, tc, key) == "done"
    other = _ratio_trials(tmp_path, "--train.lr=0.1")[1][2]
    with pytest.raises(ConfigError, match=r"ratio-5-5 .*train.lr: 0.002 then, 0.1 now"):
        T.plan(name, other, key)
    # the base trial depends only on the model and the items: another lr reuses it
    base_name, base_params, base_tc = trials[0]
    T.write_trial(base_tc.train.output_dir, {"stage": "done", "config": T.config_key(base_tc, reference=True), "eval_key": key})
    assert T.plan(base_name, _ratio_trials(tmp_path, "--train.lr=0.1")[0][2], key, reference=True) == "done"
    with pytest.raises(ConfigError, match="model.quantization"):
        T.plan(base_name, _ratio_trials(tmp_path, "--model.quantization=none")[0][2], key, reference=True)


def test_collect_tells_interrupted_from_failed(tmp_path):
    trials = _ratio_trials(tmp_path)
    eval_key = {"domain_rules_sha256": "abc"}
    done_tc = trials[1][2]
    T.write_trial(done_tc.train.output_dir, {"stage": "done", "config": T.config_key(done_tc), "eval_key": eval_key,
                                             "metrics": {"acc_medqa": 0.5}, "starts": [{"resume_from_step": 0}, {"resume_from_step": 1}]})
    cut = Path(trials[2][2].train.output_dir) / "checkpoints" / "step-00000007"
    cut.mkdir(parents=True)
    (cut / "state.pt").write_bytes(b"")
    crashed = SimpleNamespace(config={"trial": "base"}, error=RuntimeError("worker died"), metrics={})
    stopped = SimpleNamespace(config={"trial": "ratio-10-3"}, error=None, metrics={})  # Ctrl-C: no result, no error
    recs = {r["trial"]: r for r in collect(trials, [crashed, stopped], tmp_path, eval_key, ran={"base", "ratio-10-3"})}
    assert recs["base"]["status"] == "failed" and "worker died" in recs["base"]["error"]
    assert recs["ratio-10-3"]["status"] == "interrupted" and "resume from checkpoint step 7" in recs["ratio-10-3"]["note"]
    assert recs["ratio-5-5"]["status"] == "ok" and "reused" in recs["ratio-5-5"]["note"] and "resumed from step 1" in recs["ratio-5-5"]["note"]
    user = SimpleNamespace(config={"trial": "ratio-10-3"}, error=None, metrics={"user_error": "DataError: bad row"})
    assert collect(trials, [user], tmp_path, eval_key)[2]["error"] == "DataError: bad row"
    # a done trial evaluated under other domain rules is not reported as this run's result
    assert collect(trials, [], tmp_path, {"domain_rules_sha256": "new"})[1]["status"] == "interrupted"


def test_only_unfinished_trials_go_to_tune_with_the_retry_count(tmp_path, monkeypatch):
    import ray
    from ray import tune

    seen = {}

    class FakeTuner:
        def __init__(self, trainable, param_space, tune_config, run_config):
            seen["space"], seen["run_config"] = param_space, run_config

        def fit(self):
            return []

    monkeypatch.setattr(ray, "is_initialized", lambda: True)
    monkeypatch.setattr(tune, "Tuner", FakeTuner)
    monkeypatch.setattr(tune, "with_parameters", lambda fn, **kw: fn)
    cfg = parse_sweep_args("ratios", ["--ratios", "5:5,10:3", "--out", str(tmp_path), "--retries", "2", "--reference", "5:5", *FAST], "x")
    from medslm.domains import load_rules

    done = build_trials(cfg)[0][2]
    T.write_trial(done.train.output_dir, {"stage": "done", "config": T.config_key(done), "eval_key": T.eval_key(load_rules()), "metrics": {}})
    monkeypatch.setattr("medslm.report.write_decision_report", lambda *a, **k: {"report": "-", "plot": "-"})
    records = run_sweep(cfg)
    assert seen["run_config"].failure_config.max_failures == 2
    assert seen["space"]["trial"] == {"grid_search": ["ratio-10-3"]}  # 5:5 finished: skipped
    assert [r["status"] for r in records] == ["ok", "interrupted"]
    seen.clear()
    cfg.report_only = True
    run_sweep(cfg)
    assert not seen  # --report-only runs nothing


# ---------------------------------------------------------------------------------------------
# The recommendation's statistics
# ---------------------------------------------------------------------------------------------


def _trial(label: str, correct: dict[str, bool], items: dict[str, tuple[str, str, str]]) -> Trial:
    preds = {i: {"id": i, "benchmark": b, "subject": s, "domain": d, "gold": "A", "correct": correct[i]} for i, (b, s, d) in items.items()}
    return Trial(label, label, Path("."), {}, preds, {})


def _items(n_en: int, n_ko: int, n_law: int) -> dict[str, tuple[str, str, str]]:
    items = {f"en{i}": ("medqa", "step1", "step1") for i in range(n_en)}
    items |= {f"ko{i}": ("kormedmcqa", "doctor", "medical_law" if i < n_law else "doctor") for i in range(n_ko)}
    return items


def test_recommendation_names_a_winner_only_when_the_data_separate_the_ratios():
    items = _items(100, 100, 20)
    rng = np.random.default_rng(0)
    good = {i: bool(rng.random() < 0.9) for i in items}
    bad = {i: bool(rng.random() < 0.3) for i in items}
    cfg = ReportConfig(n_resamples=2000)
    rec = recommend([_trial("5:5", good, items), _trial("10:3", bad, items)], {"medqa": 0.5, "kormedmcqa": 0.5}, cfg)
    assert rec["winner"] == "5:5" and rec["indistinguishable"] == ["5:5"]
    want = 0.5 * np.mean([good[f"en{i}"] for i in range(100)]) + 0.5 * np.mean([good[f"ko{i}"] for i in range(100)])
    assert rec["scores"]["5:5"] == pytest.approx(want)
    lo, hi = rec["difference_intervals"]["10:3"]
    assert 0 < lo < hi
    # one item's difference: the intervals reach 0, so no winner is named
    near = dict(good)
    near["ko5"] = not near["ko5"]
    rec = recommend([_trial("5:5", good, items), _trial("7:3", near, items), _trial("10:3", bad, items)], {"medqa": 0.5, "kormedmcqa": 0.5}, cfg)
    assert rec["winner"] is None and set(rec["indistinguishable"]) == {"5:5", "7:3"}
    assert "cannot separate" in rec["statement"] and rec["confidence"] == pytest.approx(1 - 0.05 / 2)
    # a Medical Law objective scores the law items only
    law_only = {i: (items[i][2] == "medical_law") for i in items}
    rec = recommend([_trial("2:8", law_only, items), _trial("5:5", good, items)], {"domain:medical_law": 1.0}, cfg)
    assert rec["scores"]["2:8"] == 1.0 and rec["best"] == "2:8"
    # a domain no item has cannot be scored, and the report says so
    rec = recommend([_trial("5:5", good, items)], {"domain:dentistry": 1.0}, cfg)
    assert rec["winner"] is None and "no evaluated item in domain:dentistry" in rec["statement"]
    assert recommend([], {"medqa": 1.0}, cfg)["winner"] is None


def test_one_differing_item_in_a_one_item_group_names_no_winner():
    """Resampling within (benchmark, subject, domain) cells held a one-item Medical Law cell fixed,
    so one differing item 'won' with 95% confidence; resampling the items as one set does not."""
    items = _items(40, 40, 1)  # ko0 is the only Medical Law item
    rng = np.random.default_rng(3)
    a = {i: bool(rng.random() < 0.6) for i in items}
    a["ko0"] = True
    b = dict(a)
    b["ko0"] = False
    cfg = ReportConfig(n_resamples=4000)
    for weights in ({"kormedmcqa": 0.5, "domain:medical_law": 0.5}, {"domain:medical_law": 1.0}, {"medqa": 0.5, "kormedmcqa": 0.5}):
        rec = recommend([_trial("5:5", a, items), _trial("10:3", b, items)], weights, cfg)
        assert rec["best"] == "5:5" and rec["winner"] is None, (weights, rec["statement"])
        lo, hi = rec["difference_intervals"]["10:3"]
        assert lo <= 0 <= hi
    # ten law items that all differ do separate the ratios on the legal objective
    items = _items(40, 40, 10)
    a = {i: bool(rng.random() < 0.6) for i in items} | {f"ko{j}": True for j in range(10)}
    b = a | {f"ko{j}": False for j in range(10)}
    rec = recommend([_trial("5:5", a, items), _trial("10:3", b, items)], {"kormedmcqa": 0.5, "domain:medical_law": 0.5}, cfg)
    assert rec["winner"] == "5:5" and rec["difference_intervals"]["10:3"][0] > 0


def _eval_dir(run: Path, correct: dict[str, bool], items: dict[str, tuple[str, str, str]], **settings) -> dict:
    from medslm.evaluation import summarise

    (run / "eval").mkdir(parents=True)
    preds = [{"id": i, "benchmark": b, "subject": s, "domain": d, "gold": "A", "predicted": "A" if correct[i] else "B",
              "correct": correct[i]} for i, (b, s, d) in items.items()]
    (run / "eval" / "predictions.jsonl").write_text("".join(json.dumps(p) + "\n" for p in preds))
    ev = {"model": {"name_or_path": "embedded", "quantization": "nf4", "run": str(run)}, "scoring": "letter", "split": "test",
          "n_items": len(preds), "benchmarks": summarise(preds), **settings}
    (run / "eval" / "eval.json").write_text(json.dumps(ev))
    return {"trial": run.name, "status": "ok", "run_dir": str(run), "params": {"ratio": run.name.replace("-", ":")}}


def test_the_report_refuses_trials_whose_eval_files_disagree_or_were_evaluated_differently(tmp_path):
    from medslm.cli import UserError
    from medslm.report import load_trials

    items = _items(10, 10, 2)
    right = {i: n % 2 == 0 for n, i in enumerate(items)}
    recs = [_eval_dir(tmp_path / "5-5", right, items), _eval_dir(tmp_path / "10-3", right, items)]
    assert [t.label for t in load_trials(recs)] == ["5:5", "10:3"]
    # one trial re-evaluated by hand with another scoring: its accuracies are not comparable
    ev_path = tmp_path / "10-3" / "eval" / "eval.json"
    ev = json.loads(ev_path.read_text())
    (tmp_path / "10-3" / "eval" / "eval.json").write_text(json.dumps(ev | {"scoring": "option_text"}))
    with pytest.raises(UserError, match=r"evaluated differently.*scoring: 'letter' in .*5-5.*'option_text' in .*10-3"):
        load_trials(recs)
    # an accuracy edited in eval.json, its predictions left as they were
    ev["benchmarks"]["kormedmcqa"]["accuracy"] = 0.9
    ev_path.write_text(json.dumps(ev))
    with pytest.raises(UserError, match=r"10-3/eval/eval.json: field 'benchmarks.kormedmcqa.accuracy' is 0.9, but .* has 5/10 correct"):
        load_trials(recs)


def test_pareto_front():
    pts = {"5:5": (0.6, 0.5), "10:3": (0.7, 0.4), "7:3": (0.65, 0.39), "2:8": (0.5, 0.55), "3:7": (0.5, 0.5)}
    assert pareto(pts) == ["2:8", "5:5", "10:3"]


# ---------------------------------------------------------------------------------------------
# A real 2-ratio sweep, its rerun and its report
# ---------------------------------------------------------------------------------------------


def _pct(acc: dict) -> str:
    lo, hi = acc["ci95"]
    return f"{100 * acc['accuracy']:.1f} [{100 * lo:.1f}, {100 * hi:.1f}]"


def test_ratio_sweep_crash_retry_rerun_and_decision_report(tmp_path, monkeypatch, ray_session):
    out = tmp_path / "sweep"
    argv = ["--config", TINY, "--ratios", "5:5,10:3", "--out", str(out), *FAST]
    monkeypatch.setenv("MEDSLM_FAULT_AT_STEP", "1")  # every training trial is SIGKILLed once, after its step-1 checkpoint
    records = run_sweep(parse_sweep_args("ratios", argv, "x"))
    monkeypatch.delenv("MEDSLM_FAULT_AT_STEP")
    assert [(r["trial"], r["status"]) for r in records] == [("base", "ok"), ("ratio-5-5", "ok"), ("ratio-10-3", "ok")], records
    for r in records[1:]:
        doc = T.read_trial(r["run_dir"])
        # Ray retried the crashed trial once, and it resumed from its checkpoint
        assert [s["resume_from_step"] for s in doc["starts"]] == [0, 1], doc["starts"]
        assert doc["metrics"]["steps"] == 2 and "resumed from step 1" in r["note"]
        m = T.measured(r["run_dir"])
        assert m["steps_logged"] == 2 and doc["metrics"]["tokens_trained"] == m["tokens_trained"] > 0
    base = T.read_trial(out / "base")
    assert base["metrics"]["acc_medqa"] is not None and not (out / "base" / "adapter").exists()  # no training

    # --- the report's numbers are the trial files' numbers
    md = (out / "report.md").read_text(encoding="utf-8")
    assert "Embedded default: mechanics only" in md
    evals = {lab: json.loads((out / d / "eval" / "eval.json").read_text(encoding="utf-8"))
             for lab, d in (("base model (no training)", "base"), ("5:5", "ratio-5-5"), ("10:3", "ratio-10-3"))}
    acc = markdown_table(md, "| ratio | status |")
    assert [row[0] for row in acc[1:]] == list(evals)
    for row in acc[1:]:
        ev = evals[row[0]]
        assert row[2] == _pct(ev["benchmarks"]["medqa"]) and row[3] == _pct(ev["benchmarks"]["kormedmcqa"])
        if row[0] != "base model (no training)":
            doc = T.read_trial(out / f"ratio-{row[0].replace(':', '-')}")
            assert row[4] == f"{doc['metrics']['tokens_trained']:,}" and row[6] == f"{doc['metrics']['peak_mem_gb']:.2f}"
    ko = markdown_table(md, "| ratio | dentist")
    law_col = next(k for k, h in enumerate(ko[0]) if h.startswith("~medical_law"))
    for row in ko[1:]:
        ev = evals["base model (no training)" if row[0] == "base model" else row[0]]["benchmarks"]["kormedmcqa"]
        assert row[law_col] == _pct(ev["domains"]["medical_law"])
        assert row[1] == _pct(ev["subjects"]["dentist"])
    # forgetting: the deltas are compare's numbers on the predictions files
    base_preds = read_predictions(out / "base" / "eval")
    forg = markdown_table(md, "| ratio | (all) | dentist")
    for row in forg[1:]:
        rows = compare_predictions(base_preds, read_predictions(out / f"ratio-{row[0].replace(':', '-')}" / "eval"))
        overall = next(r for r in rows if r["benchmark"] == "kormedmcqa" and r["subject"] == "(all)" and r["domain"] == "(all)")
        assert row[1].startswith(f"{overall['delta_pp']:+.1f} [{overall['ci_low_pp']:+.1f}, {overall['ci_high_pp']:+.1f}] p={overall['mcnemar_p']:.2g}")
        law = next(r for r in rows if r["benchmark"] == "kormedmcqa" and r["domain"] == "medical_law")
        assert row[forg[0].index("~medical_law")].startswith(f"{law['delta_pp']:+.1f}")
    # the recommendation: every use present, scores recomputed from the predictions
    rec = json.loads((out / "recommendation.json").read_text(encoding="utf-8"))
    assert set(rec["uses"]) == {"education", "clinical", "legal"} and rec["reference"] == BASE and rec["embedded_default"]
    p55 = read_predictions(out / "ratio-5-5" / "eval")
    en = np.mean([p["correct"] for p in p55.values() if p["benchmark"] == "medqa"])
    ko_acc = np.mean([p["correct"] for p in p55.values() if p["benchmark"] == "kormedmcqa"])
    assert rec["uses"]["education"]["scores"]["5:5"] == pytest.approx(0.7 * en + 0.3 * ko_acc)
    for use in rec["uses"].values():
        assert use["statement"] and set(use["indistinguishable"]) <= {"5:5", "10:3"}
        assert (use["winner"] is None) == (len(use["indistinguishable"]) > 1)
    rec_rows = markdown_table(md, "| use |")
    assert len(rec_rows) == 4 and all(row[2] in ("5:5", "10:3") for row in rec_rows[1:])
    png = (out / "tradeoff.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000

    # --- the same command again: nothing runs, every trial is reused, the report is rebuilt the same
    from ray import tune

    def _no_tune(*_a, **_k):
        raise AssertionError("a finished sweep must not start trials")

    monkeypatch.setattr(tune, "Tuner", _no_tune)
    before = {r["trial"]: (Path(r["run_dir"]) / "trial.json").stat().st_mtime_ns for r in records}
    again = run_sweep(parse_sweep_args("ratios", argv, "x"))
    assert [r["status"] for r in again] == ["ok"] * 3 and all("reused" in r["note"] for r in again)
    assert {r["trial"]: (Path(r["run_dir"]) / "trial.json").stat().st_mtime_ns for r in again} == before
    assert (out / "report.md").read_text(encoding="utf-8") == md
    (out / "report.md").unlink()
    run_sweep(parse_sweep_args("ratios", [*argv, "--report-only", "--reference", "5:5"], "x"))
    md55 = (out / "report.md").read_text(encoding="utf-8")
    assert "Reference: the 5:5 mix" in md55 and re.search(r"^\| 10:3 \| [+-]\d", md55, re.M)


def test_base_trial_scores_the_configs_own_base_model_on_its_test_items(tmp_path):
    """The reference trial: the trial config's model section (here a non-default embedded seed, no
    quantisation) on the items the trials are evaluated on, with no adapter."""
    import torch

    from medslm.config import parse_config
    from medslm.dataset import load_and_split
    from medslm.evaluation import EvalConfig, evaluate
    from medslm.modeling import load_base_model
    from medslm.scoring import score_letters
    from medslm.tokenizer import load_tokenizer
    from medslm.train_config import TrainConfig

    tc = parse_config(TrainConfig, ["--config", TINY, "--model.embedded_seed=3", "--model.quantization=none"])
    ev = evaluate(EvalConfig(model="embedded", split="test", out=str(tmp_path / "base"), progress=False), base_of=tc)
    items = load_and_split(tc.data).splits.splits["test"]
    assert [p["id"] for p in ev["predictions"]] == [it.id for it in items]
    model = load_base_model(tc.model, torch.device("cpu"), packed=False).eval()
    want = score_letters(model, load_tokenizer(None), items, 32, 16384, False)
    assert [p["scores"] for p in ev["predictions"]] == [[float(s) for s in row] for row in want]
    assert ev["eval"]["model"]["adapter"] is None and ev["eval"]["model"]["quantization"] == "none"
    with pytest.raises(ValueError, match="base_of"):
        evaluate(EvalConfig(model="embedded:tiny-gemma3", out=str(tmp_path / "x")), base_of=tc)
