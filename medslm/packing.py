"""Sequence packing: best-fit-decreasing bin packing and the collators that turn rows into tensors.

Pure functions and small callables: no I/O, no tokenizer, no module state.

Packing
-------
``pack_bfd(lengths, max_seq_len)`` returns *bins*: lists of sample indices whose lengths sum to at
most ``max_seq_len``. Each packed row of the training set is one bin.

Collated packed batch (``PackedCollator``)
------------------------------------------
For ``B`` rows of ``T = max_seq_len`` tokens:

- ``input_ids`` [B, T]: each row's examples back to back, right-padded with ``pad_token_id``.
- ``labels`` [B, T]: the examples' labels, ``label_pad_id`` on padding *and* on the first token of
  every example. Labels are **not** shifted: as in Hugging Face causal LMs, ``logits[:, t]`` is
  scored against ``labels[:, t + 1]``. Masking each example's first token therefore stops the last
  token of example k from being trained to predict the first token of example k+1. Because every
  row also starts with an example's first token (or padding), the same holds across rows when the
  batch is flattened to one row of ``B*T`` tokens.
- ``position_ids`` [B, T]: 0, 1, 2, ... restarting at every example. A row's padding tail is its
  own segment: its positions restart at 0 too, so it never attends into (or is attended by) real
  tokens under segment-aware masking.
- ``cu_seqlens`` int32 [S+1] over the *flattened* batch (``B*T`` tokens): 0, then the end of every
  segment (examples and padding tails) in order, ending at ``B*T``. Strictly increasing, so every
  segment is non-empty. Row r's segments lie inside [r*T, (r+1)*T).
- ``max_seqlen`` (int): the longest segment.
- ``num_real_tokens`` / ``num_label_tokens`` (int): non-padding tokens / labels != label_pad_id.

There is deliberately no ``attention_mask``: transformers only infers the block-diagonal causal mask
from restarting ``position_ids`` when no 2-D attention mask is passed (and no KV cache is in use),
and an all-ones mask would silently switch that off.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Literal, Mapping, Sequence

import numpy as np
import torch

__all__ = [
    "pack_bfd",
    "packing_efficiency",
    "rows_from_bins",
    "segment_ids_from_position_ids",
    "cu_seqlens_from_position_ids",
    "PackedCollator",
    "PaddedCollator",
]


# ---------------------------------------------------------------------------------------------
# Bin packing
# ---------------------------------------------------------------------------------------------


def _check_max_seq_len(max_seq_len: Any) -> int:
    if isinstance(max_seq_len, bool) or not isinstance(max_seq_len, (int, np.integer)):
        raise ValueError(f"max_seq_len must be a positive int, got {max_seq_len!r}")
    if max_seq_len <= 0:
        raise ValueError(f"max_seq_len must be a positive int, got {max_seq_len}")
    return int(max_seq_len)


def _lengths_array(lengths: Sequence[int], max_seq_len: int) -> np.ndarray:
    arr = np.asarray(lengths)
    if arr.ndim != 1:
        raise ValueError(f"lengths must be a 1-D sequence of ints, got shape {arr.shape}")
    if arr.size == 0:
        return arr.astype(np.int64)
    if arr.dtype.kind == "b":
        raise ValueError("lengths must be ints, got booleans")
    if arr.dtype.kind not in "iu":
        try:
            f = arr.astype(np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"lengths must be ints, got dtype {arr.dtype}") from e
        nonint = np.flatnonzero(~np.isfinite(f) | (f != np.round(f)))
        if nonint.size:
            i = int(nonint[0])
            raise ValueError(f"sample at index {i} has length {lengths[i]!r}: lengths must be ints")
        arr = f
    arr = arr.astype(np.int64, copy=False)
    bad = np.flatnonzero((arr <= 0) | (arr > max_seq_len))
    if bad.size:
        i = int(bad[0])
        raise ValueError(
            f"sample at index {i} has length {int(arr[i])}: every length must be in [1, max_seq_len={max_seq_len}]"
            + (f" ({bad.size} offending samples in all)" if bad.size > 1 else "")
        )
    return arr


def pack_bfd(lengths: Sequence[int], max_seq_len: int) -> list[list[int]]:
    """Best-fit-decreasing packing of sample indices into bins of capacity ``max_seq_len``.

    Samples are placed longest first (equal lengths in increasing index order). Each goes into the
    open bin with the *smallest* remaining capacity that still fits it; if none fits, a new bin is
    opened. Among bins with the same remaining capacity the one that reached that capacity first
    is used. The result is fully deterministic.

    Returns the bins in the order they were opened; inside a bin, indices are in insertion order
    (so non-increasing length, ties by increasing index). Every index of ``lengths`` appears exactly
    once and no bin's total exceeds ``max_seq_len``.

    Raises ``ValueError`` if ``max_seq_len <= 0`` or any length is <= 0 or > ``max_seq_len``
    (the message names the first offending index and its length).

    Cost: an O(n log n) sort plus one pass. Open bins are bucketed by remaining capacity (a small
    integer); a Python-int bitmask over the non-empty buckets finds the best-fit bucket with one
    shift and a lowest-set-bit, i.e. O(max_seq_len / 64) machine words per sample, in C.
    """
    cap = _check_max_seq_len(max_seq_len)
    arr = _lengths_array(lengths, cap)
    n = int(arr.size)
    if n == 0:
        return []
    # Descending length, ties by original index (stable sort of the negated lengths).
    order = np.argsort(-arr, kind="stable")
    sorted_lengths = arr[order].tolist()
    order_list = order.tolist()
    min_len = sorted_lengths[-1]  # a bin with less room than this can never be used again

    bins: list[list[int]] = []
    buckets: list[deque | None] = [None] * (cap + 1)  # remaining capacity -> FIFO of bin ids
    mask = 0  # bit c set <=> buckets[c] is non-empty
    for idx, length in zip(order_list, sorted_lengths):
        m = mask >> length
        if m:
            c = length + (m & -m).bit_length() - 1  # smallest remaining capacity >= length
            q = buckets[c]
            b = q.popleft()
            if not q:
                mask ^= 1 << c
            bins[b].append(idx)
        else:
            c = cap
            b = len(bins)
            bins.append([idx])
        r = c - length
        if r >= min_len:
            q = buckets[r]
            if q is None:
                q = buckets[r] = deque()
            if not q:
                mask |= 1 << r
            q.append(b)
    return bins


def packing_efficiency(lengths: Sequence[int], bins: Sequence[Sequence[int]], max_seq_len: int) -> float:
    """Real tokens in ``bins`` / (number of bins x ``max_seq_len``); 0.0 for no bins."""
    cap = _check_max_seq_len(max_seq_len)
    if len(bins) == 0:
        return 0.0
    real = sum(int(lengths[i]) for b in bins for i in b)
    return real / (len(bins) * cap)


def rows_from_bins(examples: Sequence[Any], bins: Sequence[Sequence[int]]) -> list[list[Any]]:
    """The packed rows: ``[[examples[i] for i in bin] for bin in bins]``."""
    return [[examples[i] for i in b] for b in bins]


# ---------------------------------------------------------------------------------------------
# Segments from position_ids
# ---------------------------------------------------------------------------------------------


def segment_ids_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """Per-row segment index (0, 0, 1, 1, 1, 2, ...) for ``position_ids`` of shape [B, T] or [T].

    A new segment starts at column 0 and wherever ``position_ids[t] != position_ids[t-1] + 1``,
    which is transformers' own rule (``find_packed_sequence_indices``). For ``PackedCollator``
    output this is exactly "wherever position_ids == 0" (padding tails included).
    """
    squeeze = torch.as_tensor(position_ids).ndim == 1
    seg = _segment_starts(position_ids).long().cumsum(-1) - 1
    return seg[0] if squeeze else seg


def _segment_starts(position_ids: torch.Tensor) -> torch.Tensor:
    """[B, T] bool: True at column 0 and wherever ``pos[t] != pos[t-1] + 1``."""
    pos = torch.as_tensor(position_ids)
    if pos.ndim == 1:
        pos = pos.unsqueeze(0)
    if pos.ndim != 2:
        raise ValueError(f"position_ids must be [B, T] or [T], got shape {tuple(pos.shape)}")
    starts = torch.ones_like(pos, dtype=torch.bool)
    if pos.shape[1] > 1:
        starts[:, 1:] = pos[:, 1:] != pos[:, :-1] + 1
    return starts


def cu_seqlens_from_position_ids(position_ids: torch.Tensor) -> torch.Tensor:
    """``cu_seqlens`` (int32, over the flattened batch) implied by ``position_ids`` [B, T] or [T].

    Segment starts follow ``segment_ids_from_position_ids``; every row start is a boundary. For
    ``PackedCollator`` output this reproduces its ``cu_seqlens`` exactly.
    """
    starts = _segment_starts(position_ids)
    flat_starts = torch.nonzero(starts.reshape(-1)).squeeze(-1)
    end = torch.tensor([starts.numel()], dtype=flat_starts.dtype, device=flat_starts.device)
    return torch.cat([flat_starts, end]).to(torch.int32)


# ---------------------------------------------------------------------------------------------
# Collators
# ---------------------------------------------------------------------------------------------


def _example_arrays(ex: Mapping[str, Sequence[int]], where: str) -> tuple[Sequence[int], Sequence[int]]:
    try:
        x, y = ex["input_ids"], ex["labels"]
    except (KeyError, TypeError) as e:
        raise ValueError(f"{where}: an example must be a mapping with 'input_ids' and 'labels'") from e
    if len(x) == 0:
        raise ValueError(f"{where}: empty example")
    if len(y) != len(x):
        raise ValueError(f"{where}: {len(x)} input_ids but {len(y)} labels")
    return x, y


class PackedCollator:
    """Collate packed rows (each a list of ``{"input_ids", "labels"}`` examples) into tensors.

    See the module docstring for the exact output; in short: ``input_ids``, ``labels`` (unshifted,
    ``label_pad_id`` on padding and on every example's first token), ``position_ids`` (restarting
    at every example and at the padding tail), ``cu_seqlens`` (int32, flattened batch),
    ``max_seqlen``, ``num_real_tokens``, ``num_label_tokens``. No ``attention_mask``.

    Raises ``ValueError`` for an empty batch, a row longer than ``max_seq_len``, or an example that
    is empty or whose ``labels`` length differs from its ``input_ids`` length. A row with no
    examples is allowed (all padding, one segment).
    """

    def __init__(self, max_seq_len: int, pad_token_id: int, label_pad_id: int = -100):
        self.max_seq_len = _check_max_seq_len(max_seq_len)
        self.pad_token_id = int(pad_token_id)
        self.label_pad_id = int(label_pad_id)

    def __repr__(self) -> str:
        return f"PackedCollator(max_seq_len={self.max_seq_len}, pad_token_id={self.pad_token_id}, label_pad_id={self.label_pad_id})"

    def __call__(self, rows: Sequence[Sequence[Mapping[str, Sequence[int]]]]) -> dict[str, Any]:
        B, T = len(rows), self.max_seq_len
        if B == 0:
            raise ValueError("PackedCollator: empty batch")
        input_ids = np.full((B, T), self.pad_token_id, dtype=np.int64)
        labels = np.full((B, T), self.label_pad_id, dtype=np.int64)
        position_ids = np.zeros((B, T), dtype=np.int64)
        ar = np.arange(T, dtype=np.int64)
        cu = [0]
        max_seqlen = 0
        real = 0
        for r, row in enumerate(rows):
            pairs = [_example_arrays(ex, f"row {r}, example {j}") for j, ex in enumerate(row)]
            total = sum(len(x) for x, _ in pairs)
            if total > T:
                raise ValueError(
                    f"row {r} holds {total} tokens in {len(pairs)} examples, more than max_seq_len={T}"
                )
            off = 0
            base = r * T
            for x, y in pairs:
                n = len(x)
                input_ids[r, off : off + n] = x
                labels[r, off + 1 : off + n] = y[1:]
                position_ids[r, off : off + n] = ar[:n]
                off += n
                cu.append(base + off)
                if n > max_seqlen:
                    max_seqlen = n
            real += off
            if off < T:
                position_ids[r, off:] = ar[: T - off]
                cu.append(base + T)
                if T - off > max_seqlen:
                    max_seqlen = T - off
        return {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "position_ids": torch.from_numpy(position_ids),
            "cu_seqlens": torch.tensor(cu, dtype=torch.int32),
            "max_seqlen": int(max_seqlen),
            "num_real_tokens": int(real),
            "num_label_tokens": int(np.count_nonzero(labels != self.label_pad_id)),
        }


class PaddedCollator:
    """The unpacked baseline: one example per row, right-padded.

    ``padding="longest"`` pads to the longest example in the batch, ``"max_length"`` to
    ``max_seq_len``. ``max_seq_len`` (required for ``"max_length"``) is also an upper bound: a longer
    example raises ``ValueError`` (nothing is truncated silently).

    Returns ``input_ids``, ``labels`` (``label_pad_id`` on padding, otherwise as given; unshifted),
    ``attention_mask`` (1 real / 0 pad), ``position_ids`` (0..L-1 over the whole row; padding just
    keeps counting, so it never looks like a new packed sequence), ``num_real_tokens``,
    ``num_label_tokens``.
    """

    def __init__(
        self,
        pad_token_id: int,
        padding: Literal["longest", "max_length"] = "longest",
        max_seq_len: int | None = None,
        label_pad_id: int = -100,
    ):
        if padding not in ("longest", "max_length"):
            raise ValueError(f"padding must be 'longest' or 'max_length', got {padding!r}")
        if padding == "max_length" and max_seq_len is None:
            raise ValueError("padding='max_length' needs max_seq_len")
        self.pad_token_id = int(pad_token_id)
        self.padding = padding
        self.max_seq_len = None if max_seq_len is None else _check_max_seq_len(max_seq_len)
        self.label_pad_id = int(label_pad_id)

    def __repr__(self) -> str:
        return (
            f"PaddedCollator(pad_token_id={self.pad_token_id}, padding={self.padding!r}, "
            f"max_seq_len={self.max_seq_len}, label_pad_id={self.label_pad_id})"
        )

    def __call__(self, examples: Sequence[Mapping[str, Sequence[int]]]) -> dict[str, Any]:
        B = len(examples)
        if B == 0:
            raise ValueError("PaddedCollator: empty batch")
        pairs = [_example_arrays(ex, f"example {i}") for i, ex in enumerate(examples)]
        longest = max(len(x) for x, _ in pairs)
        if self.max_seq_len is not None and longest > self.max_seq_len:
            i = next(i for i, (x, _) in enumerate(pairs) if len(x) == longest)
            raise ValueError(f"example {i} has {longest} tokens, more than max_seq_len={self.max_seq_len}")
        T = self.max_seq_len if self.padding == "max_length" else longest
        input_ids = np.full((B, T), self.pad_token_id, dtype=np.int64)
        labels = np.full((B, T), self.label_pad_id, dtype=np.int64)
        attention_mask = np.zeros((B, T), dtype=np.int64)
        for r, (x, y) in enumerate(pairs):
            n = len(x)
            input_ids[r, :n] = x
            labels[r, :n] = y
            attention_mask[r, :n] = 1
        position_ids = np.broadcast_to(np.arange(T, dtype=np.int64), (B, T)).copy()
        return {
            "input_ids": torch.from_numpy(input_ids),
            "labels": torch.from_numpy(labels),
            "attention_mask": torch.from_numpy(attention_mask),
            "position_ids": torch.from_numpy(position_ids),
            "num_real_tokens": int(attention_mask.sum()),
            "num_label_tokens": int(np.count_nonzero(labels != self.label_pad_id)),
        }
