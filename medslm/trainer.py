"""The QLoRA training loop: packed rows, token-weighted loss over the global batch, FSDP2 adapter.

Order of rows, and so every optimizer step, does not depend on the world size: each epoch
shuffles the packed rows with ``seed + epoch``, step ``s`` takes the next
``micro_batch_size x grad_accum x world_size`` rows, and rank ``r`` / micro-step ``k`` takes a
fixed slice of them. The loss of a step is the sum of token losses over all its rows divided by
the number of supervised tokens in all of them, so a 2-rank run with grad_accum 1 and a 1-rank
run with grad_accum 2 take the same steps, and packing does not reweight examples.

Logits are computed only where a label is supervised (``logits_to_keep``): MCQ targets are a few
tokens per example, so the [tokens x vocab] logits tensor — 8.6 GB at 4 x 2048 tokens and Gemma's
262k vocabulary in fp32 — shrinks to a few hundred rows.
"""

from __future__ import annotations

import math
import os
import random
import signal
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from pathlib import Path

from medslm import console
from medslm import distributed as D
from medslm.acceleration import accelerate, compile_report
from medslm.attention import packed_forward_kwargs
from medslm.auto_batch import AutoMicroBatch
from medslm.checkpoint import Checkpoint, save_adapter, save_checkpoint
from medslm.cli import UserError
from medslm.config import save_config, to_dict
from medslm.dataset import build_dataset, read_pack, rows_of, save_run_data, training_rows_id
from medslm.files import writing
from medslm.metrics import MetricsLogger, PeakMemory
from medslm.modeling import AdapterPrecision, apply_lora, decoder_layers, embedded_tokenizer_for, load_base_model, resolve_model_path
from medslm.multimodal import rename_saved_adapter
from medslm.numerics import check_adapter, check_step, check_validation
from medslm.optimizer import StepNumbers, StepReadback, build_adamw
from medslm.packing import PackedCollator, PaddedCollator
from medslm.pygc import managed_collector
from medslm.resume import find_checkpoint, restore, rng_state
from medslm.run_dir import open_run_dir
from medslm.tokenizer import load_tokenizer, pad_token_id, tokenizer_fingerprint
from medslm.train_config import TrainConfig
from medslm.transfer import to_device
from medslm.weights import check_base, fingerprint, record_base

Row = list[dict[str, list[int]]]


# ---------------------------------------------------------------------------------------------
# Schedule and data plan
# ---------------------------------------------------------------------------------------------


def lr_factor(step: int, warmup_steps: int, total_steps: int) -> float:
    """Linear warmup to 1, then cosine decay to 0 at ``total_steps``."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def epoch_order(num_rows: int, seed: int, epoch: int) -> list[int]:
    order = list(range(num_rows))
    random.Random(seed * 1_000_003 + epoch).shuffle(order)
    return order


def step_slices(order: list[int], step_in_epoch: int, micro: int, accum: int, world: int, rank: int) -> list[list[int]]:
    """Row indices for each of this rank's ``accum`` micro-steps (possibly empty at an epoch's end)."""
    g = micro * accum * world
    step_rows = order[step_in_epoch * g : (step_in_epoch + 1) * g]
    mine = step_rows[rank * micro * accum : (rank + 1) * micro * accum]
    return [mine[k * micro : (k + 1) * micro] for k in range(accum)]


def supervised_tokens(row: Row) -> int:
    return sum(sum(1 for t in ex["labels"][1:] if t != -100) for ex in row)


# ---------------------------------------------------------------------------------------------
# Loss
# ---------------------------------------------------------------------------------------------


def batch_loss_sum(model: Any, batch: dict[str, Any], packed: bool, device: torch.device) -> tuple[torch.Tensor, int]:
    """Sum of next-token cross-entropy over supervised tokens, and their count.

    Logits are computed only at positions whose next token is supervised. Which positions those
    are, and how many, is read from the collator's host tensors: asking the device (a nonzero or a
    sum read back) would make the host wait for every queued kernel at each micro-step.
    """
    labels = batch["labels"].cpu()
    if packed:
        kwargs = packed_forward_kwargs(batch, device)
        flat = labels.reshape(-1)
        keep = torch.nonzero(flat[1:] != -100).squeeze(-1)
        if keep.numel() == 0:  # a null row: run the graph so every rank takes part in FSDP collectives
            keep = torch.zeros(1, dtype=torch.long)
        targets = flat[keep + 1]
        # every transfer is queued before the forward (medslm.transfer): one after it would make the
        # host wait for the whole forward and start the backward with no lead over the device
        kwargs["logits_to_keep"] = to_device(keep, device)
    else:
        shifted = labels[:, 1:] != -100
        cols = torch.nonzero(shifted.any(dim=0)).squeeze(-1)
        if cols.numel() == 0:
            cols = torch.zeros(1, dtype=torch.long)
        targets = labels[:, cols + 1].reshape(-1)
        kwargs = {k: to_device(batch[k], device) for k in ("input_ids", "attention_mask", "position_ids")}
        kwargs["logits_to_keep"] = to_device(cols, device)
    targets_d = to_device(targets, device)
    logits = model(**kwargs).logits
    logits = logits[0] if packed else logits.reshape(-1, logits.shape[-1])  # [K, V]
    loss = F.cross_entropy(logits.float(), targets_d, ignore_index=-100, reduction="sum")
    return loss, int((targets != -100).sum())


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------


@dataclass
class Setup:
    cfg: TrainConfig
    dist: D.DistState
    model: Any
    tokenizer: Any
    rows: list[Row]
    val_rows: list[Row]
    collate: Any
    packed: bool
    pad: int
    report: dict[str, Any]
    precision: AdapterPrecision
    manifest: list[dict[str, Any]]  # the items trained, validated and tested on (mix_manifest.jsonl)
    acceleration: dict[str, Any] = field(default_factory=dict)  # what medslm.acceleration applied


def _null_row(pad_id: int) -> Row:
    return [{"input_ids": [pad_id], "labels": [-100]}]


def build(cfg: TrainConfig, dist: D.DistState) -> Setup:
    """Tokenizer, packed data, quantised model with LoRA, sharded: everything but the loop."""
    pack = read_pack(cfg.data.packed) if cfg.data.packed else None
    if pack is not None:
        replaced = pack.differing_keys(cfg.data)
        if replaced and dist.is_main:
            print(f"data.packed={pack.path}: the pack's data settings replace this config's: {'; '.join(replaced)}")
        cfg.data = pack.data  # config.yaml records what the rows were built with (evaluate.py reads it)
    warning = console.sample_data_warning(cfg.model.name_or_path, cfg.data)
    if warning and dist.is_main:
        console.warn(warning)
    tokenizer = load_tokenizer(cfg.data.tokenizer or embedded_tokenizer_for(cfg.model))
    if pack is not None:
        fp = tokenizer_fingerprint(tokenizer)
        if fp != pack.tokenizer_fingerprint:
            raise UserError(
                f"data.packed: {pack.path} was tokenised with {pack.tokenizer_name!r} (fingerprint "
                f"{pack.tokenizer_fingerprint}), but this run's tokenizer differs ({fp}): re-run pack.py with "
                f"--tokenizer set to model.name_or_path ({cfg.model.name_or_path})"
            )
        rows, val_rows = pack.rows()
        report = {k: v for k, v in pack.report.items() if k != "config"}
        manifest = pack.manifest()
    else:
        g = cfg.train.micro_batch_size * cfg.train.grad_accum * dist.world_size
        built = build_dataset(cfg.data, tokenizer, global_batch_rows=g, progress=dist.is_main)
        rows = [[e.as_dict() for e in r] for r in rows_of(built.train, built.train_bins)]
        val_rows = [[e.as_dict() for e in r] for r in rows_of(built.val, built.val_bins)]
        report, manifest = built.report, built.manifest
    packed = cfg.data.packing
    model = load_base_model(cfg.model, dist.device, packed=packed, progress=dist.is_main and cfg.train.progress and console.interactive())
    vocab = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > vocab:
        raise UserError(f"the tokenizer has {len(tokenizer)} tokens but the model's vocabulary has {vocab}")
    torch.manual_seed(cfg.train.seed)  # the same adapter init on every rank
    model = apply_lora(model, cfg.lora, cfg.model.gradient_checkpointing)
    accel = accelerate(model, cfg.model, dist.device)  # compile each layer before sharding it
    if dist.distributed and cfg.distributed.fsdp:
        D.shard_adapter(model, decoder_layers(model), dist)
    torch.manual_seed(cfg.train.seed + 7919 * dist.rank)  # dropout streams differ per rank
    pad = pad_token_id(tokenizer)
    if packed:
        collate: Any = PackedCollator(cfg.data.max_seq_len, pad)
    else:
        padder = PaddedCollator(pad, cfg.data.padding, cfg.data.max_seq_len)
        collate = lambda rs: padder([ex for r in rs for ex in r])  # noqa: E731  one example per row
    precision = AdapterPrecision(model, cfg.model, dist.device)
    return Setup(cfg, dist, model, tokenizer, rows, val_rows, collate, packed, pad, report, precision, manifest, accel)


def train(cfg: TrainConfig, keep_model: bool = False) -> dict[str, Any]:
    """Run training; returns a summary (final loss, steps, paths). Called by train.py and sweeps.

    ``keep_model=True`` also returns the trained in-memory model under ``"model"`` (tests).
    """
    cfg.validate()
    dist = D.init_distributed(cfg.train.device)
    lock = None
    try:
        inputs = [cfg.data.packed, cfg.model.name_or_path, cfg.data.tokenizer, *cfg.data.medqa, *cfg.data.kormedmcqa]
        lock = open_run_dir(cfg.train, dist, [str(p) for p in inputs if p])  # before any data or model is loaded
        ckpt = find_checkpoint(cfg.train.resume, cfg.train.output_dir, notice=print if dist.is_main else lambda _: None)
        with writing(cfg.train.output_dir, disk_full_only=True):  # a full disk is named, whatever wrote
            return _run(cfg, dist, keep_model, ckpt)
    except torch.cuda.OutOfMemoryError:
        raise UserError(
            f"CUDA out of memory at train.micro_batch_size={cfg.train.micro_batch_size}, data.max_seq_len="
            f"{cfg.data.max_seq_len}: lower train.micro_batch_size (raise train.grad_accum to keep the global batch), "
            "lower data.max_seq_len, keep model.gradient_checkpointing on, use more GPUs, or set train.auto_micro_batch=true"
        ) from None
    finally:
        try:
            D.shutdown(dist)
        finally:
            if lock is not None:
                lock.release()


def _run(cfg: TrainConfig, dist: D.DistState, keep_model: bool, ckpt: Checkpoint | None) -> dict[str, Any]:
    t_cfg = cfg.train
    out = os.path.abspath(t_cfg.output_dir)
    recorded = cfg.distributed.world_size
    if recorded is not None and recorded != dist.world_size:
        raise UserError(
            f"distributed.world_size: the config says {recorded} ranks but this run has {dist.world_size}; the global batch "
            f"(micro_batch_size x grad_accum x ranks) would change: launch {recorded} ranks, or set --distributed.world_size=null"
        )
    cfg.distributed.world_size = dist.world_size  # config.yaml records it
    s = build(cfg, dist)
    # the base this run trains on, for evaluate/export/resume: after the load, so a hub id is cached by now
    base = fingerprint(resolve_model_path(cfg.model))
    if ckpt is not None:  # the checkpoint's run folder: resume=PATH may point at another one
        check_base(ckpt.path.resolve().parent.parent, base, "train.resume")
    if dist.is_main:
        record_base(out, base)
    model = s.model
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = build_adamw(params, t_cfg, dist.device)
    g_rows = t_cfg.micro_batch_size * t_cfg.grad_accum * dist.world_size
    steps_per_epoch = math.ceil(len(s.rows) / g_rows)
    total_steps = t_cfg.max_steps or steps_per_epoch * t_cfg.epochs
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda st: lr_factor(st, t_cfg.warmup_steps, total_steps)
    )

    if t_cfg.warmup_steps >= total_steps and dist.is_main:  # the paper's own 100 warmup steps over 18 steps do this
        console.warn(f"train.warmup_steps={t_cfg.warmup_steps} is not below the run's {total_steps} optimizer steps: the learning "
                     f"rate rises to {t_cfg.lr * lr_factor(total_steps - 1, t_cfg.warmup_steps, total_steps):.3g} (train.lr={t_cfg.lr:g}) "
                     "at the last step and the cosine decay never starts; lower train.warmup_steps if that is not meant")
    data_id = training_rows_id(s.rows)  # recorded in every checkpoint; a resume must find the same rows
    start_step = restore(cfg, ckpt, dist, model, optimizer, scheduler, data_id) if ckpt is not None else 0

    if dist.is_main:
        save_config(cfg, os.path.join(out, "config.yaml"))
        save_run_data(out, s.report, s.manifest)
    logger = MetricsLogger(out, enabled=dist.is_main, resume_step=start_step)
    mem = PeakMemory(dist.device)
    if start_step == 0:
        logger.text("config", "```\n" + yaml.safe_dump(to_dict(cfg), allow_unicode=True) + "\n```")
    # each rank's loss is its share of the global batch's sum / n_sup; FSDP and all_reduce_grads both
    # average over ranks, so the sum the step needs is world_size x their mean
    loss_scale = dist.world_size if dist.distributed else 1
    row_sup = [supervised_tokens(r) for r in s.rows]
    row_real = [sum(len(ex["input_ids"]) for ex in r) for r in s.rows]

    auto_batch = AutoMicroBatch(cfg, dist, model, params, out, logger, start_step)
    if dist.is_main:
        print(console.train_banner(
            cfg=cfg, model=model, dist=dist, report=s.report, trainable=sum(p.numel() for p in params), n_rows=len(s.rows),
            n_val_rows=len(s.val_rows), steps_per_epoch=steps_per_epoch, total_steps=total_steps, global_rows=g_rows,
            output_dir=out, start_step=start_step, resume_path=ckpt.path if ckpt is not None else None,
        ), flush=True)
    bar = console.Progress(total_steps, "train", "step", initial=start_step, enabled=dist.is_main and t_cfg.progress, every=t_cfg.log_every)
    fault_step = int(os.environ.get("MEDSLM_FAULT_AT_STEP", "0"))  # tests: SIGKILL after this checkpoint
    # a resumed run reports the checkpoint's numbers until it takes a step of its own (a finished
    # run resumed takes none: its result is the checkpoint's, not nan)
    last_loss = float(ckpt.state.get("last_loss", float("nan"))) if ckpt is not None else float("nan")
    val_losses: list[float] = [float(v) for v in ckpt.state.get("val_losses", [])] if ckpt is not None else []
    readback = StepReadback(optimizer, dist.device)  # unfused AdamW: each step's numbers now; fused: a step later

    def finish(n: StepNumbers) -> None:
        """A step's numbers have reached the host: check them (raise on nan/inf), log them."""
        nonlocal last_loss
        last_loss = n.loss_sum / max(1, n.host["supervised_tokens"])
        check_step(n.step, last_loss, n.grad_norm, out)  # the same numbers on every rank: all stop together
        tok_s = n.host["tokens"] / n.step_time_s if n.step_time_s > 0 else 0.0
        logged = n.step % t_cfg.log_every == 0 or n.step == total_steps
        if logged:
            rec = {"epoch": n.step / steps_per_epoch, "loss": last_loss, "lr": n.host["lr"], "grad_norm": n.grad_norm,
                   "tokens": n.host["tokens"], "supervised_tokens": n.host["supervised_tokens"], "tokens_per_s": tok_s,
                   "step_time_s": n.step_time_s, "peak_mem_gb": n.peak_gb}
            nvml = mem.nvml_peak_gb()
            if nvml is not None:
                rec["nvml_peak_gb"] = nvml
            logger.log(n.step, rec)
        bar.update(1, **_progress_fields(n.step, steps_per_epoch, last_loss, n.host["lr"], tok_s, n.peak_gb if logged else None))

    step = start_step
    model.train()
    with managed_collector(t_cfg.gc) as collector:  # Python's collector between steps, not inside them
        while step < total_steps:
            epoch, in_epoch = divmod(step, steps_per_epoch)
            order = epoch_order(len(s.rows), t_cfg.seed, epoch)
            step_idx = order[in_epoch * g_rows : (in_epoch + 1) * g_rows]
            n_sup = sum(row_sup[i] for i in step_idx)  # the whole global batch, every rank alike
            n_real = sum(row_real[i] for i in step_idx)

            def micro_steps() -> torch.Tensor:  # read micro_batch_size/grad_accum here: auto_micro_batch may change them
                # the loss sum stays on the device: the host reads it with the gradient norm (StepReadback)
                local_sum = torch.zeros((), dtype=torch.float64, device=dist.device)
                for idx in step_slices(order, in_epoch, t_cfg.micro_batch_size, t_cfg.grad_accum, dist.world_size, dist.rank):
                    rows = [s.rows[i] for i in idx] or [_null_row(s.pad)]
                    batch = s.collate(rows)
                    with s.precision.step():
                        with s.precision.forward():
                            loss_sum, _ = batch_loss_sum(model, batch, s.packed, dist.device)
                        (loss_sum * (loss_scale / max(1, n_sup))).backward()
                    local_sum += loss_sum.detach().double()
                return local_sum

            local_sum = auto_batch.run(step + 1, micro_steps)
            if dist.distributed and not cfg.distributed.fsdp:
                D.all_reduce_grads(dist, params)
            grad_norm = D.full_tensor(torch.nn.utils.clip_grad_norm_(params, t_cfg.max_grad_norm))
            peak = torch.full((), mem.peak_gb(), dtype=torch.float64, device=dist.device)  # a fill, not a copy: no wait
            values = torch.stack([D.all_reduce_sum(dist, local_sum), grad_norm.detach().double(), D.all_reduce_max_tensor(dist, peak)])
            host = {"tokens": n_real, "supervised_tokens": n_sup, "lr": scheduler.get_last_lr()[0]}
            for numbers in readback.submit(step + 1, values, host):  # unfused: this step, checked before its update
                finish(numbers)
            optimizer.step()  # fused: skipped on the device if this step's numbers are not finite
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            collector.after_step()
            step += 1
            epoch_end = step % steps_per_epoch == 0 or step == total_steps
            validating = epoch_end and bool(s.val_rows)
            saving = (t_cfg.save_every and step % t_cfg.save_every == 0) or step == total_steps
            # a checkpoint's step, and the steps before a validation pass, are checked (and logged) first;
            # only then: an epoch of a few steps would otherwise make the host wait every few steps
            if validating or saving:
                for numbers in readback.flush():
                    finish(numbers)
            if epoch_end:
                vl = validation_loss(s, dist)
                if vl is not None:
                    check_validation(step, vl, out)  # every rank holds the same all-reduced value: all stop together
                    val_losses.append(vl)
                    bar.note(f"validation loss {vl:.4f} after step {step} (epoch {step / steps_per_epoch:.2f})")
                    logger.log(step, {"epoch": step / steps_per_epoch, "val_loss": vl}, kind="val")
                model.train()
            if saving:
                _save(s, optimizer, scheduler, step, g_rows, out, data_id, {"last_loss": last_loss, "val_losses": val_losses})
                if fault_step and step == fault_step:
                    os.kill(os.getpid(), signal.SIGKILL)
            if validating or saving:
                readback.pause_ended()
    bar.close()
    adapter = D.trainable_state_dict(model)  # the step-`step` checkpoint held it: checked finite there
    adapter_dir = os.path.join(out, "adapter" if cfg.lora.enabled else "model")  # full fine-tuning: the whole model
    if dist.is_main:

        def companions(d: Path) -> None:
            rename_saved_adapter(d, model)  # under the shipped checkpoint's module names (multimodal)
            s.tokenizer.save_pretrained(str(d))
            save_config(cfg, d / "medslm_config.yaml")

        save_adapter(model, adapter, adapter_dir, also=companions)
    D.barrier(dist)
    logger.close()
    mem.close()
    result: dict[str, Any] = {
        "output_dir": out,
        "adapter_dir": adapter_dir,
        "steps": step,
        "rank": dist.rank,
        "final_loss": last_loss,
        "val_losses": val_losses,
        "peak_mem_gb": mem.peak_gb(),
        "packing_efficiency": s.report["packing_efficiency"],
        "acceleration": {**s.acceleration, **(compile_report() if cfg.model.compile else {})},
        "adamw": "fused" if readback.deferred else "unfused",  # train.adamw as resolved (medslm.optimizer)
        "micro_batch_size": t_cfg.micro_batch_size,
        "grad_accum": t_cfg.grad_accum,
    }
    if keep_model:
        result["model"], result["tokenizer"] = model, s.tokenizer
    return result


def _progress_fields(step: int, steps_per_epoch: int, loss: float, lr: float, tok_s: float, peak_gb: float | None) -> dict[str, str]:
    fields = {"epoch": f"{step / steps_per_epoch:.2f}", "loss": f"{loss:.4f}", "lr": f"{lr:.2e}", "tok/s": f"{tok_s:,.0f}"}
    if peak_gb is not None:
        fields["peak"] = f"{peak_gb:.2f} GB"
    return fields


def _save(s: Setup, optimizer: Any, scheduler: Any, step: int, g_rows: int, out: str, data_id: dict[str, Any],
          results: dict[str, Any]) -> None:
    dist = s.dist
    adapter = D.trainable_state_dict(s.model)  # collective
    check_adapter(adapter, step, out)
    osd = D.optimizer_state(s.model, optimizer, dist)  # collective
    rngs = D.all_gather_object(dist, rng_state())
    if dist.is_main:
        state = {
            "global_step": step,
            "optimizer": osd,
            "scheduler": scheduler.state_dict(),
            "rng": rngs,
            "world_size": dist.world_size,
            "global_batch_rows": g_rows,
            "data": data_id,
            **results,  # the last loss and the validation losses so far: what a resumed run reports
        }
        save_checkpoint(out, step, adapter, state, yaml.safe_dump(to_dict(s.cfg), allow_unicode=True), s.cfg.train.keep_checkpoints)
    D.barrier(dist)


@torch.no_grad()
def validation_loss(s: Setup, dist: D.DistState) -> float | None:
    """Token-weighted loss over the validation rows, split across ranks."""
    if not s.val_rows:
        return None
    s.model.eval()
    mine = s.val_rows[dist.rank :: dist.world_size]
    m = s.cfg.train.micro_batch_size
    n_batches = math.ceil(math.ceil(len(s.val_rows) / dist.world_size) / m)  # equal on every rank
    total = torch.zeros(2, dtype=torch.float64)
    for b in range(n_batches):
        rows = mine[b * m : (b + 1) * m] or [_null_row(s.pad)]
        with s.precision.step(), s.precision.forward():
            loss_sum, n = batch_loss_sum(s.model, s.collate(rows), s.packed, dist.device)
        if n:
            total += torch.tensor([float(loss_sum), n], dtype=torch.float64)
    total = D.all_reduce_sum(dist, total)
    return float(total[0] / total[1]) if total[1] > 0 else None
