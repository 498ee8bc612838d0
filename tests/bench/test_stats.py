"""Gap statistics: intervals, tests, Holm, test-set noise and detectable gaps against scipy."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from archbench.bench.stats import (
    accuracy_interval,
    compare_runs,
    holm,
    pack_correct,
    unpack_correct,
    verdict,
)

# Model b: 4 seeds with a wide spread; model a: 3 seeds with a narrow one (unpaired runs).
DEV_A = np.array([0.004, -0.006, 0.002])
DEV_B = np.array([0.021, -0.013, 0.008, -0.016])


def _welch_half_width() -> tuple[float, float, float]:
    """(se, df, half-width) of the Welch 95% interval, written out from the formula."""
    va = DEV_A.var(ddof=1) / DEV_A.size
    vb = DEV_B.var(ddof=1) / DEV_B.size
    se = math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / (DEV_A.size - 1) + vb**2 / (DEV_B.size - 1))
    return se, df, stats.t.ppf(0.975, df) * se


def test_welch_interval_and_verdict_at_the_boundary():
    se, df, half = _welch_half_width()
    assert 3 < df < 5  # unequal spreads: well below n_a + n_b - 2 = 5
    for factor, expected in ((1.02, "worse"), (0.98, "not distinguishable")):
        gap = -half * factor
        a, b = 0.70 + gap + DEV_A, 0.70 + DEV_B
        est = compare_runs(a, b)
        assert est.test == "Welch t" and est.noise == "seeds"
        assert est.df == pytest.approx(df)
        assert est.se == pytest.approx(se)
        assert (est.ci_low, est.ci_high) == pytest.approx((gap - half, gap + half))
        assert est.p == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
        assert est.verdict == expected
        # the same gap the other way round
        assert compare_runs(b, a).verdict == {"worse": "better"}.get(expected, expected)


def test_paired_when_seeds_are_shared_welch_otherwise():
    # a large seed effect shared by both models hides a small consistent gap from Welch
    shared = np.array([0.00, 0.05, -0.04])
    diffs = np.array([-0.010, -0.012, -0.014])
    b = 0.6 + shared
    half = stats.t.ppf(0.975, 2) * diffs.std(ddof=1) / math.sqrt(3)
    for factor, expected in ((1.03, "worse"), (0.97, "not distinguishable")):
        d = diffs - diffs.mean() - half * factor
        a = b + d
        est = compare_runs(a, b, seeds_a=[0, 1, 2], seeds_b=[0, 1, 2])
        assert est.test == "paired t" and est.df == 2
        ci = stats.ttest_rel(a, b).confidence_interval(0.95)
        assert (est.ci_low, est.ci_high) == pytest.approx((ci.low, ci.high))
        assert est.verdict == expected
    a = b + diffs
    paired = compare_runs(a, b, seeds_a=[0, 1, 2], seeds_b=[0, 1, 2])
    assert paired.test == "paired t"
    # seeds given in another order: the runs are matched by seed, not by position
    shuffled = compare_runs(a[[2, 0, 1]], b, seeds_a=[2, 0, 1], seeds_b=[0, 1, 2])
    assert (shuffled.ci_low, shuffled.ci_high) == pytest.approx((paired.ci_low, paired.ci_high))
    assert paired.verdict == "worse"
    unpaired = compare_runs(a, b, seeds_a=[0, 1, 2], seeds_b=[3, 4, 5])
    assert unpaired.test == "Welch t" and unpaired.verdict == "not distinguishable"
    assert compare_runs(a, b).test == "Welch t"  # no seeds known: not paired


def test_one_run_against_several_uses_the_others_spread():
    b = np.array([0.60, 0.62, 0.64])
    est = compare_runs([0.55], b)
    se = b.std(ddof=1) * math.sqrt(1 / 1 + 1 / 3)
    half = stats.t.ppf(0.975, 2) * se
    assert est.se == pytest.approx(se) and est.df == 2
    assert est.ci_high == pytest.approx(0.55 - 0.62 + half)


def test_holm_on_a_hand_example():
    # sorted: 0.005*4=0.02, 0.01*3=0.03, 0.03*2=0.06, 0.04*1=0.04 -> max so far 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.2, None, 0.5]) == [pytest.approx(0.4), None, pytest.approx(0.5)]
    assert holm([0.6, 0.7]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([]) == []
    with pytest.raises(ValueError, match="p-values must lie in"):
        holm([0.1, 1.5])


def test_verdict_words():
    assert verdict(0.01, -0.02) == "worse" and verdict(0.01, 0.02) == "better"
    assert verdict(0.05, 0.02) == "not distinguishable"
    assert verdict(None, 0.02) == "noise unknown"


def test_test_set_bootstrap_matches_the_exact_binomial():
    # one run each; model a right on 60 of 200 images, model b on none: the paired
    # bootstrap of the gap is then exactly Binomial(200, 0.3) / 200
    n, k = 200, 60
    right = np.zeros(n, dtype=bool)
    right[:k] = True
    wrong = np.zeros(n, dtype=bool)
    est = compare_runs([k / n], [0.0], correct_a=right, correct_b=wrong, method="percentile")
    assert est.noise.startswith("test set only")
    lo = stats.binom.ppf(0.025, n, k / n) / n
    hi = stats.binom.ppf(0.975, n, k / n) / n
    assert est.ci_low == pytest.approx(lo, abs=1.5 / n)
    assert est.ci_high == pytest.approx(hi, abs=1.5 / n)
    t_est = compare_runs([k / n], [0.0], correct_a=right, correct_b=wrong)
    binomial_se = math.sqrt(0.3 * 0.7 / n)
    assert t_est.se == pytest.approx(binomial_se, rel=0.06) and t_est.df == math.inf
    assert t_est.ci_high - t_est.gap == pytest.approx(1.96 * binomial_se, rel=0.06)


def test_test_set_bootstrap_is_paired_over_images():
    # both models right on most of the same images: the paired noise is far smaller
    n = 1000
    a = np.zeros(n, dtype=bool)
    a[:800] = True
    b = a.copy()
    b[780:800] = False  # b misses 20 images a gets right
    est = compare_runs([a.mean()], [b.mean()], correct_a=a, correct_b=b)
    d = a.astype(float) - b.astype(float)
    paired_se = d.std() / math.sqrt(n)  # normal reference for the mean of paired differences
    unpaired_se = math.sqrt(0.8 * 0.2 / n + 0.78 * 0.22 / n)
    assert est.se == pytest.approx(paired_se, rel=0.06)
    assert est.se < 0.5 * unpaired_se
    assert est.verdict == "better"  # 2 pp with 20 discordant images, all one way


def test_seed_and_test_set_noise_combine():
    rng = np.random.default_rng(3)
    n = 500
    ca = rng.random((3, n)) < 0.8
    cb = rng.random((3, n)) < 0.75
    a, b = ca.mean(axis=1), cb.mean(axis=1)
    est = compare_runs(a, b, seeds_a=[0, 1, 2], seeds_b=[0, 1, 2], correct_a=ca, correct_b=cb)
    assert est.noise == "seeds + test set" and est.n_images == n
    se_seed = stats.sem(a - b)
    d = ca.mean(axis=0) - cb.mean(axis=0)
    se_test = d.std() / math.sqrt(n)
    se = math.sqrt(se_seed**2 + se_test**2)
    assert est.se == pytest.approx(se, rel=0.03)
    assert est.df == 2  # the seed term's degrees of freedom (conservative)
    assert est.ci_high - est.gap == pytest.approx(stats.t.ppf(0.975, 2) * est.se)
    seeds_only = compare_runs(a, b, seeds_a=[0, 1, 2], seeds_b=[0, 1, 2])
    assert est.ci_high - est.ci_low > seeds_only.ci_high - seeds_only.ci_low


def test_minimum_detectable_effect():
    se, df, _ = _welch_half_width()
    est = compare_runs(0.7 + DEV_A, 0.7 + DEV_B)
    assert est.mde == pytest.approx((stats.t.ppf(0.975, df) + stats.t.ppf(0.8, df)) * se)
    # a true gap of that size is found with about 80% power (noncentral t)
    crit = stats.t.ppf(0.975, df)
    power = stats.nct.sf(crit, df, est.mde / se) + stats.nct.cdf(-crit, df, est.mde / se)
    assert 0.75 < power < 0.85
    n = 400
    right = np.arange(n) < 300
    one_seed = compare_runs([0.75], [0.0], correct_a=right, correct_b=np.zeros(n, dtype=bool))
    assert one_seed.mde == pytest.approx((1.959964 + 0.841621) * one_seed.se, rel=1e-5)


def test_one_run_each_without_per_image_results_is_noise_unknown():
    est = compare_runs([0.6], [0.7])
    assert est.verdict == "noise unknown" and est.ci_low is None and est.p is None


def test_bootstrap_options():
    rng = np.random.default_rng(0)
    ca = rng.random((3, 300)) < 0.7
    cb = rng.random((3, 300)) < 0.6
    a, b = ca.mean(axis=1), cb.mean(axis=1)
    for method in ("percentile", "bca"):
        est = compare_runs(
            a, b, seeds_a=[0, 1, 2], seeds_b=[0, 1, 2], correct_a=ca, correct_b=cb, method=method
        )
        assert est.method == method and "bootstrap" in est.test
        assert est.ci_low < est.gap < est.ci_high and 0 <= est.p <= 1


def _scipy_interval(samples, paired, method, seed):
    res = stats.bootstrap(
        samples,
        lambda x, y, axis: x.mean(axis=axis) - y.mean(axis=axis),
        paired=paired,
        vectorized=True,
        n_resamples=2000,
        method=method,
        rng=np.random.default_rng(seed),
    )
    return res.confidence_interval.low, res.confidence_interval.high


def test_bootstrap_intervals_are_scipys_and_pair_by_seed():
    a = np.array([0.71, 0.74, 0.69, 0.73, 0.75])
    b = np.array([0.70, 0.71, 0.69, 0.70, 0.74])
    seeds = [0, 1, 2, 3, 4]
    for method, scipy_method in (("percentile", "percentile"), ("bca", "BCa")):
        paired = compare_runs(a, b, seeds_a=seeds, seeds_b=seeds, method=method, seed=5)
        ref = _scipy_interval((a, b), True, scipy_method, 5)
        assert (paired.ci_low, paired.ci_high) == pytest.approx(ref)
        assert paired.test == "paired seed bootstrap"
        unpaired = compare_runs(a, b, method=method, seed=5)
        assert (unpaired.ci_low, unpaired.ci_high) == pytest.approx(
            _scipy_interval((a, b), False, scipy_method, 5)
        )
    # images only (one run each): the interval is the paired image bootstrap's
    rng = np.random.default_rng(1)
    ca, cb = rng.random(150) < 0.9, rng.random(150) < 0.8
    est = compare_runs([ca.mean()], [cb.mean()], correct_a=ca, correct_b=cb, method="bca")
    ref = _scipy_interval((ca.astype(float), cb.astype(float)), True, "BCa", 1)
    assert (est.ci_low, est.ci_high) == pytest.approx(ref)


def test_bad_input_fails_clearly():
    with pytest.raises(ValueError, match="finite"):
        compare_runs([0.5, float("nan")], [0.4, 0.5])
    with pytest.raises(ValueError, match="unknown interval method 'bootstrap'"):
        compare_runs([0.5, 0.6], [0.4, 0.5], method="bootstrap")
    with pytest.raises(ValueError, match="same test set"):
        compare_runs([0.5], [0.4], correct_a=np.ones(10), correct_b=np.ones(12))
    with pytest.raises(ValueError, match="one row per run"):
        compare_runs([0.5, 0.6], [0.4], correct_a=np.ones(10), correct_b=np.ones(10))
    with pytest.raises(ValueError, match="2 seeds for 3"):
        compare_runs([0.5, 0.6, 0.7], [0.4, 0.5], seeds_a=[0, 1])


def test_per_image_results_pack_and_unpack():
    right = np.array([True, False, True, True, False, False, True, False, True, True, True])
    packed = pack_correct(right)
    assert packed["n"] == 11 and isinstance(packed["bits"], str)
    assert np.array_equal(unpack_correct(packed), right)
    with pytest.raises(ValueError, match="only True/False"):
        pack_correct(np.array([0, 1, 2]))
    with pytest.raises(ValueError, match="keys 'n' and 'bits'"):
        unpack_correct({"bits": ""})


def test_accuracy_interval_of_one_model():
    runs = [0.80, 0.82, 0.85]
    lo, hi, noise = accuracy_interval(runs)
    half = stats.t.ppf(0.975, 2) * np.std(runs, ddof=1) / math.sqrt(3)
    assert noise == "seeds" and (lo, hi) == pytest.approx(
        (np.mean(runs) - half, np.mean(runs) + half)
    )
    lo, hi, noise = accuracy_interval([0.8], n_images=400)
    exact = stats.binomtest(320, 400).proportion_ci(0.95)  # Clopper-Pearson
    assert noise == "test set only"
    assert (lo, hi) == pytest.approx((exact.low, exact.high), abs=0.006)
    assert accuracy_interval([0.8]) is None
