"""``TrainConfig``: the one typed config of ``train.py`` (YAML, then ``--section.key=value``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from medslm.config import ConfigError
from medslm.dataset import DataConfig
from medslm.modeling import LoraConfigSection, ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"


@dataclass
class TrainSection:
    """The optimisation, checkpoints and logs."""

    lr: float = 2e-4  # AdamW peak learning rate (linear warmup, then cosine decay to 0)
    weight_decay: float = 0.0  # AdamW weight decay on the adapter
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])  # AdamW beta1, beta2
    warmup_steps: int = 100  # optimizer steps of linear warmup
    epochs: int = 3  # passes over the training rows (unless max_steps)
    max_steps: int = 0  # > 0: stop after this many optimizer steps (and schedule over them)
    micro_batch_size: int = 4  # rows per forward pass per rank
    grad_accum: int = 8  # micro-batches per optimizer step; global batch = micro_batch_size x grad_accum x ranks
    max_grad_norm: float = 1.0  # gradient clipping (global L2 norm over the adapter)
    seed: int = 0  # row order, adapter init and dropout
    save_every: int = 0  # optimizer steps between checkpoints; 0: only at the end
    keep_checkpoints: int = 2  # newest checkpoints kept in output_dir/checkpoints
    output_dir: str = "runs/tiny"  # the run folder: config.yaml, metrics.jsonl, tb/, checkpoints/, adapter/
    resume: str | None = None  # None, "auto" (latest checkpoint in output_dir, if any) or a checkpoint path
    overwrite: bool = False  # a fresh start in an output_dir that holds a run: delete its contents first
    log_every: int = 1  # optimizer steps between metrics records (and progress lines in a log)
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True  # a bar on a terminal, a plain line every log_every steps in a log; false: neither
    auto_micro_batch: bool = False  # on CUDA OOM in the first steps: halve micro_batch_size, multiply grad_accum (same global batch)
    adamw: Literal["auto", "fused", "unfused"] = "auto"  # auto: fused on CUDA (the nan guard on the device, the host one step ahead; medslm.optimizer), unfused elsewhere
    gc: Literal["managed", "python"] = "managed"  # managed: Python's cyclic collector runs between steps, not inside them (medslm.pygc) | python

    def validate(self) -> None:
        for key in ("micro_batch_size", "grad_accum", "epochs", "log_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "max_steps", "save_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if not 0 < self.lr <= 1:  # past 1 AdamW's update overflows (1e300: a crash mid-step), and no sane run uses it
            raise ConfigError(f"train.lr must be in (0, 1] (QLoRA uses ~1e-4 to 1e-3), got {self.lr}")
        if not 0 <= self.seed < 2**32:  # torch, numpy and CUDA generators all take it
            raise ConfigError(f"train.seed must be in [0, 2**32), got {self.seed}")
        if self.max_grad_norm <= 0:
            raise ConfigError(f"train.max_grad_norm must be positive, got {self.max_grad_norm}")
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay must be >= 0, got {self.weight_decay}")
        if len(self.adam_betas) != 2 or not all(0.0 <= b < 1.0 for b in self.adam_betas):
            raise ConfigError(f"train.adam_betas needs two values in [0, 1), got {self.adam_betas}")
        if not self.output_dir.strip():
            raise ConfigError("train.output_dir is empty: name the folder this run writes to")
        if self.resume is not None and not self.resume.strip():
            raise ConfigError("train.resume is empty: use auto, a checkpoint folder, or leave it unset")
        if self.overwrite and self.resume == "auto":
            raise ConfigError("train.overwrite=true deletes the run in train.output_dir, train.resume=auto continues it: choose one")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class DistributedSection:
    """Multi-GPU training under torchrun."""

    fsdp: bool = True  # FSDP2 over the LoRA adapter only; ignored in a world of one
    # ranks of the run; train.py writes it to config.yaml, and a value given is checked against torchrun's
    world_size: int | None = None


@dataclass
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    lora: LoraConfigSection = field(default_factory=LoraConfigSection)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainSection = field(default_factory=TrainSection)
    distributed: DistributedSection = field(default_factory=DistributedSection)

    def validate(self) -> None:
        self.model.validate()
        self.lora.validate()
        if not self.lora.enabled and self.model.quantization != "none":
            raise ConfigError("lora.enabled=false is full fine-tuning: every weight trains, which NF4 weights cannot; "
                              "set model.quantization=none")
        self.data.validate()
        self.train.validate()


# Keys that may differ between a checkpoint and the run that resumes it: they change where and
# how often the run writes, or how a step is computed in memory, never what an optimizer step
# computes. Every other key must match (``medslm.resume.check_resume``); the global batch
# (micro_batch_size x grad_accum x world size) must match too, so micro_batch_size and grad_accum
# may trade against each other and against the number of ranks.
RESUME_MAY_CHANGE = (
    "model.gradient_checkpointing",
    "model.compile",
    "model.compile_rng",
    "model.compile_nf4",
    "model.compile_combo_kernels",
    "model.compile_rounding",
    "model.fused_kernels",
    "model.lora_forward",
    "data.packed",
    "train.micro_batch_size",
    "train.grad_accum",
    "train.auto_micro_batch",
    "train.gc",
    "train.adamw",
    "train.save_every",
    "train.keep_checkpoints",
    "train.output_dir",
    "train.resume",
    "train.overwrite",
    "train.log_every",
    "train.progress",
    "distributed.fsdp",
    "distributed.world_size",  # recorded by train.py; the global batch is checked instead
)
