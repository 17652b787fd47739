"""Statistics for comparing MCQ accuracy between runs (pure functions, no I/O).

Everything here works on per-item correctness vectors: one boolean per benchmark item,
``True`` when the model answered that item correctly. Two runs are compared *paired*, i.e.
item ``i`` of the base run is matched with item ``i`` of the other run, so both vectors must
be aligned on the same item order before they get here.

* :func:`wilson_interval` -- Wilson score interval for one accuracy.
* :func:`mcnemar_exact` -- exact two-sided McNemar test on the discordant pair counts.
* :func:`paired_bootstrap_delta` -- percentile bootstrap CI of the accuracy difference,
  resampling items (the same resampled items for both runs).
* :func:`compare_correctness` -- all of the above for one (base, other) pair, as a dict.
* :func:`accuracy_summary` -- n / correct / accuracy / Wilson CI for one run.

Conventions: accuracies are fractions in [0, 1]; deltas and their intervals are in
percentage points (``100 * (acc_other - acc_base)``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence

import numpy as np

__all__ = [
    "Z_95",
    "MIN_BOOTSTRAP_RESAMPLES",
    "wilson_interval",
    "mcnemar_exact",
    "paired_bootstrap_delta",
    "compare_correctness",
    "accuracy_summary",
]

#: Two-sided 95% standard-normal quantile, Phi^-1(0.975).
Z_95 = 1.959963984540054

#: The analysis spec requires at least this many bootstrap resamples.
MIN_BOOTSTRAP_RESAMPLES = 2000

# Largest discordant count for which mcnemar_exact sums binomial coefficients with exact
# integer arithmetic; above it the (still exact-test) tail sum is done in log space.
_EXACT_INT_MAX_N = 50_000

# Upper bound on resamples x items handled per bootstrap chunk (int64 indices: 32 MB).
_BOOTSTRAP_CHUNK_ELEMENTS = 4_000_000


def _as_count(value: object, name: str) -> int:
    """A non-negative integer count (int or numpy integer; bools and floats rejected)."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be an integer, got bool")
    try:
        count = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an integer, got {type(value).__name__}") from None
    if count < 0:
        raise ValueError(f"{name} must be >= 0, got {count}")
    return count


def wilson_interval(correct: int, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a binomial proportion ``correct / n``.

    With ``p = correct / n``::

        centre = (p + z^2 / (2n)) / (1 + z^2 / n)
        half   = z * sqrt(p (1 - p) / n + z^2 / (4 n^2)) / (1 + z^2 / n)

    and the interval is ``(centre - half, centre + half)``, clamped to [0, 1] (the lower
    bound is exactly 0.0 when ``correct == 0`` and the upper exactly 1.0 when
    ``correct == n``). The default ``z`` gives a 95% interval.

    Raises ``ValueError`` when ``n == 0`` (a proportion of nothing has no interval worth
    reporting -- callers should not silently print (0, 1)), when ``correct`` is outside
    ``[0, n]`` or when ``z <= 0``.
    """
    k = _as_count(correct, "correct")
    n = _as_count(n, "n")
    if n == 0:
        raise ValueError("wilson_interval: n must be > 0")
    if k > n:
        raise ValueError(f"wilson_interval: correct={k} exceeds n={n}")
    z = float(z)
    if not (z > 0 and math.isfinite(z)):
        raise ValueError(f"wilson_interval: z must be a positive finite number, got {z}")

    p = k / n
    z2 = z * z
    denom = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denom
    half = z * math.sqrt(p * (1.0 - p) / n + z2 / (4.0 * n * n)) / denom
    lo = 0.0 if k == 0 else min(1.0, max(0.0, centre - half))
    hi = 1.0 if k == n else min(1.0, max(0.0, centre + half))
    return lo, hi


def _binom_half_cdf_exact(m: int, n: int) -> float:
    """P(X <= m) for X ~ Binomial(n, 1/2), by exact integer arithmetic (correctly rounded)."""
    term = 1  # C(n, 0)
    total = 1
    for k in range(1, m + 1):
        term = term * (n - k + 1) // k  # exact: C(n, k) = C(n, k-1) * (n-k+1) / k
        total += term
    return total / (1 << n)  # int / int is correctly rounded (underflows to 0.0 if tiny)


def _binom_half_cdf_log(m: int, n: int) -> float:
    """P(X <= m) for X ~ Binomial(n, 1/2), m <= n/2, summed in log space (rel. err ~1e-12)."""
    log_half_n = n * math.log(0.5)
    lgn1 = math.lgamma(n + 1)
    # Terms increase with k for k <= n/2, so the largest is at k = m; sum downward from it
    # and stop once the remaining terms cannot change the result.
    log_top = lgn1 - math.lgamma(m + 1) - math.lgamma(n - m + 1)
    rel = 0.0
    for k in range(m, -1, -1):
        log_term = lgn1 - math.lgamma(k + 1) - math.lgamma(n - k + 1) - log_top
        if log_term < -50.0:  # e^-50 ~ 2e-22: below double precision of the running sum
            break
        rel += math.exp(log_term)
    return math.exp(log_top + log_half_n + math.log(rel))


def mcnemar_exact(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value from the discordant counts.

    ``b`` = items the base run got right and the other run got wrong, ``c`` = items the base
    run got wrong and the other got right. Under H0 the discordant items split 50/50, so
    with ``n = b + c`` and ``X ~ Binomial(n, 1/2)``::

        p = min(1, 2 * P(X <= min(b, c)))

    ``n == 0`` gives 1.0. For ``n <= 50,000`` the tail is summed with exact integer
    arithmetic and divided once (correctly rounded); above that it is summed in log space.
    Extremely small p-values underflow to 0.0 (e.g. ``b=0, c=10_000``: 2 / 2**10000).
    """
    b = _as_count(b, "b")
    c = _as_count(c, "c")
    n = b + c
    if n == 0:
        return 1.0
    m = min(b, c)
    if 2 * m >= n:  # b == c: the tail already covers at least half the mass
        return 1.0
    if n <= _EXACT_INT_MAX_N:
        tail = _binom_half_cdf_exact(m, n)
    else:
        tail = _binom_half_cdf_log(m, n)
    return min(1.0, 2.0 * tail)


def _as_correctness(values: object, name: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {arr.shape}")
    if arr.dtype != np.bool_:
        if arr.size and not np.isin(arr, (0, 1)).all():
            raise ValueError(f"{name} must be boolean (or 0/1) per-item correctness")
        arr = arr.astype(bool)
    return arr


def _paired_arrays(base_correct: object, other_correct: object) -> tuple[np.ndarray, np.ndarray]:
    base = _as_correctness(base_correct, "base_correct")
    other = _as_correctness(other_correct, "other_correct")
    if base.shape != other.shape:
        raise ValueError(
            f"paired correctness vectors differ in length: {base.shape[0]} vs {other.shape[0]}"
        )
    if base.shape[0] == 0:
        raise ValueError("paired correctness vectors are empty")
    return base, other


def paired_bootstrap_delta(
    base_correct: np.ndarray,
    other_correct: np.ndarray,
    n_resamples: int = 10_000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Observed accuracy delta and its paired percentile-bootstrap interval, in pp.

    ``delta = 100 * (mean(other) - mean(base))``. Each resample draws ``n`` item indices
    with replacement (``numpy.random.default_rng(seed)``) and applies the *same* indices
    to both runs; the interval is the ``(1 - confidence) / 2`` and
    ``(1 + confidence) / 2`` percentiles (numpy's default linear interpolation) of the
    resampled deltas. Returns ``(delta_pp, ci_low_pp, ci_high_pp)``.

    Resamples are drawn in chunks of at most ~4M indices (~32 MB of int64), so memory stays
    bounded regardless of ``n_resamples`` x ``n``. The chunk size depends only on ``n``,
    so results are a deterministic function of (inputs, n_resamples, seed).

    Raises ``ValueError`` if the vectors differ in length or are empty, are not 1-D
    boolean/0-1 vectors, if ``n_resamples < 2000`` (the analysis spec requires at least
    2,000 resamples; :data:`MIN_BOOTSTRAP_RESAMPLES`), or if ``confidence`` is not in (0, 1).
    """
    base, other = _paired_arrays(base_correct, other_correct)
    n_resamples = _as_count(n_resamples, "n_resamples")
    if n_resamples < MIN_BOOTSTRAP_RESAMPLES:
        raise ValueError(
            f"n_resamples must be >= {MIN_BOOTSTRAP_RESAMPLES}, got {n_resamples}"
        )
    confidence = float(confidence)
    if not (0.0 < confidence < 1.0):
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")

    n = base.shape[0]
    # Per-item difference in {-1, 0, +1}; a resample's delta is 100 * mean(diff[idx]).
    diff = other.astype(np.int8) - base.astype(np.int8)
    delta_pp = 100.0 * int(diff.sum(dtype=np.int64)) / n

    rng = np.random.default_rng(seed)
    sums = np.empty(n_resamples, dtype=np.int64)
    chunk = max(1, _BOOTSTRAP_CHUNK_ELEMENTS // n)
    for start in range(0, n_resamples, chunk):
        stop = min(start + chunk, n_resamples)
        idx = rng.integers(0, n, size=(stop - start, n))
        sums[start:stop] = diff[idx].sum(axis=1, dtype=np.int64)
    deltas = sums * (100.0 / n)

    tail = (1.0 - confidence) / 2.0
    lo, hi = np.percentile(deltas, [100.0 * tail, 100.0 * (1.0 - tail)])
    return delta_pp, float(lo), float(hi)


def compare_correctness(
    base_correct: np.ndarray,
    other_correct: np.ndarray,
    *,
    n_resamples: int = 10_000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict:
    """Paired comparison of two runs' per-item correctness on the same items.

    Returns a JSON-serialisable dict (plain Python int/float/bool)::

        n           number of paired items
        acc_base    base accuracy (fraction)
        acc_other   other accuracy (fraction)
        delta_pp    100 * (acc_other - acc_base)
        ci_low_pp   paired percentile-bootstrap interval of delta_pp (confidence 1 - alpha)
        ci_high_pp
        b           items base got right and other got wrong
        c           items base got wrong and other got right
        mcnemar_p   exact two-sided McNemar p-value (:func:`mcnemar_exact`)
        significant mcnemar_p < alpha
        forgetting  significant and delta_pp < 0

    The bootstrap interval uses ``confidence = 1 - alpha`` so it matches the test level.
    Raises ``ValueError`` as :func:`paired_bootstrap_delta` does, or if ``alpha`` is not
    in (0, 1).
    """
    alpha = float(alpha)
    if not (0.0 < alpha < 1.0):
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    base, other = _paired_arrays(base_correct, other_correct)
    n = int(base.shape[0])
    b = int(np.count_nonzero(base & ~other))
    c = int(np.count_nonzero(~base & other))
    delta_pp, lo, hi = paired_bootstrap_delta(
        base, other, n_resamples=n_resamples, seed=seed, confidence=1.0 - alpha
    )
    p = mcnemar_exact(b, c)
    significant = p < alpha
    return {
        "n": n,
        "acc_base": int(np.count_nonzero(base)) / n,
        "acc_other": int(np.count_nonzero(other)) / n,
        "delta_pp": delta_pp,
        "ci_low_pp": lo,
        "ci_high_pp": hi,
        "b": b,
        "c": c,
        "mcnemar_p": p,
        "significant": bool(significant),
        "forgetting": bool(significant and delta_pp < 0),
    }


def accuracy_summary(correct: Sequence[bool]) -> dict:
    """``{"n", "correct", "accuracy", "ci95": [lo, hi]}`` for one run's per-item correctness.

    ``accuracy`` is a fraction; ``ci95`` is the 95% Wilson interval. Raises ``ValueError``
    on an empty sequence (as :func:`wilson_interval` does for n == 0).
    """
    arr = _as_correctness(correct, "correct")
    n = int(arr.shape[0])
    if n == 0:
        raise ValueError("accuracy_summary: no items")
    k = int(np.count_nonzero(arr))
    lo, hi = wilson_interval(k, n)
    return {"n": n, "correct": k, "accuracy": k / n, "ci95": [lo, hi]}
