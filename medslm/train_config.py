"""``TrainConfig``: the one typed config of ``train.py`` (YAML, then ``--section.key=value``)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from medslm.config import ConfigError
from medslm.dataset import DataConfig
from medslm.modeling import LoraConfigSection, ModelConfig

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO_ROOT / "configs" / "tiny.yaml"


@dataclass
class TrainSection:
    lr: float = 2e-4
    weight_decay: float = 0.0
    adam_betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    warmup_steps: int = 100
    epochs: int = 3
    max_steps: int = 0  # > 0: stop after this many optimizer steps (and schedule over them)
    micro_batch_size: int = 4  # rows per forward pass per rank
    grad_accum: int = 8
    max_grad_norm: float = 1.0
    seed: int = 0
    save_every: int = 0  # optimizer steps between checkpoints; 0: only at the end
    keep_checkpoints: int = 2
    output_dir: str = "runs/tiny"
    resume: str | None = None  # None, "auto" (latest checkpoint in output_dir, if any) or a checkpoint path
    log_every: int = 1
    device: str = "auto"  # auto | cpu | cuda
    progress: bool = True
    auto_micro_batch: bool = False  # on CUDA OOM in the first steps: halve micro_batch_size, multiply grad_accum (same global batch)

    def validate(self) -> None:
        for key in ("micro_batch_size", "grad_accum", "epochs", "log_every", "keep_checkpoints"):
            if getattr(self, key) < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {getattr(self, key)}")
        for key in ("warmup_steps", "max_steps", "save_every"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)}")
        if self.lr <= 0:
            raise ConfigError(f"train.lr must be positive, got {self.lr}")
        if len(self.adam_betas) != 2:
            raise ConfigError(f"train.adam_betas needs two values, got {self.adam_betas}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"train.device must be auto, cpu or cuda, got {self.device!r}")


@dataclass
class DistributedSection:
    fsdp: bool = True  # FSDP2 over the LoRA adapter only; ignored in a world of one


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
        self.data.validate()
        self.train.validate()


# Keys that must match for a checkpoint to be resumed: they change what the next step computes.
RESUME_MUST_MATCH = (
    "model.name_or_path",
    "model.quantization",
    "model.double_quant",
    "model.embedded_seed",
    "lora.r",
    "lora.alpha",
    "lora.dropout",
    "lora.target_modules",
    "data.medqa",
    "data.kormedmcqa",
    "data.ratio",
    "data.upsample",
    "data.split",
    "data.max_seq_len",
    "data.packing",
    "data.padding",
    "data.tokenizer",
    "data.answer_format",
    "data.seed",
    "train.lr",
    "train.weight_decay",
    "train.adam_betas",
    "train.warmup_steps",
    "train.epochs",
    "train.max_steps",
    "train.seed",
)
