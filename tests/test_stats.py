"""Tests for medslm.stats (Wilson, exact McNemar, paired bootstrap, comparisons)."""

from __future__ import annotations

import math
from fractions import Fraction

import numpy as np
import pytest

from medslm import stats
from medslm.stats import (
    MIN_BOOTSTRAP_RESAMPLES,
    Z_95,
    accuracy_summary,
    compare_correctness,
    mcnemar_exact,
    paired_bootstrap_delta,
    wilson_interval,
)

# ---------------------------------------------------------------- Wilson


@pytest.mark.parametrize(
    ("k", "n", "lo", "hi"),
    [
        (8, 10, 0.4902, 0.9433),
        (0, 10, 0.0, 0.2775),
        (10, 10, 0.7225, 1.0),
        (50, 100, 0.4038, 0.5962),
        (1, 1, 0.2065, 1.0),
    ],
)
def test_wilson_published_values(k, n, lo, hi):
    got = wilson_interval(k, n)
    assert got[0] == pytest.approx(lo, abs=5e-5)
    assert got[1] == pytest.approx(hi, abs=5e-5)


def _wilson_closed_form(k: int, n: int, z: float) -> tuple[float, float]:
    # Alternative algebraic form: (2k + z^2 -/+ z*sqrt(z^2 + 4k(n-k)/n)) / (2(n + z^2)).
    root = z * math.sqrt(z * z + 4.0 * k * (n - k) / n)
    denom = 2.0 * (n + z * z)
    return (2 * k + z * z - root) / denom, (2 * k + z * z + root) / denom


@pytest.mark.parametrize(("k", "n"), [(1, 10), (3, 7), (37, 50), (611, 1273), (9999, 10000)])
@pytest.mark.parametrize("z", [Z_95, 1.0, 2.5758293035489004])
def test_wilson_matches_alternative_closed_form(k, n, z):
    lo, hi = wilson_interval(k, n, z=z)
    elo, ehi = _wilson_closed_form(k, n, z)
    assert lo == pytest.approx(elo, rel=1e-12, abs=1e-15)
    assert hi == pytest.approx(ehi, rel=1e-12, abs=1e-15)


@pytest.mark.parametrize(("k", "n"), [(0, 1), (0, 10), (3, 10), (8, 10), (17, 40), (500, 1000)])
def test_wilson_symmetry(k, n):
    lo, hi = wilson_interval(k, n)
    lo2, hi2 = wilson_interval(n - k, n)
    assert lo == pytest.approx(1.0 - hi2, abs=1e-12)
    assert hi == pytest.approx(1.0 - lo2, abs=1e-12)


def test_wilson_bounds_and_contains_estimate():
    for n in (1, 2, 5, 31, 1000):
        for k in range(0, n + 1, max(1, n // 7)):
            lo, hi = wilson_interval(k, n)
            assert 0.0 <= lo <= k / n <= hi <= 1.0
    assert wilson_interval(0, 5)[0] == 0.0
    assert wilson_interval(5, 5)[1] == 1.0


def test_wilson_accepts_numpy_ints():
    assert wilson_interval(np.int64(8), np.int32(10)) == wilson_interval(8, 10)


def test_wilson_errors():
    with pytest.raises(ValueError):
        wilson_interval(0, 0)
    with pytest.raises(ValueError):
        wilson_interval(11, 10)
    with pytest.raises(ValueError):
        wilson_interval(-1, 10)
    with pytest.raises(ValueError):
        wilson_interval(1, 10, z=0.0)
    with pytest.raises(TypeError):
        wilson_interval(1.5, 10)
    with pytest.raises(TypeError):
        wilson_interval(True, 10)


# ---------------------------------------------------------------- McNemar


def _mcnemar_bruteforce(b: int, c: int) -> Fraction:
    n = b + c
    if n == 0:
        return Fraction(1)
    tail = sum(Fraction(math.comb(n, k), 2**n) for k in range(min(b, c) + 1))
    return min(Fraction(1), 2 * tail)


def test_mcnemar_known_values():
    assert mcnemar_exact(0, 5) == 0.0625
    assert mcnemar_exact(5, 0) == 0.0625
    assert mcnemar_exact(1, 9) == 0.021484375  # 2 * 11 / 1024
    assert mcnemar_exact(0, 0) == 1.0
    assert mcnemar_exact(0, 1) == 1.0
    for k in (1, 2, 7, 500, 3000):
        assert mcnemar_exact(k, k) == 1.0
    assert mcnemar_exact(4, 5) == 1.0  # 2 * P(X <= 4 | n = 9) = 1 exactly


@pytest.mark.parametrize("n", [1, 2, 3, 6, 11, 20, 37, 64, 101])
def test_mcnemar_matches_bruteforce_fractions(n):
    for b in range(n + 1):
        expected = float(_mcnemar_bruteforce(b, n - b))
        assert mcnemar_exact(b, n - b) == pytest.approx(expected, rel=1e-15, abs=0)


def test_mcnemar_symmetric():
    for b, c in [(0, 3), (2, 9), (13, 40), (120, 171), (4000, 4300)]:
        assert mcnemar_exact(b, c) == mcnemar_exact(c, b)


def _normal_approx(b: int, c: int, continuity: bool) -> float:
    d = abs(b - c) - (1 if continuity else 0)
    zstat = d / math.sqrt(b + c)
    return math.erfc(zstat / math.sqrt(2.0))  # two-sided: 2 * (1 - Phi(z))


def test_mcnemar_large_n_close_to_normal_approximation():
    p = mcnemar_exact(4000, 4300)
    assert math.isfinite(p) and 0.0 < p < 1.0
    # continuity-corrected normal approximation is very good at n = 8300
    assert p == pytest.approx(_normal_approx(4000, 4300, continuity=True), rel=0.05)
    assert p == pytest.approx(_normal_approx(4000, 4300, continuity=False), rel=0.15)
    for b, c in [(4900, 5100), (2500, 2600), (100, 9900)]:
        q = mcnemar_exact(b, c)
        assert 0.0 <= q <= 1.0
    assert mcnemar_exact(4950, 5050) == pytest.approx(
        _normal_approx(4950, 5050, continuity=True), rel=0.02
    )


def test_mcnemar_large_n_exact_against_fractions():
    # n = 2000: brute-force big-fraction sum is still quick.
    b, c = 940, 1060
    assert mcnemar_exact(b, c) == pytest.approx(float(_mcnemar_bruteforce(b, c)), rel=1e-15)


def test_mcnemar_monotone_in_imbalance():
    n = 1000
    ps = [mcnemar_exact(b, n - b) for b in range(0, n // 2 + 1, 25)]
    assert all(x <= y for x, y in zip(ps, ps[1:]))


def test_mcnemar_tiny_p_underflows_to_zero_not_nan():
    assert mcnemar_exact(0, 10_000) == 0.0


def test_mcnemar_log_space_path_agrees_with_exact():
    # The log-space tail (used above n = 50,000) against the exact-integer tail.
    for m, n in [(4800, 10_000), (4950, 10_000), (5, 30), (29_000, 60_000)]:
        exact = stats._binom_half_cdf_exact(m, n)
        logsp = stats._binom_half_cdf_log(m, n)
        assert logsp == pytest.approx(exact, rel=1e-9)
    p = mcnemar_exact(30_000, 30_500)
    assert 0.0 < p < 1.0
    assert p == pytest.approx(_normal_approx(30_000, 30_500, continuity=True), rel=0.02)


def test_mcnemar_errors():
    with pytest.raises(ValueError):
        mcnemar_exact(-1, 3)
    with pytest.raises(TypeError):
        mcnemar_exact(1.0, 3)


# ---------------------------------------------------------------- bootstrap


def _pair(n: int, p_base: float, p_other: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.random(n) < p_base, rng.random(n) < p_other


def test_bootstrap_deterministic_with_seed():
    base, other = _pair(500, 0.6, 0.55, seed=1)
    r1 = paired_bootstrap_delta(base, other, n_resamples=2000, seed=7)
    r2 = paired_bootstrap_delta(base, other, n_resamples=2000, seed=7)
    r3 = paired_bootstrap_delta(base, other, n_resamples=2000, seed=8)
    assert r1 == r2
    assert r1[0] == r3[0] and r1[1:] != r3[1:]


def test_bootstrap_identical_arrays_zero():
    base, _ = _pair(300, 0.5, 0.5, seed=2)
    assert paired_bootstrap_delta(base, base.copy(), n_resamples=2000) == (0.0, 0.0, 0.0)


def test_bootstrap_delta_value_and_containment():
    base = np.array([True] * 60 + [False] * 40)
    other = np.array([True] * 50 + [False] * 10 + [True] * 5 + [False] * 35)
    delta, lo, hi = paired_bootstrap_delta(base, other, n_resamples=2000)
    assert delta == pytest.approx(-5.0)
    assert lo <= delta <= hi
    assert lo < hi
    for seed in range(5):
        b, o = _pair(400, 0.6, 0.55, seed=seed)
        d, lo, hi = paired_bootstrap_delta(b, o, n_resamples=2000, seed=seed)
        assert d == pytest.approx(100 * (o.mean() - b.mean()))
        assert lo <= d <= hi


def test_bootstrap_interval_matches_paired_standard_error():
    # The percentile interval should be close to delta +/- 1.96 * SE of the paired diff.
    b, o = _pair(2000, 0.6, 0.55, seed=3)
    d, lo, hi = paired_bootstrap_delta(b, o, n_resamples=4000, seed=0)
    diff = o.astype(float) - b.astype(float)
    se = 100 * diff.std(ddof=0) / math.sqrt(diff.size)
    assert (hi - lo) == pytest.approx(2 * Z_95 * se, rel=0.1)
    assert (lo + hi) / 2 == pytest.approx(d, abs=0.3 * se)


def test_bootstrap_width_shrinks_with_n():
    widths = []
    for n in (200, 800, 3200):
        b, o = _pair(n, 0.6, 0.5, seed=n)
        _, lo, hi = paired_bootstrap_delta(b, o, n_resamples=2000, seed=0)
        widths.append(hi - lo)
    assert widths[0] > widths[1] > widths[2]
    # roughly 1/sqrt(n): quadrupling n halves the width
    assert widths[0] / widths[2] == pytest.approx(4.0, rel=0.25)


def test_bootstrap_chunking_is_consistent(monkeypatch):
    # A small chunk forces several chunks; results stay deterministic and sensible.
    b, o = _pair(1000, 0.6, 0.55, seed=4)
    monkeypatch.setattr(stats, "_BOOTSTRAP_CHUNK_ELEMENTS", 50_000)
    r1 = paired_bootstrap_delta(b, o, n_resamples=2000, seed=0)
    r2 = paired_bootstrap_delta(b, o, n_resamples=2000, seed=0)
    assert r1 == r2 and r1[1] <= r1[0] <= r1[2]


def test_bootstrap_confidence_orders_intervals():
    b, o = _pair(500, 0.6, 0.55, seed=5)
    _, lo90, hi90 = paired_bootstrap_delta(b, o, n_resamples=2000, confidence=0.90)
    _, lo99, hi99 = paired_bootstrap_delta(b, o, n_resamples=2000, confidence=0.99)
    assert lo99 <= lo90 and hi90 <= hi99


def test_bootstrap_accepts_int01_and_lists():
    base = [1, 1, 0, 1, 0] * 20
    other = [True, False, False, True, True] * 20
    d, lo, hi = paired_bootstrap_delta(base, other, n_resamples=2000)
    assert d == pytest.approx(0.0) and lo <= 0.0 <= hi


def test_bootstrap_errors():
    b = np.ones(10, dtype=bool)
    with pytest.raises(ValueError):
        paired_bootstrap_delta(b, np.ones(11, dtype=bool))
    with pytest.raises(ValueError):
        paired_bootstrap_delta(np.array([], dtype=bool), np.array([], dtype=bool))
    with pytest.raises(ValueError):
        paired_bootstrap_delta(b, b, n_resamples=MIN_BOOTSTRAP_RESAMPLES - 1)
    with pytest.raises(ValueError):
        paired_bootstrap_delta(b, b, n_resamples=2000, confidence=1.0)
    with pytest.raises(ValueError):
        paired_bootstrap_delta(b, np.full(10, 2), n_resamples=2000)
    with pytest.raises(ValueError):
        paired_bootstrap_delta(b.reshape(2, 5), b.reshape(2, 5), n_resamples=2000)


# ---------------------------------------------------------------- compare / summary


def test_compare_flags_clear_drop_as_forgetting():
    n = 1000
    base = np.zeros(n, dtype=bool)
    other = np.zeros(n, dtype=bool)
    base[:700] = True  # base 70%
    other[:560] = True  # other keeps 560 of base's 700 ...
    other[700:720] = True  # ... and gains 20: b = 140, c = 20 -> other 58%
    r = compare_correctness(base, other, n_resamples=2000)
    assert set(r) == {
        "n", "acc_base", "acc_other", "delta_pp", "ci_low_pp", "ci_high_pp",
        "b", "c", "mcnemar_p", "significant", "forgetting",
    }
    assert r["n"] == n
    assert r["acc_base"] == pytest.approx(0.70)
    assert r["acc_other"] == pytest.approx(0.58)
    assert r["delta_pp"] == pytest.approx(-12.0)
    assert (r["b"], r["c"]) == (140, 20)
    assert r["mcnemar_p"] == mcnemar_exact(140, 20)
    assert r["mcnemar_p"] < 1e-10
    assert r["ci_low_pp"] <= r["delta_pp"] <= r["ci_high_pp"] < 0
    assert r["significant"] is True
    assert r["forgetting"] is True


def test_compare_no_difference_not_forgetting():
    base, _ = _pair(800, 0.6, 0.6, seed=9)
    r = compare_correctness(base, base.copy(), n_resamples=2000)
    assert r["delta_pp"] == 0.0 and (r["b"], r["c"]) == (0, 0)
    assert r["mcnemar_p"] == 1.0
    assert r["significant"] is False and r["forgetting"] is False


def test_compare_significant_gain_is_not_forgetting():
    n = 500
    base = np.zeros(n, dtype=bool)
    other = np.zeros(n, dtype=bool)
    base[:200] = True
    other[:300] = True  # b = 0, c = 100
    r = compare_correctness(base, other, n_resamples=2000)
    assert r["significant"] is True and r["forgetting"] is False
    assert r["delta_pp"] == pytest.approx(20.0)


def test_compare_alpha_and_types():
    base = np.array([True] * 30 + [False] * 70)
    other = np.array([True] * 22 + [False] * 8 + [False] * 70)  # b = 8, c = 0
    p = mcnemar_exact(8, 0)  # 2 / 256 = 0.0078125
    r = compare_correctness(base, other, n_resamples=2000, alpha=0.01)
    assert r["mcnemar_p"] == p and r["significant"] is True and r["forgetting"] is True
    r = compare_correctness(base, other, n_resamples=2000, alpha=0.005)
    assert r["significant"] is False and r["forgetting"] is False
    for key in ("n", "b", "c"):
        assert type(r[key]) is int
    for key in ("acc_base", "acc_other", "delta_pp", "ci_low_pp", "ci_high_pp", "mcnemar_p"):
        assert type(r[key]) is float
    with pytest.raises(ValueError):
        compare_correctness(base, other, alpha=0.0)
    with pytest.raises(ValueError):
        compare_correctness(base, other[:-1])


def test_accuracy_summary():
    s = accuracy_summary([True] * 8 + [False] * 2)
    assert s["n"] == 10 and s["correct"] == 8 and s["accuracy"] == 0.8
    assert s["ci95"] == list(wilson_interval(8, 10))
    assert isinstance(s["ci95"], list)
    s = accuracy_summary(np.array([0, 0, 1]))
    assert s["correct"] == 1 and s["accuracy"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError):
        accuracy_summary([])
