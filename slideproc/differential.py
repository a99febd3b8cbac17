"""Differential counts from class counts: pure functions, no I/O.

What a hematologist signs: per class the percent of *nucleated cells counted*
(non-cell classes such as artefacts, unidentifiable and smudge cells are counted
but left out of the denominator) with a 95 % exact binomial (Clopper-Pearson)
interval, the myeloid:erythroid ratio with an interval, the blast percent, and
flags (too few cells counted, blasts at or above the leukaemia threshold, ...).

Two estimates side by side:

- **raw** (``percent``, ``ci_low``, ``ci_high``): classify and count. The interval covers
  the sampling of cells only, as if the classifier never erred.
- **adjusted** (``adjusted_percent``, ``adjusted_ci_low``, ``adjusted_ci_high``): class
  shares estimated from the cells' calibrated probabilities and the classifier's
  validation record (quantify.py), corrected for its known confusions; the interval is a
  bootstrap over both the cells and the validation crops, so it covers the sampling of
  cells and the classifier's uncertainty. Empty (with ``adjustment_missing`` saying why,
  and the flag ``not_adjusted``) when the model has no validation record.

Flags (``FLAGS``) are decided on the adjusted estimate when there is one, else on the raw one:
``blasts_high`` when the blast interval lies at or above ``blast_flag_percent`` (20 %),
``blasts_borderline`` when it crosses it.

Public API::

    proportion_ci(k, n, confidence=0.95) -> (low, high)      # fractions; NaN when n == 0
    ratio_ci(a, b, confidence=0.95) -> (ratio, low, high)    # a / b
    sample_differential(sample_id, class_names, counts, config, needs_review=0) -> SampleDifferential
    differential_rows(diff) -> list[dict]                    # differential.csv rows of one sample
    differential_table(diffs) -> DataFrame                   # differential.csv
    summary_table(diffs, failed=None) -> DataFrame           # one row per sample, failed ones too
    reading_order(class_names, config) -> list[int]          # lineage order for charts/tables

differential.csv columns: sample_id, class, count, percent, ci_low, ci_high,
adjusted_percent, adjusted_ci_low, adjusted_ci_high, flags. Percent columns are in
percent (0-100) of nucleated cells; flags (the sample's, ``;``-separated) on every row.
One row per class of the model (non-cell classes: count only, percent empty),
then three rows per sample:

- ``nucleated_cells``: count = nucleated cells counted (the denominator);
- ``blast_percent``: count = blasts, percent and interval as the blast row;
- ``M:E``: count = myeloid + erythroid cells; *percent, ci_low and ci_high hold
  the ratio* myeloid / erythroid and its interval (not a percent), the adjusted columns
  the ratio of the adjusted shares. No erythroid cells counted: the ratio is empty and
  the sample is flagged ``no_erythroid_cells`` (never ``inf``).
"""

from __future__ import annotations

import dataclasses
import functools
import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
NUCLEATED_ROW = "nucleated_cells"
BLAST_ROW = "blast_percent"
ME_ROW = "M:E"
FLAG_LOW_COUNT = "low_count"
FLAG_BLASTS = "blasts_high"
FLAG_BLASTS_BORDERLINE = "blasts_borderline"
FLAG_NO_ERYTHROID = "no_erythroid_cells"
FLAG_REVIEW = "many_need_review"
FLAG_MODEL_POOR = "model_poor"
FLAG_NOT_ADJUSTED = "not_adjusted"
FLAG_FILES_NOT_READ = "files_not_read"
FLAG_LAST_RUN_FAILED = "last_run_failed"
# The sample's cells look unlike the crops the model was characterised on
# (classify/record_check.py): its shares and intervals do not hold.
FLAG_UNLIKE_RECORD = "unlike_record"
FLAGS = (FLAG_LOW_COUNT, FLAG_BLASTS, FLAG_BLASTS_BORDERLINE, FLAG_NO_ERYTHROID, FLAG_REVIEW, FLAG_MODEL_POOR,
         FLAG_NOT_ADJUSTED, FLAG_FILES_NOT_READ, FLAG_LAST_RUN_FAILED, FLAG_UNLIKE_RECORD)
COLUMNS = ["sample_id", "class", "count", "percent", "ci_low", "ci_high", "adjusted_percent", "adjusted_ci_low",
           "adjusted_ci_high", "flags"]


@functools.lru_cache(maxsize=65_536)
def proportion_ci(k: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Exact (Clopper-Pearson) interval of the proportion k / n, as fractions.

    Delegates to scipy's ``binomtest(...).proportion_ci(method="exact")`` so the
    numbers are scipy's to the last bit. NaN, NaN when n == 0 (nothing counted).
    """
    from scipy.stats import binomtest

    k, n = int(k), int(n)
    if n <= 0:
        return math.nan, math.nan
    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="exact")
    return float(ci.low), float(ci.high)


def ratio_ci(a: int, b: int, confidence: float = CONFIDENCE) -> tuple[float, float, float]:
    """a / b with an interval: the exact interval of p = a / (a + b), mapped by p / (1 - p).

    p / (1 - p) is monotone, so the interval keeps its 95 % coverage. b == 0
    gives an infinite ratio (and upper bound); a + b == 0 gives NaNs.
    """
    a, b = int(a), int(b)
    if a + b == 0:
        return math.nan, math.nan, math.nan
    low, high = proportion_ci(a, a + b, confidence)

    def odds(p: float) -> float:
        return math.inf if p >= 1.0 else p / (1.0 - p)

    ratio = math.inf if b == 0 else a / b
    return ratio, odds(low), odds(high)


@dataclass(frozen=True)
class Adjustment:
    """Adjusted class shares of one sample: ``quantify.quantify``'s output.

    ``point``: float (C,) shares over all classes of the model (summing to 1);
    ``replicates``: float (B, C) bootstrap replicates of them; ``method``: its name.
    """

    point: np.ndarray
    replicates: np.ndarray
    method: str


_NAN3 = (math.nan, math.nan, math.nan)


@dataclass(frozen=True)
class SampleDifferential:
    sample_id: str
    class_names: tuple[str, ...]
    counts: tuple[int, ...]
    # Which classes are in the denominator (nucleated cells).
    nucleated: tuple[bool, ...]
    n_cells: int  # every cell counted, non-cell classes included
    n_nucleated: int
    percent: tuple[float, ...]  # NaN for non-cell classes and when n_nucleated == 0
    ci_low: tuple[float, ...]
    ci_high: tuple[float, ...]
    myeloid: int
    erythroid: int
    me_ratio: float  # NaN when no erythroid cells were counted (flag no_erythroid_cells)
    me_low: float
    me_high: float
    blasts: int
    blast_percent: float
    blast_low: float
    blast_high: float
    needs_review: int
    flags: tuple[str, ...]
    # The adjusted estimate, percent of nucleated cells (NaN when not adjusted, and for non-cell classes).
    adjusted_percent: tuple[float, ...] = ()
    adjusted_low: tuple[float, ...] = ()
    adjusted_high: tuple[float, ...] = ()
    adjusted_blast: tuple[float, float, float] = _NAN3  # percent, low, high
    adjusted_me: tuple[float, float, float] = _NAN3     # ratio, low, high
    adjustment_method: str = ""
    # One line: why there is no adjusted estimate ("" when there is one).
    adjustment_missing: str = ""
    # One line: why the model's figures are poor ("" when they are not, or unknown).
    model_poor: str = ""
    # Files of the sample that could not be read and are not counted (the Zarr sample
    # attrs' ``skipped_sources``: dicts with source, path, error), of ``n_sources`` files.
    skipped_sources: tuple = ()
    n_sources: int = 0
    # One line when the last run failed to redo this sample: these figures are an
    # earlier run's (errors.csv says why; "" otherwise).
    last_run_error: str = ""
    # (cells checked, cells beyond the model's record) from the sample attrs'
    # ``record_check`` (classify/record_check.py); () when not checked (the model has
    # no feature record).
    record_check: tuple = ()

    @property
    def beyond_record_share(self) -> tuple[float, float, bool]:
        """(share of cells beyond the model's record, lower end of its exact 95 % interval,
        flagged); NaNs and False when not checked."""
        from .classify.record_check import shift_verdict

        if not self.record_check:
            return math.nan, math.nan, False
        return shift_verdict(self.record_check[1], self.record_check[0])

    @property
    def adjusted(self) -> bool:
        return bool(self.adjustment_method) and not self.adjustment_missing

    @property
    def review_percent(self) -> float:
        """Percent of all cells counted whose confidence is below the review threshold."""
        return 100.0 * self.needs_review / self.n_cells if self.n_cells else math.nan

    def blast_estimate(self) -> tuple[float, float, float]:
        """(percent, low, high) the flags are decided on: adjusted when there is one, else raw."""
        return self.adjusted_blast if self.adjusted else (self.blast_percent, self.blast_low, self.blast_high)

    def count_of(self, classes: Sequence[str]) -> int:
        wanted = set(classes)
        return int(sum(c for name, c in zip(self.class_names, self.counts) if name in wanted))

    def group_percent(self, classes: Sequence[str]) -> tuple[float, float, float]:
        """Percent of nucleated cells in ``classes`` (summed) and its exact interval."""
        return _percent(self.count_of(classes), self.n_nucleated)


def _percent(k: int, n: int) -> tuple[float, float, float]:
    if n <= 0:
        return math.nan, math.nan, math.nan
    low, high = proportion_ci(k, n)
    return 100.0 * k / n, 100.0 * low, 100.0 * high


def _percentiles(values: np.ndarray, confidence: float = CONFIDENCE,
                 bounds: tuple[float, float] = (0.0, 100.0)) -> tuple[np.ndarray, np.ndarray]:
    """Percentile interval of percent replicates (B, ...) over B, cut to ``bounds`` (replicates
    may be negative: quantify's module doc)."""
    from .quantify import interval

    return interval(np.asarray(values, np.float64), confidence, bounds=bounds)


def _adjusted_figures(adj: Adjustment, class_names, nucleated, config, erythroid_counted: int,
                      n_nucleated: int) -> dict:
    """Adjusted percents (nucleated classes renormalised to 100), blast percent and M:E with intervals.

    Each interval is the bootstrap's, widened to hold the exact binomial interval at the
    adjusted count of ``n_nucleated`` cells (quantify.interval_with_sampling): a sample of
    few cells gets an interval as wide as its count allows, never a narrow one."""
    from .quantify import exact_interval, interval_with_sampling

    keep = np.asarray(nucleated, bool)
    point = np.asarray(adj.point, np.float64).reshape(-1)
    reps = np.asarray(adj.replicates, np.float64).reshape(-1, len(point))
    if len(point) != len(class_names):
        raise ValueError(f"adjusted shares for {len(point)} classes, the model has {len(class_names)}")

    def renormalise(v):
        v = np.where(keep, v, 0.0)
        s = v.sum(axis=-1, keepdims=True)
        return 100.0 * np.divide(v, s, out=np.full_like(v, np.nan), where=s > 0)

    pct, rep_pct = renormalise(point), renormalise(reps)
    if not len(rep_pct):
        rep_pct = np.full((1, len(point)), np.nan)
    low, high = (100.0 * v for v in interval_with_sampling(pct / 100.0, rep_pct / 100.0, n_nucleated))
    pct, low, high = (np.where(keep, a, np.nan) for a in (pct, low, high))
    names = list(class_names)
    non_cell = set(config.non_cell_classes)
    blast = _NAN3
    if config.blast_class in names and config.blast_class not in non_cell:
        b = names.index(config.blast_class)
        blast = (float(pct[b]), float(low[b]), float(high[b]))
    my = [names.index(c) for c in set(config.myeloid_classes) if c in names]
    er = [names.index(c) for c in set(config.erythroid_classes) if c in names]
    me = _NAN3
    if my and er and erythroid_counted > 0:
        def ratio(v):
            e = v[..., er].sum(axis=-1)
            return np.divide(v[..., my].sum(axis=-1), e, out=np.full_like(e, np.nan), where=e > 0)

        r = ratio(pct)
        # a replicate's negative share (ACC / PACC) counts as none in a ratio of counts
        r_low, r_high = _percentiles(ratio(np.maximum(rep_pct, 0.0)), bounds=(0.0, np.inf))
        # widened, as the shares are, to the exact interval of p = M / (M + E) at the adjusted
        # counts, mapped by p / (1 - p) (as ratio_ci does for the raw counts)
        m_n, e_n = (float(pct[idx].sum()) / 100.0 * n_nucleated for idx in (my, er))
        if m_n + e_n > 0 and not math.isnan(m_n + e_n):
            p_low, p_high = (float(v) for v in exact_interval(m_n, m_n + e_n))
            odds = (lambda q: q / (1.0 - q) if q < 1.0 else np.inf)
            r_low, r_high = float(np.fmin(r_low, odds(p_low))), float(np.fmax(r_high, odds(p_high)))
        # no myeloid or erythroid share at all: the ratio is undefined, its interval too
        me = (float(r), float(r_low), float(r_high)) if not math.isnan(float(r)) else _NAN3
    return {"adjusted_percent": tuple(float(v) for v in pct), "adjusted_low": tuple(float(v) for v in low),
            "adjusted_high": tuple(float(v) for v in high), "adjusted_blast": blast, "adjusted_me": me,
            "adjustment_method": adj.method}


def sample_differential(sample_id: str, class_names: Sequence[str], counts: Sequence[int], config,
                        needs_review: int = 0, *, adjustment: Adjustment | None = None,
                        adjustment_missing: str = "", model_poor: str = "", skipped_sources=(),
                        n_sources: int = 0, last_run_error: str = "",
                        record_check: dict | None = None) -> SampleDifferential:
    """The differential of one sample from its per-class counts (``config``: a ReportConfig).

    ``adjustment``: the sample's adjusted shares (quantify.py), or None with
    ``adjustment_missing`` saying why (one line; flagged ``not_adjusted``).
    ``model_poor``: one line when the model's validation figures are poor (flagged).
    ``skipped_sources``: the sample's files that could not be read, of ``n_sources``
    (flagged ``files_not_read``: the differential counts the other files only).
    ``last_run_error``: why the last run could not redo the sample, whose stored figures
    are then an earlier run's (flagged ``last_run_failed``).
    ``record_check``: the sample attrs' ``{"cells": n, "beyond": k}`` (classify/record_check.py;
    flagged ``unlike_record`` when clearly more than the expected 5 % of cells lie beyond
    the model's record), None when not checked.
    Group members the model does not have are ignored; a blast class it does
    not have gives a NaN blast percent.
    """
    class_names = tuple(str(c) for c in class_names)
    counts = tuple(int(c) for c in np.asarray(counts, dtype=np.int64).reshape(-1))
    if len(counts) != len(class_names):
        raise ValueError(f"{len(counts)} counts for {len(class_names)} classes")
    non_cell = set(config.non_cell_classes)
    nucleated = tuple(name not in non_cell for name in class_names)
    n_nucleated = int(sum(c for c, keep in zip(counts, nucleated) if keep))
    percent, low, high = [], [], []
    for count, keep in zip(counts, nucleated):
        p = _percent(count, n_nucleated) if keep else (math.nan,) * 3
        percent.append(p[0])
        low.append(p[1])
        high.append(p[2])
    by_name = dict(zip(class_names, counts))
    myeloid = int(sum(by_name.get(c, 0) for c in set(config.myeloid_classes)))
    erythroid = int(sum(by_name.get(c, 0) for c in set(config.erythroid_classes)))
    # No erythroid cell: the ratio is undefined, said by a flag, never an infinite number.
    me_ratio, me_low, me_high = ratio_ci(myeloid, erythroid) if erythroid > 0 else _NAN3
    if config.blast_class in by_name and config.blast_class not in non_cell:
        blasts = by_name[config.blast_class]
        blast_percent, blast_low, blast_high = _percent(blasts, n_nucleated)
    else:
        blasts, blast_percent, blast_low, blast_high = 0, math.nan, math.nan, math.nan
    extra: dict = {"adjusted_percent": (math.nan,) * len(counts), "adjusted_low": (math.nan,) * len(counts),
                   "adjusted_high": (math.nan,) * len(counts)}
    if adjustment is not None and n_nucleated == 0:
        # The adjustment renormalises over nucleated classes: with none counted it would
        # turn the shares it gives non-cells' probabilities into a differential.
        adjustment_missing = "adjusted differential not computed: no nucleated cell counted"
    elif adjustment is not None:
        extra = _adjusted_figures(adjustment, class_names, nucleated, config, erythroid, n_nucleated)
        adjustment_missing = ""
    elif not adjustment_missing:
        adjustment_missing = "adjusted differential not computed"
    diff = SampleDifferential(
        sample_id=str(sample_id), class_names=class_names, counts=counts, nucleated=nucleated,
        n_cells=int(sum(counts)), n_nucleated=n_nucleated,
        percent=tuple(percent), ci_low=tuple(low), ci_high=tuple(high),
        myeloid=myeloid, erythroid=erythroid, me_ratio=me_ratio, me_low=me_low, me_high=me_high,
        blasts=int(blasts), blast_percent=blast_percent, blast_low=blast_low, blast_high=blast_high,
        needs_review=int(needs_review), flags=(), adjustment_missing=adjustment_missing, model_poor=model_poor,
        skipped_sources=tuple(dict(x) for x in skipped_sources or ()), n_sources=int(n_sources),
        last_run_error=str(last_run_error or ""),
        record_check=(int(record_check["cells"]), int(record_check["beyond"])) if record_check else (), **extra,
    )
    return dataclasses.replace(diff, flags=_flags(diff, config))


def _flags(diff: SampleDifferential, config) -> tuple[str, ...]:
    flags = []
    # First: when the cells are unlike the record, every figure below it is in doubt.
    if diff.beyond_record_share[2]:
        flags.append(FLAG_UNLIKE_RECORD)
    # Flagged, never hidden: a short count is still reported, with wide intervals.
    if diff.n_nucleated < config.min_cells:
        flags.append(FLAG_LOW_COUNT)
    _p, low, high = diff.blast_estimate()
    threshold = config.blast_flag_percent
    if not math.isnan(low) and low >= threshold:
        flags.append(FLAG_BLASTS)
    elif not math.isnan(high) and high >= threshold:
        # The interval crosses the threshold: the count cannot tell leukaemia from not.
        flags.append(FLAG_BLASTS_BORDERLINE)
    if diff.erythroid == 0 and diff.n_nucleated > 0:
        flags.append(FLAG_NO_ERYTHROID)
    if diff.n_cells and diff.review_percent >= config.review_flag_percent:
        flags.append(FLAG_REVIEW)
    if diff.model_poor:
        flags.append(FLAG_MODEL_POOR)
    if not diff.adjusted:
        flags.append(FLAG_NOT_ADJUSTED)
    if diff.skipped_sources:
        flags.append(FLAG_FILES_NOT_READ)
    if diff.last_run_error:
        flags.append(FLAG_LAST_RUN_FAILED)
    return tuple(flags)


def reading_order(class_names: Sequence[str], config) -> list[int]:
    """Class indices in the order a differential is read: myeloid (as configured, by
    maturation), erythroid, then the others in the model's order, non-cell classes last."""
    names = list(class_names)
    first = [c for c in (*config.myeloid_classes, *config.erythroid_classes) if c in names]
    non_cell = [c for c in names if c in set(config.non_cell_classes) and c not in first]
    rest = [c for c in names if c not in set(first) and c not in set(non_cell)]
    seen: dict[str, int] = {}
    for c in (*first, *rest, *non_cell):
        seen.setdefault(c, names.index(c))
    return list(seen.values())


# How many cells lie beyond the record where nothing has shifted (BENCHMARKS.md, "Cells
# unlike the record"): said wherever a sample's share is shown (flag text, report).
RECORD_EXPECTED_SHARE = "about 5 % of crops like the record's, 6-13 % of cells cut from fields like them"


def describe_flag(flag: str, diff: SampleDifferential, config) -> str:
    """The flag as a reader should see it."""
    which = "adjusted" if diff.adjusted else "raw"
    p, lo, hi = diff.blast_estimate()
    thr = config.blast_flag_percent
    if flag == FLAG_LOW_COUNT:
        return f"only {diff.n_nucleated} nucleated cells counted (< {config.min_cells})"
    if flag == FLAG_BLASTS:
        return f"blasts {p:.1f} % ({which}; 95 % interval {lo:.1f}-{hi:.1f} %, all at or above {thr:g} %)"
    if flag == FLAG_BLASTS_BORDERLINE:
        return (f"blasts borderline: {p:.1f} % ({which}; 95 % interval {lo:.1f}-{hi:.1f} % crosses {thr:g} %): "
                f"count more cells or review the blasts")
    if flag == FLAG_NO_ERYTHROID:
        known = set(config.erythroid_classes) & set(diff.class_names)
        return ("no erythroid cells counted: M:E not defined" if known else
                "no erythroid cells: the model has no erythroid class, so M:E is not defined")
    if flag == FLAG_REVIEW:
        return (f"{diff.review_percent:.0f} % of cells ({diff.needs_review} of {diff.n_cells}) are below the review "
                f"confidence {config.review_confidence:g} (>= {config.review_flag_percent:g} %): the differential "
                f"rests on many uncertain calls; review them (report/needs_review.csv)")
    if flag == FLAG_MODEL_POOR:
        return f"model: {diff.model_poor}"
    if flag == FLAG_NOT_ADJUSTED:
        return diff.adjustment_missing or "adjusted differential not available"
    if flag == FLAG_FILES_NOT_READ:
        names = "; ".join(f"{x.get('source', '?')} ({x.get('error', '')})" for x in diff.skipped_sources)
        of = f" of {diff.n_sources}" if diff.n_sources else ""
        return (f"{len(diff.skipped_sources)}{of} files could not be read and are not counted: {names}; "
                "replace them and re-run with --no-resume")
    if flag == FLAG_LAST_RUN_FAILED:
        return f"the last run could not redo this sample; these are an earlier run's results: {diff.last_run_error}"
    if flag == FLAG_UNLIKE_RECORD:
        share, low, _ = diff.beyond_record_share
        n, k = diff.record_check
        return (f"cells unlike the model's record: {k} of {n} cells ({100 * share:.0f} %, at least {100 * low:.0f} % "
                f"at 95 % confidence; {RECORD_EXPECTED_SHARE}) look unlike the crops the model was "
                f"characterised on (another stain, scanner or preparation, or cells the record holds few of): "
                f"its class shares and intervals are not supported for this sample, and its other flags still "
                f"apply. Review the cells marked beyond_record 1 in cells/{diff.sample_id}.csv (and in "
                f"geojson/{diff.sample_id}.geojson's measurements, for QuPath); characterise the model on "
                f"this lab's labelled crops (slideproc evaluate --characterise) or retrain on them")
    return flag


def differential_rows(diff: SampleDifferential) -> list[dict]:
    flags = ";".join(diff.flags)
    adj = zip(diff.adjusted_percent, diff.adjusted_low, diff.adjusted_high)
    rows = [
        {"sample_id": diff.sample_id, "class": name, "count": count, "percent": p, "ci_low": lo, "ci_high": hi,
         "adjusted_percent": ap, "adjusted_ci_low": alo, "adjusted_ci_high": ahi, "flags": flags}
        for name, count, p, lo, hi, (ap, alo, ahi)
        in zip(diff.class_names, diff.counts, diff.percent, diff.ci_low, diff.ci_high, adj)
    ]
    nan = math.nan
    rows.append({"sample_id": diff.sample_id, "class": NUCLEATED_ROW, "count": diff.n_nucleated,
                 "percent": nan, "ci_low": nan, "ci_high": nan,
                 "adjusted_percent": nan, "adjusted_ci_low": nan, "adjusted_ci_high": nan, "flags": flags})
    rows.append({"sample_id": diff.sample_id, "class": BLAST_ROW, "count": diff.blasts,
                 "percent": diff.blast_percent, "ci_low": diff.blast_low, "ci_high": diff.blast_high,
                 "adjusted_percent": diff.adjusted_blast[0], "adjusted_ci_low": diff.adjusted_blast[1],
                 "adjusted_ci_high": diff.adjusted_blast[2], "flags": flags})
    rows.append({"sample_id": diff.sample_id, "class": ME_ROW, "count": diff.myeloid + diff.erythroid,
                 "percent": diff.me_ratio, "ci_low": diff.me_low, "ci_high": diff.me_high,
                 "adjusted_percent": diff.adjusted_me[0], "adjusted_ci_low": diff.adjusted_me[1],
                 "adjusted_ci_high": diff.adjusted_me[2], "flags": flags})
    return rows


def differential_table(diffs: Sequence[SampleDifferential]):
    """differential.csv as a DataFrame, samples in the order given."""
    import pandas as pd

    rows = [row for diff in diffs for row in differential_rows(diff)]
    df = pd.DataFrame(rows, columns=COLUMNS)
    floats = {c: np.float64 for c in COLUMNS if c not in ("sample_id", "class", "count", "flags")}
    return df.astype({"count": np.int64, **floats})


def summary_table(diffs: Sequence[SampleDifferential], failed: dict[str, str] | None = None):
    """One row per sample: the archive table of the report, as data. ``failed``: sample_id ->
    error of samples the last run could not complete and the store does not hold: a row each
    with ``status`` failed, the error and no figures, so no patient is missing from the table.
    ``status``: complete, last_run_failed (an earlier run's figures; ``error`` says why the
    last run could not redo it) or failed."""
    import pandas as pd

    rows = [
        {
            "sample_id": d.sample_id, "n_cells": d.n_cells, "n_nucleated": d.n_nucleated,
            "blast_percent": d.blast_percent, "blast_ci_low": d.blast_low, "blast_ci_high": d.blast_high,
            "adjusted_blast_percent": d.adjusted_blast[0], "adjusted_blast_ci_low": d.adjusted_blast[1],
            "adjusted_blast_ci_high": d.adjusted_blast[2],
            "me_ratio": d.me_ratio, "me_ci_low": d.me_low, "me_ci_high": d.me_high,
            "adjusted_me_ratio": d.adjusted_me[0],
            "needs_review": d.needs_review, "needs_review_percent": d.review_percent,
            "beyond_record_percent": 100 * d.beyond_record_share[0], "flags": ";".join(d.flags),
            # a sample the last run could not redo shows an earlier run's figures: said here too
            "status": "last_run_failed" if d.last_run_error else "complete", "error": d.last_run_error,
        }
        for d in diffs
    ]
    rows += [{"sample_id": sid, "status": "failed", "error": err} for sid, err in sorted((failed or {}).items())]
    table = pd.DataFrame(rows, columns=["sample_id", "n_cells", "n_nucleated", "blast_percent", "blast_ci_low",
                                       "blast_ci_high", "adjusted_blast_percent", "adjusted_blast_ci_low",
                                       "adjusted_blast_ci_high", "me_ratio", "me_ci_low", "me_ci_high",
                                       "adjusted_me_ratio", "needs_review", "needs_review_percent",
                                       "beyond_record_percent", "flags",
                                       "status", "error"])
    # counts stay whole numbers beside a failed sample's empty cells (pandas' nullable integers)
    return table.astype({"n_cells": "Int64", "n_nucleated": "Int64", "needs_review": "Int64"})
