"""Packed (variable-length) attention driven by ``cu_seqlens``, registered with transformers.

``medslm_packed`` is registered in transformers' ``AttentionInterface`` and deliberately *not* in
its mask interface, so the model builds no [T, T] mask at all: each example's causal block is
computed from ``cu_seq_lens_q`` (the collator's ``cu_seqlens``), passed as a keyword to the
model's forward and handed down to every attention layer.

- CUDA: ``torch.nn.attention.varlen.varlen_attn`` (flash kernels), or ``flash_attn``'s
  ``flash_attn_varlen_func`` when that package is installed and torch has no varlen op. A
  sliding window (Gemma 3's local layers) is dropped when no segment of the batch is longer than
  it (the same attention, exactly); torch < 2.12 has no windowed varlen op, so a longer segment
  then takes the per-segment path below.
- CPU (and any other device, and fp32 on CUDA, which the flash kernels do not take):
  scaled-dot-product attention over each segment alone. The work is
  sum(len_i^2) instead of T^2, which is why packing is faster than padding here and not only
  equal.

Inputs come flattened: the training loop feeds a packed batch as one row of ``B x T`` tokens, so
``cu_seqlens`` (over the flattened batch, as the collator emits it) indexes the tokens directly.
Without ``cu_seq_lens_q`` the call falls through to transformers' SDPA path unchanged.

Under ``torch.compile`` (``model.compile``) the CUDA path traces into one graph: ``cu_seqlens`` is
checked on the host (``packed_forward_kwargs``) rather than read back from the device in every
layer, and the per-segment path runs eagerly (its segment list is data, not shape).
"""

from __future__ import annotations

import importlib.util
import inspect
from typing import Any

import torch
import torch.nn.functional as F

from medslm.transfer import to_device

ATTN_NAME = "medslm_packed"


def _segments(cu: torch.Tensor) -> list[tuple[int, int]]:
    bounds = cu.tolist()
    return [(a, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


GROUP_SLACK = 1.25  # segments whose lengths are within 25% share one padded SDPA call


def _length_groups(lengths: list[int]) -> list[list[int]]:
    """Segment indices grouped by similar length (sorted), so a group pads little."""
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    groups: list[list[int]] = []
    for i in order:
        if groups and lengths[i] <= GROUP_SLACK * lengths[groups[-1][0]]:
            groups[-1].append(i)
        else:
            groups.append([i])
    return groups


def _window_mask(n: int, window: int, device: torch.device) -> torch.Tensor:
    i = torch.arange(n, device=device)
    return (i[None, :] <= i[:, None]) & (i[None, :] > i[:, None] - window)


@torch.compiler.disable
def _segment_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu: torch.Tensor, scale: float | None, window: int | None, dropout: float
) -> torch.Tensor:
    """q: [H, N, D], k/v: [Hkv, N, D] over N flattened tokens -> [H, N, D]; causal inside segments.

    Segments of similar length are right-padded into one [G, H, L, D] batch: with a causal mask a
    real token never sees the padding after it, so each segment's output is exact, and the work
    stays close to sum(len^2) while the number of kernel calls drops to a handful.
    """
    if q.shape[0] != k.shape[0]:
        # SDPA's fused CPU kernel does not take enable_gqa (it falls back to the slow math path),
        # so share the KV heads explicitly, once for the whole row
        rep = q.shape[0] // k.shape[0]
        k, v = k.repeat_interleave(rep, dim=0), v.repeat_interleave(rep, dim=0)
    segs = _segments(cu)
    lengths = [b - a for a, b in segs]
    if sum(lengths) != q.shape[1]:
        raise ValueError(f"cu_seqlens covers {sum(lengths)} tokens but the row has {q.shape[1]}")
    # split/pad/stack and slice/cat rather than index gathers: their backward passes are plain
    # copies, where a gather's backward is a scatter-add that costs more than the attention
    pieces = [t.transpose(0, 1).split(lengths) for t in (q, k, v)]  # each [len, H, D]
    outs: list[torch.Tensor | None] = [None] * len(segs)
    for group in _length_groups(lengths):
        longest = lengths[group[-1]]

        def batch(parts: tuple[torch.Tensor, ...]) -> torch.Tensor:
            padded = [F.pad(parts[j], (0, 0, 0, 0, 0, longest - lengths[j])) for j in group]
            return torch.stack(padded).transpose(1, 2)  # [G, H, L, D]

        mask = _window_mask(longest, window, q.device) if window is not None and longest > window else None
        o = F.scaled_dot_product_attention(
            *(batch(p) for p in pieces), attn_mask=mask, is_causal=mask is None, scale=scale, dropout_p=dropout
        ).transpose(1, 2)  # [G, L, H, D]
        for g, j in enumerate(group):
            outs[j] = o[g, : lengths[j]]
    return torch.cat(outs).transpose(0, 1)  # type: ignore[arg-type]


try:  # torch >= 2.9
    from torch.nn.attention.varlen import varlen_attn as _torch_varlen_attn
except ImportError:
    _torch_varlen_attn = None

# read once at import: torch.compile traces the attention call, and neither an import nor
# inspect.signature belongs inside a traced function
_VARLEN_PARAMS: set[str] = set(inspect.signature(_torch_varlen_attn).parameters) if _torch_varlen_attn else set()
_HAS_TORCH_VARLEN = bool(_VARLEN_PARAMS)
_HAS_FLASH_ATTN = importlib.util.find_spec("flash_attn") is not None
_VARLEN_WINDOW = "window_size" in _VARLEN_PARAMS
_FLASH_DTYPES = (torch.float16, torch.bfloat16)


def _varlen_cuda(q, k, v, cu, max_len, scale, window):
    """q/k/v: [N, H, D] on CUDA; torch's native varlen flash attention (torch >= 2.9)."""
    kwargs: dict[str, Any] = {"scale": scale}
    if _VARLEN_WINDOW:  # torch >= 2.12: causality is a (left, 0) window
        kwargs["window_size"] = (window - 1 if window else -1, 0)
    else:  # torch 2.9-2.11
        if window:
            raise NotImplementedError("sliding-window varlen attention needs torch >= 2.12")
        kwargs["is_causal"] = True
    if q.shape[1] != k.shape[1]:
        if "enable_gqa" in _VARLEN_PARAMS:
            kwargs["enable_gqa"] = True
        else:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
    cu32 = cu.to(device=q.device, dtype=torch.int32)
    return _torch_varlen_attn(q, k, v, cu32, cu32, max_len, max_len, **kwargs)


def _flash_attn_cuda(q, k, v, cu, max_len, scale, window):
    from flash_attn import flash_attn_varlen_func  # type: ignore[import-not-found]

    cu32 = cu.to(device=q.device, dtype=torch.int32)
    win = (window - 1, 0) if window else (-1, -1)
    return flash_attn_varlen_func(q, k, v, cu32, cu32, max_len, max_len, softmax_scale=scale, causal=True, window_size=win)


def packed_attention_forward(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    sliding_window: int | None = None,
    cu_seq_lens_q: torch.Tensor | None = None,
    max_length_q: int | None = None,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers attention-interface function; query [B, H, T, D] -> output [B, T, H, D]."""
    if cu_seq_lens_q is None:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(
            module, query, key, value, attention_mask, scaling=scaling, dropout=dropout, sliding_window=sliding_window, **kwargs
        )
    bsz, n_heads, seq, dim = query.shape
    if bsz != 1:
        raise ValueError(f"{ATTN_NAME} expects the packed batch flattened to one row, got batch size {bsz}")
    if not cu_seq_lens_q.is_cuda and not torch.compiler.is_compiling():
        # packed_forward_kwargs checks this on the host before the transfer; on a device, reading
        # the tensor here would stall every layer on a device-to-host copy (and break a compiled graph)
        _check_cu_seqlens(cu_seq_lens_q, seq)
    window = int(sliding_window) if sliding_window else None
    drop = dropout if module.training else 0.0
    # the flash kernels take half precision only: fp32 on CUDA (model.compute_dtype: float32, a
    # precision reference) goes per segment, through SDPA's fp32 kernels
    if query.is_cuda and drop == 0.0 and query.dtype in _FLASH_DTYPES and (_HAS_TORCH_VARLEN or _HAS_FLASH_ATTN):
        max_len = int(max_length_q) if max_length_q else int((cu_seq_lens_q[1:] - cu_seq_lens_q[:-1]).max())
        if window is not None and max_len <= window:
            window = None  # no segment outgrows the window: plain causal attention is the same function
        if window is None or _VARLEN_WINDOW or _HAS_FLASH_ATTN:
            q, k, v = (t[0].transpose(0, 1) for t in (query, key, value))  # [N, H, D]
            fn = _varlen_cuda if _HAS_TORCH_VARLEN and (window is None or _VARLEN_WINDOW) else _flash_attn_cuda
            out = fn(q, k, v, cu_seq_lens_q, max_len, scaling, window)
            return out.unsqueeze(0), None
    out = _segment_attention(query[0], key[0], value[0], cu_seq_lens_q, scaling, window, drop)  # [H, N, D]
    return out.transpose(0, 1).unsqueeze(0), None


def _check_cu_seqlens(cu: torch.Tensor, seq: int) -> None:
    if int(cu[-1]) != seq:
        raise ValueError(f"cu_seqlens ends at {int(cu[-1])} but the sequence has {seq} tokens")


def register() -> str:
    """Register ``medslm_packed`` with transformers (idempotent) and return its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_NAME, packed_attention_forward)
    return ATTN_NAME


def packed_forward_kwargs(batch: dict[str, Any], device: torch.device | str) -> dict[str, Any]:
    """Model-forward keywords for a PackedCollator batch, flattened to one row of B x T tokens."""
    ids = batch["input_ids"]
    _check_cu_seqlens(batch["cu_seqlens"], ids.numel())  # on the host, before the transfer
    cu = to_device(batch["cu_seqlens"], device, torch.int32)  # queued: no host wait (medslm.transfer)
    return {
        "input_ids": to_device(ids.reshape(1, -1), device),
        "position_ids": to_device(batch["position_ids"].reshape(1, -1), device),
        "cu_seq_lens_q": cu,
        "cu_seq_lens_k": cu,
        "max_length_q": int(batch["max_seqlen"]),
        "max_length_k": int(batch["max_seqlen"]),
    }
