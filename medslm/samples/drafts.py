"""A question before its options are laid out, and the helpers both languages share."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Draft:
    """A question before its options are laid out: the right answer and a pool of wrong ones."""

    question: str
    answer: str
    pool: tuple[str, ...]
    explanation: str = ""
    meta: str = ""  # MedQA meta_info


def fixed(question: str, answer: str, pool: Sequence[str], explanation: str) -> Draft:
    return Draft(question, answer, tuple(pool), explanation)


def balanced_positions(n_items: int, n_options: int, rng: random.Random) -> list[int]:
    """Answer positions 0..n_options-1, as equal in number as ``n_items`` allows, shuffled."""
    positions = [i % n_options for i in range(n_items)]
    rng.shuffle(positions)
    return positions


def layout(draft: Draft, n_options: int, position: int, rng: random.Random) -> list[str]:
    """The options of ``draft``: ``n_options - 1`` distractors from its pool, the answer at ``position``."""
    pool = [p for p in dict.fromkeys(draft.pool) if p != draft.answer]
    if len(pool) < n_options - 1:
        raise ValueError(f"only {len(pool)} distractors for {draft.question[:60]!r}")
    options = rng.sample(pool, n_options - 1)
    options.insert(position, draft.answer)
    return options


def pick_distinct(drafts: list[Draft], n: int, seen: set[str]) -> list[Draft]:
    """The first ``n`` drafts whose question text is not in ``seen`` (which is updated)."""
    out: list[Draft] = []
    for d in drafts:
        if d.question in seen:
            continue
        seen.add(d.question)
        out.append(d)
        if len(out) == n:
            return out
    raise ValueError(f"only {len(out)} distinct questions available, need {n}")
