"""The GPU fast path, checked on CPU: the compiled layers and the lean LoRA forward compute what the
eager PEFT path computes (fp32), packed still equals each example alone, and the switches leave a
CPU run untouched unless asked."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from conftest import answer_examples, assert_packed_grads_equal_per_example, bf16_lora_step, lora_with_nonzero_b, tiny_run
from medslm import acceleration, lora_fast
from medslm.config import ConfigError
from medslm.modeling import ModelConfig, decoder_layers, load_base_model
from medslm.packing import PackedCollator
from medslm.trainer import batch_loss_sum

CPU = torch.device("cpu")


def _lora_model(name, quant="nf4", dropout=0.05, fast=False, compiled=False, dtype="auto", backend="inductor", rng="eager", nf4="inductor"):
    base = load_base_model(ModelConfig(name_or_path=name, quantization=quant, attention="packed", compute_dtype=dtype), CPU)
    model = lora_with_nonzero_b(base, dropout)
    if fast:  # as accelerate() does: compiled layers dequantise NF4 with torch ops unless nf4="bitsandbytes"
        assert lora_fast.enable(model, compiled_nf4=compiled and nf4 == "inductor") > 0
    if compiled:
        assert acceleration.compile_layers(model, backend=backend, rng=rng) == len(decoder_layers(model))
    return model.train()


def _steps(model, batches):
    losses = []
    for i, batch in enumerate(batches):
        torch.manual_seed(100 + i)  # the same dropout draws in both models
        loss, _ = batch_loss_sum(model, batch, True, CPU)
        loss.backward()
        losses.append(float(loss.detach()))
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return losses, grads


@pytest.mark.parametrize("nf4", ["inductor", "bitsandbytes"])
def test_compiled_fast_path_matches_eager_in_fp32(nf4):
    """Inductor-compiled layers + the lean LoRA forward vs PEFT eager: NF4 Gemma 3 (sliding and
    full layers), dropout 0.05, activation checkpointing, a packed step forward and backward, with
    the NF4 weights dequantised by medslm.nf4 inside the graph (model.compile_nf4's default) or by
    bitsandbytes' operators. With model.compile_rng's default (eager) the compiled layers draw the
    same dropout masks as the eager ones, so compile on/off is the same run: nothing here patches
    inductor's config."""
    assert ModelConfig().compile_nf4 == "inductor"
    assert ModelConfig().compile_rng == "eager"
    batches = [PackedCollator(64, 0)([answer_examples([11, 25, 6]), answer_examples([30, 20], seed=1)])]
    eager_losses, eager_grads = _steps(_lora_model("embedded:tiny-gemma3"), batches)
    graphs = acceleration.compile_report()["graphs"]
    assert not torch._inductor.config.fallback_random  # set per compiled function, not process-wide
    fast_losses, fast_grads = _steps(_lora_model("embedded:tiny-gemma3", fast=True, compiled=True, nf4=nf4), batches)
    assert not torch._inductor.config.fallback_random
    assert acceleration.compile_report()["graphs"] > graphs  # the layers really were compiled
    assert fast_losses[0] == pytest.approx(eager_losses[0], rel=1e-4)
    assert eager_grads.keys() == fast_grads.keys() and eager_grads
    for k in eager_grads:
        torch.testing.assert_close(fast_grads[k], eager_grads[k], rtol=1e-4, atol=1e-4 * float(eager_grads[k].abs().max()))


def test_compiled_fast_lora_adds_downstream_instead_of_copying_the_base_output(monkeypatch):
    """Inside torch.compile the lean forward is an mm plus an add that inductor fuses into the next
    kernel (here the GELU): an addmm with the base output as its input goes to ATen as it is, which
    copies that whole matrix before its GEMM (a device memcpy per adapted module on CUDA). The
    addmm form is compiled too, as the control that the check can see the copy."""
    from peft import LoraConfig, get_peft_model
    from torch._inductor.utils import run_and_get_code

    assert lora_fast.COMPILED_FORM == "add"  # the product's default
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(64, 96, bias=False), torch.nn.GELU())
    model = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=["0"], lora_dropout=0.0))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    x = torch.randn(2, 16, 64)

    def forward_backward(fn):
        for p in model.parameters():
            p.grad = None
        out = fn(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}

    want, want_grads = forward_backward(model)  # PEFT's own forward, eager
    assert lora_fast.enable(model) == 1
    codes = {}
    for form in ("add", "addmm"):
        monkeypatch.setattr(lora_fast, "COMPILED_FORM", form)
        with torch._inductor.config.patch(fx_graph_cache=False):
            (got, grads), code = run_and_get_code(forward_backward, torch.compile(lambda t: model(t)))
        codes[form] = "\n".join(code)
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)
        for k in want_grads:
            torch.testing.assert_close(grads[k], want_grads[k], rtol=1e-5, atol=1e-6)
    assert "extern_kernels.addmm" in codes["addmm"]  # the control: the copying form is visible
    assert "extern_kernels.addmm" not in codes["add"]
    assert any("add_gelu" in line for line in codes["add"].splitlines() if "fused" in line)  # add fused into GELU


def test_compiled_layers_round_like_eager_in_bf16():
    """model.compile_rounding=eager (the default): inductor rounds to bf16 wherever eager stores a
    bf16 result, so the compiled forward of an NF4 Llama in bf16 (dropout 0.05, the fused LoRA
    forward) equals eager PEFT's bit for bit, with LoRA's B just past its first update. That is
    the regime where fusing moved the loss (step 2 at MedGemma 4B's shape, BENCHMARKS.md): the
    update is below bf16's resolution of the base outputs, eager rounds it away, a fused kernel
    keeps it in fp32. With compile_rounding=fused most logits differ (the control). The backward
    is not bitwise (inductor's backward formulas round elsewhere than autograd's): the adapter's
    gradients are held to bf16's tolerance, 2e-2 relative."""
    assert ModelConfig().compile_rounding == "eager"
    want_logits, want_grads = bf16_lora_step("embedded", "nf4", compiled=False)
    got_logits, got_grads = bf16_lora_step("embedded", "nf4", compiled=True)
    assert torch.equal(got_logits, want_logits)
    for k, want in want_grads.items():
        assert float((got_grads[k] - want).norm() / want.norm()) < 2e-2, k
    fused_logits, _ = bf16_lora_step("embedded", "nf4", compiled=True, rounding="fused")
    assert (fused_logits != want_logits).float().mean() > 0.1


@pytest.mark.parametrize("combo", [True, False])
def test_combo_kernels_reach_inductor_per_compile_not_process_wide(combo, monkeypatch):
    """model.compile_combo_kernels goes to torch.compile's inductor options of the layers' graphs
    (with eager's masks kept), and inductor's process-wide config is left as it was."""
    import torch._inductor.config as inductor_config

    seen = []
    real = torch.compile

    def spy(fn, **kw):
        seen.append({**kw, "fn": getattr(fn, "__qualname__", repr(fn))})
        return real(fn, **kw)

    monkeypatch.setattr(torch, "compile", spy)
    monkeypatch.setattr(acceleration, "_COMPILED", {})
    before = inductor_config.combo_kernels
    model = lora_with_nonzero_b(load_base_model(ModelConfig(name_or_path="embedded", quantization="none", attention="packed"), CPU), 0.05)
    report = acceleration.accelerate(model, ModelConfig(compile=True, compile_combo_kernels=combo), CPU)
    assert report["compiled_layers"] == len(decoder_layers(model))
    layers = [kw for kw in seen if kw["fn"].endswith("DecoderLayer.forward")]  # bitsandbytes compiles its own at import
    assert len(layers) == 1 and layers[0]["backend"] == "inductor", seen
    assert layers[0]["options"] == {"fallback_random": True, "combo_kernels": combo, "emulate_precision_casts": True}
    assert inductor_config.combo_kernels == before


def test_new_segment_lengths_recompile_once_then_never():
    """The longest segment (an int handed to the attention) changes with every batch: dynamo
    recompiles once with it dynamic, and later batches reuse that graph. Graph capture is the
    same for every backend, so aot_eager (no code generation) keeps this test fast."""
    model = _lora_model("embedded:tiny-gemma3", fast=True, compiled=True, backend="aot_eager")
    rows = [[[11, 25, 6], [30, 20]], [[40, 9], [7, 7, 7, 30]], [[50, 12], [3, 60]], [[33, 31], [64]]]
    graphs = [acceleration.compile_report()["graphs"]]
    for i, r in enumerate(rows):
        batch = PackedCollator(64, 0)([answer_examples(r[0], seed=2 * i), answer_examples(r[1], seed=2 * i + 1)])
        loss, _ = batch_loss_sum(model, batch, True, CPU)
        loss.backward()
        graphs.append(acceleration.compile_report()["graphs"])
    assert graphs[1] > graphs[0]
    assert graphs[2] <= 2 * graphs[1] - graphs[0]  # at most one recompile of each graph
    assert graphs[4] == graphs[3] == graphs[2], graphs


def test_packed_gradients_equal_per_example_gradients_on_the_fast_path():
    """Packed == each example alone, through the lean LoRA forward and compiled layers (aot_eager:
    the captured graphs, with the inductor numerics checked above)."""
    exs = answer_examples([11, 25, 6])
    assert_packed_grads_equal_per_example(lambda: _lora_model("embedded", dropout=0.0, fast=True, compiled=True, backend="aot_eager"), exs)


class _Ops(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: list[tuple[str, torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else [out]:
            if isinstance(t, torch.Tensor):
                self.ops.append((str(func.overloadpacket.__name__), t.dtype, t.numel()))
        return out


@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_fast_lora_forward_is_peft_forward(quant):
    model = _lora_model("embedded", quant=quant, dropout=0.1)
    x = torch.randn(1, 12, 128, requires_grad=True)
    layer = decoder_layers(model)[0].mlp.up_proj
    torch.manual_seed(3)
    ref = layer(x)
    ref.sum().backward()
    ref_grads = [x.grad.clone()] + [p.grad.clone() for p in layer.parameters() if p.requires_grad]
    assert lora_fast.enable(model) == 7 * len(decoder_layers(model))
    x.grad = None
    for p in layer.parameters():
        p.grad = None
    torch.manual_seed(3)
    out = layer(x)
    out.sum().backward()
    grads = [x.grad] + [p.grad for p in layer.parameters() if p.requires_grad]
    torch.testing.assert_close(out, ref, rtol=1e-6, atol=1e-6)
    for a, b in zip(grads, ref_grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    with model.disable_adapter():  # PEFT's own states still go through PEFT's forward
        torch.testing.assert_close(layer(x), layer.base_layer(x))
    assert lora_fast.disable(model) == 7 * len(decoder_layers(model))
    assert "forward" not in layer.__dict__


def _adapter_ops(fast: bool):
    """Ops of one bf16 LoRA forward over a 4-bit layer under the trainer's bf16 autocast."""
    model = _lora_model("embedded", quant="nf4", dropout=0.1, dtype="bfloat16")
    if fast:
        lora_fast.enable(model)
    layer = decoder_layers(model)[0].mlp.up_proj  # 128 -> 384
    x = torch.randn(1, 64, 128, dtype=torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16), _Ops() as rec:
        layer(x)
    full = 64 * 384
    return [op for op in rec.ops if op[2] >= full]  # activation-sized outputs only


def test_fast_lora_makes_no_copy_scale_or_fp32_pass_over_the_output():
    peft_ops = _adapter_ops(fast=False)
    fast_ops = _adapter_ops(fast=True)
    names = [name for name, _, _ in fast_ops]
    # PEFT: the base result is cloned, the adapter output multiplied by the scale, then added
    assert {"clone", "mul", "add"} <= {name for name, _, _ in peft_ops}
    assert not {"clone", "mul", "add"} & set(names), names
    assert names.count("addmm") == 1  # base + scale * (h @ B^T) in one GEMM
    assert all(dtype == torch.bfloat16 for _, dtype, _ in fast_ops if dtype.is_floating_point), fast_ops


def test_switches_leave_a_cpu_run_untouched_unless_asked():
    model = _lora_model("embedded")
    assert acceleration.accelerate(model, ModelConfig(), CPU) == {}
    assert not any("forward" in m.__dict__ for m in model.modules())
    with pytest.raises(ConfigError, match="model.fused_kernels=liger"):
        acceleration.accelerate(model, ModelConfig(fused_kernels="liger"), CPU)
    report = acceleration.accelerate(model, ModelConfig(lora_forward="fused"), CPU)
    assert report == {"fast_lora_modules": 7 * len(decoder_layers(model))}


@pytest.mark.parametrize("name, norms_per_layer", [("embedded", 2), ("embedded:tiny-gemma3", 6)])
def test_liger_patch_targets_norms_mlps_and_rope_and_leaves_cpu_rope_exact(name, norms_per_layer, monkeypatch):
    import importlib

    model = _lora_model(name, quant="none")
    base = model.get_base_model()
    mod = importlib.import_module(type(decoder_layers(model)[0]).__module__)
    monkeypatch.setattr(mod, "apply_rotary_pos_emb", mod.apply_rotary_pos_emb)  # restored afterwards
    original = mod.apply_rotary_pos_emb
    n = len(decoder_layers(model))
    counts = acceleration.patch_liger(base)
    assert counts == {"rms_norm": norms_per_layer * n + 1, "mlp": n, "rope": 1}
    assert acceleration.patch_liger(base) == {"rms_norm": 0, "mlp": 0, "rope": 1}  # idempotent
    assert mod.apply_rotary_pos_emb is not original
    q, k = torch.randn(1, 4, 10, 32), torch.randn(1, 2, 10, 32)
    cos, sin = torch.randn(1, 10, 32), torch.randn(1, 10, 32)
    for a, b in zip(mod.apply_rotary_pos_emb(q, k, cos, sin), original(q, k, cos, sin)):
        assert torch.equal(a, b)  # CPU tensors never reach Liger


def test_compiled_layers_under_fsdp2_on_two_ranks_equal_one_eager_rank(tmp_path):
    """model.compile compiles each layer before FSDP2 shards it; 2 ranks under torchrun (gloo)
    with the fast path == 1 eager rank with twice the accumulation. aot_eager (graph capture, no
    code generation) keeps two compiling processes affordable on a CPU."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    common = tiny_run("--train.micro_batch_size=2", "--train.warmup_steps=2", "--train.max_steps=3", "--lora.dropout=0.0",
                      "--train.save_every=0", "--distributed.fsdp=true", "--model.compute_dtype=float32")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MEDSLM_COMPILE_BACKEND": "aot_eager"}

    def run(extra, nproc):
        launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}"] if nproc > 1 else [sys.executable]
        proc = subprocess.run([*launcher, "train.py", *common, *extra], cwd=repo, env=env, capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        return proc

    eager = run(["--train.grad_accum=2", f"--train.output_dir={tmp_path / 'one'}"], 1)
    fast = run(["--train.grad_accum=1", "--model.compile=true", "--model.lora_forward=fused", f"--train.output_dir={tmp_path / 'two'}"], 2)
    assert "fast path:" not in eager.stdout
    (line,) = [ln for ln in fast.stdout.splitlines() if ln.startswith("fast path: ")]  # rank 0 only
    report = json.loads(line[len("fast path: "):])
    assert report["compiled_layers"] == 4 and report["fast_lora_modules"] == 28 and report["graphs"] > 0

    def losses(run_dir):
        recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["loss"] for r in recs if r["kind"] == "train"}

    a, b = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=1e-4), step


def test_train_py_compiled_is_the_same_run_as_eager_dropout_included(tmp_path):
    """The user's view of model.compile_rng's default: train.py with --model.compile=true (inductor,
    the product's backend) and the paper's dropout 0.05 logs the losses the uncompiled run logs,
    step for step (fp32): compiling changes kernels, not the dropout masks. With
    --model.compile_rng=inductor the masks, and so the losses, differ."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    common = tiny_run("--train.micro_batch_size=2", "--train.warmup_steps=1", "--train.max_steps=3", "--lora.dropout=0.05",
                      "--train.save_every=0", "--model.compute_dtype=float32", "--model.lora_forward=fused")
    env = {k: v for k, v in os.environ.items() if k != "MEDSLM_COMPILE_BACKEND"}

    def losses(name, *extra):
        out = tmp_path / name
        proc = subprocess.run([sys.executable, "train.py", *common, *extra, f"--train.output_dir={out}"], cwd=repo, env=env,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-3000:]
        recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        return [r["loss"] for r in recs if r["kind"] == "train"]

    eager = losses("eager")
    compiled = losses("compiled", "--model.compile=true")
    assert len(eager) == len(compiled) == 3
    assert compiled == pytest.approx(eager, rel=1e-4)
    own_draws = losses("inductor_rng", "--model.compile=true", "--model.compile_rng=inductor")
    assert own_draws != pytest.approx(eager, rel=1e-4)
