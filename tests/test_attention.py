"""medslm_packed attention: each packed example computes exactly what it computes alone."""

from __future__ import annotations

import pytest
import torch

from conftest import answer_examples, assert_packed_grads_equal_per_example
from medslm.modeling import ModelConfig, load_base_model
from medslm.packing import PackedCollator
from medslm.trainer import batch_loss_sum

CPU = torch.device("cpu")


@pytest.mark.parametrize("name", ["embedded", "embedded:tiny-gemma3"])
@pytest.mark.parametrize("quant", ["none", "nf4"])
def test_packed_loss_and_logits_equal_each_example_alone(name, quant):
    packed = load_base_model(ModelConfig(name_or_path=name, quantization=quant, attention="packed"), CPU, packed=True).eval()
    alone = load_base_model(ModelConfig(name_or_path=name, quantization=quant, attention="sdpa"), CPU, packed=False).eval()
    lengths = [9, 40, 5, 23]  # 40 > tiny-gemma3's sliding window of 16: the window mask is exercised
    exs = answer_examples(lengths)
    batch = PackedCollator(128, 0)([exs[:2], exs[2:]])
    from medslm.attention import packed_forward_kwargs

    with torch.no_grad():
        logits = packed(**packed_forward_kwargs(batch, CPU)).logits[0].reshape(2, 128, -1)
        starts = {0: (0, 0), 1: (0, 9), 2: (1, 0), 3: (1, 5)}
        for i, ex in enumerate(exs):
            row, a = starts[i]
            ref = alone(input_ids=torch.tensor([ex["input_ids"]])).logits[0]
            torch.testing.assert_close(logits[row, a : a + lengths[i]], ref, rtol=1e-5, atol=1e-5)
        total, n = batch_loss_sum(packed, batch, True, CPU)
        ref_sum, ref_n = 0.0, 0
        for ex in exs:
            ids = torch.tensor([ex["input_ids"]])
            lg = alone(input_ids=ids).logits[0, :-1]
            tgt = torch.tensor(ex["labels"][1:])
            ref_sum += torch.nn.functional.cross_entropy(lg, tgt, ignore_index=-100, reduction="sum").item()
            ref_n += int((tgt != -100).sum())
    assert n == ref_n == 3 * len(exs)
    assert float(total) == pytest.approx(ref_sum, rel=1e-5)


def test_changing_one_example_leaves_the_others_untouched():
    model = load_base_model(ModelConfig(name_or_path="embedded:tiny-gemma3", quantization="nf4", attention="packed"), CPU).eval()
    from medslm.attention import packed_forward_kwargs

    exs = answer_examples([12, 30, 7])
    changed = [dict(e) for e in exs]
    changed[1] = answer_examples([30], seed=5)[0]
    with torch.no_grad():
        a = model(**packed_forward_kwargs(PackedCollator(64, 0)([exs]), CPU)).logits[0]
        b = model(**packed_forward_kwargs(PackedCollator(64, 0)([changed]), CPU)).logits[0]
    assert torch.equal(a[:12], b[:12]) and torch.equal(a[42:49], b[42:49])
    assert not torch.allclose(a[12:42], b[12:42])


def test_packed_gradients_equal_the_sum_of_per_example_gradients():
    from medslm.modeling import LoraConfigSection, apply_lora

    def lora_model(attention):
        torch.manual_seed(0)
        base = load_base_model(ModelConfig(name_or_path="embedded", quantization="nf4", attention=attention), CPU)
        m = apply_lora(base, LoraConfigSection(r=4, alpha=8, dropout=0.0), gradient_checkpointing=True)
        for n, p in m.named_parameters():  # non-zero B so every LoRA weight gets a gradient
            if "lora_B" in n:
                torch.nn.init.normal_(p, std=0.02)
        return m.train()

    exs = answer_examples([11, 25, 6])
    assert_packed_grads_equal_per_example(lambda: lora_model("packed"), exs)
