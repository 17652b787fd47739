"""Packing: BFD bin packing, the packed/padded collators, and equivalence on a real tiny Llama."""

from __future__ import annotations

import math
import random

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from medslm.packing import (
    PackedCollator,
    PaddedCollator,
    cu_seqlens_from_position_ids,
    pack_bfd,
    packing_efficiency,
    rows_from_bins,
    segment_ids_from_position_ids,
)

# ---------------------------------------------------------------------------------------------
# pack_bfd
# ---------------------------------------------------------------------------------------------


def reference_bfd(lengths: list[int], cap: int) -> list[list[int]]:
    """Quadratic best-fit decreasing with pack_bfd's documented tie rules, for cross-checking.

    Items longest first (ties by index); the bin with the least room that fits, ties to the bin
    that reached that room first; otherwise a new bin.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    stamp: list[int] = []  # when the bin's room last changed
    for t, i in enumerate(order):
        fits = [b for b in range(len(bins)) if room[b] >= lengths[i]]
        if fits:
            b = min(fits, key=lambda b: (room[b], stamp[b]))
        else:
            b = len(bins)
            bins.append([])
            room.append(cap)
            stamp.append(t)
        bins[b].append(i)
        room[b] -= lengths[i]
        stamp[b] = t
    return bins


def first_fit_decreasing(lengths: list[int], cap: int) -> int:
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-lengths[i], i)):
        for b, r in enumerate(room):
            if r >= lengths[i]:
                room[b] -= lengths[i]
                break
        else:
            room.append(cap - lengths[i])
    return len(room)


def check_valid(lengths, bins, cap):
    flat = sorted(i for b in bins for i in b)
    assert flat == list(range(len(lengths))), "every index exactly once"
    assert all(b for b in bins), "no empty bins"
    assert all(sum(lengths[i] for i in b) <= cap for b in bins), "capacity respected"
    assert len(bins) >= math.ceil(sum(lengths) / cap)


def test_pack_bfd_hand_cases():
    assert pack_bfd([5, 5, 5, 5], 10) == [[0, 1], [2, 3]]
    assert pack_bfd([], 10) == []
    assert pack_bfd([10], 10) == [[0]]
    assert pack_bfd([1, 1, 1], 10) == [[0, 1, 2]]
    # bins in opening order, indices in insertion order (longest first, ties by index)
    assert pack_bfd([3, 7, 3, 7], 10) == [[1, 0], [3, 2]]
    # best fit: after 9, 9, 5, 5 the rooms are 4, 4, 3; the 3 goes to the tightest bin (room 3),
    # where first fit would put it in the first bin (room 4)
    assert pack_bfd([9, 9, 5, 5, 3], 13) == [[0], [1], [2, 3, 4]]
    # equal rooms: the bin that reached that room first
    assert pack_bfd([6, 6, 2], 10) == [[0, 2], [1]]


def test_best_fit_beats_first_fit():
    lengths, cap = [5, 9, 5, 2, 3, 2, 9, 3], 13
    bins = pack_bfd(lengths, cap)
    check_valid(lengths, bins, cap)
    assert len(bins) == 3 == math.ceil(sum(lengths) / cap)  # optimal
    assert first_fit_decreasing(lengths, cap) == 4


@pytest.mark.parametrize("bad", [[3, 0, 2], [3, -1], [3, 11, 2]])
def test_pack_bfd_rejects_bad_lengths(bad):
    idx = next(i for i, x in enumerate(bad) if x <= 0 or x > 10)
    with pytest.raises(ValueError, match=rf"index {idx} has length {bad[idx]}"):
        pack_bfd(bad, 10)


@pytest.mark.parametrize("cap", [0, -5])
def test_pack_bfd_rejects_bad_capacity(cap):
    with pytest.raises(ValueError, match="max_seq_len"):
        pack_bfd([1, 2], cap)


def test_pack_bfd_rejects_non_integer_lengths():
    with pytest.raises(ValueError, match="index 1"):
        pack_bfd([3, 2.5], 10)
    assert pack_bfd(np.array([3.0, 2.0]), 10) == [[0, 1]]  # integral floats are fine


def test_pack_bfd_accepts_numpy_and_is_deterministic():
    rng = np.random.default_rng(3)
    lengths = rng.integers(1, 300, size=2000)
    a = pack_bfd(lengths, 512)
    assert a == pack_bfd(lengths.tolist(), 512) == pack_bfd(tuple(lengths.tolist()), 512)
    assert all(isinstance(i, int) for b in a for i in b)


@pytest.mark.parametrize("seed", range(40))
def test_pack_bfd_matches_reference_randomised(seed):
    rng = random.Random(seed)
    cap = rng.choice([1, 2, 7, 16, 64, 100, 2048])
    n = rng.randint(0, 300)
    kind = rng.choice(["uniform", "small", "large", "dups"])
    if kind == "uniform":
        lengths = [rng.randint(1, cap) for _ in range(n)]
    elif kind == "small":
        lengths = [rng.randint(1, max(1, cap // 8)) for _ in range(n)]
    elif kind == "large":
        lengths = [rng.randint(max(1, cap // 2), cap) for _ in range(n)]
    else:
        pool = [rng.randint(1, cap) for _ in range(3)]
        lengths = [rng.choice(pool) for _ in range(n)]
    bins = pack_bfd(lengths, cap)
    check_valid(lengths, bins, cap)
    assert bins == reference_bfd(lengths, cap)
    if bins:
        eff = packing_efficiency(lengths, bins, cap)
        assert eff == pytest.approx(sum(lengths) / (len(bins) * cap)) and 0 < eff <= 1


def test_pack_bfd_is_fast():
    import time

    lengths = np.random.default_rng(0).integers(1, 2049, size=100_000)
    t = time.perf_counter()
    bins = pack_bfd(lengths, 2048)
    dt = time.perf_counter() - t
    check_valid(lengths.tolist(), bins, 2048)
    assert dt < 1.0, f"100k lengths took {dt:.2f}s"


def test_packing_efficiency_and_rows():
    assert packing_efficiency([5, 5, 5, 5], [[0, 1], [2, 3]], 10) == 1.0
    assert packing_efficiency([4, 3], [[0], [1]], 10) == pytest.approx(0.35)
    assert packing_efficiency([4], [], 10) == 0.0
    assert rows_from_bins(["a", "b", "c"], [[2, 0], [1]]) == [["c", "a"], ["b"]]


# ---------------------------------------------------------------------------------------------
# Collators
# ---------------------------------------------------------------------------------------------


def ex(ids, n_prompt=1):
    ids = list(ids)
    return {"input_ids": ids, "labels": [-100] * n_prompt + ids[n_prompt:]}


def test_packed_collator_hand_example():
    a = ex([11, 12, 13])
    b = {"input_ids": [21, 22, 23, 24], "labels": [21, 22, 23, 24]}  # first label not masked upstream
    c = ex([31, 32, 33, 34, 35], n_prompt=2)
    batch = PackedCollator(12, pad_token_id=0)([[a, b], [c]])
    assert set(batch) == {"input_ids", "labels", "position_ids", "cu_seqlens", "max_seqlen", "num_real_tokens", "num_label_tokens"}
    assert "attention_mask" not in batch
    for k in ("input_ids", "labels", "position_ids"):
        assert batch[k].dtype == torch.long and batch[k].shape == (2, 12)
    assert batch["cu_seqlens"].dtype == torch.int32 and batch["cu_seqlens"].ndim == 1
    assert batch["input_ids"].tolist() == [
        [11, 12, 13, 21, 22, 23, 24, 0, 0, 0, 0, 0],
        [31, 32, 33, 34, 35, 0, 0, 0, 0, 0, 0, 0],
    ]
    N = -100
    assert batch["labels"].tolist() == [
        [N, 12, 13, N, 22, 23, 24, N, N, N, N, N],
        [N, N, 33, 34, 35, N, N, N, N, N, N, N],
    ]
    assert batch["position_ids"].tolist() == [
        [0, 1, 2, 0, 1, 2, 3, 0, 1, 2, 3, 4],
        [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 5, 6],
    ]
    # boundaries at every example start/end, padding its own segment, over the flattened batch
    assert batch["cu_seqlens"].tolist() == [0, 3, 7, 12, 17, 24]
    assert batch["max_seqlen"] == 7
    assert batch["num_real_tokens"] == 12
    assert batch["num_label_tokens"] == 2 + 3 + 3
    assert torch.equal(cu_seqlens_from_position_ids(batch["position_ids"]), batch["cu_seqlens"])
    assert segment_ids_from_position_ids(batch["position_ids"]).tolist() == [
        [0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2],
        [0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1],
    ]


def test_packed_collator_full_rows_short_examples_and_empty_rows():
    full = [ex([1, 2, 3]), ex([4]), ex([5, 6])]  # exactly 6 tokens, no padding; a 1-token example
    batch = PackedCollator(6, pad_token_id=9, label_pad_id=-1)([full, []])
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5, 6], [9] * 6]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 0, 1], [0, 1, 2, 3, 4, 5]]
    assert batch["labels"].tolist()[0] == [-1, 2, 3, -1, -1, 6]
    assert batch["labels"].tolist()[1] == [-1] * 6
    assert batch["cu_seqlens"].tolist() == [0, 3, 4, 6, 12]
    assert batch["max_seqlen"] == 6 and batch["num_real_tokens"] == 6 and batch["num_label_tokens"] == 3


@pytest.mark.parametrize("seed", range(10))
def test_packed_collator_randomised_invariants(seed):
    rng = random.Random(seed)
    T = rng.choice([8, 33, 128])
    lengths = [rng.randint(1, T) for _ in range(rng.randint(1, 40))]
    examples = [ex([rng.randint(1, 99) for _ in range(n)], n_prompt=rng.randint(0, n)) for n in lengths]
    rows = rows_from_bins(examples, pack_bfd(lengths, T))
    batch = PackedCollator(T, pad_token_id=0)(rows)
    cu = batch["cu_seqlens"]
    assert cu[0] == 0 and cu[-1] == len(rows) * T and bool((cu[1:] > cu[:-1]).all())
    seg_lens = (cu[1:] - cu[:-1]).tolist()
    assert batch["max_seqlen"] == max(seg_lens)
    assert torch.equal(cu_seqlens_from_position_ids(batch["position_ids"]), cu)
    assert batch["num_real_tokens"] == sum(lengths)
    flat_pos = batch["position_ids"].reshape(-1)
    flat_lab = batch["labels"].reshape(-1)
    for s, e in zip(cu[:-1].tolist(), cu[1:].tolist()):
        assert flat_pos[s:e].tolist() == list(range(e - s))
        assert flat_lab[s] == -100  # first token of every segment (example or padding)
    # example segment lengths, row by row, equal the packed examples' lengths
    expected = []
    for r, row in enumerate(rows):
        expected += [len(x["input_ids"]) for x in row]
        if sum(len(x["input_ids"]) for x in row) < T:
            expected.append(T - sum(len(x["input_ids"]) for x in row))
    assert seg_lens == expected


def test_packed_collator_errors():
    col = PackedCollator(5, pad_token_id=0)
    with pytest.raises(ValueError, match="row 1 holds 6 tokens"):
        col([[ex([1, 2])], [ex([1, 2, 3]), ex([4, 5, 6])]])
    with pytest.raises(ValueError, match="empty example"):
        col([[{"input_ids": [], "labels": []}]])
    with pytest.raises(ValueError, match="2 input_ids but 3 labels"):
        col([[{"input_ids": [1, 2], "labels": [1, 2, 3]}]])
    with pytest.raises(ValueError, match="empty batch"):
        col([])
    with pytest.raises(ValueError):
        PackedCollator(0, pad_token_id=0)


def test_padded_collator():
    exs = [ex([1, 2, 3]), ex([4, 5])]
    b = PaddedCollator(0, "longest", 8)(exs)
    assert b["input_ids"].tolist() == [[1, 2, 3], [4, 5, 0]]
    assert b["labels"].tolist() == [[-100, 2, 3], [-100, 5, -100]]
    assert b["attention_mask"].tolist() == [[1, 1, 1], [1, 1, 0]]
    assert b["position_ids"].tolist() == [[0, 1, 2], [0, 1, 2]]
    assert b["num_real_tokens"] == 5 and b["num_label_tokens"] == 3
    b = PaddedCollator(0, "max_length", 4)(exs)
    assert b["input_ids"].shape == (2, 4) and b["attention_mask"].tolist() == [[1, 1, 1, 0], [1, 1, 0, 0]]
    with pytest.raises(ValueError, match="example 0 has 3 tokens"):
        PaddedCollator(0, "longest", 2)(exs)
    with pytest.raises(ValueError):
        PaddedCollator(0, "max_length")
    with pytest.raises(ValueError):
        PaddedCollator(0, "wrong", 4)  # type: ignore[arg-type]


# ---------------------------------------------------------------------------------------------
# Equivalence with a real tiny model (transformers' SDPA path, mask built from position_ids)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
    )
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="sdpa", dtype=torch.float32)
    assert model.config._attn_implementation == "sdpa"
    return model.eval()


def _examples(seed: int, lengths=(9, 17, 6)):
    g = torch.Generator().manual_seed(seed)
    out = []
    for n in lengths:
        ids = torch.randint(3, 128, (n,), generator=g).tolist()
        out.append(ex(ids, n_prompt=n // 2))
    return out


def _packed_logits(model, batch, **extra):
    with torch.no_grad():
        # No attention_mask and no KV cache: the only way transformers infers the packed mask.
        return model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False, **extra).logits


def _alone(model, e):
    with torch.no_grad():
        return model(input_ids=torch.tensor([e["input_ids"]]), use_cache=False).logits[0]


def _loss_sum(logits, labels):
    """Sum and count of shifted next-token CE (logits[t] vs labels[t+1])."""
    loss = F.cross_entropy(logits[:-1], labels[1:], ignore_index=-100, reduction="sum")
    return loss, int((labels[1:] != -100).sum())


def test_packed_logits_and_loss_match_unpacked(tiny_llama):
    exs = _examples(1)
    T = 40  # 32 real tokens + an 8-token padding segment
    batch = PackedCollator(T, pad_token_id=0)([exs])
    logits = _packed_logits(tiny_llama, batch)[0]
    labels = batch["labels"][0]
    off, total, count = 0, 0.0, 0
    for e in exs:
        n = len(e["input_ids"])
        alone = _alone(tiny_llama, e)
        torch.testing.assert_close(logits[off : off + n], alone, rtol=1e-5, atol=1e-5)
        s_alone, c_alone = _loss_sum(alone, torch.tensor(e["labels"]))
        s_packed, c_packed = _loss_sum(logits[off : off + n], labels[off : off + n])
        assert c_packed == c_alone > 0
        assert (s_packed / c_packed).item() == pytest.approx((s_alone / c_alone).item(), rel=1e-5)
        total += s_alone.item()
        count += c_alone
        off += n
    # Whole-row shifted loss: no example's last token is scored against the next example's first.
    s_row, c_row = _loss_sum(logits, labels)
    assert c_row == count == batch["num_label_tokens"]
    assert s_row.item() == pytest.approx(total, rel=1e-5)


def test_packed_batch_of_two_rows_matches_unpacked(tiny_llama):
    exs = _examples(2, lengths=(12, 5, 20, 1, 7))
    rows = rows_from_bins(exs, pack_bfd([len(e["input_ids"]) for e in exs], 24))
    batch = PackedCollator(24, pad_token_id=0)(rows)
    logits = _packed_logits(tiny_llama, batch)
    for r, row in enumerate(rows):
        off = 0
        for e in row:
            n = len(e["input_ids"])
            torch.testing.assert_close(logits[r, off : off + n], _alone(tiny_llama, e), rtol=1e-5, atol=1e-5)
            off += n


def test_changing_one_example_leaves_the_others_unchanged(tiny_llama):
    exs = _examples(3)
    changed = [dict(e) for e in exs]
    changed[1] = ex([(t * 7 + 5) % 125 + 3 for t in exs[1]["input_ids"]])
    col = PackedCollator(40, pad_token_id=0)
    a = _packed_logits(tiny_llama, col([exs]))[0]
    b = _packed_logits(tiny_llama, col([changed]))[0]
    n0, n1 = len(exs[0]["input_ids"]), len(exs[1]["input_ids"])
    torch.testing.assert_close(a[:n0], b[:n0], rtol=0, atol=1e-6)
    assert not torch.allclose(a[n0 : n0 + n1], b[n0 : n0 + n1], atol=1e-3)
    torch.testing.assert_close(a[n0 + n1 :], b[n0 + n1 :], rtol=0, atol=1e-6)  # later example + padding


@pytest.mark.parametrize("extra", [{"attention_mask": "ones"}, {"use_cache": True}])
def test_transformers_packed_mask_needs_no_attention_mask_and_no_cache(tiny_llama, extra):
    """Documents transformers' rule: with a 2-D attention_mask, or a KV cache (use_cache=True, the
    config default), the mask is plain causal and examples attend across boundaries."""
    exs = _examples(4)
    batch = PackedCollator(40, pad_token_id=0)([exs])
    kwargs = dict(input_ids=batch["input_ids"], position_ids=batch["position_ids"], use_cache=False)
    if "attention_mask" in extra:
        kwargs["attention_mask"] = torch.ones_like(batch["input_ids"])
    else:
        kwargs["use_cache"] = True
    with torch.no_grad():
        leaky = tiny_llama(**kwargs).logits[0]
    n0, n1 = len(exs[0]["input_ids"]), len(exs[1]["input_ids"])
    alone = _alone(tiny_llama, exs[1])
    assert not torch.allclose(leaky[n0 : n0 + n1], alone, atol=1e-3)
