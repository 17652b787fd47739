"""lora.enabled: false -- full fine-tuning, the first row of the paper's Table 5: every weight
trains, the whole model is saved to RUN/model, evaluate.py scores it, NF4 is refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from conftest import tiny_run
from medslm.config import ConfigError, parse_config
from medslm.train_config import TrainConfig

FULL = tiny_run("--train.micro_batch_size=2", "--lora.enabled=false", "--model.quantization=none", "--model.compute_dtype=bfloat16",
                "--data.packing=false", "--train.max_steps=2", "--train.warmup_steps=1")


def test_full_finetuning_trains_every_weight_and_evaluates(tmp_path):
    from medslm.evaluation import EvalConfig, evaluate
    from medslm.modeling import load_base_model
    from medslm.trainer import train

    cfg = parse_config(TrainConfig, [*FULL, f"--train.output_dir={tmp_path / 'run'}"])
    before = load_base_model(cfg.model, torch.device("cpu"), packed=False)
    result = train(cfg, keep_model=True)
    run = Path(result["output_dir"])
    assert result["adapter_dir"] == str(run / "model") and not (run / "adapter").exists()
    trained = result["model"].eval()
    assert not hasattr(trained, "peft_config")
    old = dict(before.named_parameters())
    changed = [n for n, p in trained.named_parameters() if not torch.equal(p.detach(), old[n].detach())]
    assert len(changed) == len(old)  # every weight trained, in bf16
    assert {p.dtype for p in trained.parameters()} == {torch.bfloat16}
    ckpt = run / "checkpoints" / "step-00000002" / "adapter.safetensors"
    from safetensors.torch import load_file

    assert set(load_file(str(ckpt))) == set(old)  # the checkpoint holds the whole model

    ev = evaluate(EvalConfig(run=str(run), out=str(tmp_path / "ev"), progress=False))
    assert ev["eval"]["model"]["adapter"] is None and ev["eval"]["model"]["name_or_path"] == str(run / "model")
    # the saved model is the trained one: same logits as the model in memory
    reloaded = load_base_model(type(cfg.model)(name_or_path=str(run / "model"), quantization="none", compute_dtype="bfloat16"),
                               torch.device("cpu"), packed=False).eval()
    ids = torch.tensor([[1, 50, 60, 70, 80, 90]])
    with torch.no_grad():
        torch.testing.assert_close(reloaded(input_ids=ids).logits, trained(input_ids=ids).logits)
    preds = [json.loads(x) for x in (tmp_path / "ev" / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert len(preds) == ev["eval"]["n_items"] > 0


def test_full_finetuning_of_nf4_weights_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="model.quantization=none"):
        parse_config(TrainConfig, [*FULL, "--model.quantization=nf4"])
