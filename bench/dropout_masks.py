"""Does the fast path draw the dropout masks the eager path draws? (CPU or one GPU)

    python bench/dropout_masks.py [--lever fast|compile|lora] [--rng eager|inductor] [--layers 2] [--seq-len 256] [--dtype auto]

``model.compile_rng: eager`` (the default) promises that the fast path changes kernels, not
dropout masks. On one H100 (torch 2.11) the fast path's loss after its first AdamW update was
1.14% off eager's in three calls, 100 times eager's own run-to-run drift at that step, while the
tiny model of ``tests/test_gpu.py`` drew eager's count of random numbers. This checks the masks
where arithmetic cannot hide them: a random Gemma 3 model with MedGemma 4B's layer shape (hidden
2560, GeGLU 10240, 8 heads of 256, NF4 base, ``--layers`` layers, 4,096-token vocabulary), LoRA
dropout 0.5 on every linear layer, non-zero LoRA B (every adapter weight's gradient depends on its
mask), activation checkpointing, one packed step of two ``--seq-len`` rows, the same seed before
the step on both sides. Masks given to other modules change the adapter gradients by about their
own size (the control, ``--rng inductor``: 1.0-1.4 on CPU); the same masks leave rounding alone:
about 1e-6 in fp32 (CPU), a few 1e-2 in bf16 (CUDA's flash attention takes no fp32).

``--lever``: ``fast`` is what ``model.compile=true`` gives on CUDA (compiled layers and the lean
LoRA forward), ``compile`` the compiled layers with PEFT's LoRA forward, ``lora`` the lean forward
uncompiled; each is compared with PEFT's uncompiled forward. On CUDA the random numbers each side
drew (the generator's offset) are reported too.

One JSON line: the loss's relative difference, the worst adapter gradients' relative differences
(norm of the difference over the norm), the worst per projection (``by_module``: a mask drawn
otherwise for some modules only, say from a layout the compiled graph chose, shows there) and ``same_masks`` (every gradient within 1e-3 in fp32,
0.25 in bf16).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))
sys.path.insert(0, str(REPO / "tests"))

LAYER_SHAPE = dict(arch="gemma3", hidden_size=2560, intermediate_size=10240, num_attention_heads=8, num_key_value_heads=4,
                   head_dim=256, vocab_size=4096)
SAME = {torch.float32: 1e-3, torch.bfloat16: 0.25}


def philox_offset() -> int | None:
    """The CUDA generator's offset: how many random numbers its kernels have drawn so far."""
    if not torch.cuda.is_available():
        return None
    return int.from_bytes(bytes(torch.cuda.get_rng_state()[8:16].tolist()), "little")


def step(model_dir: Path, device: torch.device, dtype: torch.dtype, lever: str | None, rng: str, seq_len: int) -> dict:
    from conftest import answer_examples, lora_with_nonzero_b
    from medslm import acceleration, lora_fast
    from medslm.modeling import AdapterPrecision, ModelConfig, load_base_model
    from medslm.packing import PackedCollator
    from medslm.trainer import batch_loss_sum

    cfg = ModelConfig(name_or_path=str(model_dir), quantization="nf4", attention="packed",
                      compute_dtype="bfloat16" if dtype == torch.bfloat16 else "float32")
    model = lora_with_nonzero_b(load_base_model(cfg, device), dropout=0.5)
    if lever in ("fast", "lora"):
        lora_fast.enable(model, compiled_nf4=lever == "fast")
    if lever in ("fast", "compile"):
        acceleration.compile_layers(model, rng=rng)
    model.train()
    precision = AdapterPrecision(model, cfg, device)  # bf16: the trainer's autocast, PEFT's fp32 input copy off
    n = seq_len // 16  # two packed rows of 3 and 2 examples, about 94% full
    batch = PackedCollator(seq_len, 0)([answer_examples([6 * n, 5 * n, 4 * n]), answer_examples([8 * n, 7 * n], seed=1)])
    torch.manual_seed(7)
    start = philox_offset()
    with precision.step():
        with precision.forward():
            loss, _ = batch_loss_sum(model, batch, True, device)
        loss.backward()
    end = philox_offset()
    return {"loss": float(loss.detach()), "drawn": None if start is None else end - start,
            "grads": {n: p.grad.detach().float().cpu() for n, p in model.named_parameters() if p.requires_grad}}


def by_module(diffs: dict[str, float]) -> dict[str, float]:
    """``{"q_proj.lora_A": worst relative difference over the layers, ...}``."""
    out: dict[str, float] = {}
    for name, d in diffs.items():
        parts = name.split(".")
        proj = next((p for p in parts if p.endswith("_proj")), name)
        mat = next((p for p in parts if p.startswith("lora_")), "")
        key = f"{proj}.{mat}"
        out[key] = round(max(out.get(key, 0.0), d), 6)
    return dict(sorted(out.items()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--lever", choices=("fast", "compile", "lora"), default="fast")
    ap.add_argument("--rng", choices=("eager", "inductor"), default="eager", help="model.compile_rng (inductor: the control, other masks)")
    ap.add_argument("--layers", type=int, default=2)
    ap.add_argument("--seq-len", type=int, default=256, help="tokens per packed row (2 rows)")
    ap.add_argument("--dtype", choices=("auto", "float32", "bfloat16"), default="auto", help="auto: bfloat16 on CUDA, float32 on CPU")
    a = ap.parse_args()
    device = torch.device(a.device)
    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16}.get(a.dtype, torch.bfloat16 if device.type == "cuda" else torch.float32)
    torch.backends.cuda.matmul.allow_tf32 = False
    from memory import make_model_dir

    t = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(dict(LAYER_SHAPE, num_hidden_layers=a.layers), Path(tmp) / "model")
        eager = step(model_dir, device, dtype, None, a.rng, a.seq_len)
        other = step(model_dir, device, dtype, a.lever, a.rng, a.seq_len)
    diffs = {k: float((other["grads"][k] - g).norm() / g.norm().clamp_min(1e-30)) for k, g in eager["grads"].items()}
    worst = sorted(diffs.items(), key=lambda kv: -kv[1])
    print(json.dumps({
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu", "torch": torch.__version__,
        "dtype": str(dtype).removeprefix("torch."), "lever": a.lever, "rng": a.rng, "layers": a.layers, "seq_len": a.seq_len,
        "loss_rel_diff": abs(other["loss"] - eager["loss"]) / abs(eager["loss"]),
        "random_numbers_drawn": {"eager": eager["drawn"], a.lever: other["drawn"]},
        "worst_grads": {k.replace("base_model.model.model.", ""): round(v, 6) for k, v in worst[:6]},
        "median_grad_diff": round(sorted(diffs.values())[len(diffs) // 2], 6),
        # the largest difference per projection and adapter matrix over the layers: which modules' masks differ
        "by_module": by_module(diffs),
        "same_masks": all(v <= SAME[dtype] for v in diffs.values()), "seconds": round(time.perf_counter() - t, 1),
    }))


if __name__ == "__main__":
    main()
