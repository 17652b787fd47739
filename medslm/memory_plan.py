"""Will it fit? GPU memory of a training step, per GPU, from the model's config.json alone.

``python train.py --config FILE --estimate-memory [--gpus N]`` reads the run's model config (no
weights: a local ``config.json``, the HF cache, or the shapes shipped in
``medslm/assets/model_shapes.json``) and counts the bytes of every tensor the step holds at its
peak, the way ``torch.cuda.max_memory_allocated`` counts them:

- **state**: the base weights (NF4: half a byte per weight plus the block constants — with double
  quantisation one byte per 64 weights and an fp32 per 256 blocks — and the non-quantised
  embedding, output head and norms in the compute dtype; or all in the compute dtype), the LoRA
  parameters, their gradients and AdamW's two moments (fp32; FSDP divides these by the world
  size, the quantised base stays replicated);
- **activations**: the decoder layers' inputs kept by activation checkpointing plus one layer
  recomputed during backward, or every layer's saved tensors without checkpointing. A layer's
  saved tensors are listed op by op (norm inputs in fp32, projections, LoRA dropout output and
  mask, attention output, the gated MLP's four intermediates) in :func:`layer_activations`;
- **logits**: only supervised positions (``logits_to_keep``), in bf16, fp32 and their gradient;
- **runtime overhead** (not in ``peak_gb``, in ``gpu_total_gb``): the CUDA context and the caching
  allocator's reserve, which ``nvidia-smi`` shows on top of allocated tensors.

Checked against measurement (tests/test_memory_plan.py, BENCHMARKS.md): within 15% of the H100's
``max_memory_allocated`` at MedGemma 4B's shape, and within 20% of bench/memory.py's live tensor
bytes on CPU shapes (``device="cpu"``: dropout masks in the input's dtype instead of one byte).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from medslm.cli import UserError

SHAPES_FILE = Path(__file__).resolve().parent / "assets" / "model_shapes.json"
GPU_SIZES_GB = (24, 40, 48, 80)  # nominal sizes, counted as that many 1e9 bytes (see gpu_bytes)
CUDA_CONTEXT_GB = 0.6  # CUDA context + cuBLAS/NCCL workspaces, outside torch's allocator
ALLOCATOR_RESERVE = 0.10  # the caching allocator's rounding and cached free blocks, of the peak
NF4_BLOCK = 64
DQ_BLOCK = 256
ALL_LINEAR = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
SANDWICH_NORMS = {"gemma2", "gemma3_text", "gemma3"}  # post-attention and post-feed-forward norms
QK_NORM = {"gemma3_text", "gemma3", "qwen3", "olmo2"}
GB = 1e9


# ---------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------


@dataclass
class ModelShape:
    """What the planner reads from a config.json (the text model's, for a multimodal one)."""

    model_type: str
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    vocab_size: int
    tie_word_embeddings: bool
    attention_bias: bool = False
    vision_params: int = 0  # a multimodal checkpoint's vision tower and projector (not trained)
    source: str = ""

    @classmethod
    def from_config(cls, cfg: dict[str, Any], source: str = "") -> ModelShape:
        text = cfg.get("text_config") or cfg
        tie = cfg.get("tie_word_embeddings", text.get("tie_word_embeddings", True))
        try:
            h = int(text["hidden_size"])
            heads = int(text["num_attention_heads"])
            shape = cls(
                model_type=str(text.get("model_type") or cfg.get("model_type") or "llama"),
                hidden_size=h,
                intermediate_size=int(text["intermediate_size"]),
                num_hidden_layers=int(text["num_hidden_layers"]),
                num_attention_heads=heads,
                num_key_value_heads=int(text.get("num_key_value_heads") or heads),
                head_dim=int(text.get("head_dim") or h // heads),
                vocab_size=int(text["vocab_size"]),
                tie_word_embeddings=bool(tie),
                attention_bias=bool(text.get("attention_bias", False)),
                source=source,
            )
        except KeyError as exc:
            raise UserError(f"{source or 'config.json'}: no field {exc.args[0]!r}; the planner needs a decoder LM's config") from None
        vision = cfg.get("vision_config")
        if vision:
            shape.vision_params = vision_tower_params(vision, text_hidden=h)
        return shape

    @property
    def params(self) -> int:
        return self.linear_params + self.embedding_params + self.norm_params

    @property
    def embedding_params(self) -> int:
        return self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)

    @property
    def linear_params(self) -> int:
        return self.num_hidden_layers * sum(i * o for i, o in self.linear_dims().values())

    @property
    def norm_params(self) -> int:
        per_layer = self.hidden_size * (4 if self.model_type in SANDWICH_NORMS else 2)
        if self.model_type in QK_NORM:
            per_layer += 2 * self.head_dim
        return self.num_hidden_layers * per_layer + self.hidden_size

    def linear_dims(self) -> dict[str, tuple[int, int]]:
        """(in, out) features of each decoder-layer linear module."""
        h, i, d = self.hidden_size, self.intermediate_size, self.head_dim
        q, kv = self.num_attention_heads * d, self.num_key_value_heads * d
        return {"q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
                "gate_proj": (h, i), "up_proj": (h, i), "down_proj": (i, h)}


def vision_tower_params(vision: dict[str, Any], text_hidden: int) -> int:
    """SigLIP-style encoder parameters plus a linear projector to the text width (approximate)."""
    h = int(vision.get("hidden_size", 0))
    i = int(vision.get("intermediate_size", 0))
    n = int(vision.get("num_hidden_layers", 0))
    patches = (int(vision.get("image_size", 0)) // max(1, int(vision.get("patch_size", 1)))) ** 2
    per_layer = 4 * h * h + 2 * h * i + 9 * h
    return n * per_layer + patches * h + 3 * int(vision.get("patch_size", 0)) ** 2 * h + h * text_hidden


@dataclass
class PlanSettings:
    """The training settings that decide the step's memory (from a TrainConfig, or given)."""

    micro_batch_size: int = 4
    seq_len: int = 2048
    world_size: int = 1
    quantization: str = "nf4"
    double_quant: bool = True
    compute_bytes: int = 2  # bf16 on a GPU
    lora_r: int = 16
    lora_dropout: float = 0.05
    lora_targets: list[str] = field(default_factory=lambda: list(ALL_LINEAR))
    lora_fp32_path: bool = False  # model.lora_compute_dtype: float32 (PEFT's default copies to fp32)
    gradient_checkpointing: bool = True
    fsdp: bool = True
    supervised_fraction: float = 0.03  # logits rows / tokens: MCQ answers are ~2 of ~75 tokens
    text_only: bool = True  # a multimodal checkpoint's vision tower is not loaded
    device: str = "cuda"  # "cpu": dropout masks in the input's dtype (what bench/memory.py sees on CPU)

    @property
    def tokens(self) -> int:
        return self.micro_batch_size * self.seq_len


def settings_from_config(cfg: Any, world_size: int = 1) -> PlanSettings:
    """:class:`PlanSettings` for a TrainConfig (compute dtype ``auto`` means a GPU: bf16)."""
    from medslm.config import ConfigError

    if not cfg.lora.enabled:  # it counts LoRA's gradients and AdamW state; a full fine-tune has them for every weight
        raise ConfigError("--estimate-memory plans LoRA / QLoRA training only; lora.enabled=false (full fine-tuning) is not "
                          "planned: gradients and AdamW state for every weight would be missing from its numbers")
    targets = list(cfg.lora.target_modules)
    unknown = [t for t in targets if t != "all-linear" and t not in ALL_LINEAR]
    if unknown:  # a target the planner does not model would silently count no adapter there
        raise ConfigError(f"--estimate-memory: lora.target_modules {unknown} are not decoder linear layers it models "
                          f"({', '.join(ALL_LINEAR)}, or all-linear)")
    return PlanSettings(
        micro_batch_size=cfg.train.micro_batch_size,
        seq_len=cfg.data.max_seq_len,
        world_size=world_size,
        quantization=cfg.model.quantization,
        double_quant=cfg.model.double_quant,
        compute_bytes=4 if cfg.model.compute_dtype == "float32" else 2,
        lora_r=cfg.lora.r,
        lora_dropout=cfg.lora.dropout,
        lora_targets=list(ALL_LINEAR) if targets == ["all-linear"] else targets,
        lora_fp32_path=cfg.model.lora_compute_dtype == "float32",
        gradient_checkpointing=cfg.model.gradient_checkpointing,
        fsdp=cfg.distributed.fsdp,
        text_only=bool(getattr(cfg.model, "text_only", True)),
    )


# ---------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------


def _targeted(shape: ModelShape, s: PlanSettings) -> dict[str, tuple[int, int]]:
    dims = shape.linear_dims()
    return {name: d for name, d in dims.items() if any(name == t or name.endswith(t) for t in s.lora_targets)}


def nf4_bytes(numel: int, double_quant: bool) -> int:
    """NF4 storage plus its quantisation constants (bitsandbytes' layout, blocks of 64)."""
    blocks = math.ceil(numel / NF4_BLOCK)
    if double_quant:
        consts = blocks + math.ceil(blocks / DQ_BLOCK) * 4 + 256 * 4 + 16 * 4 + 4  # uint8 absmax, fp32 absmax2, codes, offset
    else:
        consts = blocks * 4 + 16 * 4
    return math.ceil(numel / 2) + consts


def base_weight_bytes(shape: ModelShape, s: PlanSettings) -> dict[str, int]:
    dims = shape.linear_dims()
    bias = shape.num_hidden_layers * sum(o for n, (_, o) in dims.items() if n in ("q_proj", "k_proj", "v_proj")) if shape.attention_bias else 0
    if s.quantization == "nf4":
        linear = shape.num_hidden_layers * sum(nf4_bytes(i * o, s.double_quant) for i, o in dims.values())
    else:
        linear = shape.linear_params * s.compute_bytes
    out = {
        "linear": linear,
        "embeddings": shape.embedding_params * s.compute_bytes,
        "norms_and_biases": (shape.norm_params + bias) * s.compute_bytes,
    }
    if shape.vision_params and not s.text_only:
        out["vision_tower"] = shape.vision_params * s.compute_bytes
    return out


def lora_params(shape: ModelShape, s: PlanSettings) -> int:
    return shape.num_hidden_layers * sum(s.lora_r * (i + o) for i, o in _targeted(shape, s).values())


def layer_activations(shape: ModelShape, s: PlanSettings) -> list[tuple[str, int]]:
    """Bytes one decoder layer keeps for backward, op by op, at ``s.tokens`` tokens (bf16 or fp32 compute)."""
    t, a = s.tokens, s.compute_bytes
    h, i, d = shape.hidden_size, shape.intermediate_size, shape.head_dim
    q, kv = shape.num_attention_heads * d, shape.num_key_value_heads * d
    fp32_copy = 4  # norms compute in fp32 and save their input: a float32 copy (or the fp32 input itself)
    mask = (1 if s.device == "cuda" else (4 if s.lora_fp32_path else a))
    lora_in = 4 if s.lora_fp32_path else a  # PEFT's default path copies the adapter's input to fp32
    targeted = _targeted(shape, s)
    items: list[tuple[str, int]] = []

    def lora(name: str) -> None:
        if name not in targeted:
            return
        n_in = targeted[name][0]
        per = 0
        if s.lora_dropout > 0:
            per += t * n_in * (lora_in + mask)  # dropped copy (saved by lora_A) + mask
        elif s.lora_fp32_path and a < 4:
            per += t * n_in * 4  # lora_A saves the fp32 copy of its input
        per += t * s.lora_r * lora_in  # lora_A's output, saved by lora_B
        items.append((f"lora {name}", per))

    n_norms = 4 if shape.model_type in SANDWICH_NORMS else 2
    items.append(("norm inputs (fp32)", n_norms * t * h * fp32_copy))
    items.append(("norm outputs", 2 * t * h * a))  # the attention's and the MLP's inputs
    for name in ("q_proj", "k_proj", "v_proj"):
        lora(name)
    if shape.model_type in QK_NORM:
        items.append(("q/k norm inputs (fp32)", t * (q + kv) * fp32_copy))
    items.append(("q, k (rotated), v", t * (q + 2 * kv) * a))
    items.append(("attention output + lse", t * q * a + t * shape.num_attention_heads * 4))
    lora("o_proj")
    lora("gate_proj")
    lora("up_proj")
    items.append(("mlp gate, up, act(gate), act*up", 4 * t * i * a))
    lora("down_proj")
    return items


def plan(shape: ModelShape, s: PlanSettings) -> dict[str, Any]:
    """Every part in bytes, and the peak; see the module doc for what each part holds."""
    t, a, w = s.tokens, s.compute_bytes, max(1, s.world_size)
    shard = w if (s.fsdp and w > 1) else 1
    base = base_weight_bytes(shape, s)
    n_lora = lora_params(shape, s)
    lora_b = 4 * n_lora // shard
    autocast_copies = 2 * n_lora if (a < 4 and not s.lora_fp32_path) else 0  # bf16 copies of the adapter, cached by autocast in forward
    grads = 4 * n_lora // shard
    adam = 8 * n_lora // shard
    layer = layer_activations(shape, s)
    per_layer = sum(b for _, b in layer)
    h, i = shape.hidden_size, shape.intermediate_size
    # the layer's backward starts with every saved tensor alive; each op's gradients replace
    # tensors it frees, so what it adds is the residual stream's gradient (and its fp32 copy
    # through a norm) and one dequantised weight at a time
    deq = max(a * x * y for x, y in shape.linear_dims().values()) if s.quantization == "nf4" else 0
    backward = t * h * a + t * h * 4 + deq
    layer_inputs = shape.num_hidden_layers * t * h * a + t * h * 4  # checkpointed inputs + the final norm's fp32 input
    rope = 2 * t * shape.head_dim * a * (2 if shape.model_type in SANDWICH_NORMS else 1)  # cos/sin (Gemma 3: local + global)
    batch = t * 8 * 3  # input_ids, labels, position_ids (int64)
    k = max(1, math.ceil(t * s.supervised_fraction))
    logits = k * shape.vocab_size * (a + 4 + 4)  # bf16 logits, fp32 log-softmax, its gradient
    with_ckpt = layer_inputs + rope + per_layer + backward
    without_ckpt = t * h * 4 + rope + shape.num_hidden_layers * per_layer + backward  # every layer keeps its saved tensors
    activations = with_ckpt if s.gradient_checkpointing else without_ckpt
    state = sum(base.values()) + lora_b + grads + adam
    # with checkpointing the logits meet only the layer inputs (a layer's recompute comes after the
    # loss); without, every layer's saved tensors are alive when the logits are made
    peak = state + autocast_copies + batch + (max(activations, layer_inputs + rope + logits) if s.gradient_checkpointing
                                              else activations + logits)
    overhead = CUDA_CONTEXT_GB * GB + ALLOCATOR_RESERVE * peak
    return {
        "base_weights": base,
        "lora_params": lora_b,
        "lora_param_count": n_lora,
        "autocast_copies": autocast_copies,
        "grads": grads,
        "adamw_state": adam,
        "activations": activations,
        "activations_checkpointed": with_ckpt,
        "activations_no_checkpointing": without_ckpt,
        "activation_layer": per_layer,
        "activation_layer_items": layer,
        "activation_backward": backward,
        "activation_layer_inputs": layer_inputs + rope,
        "logits": logits,
        "logits_rows": k,
        "batch": batch,
        "state": state,
        "peak": peak,
        "runtime_overhead": overhead,
        "gpu_total": peak + overhead,
    }


# ---------------------------------------------------------------------------------------------
# Shapes, fitting, the report
# ---------------------------------------------------------------------------------------------


def shipped_shapes() -> list[dict[str, Any]]:
    return json.loads(SHAPES_FILE.read_text(encoding="utf-8"))["shapes"]


def read_model_shape(name_or_path: str) -> ModelShape:
    """The shape of ``model.name_or_path`` from its config.json only (never its weights)."""
    from medslm.modeling import EMBEDDED, MODELS_DIR

    if name_or_path in EMBEDDED:
        path = MODELS_DIR / EMBEDDED[name_or_path] / "config.json"
        return ModelShape.from_config(json.loads(path.read_text(encoding="utf-8")), str(path))
    local = Path(name_or_path).expanduser()
    if local.is_dir() or name_or_path.startswith((".", "/", "~")):
        path = local / "config.json"
        if not path.is_file():
            raise UserError(f"model.name_or_path: {local} has no config.json")
        try:
            cfg = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: not valid JSON ({exc})") from None
        return ModelShape.from_config(cfg, str(path))
    cached = _hub_cached_config(name_or_path)
    if cached is not None:
        return ModelShape.from_config(json.loads(Path(cached).read_text(encoding="utf-8")), cached)
    for entry in shipped_shapes():
        if name_or_path in entry["hub_ids"]:
            return ModelShape.from_config(entry["config"], f"{SHAPES_FILE.name}: {entry['label']}")
    try:
        from huggingface_hub import hf_hub_download

        got = hf_hub_download(name_or_path, "config.json")
    except Exception as exc:  # offline, gated, or no such repo
        raise UserError(
            f"model.name_or_path: cannot read config.json of {name_or_path!r} ({type(exc).__name__}); "
            "give a local folder that holds it"
        ) from None
    return ModelShape.from_config(json.loads(Path(got).read_text(encoding="utf-8")), got)


def _hub_cached_config(repo_id: str) -> str | None:
    try:
        from huggingface_hub import try_to_load_from_cache

        got = try_to_load_from_cache(repo_id, "config.json")
    except Exception:
        return None
    return got if isinstance(got, str) else None


def gpu_bytes(nominal_gb: int) -> float:
    """A card sold as N GB holds N GiB; counting it as N x 1e9 bytes leaves ~7% for what the
    driver and other processes take."""
    return nominal_gb * GB


def fit(shape: ModelShape, s: PlanSettings, nominal_gb: int) -> tuple[str, int, float]:
    """("fits" | "smaller micro-batch" | "does not fit", the largest micro-batch that fits, GB)."""
    cap = gpu_bytes(nominal_gb)
    micro = s.micro_batch_size
    while micro >= 1:
        p = plan(shape, _with(s, micro_batch_size=micro))
        if p["gpu_total"] <= cap:
            return ("fits" if micro == s.micro_batch_size else "smaller micro-batch"), micro, p["gpu_total"] / GB
        micro //= 2
    return "does not fit", 0, plan(shape, _with(s, micro_batch_size=1))["gpu_total"] / GB


def _with(s: PlanSettings, **changes: Any) -> PlanSettings:
    return PlanSettings(**{**asdict(s), **changes})


def _gb(x: float) -> str:
    return f"{x / GB:7.2f}"


def report(shape: ModelShape, s: PlanSettings, title: str) -> tuple[str, dict[str, Any]]:
    """The printed breakdown (Table 3-like), the projection (Table 8-like) and the JSON record."""
    p = plan(shape, s)
    quant = f"NF4{' + double quant' if s.double_quant else ''}" if s.quantization == "nf4" else f"{'bf16' if s.compute_bytes == 2 else 'fp32'} (not quantised)"
    shard = f"/ {s.world_size} (FSDP)" if s.fsdp and s.world_size > 1 else "(1 rank)"
    lora_label = f"LoRA parameters, fp32 ({p['lora_param_count'] / 1e6:.1f}M) {shard}"
    logits_label = f"supervised-only logits ({p['logits_rows']:,} rows x {shape.vocab_size:,})"
    lines = [
        f"Memory plan per GPU: {title}",
        f"  model: {shape.source} ({shape.model_type}, {shape.params / 1e9:.2f}B text parameters, {shape.num_hidden_layers} layers, "
        f"hidden {shape.hidden_size}, vocab {shape.vocab_size:,})",
        f"  step: {s.micro_batch_size} rows x {s.seq_len} tokens, LoRA r{s.lora_r} on {','.join(sorted(_targeted(shape, s)))}, "
        f"checkpointing {'on' if s.gradient_checkpointing else 'off'}, {s.world_size} GPU(s)",
        "",
        f"  {'part':58} {'GB':>7}",
        f"  {'base weights, ' + quant:58} {_gb(sum(p['base_weights'].values()))}",
    ]
    for k, v in p["base_weights"].items():
        lines.append(f"    {k:56} {_gb(v)}")
    if shape.vision_params and s.text_only:
        lines.append(f"    {'vision tower (not loaded: text-only)':56} {'-':>7}")
    lines += [
        f"  {lora_label:58} {_gb(p['lora_params'])}",
        f"  {'gradients, fp32 ' + shard:58} {_gb(p['grads'])}",
        f"  {'AdamW state (2 moments, fp32) ' + shard:58} {_gb(p['adamw_state'])}",
        f"  {'adapter copies in bf16 (autocast)':58} {_gb(p['autocast_copies'])}",
        f"  {f'activations, {s.tokens:,} tokens, with checkpointing':58} {_gb(p['activations_checkpointed'])}",
        f"    {'layer inputs kept + rotary tables':56} {_gb(p['activation_layer_inputs'])}",
        f"    {'one layer recomputed':56} {_gb(p['activation_layer'])}",
        f"    {'its backward (gradients, dequantised weight)':56} {_gb(p['activation_backward'])}",
        f"  {'activations without checkpointing':58} {_gb(p['activations_no_checkpointing'])}",
        f"  {logits_label:58} {_gb(p['logits'])}",
        f"  {'peak allocated (torch.cuda.max_memory_allocated)':58} {_gb(p['peak'])}",
        f"  {f'runtime overhead (CUDA context {CUDA_CONTEXT_GB} GB + allocator {ALLOCATOR_RESERVE:.0%})':58} {_gb(p['runtime_overhead'])}",
        f"  {'GPU total (nvidia-smi)':58} {_gb(p['gpu_total'])}",
        "",
        f"Projection (same settings; micro-batch halved until it fits, grad_accum doubled to keep the global batch):",
    ]
    head = f"  {'shape':34}" + "".join(f"{f'{g} GB':>22}" for g in GPU_SIZES_GB)
    lines.append(head)
    projection = []
    for entry in shipped_shapes():
        sh = ModelShape.from_config(entry["config"], entry["label"])
        cells = []
        row = {"shape": entry["name"], "label": entry["label"]}
        for g in GPU_SIZES_GB:
            verdict, micro, total = fit(sh, s, g)
            cell = {"fits": f"fits {total:.1f}", "smaller micro-batch": f"micro {micro}: {total:.1f}", "does not fit": f"no ({total:.1f} at 1)"}[verdict]
            cells.append(f"{cell:>22}")
            row[f"{g}gb"] = {"verdict": verdict, "micro_batch_size": micro, "gpu_total_gb": round(total, 2)}
        projection.append(row)
        lines.append(f"  {entry['name'] + ' ' + entry['label']:34}" + "".join(cells))
    record = {
        "peak_gb": round(p["peak"] / GB, 3),
        "gpu_total_gb": round(p["gpu_total"] / GB, 3),
        "parts_gb": {
            "base_weights": round(sum(p["base_weights"].values()) / GB, 3),
            "lora_params": round(p["lora_params"] / GB, 3),
            "grads": round(p["grads"] / GB, 3),
            "adamw_state": round(p["adamw_state"] / GB, 3),
            "autocast_copies": round(p["autocast_copies"] / GB, 3),
            "activations": round(p["activations"] / GB, 3),
            "activations_no_checkpointing": round(p["activations_no_checkpointing"] / GB, 3),
            "logits": round(p["logits"] / GB, 3),
            "runtime_overhead": round(p["runtime_overhead"] / GB, 3),
        },
        "model": shape.source,
        "micro_batch_size": s.micro_batch_size,
        "seq_len": s.seq_len,
        "world_size": s.world_size,
        "projection": projection,
    }
    lines.append("")
    lines.append(json.dumps(record))
    return "\n".join(lines), record


def estimate_for_config(cfg: Any, world_size: int = 1) -> dict[str, Any]:
    """What ``train.py --estimate-memory`` prints, for a parsed TrainConfig; returns the JSON record."""
    shape = read_model_shape(cfg.model.name_or_path)
    text, record = report(shape, settings_from_config(cfg, world_size), cfg.model.name_or_path)
    print(text)
    return record


def estimate_cli(argv: list[str]) -> dict[str, Any]:
    """``train.py [--config FILE] [--section.key=value ...] --estimate-memory [--gpus N]``."""
    import os

    from medslm.config import ConfigError, parse_config
    from medslm.train_config import DEFAULT_CONFIG, TrainConfig

    rest: list[str] = []
    world = int(os.environ.get("WORLD_SIZE", "1"))
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg == "--estimate-memory":
            continue
        if arg == "--gpus" or arg.startswith("--gpus="):
            value = arg.split("=", 1)[1] if "=" in arg else (args.pop(0) if args else "")
            if not (value.isascii() and value.isdigit()) or int(value) < 1:
                raise ConfigError(f"command line: --gpus must be a positive integer, got {value!r}")
            world = int(value)
            continue
        rest.append(arg)
    # the estimate reads no data files (only data.max_seq_len): a paper config that names no data is
    # estimated as it is, so a placeholder stands in for them (the user's own --data.* come later and win)
    cfg = parse_config(TrainConfig, ["--data.medqa=embedded", *rest], default_file=DEFAULT_CONFIG)
    return estimate_for_config(cfg, world)


__all__ = ["ModelShape", "PlanSettings", "estimate_cli", "estimate_for_config", "fit", "layer_activations", "plan", "read_model_shape", "report", "settings_from_config"]
