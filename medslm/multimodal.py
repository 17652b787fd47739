"""Multimodal checkpoints (MedGemma 4B: Gemma 3 + a SigLIP vision tower) fine-tuned on text only.

``google/medgemma-4b-it`` is a ``Gemma3ForConditionalGeneration``: a SigLIP vision tower, a
projector, and the Gemma 3 text model under ``model.language_model`` with the output head. MCQ
training never shows it an image, so:

- **text-only form** (``model.text_only: true``, the default): only the language model and its
  head are loaded, as the text model class of the checkpoint (``Gemma3ForCausalLM``), with the
  checkpoint's weight names mapped onto it (:data:`TEXT_KEY_MAPPING`; both the original layout
  ``language_model.model.*`` and transformers' newer ``model.language_model.*``). Any text weight
  the mapping misses is an error, never a random init. The vision tower and projector are never
  read into memory.
- **full form** (``model.text_only: false``): the whole checkpoint; NF4 is applied to the language
  model only (the vision tower and projector stay in the compute dtype, frozen).
- In both forms LoRA goes on the linear layers of the language model's decoder layers only, never
  on the vision tower, and the adapter is saved under the **shipped model's module names**
  (``model.language_model.layers.N...``), with a ``target_modules`` pattern that matches the
  decoder layers in both forms: ``PeftModel.from_pretrained(Gemma3ForConditionalGeneration...,
  RUN/adapter)`` loads it as it is; loading it onto the text-only form maps the names back
  (:func:`adapter_load_kwargs`).

A plain causal LM (Llama, ``Gemma3ForCausalLM``) has the :data:`CAUSAL` layout and is untouched.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch

# checkpoint key (either layout) -> the text-only model's key
TEXT_KEY_MAPPING = {
    r"^model\.language_model\.": "model.",  # transformers >= 4.52
    r"^language_model\.model\.": "model.",  # the original layout (save_pretrained still writes it)
    r"^language_model\.lm_head\.": "lm_head.",
}
_HEAD_KEYS = ("lm_head.weight", "language_model.lm_head.weight")


@dataclass(frozen=True)
class Layout:
    """Where a loaded model's decoder layers are, and where they sit in the shipped checkpoint."""

    kind: Literal["causal", "text_only", "full"]
    checkpoint_class: str = ""  # the checkpoint's architecture, e.g. Gemma3ForConditionalGeneration
    text_prefix: str = "model"  # parent of ``layers`` in the loaded model
    shipped_prefix: str = "model"  # parent of ``layers`` in the shipped checkpoint
    towers: tuple[str, ...] = ()  # the shipped model's modules outside the language model

    @property
    def multimodal(self) -> bool:
        return self.kind != "causal"


CAUSAL = Layout("causal")


def is_multimodal(config: Any) -> bool:
    return getattr(config, "text_config", None) is not None and getattr(config, "vision_config", None) is not None


def shipped_layout(config: Any, text_only: bool) -> Layout:
    """The layout of a multimodal config, read from its model class built on the meta device."""
    from transformers import AutoModelForCausalLM

    from medslm.cli import UserError

    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(config)
    inner = getattr(skeleton, "model", None)
    if inner is None or not hasattr(inner, "language_model") or not hasattr(inner.language_model, "layers"):
        raise UserError(
            f"model.name_or_path: {type(skeleton).__name__} keeps its language model somewhere medslm does not know "
            "(expected model.language_model.layers); set model.text_only and check the layout"
        )
    towers = tuple(f"model.{name}" for name, _ in inner.named_children() if name != "language_model")
    return Layout("text_only" if text_only else "full", type(skeleton).__name__, "model" if text_only else "model.language_model",
                  "model.language_model", towers)


def checkpoint_keys(path: str | Path) -> set[str]:
    """Tensor names of a local safetensors checkpoint (one file or an index), from headers only."""
    root = Path(path)
    index = root / "model.safetensors.index.json"
    if index.is_file():
        return set(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
    keys: set[str] = set()
    for f in sorted(root.glob("*.safetensors")):
        from safetensors import safe_open

        with safe_open(str(f), "pt") as st:
            keys.update(st.keys())
    return keys


def text_only_kwargs(config: Any, path: str) -> dict[str, Any]:
    """``from_pretrained`` arguments that load just the language model and its head."""
    import copy

    text = copy.deepcopy(config.get_text_config())
    keys = checkpoint_keys(path)
    if keys:  # a separate output head in the checkpoint means it is not tied to the embedding
        text.tie_word_embeddings = not any(k in keys for k in _HEAD_KEYS)
    return {"config": text, "key_mapping": dict(TEXT_KEY_MAPPING)}


def full_quantization_skips(layout: Layout) -> list[str]:
    """Modules NF4 leaves alone in the full form: the output head, the vision tower, the projector."""
    return ["lm_head", *layout.towers]


def check_text_weights_loaded(info: dict[str, Any], path: str) -> None:
    """Every parameter of the text-only model came from the checkpoint (none at random init)."""
    from medslm.cli import UserError

    missing = sorted(info.get("missing_keys") or [])
    mismatched = list(info.get("mismatched_keys") or [])
    if missing or mismatched:
        bad = (missing + [str(m) for m in mismatched])[:4]
        raise UserError(
            f"model.name_or_path: {path}: the text-only load found no checkpoint tensor for {len(missing)} weights and a shape "
            f"mismatch for {len(mismatched)} (e.g. {bad}); set model.text_only=false to load the whole checkpoint"
        )


def layout_of(model: Any) -> Layout:
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "medslm_layout", CAUSAL)


def _linear_names(model: Any) -> list[str]:
    """Names (inside a decoder layer, e.g. ``self_attn.q_proj``) of the linear layers of layer 0."""
    from medslm.modeling import decoder_layers

    layer = decoder_layers(model)[0]
    names = []
    for name, mod in layer.named_modules():
        if _is_linear(mod):
            names.append(name)
    return names


def _is_linear(module: Any) -> bool:
    """A linear layer, plain or quantised by bitsandbytes (what LoRA targets)."""
    return isinstance(module, torch.nn.Linear) or type(module).__name__ in ("Linear4bit", "Linear8bitLt")


def lora_target_modules(model: Any, targets: list[str]) -> str | list[str]:
    """PEFT ``target_modules`` for ``model``: the config's own value for a plain causal LM; for a
    multimodal checkpoint, a pattern over the language model's decoder layers that fits both the
    text-only and the shipped module names (never the vision tower)."""
    from medslm.config import ConfigError

    layout = layout_of(model)
    if not layout.multimodal:
        if targets == ["all-linear"]:
            return "all-linear"
        linear = [n for n, m in model.named_modules() if _is_linear(m)]
        missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in linear)]
        if missing:  # PEFT drops a target that matches nothing when another one matches
            raise ConfigError(f"lora.target_modules: {missing} match no linear layer of the model; "
                              f"its decoder layers have {_linear_names(model)} (or use all-linear)")
        return list(targets)
    names = _linear_names(model)
    if targets == ["all-linear"]:
        chosen = names
    else:
        chosen = [n for n in names if any(n == t or n.endswith("." + t) for t in targets)]
        if not chosen:
            raise ConfigError(f"lora.target_modules: none of {targets} is a linear layer of the language model's decoder layers ({names})")
    parents = sorted({re.escape(layout.shipped_prefix), re.escape(layout.text_prefix)}, key=len, reverse=True)
    return rf"(?:{'|'.join(parents)})\.layers\.\d+\.(?:{'|'.join(re.escape(n) for n in chosen)})"


def rename_saved_adapter(adapter_dir: str | Path, model: Any) -> None:
    """Rewrite ``adapter_model.safetensors`` in ``adapter_dir`` under the shipped module names."""
    from safetensors.torch import load_file, save_file

    layout = layout_of(model)
    if layout.text_prefix == layout.shipped_prefix:
        return
    f = Path(adapter_dir) / "adapter_model.safetensors"
    if not f.is_file():  # full fine-tuning writes a model, not an adapter
        return
    pattern = re.compile(rf"^base_model\.model\.{re.escape(layout.text_prefix)}\.layers\.")
    repl = f"base_model.model.{layout.shipped_prefix}.layers."
    tensors = {pattern.sub(repl, k): v for k, v in load_file(str(f)).items()}
    save_file(tensors, str(f), metadata={"format": "pt"})


def adapter_load_kwargs(model: Any) -> dict[str, Any]:
    """``PeftModel.from_pretrained`` arguments that fit a saved (shipped-name) adapter onto ``model``."""
    layout = layout_of(model)
    if layout.text_prefix == layout.shipped_prefix:
        return {}
    return {"key_mapping": {rf"^{re.escape(layout.shipped_prefix)}\.layers\.": f"{layout.text_prefix}.layers."}}


def describe(model: Any) -> str:
    """``Gemma3ForCausalLM, text-only from Gemma3ForConditionalGeneration`` and the like."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    layout = layout_of(model)
    name = type(base).__name__
    if layout.kind == "text_only":
        return f"{name}, text-only from {layout.checkpoint_class} (vision tower not loaded)"
    if layout.kind == "full":
        return f"{name}, vision tower frozen, not quantised, no adapter"
    return name


__all__ = [
    "CAUSAL",
    "Layout",
    "TEXT_KEY_MAPPING",
    "adapter_load_kwargs",
    "check_text_weights_loaded",
    "describe",
    "full_quantization_skips",
    "is_multimodal",
    "layout_of",
    "lora_target_modules",
    "rename_saved_adapter",
    "shipped_layout",
    "text_only_kwargs",
]
