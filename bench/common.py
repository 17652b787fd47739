"""What the benchmark scripts share: a seeded random Llama of a given size, written to disk."""

from __future__ import annotations

from pathlib import Path

import torch


def make_llama(tmp: Path, hidden: int, layers: int) -> Path:
    """A random Llama (vocab 4096, the embedded tokenizer's) saved under ``tmp/model``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(
        vocab_size=4096, hidden_size=hidden, intermediate_size=hidden * 3, num_hidden_layers=layers,
        num_attention_heads=max(1, hidden // 64), num_key_value_heads=max(1, hidden // 128),
        max_position_embeddings=4096, pad_token_id=0, bos_token_id=1, eos_token_id=2,
    )
    torch.manual_seed(0)
    LlamaForCausalLM(cfg).save_pretrained(tmp / "model")
    return tmp / "model"
