"""The live-tensor counter behind bench/memory.py's GPU-free VRAM estimate."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.memory import LiveTensorBytes, packed_batch  # noqa: E402


def test_counts_each_storage_once_until_it_is_freed():
    live = LiveTensorBytes()
    w = torch.zeros(1000)  # 4,000 bytes, made before counting: registered explicitly
    live.track([w])
    assert live.current == 4000
    with live:
        a = torch.ones(2000)  # +8,000
        v = a.view(40, 50)  # a view: no new storage
        a.mul_(2)  # in place: no new storage
        b = a * 2  # +8,000, then freed
        peak_with_b = live.current
        del b
        c = torch.ones(500, dtype=torch.bfloat16)  # +1,000
    assert peak_with_b == 4000 + 8000 + 8000
    assert live.peak == peak_with_b
    assert live.current == 4000 + 8000 + 1000
    del a, v
    assert live.current == 4000 + 1000  # freed once the last view is gone
    del c, w
    assert live.current == 0


def test_packed_batch_is_full_mcq_rows():
    b = packed_batch(vocab=4096, seq_len=512, micro_batch=3)
    assert b["input_ids"].shape == (3, 512)
    assert b["num_real_tokens"] > 0.95 * 3 * 512  # best-fit decreasing fills nearly every row
    seg = b["cu_seqlens"].diff()
    assert int(seg.sum()) == 3 * 512 and int(b["max_seqlen"]) == int(seg.max())
    # two supervised answer tokens per example (examples draw ids >= 3; a padding tail is all 0)
    starts = b["cu_seqlens"][:-1].long()
    n_examples = int((b["input_ids"].reshape(-1)[starts] != 0).sum())
    assert n_examples > 3 * 512 // 200
    assert b["num_label_tokens"] == int((b["labels"] != -100).sum()) == 2 * n_examples
