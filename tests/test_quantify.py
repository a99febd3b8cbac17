"""The adjusted differential on toy models whose errors are known exactly, checked by hand.

The toy: two classes, BLA and LYT. Each validation crop gets one of two calibrated
probability vectors, "type 1" (0.8, 0.2) or "type 2" (0.2, 0.8): 100 BLA crops, 80 of
type 1; 100 LYT crops, 20 of type 1. So the classifier calls 80 % of blasts blasts and
20 % of lymphocytes blasts (confusion matrix [[80, 20], [20, 80]]), and its
probabilities are calibrated on the validation mix (of the type-1 crops 80 % are blasts).

A patient of 500 cells, 70 % blasts, with the expected share of each type:
350 blasts -> 280 type 1 + 70 type 2; 150 lymphocytes -> 30 type 1 + 120 type 2.

By hand:
- classify and count: blasts = 310 / 500 = 62 %.
- ACC: q = 0.62 = 0.8 p + 0.2 (1 - p) -> p = (0.62 - 0.2) / 0.6 = 70 %.
- PACC: mean probability of BLA is 0.68 for a blast, 0.32 for a lymphocyte; the patient's
  mean is (310 * 0.8 + 190 * 0.2) / 500 = 0.572 -> p = (0.572 - 0.32) / 0.36 = 70 %.
- EM (Saerens et al. 2002): the maximum-likelihood mix, the same 70 % (P(type 1 | BLA) =
  0.8, P(type 1 | LYT) = 0.2), also after re-fitting a bias-corrected temperature on an
  already calibrated validation set (T = 1, no bias).
- ACC's 95 % interval by the delta method: p = (q - b) / (a - b) with a = 0.8, b = 0.2
  estimated from 100 crops each (var 0.8 * 0.2 / 100 = 0.0016) and q from 500 cells
  (var 0.62 * 0.38 / 500 = 4.712e-4): dp/dq = 1 / 0.6, dp/da = -p / 0.6 = -1.1667,
  dp/db = (p - 1) / 0.6 = -0.5; var = 4.712e-4 / 0.36 + 0.0016 * (1.3611 + 0.25) = 0.003887,
  sd 0.0623, interval 70 +- 12.2 % = 57.8-82.2 %. Cell sampling alone would give +- 7.1 %.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from slideproc.config import ReportConfig
from slideproc.differential import (FLAG_BLASTS, FLAG_BLASTS_BORDERLINE, FLAG_NOT_ADJUSTED, Adjustment,
                                    differential_table, sample_differential)
from slideproc.quantify import METHODS, fit_quantifier, interval, quantify

T1, T2 = (0.8, 0.2), (0.2, 0.8)
CLASSES = ["BLA", "LYT"]
CFG = ReportConfig(non_cell_classes=(), myeloid_classes=("BLA",), erythroid_classes=(), min_cells=500)


def toy_validation():
    y = np.array([0] * 100 + [1] * 100)
    p = np.array([T1] * 80 + [T2] * 20 + [T1] * 20 + [T2] * 80, dtype=np.float64)
    return y, p


def toy_patient(blasts=350, lymphocytes=150):
    n1 = round(0.8 * blasts) + round(0.2 * lymphocytes)
    n = blasts + lymphocytes
    return np.array([T1] * n1 + [T2] * (n - n1), dtype=np.float64)


@pytest.mark.parametrize("method", ["acc", "pacc", "emq", "emq-bcts"])
def test_every_adjusting_method_recovers_the_hand_computed_mix(method):
    y, p = toy_validation()
    q = fit_quantifier(y, p, method, training_prior=[0.5, 0.5], n_boot=0)
    point, reps = quantify(q, toy_patient())
    assert reps.shape == (0, 2)
    # EM stops when an iteration moves the estimate by < 1e-4; BCTS by L-BFGS tolerance.
    assert point == pytest.approx([0.70, 0.30], abs=2e-3 if method.startswith("emq") else 1e-6)


def test_classify_and_count_is_the_raw_count():
    y, p = toy_validation()
    for method, expected in (("cc", 0.62), ("pcc", 0.572)):
        point, _ = quantify(fit_quantifier(y, p, method, n_boot=0), toy_patient())
        assert point[0] == pytest.approx(expected)


def test_acc_interval_matches_the_delta_method_and_includes_the_classifier():
    y, p = toy_validation()
    q = fit_quantifier(y, p, "acc", n_boot=2000, seed=3)
    point, reps = quantify(q, toy_patient(), seed=4)
    low, high = interval(reps)
    sd = math.sqrt(4.712e-4 / 0.36 + 0.0016 * ((0.7 / 0.6) ** 2 + 0.25))
    assert sd == pytest.approx(0.0623, abs=1e-4)
    assert low[0] == pytest.approx(0.70 - 1.96 * sd, abs=0.015)
    assert high[0] == pytest.approx(0.70 + 1.96 * sd, abs=0.015)
    # Wider than cell sampling alone (+- 1.96 * sqrt(4.712e-4) / 0.6 = +- 7.1 pp).
    assert high[0] - low[0] > 2 * 0.071 * 1.4


def test_the_differential_carries_the_adjusted_shares_and_flags_on_them():
    y, p = toy_validation()
    q = fit_quantifier(y, p, "acc", n_boot=500, seed=0)
    probs = toy_patient()
    point, reps = quantify(q, probs, seed=0)
    counts = np.bincount(probs.argmax(axis=1), minlength=2)
    d = sample_differential("toy", CLASSES, counts, CFG, adjustment=Adjustment(point, reps, "acc"))
    assert d.percent[0] == pytest.approx(62.0)  # raw: classify and count
    assert d.adjusted_percent[0] == pytest.approx(70.0)
    assert d.adjusted_blast[0] == pytest.approx(70.0)
    assert d.adjusted_blast[1] == pytest.approx(57.8, abs=2.0) and d.adjusted_blast[2] == pytest.approx(82.2, abs=2.0)
    assert sum(d.adjusted_percent) == pytest.approx(100.0)
    assert FLAG_BLASTS in d.flags and FLAG_NOT_ADJUSTED not in d.flags
    row = differential_table([d]).set_index("class").loc["blast_percent"]
    assert row["adjusted_percent"] == pytest.approx(70.0) and row["percent"] == pytest.approx(62.0)
    assert FLAG_BLASTS in row["flags"].split(";")


def test_an_interval_across_20_percent_is_borderline_not_high():
    # 20 % blasts in truth, 100 cells: the adjusted interval crosses 20 %.
    y, p = toy_validation()
    q = fit_quantifier(y, p, "acc", n_boot=300, seed=0)
    probs = toy_patient(blasts=20, lymphocytes=80)
    point, reps = quantify(q, probs, seed=0)
    d = sample_differential("b", CLASSES, np.bincount(probs.argmax(axis=1), minlength=2), CFG,
                            adjustment=Adjustment(point, reps, "acc"))
    assert d.adjusted_blast[0] == pytest.approx(20.0, abs=1e-4)
    assert d.adjusted_blast[1] < 20.0 <= d.adjusted_blast[2]
    assert FLAG_BLASTS_BORDERLINE in d.flags and FLAG_BLASTS not in d.flags


def _asymmetric_world(seed):
    """A 4-class classifier with lopsided errors (class 0 called 1 a third of the time)."""
    rng = np.random.default_rng(seed)
    confusion = np.array([[0.60, 0.30, 0.05, 0.05],
                          [0.05, 0.85, 0.05, 0.05],
                          [0.02, 0.08, 0.85, 0.05],
                          [0.05, 0.05, 0.10, 0.80]])

    def crops(y):
        # A calibrated-looking posterior: the confusion row of the called class, sharpened.
        called = np.array([rng.choice(4, p=confusion[c]) for c in y])
        logits = np.log(confusion.T[called] + 1e-3) * 1.0 + rng.normal(0, 0.3, (len(y), 4))
        e = np.exp(logits - logits.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    return rng, crops


@pytest.mark.parametrize("method", ["pacc", "emq-bcts"])
def test_a_sample_with_the_training_mix_is_not_made_worse(method):
    rng, crops = _asymmetric_world(0)
    mix = np.array([0.25, 0.25, 0.25, 0.25])  # the validation (training) mix
    y_val = np.repeat(np.arange(4), 150)
    q = fit_quantifier(y_val, crops(y_val), method, n_boot=0)
    raw_err, adj_err = [], []
    for _ in range(40):
        y = rng.choice(4, size=500, p=mix)
        probs = crops(y)
        truth = np.bincount(y, minlength=4) / 500
        raw = np.bincount(probs.argmax(axis=1), minlength=4) / 500
        adj, _ = quantify(q, probs)
        raw_err.append(np.abs(raw - truth).mean())
        adj_err.append(np.abs(adj - truth).mean())
    assert np.mean(adj_err) <= np.mean(raw_err)


def test_unknown_method_and_bad_shapes_are_refused():
    y, p = toy_validation()
    with pytest.raises(ValueError, match="unknown quantification method"):
        fit_quantifier(y, p, "magic")
    with pytest.raises(ValueError, match="labels for probabilities"):
        fit_quantifier(y[:10], p, "acc")
    assert set(METHODS) >= {"cc", "acc", "pacc", "emq", "emq-bcts"}


def test_a_sample_without_cells_gives_nan_not_an_error():
    y, p = toy_validation()
    point, reps = quantify(fit_quantifier(y, p, "emq-bcts", n_boot=5), np.zeros((0, 2)))
    assert np.isnan(point).all() and np.isnan(reps).all()
    d = sample_differential("e", CLASSES, [0, 0], CFG, adjustment=Adjustment(point, reps, "emq-bcts"))
    assert all(math.isnan(v) for v in d.adjusted_percent)


def test_stacked_em_reaches_quapys_fixed_point():
    from quapy.method.aggregative import EMQ

    from slideproc.quantify import em_batch

    rng = np.random.default_rng(7)
    priors = rng.dirichlet(np.ones(5), 6)
    post = rng.dirichlet(np.full(5, 0.5), (6, 300))
    stacked = em_batch(priors, post, start=np.full(5, 0.2), tol=1e-9)
    for b in range(6):
        reference, _ = EMQ.EM(priors[b], post[b], epsilon=1e-9)
        assert stacked[b] == pytest.approx(reference, abs=1e-5)


def test_the_default_adjustment_is_exact_when_the_cells_behave_like_the_record():
    """A patient of 85 % blasts made of the record's own crops (17 copies of each of the 6
    blast crops, 3 of each of the 6 lymphocyte crops): a method that only assumes the class
    mix changed (prior-probability shift) must give 85 % exactly. PACC does (the mean
    probability 0.85 x 0.6417 + 0.15 x 0.1867 solved through the record's mean-probability
    matrix); EM after bias-corrected temperature scaling (the default before) gives 86.03 %:
    it also assumes the calibrated scores are the true posteriors, and a temperature with
    class biases cannot make them so; on real crops that cost 4 pp of blasts in ALL even
    with a perfect record (BENCHMARKS.md)."""
    bla = np.array([0.95, 0.9, 0.8, 0.7, 0.3, 0.2])  # P(BLA) of the record's blast crops
    lyt = np.array([0.6, 0.3, 0.1, 0.05, 0.05, 0.02])  # ... and of its lymphocyte crops
    y = np.r_[np.zeros(6, int), np.ones(6, int)]
    record = np.c_[np.r_[bla, lyt], 1 - np.r_[bla, lyt]]
    cells = np.r_[np.repeat(bla, 17), np.repeat(lyt, 3)]
    cells = np.c_[cells, 1 - cells]
    default = ReportConfig().adjustment
    assert default == "pacc"
    point, _ = quantify(fit_quantifier(y, record, default, n_boot=0), cells)
    assert point == pytest.approx([0.85, 0.15], abs=1e-9)
    em, _ = quantify(fit_quantifier(y, record, "emq-bcts", n_boot=0), cells)
    assert em[0] == pytest.approx(0.8603, abs=5e-4)


def test_a_replicate_with_a_negative_share_keeps_the_large_class_whole():
    # Three nucleated classes; every cell of the patient has the calibrated probabilities
    # (0.9, 0, 0.1), so resampling cells changes nothing and each replicate is its own
    # matrix's solution. Replicate 1: the identity (x = q = 0.9, 0, 0.1). Replicate 2: 10 %
    # of a blast's probability mass on PMO, so x_BLA = 0.9 / 0.9 = 1.0, x_PMO = 0 - 0.1 x_BLA
    # = -0.1, x_LYT = 0.1. Clipping that replicate and renormalising would give blasts
    # 1 / 1.1 = 90.9 % and cut the interval short of a marrow of ~100 % blasts; kept whole,
    # the percentile interval (linear interpolation between the two replicates) is
    # 90 + 0.025 * 10 = 90.25 % to 90 + 0.975 * 10 = 99.75 %, and PMO's is cut to [0, 0].
    from slideproc.quantify import Quantifier, _Aggregator

    cfg = ReportConfig(non_cell_classes=(), myeloid_classes=("BLA", "PMO"), erythroid_classes=(), min_cells=10)
    shifted = np.array([[0.9, 0.0, 0.0], [0.1, 1.0, 0.0], [0.0, 0.0, 1.0]])
    fits = [_Aggregator("pacc", matrix=np.eye(3)), _Aggregator("pacc", matrix=np.eye(3), clip=False),
            _Aggregator("pacc", matrix=shifted, clip=False)]
    probs = np.tile([0.9, 0.0, 0.1], (50, 1))
    point, reps = quantify(Quantifier("pacc", 3, fits), probs)
    assert point == pytest.approx([0.9, 0.0, 0.1], abs=1e-5)
    assert reps[1] == pytest.approx([1.0, -0.1, 0.1], abs=1e-5)
    low, high = interval(reps)
    assert low == pytest.approx([0.9025, 0.0, 0.1], abs=1e-5)
    assert high == pytest.approx([0.9975, 0.0, 0.1], abs=1e-5)
    d = sample_differential("all-blasts", ["BLA", "PMO", "LYT"], [45, 0, 5], cfg,
                            adjustment=Adjustment(point, reps, "pacc"))
    # The sample's interval is the bootstrap's widened to the exact interval of counting 50
    # cells (quantify.interval_with_sampling): blasts 45 of 50 -> Clopper-Pearson 78.19-96.67 %,
    # so 78.19-99.75 %; PMO 0 of 50 -> 0-7.11 %; LYT 5 of 50 -> 3.33-21.81 % (scipy's
    # binomtest(k, 50).proportion_ci(method="exact")).
    assert d.adjusted_blast == pytest.approx((90.0, 78.1865, 99.75), abs=1e-3)
    assert d.adjusted_low[1] == 0.0 and d.adjusted_high[1] == pytest.approx(7.1121, abs=1e-3)
    assert (d.adjusted_low[2], d.adjusted_high[2]) == pytest.approx((3.3275, 21.8135), abs=1e-3)
    # fit_quantifier's replicates are kept whole; its point estimate is clipped
    y, p = toy_validation()
    q = fit_quantifier(y, p, "pacc", n_boot=3)
    assert q.fits[0].clip and not any(f.clip for f in q.fits[1:])


def test_a_sample_of_one_or_no_nucleated_cell_gets_no_narrow_adjusted_figure():
    """Kinds of fault from a review: one nucleated cell (a blast) gave adjusted blasts 98.9 %
    with an interval of 100-100 % (the point outside its own interval) and `blasts_high`; a
    sample of two non-cells (ART) gave adjusted LYT 100 (100-100) %. Now the one-cell
    interval is at least the exact one of counting one cell (2.5-100 %: borderline, not
    high), and with no nucleated cell there is no adjusted differential, with the reason."""
    from slideproc.quantify import Quantifier, _Aggregator

    cfg = ReportConfig(non_cell_classes=("ART",), myeloid_classes=("BLA",), erythroid_classes=(), min_cells=500)
    names = ["ART", "BLA", "LYT"]
    # every replicate puts all nucleated mass on BLA (and some negative on LYT): cut to 100-100
    leaky = np.array([[1.0, 0.0, 0.0], [0.0, 0.9, 0.0], [0.0, 0.1, 1.0]])
    fits = [_Aggregator("pacc", matrix=np.eye(3))] + [_Aggregator("pacc", matrix=leaky, clip=False)] * 4
    quantifier = Quantifier("pacc", 3, fits)
    one_blast = np.array([[0.0, 0.989, 0.011]])
    point, reps = quantify(quantifier, one_blast)
    assert interval(reps)[0][1] == pytest.approx(1.0)  # the bootstrap alone: 100-100 %
    d = sample_differential("one", names, [0, 1, 0], cfg, adjustment=Adjustment(point, reps, "pacc"))
    p, low, high = d.adjusted_blast
    assert p == pytest.approx(98.9, abs=1e-6)
    # the exact interval at 0.989 cells of 1: Beta(0.025; 0.989, 1.011) ~ 2.4 % (1 of 1: 2.5 %)
    assert 2.0 < low < 2.6 and low <= p <= high == 100.0
    assert "blasts_high" not in d.flags and "blasts_borderline" in d.flags and "low_count" in d.flags
    # two non-cells: no nucleated cell, no adjusted differential
    point, reps = quantify(quantifier, np.array([[0.6, 0.1, 0.3], [0.7, 0.1, 0.2]]))
    d = sample_differential("none", names, [2, 0, 0], cfg, adjustment=Adjustment(point, reps, "pacc"))
    assert np.isnan(d.adjusted_percent).all() and np.isnan(d.adjusted_blast).all()
    assert d.adjustment_missing == "adjusted differential not computed: no nucleated cell counted"
    assert "not_adjusted" in d.flags and "blasts_high" not in d.flags


def test_adjusted_me_without_any_myeloid_or_erythroid_share_is_undefined_not_infinite():
    """Review: an adjusted mix with no myeloid and no erythroid share gave M:E (nan, inf, inf)
    (the widening's exact interval of 0 of 0 is NaN, and NaN odds read as infinite). Now the
    ratio and its interval are undefined (NaN), as the raw ratio of 0 : 0 is."""
    cfg = ReportConfig(non_cell_classes=(), myeloid_classes=("BLA",), erythroid_classes=("EBO",), min_cells=1)
    point = np.array([0.0, 0.0, 1.0])
    reps = np.tile(point, (4, 1))
    d = sample_differential("lymphoid", ["BLA", "EBO", "LYT"], [0, 1, 3], cfg,
                            adjustment=Adjustment(point, reps, "pacc"))
    assert np.isnan(d.adjusted_me).all()
    # no adjusted erythroid share with M > 0: undefined too (it read (nan, 0.49, inf))
    point = np.array([0.5, 0.0, 0.5])
    d = sample_differential("no-e", ["BLA", "EBO", "LYT"], [2, 1, 2], cfg,
                            adjustment=Adjustment(point, np.tile(point, (4, 1)), "pacc"))
    assert np.isnan(d.adjusted_me).all()
    # both present: the point inside its widened interval
    point = np.array([0.3, 0.1, 0.6])
    d = sample_differential("both", ["BLA", "EBO", "LYT"], [3, 1, 6], cfg,
                            adjustment=Adjustment(point, np.tile(point, (4, 1)), "pacc"))
    ratio, low, high = d.adjusted_me
    assert ratio == pytest.approx(3.0) and low < ratio < high
