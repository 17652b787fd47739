"""Tiny random checkpoints of the real architectures, written the way the real ones ship.

- :func:`gemma3_multimodal`: a ``Gemma3ForConditionalGeneration`` (a small SigLIP vision tower, the
  projector, a small Gemma 3 text model), like ``google/medgemma-4b-it``.
- :func:`llama3`: a Llama-3-style ``LlamaForCausalLM`` (llama3 rope scaling, grouped-query
  attention, untied head), like ``meta-llama/Llama-3.3-70B-Instruct``.

Each is ``save_pretrained`` into a folder together with the embedded tokenizer, so that
``--model.name_or_path=FOLDER`` is all a run needs, as with a local copy of a real checkpoint.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

from medslm.tokenizer import EMBEDDED_TOKENIZER_DIR

VOCAB = 4100  # the embedded tokenizer's 4,096 ids, plus Gemma 3's image tokens above them


def _with_tokenizer(folder: Path) -> Path:
    for f in EMBEDDED_TOKENIZER_DIR.iterdir():
        if f.is_file():
            shutil.copy(f, folder / f.name)
    return folder


def _scale_head(model: torch.nn.Module, seed: int) -> None:
    """A head that can express confident answers (see medslm.modeling.init_output_head)."""
    from medslm.modeling import init_output_head

    init_output_head(model, torch.Generator().manual_seed(seed))


def gemma3_multimodal(folder: Path, seed: int = 0) -> Path:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = dict(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=32, sliding_window=16, query_pre_attn_scalar=32, max_position_embeddings=2048,
        layer_types=["sliding_attention", "full_attention"], pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=28, patch_size=14,
                  vision_use_head=False)
    cfg = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4, boi_token_index=4097, eoi_token_index=4098,
                       image_token_index=4099)
    torch.manual_seed(seed)
    model = Gemma3ForConditionalGeneration(cfg)
    _scale_head(model, seed)
    model.save_pretrained(folder)
    return _with_tokenizer(folder)


def llama3(folder: Path, seed: int = 0) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=VOCAB, hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=4096, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2, pad_token_id=0,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 1024},
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg)
    _scale_head(model, seed)
    model.save_pretrained(folder)
    return _with_tokenizer(folder)


def relayout_new(src: Path, dest: Path) -> Path:
    """A copy of a multimodal checkpoint under transformers' newer names (``model.language_model.*``,
    ``model.vision_tower.*``, ``lm_head``) instead of the original ``language_model.model.*``."""
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and f.name != "model.safetensors":
            shutil.copy(f, dest / f.name)
    rules = (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
             ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector."))
    renamed = {}
    for k, v in load_file(str(src / "model.safetensors")).items():
        for old, new in rules:
            if k.startswith(old):
                k = new + k[len(old):]
                break
        renamed[k] = v
    save_file(renamed, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def fake_hub_cache(hf_home: Path, repo_id: str, snapshot_of: Path) -> Path:
    """``snapshot_of`` as the cached ``main`` snapshot of ``repo_id`` in ``HF_HOME=hf_home``."""
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = hf_home / "hub" / f"models--{repo_id.replace('/', '--')}"
    snap = repo / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in snapshot_of.iterdir():
        if f.is_file():
            shutil.copy(f, snap / f.name)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    return snap
