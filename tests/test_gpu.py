"""GPU-only checks (skipped without CUDA): varlen flash attention equals each example alone."""

from __future__ import annotations

import pytest
import torch

from medslm.attention import packed_forward_kwargs
from medslm.modeling import ModelConfig, load_base_model
from medslm.packing import PackedCollator

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.parametrize("name", ["embedded", "embedded:tiny-gemma3"])
def test_varlen_attention_matches_each_example_alone_on_cuda(name):
    dev = torch.device("cuda")
    cfg = dict(name_or_path=name, quantization="none", compute_dtype="bfloat16")
    packed = load_base_model(ModelConfig(**cfg, attention="packed"), dev, packed=True).eval()
    alone = load_base_model(ModelConfig(**cfg, attention="sdpa"), dev, packed=False).eval()
    g = torch.Generator().manual_seed(0)
    lengths = [17, 64, 9]
    exs = [{"input_ids": torch.randint(3, 4096, (n,), generator=g).tolist(), "labels": [-100] * n} for n in lengths]
    batch = PackedCollator(128, 0)([exs])
    with torch.no_grad():
        out = packed(**packed_forward_kwargs(batch, dev)).logits[0].float()
        start = 0
        for ex, n in zip(exs, lengths):
            ref = alone(input_ids=torch.tensor([ex["input_ids"]], device=dev)).logits[0].float()
            torch.testing.assert_close(out[start : start + n], ref, rtol=2e-2, atol=2e-2)
            start += n
