"""The GPU fast path: regional ``torch.compile``, Liger's fused kernels, the lean LoRA forward.

Three switches in the ``model`` section (and ``compile_rng`` / ``compile_nf4``, which shape the
compiled path), each measured on its own in ``bench/gpu_step.py``:

- ``model.compile``: ``torch.compile`` of each decoder layer's ``forward`` (regional compilation).
  Layers of one class share one compiled function, so the graph is traced once per distinct layer
  kind (Gemma 3: sliding and full attention) instead of once per layer, and its fusions (RMSNorm,
  RoPE, GeGLU, residual adds, dtype casts, LoRA's dropout/scale/add) replace eager's one kernel per
  elementwise op. Only ``forward`` is compiled: the module's hooks (FSDP2's all-gathers) and the
  activation-checkpointing wrapper stay eager around it, so compiling before ``fully_shard`` is
  safe. bitsandbytes' NF4 matmul and PEFT's LoRA layers are traced through (bitsandbytes registers
  its kernels as torch custom ops). ``compile_report()`` counts graphs and graph breaks. Measured
  at MedGemma 4B's shape on CUDA: 4 graphs for 34 layers, no graph break (BENCHMARKS.md).
  ``model.compile_rng``: ``eager`` (the default) has the compiled layers draw LoRA's dropout masks
  from torch's generator, as the uncompiled layers do (inductor's ``fallback_random``, set per
  compiled function, not process-wide): switching the fast path on then changes the kernels and
  not the masks, so a run compiled and one not are the same run to bf16 rounding, dropout
  included. ``inductor`` lets inductor draw its own philox numbers inside its fused kernels and
  regenerate them in backward; on one H100 that was 8% slower than eager draws (BENCHMARKS.md).
  ``model.compile_rounding``: ``eager`` (the default) has inductor round each fused operation's
  result to the compute dtype wherever the uncompiled layer stores one (its
  ``emulate_precision_casts``, per compiled function), so the compiled path carries the same bf16
  rounding as eager. ``fused`` keeps fp32 across a fused chain: fewer roundings, nearer an fp32
  run, but another run than eager's. It matters most right after the first optimizer step: LoRA's
  B then holds one Adam step (about the learning rate per weight) and its contribution is below
  bf16's resolution of the base output, so eager rounds most of it away where a fused kernel keeps
  it (MedGemma 4B's shape: step 2's loss 0.66% off eager with ``fused`` on CPU and 1.12% on one
  H100, 0.005% with ``eager`` on CPU; BENCHMARKS.md).
- ``model.fused_kernels``: Liger-Kernel's Triton RMSNorm, GeGLU / SwiGLU and RoPE for Gemma 3 and
  Llama, patched per module instance (RoPE through a dispatcher that only takes CUDA tensors).
  ``auto`` uses them on CUDA when ``liger_kernel`` is installed and the layers are not compiled
  (inductor already fuses the same operations); ``liger`` insists and errors when it cannot;
  ``none`` keeps transformers' modules.
- ``model.lora_forward``: ``fused`` installs :mod:`medslm.lora_fast` (scale folded into one
  addmm, no defensive copy, no fp32 round trip); ``auto`` does so on CUDA; ``peft`` keeps PEFT's.

On CPU, ``auto`` leaves the model exactly as before: nothing here is needed there.
"""

from __future__ import annotations

import importlib.util
import os
from functools import partial
from types import MethodType
from typing import Any

import torch

from medslm import lora_fast
from medslm.config import ConfigError


def liger_available() -> bool:
    return importlib.util.find_spec("liger_kernel") is not None


def wants_fast_lora(mode: str, device: torch.device) -> bool:
    return mode == "fused" or (mode == "auto" and device.type == "cuda")


def wants_liger(mode: str, device: torch.device, compiled: bool) -> bool:
    if mode == "liger":
        if device.type != "cuda":
            raise ConfigError(f"model.fused_kernels=liger needs a CUDA device (this run uses {device.type}); use auto or none")
        if not liger_available():
            raise ConfigError("model.fused_kernels=liger needs the liger-kernel package (pip install liger-kernel); use auto or none")
        return True
    return mode == "auto" and device.type == "cuda" and not compiled and liger_available()


def accelerate(model: torch.nn.Module, cfg: Any, device: torch.device) -> dict[str, Any]:
    """Apply the switches of ``cfg`` (a ``ModelConfig``) to a PEFT-wrapped model, before sharding."""
    report: dict[str, Any] = {}
    if wants_fast_lora(cfg.lora_forward, device):
        report["fast_lora_modules"] = lora_fast.enable(model, compiled_nf4=cfg.compile and cfg.compile_nf4 == "inductor")
    if wants_liger(cfg.fused_kernels, device, cfg.compile):
        report["liger"] = patch_liger(model)
    if cfg.compile:
        report["compiled_layers"] = compile_layers(
            model, rng=cfg.compile_rng, combo_kernels=cfg.compile_combo_kernels, rounding=cfg.compile_rounding)
    return report


# ---------------------------------------------------------------------------------------------
# Regional compilation
# ---------------------------------------------------------------------------------------------

_COMPILED: dict[tuple[type, str, str, bool, str], Any] = {}


def _plain_forward(cls: type) -> Any:
    """The layer's own ``forward``: transformers >= 5.2x wraps it in a checkpointing wrapper at
    class creation (``forward_with_checkpointing``); older versions checkpoint in ``__call__``."""
    fwd = cls.forward
    while getattr(fwd, "__code__", None) is not None and fwd.__code__.co_name == "forward_with_checkpointing":
        fwd = fwd.__wrapped__
    return fwd


def _checkpointing_forward(compiled: Any) -> Any:
    """Activation checkpointing around the compiled forward, eager, as transformers' wrapper does it
    (training never passes a KV cache, so its cache handling has nothing to do here)."""

    def forward(self: Any, *args: Any, **kwargs: Any) -> Any:
        if self.gradient_checkpointing and self.training:
            return self._gradient_checkpointing_func(partial(compiled, self, **kwargs), *args)
        return compiled(self, *args, **kwargs)

    return forward


def compile_layers(model: torch.nn.Module, backend: str | None = None, rng: str = "eager", combo_kernels: bool = True, rounding: str = "eager") -> int:
    """Compile every decoder layer's own ``forward``, one compiled function per layer class,
    dropout-mask source (``rng``: ``eager`` or ``inductor``, see ``model.compile_rng``),
    ``combo_kernels`` setting (``model.compile_combo_kernels``) and rounding (``rounding``:
    ``eager`` or ``fused``, see ``model.compile_rounding``). Inductor's options are scoped to these
    graphs rather than set process-wide.

    The checkpointing wrapper and the module's hooks stay outside the compiled region: a graph
    break (e.g. CPU's per-segment attention) then costs one split graph rather than the whole
    layer falling back to eager, and FSDP2's hooks never enter a graph.
    """
    from medslm.modeling import decoder_layers

    # MEDSLM_COMPILE_BACKEND=aot_eager captures the same graphs without generating code: for
    # debugging a compile problem, and for tests that check graph capture rather than kernels
    backend = backend or os.environ.get("MEDSLM_COMPILE_BACKEND", "inductor")
    if rng not in ("eager", "inductor"):
        raise ConfigError(f"model.compile_rng: {rng!r} is not one of eager, inductor")
    if rounding not in ("eager", "fused"):
        raise ConfigError(f"model.compile_rounding: {rounding!r} is not one of eager, fused")
    # only inductor generates its own random numbers and fuses across roundings; other backends
    # run aten's operators, i.e. eager's
    options = None
    if backend == "inductor":
        options = {"fallback_random": rng == "eager", "combo_kernels": bool(combo_kernels), "emulate_precision_casts": rounding == "eager"}
    layers = decoder_layers(model)
    for layer in layers:
        cls = type(layer)
        if "_medslm_compiled" in layer.__dict__:
            continue
        key = (cls, backend, rng, bool(combo_kernels), rounding)
        if key not in _COMPILED:
            plain = _plain_forward(cls)
            compiled = torch.compile(plain, backend=backend, options=options)
            _COMPILED[key] = _checkpointing_forward(compiled) if plain is not cls.forward else compiled
        layer.forward = MethodType(_COMPILED[key], layer)
        layer._medslm_compiled = True
    return len(layers)


def compile_report() -> dict[str, Any]:
    """Graphs compiled (a recompile is one more graph) and graph breaks so far in this process,
    from torch._dynamo's counters; ``frames_compiled`` counts compiled Python frames."""
    from torch._dynamo.utils import counters

    breaks = counters.get("graph_break", {})
    return {
        "graphs": int(counters["stats"].get("unique_graphs", 0)),
        "frames_compiled": int(counters["frames"].get("ok", 0)),
        "graph_breaks": int(sum(breaks.values())),
        "graph_break_reasons": [r.strip().splitlines()[0][:200] for r in sorted(breaks, key=breaks.get, reverse=True)[:5]],
    }


# ---------------------------------------------------------------------------------------------
# Liger-Kernel
# ---------------------------------------------------------------------------------------------


def _rms_gemma(self: Any, x: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_rms_norm

    return liger_rms_norm(x, self.weight, self.eps, offset=1.0, casting_mode="gemma", in_place=False)


def _rms_llama(self: Any, x: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_rms_norm

    return liger_rms_norm(x, self.weight, self.variance_epsilon, offset=0.0, casting_mode="llama", in_place=False)


def _geglu(self: Any, x: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_geglu

    return self.down_proj(liger_geglu(self.gate_proj(x), self.up_proj(x)))


def _swiglu(self: Any, x: torch.Tensor) -> torch.Tensor:
    from liger_kernel.transformers.functional import liger_swiglu

    return self.down_proj(liger_swiglu(self.gate_proj(x), self.up_proj(x)))


def _rope_dispatch(original: Any) -> Any:
    def apply_rotary_pos_emb(q, k, cos, sin, *args, **kwargs):
        unsqueeze = kwargs.get("unsqueeze_dim", args[0] if args else 1)
        if q.is_cuda and unsqueeze == 1 and len(args) + len(kwargs) <= 1:
            from liger_kernel.transformers.functional import liger_rope

            return liger_rope(q, k, cos, sin)
        return original(q, k, cos, sin, *args, **kwargs)

    apply_rotary_pos_emb._medslm_original = original  # type: ignore[attr-defined]
    return apply_rotary_pos_emb


def _act_name(module: Any) -> str:
    cfg = getattr(module, "config", None)
    return str(getattr(cfg, "hidden_activation", None) or getattr(cfg, "hidden_act", ""))


def patch_liger(model: torch.nn.Module) -> dict[str, int]:
    """Swap RMSNorm, gated-MLP and RoPE computations of Gemma 3 / Llama modules for Liger's kernels.

    Per instance (``forward``), so other models in the process are untouched; RoPE is a module
    function in transformers, replaced by a dispatcher that sends only CUDA tensors to Liger.
    """
    import sys

    counts = {"rms_norm": 0, "mlp": 0, "rope": 0}
    for module in model.modules():
        name = type(module).__name__
        if "forward" in module.__dict__:
            continue  # already patched (or someone else's instance forward)
        if name == "Gemma3RMSNorm":
            module.forward = MethodType(_rms_gemma, module)
            counts["rms_norm"] += 1
        elif name == "LlamaRMSNorm":
            module.forward = MethodType(_rms_llama, module)
            counts["rms_norm"] += 1
        elif name == "Gemma3MLP" and _act_name(module) in ("gelu_pytorch_tanh", "gelu_tanh"):
            module.forward = MethodType(_geglu, module)
            counts["mlp"] += 1
        elif name == "LlamaMLP" and _act_name(module) == "silu":
            module.forward = MethodType(_swiglu, module)
            counts["mlp"] += 1
    for mod_name in {type(m).__module__ for m in model.modules()}:
        mod = sys.modules.get(mod_name)
        if mod is None or mod_name.rsplit(".", 1)[-1] not in ("modeling_gemma3", "modeling_llama"):
            continue
        fn = getattr(mod, "apply_rotary_pos_emb", None)
        if fn is not None and not hasattr(fn, "_medslm_original"):
            mod.apply_rotary_pos_emb = _rope_dispatch(fn)
        counts["rope"] += 1
    return counts
