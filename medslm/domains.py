"""A rules-based topic tagger: one domain per evaluated item (Medical Law first, else the subject).

KorMedMCQA has no topic label, yet the paper's key finding is about Medical Law. The tagger gives
every item exactly one domain: the ``domain`` of the first rule (in file order) whose regular
expressions occur in the item's question or options, else the item's own subject (KorMedMCQA:
doctor / nurse / pharm / dentist; MedQA: its ``meta_info``). The rules are data, not code: the
shipped file is ``medslm/assets/domain_rules.yaml`` and a user replaces it with
``--domain-rules FILE``. Text and patterns are NFKC-normalised and matched case-insensitively.

It is a keyword tagger, not a classifier: it finds what its patterns name and nothing else.
``python -m medslm.domains [--rules FILE] [--medqa PATH] [--kormedmcqa PATH]`` prints how many
items of each benchmark and subject land in each domain, so a rules file can be checked on the
data before it is trusted.
"""

from __future__ import annotations

import argparse
import hashlib
import re
import sys
import unicodedata
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

from medslm.data import DataError
from medslm.records import LANGUAGE_OF, MCQItem

DEFAULT_RULES = Path(__file__).resolve().parent / "assets" / "domain_rules.yaml"
FIELDS = ("question", "options")
_RULE_KEYS = {"domain", "description", "benchmarks", "fields", "patterns"}
_NAME = re.compile(r"^[a-z0-9_]+$")


@dataclass(frozen=True)
class Rule:
    domain: str
    patterns: tuple[re.Pattern[str], ...]
    benchmarks: tuple[str, ...] | None = None  # None: every benchmark
    fields: tuple[str, ...] = FIELDS
    description: str = ""

    def matches(self, item: MCQItem) -> bool:
        if self.benchmarks is not None and item.benchmark not in self.benchmarks:
            return False
        parts = ([item.question] if "question" in self.fields else []) + (list(item.options) if "options" in self.fields else [])
        text = _norm("\n".join(parts))
        return any(p.search(text) for p in self.patterns)


@dataclass(frozen=True)
class DomainRules:
    rules: tuple[Rule, ...]
    path: str
    sha256: str

    def tag(self, item: MCQItem) -> str:
        """The item's one domain: the first matching rule's, else its subject."""
        for rule in self.rules:
            if rule.matches(item):
                return rule.domain
        return item.subject

    def describe(self) -> dict[str, Any]:
        return {"path": self.path, "sha256": self.sha256, "domains": [r.domain for r in self.rules]}


def _norm(text: str) -> str:
    return unicodedata.normalize("NFKC", text)


def _line_of(node: Any) -> int:
    return int(node.start_mark.line) + 1


def _mapping_child(node: Any, key: str) -> Any:
    for k, v in getattr(node, "value", []):
        if getattr(k, "value", None) == key:
            return v
    return None


def parse_rules(text: str, path: str = "<rules>") -> DomainRules:
    """Parse a rules file's text; every problem is a :class:`DataError` naming file, line and field."""
    try:
        tree = yaml.safe_load(text)
        root = yaml.compose(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:line {mark.line + 1}" if mark is not None else path
        raise DataError(where, "(file)", f"not valid YAML: {getattr(exc, 'problem', exc)}") from None
    if not isinstance(tree, dict) or "rules" not in tree:
        raise DataError(f"{path}:line 1", "rules", "a rules file is a mapping with a 'rules' list (see medslm/assets/domain_rules.yaml)")
    unknown = sorted(set(tree) - {"version", "rules"})
    if unknown:
        raise DataError(f"{path}:line {_line_of(_mapping_child(root, unknown[0]) or root)}", unknown[0], "unknown key (known: version, rules)")
    if tree.get("version", 1) != 1:
        raise DataError(f"{path}:line {_line_of(_mapping_child(root, 'version'))}", "version", f"unsupported version {tree['version']!r} (this medslm reads version 1)")
    rules_node = _mapping_child(root, "rules")
    raw = tree["rules"]
    if not isinstance(raw, list):
        raise DataError(f"{path}:line {_line_of(rules_node)}", "rules", "must be a list of rules")
    rules: list[Rule] = []
    seen: set[str] = set()
    for i, (r, node) in enumerate(zip(raw, rules_node.value)):
        where = f"{path}:line {_line_of(node)}"
        if not isinstance(r, dict):
            raise DataError(where, f"rules[{i}]", "a rule is a mapping with 'domain' and 'patterns'")
        bad = sorted(set(r) - _RULE_KEYS)
        if bad:
            raise DataError(f"{path}:line {_line_of(_mapping_child(node, bad[0]))}", f"rules[{i}].{bad[0]}", f"unknown key (known: {', '.join(sorted(_RULE_KEYS))})")
        domain = r.get("domain")
        if not isinstance(domain, str) or not _NAME.match(domain):
            raise DataError(where, f"rules[{i}].domain", f"must be a name of lowercase letters, digits and _, got {domain!r}")
        if domain in seen:
            raise DataError(where, f"rules[{i}].domain", f"{domain!r} is given twice; put all its patterns in one rule")
        seen.add(domain)
        pats = r.get("patterns")
        pats_node = _mapping_child(node, "patterns")
        if not isinstance(pats, list) or not pats:
            raise DataError(where, f"rules[{i}].patterns", "give a non-empty list of regular expressions")
        compiled = []
        for j, p in enumerate(pats):
            pwhere = f"{path}:line {_line_of(pats_node.value[j])}"
            if not isinstance(p, str) or not p.strip():
                raise DataError(pwhere, f"rules[{i}].patterns[{j}]", f"must be a non-empty string, got {p!r}")
            try:
                compiled.append(re.compile(_norm(p), re.IGNORECASE))
            except re.error as exc:
                raise DataError(pwhere, f"rules[{i}].patterns[{j}]", f"not a valid regular expression: {exc}") from None
            if compiled[-1].search(""):
                raise DataError(pwhere, f"rules[{i}].patterns[{j}]", f"{p!r} matches the empty string, so it would match every item")
        benchmarks = r.get("benchmarks")
        if benchmarks is not None and (not isinstance(benchmarks, list) or not all(isinstance(b, str) for b in benchmarks) or not benchmarks):
            raise DataError(where, f"rules[{i}].benchmarks", f"must be a list of benchmark names (medqa, kormedmcqa), got {benchmarks!r}")
        unknown = [b for b in benchmarks or () if b not in LANGUAGE_OF]
        if unknown:  # a misspelt name would switch the rule off without a word
            raise DataError(where, f"rules[{i}].benchmarks", f"{', '.join(map(repr, unknown))} is not a benchmark (medqa, kormedmcqa)")
        fields_ = r.get("fields", list(FIELDS))
        if not isinstance(fields_, list) or not fields_ or any(f not in FIELDS for f in fields_):
            raise DataError(where, f"rules[{i}].fields", f"must be a non-empty list of {list(FIELDS)}, got {fields_!r}")
        rules.append(Rule(domain, tuple(compiled), tuple(benchmarks) if benchmarks else None, tuple(fields_), str(r.get("description") or "").strip()))
    return DomainRules(tuple(rules), path, hashlib.sha256(text.encode("utf-8")).hexdigest())


def load_rules(path: str | Path | None = None) -> DomainRules:
    """The rules in ``path`` (None: the shipped ``medslm/assets/domain_rules.yaml``)."""
    return _load_cached(str(Path(path).resolve()) if path else str(DEFAULT_RULES))


@lru_cache(maxsize=8)
def _load_cached(path: str) -> DomainRules:
    p = Path(path)
    if not p.is_file():
        raise DataError(path, "(file)", "domain rules file not found")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(path, "(file)", f"cannot read the domain rules: {exc}") from None
    return parse_rules(text, path)


def domain_counts(items: Iterable[MCQItem], rules: DomainRules) -> dict[str, dict[str, dict[str, int]]]:
    """benchmark -> subject -> domain -> item count."""
    counts: dict[str, dict[str, Counter[str]]] = {}
    for it in items:
        counts.setdefault(it.benchmark, {}).setdefault(it.subject, Counter())[rules.tag(it)] += 1
    return {b: {s: dict(sorted(c.items())) for s, c in sorted(subj.items())} for b, subj in sorted(counts.items())}


def format_counts(counts: dict[str, dict[str, dict[str, int]]]) -> str:
    lines = ["| benchmark | subject | items | domains |", "|---|---|---:|---|"]
    for bench, subjects in counts.items():
        total: Counter[str] = Counter()
        for subj, doms in subjects.items():
            total.update(doms)
            lines.append(f"| {bench} | {subj} | {sum(doms.values())} | {', '.join(f'{d} {n}' for d, n in doms.items())} |")
        lines.append(f"| {bench} | (all) | {sum(total.values())} | {', '.join(f'{d} {n}' for d, n in sorted(total.items()))} |")
    return "\n".join(lines)


def main(argv: Sequence[str]) -> dict[str, Any]:
    """``python -m medslm.domains``: the domain counts of some data under a rules file."""
    from medslm.dataset import DataConfig, load_and_split

    p = argparse.ArgumentParser(prog="python -m medslm.domains", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rules", default=None, help=f"rules file (default {DEFAULT_RULES.relative_to(DEFAULT_RULES.parents[2])})")
    p.add_argument("--medqa", nargs="*", default=["embedded"], help="MedQA files/folders ('embedded' = samples)")
    p.add_argument("--kormedmcqa", nargs="*", default=["embedded"], help="KorMedMCQA files/folders ('embedded' = samples)")
    p.add_argument("--split", choices=["all", "train", "val", "test"], default="all", help="hash split to count (default all items)")
    a = p.parse_args(list(argv))
    rules = load_rules(a.rules)
    loaded = load_and_split(DataConfig(medqa=a.medqa, kormedmcqa=a.kormedmcqa))
    items = loaded.items["medqa"] + loaded.items["kormedmcqa"] if a.split == "all" else loaded.splits.splits[a.split]
    counts = domain_counts(items, rules)
    print(f"rules: {rules.path} (sha256 {rules.sha256[:12]}); split: {a.split}")
    print(format_counts(counts))
    return counts


__all__ = ["DEFAULT_RULES", "DomainRules", "Rule", "domain_counts", "format_counts", "load_rules", "parse_rules"]


if __name__ == "__main__":
    from medslm.cli import run_cli

    run_cli(lambda: main(sys.argv[1:]))
