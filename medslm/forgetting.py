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
from medslm.stats import MIN_BOOTSTRAP_RESAMPLES, compare_correctness

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
    """id -> prediction record from ``eval_dir/predictions.jsonl`` (or that file itself)."""
    p = Path(eval_dir)
    path = p / "predictions.jsonl" if p.is_dir() else p
    if not path.is_file():
        raise UserError(f"{eval_dir}: no predictions.jsonl (expected an output directory of evaluate.py)")
    records: dict[str, dict[str, Any]] = {}
    for lineno, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
            key = rec["id"]
            for k in ("benchmark", "subject", "gold", "correct"):
                rec[k]  # noqa: B018  presence check
        except (json.JSONDecodeError, KeyError, TypeError) as exc:
            raise UserError(f"{path}:line {lineno}: not a prediction record ({exc})") from None
        if not isinstance(rec["correct"], bool):  # the string "false" would count as correct
            raise UserError(f"{path}:line {lineno}: field 'correct' must be true or false, got {rec['correct']!r}")
        if key in records:
            raise UserError(f"{path}:line {lineno}: duplicate item id {key!r}")
        records[key] = rec
    if not records:
        raise UserError(f"{path}: no predictions")
    return records


def _eval_meta(eval_dir: str | Path) -> dict[str, Any]:
    p = Path(eval_dir)
    path = (p if p.is_dir() else p.parent) / "eval.json"
    if not path.is_file():  # predictions.jsonl alone: comparable, with less said about the model
        return {}
    ev = read_json(path, "rerun evaluate.py for that folder")  # truncated: named, never read as 'nothing known'
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
    base = read_predictions(base_name)
    others = [(name, read_predictions(name)) for name in cfg.eval_dirs[1:]]
    for name, preds in others:
        check_same_items(base_name, base, name, preds)
        if has_domains(base, preds):
            check_same_domains(base_name, base, name, preds)
    result: dict[str, Any] = {
        "base": base_name,
        "n_resamples": cfg.n_resamples,
        "seed": cfg.seed,
        "alpha": cfg.alpha,
        "evals": {d: _eval_meta(d) for d in cfg.eval_dirs},
        "comparisons": [
            {"other": name, "rows": compare_predictions(base, preds, cfg.n_resamples, cfg.seed, cfg.alpha)} for name, preds in others
        ],
    }
    if not has_domains(base, *(p for _, p in others)):
        result["note"] = "no per-domain rows: some predictions.jsonl have no domain (evaluated before domains existed)"
    scorings = {m.get("scoring") for m in result["evals"].values() if m.get("scoring")}
    if len(scorings) > 1:
        result["warning"] = f"the evals used different scoring methods: {sorted(scorings)}"
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
    "check_same_items",
    "compare",
    "compare_predictions",
    "format_markdown",
    "has_domains",
    "read_predictions",
]
