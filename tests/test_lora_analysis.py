"""evaluate.py lora-activations: per-layer LoRA delta magnitudes; measuring changes nothing."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from medslm.evaluation import EvalConfig, load_for_eval, select_items
from medslm.lora_analysis import LoraDeltaMeter, adapted_modules, measure_lora_activations
from medslm.prompts import encode_prompt, format_prompt


def make_fake_run(run: Path, quantization: str = "nf4", seed: int = 0) -> Path:
    """A run directory as train.py leaves it (config.yaml + adapter/), with a random nonzero adapter."""
    from medslm.config import save_config
    from medslm.modeling import apply_lora, load_base_model
    from medslm.tokenizer import load_tokenizer
    from medslm.train_config import TrainConfig

    cfg = TrainConfig()
    cfg.model.quantization = quantization
    cfg.lora.dropout = 0.0
    cfg.train.output_dir = str(run)
    base = load_base_model(cfg.model, torch.device("cpu"), packed=False)
    torch.manual_seed(seed)
    model = apply_lora(base, cfg.lora, gradient_checkpointing=False)
    for name, p in model.named_parameters():
        if "lora_B" in name:  # fresh LoRA has B = 0, i.e. no contribution at all
            torch.nn.init.normal_(p, std=0.05)
    model.save_pretrained(str(run / "adapter"))
    load_tokenizer(None).save_pretrained(str(run / "adapter"))
    save_config(cfg, run / "config.yaml")
    return run


@pytest.fixture(scope="module")
def fake_run(tmp_path_factory) -> Path:
    return make_fake_run(tmp_path_factory.mktemp("lora") / "run")


@pytest.fixture(scope="module")
def loaded(fake_run):
    cfg = EvalConfig(run=str(fake_run), max_items=4)
    items, _ = select_items(cfg)
    model, tokenizer, _ = load_for_eval(cfg)
    return model, tokenizer, items


def _all_hooks(model) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _batch(tokenizer, items):
    prompts = [encode_prompt(tokenizer, format_prompt(it)) for it in items]
    width = max(map(len, prompts))
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, : len(p)] = torch.tensor(p)
        mask[r, : len(p)] = 1
    return ids, mask


def test_measuring_leaves_outputs_unchanged_and_removes_hooks(loaded):
    model, tokenizer, items = loaded
    ids, mask = _batch(tokenizer, items[:4])
    hooks_before = _all_hooks(model)
    with torch.inference_mode():
        plain = model(input_ids=ids, attention_mask=mask).logits
        with LoraDeltaMeter(model, 4) as meter:
            assert _all_hooks(model) == hooks_before + len(meter.modules)
            meter.set_batch(range(4), mask)
            measured = model(input_ids=ids, attention_mask=mask).logits
        after = model(input_ids=ids, attention_mask=mask).logits
    assert torch.equal(plain, measured) and torch.equal(plain, after)
    assert _all_hooks(model) == hooks_before
    assert (meter.sums > 0).all()
    # the full measurement too, and hooks go away after an error inside
    measure_lora_activations(model, tokenizer, items)
    assert _all_hooks(model) == hooks_before
    with pytest.raises(RuntimeError), LoraDeltaMeter(model, 1):
        raise RuntimeError("boom")
    assert _all_hooks(model) == hooks_before


def test_result_per_layer_and_group(loaded):
    model, tokenizer, items = loaded
    res = measure_lora_activations(model, tokenizer, items, batch_size=2)
    assert res["n_layers"] == 4 and res["layers"] == [0, 1, 2, 3]
    groups = res["groups"]
    assert {"en", "ko"} <= set(groups) and any(g.startswith("ko/") for g in groups)
    for g in groups.values():
        assert len(g["per_layer"]) == 4 and all(v is not None and v > 0 for v in g["per_layer"])
        assert set(g["per_module"]) >= {"self_attn.q_proj", "mlp.down_proj"}
    n_en = sum(it.language == "en" for it in items)
    assert groups["en"]["n_items"] == n_en
    assert groups["en"]["n_tokens"] == sum(len(encode_prompt(tokenizer, format_prompt(it))) for it in items if it.language == "en")
    # batching does not change the numbers
    again = measure_lora_activations(model, tokenizer, items, batch_size=len(items))
    for g in groups:
        assert again["groups"][g]["per_layer"] == pytest.approx(groups[g]["per_layer"], rel=1e-4)


def test_value_is_the_adapter_delta(loaded):
    """Layer 0's q_proj sees the same input with and without the adapter, so its delta is
    (output with adapter) - (output without); the meter must report its mean |.| per token."""
    model, tokenizer, items = loaded
    item = items[0]
    res = measure_lora_activations(model, tokenizer, [item])
    reported = res["groups"][item.language]["per_module"]["self_attn.q_proj"][0]
    layer0_q = next(mod for li, name, mod, _ in adapted_modules(model) if li == 0 and name == "self_attn.q_proj")
    outs = []
    handle = layer0_q.register_forward_hook(lambda m, i, o: outs.append(o.detach().float()))
    ids = torch.tensor([encode_prompt(tokenizer, format_prompt(item))])
    try:
        with torch.inference_mode():
            model(input_ids=ids)
            with model.disable_adapter():
                model(input_ids=ids)
    finally:
        handle.remove()
    delta = (outs[0] - outs[1])[0]  # [T, out]
    assert reported == pytest.approx(float(delta.abs().mean()), rel=1e-3)


def test_cli_writes_json_and_png(fake_run, tmp_path, capsys):
    import evaluate as entry

    cfg = entry.parse_args(["lora-activations", "--run", str(fake_run), "--out", str(tmp_path / "la"), "--max-items", "4", "--no-progress"])
    res = entry.main(cfg)
    data = json.loads((tmp_path / "la" / "lora_activations.json").read_text())
    assert data["groups"].keys() == res["groups"].keys() and data["n_layers"] == 4
    assert data["model"]["adapter"].endswith("adapter")
    assert (tmp_path / "la" / "lora_activations.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "layer" in capsys.readouterr().out


def test_cli_errors(tmp_path, capsys):
    import evaluate as entry
    from medslm.cli import run_cli

    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "config.yaml").write_text("model:\n  name_or_path: embedded\n# end of medslm config\n")
    with pytest.raises(SystemExit) as exc:
        run_cli(lambda: entry.main(entry.parse_args(["lora-activations", "--run", str(tmp_path / "run")])))
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "adapter" in err
