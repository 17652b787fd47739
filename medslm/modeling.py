"""Models are built and quantised here, and nowhere else; parallelism is applied afterwards.

``model.name_or_path`` is a local folder, a hub id, or ``embedded`` / ``embedded:tiny-gemma3``: a
tiny randomly initialised model of a real architecture whose config ships in
``medslm/assets/models``. The embedded model is written once (seeded) to a cache folder and then
loaded through exactly the same ``from_pretrained`` + bitsandbytes + PEFT path as a real model.
A hub id is resolved through the HF cache first, with one error line when it cannot be had
(:mod:`medslm.hub`); a multimodal checkpoint such as MedGemma loads as its language model alone
(``model.text_only``) or whole, with LoRA on the language model only (:mod:`medslm.multimodal`).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch

from medslm import files
from medslm.cli import UserError, first_line
from medslm.config import ConfigError
from medslm.weights import check_loaded_weights, check_local_files

MODELS_DIR = Path(__file__).resolve().parent / "assets" / "models"
EMBEDDED = {"embedded": "tiny-llama", "embedded:tiny-llama": "tiny-llama", "embedded:tiny-gemma3": "tiny-gemma3"}


@dataclass
class ModelConfig:
    """The base model and how it is loaded."""

    name_or_path: str = "embedded"  # a local folder, a hub id (the HF cache is tried first), or embedded / embedded:tiny-gemma3
    quantization: Literal["nf4", "none"] = "nf4"  # nf4: QLoRA's 4-bit base; none: the plain-LoRA ablation in compute_dtype
    double_quant: bool = True  # NF4 only: quantise the quantisation constants too (QLoRA's double quantisation)
    compute_dtype: Literal["auto", "float32", "bfloat16"] = "auto"  # auto: bf16 on GPU, fp32 on CPU
    attention: Literal["auto", "packed", "sdpa", "eager"] = "auto"  # auto: packed when data.packing
    gradient_checkpointing: bool = True  # recompute each decoder layer in backward (activation checkpointing)
    # auto: LoRA runs in compute_dtype (bf16 on GPU) from fp32 weights, like the base; float32:
    # PEFT's default, which copies every adapter input to fp32 (1.2 GB more at MedGemma 4B, 4 x 2048)
    lora_compute_dtype: Literal["auto", "float32"] = "auto"
    # multimodal checkpoints (MedGemma): true loads only the language model and its head; false the whole model (vision tower frozen)
    text_only: bool = True
    # the GPU fast path (medslm/acceleration.py); on CPU, auto changes nothing
    compile: bool = False  # torch.compile each decoder layer (regional); the first steps pay the compile
    # where compiled layers draw LoRA's dropout masks: eager, torch's generator (the same masks as
    # the uncompiled path, so compile on/off is the same run); inductor, its own fused philox draws
    compile_rng: Literal["eager", "inductor"] = "eager"
    # how compiled layers dequantise NF4 weights (with the fused LoRA forward): inductor, torch ops it
    # turns into a kernel of its own (no call back into Python per projection, medslm/nf4.py);
    # bitsandbytes, its own operators
    compile_nf4: Literal["inductor", "bitsandbytes"] = "inductor"
    # inductor's combo kernels: a compiled layer's independent small kernels (the casts of its 14
    # LoRA weights to the compute dtype, among others) launched as one, which shortens the host's
    # launch work where the forward waits on it (1.03x a step on one H100, BENCHMARKS.md)
    compile_combo_kernels: bool = True
    # how compiled layers round: eager, to the compute dtype wherever the uncompiled layer stores a
    # result (inductor's emulate_precision_casts), so compile on/off is the same run in bf16 too;
    # fused, fp32 across each fused kernel (nearer fp32, another run than eager's; BENCHMARKS.md)
    compile_rounding: Literal["eager", "fused"] = "eager"
    fused_kernels: Literal["auto", "liger", "none"] = "auto"  # auto: Liger's kernels on CUDA if installed, unless compiled
    lora_forward: Literal["auto", "fused", "peft"] = "auto"  # auto: medslm/lora_fast.py on CUDA, PEFT's forward on CPU
    trust_remote_code: bool = False  # run Python code shipped with a hub model (off: transformers' own classes only)
    embedded_seed: int = 0  # init seed of the embedded tiny model

    def validate(self) -> None:
        if self.name_or_path.startswith("embedded") and self.name_or_path not in EMBEDDED:
            raise ConfigError(f"model.name_or_path: unknown embedded model {self.name_or_path!r}; use one of {sorted(EMBEDDED)}")


@dataclass
class LoraConfigSection:
    """The LoRA adapter (the only trained weights), or full fine-tuning when disabled."""

    enabled: bool = True  # false: full fine-tuning, every weight trains (needs model.quantization: none)
    r: int = 16  # adapter rank
    alpha: int = 64  # scaling numerator: the adapter's output is multiplied by alpha / r
    dropout: float = 0.05  # dropout on the adapter's input, in training only
    # module names, or all-linear: every linear layer of the decoder layers (never the output head or a vision tower)
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])

    def validate(self) -> None:
        if self.r < 1:
            raise ConfigError(f"lora.r must be >= 1, got {self.r}")
        if self.alpha <= 0:  # the adapter's scale is alpha / r: 0 trains an adapter that changes nothing
            raise ConfigError(f"lora.alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora.dropout must be in [0, 1), got {self.dropout}")
        if not self.target_modules:
            raise ConfigError("lora.target_modules must name at least one module (or all-linear)")


def cache_dir() -> Path:
    return Path(os.environ.get("MEDSLM_CACHE", Path.home() / ".cache" / "medslm"))


# Bump when the embedded models' initialisation changes: it is part of the cache folder's name,
# so weights written by an older init are never reused.
EMBEDDED_INIT_VERSION = 2


def init_output_head(model: Any, generator: torch.Generator) -> None:
    """Draw the output head (for Gemma, the tied embedding) with std 1/sqrt(hidden_size).

    The configs' ``initializer_range`` (0.02) gives rows of norm 0.02 * sqrt(128) = 0.23: no
    logit can exceed about 2.6, and since LoRA (on all-linear) never trains the head, training
    stalls at a loss floor (5.7 on 32 items). At 1/sqrt(hidden_size) (rows of norm ~1, logits up
    to ~11, above log(4096) = 8.3) memorising a few items drives the loss below 0.1: 8 items,
    20 steps at tiny.yaml's lr, 8.4 -> 0.09 (``tests/test_realckpt.py``). The rest of the model
    keeps transformers' init."""
    head = model.get_output_embeddings().weight
    with torch.no_grad():
        head.copy_(torch.randn(head.shape, generator=generator, dtype=head.dtype) / head.shape[1] ** 0.5)


def materialise_embedded(name: str, seed: int = 0) -> Path:
    """Write the seeded random tiny model once and return its folder (safe under many ranks)."""
    from transformers import AutoConfig, AutoModelForCausalLM

    from medslm.console import quiet_hf_progress

    arch = EMBEDDED[name]
    cfg_dir = MODELS_DIR / arch
    config = AutoConfig.from_pretrained(cfg_dir)
    stamp_text = f"{config.to_json_string(use_diff=False)}|{seed}|init-v{EMBEDDED_INIT_VERSION}"
    stamp = hashlib.sha256(stamp_text.encode()).hexdigest()[:10]
    dest = cache_dir() / "models" / f"{arch}-seed{seed}-{stamp}"
    if (dest / "model.safetensors").is_file():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    # One writer at a time: ranks that start together on an empty cache wait for the first to publish.
    with open(dest.parent / f".{dest.name}.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (dest / "model.safetensors").is_file():
            return dest
        if dest.exists():  # a folder left half-written by a killed writer (publishing is a rename, so rare)
            shutil.rmtree(dest)
        tmp = Path(tempfile.mkdtemp(dir=dest.parent, prefix=f".{arch}-"))
        try:
            # the caller's random stream is the same whether or not the cache was warm
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
            init_output_head(model, torch.Generator().manual_seed(seed + 1))
            with quiet_hf_progress(True):
                model.save_pretrained(tmp, safe_serialization=True)
            tmp.chmod(0o777 & ~files._umask())  # a team shares the cache
            tmp.rename(dest)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


def resolve_model_path(cfg: ModelConfig) -> str:
    """A local folder for the model: the embedded one, the given path, or a hub id's cached snapshot.

    A hub id that is neither cached nor reachable is one error line (:func:`medslm.hub.resolve`)."""
    from medslm import hub

    if cfg.name_or_path in EMBEDDED:
        return str(materialise_embedded(cfg.name_or_path, cfg.embedded_seed))
    path = Path(cfg.name_or_path).expanduser()
    looks_local = cfg.name_or_path.startswith((".", "/", "~")) or path.exists()
    if looks_local and not (path / "config.json").is_file():
        raise UserError(f"model.name_or_path: {path} does not exist or has no config.json")
    return str(path) if looks_local else hub.resolve(cfg.name_or_path, "model.name_or_path")


def embedded_tokenizer_for(cfg: ModelConfig) -> str | None:
    """The tokenizer that goes with the model: the embedded one for embedded models."""
    if cfg.name_or_path in EMBEDDED:
        return None  # medslm.tokenizer.load_tokenizer(None) -> the embedded tokenizer
    return resolve_model_path(cfg)


def compute_dtype(cfg: ModelConfig, device: torch.device) -> torch.dtype:
    if cfg.compute_dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return {"float32": torch.float32, "bfloat16": torch.bfloat16}[cfg.compute_dtype]


def attention_impl(cfg: ModelConfig, packed: bool) -> str:
    if cfg.attention == "packed" or (cfg.attention == "auto" and packed):
        from medslm.attention import register

        return register()
    return "sdpa" if cfg.attention == "auto" else cfg.attention


def load_base_model(cfg: ModelConfig, device: torch.device, packed: bool = True, progress: bool = False) -> Any:
    """A causal LM, NF4-quantised with double quantisation unless ``quantization: none``.

    A multimodal checkpoint (MedGemma) loads as its language model alone with ``text_only``, else
    whole with NF4 on the language model only (:mod:`medslm.multimodal`). ``progress`` shows
    transformers' loading bars (only on a terminal)."""
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    from medslm import multimodal
    from medslm.console import quiet_hf_progress

    path = resolve_model_path(cfg)
    dtype = compute_dtype(cfg, device)
    attn = attention_impl(cfg, packed)
    kwargs: dict[str, Any] = {
        "dtype": dtype,
        "attn_implementation": attn,
        "trust_remote_code": cfg.trust_remote_code,
        "use_safetensors": True,
        "device_map": {"": device},
    }
    try:
        config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    except (OSError, ValueError) as exc:
        raise UserError(f"model.name_or_path: cannot read the config of {path!r}: {exc}") from None
    layout = multimodal.CAUSAL
    check_local_files(path)  # a truncated shard is named before transformers reads it
    kwargs["output_loading_info"] = True  # missing or reshaped weights are checked below, not left at random init
    if multimodal.is_multimodal(config):
        layout = multimodal.shipped_layout(config, cfg.text_only)
        if cfg.text_only:
            kwargs.update(multimodal.text_only_kwargs(config, path))
        else:  # the vision tower is never run on text: keep it out of the packed-attention path
            kwargs["attn_implementation"] = {"text_config": attn, "vision_config": "sdpa", "": "sdpa"}
    if cfg.quantization == "nf4":
        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=cfg.double_quant,
            bnb_4bit_compute_dtype=dtype,
            bnb_4bit_quant_storage=torch.uint8,
            llm_int8_skip_modules=multimodal.full_quantization_skips(layout) if layout.kind == "full" else None,
        )
    # bitsandbytes logs that an optional CPU kernel package is absent, then uses its own kernel
    logging.getLogger("bitsandbytes.backends.cpu.ops").setLevel(logging.ERROR)
    with warnings.catch_warnings(), quiet_hf_progress(not progress), _quiet_load_report(layout.kind == "text_only"):
        warnings.filterwarnings("ignore", message=".*is deprecated.*", category=FutureWarning)
        try:
            model, info = AutoModelForCausalLM.from_pretrained(path, **kwargs)
        except torch.cuda.OutOfMemoryError:
            raise
        except (OSError, RuntimeError, ValueError, AssertionError) as exc:  # a checkpoint that does not fit its config
            raise UserError(f"model.name_or_path: cannot load {path!r}: {first_line(exc)}") from None
    if layout.kind == "text_only":
        multimodal.check_text_weights_loaded(info, path)
    check_loaded_weights(model, info, path)
    model.medslm_layout = layout
    model.config.use_cache = False
    model.config.get_text_config().use_cache = False  # a multimodal config keeps its own in text_config
    for module in model.modules():
        # bitsandbytes repacks NF4 weights in place for its CPU inference kernel the first time an
        # eval-mode forward runs; keep one layout so validation between training steps and the
        # backward pass see the same weights
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@contextlib.contextmanager
def _quiet_load_report(on: bool) -> Any:
    """transformers' load report lists the vision tower's weights as unexpected in a text-only
    load; that is the point of it (missing weights are checked by medslm instead)."""
    if not on:
        yield
        return
    from transformers.utils import logging as hf_logging

    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def apply_lora(model: Any, lora: LoraConfigSection, gradient_checkpointing: bool = True) -> Any:
    """Wrap ``model`` with a PEFT LoRA adapter; only adapter weights are trainable.

    ``lora.enabled: false`` is full fine-tuning (the paper's Table 5 baseline): no adapter, every
    weight of the (unquantised) model trains."""
    from peft import LoraConfig, get_peft_model

    if not lora.enabled:
        if gradient_checkpointing:
            enable_checkpointing(model)
        for p in model.parameters():
            p.requires_grad_(True)
        return model

    from medslm.multimodal import lora_target_modules

    targets = lora_target_modules(model, lora.target_modules)
    peft_cfg = LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=targets,
        bias="none",
        task_type="CAUSAL_LM",
    )
    if gradient_checkpointing:
        enable_checkpointing(model)
    with warnings.catch_warnings():  # peft still calls transformers' deprecated checkpointing names
        warnings.filterwarnings("ignore", message=".*is deprecated.*", category=FutureWarning)
        return get_peft_model(model, peft_cfg)


class AdapterPrecision:
    """Run the LoRA adapter in the base's compute dtype while its weights stay fp32.

    PEFT copies each adapter input to the adapter's dtype (fp32) and applies dropout there: at
    MedGemma 4B's shape that is a 4 x 2048 x 10240 fp32 copy, mask and dropped copy for one MLP
    projection alone. With ``lora_compute_dtype: auto`` and a bf16 compute dtype, forward runs
    under ``torch.autocast(bf16)`` (the adapter's matmuls take bf16 copies of its small weights;
    gradients and AdamW stay fp32) with PEFT's input cast switched off. The switch must also
    cover backward, where activation checkpointing recomputes the forward, so the trainer wraps
    forward + backward in :meth:`step` and forward alone in :meth:`forward`. A no-op in fp32.
    """

    def __init__(self, model: Any, cfg: ModelConfig, device: torch.device):
        self.model = model
        self.device = device
        self.dtype = compute_dtype(cfg, device)
        # a PEFT adapter only: full fine-tuning has no adapter input to keep in bf16
        self.active = cfg.lora_compute_dtype == "auto" and self.dtype != torch.float32 and hasattr(model, "peft_config")
        self._disable_cast = None
        if self.active:
            try:
                from peft.helpers import disable_input_dtype_casting
            except ImportError:  # an older peft: keep its fp32 path
                self.active = False
            else:
                self._disable_cast = disable_input_dtype_casting

    def step(self) -> Any:
        return self._disable_cast(self.model) if self.active else contextlib.nullcontext()

    def forward(self) -> Any:
        return torch.autocast(self.device.type, dtype=self.dtype) if self.active else contextlib.nullcontext()


def enable_checkpointing(model: Any) -> None:
    """Non-reentrant activation checkpointing (the new name since transformers 5.2x, else the old)."""
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
    else:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})


def decoder_layers(model: Any) -> list[torch.nn.Module]:
    """The transformer blocks of a (PEFT-wrapped) causal LM, for per-layer sharding and analysis."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    for attr in ("model.layers", "model.language_model.layers", "language_model.model.layers", "transformer.h"):
        obj = base
        try:
            for part in attr.split("."):
                obj = getattr(obj, part)
        except AttributeError:
            continue
        return list(obj)
    raise ValueError(f"cannot find the decoder layers of {type(base).__name__}")
