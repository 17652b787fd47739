"""The ratio sweep's decision report: accuracy per ratio, forgetting against a reference, the
EN/KO trade-off plot and a deployment recommendation per use (the paper's section 5.3).

``write_decision_report(records, cfg, out, meta)`` reads only measured files -- each finished
trial's ``eval/eval.json`` and ``eval/predictions.jsonl`` and its ``trial.json`` -- and writes

- ``OUT/report.md``: a table per ratio (MedQA and KorMedMCQA accuracy with Wilson 95% intervals,
  KorMedMCQA per subject and per domain, tokens trained, minutes in optimizer steps, peak memory);
  forgetting of every ratio against the reference (the base model before fine-tuning by default,
  or one ratio, e.g. ``5:5`` for the paper's framing): the paired bootstrap interval and exact
  McNemar p of each delta (:func:`medslm.forgetting.compare_predictions`, the numbers of
  ``evaluate.py compare``) overall, per subject and per domain, significant drops marked; and the
  recommendation;
- ``OUT/tradeoff.png``: English vs Korean accuracy, one labelled point per ratio with both
  intervals, the non-dominated ratios joined; one small panel per Korean domain;
- ``OUT/recommendation.json``: for each use, the objective (weights over accuracies), the score of
  every ratio, the best one, and the set of ratios the data cannot tell apart from it.

How a recommendation is made. A use's objective is a weighted mean of accuracies: ``medqa``,
``kormedmcqa``, ``subject:NAME`` or ``domain:NAME`` (e.g. ``domain:medical_law``). Every ratio is
scored on the same items, so differences are paired: the test items are resampled with
replacement as one set, the same draw for every ratio, and the objective is recomputed with each
accuracy over the items drawn into its group (a group that a draw misses adds no difference).
Resampling within small groups instead would hold a one-item group fixed and let one item decide. A ratio is *indistinguishable* from the best when the bootstrap interval of
``score(best) - score(ratio)`` reaches 0, at confidence ``1 - alpha / (k - 1)`` for ``k`` ratios
(Bonferroni, so that calling a whole set separated keeps the stated level). When that set holds
more than the best ratio the report says the data cannot separate them and names no winner.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medslm.cli import UserError
from medslm.config import ConfigError, parse_ratio
from medslm.forgetting import ALL, check_same_domains, check_same_items, compare_predictions, has_domains, read_eval_dir, setting_differences
from medslm.stats import MIN_BOOTSTRAP_RESAMPLES

BASE = "base"


@dataclass(frozen=True)
class Use:
    title: str
    framing: str
    weights: dict[str, float]


# The paper's section 5.3, as stated objectives; every weight is an option (--weights-NAME).
USES: dict[str, Use] = {
    "education": Use("International medical education", "English-weighted", {"medqa": 0.7, "kormedmcqa": 0.3}),
    "clinical": Use("Korean clinical support", "balanced", {"medqa": 0.5, "kormedmcqa": 0.5}),
    "legal": Use("Korean licensing and legal compliance", "Korean and Medical Law weighted", {"kormedmcqa": 0.5, "domain:medical_law": 0.5}),
}


def _default_weights() -> dict[str, dict[str, float]]:
    return {k: dict(u.weights) for k, u in USES.items()}


@dataclass
class ReportConfig:
    """The decision report's options (``sweeps/ratios.py --reference ... --weights-legal ...``)."""

    reference: str = BASE  # "base": the base model before fine-tuning; or a swept ratio, e.g. 5:5
    weights: dict[str, dict[str, float]] = field(default_factory=_default_weights)
    n_resamples: int = 10_000
    seed: int = 0
    alpha: float = 0.05

    def validate(self, ratios: list[str]) -> None:
        if self.reference != BASE:
            try:
                ref = parse_ratio(self.reference)
            except ConfigError:
                raise ConfigError(f"--reference must be 'base' or one of the swept ratios, got {self.reference!r}") from None
            if ref not in [parse_ratio(r) for r in ratios]:
                raise ConfigError(f"--reference {self.reference}: not one of the swept ratios ({', '.join(ratios)})")
        if self.n_resamples < MIN_BOOTSTRAP_RESAMPLES:
            raise ConfigError(f"report resamples must be >= {MIN_BOOTSTRAP_RESAMPLES}")
        if not 0 < self.alpha < 1:
            raise ConfigError(f"report alpha must be in (0, 1), got {self.alpha}")


REPORT_OPTIONS = ("reference", *(f"weights-{k}" for k in USES))


def parse_weights(option: str, text: str) -> dict[str, float]:
    """``medqa=0.7,kormedmcqa=0.3`` -> weights; metrics: medqa, kormedmcqa, subject:NAME, domain:NAME."""
    out: dict[str, float] = {}
    for part in [p.strip() for p in text.split(",") if p.strip()]:
        name, sep, value = part.partition("=")
        name = name.strip()
        ok_name = name in ("medqa", "kormedmcqa") or (name.partition(":")[0] in ("subject", "domain") and name.partition(":")[2])
        if not sep or not ok_name:
            raise ConfigError(f"--{option}: {part!r} is not METRIC=WEIGHT (METRIC: medqa, kormedmcqa, subject:NAME, domain:NAME)")
        try:
            w = float(value)
        except ValueError:
            raise ConfigError(f"--{option}: weight {value!r} of {name} is not a number") from None
        if not math.isfinite(w) or w < 0:
            raise ConfigError(f"--{option}: weight of {name} must be finite and >= 0, got {value}")
        if name in out:
            raise ConfigError(f"--{option}: {name} is given twice")
        out[name] = w
    if not out or sum(out.values()) <= 0:
        raise ConfigError(f"--{option}: give at least one positive weight, e.g. medqa=0.5,kormedmcqa=0.5")
    return out


def set_option(cfg: ReportConfig, key: str, value: str) -> None:
    if key == "reference":
        cfg.reference = BASE if value.strip().lower() == BASE else value.strip()
    else:
        cfg.weights[key[len("weights-"):]] = parse_weights(key, value)


# ---------------------------------------------------------------------------------------------
# Reading the trials
# ---------------------------------------------------------------------------------------------


@dataclass
class Trial:
    name: str
    label: str  # "5:5", or "base"
    run_dir: Path
    eval: dict[str, Any]  # eval.json
    preds: dict[str, dict[str, Any]]  # predictions.jsonl by id
    metrics: dict[str, Any]  # trial.json metrics


def label_of(record: dict[str, Any]) -> str:
    p = record["params"]
    return BASE if "reference" in p else str(p.get("ratio", record["trial"]))


def load_trials(records: list[dict[str, Any]]) -> list[Trial]:
    """The finished trials (status ok) with their eval files; every one must share the same items."""
    out: list[Trial] = []
    for r in records:
        if r["status"] != "ok":
            continue
        ev, preds = read_eval_dir(Path(r["run_dir"]) / "eval")  # eval.json must be its predictions' count
        out.append(Trial(r["trial"], label_of(r), Path(r["run_dir"]), ev, preds, r.get("metrics", {})))
    differ = setting_differences([(str(t.run_dir / "eval" / "eval.json"), t.eval) for t in out])
    if differ:
        raise UserError("the trials were evaluated differently, so their accuracies cannot be ranked: " + "; ".join(differ)
                        + ". Re-evaluate the odd ones as the sweep does (`python evaluate.py --run RUN_DIR`: the run's data, letter scoring), then --report-only")
    for t in out[1:]:
        check_same_items(str(out[0].run_dir / "eval"), out[0].preds, str(t.run_dir / "eval"), t.preds)
        if has_domains(out[0].preds, t.preds):
            check_same_domains(str(out[0].run_dir / "eval"), out[0].preds, str(t.run_dir / "eval"), t.preds)
    return out


def _acc(ev: dict[str, Any], bench: str, kind: str | None = None, name: str | None = None) -> dict[str, Any] | None:
    b = ev.get("benchmarks", {}).get(bench)
    if b is None or kind is None:
        return b
    return b.get(kind, {}).get(name)


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def acc_cell(s: dict[str, Any] | None) -> str:
    if s is None:
        return "-"
    lo, hi = s["ci95"]
    return f"{pct(s['accuracy'])} [{pct(lo)}, {pct(hi)}]"


def _num(v: Any, fmt: str) -> str:
    return "-" if v is None or (isinstance(v, float) and not math.isfinite(v)) else format(v, fmt)


# ---------------------------------------------------------------------------------------------
# Forgetting and the recommendation
# ---------------------------------------------------------------------------------------------


def forgetting(trials: list[Trial], reference: Trial, cfg: ReportConfig) -> dict[str, list[dict[str, Any]]]:
    """label -> compare rows (overall, per subject, per domain) of that ratio against the reference."""
    return {
        t.label: compare_predictions(reference.preds, t.preds, cfg.n_resamples, cfg.seed, cfg.alpha)
        for t in trials
        if t is not reference and t.label != BASE
    }


def _metric_mask(metric: str, ids: list[str], preds: dict[str, dict[str, Any]]) -> np.ndarray:
    kind, _, name = metric.partition(":")
    if metric in ("medqa", "kormedmcqa"):
        return np.array([preds[i]["benchmark"] == metric for i in ids])
    key = "subject" if kind == "subject" else "domain"
    return np.array([preds[i].get(key) == name for i in ids])


def recommend(trials: list[Trial], weights: dict[str, float], cfg: ReportConfig, use: Use | None = None) -> dict[str, Any]:
    """Best ratio under ``weights`` and the ratios the paired bootstrap cannot tell apart from it."""
    cands = [t for t in trials if t.label != BASE]
    doc: dict[str, Any] = {"weights": weights, "title": use.title if use else None, "framing": use.framing if use else None}
    if not cands:
        return {**doc, "scores": {}, "best": None, "indistinguishable": [], "winner": None, "statement": "no ratio finished: nothing to recommend"}
    ids = sorted(cands[0].preds)
    base_preds = cands[0].preds
    masks = {m: _metric_mask(m, ids, base_preds) for m in weights}
    empty = [m for m, mk in masks.items() if weights[m] > 0 and not mk.any()]
    if empty:
        return {**doc, "scores": {}, "best": None, "indistinguishable": [], "winner": None,
                "statement": f"cannot be scored: no evaluated item in {', '.join(empty)} (see the domain rules)"}
    correct = np.array([[bool(t.preds[i]["correct"]) for i in ids] for t in cands])  # [R, N]
    total_w = sum(weights.values())

    def score(counts: dict[str, np.ndarray]) -> np.ndarray:
        return sum(weights[m] * counts[m] / masks[m].sum() for m in weights if weights[m] > 0) / total_w

    observed = score({m: correct[:, masks[m]].sum(axis=1).astype(float) for m in weights if weights[m] > 0})
    best = int(np.argmax(observed))  # ties: the first ratio in sweep order
    k = len(cands)
    result = {**doc, "scores": {t.label: float(s) for t, s in zip(cands, observed)}, "best": cands[best].label}
    if k == 1:
        return {**result, "indistinguishable": [cands[0].label], "winner": None, "confidence": None,
                "statement": f"only {cands[0].label} finished: there is nothing to compare it with"}
    # The paired bootstrap: resample the items with replacement (the same draw for every ratio) and
    # take each weighted accuracy over the items drawn into its group. Not stratified: resampling
    # within small groups would hold a group of one item fixed, and one differing item would then
    # decide with "95% confidence". A draw with no item of a weighted group adds no difference there.
    active = [m for m in weights if weights[m] > 0]
    member = np.stack([masks[m] for m in active]).astype(float)  # [M, N]
    w = np.array([weights[m] for m in active]) / total_w
    right = correct.astype(float)  # [R, N]
    n = len(ids)
    rng = np.random.default_rng(cfg.seed)
    diffs = np.empty((cfg.n_resamples, k))
    chunk = max(1, min(500, 2_000_000 // n))
    for start in range(0, cfg.n_resamples, chunk):
        b = min(chunk, cfg.n_resamples - start)
        drawn = rng.multinomial(n, np.full(n, 1.0 / n), size=b).astype(float)  # [b, N]: copies of each item
        per_group = drawn[:, None, :] * member[None]  # [b, M, N]
        size = per_group.sum(axis=2)  # [b, M]
        hits = np.einsum("bmn,rn->rbm", per_group, right)  # [R, b, M]
        acc = np.divide(hits, size[None], out=np.zeros_like(hits), where=size[None] > 0)
        s = acc @ w  # [R, b]
        diffs[start : start + b] = (s[best] - s).T
    level = 1 - cfg.alpha / (k - 1)
    lows = np.percentile(diffs, 100 * (1 - level) / 2, axis=0)
    highs = np.percentile(diffs, 100 * (1 + level) / 2, axis=0)
    tied = [cands[r].label for r in range(k) if r == best or lows[r] <= 0]
    intervals = {cands[r].label: [float(lows[r]), float(highs[r])] for r in range(k) if r != best}
    name = cands[best].label
    if len(tied) == 1:
        winner, text = name, (f"{name} (score {100 * observed[best]:.1f}); every other ratio scores lower with "
                              f"{100 * (1 - cfg.alpha):.0f}% confidence (paired bootstrap, Bonferroni over {k - 1} comparisons)")
    else:
        winner, text = None, (f"the data cannot separate {', '.join(tied)}: the intervals of their score differences "
                              f"reach 0, so no winner is named (the point estimate favours {name}, {100 * observed[best]:.1f}); "
                              "evaluate on more items, or choose among these on cost")
    return {**result, "indistinguishable": tied, "winner": winner, "difference_intervals": intervals,
            "confidence": level, "statement": text}


def pareto(points: dict[str, tuple[float, float]]) -> list[str]:
    """Labels not dominated in (EN, KO) accuracy (higher is better in both), sorted by EN."""
    keep = []
    for a, (x, y) in points.items():
        dominated = any((x2 >= x and y2 >= y) and (x2 > x or y2 > y) for b, (x2, y2) in points.items() if b != a)
        if not dominated:
            keep.append(a)
    return sorted(keep, key=lambda a: points[a][0])


# ---------------------------------------------------------------------------------------------
# The plot
# ---------------------------------------------------------------------------------------------


def plot_tradeoff(trials: list[Trial], path: Path) -> list[str]:
    """EN vs KO accuracy per ratio (Wilson intervals), non-dominated ratios joined; a panel per Korean domain."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [t for t in trials if _acc(t.eval, "medqa") and _acc(t.eval, "kormedmcqa")]
    domains = sorted({d for t in shown for d in (_acc(t.eval, "kormedmcqa") or {}).get("domains", {})})
    ncols = max(1, len(domains))
    fig = plt.figure(figsize=(max(8.0, 2.6 * ncols), 9.5))
    grid = fig.add_gridspec(2, ncols, height_ratios=[2.2, 1])
    ax = fig.add_subplot(grid[0, :])

    def xy(t: Trial, bench_y: str = "kormedmcqa", dom: str | None = None) -> tuple[dict, dict]:
        return _acc(t.eval, "medqa"), (_acc(t.eval, bench_y, "domains", dom) if dom else _acc(t.eval, bench_y))

    front = pareto({t.label: (xy(t)[0]["accuracy"], xy(t)[1]["accuracy"]) for t in shown if t.label != BASE})
    for t in shown:
        en, ko = xy(t)
        ref = t.label == BASE
        ax.errorbar(100 * en["accuracy"], 100 * ko["accuracy"],
                    xerr=[[100 * (en["accuracy"] - en["ci95"][0])], [100 * (en["ci95"][1] - en["accuracy"])]],
                    yerr=[[100 * (ko["accuracy"] - ko["ci95"][0])], [100 * (ko["ci95"][1] - ko["accuracy"])]],
                    fmt="s" if ref else "o", color="grey" if ref else "C0", capsize=3, alpha=0.9)
        ax.annotate("base model" if ref else t.label, (100 * en["accuracy"], 100 * ko["accuracy"]), textcoords="offset points", xytext=(6, 6))
    if len(front) > 1:
        pts = [next(xy(t) for t in shown if t.label == lab) for lab in front]
        ax.plot([100 * p[0]["accuracy"] for p in pts], [100 * p[1]["accuracy"] for p in pts], "-", color="C1", label="non-dominated ratios")
        ax.legend(loc="lower left")
    ax.set_xlabel("MedQA accuracy (%, English)")
    ax.set_ylabel("KorMedMCQA accuracy (%, Korean)")
    ax.set_title("EN:KO trade-off (bars: Wilson 95% intervals)")
    ax.grid(alpha=0.3)
    for c, dom in enumerate(domains):
        sub = fig.add_subplot(grid[1, c])
        for t in shown:
            en, ko = xy(t, dom=dom)
            if ko is None:
                continue
            sub.errorbar(100 * en["accuracy"], 100 * ko["accuracy"],
                         yerr=[[100 * (ko["accuracy"] - ko["ci95"][0])], [100 * (ko["ci95"][1] - ko["accuracy"])]],
                         fmt="s" if t.label == BASE else "o", color="grey" if t.label == BASE else "C0", capsize=2, markersize=4)
            sub.annotate("base" if t.label == BASE else t.label, (100 * en["accuracy"], 100 * ko["accuracy"]), fontsize=7, textcoords="offset points", xytext=(3, 3))
        n = next((_acc(t.eval, "kormedmcqa", "domains", dom) or {}).get("n") for t in shown)
        sub.set_title(f"{dom} (n={n})", fontsize=9)
        sub.set_ylim(-3, 103)
        sub.set_xlabel("MedQA %", fontsize=8)
        if c == 0:
            sub.set_ylabel("KorMedMCQA domain %", fontsize=8)
        sub.tick_params(labelsize=7)
        sub.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return front


# ---------------------------------------------------------------------------------------------
# The report
# ---------------------------------------------------------------------------------------------


def is_embedded(meta: dict[str, Any]) -> bool:
    model = str(meta.get("model", ""))
    data = [*meta.get("medqa", []), *meta.get("kormedmcqa", [])]
    return model.startswith("embedded") or any(str(d) == "embedded" for d in data)


def provenance(meta: dict[str, Any]) -> str:
    if is_embedded(meta):
        return ("**Embedded default: mechanics only.** These trials ran on the embedded tiny random model "
                "and/or the synthetic sample items; every number below shows that the pipeline works, and "
                "none of the accuracies means anything about medicine or about the ratios.")
    return f"Real weights and data: model `{meta.get('model')}`, MedQA {meta.get('medqa')}, KorMedMCQA {meta.get('kormedmcqa')}."


def _accuracy_tables(trials: list[Trial], records: list[dict[str, Any]]) -> list[str]:
    lines = ["## Accuracy per ratio", "",
             "| ratio | status | MedQA % [95% CI] | KorMedMCQA % [95% CI] | tokens trained | train min | peak mem GB |",
             "|---|---|---|---|---:|---:|---:|"]
    by_name = {t.name: t for t in trials}
    for r in records:
        t = by_name.get(r["trial"])
        m = r.get("metrics", {})
        label = label_of(r)
        if t is None:
            lines.append(f"| {label} | {r['status']} | - | - | - | - | - |")
            continue
        lines.append(
            f"| {'base model (no training)' if label == BASE else label} | ok | {acc_cell(_acc(t.eval, 'medqa'))} | "
            f"{acc_cell(_acc(t.eval, 'kormedmcqa'))} | {_num(m.get('tokens_trained'), ',')} | "
            f"{_num(m.get('train_minutes'), '.2f')} | {_num(m.get('peak_mem_gb'), '.2f')} |"
        )
    ko = [t for t in trials if _acc(t.eval, "kormedmcqa")]
    if ko:
        subjects = sorted({s for t in ko for s in _acc(t.eval, "kormedmcqa")["subjects"]})
        domains = sorted({d for t in ko for d in _acc(t.eval, "kormedmcqa").get("domains", {})})
        first = _acc(ko[0].eval, "kormedmcqa")
        head = [f"{s} (n={first['subjects'][s]['n']})" for s in subjects] + [f"~{d} (n={first.get('domains', {}).get(d, {}).get('n', '-')})" for d in domains]
        lines += ["", "KorMedMCQA per subject and per domain (% [95% CI]; `~` = domain: Medical Law by the keyword rules, else the subject's remaining items):", "",
                  "| ratio | " + " | ".join(head) + " |", "|---|" + "---|" * len(head)]
        for t in ko:
            k = _acc(t.eval, "kormedmcqa")
            cells = [acc_cell(k["subjects"].get(s)) for s in subjects] + [acc_cell(k.get("domains", {}).get(d)) for d in domains]
            lines.append(f"| {'base model' if t.label == BASE else t.label} | " + " | ".join(cells) + " |")
    return lines


def _row_key(r: dict[str, Any]) -> str:
    if r["subject"] != ALL:
        return r["subject"]
    if r.get("domain", ALL) != ALL:
        return f"~{r['domain']}"
    return "(all)"


def _delta_cell(r: dict[str, Any]) -> str:
    mark = " ▼" if r["forgetting"] else (" ▲" if r["significant"] else "")
    return f"{r['delta_pp']:+.1f} [{r['ci_low_pp']:+.1f}, {r['ci_high_pp']:+.1f}] p={r['mcnemar_p']:.2g}{mark}"


def _forgetting_section(forg: dict[str, list[dict[str, Any]]], ref_label: str, cfg: ReportConfig) -> list[str]:
    ref_text = "the base model before fine-tuning" if ref_label == BASE else f"the {ref_label} mix"
    lines = ["## Forgetting against the reference", "",
             f"Reference: {ref_text}, on the same items. Each cell: Δ accuracy in points (ratio − reference), "
             f"paired bootstrap {100 * (1 - cfg.alpha):.0f}% interval ({cfg.n_resamples} resamples, seed {cfg.seed}), "
             f"exact McNemar p; ▼ = significant drop (forgetting, p < {cfg.alpha}), ▲ = significant gain."]
    if not forg:
        return lines + ["", "No ratio other than the reference finished: nothing to compare."]
    for bench in ("kormedmcqa", "medqa"):
        keys: list[str] = []
        for rows in forg.values():
            for r in rows:
                if r["benchmark"] == bench and _row_key(r) not in keys:
                    keys.append(_row_key(r))
        if not keys:
            continue
        lines += ["", f"**{ {'kormedmcqa': 'KorMedMCQA', 'medqa': 'MedQA'}[bench]}**", "",
                  "| ratio | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
        for label, rows in forg.items():
            cells = {_row_key(r): _delta_cell(r) for r in rows if r["benchmark"] == bench}
            lines.append(f"| {label} | " + " | ".join(cells.get(k, "-") for k in keys) + " |")
    drops = [f"{label} {r['benchmark']} {_row_key(r)}" for label, rows in forg.items() for r in rows if r["forgetting"]]
    lines += ["", f"Significant drops: {', '.join(drops) if drops else 'none'}."]
    return lines


def _recommendation_section(recs: dict[str, dict[str, Any]]) -> list[str]:
    lines = ["## Recommendation", "",
             "Per use, the objective is a weighted mean of accuracies; ratios are compared on the same items by a paired "
             "bootstrap of score differences (items resampled across the whole test set; Bonferroni over the comparisons with the best). "
             "Weights are options: `--weights-education`, `--weights-clinical`, `--weights-legal`.", "",
             "| use | objective | best (point estimate) | cannot be told apart | recommendation |", "|---|---|---|---|---|"]
    for key, rec in recs.items():
        obj = " + ".join(f"{w:g}×{m}" for m, w in rec["weights"].items())
        rec_text = f"**{rec['winner']}**" if rec.get("winner") else "no single winner"
        lines.append(f"| {rec.get('title') or key} ({rec.get('framing') or 'custom'}) | {obj} | {rec.get('best') or '-'} | "
                     f"{', '.join(rec.get('indistinguishable') or []) or '-'} | {rec_text}: {rec['statement']} |")
    return lines


def write_decision_report(records: list[dict[str, Any]], cfg: ReportConfig, out: str | Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Write OUT/report.md, OUT/tradeoff.png and OUT/recommendation.json from the finished trials."""
    out = Path(out)
    trials = load_trials(records)
    ratios = [t for t in trials if t.label != BASE]
    ref_label = BASE if cfg.reference == BASE else next((t.label for t in ratios if parse_ratio(t.label) == parse_ratio(cfg.reference)), cfg.reference)
    reference = next((t for t in trials if t.label == ref_label), None)
    forg = forgetting(trials, reference, cfg) if reference is not None else {}
    recs = {k: recommend(trials, w, cfg, USES.get(k)) for k, w in cfg.weights.items()}
    front = plot_tradeoff(trials, out / "tradeoff.png") if trials else []
    unfinished = [f"{label_of(r)} ({r['status']})" for r in records if r["status"] != "ok"]
    lines = ["# EN:KO ratio decision report", "", provenance(meta), "",
             f"Model `{meta.get('model')}`; config `{meta.get('config')}`; {len(ratios)} of "
             f"{sum(1 for r in records if label_of(r) != BASE)} ratios finished"
             + (f"; not finished: {', '.join(unfinished)}" if unfinished else "") + ". "
             "Built from each trial's `eval/eval.json`, `eval/predictions.jsonl` and `trial.json`; "
             "rebuild with `--report-only`.", ""]
    lines += _accuracy_tables(trials, records)
    if trials:
        lines += ["", "![EN vs KO accuracy per ratio](tradeoff.png)", "",
                  f"Non-dominated ratios (no other ratio is at least as good in both languages): {', '.join(front) or '-'}.", ""]
    else:
        (out / "tradeoff.png").unlink(missing_ok=True)  # never leave a plot of an earlier state
        lines += ["", "No trial finished: no plot.", ""]
    if reference is None:
        lines += ["## Forgetting against the reference", "", f"The reference ({cfg.reference}) did not finish: no forgetting analysis."]
    else:
        lines += _forgetting_section(forg, ref_label, cfg)
    lines += [""] + _recommendation_section(recs)
    if not has_domains(*(t.preds for t in trials)):
        lines += ["", "Note: some evaluations have no domains (evaluated before domains existed); domain columns are partial."]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")
    doc = {
        "reference": ref_label,
        "embedded_default": is_embedded(meta),
        "method": {"bootstrap_resamples": cfg.n_resamples, "seed": cfg.seed, "alpha": cfg.alpha,
                   "resampling": "items within (benchmark, subject, domain) cells, paired across ratios",
                   "multiplicity": "Bonferroni over the comparisons with the best ratio"},
        "uses": recs,
        "pareto": front,
    }
    (out / "recommendation.json").write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    return {"report": str(out / "report.md"), "plot": str(out / "tradeoff.png"), "recommendation": doc, "forgetting": forg}


__all__ = [
    "BASE",
    "REPORT_OPTIONS",
    "USES",
    "ReportConfig",
    "load_trials",
    "pareto",
    "parse_weights",
    "plot_tradeoff",
    "recommend",
    "set_option",
    "write_decision_report",
]
