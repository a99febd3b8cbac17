"""Class shares of a sample corrected for the classifier's known errors, with bootstrap intervals.

Counting each cell's top class (classify and count, "cc") is biased whenever a patient's
class mix differs from the mix the classifier was characterised on (prior-probability
shift): a classifier that calls 20 % of blasts "lymphocytes" under-counts blasts in a
leukaemic marrow and over-counts them in a normal one. The quantification literature
corrects this from the classifier's validation record (model_card.py). Methods, all from
QuaPy (Moreo, Esuli & Sebastiani, "QuaPy: a Python-based framework for quantification",
CIKM 2021); the building blocks are its public class methods, so the figures are QuaPy's:

- ``cc``: classify and count (what the raw differential is);
- ``pcc``: mean calibrated probability (Bella et al. 2010);
- ``acc``: cc adjusted with the validation confusion rates (Forman 2008), ``ACC.solve_adjustment``;
- ``pacc``: pcc adjusted with the validation mean-probability matrix (Bella et al. 2010);
- ``emq``: Saerens-Latinne-Decaestecker EM (Saerens et al. 2002, ``EMQ.EM``) from the
  recorded effective training prior (model_card.effective_training_prior);
- ``emq-bcts``: EM after a bias-corrected temperature scaling re-fitted on the validation
  predictions (Alexandari et al. 2020, ICML; QuaPy's ``EMQ.EMQ_BCTS``: abstention's
  ``TempScaling(bias_positions="all")``), from the prior those posteriors are relative to
  (their mean on the validation split, which the fitted biases make equal the validation mix).

Intervals (``quantify``): a paired bootstrap. Replicate b refits the method on a
class-stratified resample of the validation predictions (the classifier's uncertainty from
its finite validation set: confusion rates, calibration) and applies it to a resample of
the sample's cells (the sampling of cells); the 2.5 and 97.5 percentiles of the B replicates
are the 95 % interval. ACC and PACC replicates are the adjustment's own solution, negative
shares included, and the interval is cut to [0, 1] afterwards (:func:`interval`): clipping
each replicate and renormalising it to sum 1 (what the point estimate does) would pull a
large class's replicates down whenever a small class's went negative, and the interval of
blasts in a blast-rich marrow would end short of the truth (measured with
benchmarks/bench_differential.py: BENCHMARKS.md, "The interval's lowest coverage").
A percentile bootstrap over the sample's cells cannot put mass where the sample has no
cell: a class with no or few cells gets a replicate spread of almost nothing (1 nucleated
cell: every resample is that cell), an interval far narrower than the sampling alone
allows. :func:`interval_with_sampling` therefore widens each share's interval to hold at
least the exact (Clopper-Pearson) binomial interval at the adjusted count (share x the
sample's n nucleated cells, a real number): never narrower than what counting n cells
allows, and always holding the point estimate. Measured (benchmarks/bench_differential.py
``--cells``): without it the lowest class x composition coverage fell from 0.91 at 500
cells to 0.87 at 200, 0.79 at 100 and 0.72 at 50 (rare classes: eosinophils in ALL).
This is QuaPy's AggregativeBootstrap idea (Moreo & Salvati, LQ 2025) with one validation
resample per cell resample instead of every pair, and run in-process: QuaPy's own class
forks joblib workers (n_jobs=-1) and takes the n_train x n_test product, which on a 2-core
machine inside a Dask worker costs more than it gives.

Public API::

    METHODS                                        # the names above
    fit_quantifier(y_val, p_val, method, training_prior=None, n_boot=..., seed=0) -> Quantifier
    quantify(quantifier, probs, seed=0) -> (point (C,), replicates (B, C))  # shares, sum 1
    em_batch(priors, posteriors, start) -> shares (B, C)   # SLD EM over a stack of replicates
    interval(replicates, confidence=0.95) -> (low (C,), high (C,))
    exact_interval(x, n, confidence=0.95) -> (low, high)   # Clopper-Pearson at a real count x of n
    interval_with_sampling(point, replicates, n, confidence=0.95) -> (low (C,), high (C,))
"""

from __future__ import annotations

import logging
import warnings
from dataclasses import dataclass, field

import numpy as np

log = logging.getLogger("slideproc.quantify")

METHODS = ("cc", "pcc", "acc", "pacc", "emq", "emq-bcts")
# 200 replicates put the 2.5 % percentile between the 5th and 6th value: its Monte Carlo
# error (~0.3 pp on a blast share of 20 % with a 500-cell count) is small next to the width.
DEFAULT_BOOTSTRAP = 200
# Floor for probabilities before a log: float16 storage rounds small ones to 0.
_FLOOR = 1e-7


def _clean(p: np.ndarray) -> np.ndarray:
    p = np.maximum(np.asarray(p, np.float64), _FLOOR)
    return p / p.sum(axis=1, keepdims=True)


@dataclass
class _Aggregator:
    """One fitted aggregation function: what one validation set says."""

    method: str
    matrix: np.ndarray | None = None   # (C, C) P(predicted i | true j) for acc / pacc
    prior: np.ndarray | None = None    # (C,) the prior the posteriors are relative to (emq*)
    calibrate: object = None           # callable posteriors -> posteriors (emq-bcts)
    # acc / pacc: clip negative shares to 0 and renormalise (the point estimate); False for
    # bootstrap replicates, whose percentiles are cut to [0, 1] instead (module doc).
    clip: bool = True

    def __call__(self, probs: np.ndarray) -> np.ndarray:
        from quapy.functional import normalize_prevalence
        from quapy.method.aggregative import ACC, EMQ

        n, c = probs.shape
        if n == 0:
            return np.full(c, np.nan)
        if self.method == "cc":
            return np.bincount(probs.argmax(axis=1), minlength=c) / n
        if self.method == "pcc":
            return probs.mean(axis=0)
        if self.method in ("acc", "pacc"):
            q = np.bincount(probs.argmax(axis=1), minlength=c) / n if self.method == "acc" else probs.mean(axis=0)
            # "exact-cc" (a linear solve; the unadjusted estimate when the matrix is singular)
            # rather than QuaPy's default "minimize" (SLSQP): 4.6 ms of CPU per call against
            # microseconds, paid 200 times per sample by the bootstrap.
            est = ACC.solve_adjustment(class_conditional_rates=self.matrix, unadjusted_counts=q,
                                       method="inversion", solver="exact-cc")
            if not self.clip:
                return np.asarray(est, np.float64)
            return np.asarray(normalize_prevalence(est, method="clip"), np.float64)
        post = self.calibrate(probs) if self.calibrate is not None else probs
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # "might not have converged" after 1000 steps: the estimate stands
            q, _ = EMQ.EM(self.prior, post)
        return np.asarray(q, np.float64)


def _fit_one(y: np.ndarray, p: np.ndarray, method: str, training_prior: np.ndarray | None,
             n_classes: int, clip: bool = True) -> _Aggregator:
    from quapy.method.aggregative import ACC, PACC

    classes = np.arange(n_classes)
    if method in ("cc", "pcc"):
        return _Aggregator(method)
    if method == "acc":
        return _Aggregator(method, matrix=ACC.getPteCondEstim(classes, y, p.argmax(axis=1)), clip=clip)
    if method == "pacc":
        return _Aggregator(method, matrix=PACC.getPteCondEstim(classes, y, p), clip=clip)
    if method == "emq":
        prior = (np.asarray(training_prior, np.float64) if training_prior is not None
                 else np.bincount(y, minlength=n_classes) / len(y))
        return _Aggregator(method, prior=prior / prior.sum())
    if method == "emq-bcts":
        from abstention.calibration import TempScaling

        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                cal = TempScaling(bias_positions="all")(p, np.eye(n_classes)[y], posterior_supplied=True)
            calibrate = lambda q: _clean(cal(_clean(q)))  # noqa: E731
            prior = calibrate(p).mean(axis=0)
        except (AssertionError, ValueError, FloatingPointError) as err:
            # L-BFGS did not converge (e.g. a class with 1-2 validation crops): keep the
            # calibration as recorded and its validation mix.
            log.debug("bias-corrected temperature scaling failed (%s); using the recorded calibration", err)
            calibrate, prior = None, p.mean(axis=0)
        return _Aggregator(method, prior=prior / prior.sum(), calibrate=calibrate)
    raise ValueError(f"unknown quantification method {method!r}; one of {', '.join(METHODS)}")


@dataclass
class Quantifier:
    """A method fitted on a model's validation record: ``fits[0]`` on all of it, then one per replicate."""

    method: str
    n_classes: int
    fits: list = field(default_factory=list)

    @property
    def n_boot(self) -> int:
        return len(self.fits) - 1


def _stratified_resample(y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Indices of a bootstrap resample with each class's count kept (the split is stratified)."""
    out = [rng.choice(idx, size=len(idx), replace=True) for idx in (np.flatnonzero(y == c) for c in np.unique(y))]
    return np.concatenate(out)


def fit_quantifier(y_val, p_val, method: str, training_prior=None, n_boot: int = DEFAULT_BOOTSTRAP,
                   seed: int = 0) -> Quantifier:
    """Fit ``method`` on validation labels (int (n,)) and calibrated probabilities ((n, C)),
    and on ``n_boot`` class-stratified resamples of them.

    Raises ValueError for an unknown method or inconsistent shapes.
    """
    if method not in METHODS:
        raise ValueError(f"unknown quantification method {method!r}; one of {', '.join(METHODS)}")
    y = np.asarray(y_val, int)
    p = _clean(p_val)
    if p.ndim != 2 or len(p) != len(y) or len(y) == 0:
        raise ValueError(f"validation record: {len(y)} labels for probabilities of shape {p.shape}")
    n_classes = p.shape[1]
    rng = np.random.default_rng([seed, 1])
    fits = [_fit_one(y, p, method, training_prior, n_classes)]
    for _ in range(n_boot):
        idx = _stratified_resample(y, rng)
        fits.append(_fit_one(y[idx], p[idx], method, training_prior, n_classes, clip=False))
    return Quantifier(method, n_classes, fits)


def em_batch(priors: np.ndarray, posteriors: np.ndarray, start: np.ndarray, tol: float = 1e-6,
             max_iter: int = 1000) -> np.ndarray:
    """Saerens-Latinne-Decaestecker EM for B samples at once: priors (B, C), posteriors
    (B, n, C), start (C,) or (B, C) -> class shares (B, C).

    The same fixed point as QuaPy's ``EMQ.EM`` (tests/test_quantify.py checks it), run on a
    stack of bootstrap replicates together and started from the sample's point estimate
    instead of the training prior. Why not QuaPy's loop: 200 replicates of a 540-cell,
    8-class sample took 0.40 s of CPU one by one (about 40 iterations each from the prior)
    and 0.08 s stacked and warm-started (benchmarks/bench_differential.py, 2-core machine).
    """
    ratio = posteriors / priors[:, None, :]
    q = np.array(np.broadcast_to(start, priors.shape), np.float64)
    for _ in range(max_iter):
        w = ratio * q[:, None, :]
        w /= w.sum(axis=2, keepdims=True)
        new = w.mean(axis=1)
        done = np.max(np.abs(new - q)) < tol
        q = new
        if done:
            break
    return q


def quantify(quantifier: Quantifier, probs, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Estimated class shares of one sample from its cells' calibrated probabilities (N, C).

    Returns (point (C,), replicates (B, C)), fractions summing to 1 over all classes; NaN
    when the sample has no cells. The point lies in [0, 1]; ACC / PACC replicates may hold
    negative shares (module doc): take intervals with :func:`interval`. Replicate b applies
    ``quantifier.fits[b + 1]`` to a resample of the cells (paired bootstrap, see the module doc).
    """
    p = _clean(probs) if len(probs) else np.zeros((0, quantifier.n_classes))
    point = quantifier.fits[0](p)
    if len(p) == 0:
        return point, np.full((quantifier.n_boot, quantifier.n_classes), np.nan)
    rng = np.random.default_rng([seed, 2])
    index = rng.integers(0, len(p), (quantifier.n_boot, len(p)))
    if quantifier.method.startswith("emq") and quantifier.n_boot:
        fits = quantifier.fits[1:]
        post = np.stack([f.calibrate(p[i]) if f.calibrate is not None else p[i] for f, i in zip(fits, index)])
        priors = np.stack([f.prior for f in fits])
        return point, em_batch(priors, post, start=point)
    reps = np.empty((quantifier.n_boot, quantifier.n_classes))
    for b, (fit, i) in enumerate(zip(quantifier.fits[1:], index)):
        reps[b] = fit(p[i])
    return point, reps


def interval(replicates: np.ndarray, confidence: float = 0.95, axis: int = 0,
             bounds: tuple[float, float] = (0.0, 1.0)) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of bootstrap replicates (NaN-aware), cut to ``bounds`` (the
    shares' range [0, 1] by default; (0, 100) for percents)."""
    alpha = (1.0 - confidence) / 2.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: no cells
        low, high = np.nanpercentile(replicates, [100 * alpha, 100 * (1 - alpha)], axis=axis)
    return np.clip(low, *bounds), np.clip(high, *bounds)


def exact_interval(x, n: float, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """Clopper-Pearson interval (fractions) of x successes in n trials, x real in [0, n]
    (element-wise; n may be real too: an adjusted count): the beta quantiles ``Beta(a/2; x, n - x + 1)`` and ``Beta(1 - a/2;
    x + 1, n - x)`` (scipy.stats.beta), with 0 / 1 at the ends as the exact interval has.
    For an integer x this is scipy's ``binomtest(...).proportion_ci(method="exact")``.
    NaN when n <= 0."""
    from scipy.stats import beta

    x = np.clip(np.asarray(x, np.float64), 0.0, max(n, 0))
    if n <= 0:
        return np.full(x.shape, np.nan), np.full(x.shape, np.nan)
    alpha = (1.0 - confidence) / 2.0
    with np.errstate(invalid="ignore", divide="ignore"):
        low = np.where(x > 0, beta.ppf(alpha, np.maximum(x, 1e-12), n - x + 1), 0.0)
        high = np.where(x < n, beta.ppf(1 - alpha, x + 1, np.maximum(n - x, 1e-12)), 1.0)
    return low, high


def interval_with_sampling(point, replicates, n: int, confidence: float = 0.95) -> tuple[np.ndarray, np.ndarray]:
    """The share interval a sample reports (fractions, (C,)): the bootstrap percentile
    interval of ``replicates`` (B, C) (:func:`interval`), widened to hold the exact binomial
    interval at the adjusted count ``point`` (C,) x ``n`` (the sample's counted cells of
    these classes): never narrower than counting n cells allows, and always holding the
    point (module doc; BENCHMARKS.md measures it). NaN where the point is NaN."""
    point = np.asarray(point, np.float64)
    low, high = interval(np.asarray(replicates, np.float64), confidence)
    if n <= 0:
        return low, high
    cp_low, cp_high = exact_interval(np.where(np.isnan(point), 0.0, point) * n, n, confidence)
    low, high = np.fmin(low, cp_low), np.fmax(high, cp_high)
    return np.where(np.isnan(point), np.nan, low), np.where(np.isnan(point), np.nan, high)
