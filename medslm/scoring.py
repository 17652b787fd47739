"""Scoring MCQ items with a causal LM: the batched letter scorer and its references.

- :func:`score_letters` (default): one forward pass per item; at the last prompt position read
  ``log_softmax`` over the vocabulary at the first token of each answer continuation (``" A"``,
  ``" B"``, ...; only the item's own 4 or 5 options). With the default templates this is
  lm-evaluation-harness's ``medqa_4options`` protocol (single-token continuations), in one pass.
- :func:`score_letters_unbatched`: the same numbers one item at a time (tests).
- :func:`score_per_option`: one sequence ``prompt + " X"`` per (item, option), read log P(" X"),
  batch 1 by default: how lm-evaluation-harness scores loglikelihood tasks (bench reference).
- :func:`score_option_text`: ``acc_norm``: log P(``" X. option text"`` | prompt) divided by the
  character length of ``"X. option text"``, for base models that do not answer with a letter.

Batching: sequences are sorted longest first, right-padded into batches bounded by ``batch_size``
rows and ``max_batch_tokens`` padded tokens, and results go back to the input order. Sorting keeps
padding small, so packing buys nothing here. Logits are computed only at the positions read
(``logits_to_keep`` with per-row positions), never as [B, T, vocab]. Everything runs under
``torch.inference_mode`` on a model in eval mode: deterministic.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from medslm.prompts import encode_prompt, format_prompt, letter_token_ids
from medslm.records import LETTERS, MCQItem
from medslm.tokenizer import pad_token_id


# ---------------------------------------------------------------------------------------------
# Forward passes that compute logits only where they are read
# ---------------------------------------------------------------------------------------------


def _supports_row_positions(model: Any) -> bool:
    """Does the model's forward take a 2-D ``logits_to_keep`` (per-row positions / a bool mask)?"""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    module = sys.modules.get(type(base).__module__)
    params = inspect.signature(base.forward).parameters
    return module is not None and hasattr(module, "slice_logits_to_keep") and "logits_to_keep" in params


def forward_at(model: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Logits at chosen positions: ``keep`` int [B, K] -> [B, K, V]; bool [B, T] -> [N, V]."""
    if _supports_row_positions(model):
        return model(input_ids=input_ids, attention_mask=attention_mask, logits_to_keep=keep).logits
    logits = model(input_ids=input_ids, attention_mask=attention_mask).logits  # fallback: all of them
    if keep.dtype == torch.bool:
        return logits[keep]
    return torch.take_along_dim(logits, keep[..., None], dim=1)


def _device_of(model: Any) -> torch.device:
    return model.get_input_embeddings().weight.device


def length_batches(lengths: Sequence[int], batch_size: int, max_batch_tokens: int) -> Iterator[list[int]]:
    """Indices sorted longest first, cut into batches of <= batch_size rows and <= max_batch_tokens
    padded tokens (a single longer sequence still gets a batch of its own)."""
    batch: list[int] = []
    longest = 0
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        width = max(longest, lengths[i])
        if batch and (len(batch) >= batch_size or width * (len(batch) + 1) > max_batch_tokens):
            yield batch
            batch, width = [], lengths[i]
        batch.append(i)
        longest = width
    if batch:
        yield batch


def _right_pad(seqs: list[list[int]], pad: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s, dtype=torch.long)
        mask[r, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _bar(total: int, progress: bool, desc: str, unit: str) -> Any:
    """A bar on a terminal, a plain line every tenth of the way in a log (:mod:`medslm.console`)."""
    from medslm.console import Progress

    return Progress(total, desc, unit, enabled=progress, every=max(1, total // 10))


# ---------------------------------------------------------------------------------------------
# Scorers: each returns one list of per-option scores per item (higher is better)
# ---------------------------------------------------------------------------------------------


@torch.inference_mode()
def score_letters(model: Any, tokenizer: Any, items: Sequence[MCQItem], batch_size: int = 32, max_batch_tokens: int = 16384, progress: bool = False, prompts: Sequence[list[int]] | None = None) -> list[list[float]]:
    """Default scorer: log P(letter token | prompt) for each of the item's options, one pass per item.

    ``prompts``: the items' prompt ids when the caller has already fitted them to a length limit."""
    device = _device_of(model)
    letters = torch.tensor(letter_token_ids(tokenizer, len(LETTERS)), device=device)
    prompts = list(prompts) if prompts is not None else [encode_prompt(tokenizer, format_prompt(it)) for it in items]
    scores: list[list[float]] = [[] for _ in items]
    with _bar(len(items), progress, "eval", "item") as bar:
        for batch in length_batches([len(p) for p in prompts], batch_size, max_batch_tokens):
            ids, mask = _right_pad([prompts[i] for i in batch], pad_token_id(tokenizer), device)
            last = (mask.sum(dim=1) - 1).unsqueeze(1)  # each row's last real position, [B, 1]
            logits = forward_at(model, ids, mask, last)[:, 0]  # [B, V]
            lp = torch.log_softmax(logits.float(), dim=-1)[:, letters].cpu()
            for r, i in enumerate(batch):
                scores[i] = lp[r, : len(items[i].options)].tolist()
            bar.update(len(batch))
    return scores


@torch.inference_mode()
def score_letters_unbatched(model: Any, tokenizer: Any, items: Sequence[MCQItem]) -> list[list[float]]:
    """The plain reference: one item at a time, no padding, full logits; the same numbers."""
    device = _device_of(model)
    out = []
    for it in items:
        ids = torch.tensor([encode_prompt(tokenizer, format_prompt(it))], device=device)
        logits = model(input_ids=ids).logits[0, -1]
        lp = torch.log_softmax(logits.float(), dim=-1)
        out.append([float(lp[t]) for t in letter_token_ids(tokenizer, len(it.options))])
    return out


@torch.inference_mode()
def continuation_logprobs(model: Any, tokenizer: Any, requests: Sequence[tuple[list[int], list[int]]], batch_size: int = 32, max_batch_tokens: int = 16384, progress: bool = False, desc: str = "eval") -> list[float]:
    """Sum of log P(continuation | context) per (context ids, continuation ids): lm-eval's loglikelihood."""
    device = _device_of(model)
    seqs = [ctx + cont for ctx, cont in requests]
    out = [0.0] * len(requests)
    with _bar(len(requests), progress, desc, "seq") as bar:
        for batch in length_batches([len(s) for s in seqs], batch_size, max_batch_tokens):
            ids, mask = _right_pad([seqs[i] for i in batch], pad_token_id(tokenizer), device)
            keep = torch.zeros_like(mask, dtype=torch.bool)
            targets: list[int] = []
            for r, i in enumerate(batch):
                ctx, cont = requests[i]
                keep[r, len(ctx) - 1 : len(ctx) + len(cont) - 1] = True  # positions predicting cont
                targets.extend(cont)
            logits = forward_at(model, ids, mask, keep)  # [N, V], row-major = continuation order
            lp = torch.log_softmax(logits.float(), dim=-1)
            tok_lp = lp.gather(1, torch.tensor(targets, device=device)[:, None])[:, 0].cpu().double()
            pos = 0
            for i in batch:
                n = len(requests[i][1])
                out[i] = float(tok_lp[pos : pos + n].sum())
                pos += n
            bar.update(len(batch))
    return out


def _group(values: list[float], items: Sequence[MCQItem]) -> list[list[float]]:
    out, pos = [], 0
    for it in items:
        out.append(values[pos : pos + len(it.options)])
        pos += len(it.options)
    return out


def score_per_option(model: Any, tokenizer: Any, items: Sequence[MCQItem], batch_size: int = 1, progress: bool = False) -> list[list[float]]:
    """lm-eval's loglikelihood way: one sequence prompt + " X" per (item, option); batch 1 by default."""
    letters = letter_token_ids(tokenizer, len(LETTERS))
    reqs = []
    for it in items:
        prompt = encode_prompt(tokenizer, format_prompt(it))
        reqs.extend((prompt, [letters[k]]) for k in range(len(it.options)))
    return _group(continuation_logprobs(model, tokenizer, reqs, batch_size, 1 << 30, progress, "per-option"), items)


def score_option_text(model: Any, tokenizer: Any, items: Sequence[MCQItem], batch_size: int = 32, max_batch_tokens: int = 16384, progress: bool = False, prompts: Sequence[list[int]] | None = None) -> list[list[float]]:
    """acc_norm: log P(" X. text" | prompt) / len("X. text") in characters."""
    reqs, norms = [], []
    for i, it in enumerate(items):
        prompt = prompts[i] if prompts is not None else encode_prompt(tokenizer, format_prompt(it))
        for k, text in enumerate(it.options):
            choice = f"{LETTERS[k]}. {text}"
            reqs.append((prompt, list(tokenizer(" " + choice, add_special_tokens=False)["input_ids"])))
            norms.append(len(choice))
    lls = continuation_logprobs(model, tokenizer, reqs, batch_size, max_batch_tokens, progress, "eval (option text)")
    return _group([ll / n for ll, n in zip(lls, norms)], items)


SCORERS: dict[str, Callable[..., list[list[float]]]] = {"letter": score_letters, "option_text": score_option_text}


__all__ = [
    "SCORERS",
    "continuation_logprobs",
    "forward_at",
    "length_batches",
    "score_letters",
    "score_letters_unbatched",
    "score_option_text",
    "score_per_option",
]
