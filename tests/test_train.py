"""Training end to end on the embedded tiny model: loss falls, adapter reloads, resume is exact,
2 ranks under torchrun equal 1 rank, bad input fails early with one line."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_run
from medslm.config import parse_config
from medslm.train_config import TrainConfig

REPO = Path(__file__).resolve().parents[1]

# Small and fast, but the real path: NF4 base, LoRA on all linear layers, packing, checkpoints.
FAST = tiny_run("--train.micro_batch_size=2", "--train.warmup_steps=2")


def _cfg(tmp_path: Path, *extra: str) -> TrainConfig:
    return parse_config(TrainConfig, [*FAST, f"--train.output_dir={tmp_path / 'run'}", *extra])


def _losses(run_dir: Path, key: str = "loss") -> dict[int, float]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r[key] for r in recs if r["kind"] == "train"}


def _run_cli(args: list[str], env_extra: dict | None = None, nproc: int = 1) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", **(env_extra or {})}
    cmd = [sys.executable, "train.py", *args]
    if nproc > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", "train.py", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_train_writes_a_reloadable_peft_adapter(tmp_path):
    from peft import PeftModel

    from medslm.modeling import load_base_model
    from medslm.trainer import train

    cfg = _cfg(tmp_path, "--train.max_steps=6", "--train.save_every=3", "--lora.dropout=0.0")
    result = train(cfg, keep_model=True)
    run = Path(result["output_dir"])
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train_recs = [r for r in recs if r["kind"] == "train"]
    assert [r["step"] for r in train_recs] == [1, 2, 3, 4, 5, 6]
    for key in ("loss", "lr", "grad_norm", "tokens", "tokens_per_s", "peak_mem_gb", "epoch"):
        assert all(isinstance(r[key], (int, float)) for r in train_recs), key
    assert train_recs[-1]["loss"] < train_recs[0]["loss"]
    assert any(r["kind"] == "val" for r in recs)
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "config.yaml").is_file() and (run / "packing_report.json").is_file()
    assert [p.name for p in sorted((run / "checkpoints").iterdir())] == ["step-00000003", "step-00000006"]

    adapter = run / "adapter"
    from safetensors.torch import load_file

    tensors = load_file(str(adapter / "adapter_model.safetensors"))
    assert tensors and all("lora_" in k for k in tensors)  # never base weights
    base = load_base_model(cfg.model, torch.device("cpu"), packed=False)
    reloaded = PeftModel.from_pretrained(base, str(adapter)).eval()
    trained = result["model"].eval()
    ids = torch.tensor([[1, 50, 60, 70, 80, 90, 100]])
    with torch.no_grad():
        a = trained(input_ids=ids).logits
        b = reloaded(input_ids=ids).logits
    torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path):
    common = [*FAST, "--train.max_steps=6", "--train.save_every=2"]
    full = _run_cli([*common, f"--train.output_dir={tmp_path / 'full'}"])
    assert full.returncode == 0, full.stderr[-2000:]
    killed = _run_cli([*common, f"--train.output_dir={tmp_path / 'cut'}"], {"MEDSLM_FAULT_AT_STEP": "4"})
    assert killed.returncode == -9  # SIGKILL right after the step-4 checkpoint
    assert not (tmp_path / "cut" / "adapter").exists()
    resumed = _run_cli([*common, f"--train.output_dir={tmp_path / 'cut'}", "--train.resume=auto"])
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert "resumed     from step 4 (" in resumed.stdout and "resumed" not in full.stdout  # the banner says so
    a, b = _losses(tmp_path / "full"), _losses(tmp_path / "cut")
    assert sorted(b) == [1, 2, 3, 4, 5, 6]
    for step in (5, 6):
        assert b[step] == pytest.approx(a[step], rel=1e-4)


@pytest.mark.parametrize("fsdp,dtype,rel,adamw", [("true", "float32", 1e-4, "auto"), ("false", "float32", 1e-4, "auto"),
                                                ("true", "bfloat16", 2e-2, "auto"), ("true", "float32", 1e-4, "fused")])
def test_two_ranks_equal_one_rank_with_twice_the_accumulation(tmp_path, fsdp, dtype, rel, adamw):
    """bf16 (the GPU default: NF4 base and adapter computing in bf16 under FSDP) within bf16 noise;
    fused AdamW (the GPU default: sharded DTensor moments, the nan guard on the device, each step's
    numbers read a step late) as its unfused twin."""
    common = [*FAST, "--train.max_steps=5", "--lora.dropout=0.0", "--train.save_every=0", f"--distributed.fsdp={fsdp}",
              f"--model.compute_dtype={dtype}", f"--train.adamw={adamw}"]
    one = _run_cli([*common, "--train.grad_accum=2", f"--train.output_dir={tmp_path / 'one'}"])
    assert one.returncode == 0, one.stderr[-2000:]
    two = _run_cli([*common, "--train.grad_accum=1", f"--train.output_dir={tmp_path / 'two'}"], nproc=2)
    assert two.returncode == 0, two.stderr[-3000:]
    assert two.stdout.count("done: 5 steps") == 1  # rank 0 reports, not every rank
    assert two.stdout.count("medslm train") == 1 and "world size 2" in two.stdout  # one banner, from rank 0
    assert f"FSDP2 adapter sharding {'on' if fsdp == 'true' else 'off'}" in two.stdout
    import yaml

    assert yaml.safe_load((tmp_path / "two" / "config.yaml").read_text())["distributed"]["world_size"] == 2
    a, b = _losses(tmp_path / "one"), _losses(tmp_path / "two")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4, 5]
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=rel), step
    # the gradient itself, before clipping: AdamW and a clip at 1.0 hide a gradient off by the world size
    # from the losses (fsdp=false once summed ranks' shares and then averaged them: half the norm)
    ga, gb = _losses(tmp_path / "one", "grad_norm"), _losses(tmp_path / "two", "grad_norm")
    for step in ga:
        assert gb[step] == pytest.approx(ga[step], rel=rel), step


@pytest.mark.parametrize(
    "args, needle",
    [
        (["--train.lr=fast"], "'train.lr' must be a number"),
        (["--train.lr=inf"], "'train.lr' must be a finite number"),
        (["--model.name_or_path=/no/such/model"], "/no/such/model does not exist"),
        (["--data.medqa=/no/such/file.jsonl"], "/no/such/file.jsonl"),
        (["--lora.target_modules=q_projj,v_proj"], "lora.target_modules: ['q_projj'] match no linear layer of the model"),
        pytest.param(["--train.device=cuda"], "train.device=cuda: local rank 0 needs a GPU, but this machine has",
                     marks=pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")),
    ],
)
def test_user_errors_are_one_line_and_exit_2(tmp_path, args, needle):
    res = _run_cli([*FAST, f"--train.output_dir={tmp_path / 'x'}", *args])
    assert res.returncode == 2
    assert needle in res.stderr and "Traceback" not in res.stderr


def test_a_run_folder_that_is_or_holds_an_input_is_refused(tmp_path):
    """train.output_dir set to the pack (or data) folder read it as a run, and overwrite=true deleted it."""
    from medslm.cli import UserError
    from medslm.trainer import train

    data = tmp_path / "run" / "medqa"
    shutil.copytree(REPO / "data" / "samples" / "medqa" / "US", data)
    with pytest.raises(UserError, match=r"train.output_dir=.*/run/medqa is an input of this run"):
        train(parse_config(TrainConfig, [*FAST, f"--data.medqa={data}", f"--train.output_dir={data}"]))
    with pytest.raises(UserError, match=r"train.overwrite=true would delete .*/run/medqa, an input of this run inside"):
        train(parse_config(TrainConfig, [*FAST, f"--data.medqa={data}", f"--train.output_dir={tmp_path / 'run'}", "--train.overwrite=true"]))
    assert (data / "train.jsonl").is_file()


def test_resume_with_an_incompatible_config_is_refused(tmp_path):
    from medslm.cli import UserError
    from medslm.trainer import train

    train(_cfg(tmp_path, "--train.max_steps=2"))
    with pytest.raises(UserError, match="lora.r: checkpoint 16 vs now 8"):
        train(_cfg(tmp_path, "--train.max_steps=4", "--lora.r=8", "--train.resume=auto"))


@pytest.mark.parametrize("padding", ["longest", "max_length"])
def test_packing_does_not_reweight_examples(tmp_path, padding):
    """One step over the whole mix: packed rows and one-example-per-row padding give the same loss."""
    from medslm.trainer import train

    common = ["--train.max_steps=1", "--lora.dropout=0.0", "--train.grad_accum=1", "--train.micro_batch_size=256",
              "--data.ratio=1:1", "--model.quantization=none"]
    packed = train(_cfg(tmp_path / "p", *common))
    padded = train(_cfg(tmp_path / "u", *common, "--data.packing=false", f"--data.padding={padding}"))
    assert packed["packing_efficiency"] > 0.9
    assert padded["final_loss"] == pytest.approx(packed["final_loss"], rel=1e-5)


@pytest.mark.parametrize("checkpointing", [True, False])
def test_training_recomputes_every_decoder_layer_under_activation_checkpointing(tmp_path, monkeypatch, checkpointing):
    """Checkpointing only saves memory if it is in effect while training (it is skipped in eval
    mode): with it on, every decoder layer's MLP is entered twice per micro-batch (forward, then
    recompute in backward); with it off, once. (The MLP's pre-hook, not the layer's hooks:
    transformers >= 5.2x checkpoints ``forward``, so the layer's own hooks run once either way,
    and recompute stops early, after the last tensor backward needs, before the MLP returns.)"""
    from medslm import trainer
    from medslm.modeling import decoder_layers

    calls: list[int] = []
    build = trainer.build

    def build_and_count(cfg, dist):
        s = build(cfg, dist)
        for i, layer in enumerate(decoder_layers(s.model)):
            layer.mlp.register_forward_pre_hook(lambda m, args, i=i: calls.append(i) if m.training else None)
        return s

    monkeypatch.setattr(trainer, "build", build_and_count)
    cfg = _cfg(tmp_path, "--train.max_steps=1", "--train.grad_accum=2", f"--model.gradient_checkpointing={str(checkpointing).lower()}")
    trainer.train(cfg)
    n_layers = len({*calls})
    assert n_layers >= 2
    assert len(calls) == (2 if checkpointing else 1) * n_layers * 2  # 2 micro-batches


def test_training_from_a_pack_folder_equals_training_from_the_data(tmp_path):
    """pack.py's output is a training input: the same rows, so the same losses, as building the
    data in-process; the pack's data settings are what the run records (evaluate.py reads them)."""
    import yaml

    from medslm.trainer import train

    pack = tmp_path / "packed"
    res = subprocess.run(
        [sys.executable, "pack.py", "--out", str(pack), "--max-seq-len", "384", "--ratio", "10:3"],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert res.returncode == 0, res.stderr
    common = ["--train.max_steps=3", "--lora.dropout=0.0"]
    direct = train(_cfg(tmp_path / "d", *common, "--data.ratio=10:3"))
    # the YAML's ratio (5:5) and max_seq_len are replaced by the pack's, with a notice
    from_pack = train(_cfg(tmp_path / "p", *common, "--data.max_seq_len=512", f"--data.packed={pack}"))
    assert _losses(tmp_path / "p" / "run") == pytest.approx(_losses(tmp_path / "d" / "run"), rel=1e-6)
    assert from_pack["final_loss"] == pytest.approx(direct["final_loss"], rel=1e-6)
    saved = yaml.safe_load((tmp_path / "p" / "run" / "config.yaml").read_text())
    assert saved["data"]["packed"] == str(pack)
    assert saved["data"]["ratio"] == "10:3" and saved["data"]["max_seq_len"] == 384
    # both run folders record what they trained on: the pack's manifest, item for item
    manifest = (pack / "mix_manifest.jsonl").read_text(encoding="utf-8")
    assert manifest.count("\n") > 100
    for run in ("d", "p"):
        assert (tmp_path / run / "run" / "mix_manifest.jsonl").read_text(encoding="utf-8") == manifest


def test_a_pack_from_another_tokenizer_or_no_pack_is_refused(tmp_path):
    pack = tmp_path / "packed"
    res = subprocess.run([sys.executable, "pack.py", "--out", str(pack), "--max-seq-len", "384"],
                         cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    report = pack / "packing_report.json"
    rep = json.loads(report.read_text())
    rep["tokenizer"]["fingerprint"] = "0" * 16
    report.write_text(json.dumps(rep))
    res = _run_cli([*FAST, f"--train.output_dir={tmp_path / 'run'}", f"--data.packed={pack}"])
    assert res.returncode == 2 and "was tokenised with" in res.stderr and "Traceback" not in res.stderr
    res = _run_cli([*FAST, f"--train.output_dir={tmp_path / 'run'}", f"--data.packed={tmp_path / 'nope'}"])
    assert res.returncode == 2 and "not a folder written by pack.py" in res.stderr

    from medslm.cli import UserError
    from medslm.dataset import read_pack

    report.write_text('{"config": {"data": {}}, "tokenizer": ')  # cut short
    with pytest.raises(UserError, match=r"packing_report\.json: not valid JSON .*line 1"):
        read_pack(pack)
    report.write_text(json.dumps({**rep, "tokenizer": "embedded"}))  # no fingerprint
    with pytest.raises(UserError, match=r"packing_report\.json has no tokenizer fingerprint"):
        read_pack(pack)
    report.write_text(json.dumps({**rep, "config": {"data": {**rep["config"]["data"], "shuffle": True}}}))
    with pytest.raises(UserError, match=r"data keys this version does not know: \['shuffle'\]"):
        read_pack(pack)


def _fp32_activation_copies(lora_compute_dtype: str) -> int:
    """fp32 tensors of the MLP's intermediate size made by one bf16 training step of the tiny model.

    Only the adapter's path makes such tensors (its copy of down_proj's input, the dropout mask,
    the dropped copy); the base MLP runs in bf16. (RMSNorm and the loss use fp32 by design, at
    other sizes.)"""
    from torch.utils._python_dispatch import TorchDispatchMode
    from torch.utils._pytree import tree_leaves

    from medslm.modeling import AdapterPrecision, LoraConfigSection, ModelConfig, apply_lora, load_base_model
    from medslm.trainer import batch_loss_sum

    cpu = torch.device("cpu")
    mcfg = ModelConfig(compute_dtype="bfloat16", lora_compute_dtype=lora_compute_dtype)
    model = apply_lora(load_base_model(mcfg, cpu, packed=False), LoraConfigSection(dropout=0.05)).train()
    inter = model.config.intermediate_size
    ids = torch.randint(3, 200, (2, 64))
    batch = {"input_ids": ids, "labels": ids, "attention_mask": torch.ones_like(ids), "position_ids": torch.arange(64).expand(2, -1)}
    found = []

    class Spy(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            for t in tree_leaves(out):
                if isinstance(t, torch.Tensor) and t.dtype == torch.float32 and tuple(t.shape[-3:]) == (2, 64, inter):
                    found.append((str(func), tuple(t.shape)))
            return out

    precision = AdapterPrecision(model, mcfg, cpu)
    with Spy(), precision.step():
        with precision.forward():
            loss, n = batch_loss_sum(model, batch, packed=False, device=cpu)
        (loss / n).backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in model.parameters() if p.requires_grad)
    return len(found)


def test_bf16_training_makes_no_fp32_copies_of_activations_for_the_adapter():
    """PEFT's default copies every adapter input to fp32; lora_compute_dtype=auto keeps them bf16
    (the adapter's weights, gradients and AdamW state stay fp32)."""
    assert _fp32_activation_copies("float32") > 0
    assert _fp32_activation_copies("auto") == 0


def test_bf16_adapter_compute_trains_like_the_fp32_adapter_path(tmp_path):
    from medslm.trainer import train

    common = ["--train.max_steps=4", "--lora.dropout=0.0", "--model.compute_dtype=bfloat16", "--model.quantization=none"]
    fast = train(_cfg(tmp_path / "a", *common, "--model.lora_compute_dtype=auto"))
    ref = train(_cfg(tmp_path / "b", *common, "--model.lora_compute_dtype=float32"))
    a, b = _losses(tmp_path / "a" / "run"), _losses(tmp_path / "b" / "run")
    assert sorted(a) == sorted(b) == [1, 2, 3, 4]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=2e-2), step
    assert fast["final_loss"] < a[1]  # and it learns


def test_the_loss_is_normalised_over_the_global_batch_not_per_micro_batch(tmp_path):
    """The same rows per step as micro 2 x accum 2 or micro 4 x accum 1 give the same steps; a
    loss normalised per micro-batch weights tokens of a sparse micro-batch more and drifts."""
    from medslm.trainer import train

    common = ["--train.max_steps=3", "--lora.dropout=0.0", "--train.save_every=0"]
    train(_cfg(tmp_path / "a", *common, "--train.micro_batch_size=2", "--train.grad_accum=2"))
    train(_cfg(tmp_path / "b", *common, "--train.micro_batch_size=4", "--train.grad_accum=1"))
    a, b = _losses(tmp_path / "a" / "run"), _losses(tmp_path / "b" / "run")
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for step in a:
        assert a[step] == pytest.approx(b[step], rel=1e-5, abs=1e-5), step


def test_fsdp_shards_the_adapter_and_never_the_frozen_base(tmp_path):
    """Under 2 ranks (gloo): every LoRA parameter is a DTensor, no frozen base parameter is."""
    from medslm.modeling import materialise_embedded

    materialise_embedded("embedded")  # not by two ranks at once: that intermittently reads a bad config.json
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    res = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "tests/fsdp_layout.py",
         *FAST, f"--train.output_dir={tmp_path / 'unused'}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    layout = json.loads(next(ln for ln in res.stdout.splitlines() if ln.startswith("LAYOUT "))[len("LAYOUT "):])
    assert layout["world_size"] == 2 and layout["lora"] > 0 and layout["frozen"] > 0
    assert layout["frozen_sharded"] == []
    assert layout["lora_not_sharded"] == []


@pytest.mark.parametrize("policy", ["managed", "python"])
def test_the_loop_runs_python_s_collector_as_train_gc_says(tmp_path, policy):
    """``managed``: no automatic collection while a step runs (the optimizer's hook sees the
    collector off), and the collector is back on, nothing frozen, once train() returns."""
    import gc

    from torch.optim.optimizer import register_optimizer_step_post_hook

    from medslm.trainer import train

    seen: list[bool] = []
    handle = register_optimizer_step_post_hook(lambda *a, **k: seen.append(gc.isenabled()))
    try:
        train(_cfg(tmp_path, "--train.max_steps=3", f"--train.gc={policy}"))
    finally:
        handle.remove()
    assert seen == [policy == "python"] * 3
    assert gc.isenabled() and gc.get_freeze_count() == 0


def test_the_loss_reads_which_logits_to_keep_from_the_host_not_the_device():
    """Which positions are supervised, and how many, come from the collator's host tensors: with
    the model on the meta device (values that cannot be read back) the loss is still built, so
    no step waits for the device to answer that question."""
    from types import SimpleNamespace

    from conftest import answer_examples
    from medslm.packing import PackedCollator, PaddedCollator
    from medslm.trainer import batch_loss_sum

    meta = torch.device("meta")
    exs = answer_examples([9, 14, 6])

    def model(logits_to_keep, **kwargs):
        assert logits_to_keep.device == meta
        lead = (1,) if "cu_seq_lens_q" in kwargs else (kwargs["input_ids"].shape[0],)
        return SimpleNamespace(logits=torch.zeros(*lead, logits_to_keep.numel(), 4096, device=meta))

    loss, n = batch_loss_sum(model, PackedCollator(32, 0)([exs]), True, meta)
    assert loss.device == meta and n == 9
    loss, n = batch_loss_sum(model, PaddedCollator(0, "longest", 32)(exs), False, meta)
    assert loss.device == meta and n == 9
