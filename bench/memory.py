"""Peak memory of QLoRA vs bf16 LoRA vs full fine-tuning on the same model shape, same batch.

    python bench/memory.py                 # CPU: a 220M-parameter Llama (weights dominate), 2 steps each
    python bench/memory.py --shape medgemma-4b --seq-len 2048 --micro-batch 4   # on a GPU

Each mode runs in its own subprocess (a fresh allocator). Figures per mode:
- ``state_gb``: live tensor bytes after the second optimizer step: parameters (NF4 storage and its
  quantisation constants included) + gradients + optimizer state. Exact, and what the method
  changes; on a CPU this is the honest comparison, because peak RSS at small shapes is mostly the
  runtime and activations.
- ``peak_gb``: peak memory of the two training steps: torch's CUDA peak (reset after loading)
  on a GPU; on CPU, the peak RSS of the steps (the kernel's high-water mark, reset after loading
  through /proc/self/clear_refs) minus the RSS before the model was built.
- ``load_peak_gb``: the same before the reset, i.e. while loading (and quantising) the model.
Ends with one JSON line of the figures and the ratios to full fine-tuning.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads, vocab
    "cpu-220m": dict(arch="llama", hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=4, vocab_size=32000),
    # MedGemma 4B's text tower (Gemma 3 4B): 34 layers, hidden 2560, 8 heads / 4 KV heads, 262k vocab
    "medgemma-4b": dict(arch="gemma3", hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208),
}


def make_model_dir(shape: str, out: Path) -> Path:
    import torch
    from transformers import Gemma3TextConfig, Gemma3ForCausalLM, LlamaConfig, LlamaForCausalLM

    spec = dict(SHAPES[shape])
    arch = spec.pop("arch")
    if arch == "llama":
        cfg = LlamaConfig(**spec, max_position_embeddings=4096, tie_word_embeddings=False)
        cls = LlamaForCausalLM
    else:
        cfg = Gemma3TextConfig(**spec, max_position_embeddings=4096, sliding_window=1024, query_pre_attn_scalar=256)
        cls = Gemma3ForCausalLM
    torch.manual_seed(0)
    with torch.device("meta"):
        model = cls(cfg)
    model = model.to_empty(device="cpu").to(torch.bfloat16)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(out, safe_serialization=True)
    return out


def tensor_bytes(model, optimizer) -> int:
    seen, total = set(), 0

    def add(t):
        nonlocal total
        if t is None or not hasattr(t, "untyped_storage"):
            return
        key = (t.untyped_storage().data_ptr(), t.device)
        if key in seen:
            return
        seen.add(key)
        total += t.untyped_storage().nbytes()

    for p in model.parameters():
        add(p.data)
        add(p.grad)
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            add(qs.absmax)
            add(getattr(qs, "code", None))
            if getattr(qs, "state2", None) is not None:
                add(qs.state2.absmax)
                add(qs.state2.code)
    for st in optimizer.state.values():
        for v in st.values():
            add(v)
    return total


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # not Linux: no reset possible


def _reset_peak_rss() -> None:
    try:
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    except OSError:
        pass


def run_mode(mode: str, model_dir: str, seq_len: int, micro_batch: int) -> dict:
    import torch

    from medslm.modeling import LoraConfigSection, ModelConfig, apply_lora, enable_checkpointing, load_base_model
    from medslm.trainer import batch_loss_sum

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rss0 = _rss_kib("VmRSS") * 1024
    mcfg = ModelConfig(
        name_or_path=model_dir,
        quantization="nf4" if mode == "qlora" else "none",
        compute_dtype="bfloat16",
        attention="sdpa",
        gradient_checkpointing=True,
    )
    model = load_base_model(mcfg, device, packed=False)
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        enable_checkpointing(model)
    else:
        torch.manual_seed(0)
        model = apply_lora(model, LoraConfigSection(r=16, alpha=64, dropout=0.05), gradient_checkpointing=True)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    g = torch.Generator().manual_seed(0)
    vocab = model.get_input_embeddings().weight.shape[0]
    ids = torch.randint(3, vocab, (micro_batch, seq_len), generator=g)
    labels = ids.clone()
    labels[:, : seq_len // 2] = -100
    batch = {
        "input_ids": ids,
        "labels": labels,
        "attention_mask": torch.ones_like(ids),
        "position_ids": torch.arange(seq_len).expand(micro_batch, -1),
    }
    if device.type == "cuda":
        load_peak = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        load_peak = _rss_kib("VmHWM") * 1024 - rss0
        _reset_peak_rss()
    t0 = time.perf_counter()
    for _ in range(2):
        loss, n = batch_loss_sum(model, batch, packed=False, device=device)
        (loss / n).backward()
        opt.step()
        opt.zero_grad(set_to_none=False)  # keep gradients allocated: they are part of the state
    elapsed = time.perf_counter() - t0
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
    else:
        peak = _rss_kib("VmHWM") * 1024 - rss0
    return {
        "mode": mode,
        "device": str(device),
        "trainable_params": sum(p.numel() for p in params),
        "state_gb": tensor_bytes(model, opt) / 1e9,
        "peak_gb": peak / 1e9,
        "load_peak_gb": load_peak / 1e9,
        "two_steps_s": elapsed,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="cpu-220m")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--modes", default="qlora,lora_bf16,full")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_model-dir", dest="model_dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        print(json.dumps(run_mode(a._child, a.model_dir, a.seq_len, a.micro_batch)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(a.shape, Path(tmp) / "model")
        results = {}
        for mode in a.modes.split(","):
            cmd = [sys.executable, __file__, "--_child", mode, "--_model-dir", str(model_dir), "--seq-len", str(a.seq_len), "--micro-batch", str(a.micro_batch)]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if proc.returncode != 0:
                raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'mode':10} {'trainable':>12} {'state GB':>9} {'peak GB':>8} {'load peak GB':>12} {'2 steps s':>9}")
    for r in results.values():
        print(
            f"{r['mode']:10} {r['trainable_params']:12,d} {r['state_gb']:9.3f} {r['peak_gb']:8.3f} "
            f"{r['load_peak_gb']:12.3f} {r['two_steps_s']:9.2f}"
        )
    out = {"shape": a.shape, "seq_len": a.seq_len, "micro_batch": a.micro_batch, "device": next(iter(results.values()))["device"]}
    for m, r in results.items():
        out[f"{m}_state_gb"] = round(r["state_gb"], 4)
        out[f"{m}_peak_gb"] = round(r["peak_gb"], 4)
        out[f"{m}_load_peak_gb"] = round(r["load_peak_gb"], 4)
    if "full" in results:
        for m in results:
            if m != "full":
                out[f"{m}_vs_full_state"] = round(results[m]["state_gb"] / results["full"]["state_gb"], 4)
                out[f"{m}_vs_full_peak"] = round(results[m]["peak_gb"] / results["full"]["peak_gb"], 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
