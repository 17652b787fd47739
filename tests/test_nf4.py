"""medslm.nf4: NF4 weights dequantised by torch ops (what compiled layers run with
``model.compile_nf4: inductor``) equal bitsandbytes' own dequantisation, and a compiled layer
then calls no bitsandbytes operator."""

from __future__ import annotations

import pytest
import torch

from medslm import lora_fast, nf4

bnb = pytest.importorskip("bitsandbytes")
from bitsandbytes.functional import dequantize_4bit, quantize_4bit  # noqa: E402


@pytest.mark.parametrize("nested", [True, False])
@pytest.mark.parametrize("shape", [(256, 128), (96, 72), (33, 70)])  # 33 x 70: a last short block; 108 absmax: one short nested block
def test_dequantize_equals_bitsandbytes_exactly(shape, nested):
    torch.manual_seed(0)
    q, state = quantize_4bit(torch.randn(shape) * 0.05, blocksize=64, quant_type="nf4", compress_statistics=nested)
    want = dequantize_4bit(q, state)
    assert torch.equal(nf4.dequantize(q, state, torch.float32), want)
    assert torch.equal(nf4.dequantize(q, state, torch.bfloat16), want.to(torch.bfloat16))


def _quantised_linear(quant_type: str, out: int = 32, inp: int = 64, bias: bool = False):
    lin = bnb.nn.Linear4bit(inp, out, bias=bias, compute_dtype=torch.float32, quant_type=quant_type, compress_statistics=True)
    weight = bnb.nn.Params4bit(torch.randn(out, inp) * 0.05, requires_grad=False, quant_type=quant_type, compress_statistics=True)
    lin.weight = weight._quantize("cpu")
    return lin


def test_only_nf4_layers_are_taken():
    torch.manual_seed(0)
    assert nf4.supported(_quantised_linear("nf4"))
    assert not nf4.supported(_quantised_linear("fp4")) and not nf4.supported(torch.nn.Linear(4, 4))


def _nf4_lora_layer():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    lin = _quantised_linear("nf4", out=96, bias=True)
    torch.nn.init.normal_(lin.bias)
    net = torch.nn.Sequential(lin, torch.nn.GELU())
    model = get_peft_model(net, LoraConfig(r=4, lora_alpha=8, target_modules=["0"], lora_dropout=0.0))
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.1)
    return model


def test_a_compiled_nf4_layer_dequantises_in_its_own_kernel_and_matches_bitsandbytes():
    """With ``compiled_nf4`` the compiled graph has no call back into bitsandbytes' Python
    operators; without it (the control) it has. Both give PEFT's eager values and gradients."""
    from torch._inductor.utils import run_and_get_code

    model = _nf4_lora_layer()
    x = torch.randn(2, 16, 64, requires_grad=True)

    def forward_backward(fn):
        for p in [*model.parameters(), x]:
            p.grad = None
        out = fn(x)
        out.square().sum().backward()
        return out.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}, x.grad.clone()

    want, want_grads, want_dx = forward_backward(model)  # PEFT + bitsandbytes, eager
    codes = {}
    for ours in (True, False):
        assert lora_fast.enable(model, compiled_nf4=ours) == 1
        torch._dynamo.reset()
        with torch._inductor.config.patch(fx_graph_cache=False):
            (got, grads, dx), code = run_and_get_code(forward_backward, torch.compile(lambda t: model(t)))
        codes[ours] = "\n".join(code)
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(dx, want_dx, rtol=1e-5, atol=1e-5)
        for k in want_grads:
            torch.testing.assert_close(grads[k], want_grads[k], rtol=1e-5, atol=1e-6)
    assert "bitsandbytes" in codes[False]  # the control: bitsandbytes' operators, called from the graph
    assert "bitsandbytes" not in codes[True]
    lora_fast.disable(model)
