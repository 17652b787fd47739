"""Training speed at a named model shape: medslm's training path with each fast-path lever alone and
all together, against TRL's SFTTrainer on the same items and settings, in one run.

    python bench/gpu_step.py --shape tiny                   # CPU: a 2-layer Gemma 3, a few steps
    python bench/gpu_step.py --shape medgemma-4b --out runs/gpu-step   # one GPU

Every configuration runs in its own process (a fresh allocator and compile cache in memory) on the
same random model folder (``--shape``: ``medgemma-4b`` is MedGemma 4B's text tower, Gemma 3 with 34
layers, hidden 2560 and a 262k tied vocabulary; ``tiny`` is a 2-layer Gemma 3 for CPUs) and the same
items: the MedQA + KorMedMCQA sample training files (160 items, EN:KO 5:11, the embedded tokenizer)
packed into 8 rows of 2048 tokens at 99.0% efficiency, 4 rows per step. Settings are the paper's:
QLoRA NF4 + double quantisation, LoRA r16 alpha 64 dropout 0.05 on all linear layers, activation
checkpointing (non-reentrant), bf16 on a GPU (fp32 on a CPU), AdamW 2e-4.

- medslm configurations go through ``medslm.trainer.train`` itself (the product's loop) with
  ``model.compile`` / ``model.fused_kernels`` / ``model.lora_forward`` set per configuration (see
  CONFIGS); tokens/s is the real tokens of the steps after ``--skip`` (the compile warm-up and
  the collector's settling) over their wall time between two device synchronisations
  (``WindowClock``); ``host_tokens_per_s`` is the same steps by the step times in the run's
  metrics.jsonl; peak is torch's CUDA peak after loading.
- ``trl``: TRL's SFTTrainer on the same model folder (loaded with the same NF4 settings, sdpa
  attention), the same tokenised examples, BFD packing to 2048 with ``padding_free`` (its fastest
  setting), batch 4, the same LoRA and optimiser settings; step times from a callback that
  synchronises the device, tokens from the batches. ``trl_liger`` adds ``use_liger_kernel``.
- ``--profile`` configurations are profiled (torch.profiler) over three extra steps at the end
  (``PROFILED_STEPS``: the profiler's warm-up step, which already traces, then two recorded), not
  counted in tokens/s: the shares of device time (CPU time on a CPU) in matmul, attention, NF4
  dequantisation and elementwise/other kernels, and the top kernels, go to ``profile_<name>.json``,
  with ``host_gap_ms`` on a GPU: the median unprofiled step minus the kernels' time per step.
- Loss parity: configurations in ``--parity`` run ``--parity-steps`` steps (all the same number,
  profiled or not: the step count sets the cosine schedule); their per-step losses are compared
  with ``eager``'s, or ``eager_d0``'s for a dropout-free configuration when it ran (max relative
  difference). ``eager_again`` (eager twice) gives the floor: how far two runs of one path drift.

Ends with one JSON line: medslm_tokens_per_s (the ``--headline`` configuration), trl_tokens_per_s,
speedup_vs_trl, medslm_peak_gb, trl_peak_gb, the matmul / elementwise shares, and every
configuration's figures under ``configs``.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHAPES = {
    "medgemma-4b": "medgemma-4b",  # bench/memory.py's spec
    "tiny": dict(arch="gemma3", hidden_size=128, intermediate_size=384, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=32, vocab_size=4096),
}

# each lever alone, then together; "fast" is what a user gets with model.compile=true on a GPU
CONFIGS: dict[str, dict] = {
    "eager": dict(compile=False, fused_kernels="none", lora_forward="peft"),
    # the eager path again, same seeds: how far two runs of the same path drift (bf16 kernels are
    # not bit-reproducible), the floor any parity figure below is read against
    "eager_again": dict(compile=False, fused_kernels="none", lora_forward="peft"),
    # without dropout: the fast path's arithmetic against eager's with no random masks in either
    "eager_d0": dict(compile=False, fused_kernels="none", lora_forward="peft", dropout=0.0),
    "compile": dict(compile=True, fused_kernels="none", lora_forward="peft"),
    "liger": dict(compile=False, fused_kernels="liger", lora_forward="peft"),
    "lora": dict(compile=False, fused_kernels="none", lora_forward="fused"),
    "default": dict(compile=False, fused_kernels="auto", lora_forward="auto"),  # the config keys' defaults
    "fast": dict(compile=True, fused_kernels="none", lora_forward="fused"),
    "fast_d0": dict(compile=True, fused_kernels="none", lora_forward="fused", dropout=0.0),
    "fast_liger": dict(compile=True, fused_kernels="liger", lora_forward="fused"),
    # "fast" with inductor drawing its own dropout masks (model.compile_rng=inductor: philox
    # numbers fused into its kernels, regenerated in backward) instead of torch's generator (the
    # default, eager's masks: "fast" and "eager" then differ in arithmetic alone)
    "fast_inductor_rng": dict(compile=True, fused_kernels="none", lora_forward="fused", compile_rng="inductor"),
    # "fast" with the LoRA B-matmul traced as an addmm (the eager form): ATen copies each base
    # output before the GEMM; the default traces an mm and an add that inductor fuses downstream
    "fast_addmm": dict(compile=True, fused_kernels="none", lora_forward="fused", compiled_lora="addmm"),
    # "fast" with bitsandbytes' own operators for the NF4 matmuls inside compiled layers (a Python
    # call per projection) instead of medslm.nf4's dequantisation compiled into the graph
    "fast_bnb": dict(compile=True, fused_kernels="none", lora_forward="fused", compile_nf4="bitsandbytes"),
    # "fast" with Python's collector left to itself (train.gc=python) rather than run between steps
    "fast_pygc": dict(compile=True, fused_kernels="none", lora_forward="fused", gc="python"),
    # "fast" with inductor's C++ wrapper (the generated code that launches each compiled layer's
    # kernels runs as C++, not Python): an experiment on the host time per layer call. On the H100
    # with torch 2.11 its code generation stopped at a fallback operator with an int-list argument
    # ("arg type List[int] is not yet supported by custom_op_wrapper"), BENCHMARKS.md
    "fast_cpp": dict(compile=True, fused_kernels="none", lora_forward="fused", inductor={"cpp_wrapper": True}),
    # "fast" with torch's unfused AdamW (train.adamw=unfused): the host reads each step's loss and
    # gradient norm before queueing the update, as before train.adamw existed; "fast" takes fused
    # AdamW on CUDA (the nan guard on the device, the numbers read a step later: medslm.optimizer)
    "fast_unfused": dict(compile=True, fused_kernels="none", lora_forward="fused", adamw="unfused"),
    # "fast" without inductor's combo kernels (model.compile_combo_kernels=false: each small
    # independent kernel launched on its own, as before call 7; combo kernels gave 1.03x there)
    "fast_nocombo": dict(compile=True, fused_kernels="none", lora_forward="fused", combo_kernels=False),
    # eager in fp32 (NF4 dequantised to fp32, fp32 activations and elementwise work, TF32 matmuls
    # on CUDA, per-segment attention): a more precise reference; which bf16 path's losses lie
    # nearer it after the first update
    "eager_fp32": dict(compile=False, fused_kernels="none", lora_forward="peft", dtype="float32", tf32=True),
    # eager with other dropout masks (the generators reseeded at the first forward; adapter init
    # and row order unchanged): how far the loss after the first update moves with the masks alone,
    # the spread the fast path's step 2 (1.14% off eager in calls 4-6) is read against
    "eager_masks2": dict(compile=False, fused_kernels="none", lora_forward="peft", mask_seed=1234),
    # "fast" with compiled layers that keep fp32 across each fused kernel (model.compile_rounding=
    # fused) instead of rounding to bf16 wherever eager stores a result (the default, inductor's
    # emulate_precision_casts): "fast" before this key. It moved step 2's loss 1.12% off eager on
    # one H100 (call 7), nearer the fp32 run; the default's cost in speed is what this measures
    "fast_fused": dict(compile=True, fused_kernels="none", lora_forward="fused", rounding="fused"),
    # a bench-only host-time experiment, set up in the child only: dynamo's guards left unevaluated
    # once the compiles are done (unsafe for a product: a changed input would reuse a stale graph)
    "fast_skip_guards": dict(compile=True, fused_kernels="none", lora_forward="fused", skip_guards_after=3),
}
PEERS = ("trl", "trl_liger")
# rows x tokens per step: the paper's 4 x 2048 at the real shape; CPUs get a lighter step
STEP_SHAPE = {"medgemma-4b": (4, 2048), "tiny": (2, 512)}


def step_shape(a: argparse.Namespace) -> tuple[int, int]:
    """Rows and tokens per row of a step: the shape's, unless --rows / --seq-len say otherwise."""
    rows, seq_len = STEP_SHAPE[a.shape]
    return a.rows or rows, a.seq_len or seq_len
RATIO = "5:11"  # 160 sample items -> 8 rows of 2048 at 99.0%: two full steps per epoch


def data_args(seq_len: int) -> list[str]:
    ko = sorted(glob.glob(str(REPO / "data" / "samples" / "kormedmcqa" / "*" / "train-*.parquet")))
    return [
        "--data.split=official",  # training files only: no validation pass between steps
        f"--data.medqa={REPO / 'data' / 'samples' / 'medqa' / 'US' / 'train.jsonl'}",
        f"--data.kormedmcqa={','.join(ko)}",
        f"--data.ratio={RATIO}",
        f"--data.max_seq_len={seq_len}",
        "--data.tokenizer=embedded",
    ]


def train_config(spec: dict):
    from medslm.config import parse_config
    from medslm.train_config import TrainConfig

    lever = CONFIGS[spec["name"]]
    argv = [
        "--config", str(REPO / "configs" / "medgemma-4b.yaml"),
        f"--model.name_or_path={spec['model_dir']}",
        f"--model.compute_dtype={lever.get('dtype', spec['dtype'])}",
        f"--model.compile={str(lever['compile']).lower()}",
        f"--model.compile_rng={lever.get('compile_rng', 'eager')}",
        f"--model.compile_nf4={lever.get('compile_nf4', 'inductor')}",
        f"--model.compile_combo_kernels={str(lever.get('combo_kernels', True)).lower()}",
        f"--model.compile_rounding={lever.get('rounding', 'eager')}",
        f"--model.fused_kernels={lever['fused_kernels']}",
        f"--model.lora_forward={lever['lora_forward']}",
        f"--lora.dropout={lever.get('dropout', 0.05)}",
        f"--train.gc={lever.get('gc', 'managed')}",
        f"--train.adamw={lever.get('adamw', 'auto')}",
        *data_args(spec["seq_len"]),
        f"--train.micro_batch_size={spec['micro_batch']}",
        "--train.grad_accum=1",
        f"--train.max_steps={spec['steps']}",
        "--train.warmup_steps=2",
        "--train.save_every=0",
        "--train.log_every=1",
        "--train.progress=false",
        f"--train.output_dir={spec['work']}/run",
    ]
    return parse_config(TrainConfig, argv)


# ---------------------------------------------------------------------------------------------
# Profiling: kernel classes
# ---------------------------------------------------------------------------------------------

MATMUL = ("gemm", "cutlass", "xmma", "nvjet", "cublas", "wgmma", "gemv", "aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "mkldnn_matmul", "aten::_weight_int4pack_mm")
ATTENTION = ("flash", "fmha", "attention", "varlen", "sdpa")
DEQUANT = ("dequant",)


def kernel_class(name: str) -> str:
    n = name.lower()
    if "dequant" in n or ("triton" in n and "rshift" in n and "bitwise_and" in n):  # medslm.nf4's kernel: unpacks nibbles
        return "nf4_dequant"
    if any(k in n for k in ATTENTION) and "gemm" not in n:
        return "attention"
    if any(k in n for k in MATMUL):
        return "matmul"
    return "elementwise_other"


PROFILED_STEPS = 3  # the profiler's warm-up step (it traces, and the step is slower) + 2 recorded


class StepProfiler:
    """torch.profiler over the optimizer steps after ``start_after`` (one warm-up, then ``active``
    recorded), stepped by a global optimizer hook."""

    def __init__(self, start_after: int, active: int, cuda: bool):
        import torch
        from torch.profiler import ProfilerAction, ProfilerActivity, profile, schedule

        acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
        self.cuda = cuda
        plan = schedule(wait=start_after, warmup=1, active=active, repeat=1)
        # 1-based optimizer step the profiler first works in (its warm-up, which already traces and
        # slows the step): the hook steps the profiler after each optimizer step, so step k runs
        # under the schedule's action for k - 1
        self.first_step = 1 + next(k for k in range(start_after + 2) if plan(k) != ProfilerAction.NONE)
        self.prof = profile(activities=acts, schedule=plan)
        self.prof.__enter__()
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.handle = register_optimizer_step_post_hook(lambda *a, **k: self.prof.step())

    def close(self, trace: str | None = None) -> dict:
        self.handle.remove()
        self.prof.__exit__(None, None, None)
        if trace:  # the timeline (host ops, launches, kernels), for reading gaps between kernels
            raw = Path(trace).with_suffix("")
            self.prof.export_chrome_trace(str(raw))
            with open(raw, "rb") as src, gzip.open(trace, "wb", compresslevel=6) as dst:
                shutil.copyfileobj(src, dst)
            raw.unlink()
        from torch.autograd import DeviceType

        totals: dict[str, float] = {}
        kernels: list[tuple[str, float]] = []
        for evt in self.prof.key_averages():
            if getattr(evt, "is_user_annotation", False) or evt.key.startswith("ProfilerStep") or "#" in evt.key:
                continue  # ranges (ProfilerStep*, Optimizer.step#AdamW.step) span kernels; they are not kernels
            if self.cuda:
                if evt.device_type != DeviceType.CUDA:
                    continue
                t = float(getattr(evt, "self_device_time_total", 0.0) or getattr(evt, "self_cuda_time_total", 0.0))
            else:
                if not evt.key.startswith("aten::") or evt.key in ("aten::linear", "aten::matmul"):
                    continue  # leaf aten ops only; linear/matmul are parents of mm/addmm
                t = float(evt.self_cpu_time_total)
            if t <= 0:
                continue
            cls = kernel_class(evt.key)
            totals[cls] = totals.get(cls, 0.0) + t
            kernels.append((evt.key, t))
        whole = sum(totals.values()) or 1.0
        kernels.sort(key=lambda kv: -kv[1])
        return {
            "clock": "device" if self.cuda else "cpu",
            "total_ms_per_step": whole / 1e3 / 2,
            "shares": {k: round(v / whole, 4) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])},
            "top": [{"name": k[:120], "share": round(t / whole, 4), "class": kernel_class(k)} for k, t in kernels[:25]],
        }


# ---------------------------------------------------------------------------------------------
# Children
# ---------------------------------------------------------------------------------------------


class WindowClock:
    """Wall time of optimizer steps ``first+1 .. last``, between two device synchronisations made
    only at the ends of steps ``first`` and ``last``. With fused AdamW the product's loop reads
    each step's numbers a step late and its host runs up to a step ahead of the device, so the
    step times it logs (host time between step boundaries) spread each step's time across its
    neighbours: right on average, off by up to a step's lead over a few steps. This clock is not."""

    def __init__(self, first: int, last: int, cuda: bool):
        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.first, self.last, self.cuda = first, last, cuda
        self.steps = 0
        self.at: dict[int, float] = {}
        self.handle = register_optimizer_step_post_hook(self._hook)

    def _hook(self, *args, **kwargs) -> None:
        import torch

        self.steps += 1
        if self.steps in (self.first, self.last):
            if self.cuda:
                torch.cuda.synchronize()
            self.at[self.steps] = time.perf_counter()

    def close(self) -> float | None:
        """Seconds from the end of step ``first`` to the end of step ``last`` (None: no such window)."""
        self.handle.remove()
        if self.first < self.last and self.first in self.at and self.last in self.at:
            return self.at[self.last] - self.at[self.first]
        return None


class GcTimer:
    """Time inside Python's cyclic collector, per optimizer step (``gc.callbacks``)."""

    def __init__(self):
        import gc

        from torch.optim.optimizer import register_optimizer_step_post_hook

        self.total = {0: [0, 0.0], 1: [0, 0.0], 2: [0, 0.0]}  # generation -> [collections, seconds]
        self.per_step: list[dict] = []
        self._t = 0.0
        gc.callbacks.append(self._cb)
        self.handle = register_optimizer_step_post_hook(lambda *a, **k: self.per_step.append({g: list(v) for g, v in self.total.items()}))

    def _cb(self, phase: str, info: dict) -> None:
        if phase == "start":
            self._t = time.perf_counter()
        else:
            rec = self.total[info["generation"]]
            rec[0] += 1
            rec[1] += time.perf_counter() - self._t

    def close(self, first: int, last: int) -> dict:
        """Collections and milliseconds per step over optimizer steps ``first+1 .. last``."""
        import gc

        gc.callbacks.remove(self._cb)
        self.handle.remove()
        if len(self.per_step) < 2:
            return {}
        last = min(last, len(self.per_step))
        first = max(1, min(first, last - 1))
        a, b = self.per_step[first - 1], self.per_step[last - 1]
        n = last - first
        return {
            "gc_ms_per_step": round(sum(b[g][1] - a[g][1] for g in b) * 1e3 / n, 2),
            "gc_collections_per_step": {f"gen{g}": round((b[g][0] - a[g][0]) / n, 2) for g in b},
            "gc_full_ms_max_step": round(max((y[2][1] - x[2][1]) * 1e3 for x, y in zip(self.per_step, self.per_step[1:])), 1),
        }


def experiment_hooks(lever: dict) -> None:
    """The bench-only experiments of a configuration, set up in its child process: host time
    (guards), numerics (TF32 for the fp32 reference) and masks (reseeded); none for the product's
    own configurations."""
    import torch

    if lever.get("tf32"):
        torch.backends.cuda.matmul.allow_tf32 = True
    mask_seed = lever.get("mask_seed")
    if mask_seed is not None:
        from torch.nn.modules.module import register_module_forward_pre_hook

        def reseed(module, args):
            torch.manual_seed(mask_seed)  # CPU and every CUDA device's generator: the masks' stream
            handle.remove()

        handle = register_module_forward_pre_hook(reseed)  # the model's first forward is step 1's

    after = lever.get("skip_guards_after")
    if after:
        from torch.optim.optimizer import register_optimizer_step_post_hook

        steps = [0]

        def count(*args, **kwargs):
            steps[0] += 1
            if steps[0] == after:  # the compile and the recompile with a dynamic length are done
                torch.compiler.set_stance("default", skip_guard_eval_unsafe=True)

        register_optimizer_step_post_hook(count)


def child_medslm(spec: dict) -> dict:
    import torch

    from medslm.trainer import train

    cfg = train_config(spec)
    cuda = torch.cuda.is_available()
    if CONFIGS[spec["name"]].get("compiled_lora"):
        from medslm import lora_fast

        lora_fast.COMPILED_FORM = CONFIGS[spec["name"]]["compiled_lora"]
    for key, value in CONFIGS[spec["name"]].get("inductor", {}).items():  # process-wide, in this child only
        import torch._inductor.config

        setattr(torch._inductor.config, key, value)
    experiment_hooks(CONFIGS[spec["name"]])
    # the timed window ends before the profiler's warm-up step: call 5's timed window took it in
    # (0.51 s against 0.42 s for the others) and reported 18,779 tokens/s for 18,978
    last = spec["steps"] - (PROFILED_STEPS if spec.get("profile") else 0)
    prof = StepProfiler(last, PROFILED_STEPS - 1, cuda) if spec.get("profile") else None
    gct = GcTimer()
    clock = WindowClock(spec["skip"], last, cuda)
    t0 = time.perf_counter()
    result = train(cfg)
    wall = time.perf_counter() - t0
    window_s = clock.close()
    profile = prof.close(spec.get("trace")) if prof else None
    recs = [json.loads(line) for line in (Path(result["output_dir"]) / "metrics.jsonl").read_text().splitlines()]
    recs = [r for r in recs if r["kind"] == "train"]
    window = [r for r in recs if spec["skip"] < r["step"] <= last]
    timed = window or recs[1:last] or recs  # short runs: all but the first
    host_tokens_per_s = sum(r["tokens"] for r in timed) / sum(r["step_time_s"] for r in timed)
    out = {
        "name": spec["name"],
        "steps": len(recs),
        "timed_steps": len(timed),
        "tokens_per_step": sum(r["tokens"] for r in timed) / max(1, len(timed)),
        # real tokens of the timed steps over their device-synchronised wall time (WindowClock);
        # host_tokens_per_s: the same steps by the step times the run logged itself
        "tokens_per_s": sum(r["tokens"] for r in window) / window_s if window and window_s else host_tokens_per_s,
        "host_tokens_per_s": host_tokens_per_s,
        "median_tokens_per_s": statistics.median(r["tokens"] / r["step_time_s"] for r in timed),
        "step_s": [round(r["step_time_s"], 4) for r in recs],
        "losses": [r["loss"] for r in recs],
        "peak_gb": max(r["peak_mem_gb"] for r in recs),
        "first_step_s": recs[0]["step_time_s"],
        "wall_s": wall,
        "acceleration": result.get("acceleration", {}),
        "adamw": result.get("adamw"),
        "timed_window": [spec["skip"] + 1, last],  # 1-based optimizer steps, both ends included
        "profiled_from_step": prof.first_step if prof else None,
        **gct.close(spec["skip"], last),
    }
    if profile:
        # the device's idle time per step: the median unprofiled step minus the profiled kernels'
        # time per step (host work the kernels wait on: launches, syncs, Python between them)
        med = statistics.median(r["step_time_s"] for r in timed) * 1e3
        profile["median_step_ms"] = round(med, 2)
        if cuda:
            profile["host_gap_ms"] = round(med - profile["total_ms_per_step"], 2)
        out["profile"] = profile
    return out


def child_trl(spec: dict) -> dict:
    import torch
    import trl
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    from medslm.dataset import build_dataset
    from medslm.tokenizer import load_tokenizer

    cuda = torch.cuda.is_available()
    cfg = train_config({**spec, "name": "eager"})
    tok = load_tokenizer(None)
    built = build_dataset(cfg.data, tok, spec["micro_batch"])
    ds = Dataset.from_dict({"input_ids": [e.input_ids for e in built.train], "labels": [e.labels for e in built.train]})
    dtype = torch.bfloat16 if cuda else torch.float32
    model = AutoModelForCausalLM.from_pretrained(
        spec["model_dir"],
        dtype=dtype,
        attn_implementation="sdpa",
        device_map={"": 0 if cuda else "cpu"},
        quantization_config=BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True, bnb_4bit_compute_dtype=dtype
        ),
    )
    model.config.use_cache = False

    class Meter(TrainerCallback):
        def __init__(self):
            self.times: list[float] = []
            self.t = None

        def _sync(self):
            if cuda:
                torch.cuda.synchronize()
            return time.perf_counter()

        def on_train_begin(self, args, state, control, **kw):
            if cuda:
                torch.cuda.reset_peak_memory_stats()
            self.t = self._sync()

        def on_step_end(self, args, state, control, **kw):
            now = self._sync()
            self.times.append(now - self.t)
            self.t = now

    tokens: list[int] = []

    class Counting(SFTTrainer):
        def training_step(self, model, inputs, *args, **kwargs):
            if "attention_mask" in inputs:
                tokens.append(int(inputs["attention_mask"].sum()))
            else:
                tokens.append(int(inputs["input_ids"].numel()))
            return super().training_step(model, inputs, *args, **kwargs)

    meter = Meter()
    args = SFTConfig(
        output_dir=f"{spec['work']}/trl",
        per_device_train_batch_size=spec["micro_batch"],
        gradient_accumulation_steps=1,
        max_steps=spec["steps"],
        learning_rate=2e-4,
        lr_scheduler_type="cosine",
        warmup_steps=2,
        max_grad_norm=1.0,
        weight_decay=0.0,
        optim="adamw_torch",
        bf16=cuda,
        gradient_checkpointing=True,
        gradient_checkpointing_kwargs={"use_reentrant": False},
        packing=True,
        packing_strategy="bfd",
        padding_free=True,
        max_length=spec["seq_len"],
        logging_steps=1,
        save_strategy="no",
        report_to="none",
        seed=0,
        use_cpu=not cuda,
        dataloader_num_workers=0,
        use_liger_kernel=spec["name"] == "trl_liger",
    )
    peft_cfg = LoraConfig(r=16, lora_alpha=64, lora_dropout=0.05, target_modules="all-linear", bias="none", task_type="CAUSAL_LM")
    trainer = Counting(model=model, args=args, train_dataset=ds, processing_class=tok, peft_config=peft_cfg, callbacks=[meter])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0
    peak = torch.cuda.max_memory_allocated() / 1e9 if cuda else None
    n = min(len(meter.times), len(tokens))
    timed = list(range(spec["skip"], n)) or list(range(min(1, n - 1), n))  # short runs: all but the first
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {
        "name": spec["name"],
        "trl_version": trl.__version__,
        "steps": n,
        "timed_steps": len(timed),
        "tokens_per_step": sum(tokens[i] for i in timed) / max(1, len(timed)),
        "tokens_per_s": sum(tokens[i] for i in timed) / sum(meter.times[i] for i in timed),
        "step_s": [round(t, 4) for t in meter.times],
        "losses": losses,
        "peak_gb": peak,
        "first_step_s": meter.times[0],
        "wall_s": wall,
        "packed_rows": len(trainer.train_dataset),
    }


# ---------------------------------------------------------------------------------------------
# The parent
# ---------------------------------------------------------------------------------------------


def versions() -> dict:
    import importlib.metadata as md

    import torch

    out = {"python": sys.version.split()[0], "torch": torch.__version__}
    for pkg in ("transformers", "peft", "bitsandbytes", "trl", "liger-kernel", "triton"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = None
    out["device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return out


def run_child(name: str, spec: dict, out_dir: Path, timeout: float) -> dict:
    log = out_dir / f"{name}.log"
    cmd = [sys.executable, __file__, "--_child", json.dumps(spec)]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        text = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else (exc.stdout or "")
        log.write_text(text)
        return {"name": name, "error": f"timed out after {timeout:.0f} s"}
    log.write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
    lines = [ln for ln in proc.stdout.strip().splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = proc.stderr.strip().splitlines()[-3:]
        return {"name": name, "error": f"exit {proc.returncode}: {' | '.join(tail)[-600:]}", "wall_s": time.perf_counter() - t0}
    return json.loads(lines[-1])


def summarise(results: dict, a: argparse.Namespace, meta: dict) -> dict:
    ok = {k: v for k, v in results.items() if "error" not in v}
    head = ok.get(a.headline)
    base = ok.get("eager")
    peer = ok.get("trl")
    out: dict = {"shape": a.shape, "layers": a.layers, "rows_x_seq_len": list(step_shape(a)), "date": time.strftime("%Y-%m-%d"), **meta}
    out["medslm_config"] = a.headline
    out["medslm_tokens_per_s"] = round(head["tokens_per_s"], 1) if head else None
    out["trl_tokens_per_s"] = round(peer["tokens_per_s"], 1) if peer else None
    out["speedup_vs_trl"] = round(head["tokens_per_s"] / peer["tokens_per_s"], 3) if head and peer else None
    out["medslm_peak_gb"] = round(head["peak_gb"], 3) if head and head.get("peak_gb") is not None else None
    out["trl_peak_gb"] = round(peer["peak_gb"], 3) if peer and peer.get("peak_gb") is not None else None
    out["speedup_vs_eager"] = round(head["tokens_per_s"] / base["tokens_per_s"], 3) if head and base else None
    for tag, r in (("", head), ("eager_", base)):
        shares = (r or {}).get("profile", {}).get("shares")
        if shares:
            out[f"{tag}matmul_share"] = shares.get("matmul", 0.0)
            out[f"{tag}elementwise_share"] = shares.get("elementwise_other", 0.0)
            out[f"{tag}attention_share"] = shares.get("attention", 0.0)
            out[f"{tag}nf4_dequant_share"] = shares.get("nf4_dequant", 0.0)
    if base:
        par = {}
        for name in a.parity.split(","):
            r = ok.get(name)
            # a dropout-free configuration is compared with eager without dropout, when that ran
            ref_name = "eager_d0" if CONFIGS.get(name, {}).get("dropout") == 0.0 and ok.get("eager_d0") else "eager"
            ref = ok[ref_name]
            if r and name not in ("eager", ref_name):
                n = min(len(r["losses"]), len(ref["losses"]))
                rel = [abs(x - y) / abs(y) for x, y in zip(r["losses"][:n], ref["losses"][:n])]
                par[name] = {"against": ref_name, "steps": n, "max_rel_loss_diff": max(rel) if rel else None,
                             "max_rel_loss_diff_first_12": max(rel[:12]) if rel else None}
        out["loss_parity_vs_eager"] = par
    cfgs = {}
    for name, r in results.items():
        if "error" in r:
            cfgs[name] = {"error": r["error"]}
            continue
        c = {k: (round(r[k], 4) if isinstance(r.get(k), float) else r.get(k)) for k in ("tokens_per_s", "host_tokens_per_s", "median_tokens_per_s", "peak_gb", "first_step_s", "timed_steps", "tokens_per_step", "wall_s", "gc_ms_per_step", "gc_collections_per_step", "gc_full_ms_max_step", "adamw")}
        if base:
            c["vs_eager"] = round(r["tokens_per_s"] / base["tokens_per_s"], 3)
        if peer:
            c["vs_trl"] = round(r["tokens_per_s"] / peer["tokens_per_s"], 3)
        acc = r.get("acceleration") or {}
        if acc:
            c["acceleration"] = acc
        cfgs[name] = c
    out["configs"] = cfgs
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=sorted(SHAPES), default="tiny")
    ap.add_argument("--configs", default="eager,fast,trl,compile,lora,liger,fast_d0", help=f"from {sorted(CONFIGS) + list(PEERS)}")
    ap.add_argument("--steps", type=int, default=9, help="optimizer steps per configuration (4 rows of 2048 each)")
    # the compile, the recompile for dynamic lengths, and train.gc=managed's full collections after
    # each of the first SETTLE_STEPS steps (0.2 s each at MedGemma-4B shape compiled) stay out of the
    # timed steps: the host's time for step k+1 starts after step k's collection
    from medslm.pygc import SETTLE_STEPS

    ap.add_argument("--skip", type=int, default=SETTLE_STEPS + 1, help="first steps left out of tokens/s (compile warm-up, the collector settling)")
    ap.add_argument("--parity", default="eager,fast", help="configurations that run --parity-steps and are compared with eager")
    ap.add_argument("--parity-steps", type=int, default=20)
    ap.add_argument("--profile", default="eager,fast", help="configurations profiled over three extra steps")
    ap.add_argument("--trace", default="", help="profiled configurations whose timelines are saved as trace_<name>.json.gz")
    ap.add_argument("--headline", default="fast", help="the configuration reported as medslm_tokens_per_s")
    def positive(text: str) -> int:
        n = int(text)
        if n < 1:
            raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
        return n

    ap.add_argument("--layers", type=positive, help="decoder layers (default: the shape's); for shorter CPU studies at a real width")
    ap.add_argument("--rows", type=positive, help="packed rows per step (default: the shape's, STEP_SHAPE)")
    ap.add_argument("--seq-len", type=positive, help="tokens per row (default: the shape's, STEP_SHAPE)")
    ap.add_argument("--dtype", choices=("bfloat16", "float32"), help="compute dtype (default: bfloat16 on CUDA, float32 on CPU)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per configuration")
    ap.add_argument("--model-dir", help="reuse a model folder made by an earlier run")
    ap.add_argument("--out", help="folder for per-configuration logs and results.json")
    ap.add_argument("--_child", help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a._child:
        spec = json.loads(a._child)
        fn = child_trl if spec["name"] in PEERS else child_medslm
        print(json.dumps(fn(spec)))
        return

    import torch

    cuda = torch.cuda.is_available()
    names = [n for n in a.configs.split(",") if n]
    unknown = [n for n in names if n not in CONFIGS and n not in PEERS]
    if unknown:
        raise SystemExit(f"error: --configs: unknown {unknown}; choose from {sorted(CONFIGS) + list(PEERS)}")
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:  # each configuration has one run folder and one result
        raise SystemExit(f"error: --configs: {twice} named more than once; run the bench again for another sample")
    micro_batch, seq_len = step_shape(a)
    out_dir = Path(a.out or tempfile.mkdtemp(prefix="gpu-step-"))
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = versions()
    print(json.dumps(meta), flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        model_dir = a.model_dir
        if not model_dir:
            t0 = time.perf_counter()
            from bench.memory import make_model_dir

            model_dir = str(make_model_dir(SHAPES[a.shape], Path(tmp) / "model", layers=a.layers, device="cuda" if cuda else "cpu"))
            torch.cuda.empty_cache() if cuda else None
            print(f"model folder {a.shape}: {time.perf_counter() - t0:.1f} s", flush=True)
        results: dict = {}
        parity = set(a.parity.split(","))
        profiled = {n for n in a.profile.split(",") if n not in PEERS}
        for name in names:
            needs_liger = name in PEERS[1:] or CONFIGS.get(name, {}).get("fused_kernels") == "liger"
            if needs_liger and not cuda:
                results[name] = {"name": name, "error": "skipped: Liger's kernels need CUDA"}
                print(f"{name}: skipped (Liger needs CUDA)", flush=True)
                continue
            profile = name in a.profile.split(",") and name not in PEERS
            if name in parity:
                # the same step count for every parity run: max_steps sets the cosine schedule, so a
                # run with extra profiled steps would take other learning rates from step 1 on
                steps = a.parity_steps + (PROFILED_STEPS if any(n in profiled for n in names if n in parity) else 0)
            else:
                steps = a.steps + (PROFILED_STEPS if profile else 0)
            spec = {
                "name": name, "micro_batch": micro_batch, "seq_len": seq_len, "model_dir": model_dir, "steps": steps, "skip": a.skip,
                "profile": profile, "trace": str(out_dir / f"trace_{name}.json.gz") if profile and name in a.trace.split(",") else None,
                "dtype": a.dtype or ("bfloat16" if cuda else "float32"), "work": str(Path(tmp) / name),
            }
            r = run_child(name, spec, out_dir, a.timeout)
            results[name] = r
            (out_dir / "results.json").write_text(json.dumps(results, indent=1))
            if "profile" in r:
                (out_dir / f"profile_{name}.json").write_text(json.dumps(r["profile"], indent=1))
            brief = r.get("error") or f"{r['tokens_per_s']:.0f} tok/s, peak {r['peak_gb'] or 0:.2f} GB, first step {r['first_step_s']:.1f} s"
            print(f"{name}: {brief}", flush=True)
    summary = summarise(results, a, meta)
    (out_dir / "summary.json").write_text(json.dumps(summary, indent=1))
    rows = [("config", "tok/s", "vs eager", "vs TRL", "peak GB", "1st step s")]
    for name, c in summary["configs"].items():
        if "error" in c:
            rows.append((name, c["error"][:60], "", "", "", ""))
        else:
            rows.append((name, f"{c['tokens_per_s']:.0f}", str(c.get("vs_eager", "")), str(c.get("vs_trl", "")), f"{c['peak_gb'] or 0:.2f}", f"{c['first_step_s']:.1f}"))
    for row in rows:
        print(f"{row[0]:12} {row[1]:>10} {row[2]:>9} {row[3]:>8} {row[4]:>8} {row[5]:>10}")
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
