"""Catastrophic-forgetting analysis: paired comparison of eval directories (the paper's Table 7).

``python evaluate.py compare BASE_EVAL_DIR OTHER_EVAL_DIR [MORE...]`` reads each directory's
``predictions.jsonl`` (written by ``evaluate.py``), matches items by id, and compares BASE with
every OTHER on each benchmark, each subject and each domain (:mod:`medslm.domains`; the rows
carry ``domain``, and appear where the predictions have domains that differ from the subjects):

- accuracy of both, delta in percentage points (other - base);
- a paired percentile-bootstrap 95% interval of the delta (items resampled with replacement, the
  same items for both runs; seeded, 10,000 resamples by default, at least 2,000);
- the exact two-sided McNemar p-value on the discordant items;
- ``forgetting``: a significant drop (p < alpha and delta < 0).

The item sets must be identical (same ids, same gold answers); otherwise it is an error. The
Markdown tables go to stdout; the same numbers go to ``--out`` (default: ``compare.json`` in
BASE_EVAL_DIR, beside its ``eval.json``) and the Markdown next to it (``compare.md``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medslm.cli import UserError
from medslm.config import ConfigError
from medslm.files import read_json, write_text, writing
from medslm.records import LETTERS
from medslm.stats import MIN_BOOTSTRAP_RESAMPLES, accuracy_summary, compare_correctness

ALL = "(all)"


@dataclass
class CompareConfig:
    eval_dirs: list[str] = field(default_factory=list)  # BASE first, then one or more others
    out: str | None = None  # None: BASE_EVAL_DIR/compare.json
    n_resamples: int = 10_000
    seed: int = 0
    alpha: float = 0.05

    def validate(self) -> None:
        if len(self.eval_dirs) < 2:
            raise ConfigError("compare needs BASE_EVAL_DIR and at least one OTHER_EVAL_DIR")
        if self.n_resamples < MIN_BOOTSTRAP_RESAMPLES:
            raise ConfigError(f"--resamples must be >= {MIN_BOOTSTRAP_RESAMPLES}, got {self.n_resamples}")
        if not 0.0 < self.alpha < 1.0:
            raise ConfigError(f"--alpha must be in (0, 1), got {self.alpha}")


def read_predictions(eval_dir: str | Path) -> dict[str, dict[str, Any]]:
    """id -> prediction record from ``eval_dir/predictions.jsonl`` (or that file itself).

    Every record is checked on its own (``correct`` is ``predicted == gold``), and when the folder
    has an ``eval.json`` its counts must be the predictions' (:func:`check_eval_json`): a number
    edited in one file, or files from two evaluations, is an error naming the file and field."""
    return _read_eval_folder(eval_dir)[1]


def read_eval_dir(eval_dir: str | Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """(eval.json, predictions by id) of an evaluate.py output folder, checked against each other."""
    if not (Path(eval_dir) / "eval.json").is_file():
        raise UserError(f"{eval_dir}: no eval.json (expected an output directory of evaluate.py)")
    return _read_eval_folder(eval_dir)  # type: ignore[return-value]  # eval.json exists: never None


def _read_eval_folder(eval_dir: str | Path) -> tuple[dict[str, Any] | None, dict[str, dict[str, Any]]]:
    """(eval.json or None when the folder has none, predictions by id), each file read once and
    checked against the other."""
    p = Path(eval_dir)
    path = p / "predictions.jsonl" if p.is_dir() else p
    if not path.is_file():
        raise UserError(f"{eval_dir}: no predictions.jsonl (expected an output directory of evaluate.py)")
    records = _read_records(path)
    ev_path = path.parent / "eval.json"
    ev = read_json(ev_path, "rerun evaluate.py for that folder") if ev_path.is_file() else None  # truncated: named, never read as 'nothing known'
    if ev is not None:
        check_eval_json(ev_path, ev, path, records)
    return ev, records


def _read_records(path: Path) -> dict[str, dict[str, Any]]:
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise UserError(f"{path}:line {line}: not valid UTF-8 ({exc.reason}); rerun evaluate.py for that folder") from None
    records: dict[str, dict[str, Any]] = {}
    for lineno, line in enumerate(text.split("\n"), 1):
        if not line.strip():
            continue
        where = f"{path}:line {lineno}"
        try:
            rec = json.loads(line)
            for k in ("id", "benchmark", "subject", "gold", "predicted", "correct"):
                rec[k]  # noqa: B018  presence check
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{where}: not a prediction record ({type(exc).__name__}: {exc})") from None
        key = rec["id"]
        for k in ("id", "benchmark", "subject"):
            if not isinstance(rec[k], str) or not rec[k]:
                raise UserError(f"{where}: field {k!r} must be a non-empty string, got {rec[k]!r}")
        for k in ("gold", "predicted"):
            if not isinstance(rec[k], str) or len(rec[k]) != 1 or rec[k] not in LETTERS:
                raise UserError(f"{where}: field {k!r} must be an option letter {LETTERS[0]}-{LETTERS[-1]}, got {rec[k]!r}")
        if not isinstance(rec["correct"], bool):  # the string "false" would count as correct
            raise UserError(f"{where}: field 'correct' must be true or false, got {rec['correct']!r}")
        if rec["correct"] != (rec["predicted"] == rec["gold"]):
            raise UserError(f"{where}: field 'correct' is {str(rec['correct']).lower()} but predicted {rec['predicted']} "
                            f"and gold {rec['gold']} say {str(rec['predicted'] == rec['gold']).lower()}: the record was edited")
        if key in records:
            raise UserError(f"{where}: duplicate item id {key!r}")
        records[key] = rec
    if not records:
        raise UserError(f"{path}: no predictions")
    return records


def check_eval_json(ev_path: Path, ev: Any, pred_path: Path, preds: dict[str, dict[str, Any]]) -> None:
    """``eval.json``'s item count and every benchmark, subject and domain count and accuracy equal a
    recount of ``predictions.jsonl``; otherwise a UserError naming the field and both numbers."""
    hint = "the two files disagree (one was edited, or they come from different evaluations); rerun evaluate.py into that folder"
    if not isinstance(ev, dict) or not isinstance(ev.get("benchmarks"), dict):
        raise UserError(f"{ev_path}: field 'benchmarks' is missing or not an object; rerun evaluate.py into that folder")
    if ev.get("n_items", len(preds)) != len(preds):
        raise UserError(f"{ev_path}: field 'n_items' is {ev.get('n_items')!r}, but {pred_path} has {len(preds)} items: {hint}")
    benches = sorted({r["benchmark"] for r in preds.values()})
    if sorted(ev["benchmarks"]) != benches:
        raise UserError(f"{ev_path}: field 'benchmarks' has {sorted(ev['benchmarks'])}, but {pred_path} has {benches}: {hint}")
    for bench in benches:
        rows = [r for r in preds.values() if r["benchmark"] == bench]
        groups: list[tuple[str, Any, list[dict[str, Any]]]] = [(f"benchmarks.{bench}", ev["benchmarks"][bench], rows)]
        for kind, key in (("subjects", "subject"), ("domains", "domain")):
            if kind == "domains" and not all("domain" in r for r in rows):
                continue
            stated = ev["benchmarks"][bench].get(kind) if isinstance(ev["benchmarks"][bench], dict) else None
            names = sorted({r[key] for r in rows})
            if not isinstance(stated, dict) or sorted(stated) != names:
                raise UserError(f"{ev_path}: field 'benchmarks.{bench}.{kind}' has {sorted(stated) if isinstance(stated, dict) else stated!r}, "
                                f"but {pred_path} has {names}: {hint}")
            groups += [(f"benchmarks.{bench}.{kind}.{name}", stated[name], [r for r in rows if r[key] == name]) for name in names]
        for field_name, summ, recs in groups:
            recount = accuracy_summary([r["correct"] for r in recs])  # what evaluation.summarise wrote there
            if not isinstance(summ, dict):
                raise UserError(f"{ev_path}: field {field_name!r} is not an object: {hint}")
            for sub in ("n", "correct", "accuracy"):
                got = summ.get(sub)
                if isinstance(got, bool) or not isinstance(got, (int, float)) or abs(got - recount[sub]) > 1e-9:
                    raise UserError(f"{ev_path}: field '{field_name}.{sub}' is {got!r}, but {pred_path} has "
                                    f"{recount['correct']}/{recount['n']} correct: {hint}")


# What two evaluations must share for their accuracies to be compared (model.* differ by design
# between a base model and its fine-tunes only in run/adapter).
SETTINGS = ("scoring", "split", "template", "overlong.policy", "overlong.max_seq_len", "domain_rules.sha256",
            "model.base", "model.quantization", "model.compute_dtype")


def eval_setting(ev: dict[str, Any], dotted: str) -> Any:
    if dotted == "model.base" and not (isinstance(ev.get("model"), dict) and "base" in ev["model"]):
        dotted = "model.name_or_path"  # eval.json from before model.base was recorded
    cur: Any = ev
    for part in dotted.split("."):
        cur = cur.get(part) if isinstance(cur, dict) else None
    return cur


def setting_differences(named: list[tuple[str, dict[str, Any]]]) -> list[str]:
    """One line per evaluation setting that differs between the named eval.json files."""
    out = []
    for key in SETTINGS:
        values = {name: eval_setting(ev, key) for name, ev in named}
        if len({json.dumps(v, sort_keys=True) for v in values.values()}) > 1:
            out.append(f"{key}: " + ", ".join(f"{v!r} in {name}" for name, v in values.items()))
    return out


def _eval_meta(ev: dict[str, Any] | None) -> dict[str, Any]:
    if ev is None:  # predictions.jsonl alone: comparable, with less said about the model
        return {}
    model = ev.get("model") or {}
    return {k: v for k, v in {"model": model.get("name_or_path"), "adapter": model.get("adapter"), "scoring": ev.get("scoring"), "split": ev.get("split")}.items() if v is not None}


def check_same_items(base_name: str, base: dict[str, dict], other_name: str, other: dict[str, dict]) -> None:
    only_base = sorted(set(base) - set(other))
    only_other = sorted(set(other) - set(base))
    if only_base or only_other:
        ex = (only_base or only_other)[:3]
        raise UserError(
            f"the evals have different items: {base_name} has {len(base)}, {other_name} has {len(other)} "
            f"({len(only_base)} only in the first, {len(only_other)} only in the second; e.g. {', '.join(ex)}); "
            "evaluate both on the same files and split"
        )
    for key, rec in base.items():
        if rec["gold"] != other[key]["gold"]:
            raise UserError(f"item {key!r} has gold {rec['gold']} in {base_name} but {other[key]['gold']} in {other_name}: not the same data")


def has_domains(*evals: dict[str, dict]) -> bool:
    """True when every record of every eval carries a domain (older predictions.jsonl do not)."""
    return all("domain" in r for preds in evals for r in preds.values())


def check_same_domains(base_name: str, base: dict[str, dict], other_name: str, other: dict[str, dict]) -> None:
    for key, rec in base.items():
        if rec["domain"] != other[key]["domain"]:
            raise UserError(
                f"item {key!r} has domain {rec['domain']!r} in {base_name} but {other[key]['domain']!r} in {other_name}: "
                "the evals used different domain rules; evaluate both with the same --domain-rules"
            )


def _groups(base: dict[str, dict], domains: bool = False) -> list[tuple[str, str, str, list[str]]]:
    """(benchmark, subject, domain, ids) for each benchmark overall, each subject and each domain."""
    out = []
    for bench in sorted({r["benchmark"] for r in base.values()}):
        ids = sorted(k for k, r in base.items() if r["benchmark"] == bench)
        out.append((bench, ALL, ALL, ids))
        for subj in sorted({base[k]["subject"] for k in ids}):
            out.append((bench, subj, ALL, [k for k in ids if base[k]["subject"] == subj]))
        if domains and any(base[k]["domain"] != base[k]["subject"] for k in ids):
            for dom in sorted({base[k]["domain"] for k in ids}):
                out.append((bench, ALL, dom, [k for k in ids if base[k]["domain"] == dom]))
    return out


def compare_predictions(base: dict[str, dict], other: dict[str, dict], n_resamples: int = 10_000, seed: int = 0, alpha: float = 0.05) -> list[dict[str, Any]]:
    """One row per benchmark, subject and domain: ``medslm.stats.compare_correctness`` plus names.

    Domain rows come only when both evals have domains (and they must agree item by item)."""
    domains = has_domains(base, other)
    if domains:
        check_same_domains("the base eval", base, "the other eval", other)
    rows = []
    for bench, subj, dom, ids in _groups(base, domains):
        b = np.array([bool(base[k]["correct"]) for k in ids])
        o = np.array([bool(other[k]["correct"]) for k in ids])
        rows.append({"benchmark": bench, "subject": subj, "domain": dom, **compare_correctness(b, o, n_resamples=n_resamples, seed=seed, alpha=alpha)})
    return rows


def format_markdown(result: dict[str, Any]) -> str:
    parts = []
    for comp in result["comparisons"]:
        parts.append(f"### {result['base']} → {comp['other']}\n")
        parts.append("| benchmark | subject | domain | n | base acc | other acc | Δ (pp) | 95% CI (pp) | McNemar p | forgetting |")
        parts.append("|---|---|---|---:|---:|---:|---:|---|---:|---|")
        for r in comp["rows"]:
            flag = "**yes**" if r["forgetting"] else ("gain" if r["significant"] else "")
            parts.append(
                f"| {r['benchmark']} | {r['subject']} | {r.get('domain', ALL)} | {r['n']} | {100 * r['acc_base']:.1f} | {100 * r['acc_other']:.1f} "
                f"| {r['delta_pp']:+.1f} | [{r['ci_low_pp']:+.1f}, {r['ci_high_pp']:+.1f}] | {r['mcnemar_p']:.3g} | {flag} |"
            )
        parts.append("")
    parts.append(
        f"Paired bootstrap: {result['n_resamples']} resamples, seed {result['seed']}; exact McNemar test; "
        f"forgetting = a drop with p < {result['alpha']}."
    )
    return "\n".join(parts)


def default_compare_out(base_eval: str | Path) -> Path:
    """``compare.json`` in the base eval folder (beside its predictions), never the current folder."""
    p = Path(base_eval)
    return (p if p.is_dir() else p.parent) / "compare.json"


def compare(cfg: CompareConfig) -> dict[str, Any]:
    """Compare BASE with each other eval dir; print Markdown, write JSON (+ .md). Returns the JSON."""
    cfg.validate()
    base_name = cfg.eval_dirs[0]
    folders = {d: _read_eval_folder(d) for d in cfg.eval_dirs}  # each eval.json and predictions.jsonl read once
    base = folders[base_name][1]
    others = [(name, folders[name][1]) for name in cfg.eval_dirs[1:]]
    for name, preds in others:
        check_same_items(base_name, base, name, preds)
        if has_domains(base, preds):
            check_same_domains(base_name, base, name, preds)
    result: dict[str, Any] = {
        "base": base_name,
        "n_resamples": cfg.n_resamples,
        "seed": cfg.seed,
        "alpha": cfg.alpha,
        "evals": {d: _eval_meta(ev) for d, (ev, _) in folders.items()},
        "comparisons": [
            {"other": name, "rows": compare_predictions(base, preds, cfg.n_resamples, cfg.seed, cfg.alpha)} for name, preds in others
        ],
    }
    if not has_domains(base, *(p for _, p in others)):
        result["note"] = "no per-domain rows: some predictions.jsonl have no domain (evaluated before domains existed)"
    differ = setting_differences([(d, ev) for d, (ev, _) in folders.items() if ev is not None])
    if differ:  # comparing models is the point; anything else that differs is said beside the numbers
        result["warning"] = "the evals differ in settings other than the adapter: " + "; ".join(differ)
    markdown = format_markdown(result)
    out = Path(cfg.out) if cfg.out else default_compare_out(base_name)
    with writing(out.parent):
        out.parent.mkdir(parents=True, exist_ok=True)
    write_text(out, json.dumps(result, indent=2, ensure_ascii=False) + "\n")
    write_text(out.with_suffix(".md"), markdown + "\n")
    print(markdown)
    if "warning" in result:
        print(f"warning: {result['warning']}")
    if "note" in result:
        print(f"note: {result['note']}")
    print(f"wrote {out} and {out.with_suffix('.md')}")
    return result


__all__ = [
    "CompareConfig",
    "check_same_domains",
    "check_eval_json",
    "check_same_items",
    "compare",
    "compare_predictions",
    "format_markdown",
    "has_domains",
    "read_eval_dir",
    "read_predictions",
    "setting_differences",
]
