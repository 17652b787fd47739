"""GPU-only checks (skipped without CUDA): varlen flash attention equals each example alone; the fast
path (compiled layers, Liger kernels, the fused LoRA forward) tracks eager in bf16 with no graph break."""

from __future__ import annotations

import math

import pytest
import torch

from medslm.attention import packed_forward_kwargs
from medslm.modeling import ModelConfig, load_base_model
from medslm.packing import PackedCollator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize(
    "name, dtype, tol",
    # fp32: the flash kernels take half precision only, so model.compute_dtype=float32 on CUDA (the
    # bench's precision reference) takes the per-segment path, and must train, not stop in flash
    [("embedded", "bfloat16", 2e-2), ("embedded:tiny-gemma3", "bfloat16", 2e-2), ("embedded:tiny-gemma3", "float32", 1e-4)],
)
def test_varlen_attention_matches_each_example_alone_on_cuda(name, dtype, tol):
    dev = torch.device("cuda")
    cfg = dict(name_or_path=name, quantization="none", compute_dtype=dtype)
    packed = load_base_model(ModelConfig(**cfg, attention="packed"), dev, packed=True).eval()
    alone = load_base_model(ModelConfig(**cfg, attention="sdpa"), dev, packed=False).eval()
    g = torch.Generator().manual_seed(0)
    lengths = [17, 64, 9]
    exs = [{"input_ids": torch.randint(3, 4096, (n,), generator=g).tolist(), "labels": [-100] * n} for n in lengths]
    batch = PackedCollator(128, 0)([exs])
    with torch.no_grad():
        out = packed(**packed_forward_kwargs(batch, dev)).logits[0]
        assert out.dtype == getattr(torch, dtype)
        start = 0
        for ex, n in zip(exs, lengths):
            ref = alone(input_ids=torch.tensor([ex["input_ids"]], device=dev)).logits[0]
            torch.testing.assert_close(out[start : start + n].float(), ref.float(), rtol=tol, atol=tol)
            start += n


def _cuda_lora(name, fast=False, compiled=False, liger=False, dropout=0.0):
    from medslm import acceleration, lora_fast
    from medslm.modeling import AdapterPrecision, LoraConfigSection, apply_lora

    dev = torch.device("cuda")
    cfg = ModelConfig(name_or_path=name, quantization="nf4", compute_dtype="bfloat16", attention="packed")
    base = load_base_model(cfg, dev)
    torch.manual_seed(0)
    model = apply_lora(base, LoraConfigSection(r=8, alpha=16, dropout=dropout), gradient_checkpointing=True)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    if fast:  # as accelerate() does: compiled layers dequantise NF4 with torch ops (model.compile_nf4's default)
        lora_fast.enable(model, compiled_nf4=compiled)
    if liger:
        acceleration.patch_liger(model)
    if compiled:
        acceleration.compile_layers(model)
    return model.train(), AdapterPrecision(model, cfg, dev)


def _cuda_step(model, precision, batch):
    from medslm.trainer import batch_loss_sum

    dev = torch.device("cuda")
    with precision.step():
        with precision.forward():
            loss, n = batch_loss_sum(model, batch, True, dev)
        (loss / n).backward()
    return float(loss.detach()) / n, {k: p.grad.float() for k, p in model.named_parameters() if p.requires_grad}


def _philox_offset() -> int:
    """The CUDA generator's offset: how many random numbers its kernels have drawn so far."""
    return int.from_bytes(bytes(torch.cuda.get_rng_state()[8:16].tolist()), "little")


@pytest.mark.parametrize("lever", ["compile", "liger", "compile_dropout"])
def test_fast_path_tracks_eager_in_bf16_on_cuda(lever):
    """Segments no longer than tiny-gemma3's window of 16, so the varlen path takes every layer.
    compile_dropout: LoRA dropout 0.1 on both sides, the same seed before each step; compiled
    layers draw eager's masks (model.compile_rng's default), so only bf16 rounding differs. The
    compiled model takes two steps (the first one compiles) and each is compared with eager's,
    with the random numbers each step drew in the message."""
    from medslm import acceleration

    g = torch.Generator().manual_seed(0)
    exs = [{"input_ids": torch.randint(3, 4096, (n,), generator=g).tolist(), "labels": [-100] * (n - 3) + [5, 6, 7]} for n in [12, 9, 16, 7, 14, 6]]
    batch = PackedCollator(64, 0)([exs[:3], exs[3:]])
    dropout = 0.1 if lever == "compile_dropout" else 0.0

    def seeded_step(model, precision):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        start = _philox_offset()
        loss, grads = _cuda_step(model, precision, batch)
        return loss, grads, _philox_offset() - start

    ref_loss, ref_grads, ref_drawn = seeded_step(*_cuda_lora("embedded:tiny-gemma3", dropout=dropout))
    before = acceleration.compile_report()
    model, precision = _cuda_lora("embedded:tiny-gemma3", fast=True, compiled=lever != "liger", liger=lever == "liger", dropout=dropout)
    for attempt in ("first step (compiles)", "second step"):
        loss, grads, drawn = seeded_step(model, precision)
        where = f"{attempt}: loss {loss} vs eager {ref_loss}; random offsets drawn {drawn} vs eager {ref_drawn}"
        assert loss == pytest.approx(ref_loss, rel=1e-2), where
        for k in ref_grads:
            err = float((grads[k] - ref_grads[k]).norm() / ref_grads[k].norm().clamp_min(1e-12))
            assert err < 5e-2, (k, err, where)
        assert drawn == ref_drawn, where
    if lever != "liger":
        after = acceleration.compile_report()
        assert after["graphs"] > before["graphs"]
        assert after["graph_breaks"] == before["graph_breaks"], after["graph_break_reasons"]


def test_compiled_layers_round_nearer_eager_than_fused_kernels_on_cuda():
    """model.compile_rounding=eager on CUDA: with LoRA's B just past its first update (below bf16's
    resolution of the base outputs), the compiled forward's logits differ from eager's in fewer
    places than with compile_rounding=fused. On CPU the same forward equals eager bit for bit
    (tests/test_acceleration.py); Triton's reductions sum in another order than ATen's, so here
    the test asks for nearer, not equal. A bf16 base, not NF4: on CUDA the compiled NF4
    dequantisation may differ from bitsandbytes' in the last bit (the test below), which would
    blur both sides alike."""
    from conftest import bf16_lora_step

    want, _ = bf16_lora_step("embedded", "none", compiled=False, device="cuda")
    rounded, _ = bf16_lora_step("embedded", "none", compiled=True, device="cuda")
    fused, _ = bf16_lora_step("embedded", "none", compiled=True, rounding="fused", device="cuda")
    off = {k: float((v != want).float().mean()) for k, v in (("eager", rounded), ("fused", fused))}
    assert off["eager"] < off["fused"], off


def test_nf4_dequantisation_by_torch_ops_equals_bitsandbytes_on_cuda():
    """medslm.nf4 on CUDA against bitsandbytes' CUDA kernels (double quantisation, bf16): eager
    torch ops give the same bits; compiled, inductor may fuse the absmax multiply-add (fp32), so
    at most the last bf16 bit differs."""
    from bitsandbytes.functional import dequantize_4bit, quantize_4bit

    from medslm import nf4

    torch.manual_seed(0)
    w = torch.randn(2560, 10240 // 4, device="cuda", dtype=torch.bfloat16) * 0.02
    q, state = quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=True)
    want = dequantize_4bit(q, state).to(torch.bfloat16)
    assert torch.equal(nf4.dequantize(q, state, torch.bfloat16), want)
    got = torch.compile(lambda t: nf4.dequantize(t, state, torch.bfloat16))(q)
    torch.testing.assert_close(got, want, rtol=2**-7, atol=0.0)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
def test_a_training_step_queues_without_waiting_for_the_device_on_cuda(compiled):
    """A micro-step (its transfers, forward, loss, backward), clipping and fused AdamW's guarded
    update, with the step's numbers handed to StepReadback, under torch's sync debug mode: any
    operation that makes the host wait for the device raises. A wait in one of them costs the
    host its lead: it then idles through every step boundary (medslm.transfer, medslm.optimizer).
    Eager: bitsandbytes' NF4 operators; compiled: medslm.nf4 inside the compiled layers."""
    from medslm.optimizer import StepReadback

    model, precision = _cuda_lora("embedded:tiny-gemma3", fast=True, compiled=compiled, dropout=0.1)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, fused=True)
    readback = StepReadback(opt, torch.device("cuda"))
    g = torch.Generator().manual_seed(0)
    exs = [{"input_ids": torch.randint(3, 4096, (n,), generator=g).tolist(), "labels": [-100] * (n - 3) + [5, 6, 7]} for n in (16, 9, 12)]
    batch = PackedCollator(48, 0)([exs])

    def step(n: int) -> None:
        from medslm.trainer import batch_loss_sum

        with precision.step():
            with precision.forward():
                loss, count = batch_loss_sum(model, batch, True, torch.device("cuda"))
            (loss / count).backward()
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)
        values = torch.stack([loss.detach().double(), norm.double(), torch.full((), 1.0, dtype=torch.float64, device="cuda")])
        readback.submit(n, values, {})
        opt.step()
        opt.zero_grad(set_to_none=True)

    step(1)  # first use: the optimizer's state, cuBLAS handles, the allocator's first blocks
    (first,) = readback.flush()
    torch.cuda.set_sync_debug_mode("error")
    try:
        step(2)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    (second,) = readback.flush()
    assert first.step == 1 and second.step == 2 and math.isfinite(second.loss_sum)
