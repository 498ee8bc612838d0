"""Statistics of a comparison: the gap between two models, its interval, p-value and verdict.

Two sources of noise make one model's test accuracy differ from its "true" value:

- **training noise** (the seed: initialisation, data order, augmentation draws), seen as
  the spread of a model's runs;
- **test-set noise**: the test split is a finite sample of images, so every accuracy on it
  is an estimate. Its size follows from the per-image results of the test evaluation.

The gap ``mean(a) - mean(b)`` of two models' test top-1 is compared as follows.

- Seed noise. Runs of the two models that share every seed (so the split, the data order
  and the augmentation draws) are *paired*: Student's t on the per-seed differences, with
  ``n - 1`` degrees of freedom (``scipy.stats.ttest_rel``'s test). Otherwise Welch's t:
  standard error ``sqrt(s_a^2/n_a + s_b^2/n_b)`` and the Welch-Satterthwaite degrees of
  freedom ``se^4 / ((s_a^2/n_a)^2/(n_a-1) + (s_b^2/n_b)^2/(n_b-1))``
  (``scipy.stats.ttest_ind(equal_var=False)``'s test). When one model has a single run,
  the other model's spread stands for both (``df = n - 1`` of the model with seeds).
- Test-set noise. The per-image correctness of every run, averaged over each model's
  seeds, is bootstrapped over test images with ``scipy.stats.bootstrap``, *paired*: the
  same resampled images for both models. Its standard error ``se_test`` is added to the
  seed standard error in quadrature, ``se = sqrt(se_seed^2 + se_test^2)`` (the two are
  independent sources of variance), keeping the seed term's degrees of freedom. (The
  Satterthwaite value, ``se^4 / (se_seed^4 / df_seed)``, is larger, because the bootstrap
  term has practically infinite ones, and would make an interval *narrower* for adding a
  source of noise; keeping ``df_seed`` is conservative and never does.)
  With a single seed per model the interval covers the test set's noise only, and says so.
- Interval: ``gap ± t(0.975, df) · se``; p-value: two-sided, from the same t distribution.
  ``method="percentile"`` or ``"bca"`` instead takes both intervals from
  ``scipy.stats.bootstrap`` (seeds resampled, paired where runs share seeds; images
  resampled, paired) and adds them with the MOVER rule (Zou & Donner, 2008: the half-widths
  of independent components add in quadrature on each side); its p-value is twice the
  smaller share of the combined bootstrap distribution on either side of zero.
- Multiple comparisons: every row of one leaderboard is compared with the best model, so
  the p-values are adjusted with Holm's step-down method (Holm, 1979). scipy offers only
  false-discovery-rate adjustments (``scipy.stats.false_discovery_control``) and
  statsmodels is not a dependency, so Holm's few lines are written here.
- Verdict: ``better`` / ``worse`` when the adjusted p-value is below 0.05, else
  ``not distinguishable``; ``noise unknown`` when neither noise can be estimated (one run
  per model and no per-image results).
- Minimum detectable effect: the smallest true gap the comparison finds with 80% power at
  a two-sided 5% level, ``(t(0.975, df) + t(0.80, df)) · se`` (normal quantiles where the
  bootstrap or the test set alone gives the noise).

Accuracies are fractions in [0, 1] here, as records store them.
"""

from __future__ import annotations

import base64
import math
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
from scipy import stats

__all__ = [
    "ALPHA",
    "INTERVAL_METHODS",
    "POWER",
    "accuracy_interval",
    "GapEstimate",
    "compare_runs",
    "holm",
    "pack_correct",
    "unpack_correct",
    "verdict",
]

ALPHA = 0.05  # two-sided level of every interval and test
POWER = 0.80  # power of the minimum detectable effect
INTERVAL_METHODS = ("t", "percentile", "bca")
N_RESAMPLES = 2000


# ----- per-image results ---------------------------------------------------------------


def pack_correct(correct: Sequence[bool] | np.ndarray) -> dict[str, Any]:
    """Per-image correctness as ``{"n": count, "bits": base64 of the packed bits}``."""
    arr = np.asarray(correct)
    if arr.ndim != 1:
        raise ValueError(f"per-image correctness must be one flat vector, got shape {arr.shape}")
    if arr.dtype != bool:
        if not np.isin(arr, (0, 1)).all():
            raise ValueError("per-image correctness must hold only True/False (or 0/1)")
        arr = arr.astype(bool)
    return {"n": int(arr.size), "bits": base64.b64encode(np.packbits(arr)).decode("ascii")}


def unpack_correct(packed: dict[str, Any]) -> np.ndarray:
    """The boolean vector :func:`pack_correct` stored."""
    if not isinstance(packed, dict) or "n" not in packed or "bits" not in packed:
        raise ValueError("packed per-image results need the keys 'n' and 'bits'")
    n = int(packed["n"])
    raw = np.frombuffer(base64.b64decode(packed["bits"]), dtype=np.uint8)
    if raw.size * 8 < n:
        raise ValueError(f"packed per-image results hold {raw.size * 8} bits, fewer than n={n}")
    return np.unpackbits(raw, count=n).astype(bool)


# ----- multiple comparisons and verdicts -----------------------------------------------


def holm(pvalues: Sequence[float | None]) -> list[float | None]:
    """Holm's step-down adjusted p-values (``None`` entries stay ``None``, not counted).

    Sorted ascending, the i-th smallest of m p-values becomes ``(m - i + 1) p_(i)``, made
    non-decreasing along the order and capped at 1.
    """
    idx = [i for i, p in enumerate(pvalues) if p is not None]
    for i in idx:
        p = pvalues[i]
        if not (0.0 <= p <= 1.0):  # type: ignore[operator]
            raise ValueError(f"p-values must lie in [0, 1], got {p!r}")
    m = len(idx)
    adjusted: list[float | None] = [None] * len(pvalues)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda j: pvalues[j])):  # type: ignore[arg-type,return-value]
        running = max(running, min(1.0, (m - rank) * pvalues[i]))  # type: ignore[operator]
        adjusted[i] = running
    return adjusted


def verdict(p_adjusted: float | None, gap: float | None, alpha: float = ALPHA) -> str:
    """'better' / 'worse' (the first model against the second) or 'not distinguishable'."""
    if p_adjusted is None or gap is None:
        return "noise unknown"
    if p_adjusted < alpha and gap != 0:
        return "better" if gap > 0 else "worse"
    return "not distinguishable"


# ----- one comparison ------------------------------------------------------------------


@dataclass
class GapEstimate:
    """The gap ``mean(a) - mean(b)`` with its interval, test and verdict (fractions)."""

    gap: float
    n_a: int
    n_b: int
    test: str  # "paired t", "Welch t", ..., or "none"
    noise: str  # which noise the interval covers: "seeds", "seeds + test set", ...
    ci_low: float | None = None
    ci_high: float | None = None
    se: float | None = None
    df: float | None = None
    p: float | None = None
    p_adjusted: float | None = None
    mde: float | None = None
    n_images: int | None = None
    method: str = "t"
    verdict: str = "noise unknown"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict: infinite degrees of freedom (normal quantiles) become None."""
        d = asdict(self)
        if d["df"] is not None and not math.isfinite(d["df"]):
            d["df"] = None
        return d


def _floats(name: str, values: Sequence[float]) -> np.ndarray:
    arr = np.asarray(values, dtype=float)
    if arr.ndim != 1 or arr.size == 0:
        raise ValueError(f"{name}: need a non-empty list of accuracies, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name}: accuracies must be finite numbers, got {arr.tolist()}")
    return arr


def _per_image(name: str, correct: Any, n_runs: int) -> np.ndarray | None:
    if correct is None:
        return None
    arr = np.asarray(correct, dtype=float)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2 or arr.shape[0] != n_runs:
        raise ValueError(
            f"{name}: per-image results need one row per run ({n_runs}), got shape {arr.shape}"
        )
    if not np.isin(arr, (0.0, 1.0)).all():
        raise ValueError(f"{name}: per-image results must be 0/1 (wrong/right)")
    return arr


def _t_p(gap: float, se: float, df: float) -> float:
    if se == 0:
        return 0.0 if gap != 0 else 1.0
    return float(2 * stats.t.sf(abs(gap) / se, df))


def _diff_of_means(x: np.ndarray, y: np.ndarray, axis: int = -1) -> np.ndarray:
    return np.mean(x, axis=axis) - np.mean(y, axis=axis)


def _bootstrap(
    samples: tuple[np.ndarray, np.ndarray],
    paired: bool,
    method: str,
    confidence: float,
    n_resamples: int,
    seed: int,
) -> tuple[float, float, np.ndarray]:
    """(low, high, bootstrap distribution) of the difference of means via scipy."""
    point = float(_diff_of_means(*samples))
    if all(np.ptp(s) == 0 for s in samples):  # every resample is the same: no spread
        return point, point, np.full(n_resamples, point)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BCa on very few seeds warns; its result stands
        res = stats.bootstrap(
            samples,
            _diff_of_means,
            paired=paired,
            vectorized=True,
            n_resamples=n_resamples,
            confidence_level=confidence,
            method="BCa" if method == "bca" else "percentile",
            rng=np.random.default_rng(seed),
        )
    low, high = float(res.confidence_interval.low), float(res.confidence_interval.high)
    dist = np.asarray(res.bootstrap_distribution, dtype=float)
    if not (math.isfinite(low) and math.isfinite(high)):  # BCa undefined: fall back
        low, high = (
            float(q) for q in np.quantile(dist, [(1 - confidence) / 2, (1 + confidence) / 2])
        )
    return low, high, dist


def compare_runs(
    a: Sequence[float],
    b: Sequence[float],
    *,
    seeds_a: Sequence[int] | None = None,
    seeds_b: Sequence[int] | None = None,
    correct_a: Any = None,
    correct_b: Any = None,
    method: str = "t",
    confidence: float = 1 - ALPHA,
    n_resamples: int = N_RESAMPLES,
    seed: int = 0,
) -> GapEstimate:
    """The gap between model ``a`` and model ``b`` (one accuracy per run, fractions).

    ``seeds_a`` / ``seeds_b``: the runs' seeds; identical seed sets (two or more) make the
    comparison paired. ``correct_a`` / ``correct_b``: per-image correctness of each run's
    test evaluation (one row per run, same images in the same order for both models), for
    the test set's sampling noise. ``method``: ``"t"`` (default), ``"percentile"`` or
    ``"bca"`` (bootstrap intervals). ``n_resamples`` and ``seed``: the bootstraps' size and
    random seed (``seed`` resamples the seeds, ``seed + 1`` the images). The verdict uses
    the unadjusted p-value; a leaderboard re-decides it after :func:`holm`.
    """
    if method not in INTERVAL_METHODS:
        raise ValueError(f"unknown interval method {method!r}; choose one of {INTERVAL_METHODS}")
    if not 0.5 < confidence < 1:
        raise ValueError(f"confidence must be in (0.5, 1), got {confidence}")
    xa, xb = _floats("a", a), _floats("b", b)
    for name, seeds, x in (("seeds_a", seeds_a, xa), ("seeds_b", seeds_b, xb)):
        if seeds is not None and len(seeds) != len(x):
            raise ValueError(f"{name}: {len(seeds)} seeds for {len(x)} accuracies")
        if seeds is not None and len(set(seeds)) != len(seeds):
            raise ValueError(f"{name}: a seed is listed twice: {list(seeds)}")
    ca, cb = (
        _per_image("correct_a", correct_a, xa.size),
        _per_image("correct_b", correct_b, xb.size),
    )
    if (ca is None) != (cb is None):
        ca = cb = None  # test-set noise needs both models' per-image results
    if ca is not None and ca.shape[1] != cb.shape[1]:
        raise ValueError(
            f"per-image results cover {ca.shape[1]} and {cb.shape[1]} images; both models "
            "must be evaluated on the same test set"
        )
    gap = float(xa.mean() - xb.mean())
    est = GapEstimate(gap=gap, n_a=int(xa.size), n_b=int(xb.size), test="none", noise="none")
    est.method = method
    alpha = 1 - confidence
    paired = (
        seeds_a is not None
        and seeds_b is not None
        and xa.size >= 2
        and sorted(seeds_a) == sorted(seeds_b)
    )

    # seed noise: standard error, degrees of freedom and name of the test
    se_seed = df_seed = None
    seed_samples: tuple[np.ndarray, np.ndarray] | None = None
    if paired:
        order_a = np.argsort(np.asarray(seeds_a))
        order_b = np.argsort(np.asarray(seeds_b))
        d = xa[order_a] - xb[order_b]
        se_seed, df_seed = float(stats.sem(d)), float(d.size - 1)
        est.test = "paired t"
        seed_samples = (xa[order_a], xb[order_b])
    elif xa.size >= 2 and xb.size >= 2:
        va, vb = xa.var(ddof=1) / xa.size, xb.var(ddof=1) / xb.size
        se_seed = float(math.sqrt(va + vb))
        denom = va**2 / (xa.size - 1) + vb**2 / (xb.size - 1)
        df_seed = float((va + vb) ** 2 / denom) if denom > 0 else float(xa.size + xb.size - 2)
        est.test = "Welch t"
        seed_samples = (xa, xb)
    elif xa.size >= 2 or xb.size >= 2:
        many = xa if xa.size >= 2 else xb
        se_seed = float(many.std(ddof=1) * math.sqrt(1 / xa.size + 1 / xb.size))
        df_seed = float(many.size - 1)
        est.test = "t (one model has one run; the other's spread stands for both)"
    if se_seed is not None:
        est.noise = "seeds"

    if ca is not None:
        est.n_images = int(ca.shape[1])
        img = (ca.mean(axis=0), cb.mean(axis=0))  # per image: share of each model's seeds right
        if se_seed is None:
            est.noise = "test set only (one run per model: training noise not covered)"
        else:
            est.noise = "seeds + test set"
        est.test = (est.test + " + " if se_seed is not None else "") + "paired image bootstrap"
    else:
        img = None

    if est.noise == "none":
        return est  # one run each and no per-image results: noise unknown

    if method == "t":
        se_test = None
        if img is not None:
            if np.ptp(img[0] - img[1]) == 0:
                se_test = 0.0
            else:
                res = stats.bootstrap(
                    img,
                    _diff_of_means,
                    paired=True,
                    vectorized=True,
                    n_resamples=n_resamples,
                    method="percentile",
                    rng=np.random.default_rng(seed + 1),
                )
                se_test = float(res.standard_error)
        if se_seed is not None and se_test is not None:
            se, df = math.sqrt(se_seed**2 + se_test**2), df_seed
        elif se_seed is not None:
            se, df = se_seed, df_seed
        else:
            se, df = se_test, math.inf
        q = float(stats.t.ppf(1 - alpha / 2, df))
        est.se, est.df = se, df
        est.ci_low, est.ci_high = gap - q * se, gap + q * se
        est.p = _t_p(gap, se, df)
        est.mde = (q + float(stats.t.ppf(POWER, df))) * se
    else:
        parts = []  # (low, high, point, centred distribution) of each independent component
        if seed_samples is not None:
            lo, hi, dist = _bootstrap(seed_samples, paired, method, confidence, n_resamples, seed)
            parts.append((lo, hi, gap, dist - gap))
        elif se_seed is not None:  # one model has one run: nothing to resample for it
            est.test = est.test.replace("t (", "t interval for seeds (")
            q = float(stats.t.ppf(1 - alpha / 2, df_seed))
            draws = stats.t.rvs(df_seed, size=n_resamples, random_state=np.random.default_rng(seed))
            parts.append((gap - q * se_seed, gap + q * se_seed, gap, draws * se_seed))
        if img is not None:
            point = float(_diff_of_means(*img))
            lo, hi, dist = _bootstrap(img, True, method, confidence, n_resamples, seed + 1)
            parts.append((lo, hi, point, dist - point))
        if seed_samples is not None:
            est.test = est.test.replace("paired t", "paired seed bootstrap").replace(
                "Welch t", "seed bootstrap"
            )
        est.ci_low = gap - math.sqrt(sum((pt - lo) ** 2 for lo, _, pt, _ in parts))
        est.ci_high = gap + math.sqrt(sum((hi - pt) ** 2 for _, hi, pt, _ in parts))
        combined = gap + sum(d for *_, d in parts)
        below, above = float(np.mean(combined <= 0)), float(np.mean(combined >= 0))
        est.p = min(1.0, 2 * min(below, above))
        est.se = float(np.std(combined, ddof=1))
        est.df = math.inf
        est.mde = float(stats.norm.ppf(1 - alpha / 2) + stats.norm.ppf(POWER)) * est.se
    est.verdict = verdict(est.p, gap, alpha)
    return est


def accuracy_interval(
    values: Sequence[float], n_images: int | None = None, confidence: float = 1 - ALPHA
) -> tuple[float, float, str] | None:
    """Interval of one model's mean accuracy: ``(low, high, noise covered)`` or None.

    Seed noise: Student t over the runs (``s / sqrt(n)``, ``n - 1`` degrees of freedom).
    Test-set noise: the binomial standard error ``sqrt(p (1 - p) / n_images)``. Both are
    added in quadrature, keeping the seed term's degrees of freedom, as for a gap.
    """
    x = _floats("values", values)
    mean = float(x.mean())
    var_seed = float(x.var(ddof=1) / x.size) if x.size >= 2 else None
    var_test = mean * (1 - mean) / n_images if n_images else None
    if var_seed is None and var_test is None:
        return None
    if var_seed is not None and var_test is not None:
        var, df = var_seed + var_test, float(x.size - 1)
        noise = "seeds + test set"
    elif var_seed is not None:
        var, df, noise = var_seed, float(x.size - 1), "seeds"
    else:
        var, df, noise = var_test, math.inf, "test set only"
    half = float(stats.t.ppf(1 - (1 - confidence) / 2, df)) * math.sqrt(var)
    return mean - half, mean + half, noise
