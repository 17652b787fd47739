"""Packing benchmark: our best-fit-decreasing vs TRL's ``pack_dataset(strategy="bfd")``, same lengths.

    python bench/packing.py                    # MedQA + KorMedMCQA-sized mix, max_seq_len 2048
    python bench/packing.py --repeats 9 --seed 1

Synthetic lengths (token counts per training sample), sized like the paper's training mix:

- English (MedQA): 10,178 samples, lognormal with mean 85.3 tokens and sigma 0.45 in log space
  (coefficient of variation ~0.47);
- Korean (KorMedMCQA): 7,632 samples, lognormal with mean 62.7 tokens and sigma 0.55
  (coefficient of variation ~0.60).

``mu = ln(mean) - sigma^2 / 2`` so the lognormal's mean is the paper's; draws are rounded and
clipped to [8, 2048] (the clip hardly ever binds, so the realised means stay within ~1 token of the
targets; both are printed). The two languages are shuffled together with the same seed. The spreads
are an assumption: the paper gives only means.

What each timing includes (best of ``--repeats`` runs, ``time.perf_counter``, same process):

- ``pack_time_s`` (ours): ``medslm.packing.pack_bfd(lengths, 2048)`` -- validation, the sort and
  the best-fit pass, returning bins of sample indices. No tokens are moved; the collator gathers
  them per batch later. For reference the table also shows ours plus materialising every packed
  row's token list (the equivalent of TRL's output column), which is not in the JSON.
- ``trl_time_s``: the whole ``trl.pack_dataset(ds, seq_length=2048, strategy="bfd")`` call on an
  in-memory ``datasets.Dataset`` with one ``input_ids`` column. It is tokenizer-free, and includes
  ``datasets.map`` overhead, TRL's truncation to ``seq_length`` (a no-op here), the BFD itself and
  gathering the token column into packed rows (pyarrow ``take``). Building the Dataset is not
  timed. Note that ``pack_dataset`` runs through ``Dataset.map(batched=True)`` with its default
  ``batch_size=1000``, so by default TRL packs each chunk of 1,000 samples separately; the table
  (and the ``trl_global_*`` JSON fields) also shows it with ``map_kwargs={"batch_size": len(ds)}``,
  i.e. one BFD over the whole dataset, which is the like-for-like algorithm.

Efficiency = real tokens / (rows x 2048). Steps/epoch = ceil(rows / 128) for a global batch of
4 GPUs x micro-batch 4 x grad-accum 8 = 128 rows. Ends with one JSON line.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from itertools import chain
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from medslm.packing import pack_bfd, packing_efficiency  # noqa: E402

MIX = {  # name: (items, mean tokens, log-space sigma)
    "MedQA (en)": (10_178, 85.3, 0.45),
    "KorMedMCQA (ko)": (7_632, 62.7, 0.55),
}
GLOBAL_BATCH_ROWS = 4 * 8 * 4
LO, HI = 8, 2048


def synth_lengths(seed: int) -> tuple[np.ndarray, dict[str, float]]:
    rng = np.random.default_rng(seed)
    parts, means = [], {}
    for name, (n, mean, sigma) in MIX.items():
        mu = math.log(mean) - sigma**2 / 2
        x = np.clip(np.rint(rng.lognormal(mu, sigma, n)), LO, HI).astype(np.int64)
        parts.append(x)
        means[name] = float(x.mean())
    lengths = np.concatenate(parts)
    rng.shuffle(lengths)
    return lengths, means


def best_of(fn, repeats: int):
    best, out = float("inf"), None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t)
    return best, out


def main(argv: list[str]) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-seq-len", type=int, default=2048)
    p.add_argument("--repeats", type=int, default=5)
    a = p.parse_args(argv)
    T = a.max_seq_len

    lengths, means = synth_lengths(a.seed)
    n, real = int(lengths.size), int(lengths.sum())
    lengths_list = lengths.tolist()

    # (a) ours
    pack_time, bins = best_of(lambda: pack_bfd(lengths_list, T), a.repeats)
    eff = packing_efficiency(lengths_list, bins, T)
    rows = len(bins)
    tokens = [list(range(1, k + 1)) for k in lengths_list]  # untimed input, like TRL's Dataset

    def ours_materialised():
        return [list(chain.from_iterable(tokens[i] for i in b)) for b in pack_bfd(lengths_list, T)]

    mat_time, mat_rows = best_of(ours_materialised, a.repeats)
    assert sum(len(r) for r in mat_rows) == real

    # (b) TRL
    import datasets
    import trl
    from trl import pack_dataset

    datasets.disable_progress_bars()
    ds = datasets.Dataset.from_dict({"input_ids": tokens})

    def trl_rows(packed) -> int:
        assert sum(sum(s) for s in packed["seq_lengths"]) == real  # nothing truncated or lost
        return len(packed)

    trl_time, trl_packed = best_of(lambda: pack_dataset(ds, seq_length=T, strategy="bfd"), a.repeats)
    n_trl = trl_rows(trl_packed)
    trl_eff = real / (n_trl * T)
    g_time, g_packed = best_of(
        lambda: pack_dataset(ds, seq_length=T, strategy="bfd", map_kwargs={"batch_size": len(ds)}), a.repeats
    )
    n_trl_g = trl_rows(g_packed)
    trl_g_eff = real / (n_trl_g * T)

    eff_unpacked = real / (n * T)
    steps_packed = math.ceil(rows / GLOBAL_BATCH_ROWS)
    steps_unpacked = math.ceil(n / GLOBAL_BATCH_ROWS)

    # 100k lengths, once each
    rng = np.random.default_rng(a.seed + 1)
    big_uniform = rng.integers(1, T + 1, size=100_000).tolist()
    t = time.perf_counter()
    b_uni = pack_bfd(big_uniform, T)
    t_uni = time.perf_counter() - t
    big_mix = np.concatenate([synth_lengths(a.seed + 2 + k)[0] for k in range(6)])[:100_000].tolist()
    t = time.perf_counter()
    b_mix = pack_bfd(big_mix, T)
    t_mix = time.perf_counter() - t

    # report
    print(f"lengths: {n} samples, {real} tokens, max_seq_len {T}, seed {a.seed}")
    for name, (k, mean, sigma) in MIX.items():
        print(f"  {name:<16} {k:>6} samples  lognormal mean {mean} sigma {sigma}  realised mean {means[name]:.1f}")
    print(f"  lower bound ceil(tokens / {T}) = {math.ceil(real / T)} rows")
    print()
    hdr = f"{'method':<60} {'rows':>6} {'efficiency':>10} {'steps/ep':>8} {'time':>10}"
    print(hdr)
    print("-" * len(hdr))
    line = "{:<60} {:>6} {:>10.4%} {:>8} {:>10}"
    print(line.format("no packing (1 sample/row)", n, eff_unpacked, steps_unpacked, "-"))
    print(line.format("medslm pack_bfd (bins of indices)", rows, eff, steps_packed, f"{pack_time * 1e3:.1f} ms"))
    print(line.format("medslm pack_bfd + build packed token rows", rows, eff, steps_packed, f"{mat_time * 1e3:.1f} ms"))
    print(line.format(f"trl {trl.__version__} pack_dataset bfd (default map batches of 1000)", n_trl, trl_eff,
                      math.ceil(n_trl / GLOBAL_BATCH_ROWS), f"{trl_time * 1e3:.1f} ms"))
    print(line.format("trl pack_dataset bfd, map batch_size=len(ds) (global)", n_trl_g, trl_g_eff,
                      math.ceil(n_trl_g / GLOBAL_BATCH_ROWS), f"{g_time * 1e3:.1f} ms"))
    print()
    print(f"steps/epoch at {GLOBAL_BATCH_ROWS} rows/step: {steps_unpacked} unpacked -> {steps_packed} packed")
    print(f"time ours / trl (default): {pack_time / trl_time:.3f}; ours / trl (global): {pack_time / g_time:.3f}; "
          f"ours incl. token rows / trl (default): {mat_time / trl_time:.3f}")
    print(f"100k uniform lengths in [1, {T}]: {t_uni * 1e3:.1f} ms, {len(b_uni)} rows, "
          f"efficiency {packing_efficiency(big_uniform, b_uni, T):.4%}")
    print(f"100k lengths from the mix distribution: {t_mix * 1e3:.1f} ms, {len(b_mix)} rows, "
          f"efficiency {packing_efficiency(big_mix, b_mix, T):.4%}")
    print("targets: efficiency >= 0.995 and >= trl's; time <= trl's:",
          "met" if eff >= 0.995 and eff >= max(trl_eff, trl_g_eff) and pack_time <= trl_time else "NOT met")

    result = {
        "n_items": n,
        "max_seq_len": T,
        "efficiency": round(eff, 6),
        "trl_efficiency": round(trl_eff, 6),
        "efficiency_unpacked": round(eff_unpacked, 6),
        "pack_time_s": round(pack_time, 6),
        "trl_time_s": round(trl_time, 6),
        "time_ratio_ours_over_trl": round(pack_time / trl_time, 4),
        "rows": rows,
        "trl_rows": n_trl,
        "steps_per_epoch_packed": steps_packed,
        "steps_per_epoch_unpacked": steps_unpacked,
        "trl_global_efficiency": round(trl_g_eff, 6),
        "trl_global_rows": n_trl_g,
        "trl_global_time_s": round(g_time, 6),
        "pack_time_100k_s": round(t_uni, 6),
    }
    print(json.dumps(result), flush=True)
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
