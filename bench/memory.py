"""Peak memory of QLoRA vs bf16 LoRA vs full fine-tuning on the same model shape, same batch.

    python bench/memory.py                 # CPU: a 220M-parameter Llama (weights dominate), 2 steps each
    python bench/memory.py --shape medgemma-4b --seq-len 2048 --micro-batch 4 --batch packed --modes qlora,lora_bf16
    python bench/memory.py --shape medgemma-4b --layers 4 ...   # the same width with fewer layers
    python bench/memory.py --count                                  # MedGemma 4B's parts, counted from its real config
    python bench/memory.py --shape medgemma-4b-mm --layers 2 --modes qlora,qlora_full   # what text_only saves

Each mode runs in its own subprocess (a fresh allocator). Figures per mode:
- ``state_gb``: live tensor bytes after the second optimizer step: parameters (NF4 storage and its
  quantisation constants included) + gradients + optimizer state. Exact, and what the method
  changes; on a CPU this is the honest comparison, because peak RSS at small shapes is mostly the
  runtime and activations.
- ``peak_gb``: peak memory of the two training steps: torch's CUDA peak (reset after loading)
  on a GPU; on CPU, the peak RSS of the steps (the kernel's high-water mark, reset after loading
  through /proc/self/clear_refs) minus the RSS before the model was built.
- ``load_peak_gb``: the same before the reset, i.e. while loading (and quantising) the model.
- ``live_peak_gb``: the peak of live tensor bytes during the two steps, counted op by op (every
  storage an op returns, until it is freed) on top of the model's own tensors. It needs no GPU and
  counts what ``torch.cuda.max_memory_allocated`` counts, minus the caching allocator's rounding
  and any scratch memory a kernel frees before it returns: on a CPU it estimates the VRAM the same
  step would take on a GPU.

``--shape medgemma-4b-mm`` is the checkpoint as it ships: a ``Gemma3ForConditionalGeneration``
with MedGemma 4B's SigLIP so400m vision tower (27 layers, hidden 1152, MLP 4304, 896 px in
14 px patches) and projector around the same text tower. Its modes load it the way medslm does:
``qlora`` text-only (``model.text_only: true``: the language model and its head only),
``qlora_full`` the whole model (NF4 on the language model, the vision tower and projector kept
in bf16, frozen, without adapter). ``--count`` builds the real config on the meta device (no
weights) and counts each part's parameters and bytes in bf16 and in bitsandbytes' NF4 (double
quantisation; measured by quantising each distinct weight shape once), and the LoRA r16
parameters ``all-linear`` would put on each part.

Modes: ``qlora`` (NF4 base, LoRA computed in bf16 from fp32 weights: medslm's default),
``qlora_peft_fp32`` (the same with PEFT's default fp32 adapter path, ``model.lora_compute_dtype:
float32``), ``lora_bf16`` (bf16 base, no quantisation), ``full`` (full fine-tuning, bf16).

``--batch padded`` (default) feeds ``micro_batch`` rows padded to ``seq_len`` with the second half
of each row supervised; ``--batch packed`` feeds the product's packed rows: MCQ-sized examples
(lengths drawn like MedQA + KorMedMCQA, bench/packing.py) packed to ``seq_len`` by ``pack_bfd``,
two supervised answer tokens each, through the ``PackedCollator`` and the cu_seqlens attention.
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
import weakref
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    # hidden, intermediate, layers, heads, kv heads, vocab
    "cpu-220m": dict(arch="llama", hidden_size=1024, intermediate_size=2816, num_hidden_layers=12, num_attention_heads=16, num_key_value_heads=4, vocab_size=32000),
    # MedGemma 4B's text tower (Gemma 3 4B): 34 layers, hidden 2560, 8 heads / 4 KV heads, 262k vocab
    "medgemma-4b": dict(arch="gemma3", hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208),
    # the checkpoint as it ships: the same text tower inside Gemma3ForConditionalGeneration, with
    # MedGemma 4B's SigLIP so400m vision tower (896 px, 14 px patches) and projector
    "medgemma-4b-mm": dict(arch="gemma3-mm", hidden_size=2560, intermediate_size=10240, num_hidden_layers=34, num_attention_heads=8, num_key_value_heads=4, head_dim=256, vocab_size=262208),
}
SIGLIP_SO400M_896 = dict(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27, num_attention_heads=16, image_size=896, patch_size=14, vision_use_head=False)


def gemma3_mm_config(spec: dict):
    from transformers import Gemma3Config

    text = dict(spec, max_position_embeddings=4096, sliding_window=1024, query_pre_attn_scalar=256)
    return Gemma3Config(text_config=text, vision_config=dict(SIGLIP_SO400M_896), mm_tokens_per_image=256,
                        boi_token_index=255_999, eoi_token_index=256_000, image_token_index=262_144)


def make_model_dir(shape: str | dict, out: Path, layers: int | None = None, device: str = "cpu") -> Path:
    """A random model of a named shape (or a spec dict like SHAPES' values), saved in bf16 under ``out``;
    ``device="cuda"`` draws the weights there (seconds instead of minutes at 4B)."""
    import torch
    from transformers import Gemma3ForCausalLM, Gemma3ForConditionalGeneration, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    spec = dict(SHAPES[shape] if isinstance(shape, str) else shape)
    arch = spec.pop("arch")
    if layers:
        spec["num_hidden_layers"] = layers
    if arch == "llama":
        cfg = LlamaConfig(**spec, max_position_embeddings=4096, tie_word_embeddings=False)
        cls = LlamaForCausalLM
    elif arch == "gemma3-mm":
        cfg = gemma3_mm_config(spec)
        cls = Gemma3ForConditionalGeneration
    else:
        cfg = Gemma3TextConfig(**spec, max_position_embeddings=4096, sliding_window=1024, query_pre_attn_scalar=256)
        cls = Gemma3ForCausalLM
    torch.manual_seed(0)
    with torch.device("meta"):
        model = cls(cfg)
    model = model.to(torch.bfloat16).to_empty(device=device)  # bf16 from the start: 8.6 GB at 4B, not 17 + 8.6
    model.tie_weights()  # to_empty gives every parameter its own storage; Gemma 3 ties lm_head
    for name, p in model.named_parameters():
        if "norm" in name:
            torch.nn.init.zeros_(p) if arch.startswith("gemma3") else torch.nn.init.ones_(p)  # Gemma: 1 + w
        else:
            torch.nn.init.normal_(p, std=0.02)
    model.save_pretrained(out, safe_serialization=True)
    return out


def tensor_bytes(model, optimizer) -> int:
    """Bytes of the distinct storages behind the model's tensors, its gradients and the optimizer state."""
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    opt_state = [v for st in optimizer.state.values() for v in st.values() if hasattr(v, "untyped_storage")]
    storages = {}
    for t in [*model_tensors(model), *grads, *opt_state]:
        storages[(t.untyped_storage().data_ptr(), t.device)] = t.untyped_storage().nbytes()
    return sum(storages.values())


class LiveTensorBytes:
    """Current and peak bytes of live tensor storages, counted op by op under a dispatch mode.

    ``track(tensors)`` registers tensors that exist before counting starts (the model's); inside
    ``with counter:`` every storage an op returns is added once and subtracted when it is freed
    (a weak reference to the storage object, which torch keeps alive exactly as long as the
    storage). Views and in-place results share a storage and are not counted again.
    """

    def __init__(self) -> None:
        from torch.utils._python_dispatch import TorchDispatchMode
        from torch.utils._pytree import tree_leaves

        self._sizes: dict[int, tuple[object, int]] = {}
        self.current = 0
        self.peak = 0
        counter = self

        class _Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                counter.track(tree_leaves(out))
                return out

        self._mode = _Mode()

    def _freed(self, key: int) -> None:
        _, n = self._sizes.pop(key, (None, 0))
        self.current -= n

    def track(self, tensors) -> None:
        import torch

        for t in tensors:
            if not isinstance(t, torch.Tensor) or t.device.type == "meta":
                continue
            st = t.untyped_storage()
            key, n = id(st), st.nbytes()
            ref, old = self._sizes.get(key, (None, None))
            if ref is not None and ref() is st:
                if n != old:  # resized in place
                    self.current += n - old
                    self._sizes[key] = (ref, n)
            else:
                self._sizes[key] = (weakref.ref(st, lambda _r, k=key: self._freed(k)), n)
                self.current += n
        self.peak = max(self.peak, self.current)

    def __enter__(self):
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        return self._mode.__exit__(*exc)


def model_tensors(model) -> list:
    """Every tensor a (possibly NF4-quantised) model holds: parameters, buffers, quant states."""
    out = []
    for p in model.parameters():
        out.append(p.data)
        qs = getattr(p, "quant_state", None)
        if qs is not None:
            out += [qs.absmax, getattr(qs, "code", None)]
            if getattr(qs, "state2", None) is not None:
                out += [qs.state2.absmax, qs.state2.code]
    out += list(model.buffers())
    return [t for t in out if t is not None]


def packed_batch(vocab: int, seq_len: int, micro_batch: int, seed: int = 0) -> dict:
    """``micro_batch`` packed rows, drawn at random from a packed epoch of MCQ-sized examples and
    collated exactly as training collates them."""
    import numpy as np

    from bench.packing import synth_lengths
    from medslm.packing import PackedCollator, pack_bfd, rows_from_bins

    lengths = [int(n) for n in synth_lengths(seed)[0] if n <= seq_len]
    rng = np.random.default_rng(seed)
    examples = []
    for n in lengths:
        ids = rng.integers(3, vocab, n).tolist()
        examples.append({"input_ids": ids, "labels": [-100] * (n - 2) + ids[-2:]})  # answer letter + EOS
    bins = pack_bfd(lengths, seq_len)  # rows of a real epoch: nearly all full (99.9% at 2048)
    pick = sorted(rng.choice(len(bins), size=micro_batch, replace=False).tolist())
    rows = rows_from_bins(examples, [bins[i] for i in pick])
    return PackedCollator(seq_len, pad_token_id=0)(rows)


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


def run_mode(mode: str, model_dir: str, seq_len: int, micro_batch: int, batch_kind: str = "padded") -> dict:
    import torch

    from medslm.modeling import AdapterPrecision, LoraConfigSection, ModelConfig, apply_lora, enable_checkpointing, load_base_model
    from medslm.trainer import batch_loss_sum

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rss0 = _rss_kib("VmRSS") * 1024
    mcfg = ModelConfig(
        name_or_path=model_dir,
        quantization="nf4" if mode.startswith("qlora") else "none",
        text_only=not mode.endswith("_full"),  # multimodal shapes: the language model alone, or the whole checkpoint
        compute_dtype="bfloat16",
        attention="packed" if batch_kind == "packed" else "sdpa",
        gradient_checkpointing=True,
        # full fine-tuning has no adapter: "float32" makes AdapterPrecision a no-op for it
        lora_compute_dtype="float32" if "_peft_fp32" in mode or mode == "full" else "auto",
    )
    packed = batch_kind == "packed"
    model = load_base_model(mcfg, device, packed=packed)
    if mode == "full":
        for p in model.parameters():
            p.requires_grad_(True)
        enable_checkpointing(model)
    else:
        torch.manual_seed(0)
        model = apply_lora(model, LoraConfigSection(r=16, alpha=64, dropout=0.05), gradient_checkpointing=True)
    model.train()  # activation checkpointing and LoRA dropout only act in training mode
    precision = AdapterPrecision(model, mcfg, device)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4)
    vocab = model.get_input_embeddings().weight.shape[0]
    if packed:
        batch = packed_batch(vocab, seq_len, micro_batch)
    else:
        g = torch.Generator().manual_seed(0)
        ids = torch.randint(3, vocab, (micro_batch, seq_len), generator=g)
        labels = ids.clone()
        labels[:, : seq_len // 2] = -100
        batch = {
            "input_ids": ids,
            "labels": labels,
            "attention_mask": torch.ones_like(ids),
            "position_ids": torch.arange(seq_len).expand(micro_batch, -1),
        }
    live = LiveTensorBytes()
    live.track(model_tensors(model))
    live.track(batch[k] for k in ("input_ids", "labels", "position_ids"))
    if device.type == "cuda":
        load_peak = torch.cuda.max_memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        load_peak = _rss_kib("VmHWM") * 1024 - rss0
        _reset_peak_rss()
    t0 = time.perf_counter()
    step_s = []
    with live:
        for _ in range(2):
            t1 = time.perf_counter()
            with precision.step():
                with precision.forward():
                    loss, n = batch_loss_sum(model, batch, packed=packed, device=device)
                (loss / n).backward()
            opt.step()
            opt.zero_grad(set_to_none=False)  # keep gradients allocated: they are part of the state
            if device.type == "cuda":
                torch.cuda.synchronize()
            step_s.append(time.perf_counter() - t1)
    elapsed = time.perf_counter() - t0
    real_tokens = int(batch["num_real_tokens"]) if packed else micro_batch * seq_len
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
        "live_peak_gb": live.peak / 1e9,
        "two_steps_s": elapsed,
        "real_tokens": real_tokens,
        "tokens_per_s": real_tokens / step_s[-1],  # the second step: no first-call warm-up
    }


def nf4_bytes(shape: tuple[int, int]) -> int:
    """Bytes bitsandbytes keeps for one NF4 weight (blocks of 64, double quantisation): measured."""
    import bitsandbytes.functional as bnbf
    import torch

    w = torch.zeros(shape, dtype=torch.bfloat16)
    packed, qs = bnbf.quantize_4bit(w, blocksize=64, compress_statistics=True, quant_type="nf4")
    parts = [packed, qs.absmax, qs.code, qs.offset, qs.state2.absmax, qs.state2.code]
    return sum(t.numel() * t.element_size() for t in parts if isinstance(t, torch.Tensor))


def count_parts(shape: str = "medgemma-4b-mm", lora_r: int = 16) -> dict:
    """Parameters and bytes of each part of the real config (meta device: no weights are made)."""
    import torch
    from transformers import Gemma3ForConditionalGeneration

    spec = dict(SHAPES[shape])
    spec.pop("arch")
    with torch.device("meta"):
        model = Gemma3ForConditionalGeneration(gemma3_mm_config(spec))
    sizes: dict[tuple[int, int], int] = {}
    parts: dict[str, dict] = {}
    for prefix in ("model.vision_tower", "model.multi_modal_projector", "model.language_model"):
        module = model.get_submodule(prefix)
        linears = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        n = sum(p.numel() for p in module.parameters())
        n_lin = sum(m.weight.numel() for m in linears)
        nf4 = 0
        for m in linears:
            key = tuple(m.weight.shape)
            if key not in sizes:
                sizes[key] = nf4_bytes(key)
            nf4 += sizes[key]
        parts[prefix.split(".")[-1]] = {
            "params": n,
            "linear_params": n_lin,
            "bf16_gb": 2 * n / 1e9,
            "nf4_gb": (nf4 + 2 * (n - n_lin)) / 1e9,  # linear weights in NF4, the rest (embeddings, norms, biases) bf16
            "lora_params": sum(lora_r * (m.in_features + m.out_features) for m in linears),
        }
    lora_all = sum(p["lora_params"] for p in parts.values())
    for p in parts.values():
        p["lora_share"] = p["lora_params"] / lora_all
    return parts


def print_count(shape: str) -> None:
    parts = count_parts(shape)
    print(f"{'part':22} {'params':>14} {'bf16 GB':>8} {'NF4 GB':>7} {'LoRA r16 (all-linear)':>22} {'share':>6}")
    for name, p in parts.items():
        print(f"{name:22} {p['params']:14,d} {p['bf16_gb']:8.3f} {p['nf4_gb']:7.3f} {p['lora_params']:22,d} {p['lora_share']:6.1%}")
    print(json.dumps({"shape": shape, **{f"{k}_{f}": round(v[f], 4) if isinstance(v[f], float) else v[f]
                                         for k, v in parts.items() for f in ("params", "bf16_gb", "nf4_gb", "lora_params", "lora_share")}}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="cpu-220m")
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--micro-batch", type=int, default=1)
    ap.add_argument("--modes", default="qlora,lora_bf16,full")
    ap.add_argument("--layers", type=int, help="override the shape's number of decoder layers")
    ap.add_argument("--batch", choices=["padded", "packed"], default="padded")
    ap.add_argument("--count", action="store_true", help="count the parts of the real MedGemma 4B config (no weights, no steps)")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    ap.add_argument("--_model-dir", dest="model_dir", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.count:
        print_count("medgemma-4b-mm")
        return
    if a._child:
        print(json.dumps(run_mode(a._child, a.model_dir, a.seq_len, a.micro_batch, a.batch)))
        return
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = make_model_dir(a.shape, Path(tmp) / "model", a.layers)
        results = {}
        for mode in a.modes.split(","):
            cmd = [sys.executable, __file__, "--_child", mode, "--_model-dir", str(model_dir), "--seq-len", str(a.seq_len), "--micro-batch", str(a.micro_batch), "--batch", a.batch]
            proc = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
            if proc.returncode != 0:
                raise SystemExit(f"{mode} failed:\n{proc.stderr[-3000:]}")
            results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    print(f"{'mode':10} {'trainable':>12} {'state GB':>9} {'peak GB':>8} {'live peak GB':>12} {'load peak GB':>12} {'2 steps s':>9} {'tokens/s':>9}")
    for r in results.values():
        print(
            f"{r['mode']:10} {r['trainable_params']:12,d} {r['state_gb']:9.3f} {r['peak_gb']:8.3f} "
            f"{r['live_peak_gb']:12.3f} {r['load_peak_gb']:12.3f} {r['two_steps_s']:9.2f} {r['tokens_per_s']:9.1f}"
        )
    first = next(iter(results.values()))
    out = {
        "shape": a.shape, "layers": a.layers or SHAPES[a.shape]["num_hidden_layers"], "batch": a.batch,
        "seq_len": a.seq_len, "micro_batch": a.micro_batch, "real_tokens": first["real_tokens"], "device": first["device"],
    }
    for m, r in results.items():
        for k in ("state_gb", "peak_gb", "live_peak_gb", "load_peak_gb", "tokens_per_s"):
            out[f"{m}_{k}"] = round(r[k], 4 if k != "tokens_per_s" else 1)
    for base in ("full", "lora_bf16"):
        if base in results:
            for m in results:
                if m != base and not (base == "lora_bf16" and m == "full"):
                    for k in ("state", "peak", "live_peak"):
                        out[f"{m}_vs_{base}_{k}"] = round(results[m][f"{k}_gb"] / results[base][f"{k}_gb"], 4)
    if "qlora" in results and "qlora_full" in results:  # what model.text_only saves on a multimodal checkpoint
        for k in ("state_gb", "live_peak_gb"):
            out[f"text_only_saves_{k}"] = round(results["qlora_full"][k] - results["qlora"][k], 4)
    if "qlora" in results and "qlora_peft_fp32" in results:  # the adapter in bf16 vs PEFT's fp32 path
        for k in ("live_peak_gb", "tokens_per_s"):
            out[f"qlora_vs_qlora_peft_fp32_{k[:-3] if k.endswith('_gb') else k}"] = round(results["qlora"][k] / results["qlora_peft_fp32"][k], 4)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
