"""A leaner forward for PEFT's LoRA linear layers (plain ``nn.Linear`` and bitsandbytes 4-bit).

PEFT computes ``result = base(x).clone(); result = result + lora_B(lora_A(dropout(x))) * scaling``:
per adapted module that is a defensive copy of the base output (4-bit layers), a separate multiply
by the scale and a separate add, each a full pass over an ``[tokens, out_features]`` tensor (at
MedGemma 4B's shape, 4 x 2048 x 10240 for gate/up), again in the backward pass and again when
activation checkpointing recomputes the layer. Here the same function is

    h = dropout(x) @ A^T                                   # [tokens, r]
    out = addmm(base(x), h, B^T, alpha=scaling)            # one GEMM, scale and add in its epilogue

so the base output is read once by the B-matmul's epilogue and nothing else touches it; ``A`` and
``B`` (fp32 parameters) are cast to the activations' dtype (tiny: r x features), so no activation
goes to fp32. Dropout stays PEFT's module (same probability, same RNG draws, one dropped copy of
the input, which the A-matmul's backward needs anyway); with ``lora.dropout: 0`` it is an identity.

Measured at MedGemma 4B's shape on one H200 (BENCHMARKS.md): 1.10x the eager step on its own.

Inside a compiled layer (``model.compile``) the same function is traced as

    out = base(x) + (h @ B^T) * scaling                   # the add and scale fused downstream

because inductor hands an ``addmm`` whose input is a full matrix to ATen as it is, and ATen first
copies that input into the output (a device-to-device memcpy of every adapted module's base
output) and then runs the GEMM reading it back (cuBLAS with beta=1). On one H100 the compiled
step's profile had those two at 4.7% (memcpy) and 6.7% (the beta=1 GEMM) of device time. As an
``mm`` and an ``add``, the skinny B-matmul writes its product once and inductor fuses the scale and
the add into the kernel that consumes the output (RoPE's reshape, GeGLU, the residual add), with
no copy. ``COMPILED_FORM = "addmm"`` keeps the addmm when compiled (for the bench's comparison).

Inside a compiled layer an NF4 base layer's matmul can also leave bitsandbytes' Python operators
for ``medslm.nf4``'s dequantisation, which inductor compiles into the graph (``enable(...,
compiled_nf4=True)``, ``model.compile_nf4: inductor``).

The forward is installed per module (``enable``) and falls back to PEFT's own forward whenever the
module is not in the plain single-adapter training state (adapters disabled or merged, several
active adapters, per-call adapter names, DoRA or other variants, a LoRA bias), so PEFT's features
keep their exact behaviour. Adapter files, names and state dicts are untouched.
"""

from __future__ import annotations

from types import MethodType
from typing import Any

import torch
import torch.nn.functional as F

from medslm import nf4

_ORIGINAL = "_medslm_peft_forward"
_NF4 = "_medslm_compiled_nf4"  # set on modules whose NF4 base dequantises by torch ops when compiled
# the form traced inside torch.compile: "add" (base + (h @ B^T) * scale, fused downstream) or
# "addmm" (the eager form); read at trace time, so set it before the first compiled step
COMPILED_FORM = "add"


def _lora_classes() -> tuple[type, ...]:
    from peft.tuners.lora.layer import Linear

    classes: list[type] = [Linear]
    try:
        from peft.tuners.lora.bnb import Linear4bit
    except ImportError:  # bitsandbytes absent
        pass
    else:
        classes.append(Linear4bit)
    return tuple(classes)


def _eligible(module: Any) -> bool:
    if any(getattr(module, "use_dora", {}).values()) or getattr(module, "lora_variant", None):
        return False
    if any(getattr(module, "lora_bias", {}).values()):
        return False
    return not getattr(module, "fan_in_fan_out", False)


def fast_lora_forward(self: Any, x: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    """``base(x) + scaling * B(A(dropout(x)))`` as one A-matmul and one fused addmm (eager), or an
    mm whose scale and add inductor fuses into the next kernel (compiled)."""
    active = self.active_adapters
    if args or kwargs or self.disable_adapters or self.merged or len(active) != 1 or active[0] not in self.lora_A:
        return getattr(self, _ORIGINAL)(x, *args, **kwargs)
    name = active[0]
    if self.__dict__.get(_NF4) and torch.compiler.is_compiling():
        result = nf4.linear(self.base_layer, x)  # one inductor kernel, not a Python operator per call
    else:
        result = self.base_layer(x)
    a = self.lora_A[name].weight
    b = self.lora_B[name].weight
    xd = self.lora_dropout[name](x)
    h = F.linear(xd, a.to(xd.dtype))
    dt = result.dtype
    if COMPILED_FORM == "add" and torch.compiler.is_compiling():
        return result + F.linear(h.to(dt), b.to(dt)) * self.scaling[name]
    out = torch.addmm(result.reshape(-1, result.shape[-1]), h.reshape(-1, h.shape[-1]).to(dt), b.to(dt).t(), alpha=self.scaling[name])
    return out.view(result.shape)


def enable(model: torch.nn.Module, compiled_nf4: bool = False) -> int:
    """Install the fast forward on every eligible LoRA linear layer; returns how many (idempotent).

    ``compiled_nf4``: inside a compiled layer, an NF4 base layer's matmul dequantises its weight
    with ``medslm.nf4`` (``model.compile_nf4: inductor``) instead of bitsandbytes' operator."""
    classes = _lora_classes()
    n = 0
    for module in model.modules():
        if not isinstance(module, classes) or not _eligible(module):
            continue
        if not hasattr(module, _ORIGINAL):
            setattr(module, _ORIGINAL, module.forward)
            module.forward = MethodType(fast_lora_forward, module)
        module.__dict__[_NF4] = compiled_nf4 and nf4.supported(module.base_layer)
        n += 1
    return n


def disable(model: torch.nn.Module) -> int:
    """Restore PEFT's forward everywhere ``enable`` installed ours; returns how many."""
    n = 0
    for module in model.modules():
        original = module.__dict__.pop(_ORIGINAL, None)
        if original is not None:
            module.__dict__.pop("forward", None)
            module.__dict__.pop(_NF4, None)
            n += 1
    return n
