"""NF4 weights dequantised by torch ops inside a compiled layer (``model.compile_nf4: inductor``).

bitsandbytes runs a 4-bit layer's matmul as its own operator (``bitsandbytes::gemm_4bit``, and
``dequantize_4bit`` / ``dequantize_blockwise`` in backward): Python functions registered with
torch, which a compiled layer calls back into for each of its seven adapted projections. On one
H100 at MedGemma 4B's shape the compiled step is limited by the host, not the GPU (its kernels
take 400 ms of a 480 ms step; cutting 36 ms of kernels left the step time where it was), and
those calls were among the largest pieces of host time inside the compiled layers, next to
inductor's and AOTAutograd's wrappers: a profiled step spent ~0.2 ms per ``gemm_4bit`` call,
476 calls a step.

Here the same arithmetic is written as tensor ops, so inductor generates one kernel for it and
launches it from the compiled graph like any other:

    absmax = code8[absmax_u8] * absmax2[i // 256] + offset      # double quantisation (fp32)
    w[j]   = nf4[nibble(j)] * absmax[j // blocksize]            # fp32, then the compute dtype

where byte ``k`` of the packed weight holds elements ``2k`` (high nibble) and ``2k + 1`` (low
nibble), the layout bitsandbytes writes. Then ``F.linear``; the weight is frozen, so autograd
needs only the input's gradient, for which the compiled backward dequantises again or keeps the
layer's dequantised weights until its backward is done (inductor's choice; under activation
checkpointing that is one layer's weights at a time).

Measured on one H100 at that shape (BENCHMARKS.md, call 4): the same step time as with
bitsandbytes' operators (18,378 against 18,465 tokens/s by median step: the step stays bound by
the rest of the host work), about the same dequantisation kernel time (3.4% of kernel time
against 3.6%; 476 dequantisation kernels a step, for the forward and the recompute, none in
backward: inductor keeps the recompute's weights for it), and 0.14 GB more peak memory. It is the default because the GPU tests pass on it, the
compiled step with dropout included.

It runs inside the fused LoRA forward (``lora_fast``), so it needs ``model.lora_forward`` fused
(``auto`` on CUDA). Eager (uncompiled) layers keep bitsandbytes' kernels. On CPU and in fp32 this
function equals ``bitsandbytes.functional.dequantize_4bit`` exactly, and on CUDA in bf16 too
(``tests/test_nf4.py``, ``tests/test_gpu.py``); compiled, inductor may fuse the
double-quantisation multiply-add, a last-bit difference in fp32 before the bf16 round.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

NESTED_BLOCKSIZE = 256  # bitsandbytes' block size for the quantised absmax (double quantisation)


def supported(module: Any) -> bool:
    """A bitsandbytes NF4 linear layer whose quantisation state this module can read."""
    weight = getattr(module, "weight", None)
    state = getattr(weight, "quant_state", None)
    if state is None or getattr(state, "quant_type", None) != "nf4" or weight.dtype != torch.uint8:
        return False
    return not state.nested or state.state2.blocksize == NESTED_BLOCKSIZE


def absmax(state: Any) -> torch.Tensor:
    """Each block's scale as fp32, undoing double quantisation when the state is nested."""
    if not state.nested:
        return state.absmax.float()
    s2 = state.state2
    n = state.absmax.numel()
    scale2 = s2.absmax.float().repeat_interleave(NESTED_BLOCKSIZE)[:n]
    return s2.code[state.absmax.long()] * scale2 + state.offset


def dequantize(weight: torch.Tensor, state: Any, dtype: torch.dtype) -> torch.Tensor:
    """The ``[out, in]`` weight in ``dtype`` from its packed NF4 bytes and quantisation state."""
    packed = weight.reshape(-1)
    nibbles = torch.stack([packed >> 4, packed & 0xF], dim=-1).reshape(-1).long()
    n = torch.Size(state.shape).numel()
    values = state.code[nibbles[:n]]  # fp32, as bitsandbytes' kernels compute
    scale = absmax(state)
    blocksize = state.blocksize
    full = n - n % blocksize
    if full == n:
        out = (values.view(-1, blocksize) * scale.view(-1, 1)).reshape(n)
    else:  # a last, short block
        out = torch.cat([(values[:full].view(-1, blocksize) * scale[: full // blocksize].view(-1, 1)).reshape(full),
                         values[full:] * scale[full // blocksize]])
    return out.reshape(state.shape).to(dtype)


def linear(module: Any, x: torch.Tensor) -> torch.Tensor:
    """What ``bitsandbytes.nn.Linear4bit.forward`` computes, with the dequantisation above."""
    dtype = module.compute_dtype or x.dtype
    w = dequantize(module.weight, module.weight.quant_state, dtype)
    bias = None if module.bias is None else module.bias.to(dtype)
    return F.linear(x.to(dtype), w, bias).to(x.dtype)
