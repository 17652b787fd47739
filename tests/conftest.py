"""Shared fixtures: a private model cache, small MCQ files in the real formats."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


@pytest.fixture(scope="session", autouse=True)
def _model_cache(tmp_path_factory):
    """Embedded models are materialised in a cache private to this test session."""
    if "MEDSLM_CACHE" not in os.environ:
        os.environ["MEDSLM_CACHE"] = str(tmp_path_factory.mktemp("medslm-cache"))
    yield


def tiny_run(*extra: str) -> list[str]:
    """train.py arguments for the tests' small real runs: configs/tiny.yaml (the embedded tiny
    model, NF4 + LoRA, packing), 384-token rows, no progress bar; ``extra`` (each test's steps,
    batch, warmup, dropout) last, so it overrides."""
    return ["--config", str(REPO / "configs" / "tiny.yaml"), "--data.max_seq_len=384", "--train.progress=false", *extra]


def medqa_row(i: int, answer: str = "B", n_options: int = 4, **extra) -> dict:
    options = {letter: f"option {letter.lower()} number {i}" for letter in "ABCDE"[:n_options]}
    row = {
        "question": f"A {30 + i}-year-old patient presents with symptom {i}. What is the next step?",
        "answer": options[answer],
        "options": options,
        "meta_info": "step1" if i % 2 else "step2&3",
        "answer_idx": answer,
    }
    row.update(extra)
    return row


def kormed_row(i: int, subject: str = "doctor", answer: int = 2) -> dict:
    return {
        "subject": subject,
        "year": 2012 + i % 10,
        "period": 1 + i % 2,
        "q_number": i,
        "question": f"다음 중 증상 {i}에 대한 가장 적절한 처치는?",
        "A": f"처치 가 {i}",
        "B": f"처치 나 {i}",
        "C": f"처치 다 {i}",
        "D": f"처치 라 {i}",
        "E": f"처치 마 {i}",
        "answer": answer,
        "cot": "",
    }


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for every test that runs a real sweep (starting Ray costs seconds on 2 cores)."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        os.environ.pop(k, None)
    import ray

    started = not ray.is_initialized()
    if started:
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False)
    yield ray
    if started:
        ray.shutdown()


def answer_examples(lengths, seed: int = 0) -> list[dict]:
    """Random token examples of the given lengths (ids in the tiny models' 4096 vocabulary), the
    last three tokens supervised, like an answer + EOS."""
    import torch

    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, 4096, (n,), generator=g).tolist()
        out.append({"input_ids": ids, "labels": [-100] * (n - 3) + ids[-3:]})
    return out


def bf16_lora_step(name: str, quant: str, compiled: bool, rounding: str = "eager", device: str = "cpu"):
    """One packed bf16 training step of ``name`` as train.py runs it (the adapter in bf16 under
    AdapterPrecision, the fused LoRA forward when compiled, dropout 0.05 from torch's generator),
    with every LoRA B weight at +-1e-4: where one Adam step at lr 1e-4 leaves it from zeros, and
    below bf16's resolution of the base outputs. Returns the logits and the adapter's gradients."""
    import torch

    from medslm import acceleration
    from medslm.modeling import AdapterPrecision, LoraConfigSection, ModelConfig, apply_lora, load_base_model
    from medslm.packing import PackedCollator
    from medslm.trainer import batch_loss_sum, packed_forward_kwargs

    dev = torch.device(device)
    mcfg = ModelConfig(name_or_path=name, quantization=quant, attention="packed", compute_dtype="bfloat16",
                       compile=compiled, compile_rounding=rounding, lora_forward="fused" if compiled else "peft")
    base = load_base_model(mcfg, dev)
    torch.manual_seed(0)
    model = apply_lora(base, LoraConfigSection(r=16, alpha=64, dropout=0.05), gradient_checkpointing=True)
    signs = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.copy_((torch.randint(0, 2, p.shape, generator=signs) * 2 - 1) * 1e-4)
    if compiled:
        acceleration.accelerate(model, mcfg, dev)
    model.train()
    batch = PackedCollator(64, 0)([answer_examples([11, 25, 6]), answer_examples([30, 20], seed=1)])
    precision = AdapterPrecision(model, mcfg, dev)
    torch.manual_seed(100)
    with precision.step():
        with precision.forward():
            logits = model(**packed_forward_kwargs(batch, dev)).logits
            loss, _ = batch_loss_sum(model, batch, True, dev)
        loss.backward()
    return logits.detach(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}


def lora_with_nonzero_b(base, dropout: float, r: int = 4, alpha: int = 8):
    """PEFT LoRA on every linear layer (activation checkpointing on), seeded, with LoRA B drawn
    from N(0, 0.02) instead of zeros, so every adapter weight gets a gradient that depends on its
    input (and its dropout mask) from the first step."""
    import torch

    from medslm.modeling import LoraConfigSection, apply_lora

    torch.manual_seed(0)  # after loading: materialising the embedded model draws from the generator once
    model = apply_lora(base, LoraConfigSection(r=r, alpha=alpha, dropout=dropout), gradient_checkpointing=True)
    for n, p in model.named_parameters():
        if "lora_B" in n:
            torch.nn.init.normal_(p, std=0.02)
    return model


def assert_packed_grads_equal_per_example(make_model, examples: list[dict]) -> None:
    """Gradients of one packed row of ``examples`` equal the sum of each example's gradients alone
    (two models from ``make_model()``, same init): packing neither leaks nor reweights."""
    import torch

    from medslm.packing import PackedCollator
    from medslm.trainer import batch_loss_sum

    cpu = torch.device("cpu")
    packed = make_model()
    loss, _ = batch_loss_sum(packed, PackedCollator(64, 0)([examples]), True, cpu)
    loss.backward()
    alone = make_model()
    for ex in examples:
        part, _ = batch_loss_sum(alone, PackedCollator(len(ex["input_ids"]), 0)([[ex]]), True, cpu)
        part.backward()
    ga = {n: p.grad for n, p in packed.named_parameters() if p.requires_grad}
    gb = {n: p.grad for n, p in alone.named_parameters() if p.requires_grad}
    assert ga.keys() == gb.keys() and ga
    for k in ga:
        # fp32 summation noise scales with the gradient (the embedded head, std 1/sqrt(hidden), gives
        # gradients up to ~5): atol is 1e-6 of the largest entry, at least 1e-6
        torch.testing.assert_close(ga[k], gb[k], rtol=1e-4, atol=1e-6 * max(1.0, float(ga[k].abs().max())))


def markdown_table(md: str, header_start: str) -> list[list[str]]:
    """The Markdown table whose header line starts with ``header_start``: [header cells, *row cells]."""
    lines = md.splitlines()
    i = next(k for k, ln in enumerate(lines) if ln.startswith(header_start))
    rows = [[c.strip() for c in lines[i].strip("|").split("|")]]
    for ln in lines[i + 2 :]:
        if not ln.startswith("|"):
            break
        rows.append([c.strip() for c in ln.strip("|").split("|")])
    return rows
