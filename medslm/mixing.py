"""Train/val/test splits, leak checks and EN:KO ratio mixing. Pure functions over MCQItems.

Splits
- ``hash`` (the paper's protocol): an item goes to train/val/test (80/10/10) by a SHA-256 of its
  normalised question and options, so the split is stable across runs, machines and file order,
  and two copies of the same question always land in the same split.
- ``official``: the dataset's own split (MedQA ``train/dev/test`` files, KorMedMCQA
  ``train/dev/test``); ``dev`` is the validation split and ``fewshot`` rows are left out.

Leak check: items whose normalised question+options occur in more than one split (or in both
benchmarks) are removed from train and val, kept in test, and counted in the report; exact
duplicates inside one split are kept once and counted.

Mixing (``ratio = EN:KO``): the ratio of *item counts* in the training mix. By default the mix is
the largest one that fits the data without repeating any item: the side that limits the ratio is
taken whole and the other side is subsampled (seeded, stratified by subject). With
``upsample=True`` the other side is taken whole instead and the limiting side is repeated
(every item the same number of times, plus a seeded sample for the remainder). ``0:1`` or ``1:0``
train on one language alone.

The subsample and the order of the mix are functions of the items' content and the seed only:
each item is ranked by a SHA-256 of the seed and its :func:`content_key`, so the same questions
give the same mix in the same order whether they come shuffled, as CSV, Parquet or a hub folder.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Literal

from medslm.records import MCQItem

SPLITS = ("train", "val", "test")
SplitMode = Literal["hash", "official"]


def normalise_text(text: str) -> str:
    """NFKC, casefolded, format characters (zero-width space, BOM, soft hyphen: category Cf)
    removed and whitespace runs made one space: two copies of a question that differ only in
    what a reader cannot see get one key, so they land in one split."""
    text = unicodedata.normalize("NFKC", text).casefold()
    text = "".join(ch for ch in text if unicodedata.category(ch) != "Cf")
    return re.sub(r"\s+", " ", text).strip()


def content_key(item: MCQItem) -> str:
    """What makes two items the same question: normalised question plus sorted options."""
    opts = "\x1f".join(sorted(normalise_text(o) for o in item.options))
    return hashlib.sha256(f"{normalise_text(item.question)}\x1e{opts}".encode()).hexdigest()


def hash_split(item: MCQItem, fractions: tuple[float, float] = (0.8, 0.1)) -> str:
    bucket = int(content_key(item)[:8], 16) / 0x1_0000_0000
    if bucket < fractions[0]:
        return "train"
    if bucket < fractions[0] + fractions[1]:
        return "val"
    return "test"


def official_split(item: MCQItem) -> str | None:
    return {"train": "train", "dev": "val", "test": "test"}.get(item.split or "")


@dataclass
class SplitResult:
    splits: dict[str, list[MCQItem]]
    unsplit: list[MCQItem] = field(default_factory=list)  # official mode: rows with no usable split
    leaks_removed: dict[str, int] = field(default_factory=dict)  # split -> items dropped as leaks
    duplicates_removed: dict[str, int] = field(default_factory=dict)  # split -> exact repeats dropped

    def report(self) -> dict:
        return {
            "sizes": {s: len(v) for s, v in self.splits.items()},
            "unsplit": len(self.unsplit),
            "leaks_removed": self.leaks_removed,
            "duplicates_removed": self.duplicates_removed,
        }


def split_items(items: list[MCQItem], mode: SplitMode = "hash") -> SplitResult:
    """Assign every item to train/val/test and remove cross-split leaks (see module docstring)."""
    splits: dict[str, list[MCQItem]] = {s: [] for s in SPLITS}
    unsplit: list[MCQItem] = []
    for item in items:
        split = hash_split(item) if mode == "hash" else official_split(item)
        if split is None:
            unsplit.append(item)
        else:
            splits[split].append(item)
    where: dict[str, set[str]] = defaultdict(set)
    for s in SPLITS:
        for item in splits[s]:
            where[content_key(item)].add(s)
    leaks: dict[str, int] = {}
    dups: dict[str, int] = {}
    for s in SPLITS:
        kept, seen = [], set()
        for item in splits[s]:
            key = content_key(item)
            later = {"train": ("val", "test"), "val": ("test",), "test": ()}[s]
            if any(t in where[key] for t in later):
                leaks[s] = leaks.get(s, 0) + 1
                continue
            if key in seen:
                dups[s] = dups.get(s, 0) + 1
                continue
            seen.add(key)
            kept.append(item)
        splits[s] = kept
    return SplitResult(splits, unsplit, leaks, dups)


def seeded_rank(item: MCQItem, seed: int, salt: str = "") -> tuple[str, str]:
    """Where ``item`` falls in a seeded order that depends on its content, never on file order."""
    digest = hashlib.sha256(f"{seed}\x1e{salt}\x1e{content_key(item)}".encode()).hexdigest()
    return digest, item.id  # the id only breaks ties between copies of one question


def _stratified_sample(items: list[MCQItem], k: int, seed: int) -> list[MCQItem]:
    """``k`` items without replacement, subjects kept in proportion (largest remainder); each
    subject's items are taken in their seeded content order."""
    if k >= len(items):
        return list(items)
    groups: dict[str, list[MCQItem]] = defaultdict(list)
    for it in items:
        groups[it.subject].append(it)
    quotas = {s: k * len(g) / len(items) for s, g in groups.items()}
    alloc = {s: int(math.floor(q)) for s, q in quotas.items()}
    left = k - sum(alloc.values())
    for s in sorted(groups, key=lambda s: (-(quotas[s] - alloc[s]), s))[:left]:
        alloc[s] += 1
    out: list[MCQItem] = []
    for s in sorted(groups):
        out.extend(sorted(groups[s], key=lambda it: seeded_rank(it, seed, "sample"))[: alloc[s]])
    return out


def _upsample(items: list[MCQItem], k: int, seed: int) -> list[MCQItem]:
    reps, rem = divmod(k, len(items))
    return list(items) * reps + _stratified_sample(items, rem, seed)


def _seeded_order(items: list[MCQItem], seed: int) -> list[MCQItem]:
    """The training order of the mix: a seeded shuffle keyed on content (copy n of an item is
    ranked with salt n, so repeats spread out)."""
    copies: Counter[str] = Counter()
    keyed = []
    for it in items:
        keyed.append((seeded_rank(it, seed, f"order-{copies[it.id]}"), it))
        copies[it.id] += 1
    return [it for _, it in sorted(keyed, key=lambda kv: kv[0])]


@dataclass
class MixResult:
    items: list[MCQItem]
    ratio: tuple[int, int]
    available: dict[str, int]
    used: dict[str, int]
    repeated: dict[str, int]  # extra copies added by upsampling

    def report(self) -> dict:
        by_subject = Counter(f"{it.language}/{it.subject}" for it in self.items)
        return {
            "ratio": f"{self.ratio[0]}:{self.ratio[1]}",
            "available": self.available,
            "used": self.used,
            "repeated": self.repeated,
            "by_subject": dict(sorted(by_subject.items())),
        }


class MixError(ValueError):
    """The requested ratio cannot be built from the items available."""


def mix_by_ratio(items: list[MCQItem], ratio: tuple[int, int], seed: int = 0, upsample: bool = False) -> MixResult:
    """Build the training mix for ``ratio`` (EN:KO item counts); seeded, shuffled by content."""
    en_w, ko_w = ratio
    en = [it for it in items if it.language == "en"]
    ko = [it for it in items if it.language == "ko"]
    if en_w and not en:
        raise MixError(f"ratio {en_w}:{ko_w} needs English items, but the training split has none")
    if ko_w and not ko:
        raise MixError(f"ratio {en_w}:{ko_w} needs Korean items, but the training split has none")
    if en_w == 0:
        n_en, n_ko = 0, len(ko)
    elif ko_w == 0:
        n_en, n_ko = len(en), 0
    else:
        pick = max if upsample else min
        scale = pick(len(en) / en_w, len(ko) / ko_w)
        n_en, n_ko = round(scale * en_w), round(scale * ko_w)
        if not upsample:
            n_en, n_ko = min(n_en, len(en)), min(n_ko, len(ko))
        if not (n_en and n_ko):  # a mix labelled 1:2 that trains on one language is a wrong experiment
            short = "English" if n_en == 0 else "Korean"
            raise MixError(f"ratio {en_w}:{ko_w} with {len(en)} English and {len(ko)} Korean training items rounds the "
                           f"{short} side to 0 items ({n_en}:{n_ko}); add data, use --upsample, or train on one language (1:0 / 0:1)")
    take = _upsample if upsample else _stratified_sample
    chosen_en = take(en, n_en, seed) if n_en else []
    chosen_ko = take(ko, n_ko, seed) if n_ko else []
    mixed = _seeded_order(chosen_en + chosen_ko, seed)
    return MixResult(
        items=mixed,
        ratio=ratio,
        available={"en": len(en), "ko": len(ko)},
        used={"en": len(chosen_en), "ko": len(chosen_ko)},
        repeated={"en": max(0, n_en - len(en)), "ko": max(0, n_ko - len(ko))},
    )
