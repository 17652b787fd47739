"""0-shot MCQ prompt templates and tokenised training examples, shared by training and evaluation.

Defaults follow lm-evaluation-harness so a base model's numbers compare with published ones:
- MedQA (``medqa_4options``): ``Question: {q}\\nA. {A}\\n...\\nAnswer:``
- KorMedMCQA (``kormedmcqa_*``): ``{q}\\nA. {A}\\n...\\nE. {E}\\n정답：`` (full-width colon U+FF1A)

The continuation is the answer letter after one space (lm-evaluation-harness's target delimiter),
e.g. ``" C"``, optionally followed by the option text (``answer_format: letter_text``), then EOS.
The prompt part of the labels is -100, so only the answer is trained.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from medslm.records import LETTERS, MCQItem

AnswerFormat = Literal["letter", "letter_text"]
KO_ANSWER_CUE = "정답："  # full-width colon, as in lm-evaluation-harness's kormedmcqa tasks


def format_prompt(item: MCQItem) -> str:
    if item.language == "ko":
        return f"{item.question}{format_options(item)}"
    return f"Question: {item.question}{format_options(item)}"


def format_options(item: MCQItem) -> str:
    """The end of the prompt that truncation must keep: the options and the answer cue."""
    options = "".join(f"\n{LETTERS[i]}. {text}" for i, text in enumerate(item.options))
    return f"{options}\n{KO_ANSWER_CUE}" if item.language == "ko" else f"{options}\nAnswer:"


def format_target(item: MCQItem, answer_format: AnswerFormat = "letter") -> str:
    letter = LETTERS[item.answer]
    if answer_format == "letter_text":
        return f" {letter}. {item.options[item.answer]}"
    return f" {letter}"


def encode_prompt(tokenizer: Any, prompt: str) -> list[int]:
    """Token ids of a prompt, starting with BOS when the tokenizer has one (added once)."""
    ids = list(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    bos = getattr(tokenizer, "bos_token_id", None)
    if bos is not None and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def letter_token_ids(tokenizer: Any, n_options: int = len(LETTERS)) -> list[int]:
    """The token that starts each answer continuation " A", " B", ...: what letter scoring reads."""
    out = []
    for letter in LETTERS[:n_options]:
        ids = tokenizer(f" {letter}", add_special_tokens=False)["input_ids"]
        if not ids:
            raise ValueError(f"tokenizer encodes ' {letter}' to nothing")
        out.append(ids[0])
    if len(set(out)) != len(out):
        raise ValueError(f"tokenizer maps different answer letters to the same first token: {out}")
    return out


@dataclass
class Example:
    """One tokenised training example: ``labels`` is -100 on the prompt."""

    item_id: str
    input_ids: list[int]
    labels: list[int]
    truncated: bool = False

    def __len__(self) -> int:
        return len(self.input_ids)

    def as_dict(self) -> dict[str, list[int]]:
        return {"input_ids": self.input_ids, "labels": self.labels}


class OverlongError(ValueError):
    pass


def fit_prompt(
    item: MCQItem,
    prompt_ids: list[int],
    reserve: int,
    max_seq_len: int,
    overlong: Literal["error", "truncate", "drop"],
    bos_id: int | None,
    tokenizer: Any = None,
) -> tuple[list[int] | None, bool]:
    """``(prompt ids, truncated)`` leaving ``reserve`` tokens (the answer) within ``max_seq_len``.

    Too long: :class:`OverlongError` (``"error"``), the prompt loses tokens from the left after BOS
    so the options survive (``"truncate"``), or ``(None, False)`` (``"drop"``). Training and
    evaluation both cut prompts here, so they see the same prompts. ``tokenizer`` measures the
    options and answer cue (:func:`format_options`): when even they do not fit, truncating would cut
    into the options, so that is an :class:`OverlongError` too (``drop`` skips such an item).
    """
    total = len(prompt_ids) + reserve
    if total <= max_seq_len:
        return prompt_ids, False
    if overlong == "drop":
        return None, False
    if overlong == "error":
        raise OverlongError(
            f"{item.source or item.id}: item '{item.id}' is {total} tokens, over max_seq_len={max_seq_len} "
            "(raise max_seq_len, or set overlong to truncate or drop)"
        )
    keep = max_seq_len - reserve
    has_bos = bos_id is not None and prompt_ids[:1] == [bos_id]
    if keep < 1 + int(has_bos):
        raise OverlongError(f"item '{item.id}': the answer alone is longer than max_seq_len={max_seq_len}")
    if tokenizer is not None:
        options = len(tokenizer(format_options(item), add_special_tokens=False)["input_ids"])
        if keep - int(has_bos) < options:
            raise OverlongError(
                f"{item.source or item.id}: item '{item.id}': its options, answer cue and answer alone are "
                f"{options + reserve + int(has_bos)} tokens, over max_seq_len={max_seq_len}, so truncating the question "
                "cannot fit it (raise max_seq_len, or set overlong to drop)"
            )
    tail = prompt_ids[len(prompt_ids) - (keep - int(has_bos)) :]
    return (prompt_ids[:1] + tail if has_bos else tail), True


def build_example(
    item: MCQItem,
    tokenizer: Any,
    max_seq_len: int,
    answer_format: AnswerFormat = "letter",
    overlong: Literal["error", "truncate", "drop"] = "error",
) -> Example | None:
    """Tokenise prompt + answer + EOS; labels only on answer + EOS.

    An example longer than ``max_seq_len`` raises :class:`OverlongError` (``overlong="error"``),
    loses prompt tokens from the left after BOS so the options and answer survive
    (``"truncate"``), or is returned as ``None`` (``"drop"``): see :func:`fit_prompt`.
    """
    target_ids = list(tokenizer(format_target(item, answer_format), add_special_tokens=False)["input_ids"])
    eos = getattr(tokenizer, "eos_token_id", None)
    if eos is not None:
        target_ids.append(eos)
    bos = getattr(tokenizer, "bos_token_id", None)
    prompt_ids, truncated = fit_prompt(item, encode_prompt(tokenizer, format_prompt(item)), len(target_ids), max_seq_len, overlong, bos, tokenizer)
    if prompt_ids is None:
        return None
    input_ids = prompt_ids + target_ids
    labels = [-100] * len(prompt_ids) + target_ids
    return Example(item.id, input_ids, labels, truncated)
