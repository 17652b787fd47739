"""The memory planner (train.py --estimate-memory) against measurements: bench/memory.py's live
tensor bytes on CPU shapes, and the H100's torch.cuda.max_memory_allocated at MedGemma 4B's shape."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from medslm.memory_plan import GB, GPU_SIZES_GB, ModelShape, PlanSettings, fit, plan, read_model_shape, shipped_shapes

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# train.py on one H100 at MedGemma 4B's text shape: 4 packed rows x 2048 tokens, NF4 + double
# quant, LoRA r16 on all linear layers, checkpointing, bf16 adapter compute, one rank.
H100_MAX_MEMORY_ALLOCATED_GB = 7.03


def _tiny_model(tmp: Path, arch: str) -> Path:
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig, LlamaConfig, LlamaForCausalLM

    common = dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=64, vocab_size=4096, max_position_embeddings=2048)
    torch.manual_seed(0)
    if arch == "gemma3":
        model = Gemma3ForCausalLM(Gemma3TextConfig(**common, sliding_window=128, query_pre_attn_scalar=64))
    else:
        model = LlamaForCausalLM(LlamaConfig(**common, tie_word_embeddings=False))
    model.to(torch.bfloat16).save_pretrained(tmp / arch)
    return tmp / arch


@pytest.mark.parametrize("arch", ["llama", "gemma3"])
def test_estimate_is_within_20_percent_of_live_tensor_bytes_on_cpu(tmp_path, arch):
    """bench/memory.py runs the product's step (NF4, LoRA r16 all-linear with dropout, bf16 adapter,
    checkpointing, packed rows) and counts live tensor bytes op by op; the planner reads only config.json."""
    from bench.memory import run_mode

    model_dir = _tiny_model(tmp_path, arch)
    seq_len, micro = 1024, 2
    measured = run_mode("qlora", str(model_dir), seq_len, micro, "packed")
    shape = read_model_shape(str(model_dir))
    settings = PlanSettings(micro_batch_size=micro, seq_len=seq_len, device="cpu", supervised_fraction=0.027)
    p = plan(shape, settings)
    assert p["state"] / GB == pytest.approx(measured["state_gb"], rel=0.01)  # weights, NF4 constants, adapter, grads, AdamW
    assert p["peak"] / GB == pytest.approx(measured["live_peak_gb"], rel=0.20)
    # activations are most of this peak, so the test sees them (a planner that forgot them would fail)
    assert p["activations"] > 0.5 * p["peak"]


def test_estimate_is_within_15_percent_of_the_h100_measurement():
    shape = read_model_shape("google/medgemma-4b-it")  # the shipped shape: no hub access needed
    assert (shape.hidden_size, shape.num_hidden_layers, shape.vocab_size) == (2560, 34, 262208)
    p = plan(shape, PlanSettings(micro_batch_size=4, seq_len=2048, world_size=1))
    assert p["peak"] / GB == pytest.approx(H100_MAX_MEMORY_ALLOCATED_GB, rel=0.15)
    assert p["lora_param_count"] == 29_802_496  # PEFT's count at r16 on all linear layers


def test_projection_verdicts_follow_the_plan():
    s = PlanSettings(micro_batch_size=4, seq_len=2048)
    seen = set()
    for entry in shipped_shapes():
        shape = ModelShape.from_config(entry["config"], entry["label"])
        for g in GPU_SIZES_GB:
            verdict, micro, total = fit(shape, s, g)
            seen.add(verdict)
            if verdict == "does not fit":
                assert plan(shape, PlanSettings(micro_batch_size=1, seq_len=2048))["gpu_total"] > g * GB
            else:
                assert total * GB <= g * GB and plan(shape, PlanSettings(micro_batch_size=micro, seq_len=2048))["gpu_total"] <= g * GB
                if verdict == "smaller micro-batch":
                    assert 1 <= micro < 4 and plan(shape, PlanSettings(micro_batch_size=micro * 2, seq_len=2048))["gpu_total"] > g * GB
    assert seen == {"fits", "smaller micro-batch", "does not fit"}
    # FSDP shards the adapter's state, not the base; checkpointing is what makes 4 x 2048 fit
    four = plan(read_model_shape("google/medgemma-4b-it"), PlanSettings(world_size=4))
    one = plan(read_model_shape("google/medgemma-4b-it"), PlanSettings(world_size=1))
    assert four["adamw_state"] * 4 == pytest.approx(one["adamw_state"], abs=8) and four["base_weights"] == one["base_weights"]
    assert one["activations_no_checkpointing"] > 10 * one["activations_checkpointed"]


def test_without_checkpointing_the_logits_add_to_every_layers_saved_tensors():
    """Every layer's saved tensors are alive when the logits are made: they add, not max (0.65 GB
    short at MedGemma's shape before)."""
    shape = read_model_shape("google/medgemma-4b-it")
    p = plan(shape, PlanSettings(gradient_checkpointing=False))
    assert p["peak"] == p["state"] + p["autocast_copies"] + p["batch"] + p["activations_no_checkpointing"] + p["logits"]
    c = plan(shape, PlanSettings())
    assert c["peak"] == c["state"] + c["autocast_copies"] + c["batch"] + max(c["activations"], c["activation_layer_inputs"] + c["logits"])


@pytest.mark.parametrize("override, needle", [
    ("--lora.enabled=false", "plans LoRA / QLoRA training only"),  # it printed a 4B full fine-tune fitting 13.6 GB
    ("--lora.target_modules=q_proj,lm_head", "['lm_head'] are not decoder linear layers it models"),
])
def test_estimates_it_cannot_make_are_refused_not_printed(override, needle):
    res = subprocess.run([sys.executable, "train.py", "--estimate-memory", override, "--model.quantization=none"],
                         cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and needle in res.stderr and "Traceback" not in res.stderr, res.stderr


def test_train_py_estimate_memory_reads_config_json_only(tmp_path):
    """The embedded default: nothing is materialised in the model cache, no training happens."""
    cache = tmp_path / "cache"
    env = {**os.environ, "MEDSLM_CACHE": str(cache), "OMP_NUM_THREADS": "1"}
    res = subprocess.run([sys.executable, "train.py", "--estimate-memory", "--gpus", "2", "--train.micro_batch_size=2"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert not cache.exists()
    lines = res.stdout.strip().splitlines()
    record = json.loads(lines[-1])
    assert record["micro_batch_size"] == 2 and record["world_size"] == 2 and record["seq_len"] == 512
    parts = record["parts_gb"]
    for key in ("base_weights", "lora_params", "grads", "adamw_state", "activations", "activations_no_checkpointing", "logits", "runtime_overhead"):
        assert key in parts
    assert record["peak_gb"] < record["gpu_total_gb"]
    assert "Projection" in res.stdout and "70B Llama 3.3 70B" in res.stdout
    bad = subprocess.run([sys.executable, "train.py", "--estimate-memory", "--model.name_or_path=/no/such/model"],
                         cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "/no/such/model has no config.json" in bad.stderr
