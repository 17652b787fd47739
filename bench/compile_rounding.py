"""Does inductor's ``emulate_precision_casts`` bring the compiled bf16 path to eager's numbers? (CPU)

    python bench/compile_rounding.py

Three checks, one JSON line:
- ``chain``: an RMSNorm + GeGLU + residual chain in bf16, compiled with and without the option,
  against eager: how many outputs differ.
- ``model``: one packed step (loss and backward) of ``embedded:tiny-gemma3`` in bf16 with LoRA and
  the fast LoRA forward, compiled layers against the same model uncompiled: the loss's relative
  difference and the adapter gradients' largest and mean relative difference (norm of the
  difference over the norm), with inductor's default rounding and with eager's.
- ``after_first_update``: one packed bf16 step of each tiny model, NF4 and bf16 base, as train.py
  runs it (``conftest.bf16_lora_step``: LoRA B just past its first update), compiled with each
  ``model.compile_rounding`` against the same step uncompiled (PEFT's forward): the share of
  logits that differ, the adapter gradients' largest and mean relative difference, and inductor's
  fused kernels and library calls (matmuls) in the code it generated. The same counts mean the
  same fusions, so the same memory traffic: what rounding like eager can cost on a GPU is then
  arithmetic inside the kernels, not extra kernels.

The first two check a state where bf16 resolves LoRA's contribution (B drawn from N(0, 0.02)), and the
model step runs outside train.py's bf16 adapter path, so they do not show what the option does
to the loss after the first update; that is BENCHMARKS.md's CPU study at MedGemma 4B's shape
(``bench/gpu_step.py --rows 1 --seq-len 512 --dtype bfloat16``), which made the option
``model.compile_rounding``'s default.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))


def chain(x, w, g, u):
    v = x.float().pow(2).mean(-1, keepdim=True)
    h = (x * torch.rsqrt(v + 1e-6)).to(x.dtype) * (1 + w)
    return (F.gelu(h * g, approximate="tanh") * (h * u) + x) * 0.5 + h


def chain_mismatches() -> dict:
    torch.manual_seed(0)
    x = torch.randn(64, 256, dtype=torch.bfloat16)
    w, g, u = torch.randn(256, dtype=torch.bfloat16) * 0.1, torch.randn(256, dtype=torch.bfloat16), torch.randn(256, dtype=torch.bfloat16)
    want = chain(x, w, g, u)
    out = {"elements": want.numel()}
    for emulate in (False, True):
        torch._dynamo.reset()
        got = torch.compile(chain, options={"emulate_precision_casts": emulate})(x, w, g, u)
        out["eager_rounding" if emulate else "fused_rounding"] = int((got != want).sum())
    return out


def model_step(compiled: bool, emulate: bool) -> tuple[float, dict]:
    from conftest import answer_examples, lora_with_nonzero_b
    from medslm import acceleration, lora_fast
    from medslm.modeling import ModelConfig, load_base_model
    from medslm.packing import PackedCollator
    from medslm.trainer import batch_loss_sum

    cpu = torch.device("cpu")
    cfg = ModelConfig(name_or_path="embedded:tiny-gemma3", quantization="none", attention="packed", compute_dtype="bfloat16")
    model = lora_with_nonzero_b(load_base_model(cfg, cpu), dropout=0.05)
    lora_fast.enable(model)
    if compiled:  # model.compile_rounding: eager passes emulate_precision_casts to each layer's compile
        acceleration.compile_layers(model, rounding="eager" if emulate else "fused")
    model.train()
    batch = PackedCollator(64, 0)([answer_examples([11, 25, 6]), answer_examples([30, 20], seed=1)])
    torch.manual_seed(100)
    loss, _ = batch_loss_sum(model, batch, True, cpu)
    loss.backward()
    return float(loss), {n: p.grad.float().clone() for n, p in model.named_parameters() if p.requires_grad}


def steps_after_first_update() -> dict:
    import re

    from torch._inductor.utils import run_and_get_code

    from conftest import bf16_lora_step
    from medslm import acceleration

    out = {}
    for name in ("embedded", "embedded:tiny-gemma3"):
        for quant in ("nf4", "none"):
            want_logits, want_grads = bf16_lora_step(name, quant, compiled=False)
            for rounding in ("eager", "fused"):
                torch._dynamo.reset()
                acceleration._COMPILED.clear()  # a fresh compile, so its code is captured
                (logits, grads), codes = run_and_get_code(lambda: bf16_lora_step(name, quant, compiled=True, rounding=rounding))
                code = "\n".join(codes)
                rel = [float((grads[k] - want_grads[k]).norm() / want_grads[k].norm()) for k in want_grads]
                out[f"{name}/{quant}/{rounding}"] = {
                    "logits_off_eager": float((logits != want_logits).float().mean()),
                    "grad_rel_max": max(rel), "grad_rel_mean": sum(rel) / len(rel),
                    "graphs": len(codes),
                    # CPU kernels are cpp_fused_*, CUDA's triton_* (the bench runs where it is started)
                    "fused_kernels": len(set(re.findall(r"^(cpp_fused_\w+|triton_\w+)\s*=\s*async_compile", code, re.M))),
                    "library_calls": len(re.findall(r"extern_kernels\.\w+\(", code)),
                }
    return out


def main() -> None:
    result = {"torch": torch.__version__, "chain": chain_mismatches(), "model": {}, "after_first_update": steps_after_first_update()}
    want_loss, want = model_step(compiled=False, emulate=False)
    for emulate in (False, True):
        torch._dynamo.reset()
        loss, grads = model_step(compiled=True, emulate=emulate)
        rel = [float((grads[k] - want[k]).norm() / want[k].norm().clamp_min(1e-12)) for k in want]
        result["model"]["eager_rounding" if emulate else "fused_rounding"] = {
            "loss_rel_diff": abs(loss - want_loss) / abs(want_loss), "grad_rel_max": max(rel), "grad_rel_mean": sum(rel) / len(rel)}
    print(json.dumps(result))


if __name__ == "__main__":
    main()
