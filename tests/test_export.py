"""python -m medslm.export: a clean PEFT folder with a filled model card, and a merged transformers
folder whose logits equal the NF4 base + adapter that training and evaluation used (text and
multimodal bases)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medslm.config import parse_config, save_config
from medslm.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")
IDS = torch.tensor([[1, 50, 60, 70, 80, 90, 100, 7, 300, 12]])


def _run_dir(tmp: Path, model: str = "embedded") -> tuple[Path, TrainConfig]:
    """A run folder as train.py leaves it (config.yaml, adapter/ with tokenizer), with a non-zero
    adapter: LoRA B drawn at random instead of trained, to keep the test fast."""
    from medslm import distributed as D
    from medslm.checkpoint import save_adapter
    from medslm.modeling import apply_lora, load_base_model
    from medslm.tokenizer import load_tokenizer

    run = tmp / "run"
    cfg = parse_config(TrainConfig, ["--config", str(REPO / "configs" / "tiny.yaml"), f"--model.name_or_path={model}",
                                     f"--train.output_dir={run}"])
    save_config(cfg, run / "config.yaml")
    torch.manual_seed(0)
    peft = apply_lora(load_base_model(cfg.model, CPU, packed=False), cfg.lora, gradient_checkpointing=False)
    for name, p in peft.named_parameters():
        if "lora_B" in name:
            p.data.normal_(std=0.05)
    save_adapter(peft, D.trainable_state_dict(peft), run / "adapter")
    load_tokenizer(None).save_pretrained(run / "adapter")
    save_config(cfg, run / "adapter" / "medslm_config.yaml")
    return run, cfg


def _base_plus_adapter_logits(run: Path, cfg: TrainConfig, ids: torch.Tensor) -> torch.Tensor:
    """What evaluate.py scores: the NF4 base (as loaded for training) + the PEFT adapter."""
    from peft import PeftModel

    from medslm.modeling import load_base_model

    model = PeftModel.from_pretrained(load_base_model(cfg.model, CPU, packed=False), str(run / "adapter")).eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _export(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, "-m", "medslm.export", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)


def test_adapter_export_is_a_clean_peft_folder_with_a_filled_card(tmp_path):
    from safetensors.torch import load_file

    from medslm.evaluation import summarise

    run, cfg = _run_dir(tmp_path)
    (run / "packing_report.json").write_text(json.dumps({"packing_efficiency": 0.986, "mix": {"used": {"en": 58, "ko": 58},
                                                         "by_subject": {"en/step1": 31, "ko/nurse": 14}}}))
    (run / "metrics.jsonl").write_text(json.dumps({"step": 6, "kind": "train", "loss": 1.2345}) + "\n"
                                       + json.dumps({"step": 6, "kind": "val", "val_loss": 1.5}) + "\n")
    preds = [{"benchmark": "kormedmcqa", "subject": "nurse", "correct": i < 7} for i in range(10)]
    (run / "eval").mkdir()
    ev = {"model": {"name_or_path": cfg.model.name_or_path, "run": str(run), "adapter": str(run / "adapter")},
          "scoring": "letter", "split": "test", "n_items": 10, "benchmarks": summarise(preds)}
    # an evaluation of the base model, or of another run, is not this adapter's accuracy
    for model, want in (({"name_or_path": "embedded", "run": None, "adapter": None}, "field 'model.run' is None: it evaluated the model 'embedded' without"),
                        ({**ev["model"], "quantization": "none"}, f"field 'model.quantization' is 'none', but the run trained with {cfg.model.quantization!r}"),
                        ({"name_or_path": "embedded", "run": str(tmp_path / "other"), "adapter": str(tmp_path / "other" / "adapter")},
                         f"field 'model.run' is '{tmp_path / 'other'}', not this run")):
        (run / "eval" / "eval.json").write_text(json.dumps(ev | {"model": model}))
        res = _export("--run", str(run), "--out", str(tmp_path / "wrong"))
        assert res.returncode == 2 and f"{run / 'eval' / 'eval.json'}: {want}" in res.stderr and "Traceback" not in res.stderr, res.stderr
        assert not (tmp_path / "wrong").exists()
    # a run folder moved since its evaluation: the adapter it evaluated is still this one
    from medslm.weights import file_sha256

    sha = file_sha256(run / "adapter" / "adapter_model.safetensors")
    moved = {**ev["model"], "run": str(tmp_path / "before-the-move"), "adapter_sha256": sha}
    (run / "eval" / "eval.json").write_text(json.dumps(ev | {"model": {**moved, "adapter_sha256": "0" * 64}}))
    res = _export("--run", str(run), "--out", str(tmp_path / "wrong"))
    assert res.returncode == 2 and "field 'model.adapter_sha256' is 000000000000..., not this run's adapter" in res.stderr, res.stderr
    (run / "eval" / "eval.json").write_text(json.dumps(ev | {"model": moved}))
    assert _export("--run", str(run), "--out", str(tmp_path / "moved")).returncode == 0
    (run / "eval" / "eval.json").write_text(json.dumps(ev))
    (run / "adapter" / "extra.pkl").write_bytes(b"not for publishing")  # only what PEFT and the tokenizer read is exported
    out = tmp_path / "export"
    res = _export("--run", str(run), "--out", str(out))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "adapter_config.json", "adapter_model.safetensors",
                                                     "medslm_config.yaml", "tokenizer.json", "tokenizer_config.json"]
    ac = json.loads((out / "adapter_config.json").read_text())
    assert Path(ac["base_model_name_or_path"]) == Path(json.loads((run / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"])
    a, b = load_file(str(out / "adapter_model.safetensors")), load_file(str(run / "adapter" / "adapter_model.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    card = (out / "README.md").read_text()
    for needle in ("library_name: peft", "EN:KO ratio (item counts) **5:5**", "en 58, ko 58", "ko/nurse 14", "r 16, alpha 64",
                   "NF4 + double quant", "final training loss | 1.2345", "final validation loss | 1.5000",
                   "| kormedmcqa | all | 10 | 70.0% | 39.7-89.2% |", "CC BY-NC 2.0"):
        assert needle in card, needle
    again = _export("--run", str(run), "--out", str(out))  # never over an existing export
    assert again.returncode == 2 and "already exists" in again.stderr and "Traceback" not in again.stderr
    missing = _export("--run", str(tmp_path / "nope"), "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "no such directory" in missing.stderr
    # a truncated eval.json is named, not published as a card without its evaluation
    (run / "eval" / "eval.json").write_text('{"scoring": "letter", "split": "te')
    cut = _export("--run", str(run), "--out", str(tmp_path / "cut"))
    assert cut.returncode == 2 and "Traceback" not in cut.stderr
    assert f"{run / 'eval' / 'eval.json'}: not valid JSON" in cut.stderr and "rerun evaluate.py" in cut.stderr
    assert not (tmp_path / "cut").exists()


def test_merged_model_logits_equal_base_plus_adapter(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from medslm.export import ExportConfig, export
    from medslm.modeling import resolve_model_path

    run, cfg = _run_dir(tmp_path)
    expected = _base_plus_adapter_logits(run, cfg, IDS)
    export(ExportConfig(run=str(run), out=str(tmp_path / "fp32"), merge=True, dtype="fp32"))
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "fp32").eval()
    assert not hasattr(merged.config, "quantization_config") and merged.config.use_cache
    with torch.no_grad():
        got = merged(input_ids=IDS).logits
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
    # the NF4 round trip matters: the original weights + adapter are a different model
    plain = AutoModelForCausalLM.from_pretrained(resolve_model_path(cfg.model)).eval()
    with torch.no_grad():
        assert (plain(input_ids=IDS).logits - expected).abs().max() > 1e-2
    tok = AutoTokenizer.from_pretrained(tmp_path / "fp32")
    assert tok("Question: a").input_ids
    assert "library_name: transformers" in (tmp_path / "fp32" / "README.md").read_text()
    # bf16 for serving: the same model within bf16 rounding
    export(ExportConfig(run=str(run), out=str(tmp_path / "bf16"), merge=True, dtype="bf16"))
    half = AutoModelForCausalLM.from_pretrained(tmp_path / "bf16", dtype="auto").eval()
    assert next(half.parameters()).dtype == torch.bfloat16
    with torch.no_grad():
        torch.testing.assert_close(half(input_ids=IDS).logits.float(), expected, rtol=0.05, atol=0.05)


def _multimodal_base(tmp: Path, text_dir: Path) -> Path:
    """A tiny Gemma3ForConditionalGeneration (small SigLIP) whose language model is the text model's."""
    from transformers import AutoConfig, Gemma3Config, Gemma3ForCausalLM, Gemma3ForConditionalGeneration, SiglipVisionConfig

    text = Gemma3ForCausalLM.from_pretrained(text_dir)
    vision = SiglipVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2, image_size=28, patch_size=14)
    cfg = Gemma3Config(text_config=AutoConfig.from_pretrained(text_dir).to_dict(), vision_config=vision.to_dict(),
                       mm_tokens_per_image=4, image_token_index=5, boi_token_index=3, eoi_token_index=4)
    torch.manual_seed(0)
    mm = Gemma3ForConditionalGeneration(cfg)
    mm.model.language_model.load_state_dict(text.model.state_dict())
    mm.tie_weights()
    mm.save_pretrained(tmp / "mm")
    return tmp / "mm"


def test_merge_into_a_multimodal_base_keeps_the_vision_tower(tmp_path):
    from safetensors.torch import load_file
    from transformers import Gemma3ForConditionalGeneration

    from medslm.export import ExportConfig, export
    from medslm.modeling import resolve_model_path

    run, cfg = _run_dir(tmp_path, "embedded:tiny-gemma3")
    expected = _base_plus_adapter_logits(run, cfg, IDS)
    mm_dir = _multimodal_base(tmp_path, Path(resolve_model_path(cfg.model)))
    info = export(ExportConfig(run=str(run), out=str(tmp_path / "merged"), merge=True, dtype="fp32", base=str(mm_dir)))
    assert info["architecture"] == "Gemma3ForConditionalGeneration"
    merged = Gemma3ForConditionalGeneration.from_pretrained(tmp_path / "merged").eval()
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=IDS).logits, expected, rtol=1e-4, atol=1e-4)
    before = load_file(str(mm_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "merged" / "model.safetensors"))
    vision = [k for k in before if "vision_tower" in k or "multi_modal_projector" in k]
    assert vision and all(torch.equal(before[k], after[k]) for k in vision)


def test_adapter_names_map_between_text_only_and_multimodal_layouts():
    from medslm.cli import UserError
    from medslm.export import target_module

    mm = {"model.language_model.layers.0.self_attn.q_proj": "mm-q", "lm_head": "head"}
    assert target_module(mm, "model.layers.0.self_attn.q_proj") == ("model.language_model.layers.0.self_attn.q_proj", "mm-q")
    assert target_module(mm, "model.language_model.layers.0.self_attn.q_proj")[1] == "mm-q"
    text = {"model.layers.0.self_attn.q_proj": "q"}
    assert target_module(text, "model.language_model.layers.0.self_attn.q_proj") == ("model.layers.0.self_attn.q_proj", "q")
    with pytest.raises(UserError, match="not in the base model"):
        target_module(text, "model.layers.9.self_attn.q_proj")
