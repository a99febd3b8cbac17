"""Differential counts from class counts: pure functions, no I/O.

What a hematologist signs: per class the percent of *nucleated cells counted*
(non-cell classes such as artefacts, unidentifiable and smudge cells are counted
but left out of the denominator) with a 95 % exact binomial (Clopper-Pearson)
interval, the myeloid:erythroid ratio with an interval, the blast percent, and
flags (too few cells counted, blasts at or above the leukaemia threshold).

Public API::

    proportion_ci(k, n, confidence=0.95) -> (low, high)      # fractions; NaN when n == 0
    ratio_ci(a, b, confidence=0.95) -> (ratio, low, high)    # a / b
    sample_differential(sample_id, class_names, counts, config, needs_review=0) -> SampleDifferential
    differential_rows(diff) -> list[dict]                    # differential.csv rows of one sample
    differential_table(diffs) -> DataFrame                   # differential.csv
    summary_table(diffs) -> DataFrame                        # one row per sample
    reading_order(class_names, config) -> list[int]          # lineage order for charts/tables

differential.csv columns: sample_id, class, count, percent, ci_low, ci_high.
percent, ci_low and ci_high are in percent (0-100) of nucleated cells counted.
One row per class of the model (non-cell classes: count only, percent empty),
then three rows per sample:

- ``nucleated_cells``: count = nucleated cells counted (the denominator);
- ``blast_percent``: count = blasts, percent and interval as the blast row;
- ``M:E``: count = myeloid + erythroid cells; *percent, ci_low and ci_high hold
  the ratio* myeloid / erythroid and its interval (not a percent).
"""

from __future__ import annotations

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
    me_ratio: float
    me_low: float
    me_high: float
    blasts: int
    blast_percent: float
    blast_low: float
    blast_high: float
    needs_review: int
    flags: tuple[str, ...]

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


def sample_differential(sample_id: str, class_names: Sequence[str], counts: Sequence[int], config,
                        needs_review: int = 0) -> SampleDifferential:
    """The differential of one sample from its per-class counts (``config``: a ReportConfig).

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
    me_ratio, me_low, me_high = ratio_ci(myeloid, erythroid)
    if config.blast_class in by_name and config.blast_class not in non_cell:
        blasts = by_name[config.blast_class]
        blast_percent, blast_low, blast_high = _percent(blasts, n_nucleated)
    else:
        blasts, blast_percent, blast_low, blast_high = 0, math.nan, math.nan, math.nan
    flags = []
    # Flagged, never hidden: a short count is still reported, with wide intervals.
    if n_nucleated < config.min_cells:
        flags.append(FLAG_LOW_COUNT)
    if not math.isnan(blast_percent) and blast_percent >= config.blast_flag_percent:
        flags.append(FLAG_BLASTS)
    return SampleDifferential(
        sample_id=str(sample_id), class_names=class_names, counts=counts, nucleated=nucleated,
        n_cells=int(sum(counts)), n_nucleated=n_nucleated,
        percent=tuple(percent), ci_low=tuple(low), ci_high=tuple(high),
        myeloid=myeloid, erythroid=erythroid, me_ratio=me_ratio, me_low=me_low, me_high=me_high,
        blasts=int(blasts), blast_percent=blast_percent, blast_low=blast_low, blast_high=blast_high,
        needs_review=int(needs_review), flags=tuple(flags),
    )


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


def describe_flag(flag: str, diff: SampleDifferential, config) -> str:
    """The flag as a reader should see it."""
    if flag == FLAG_LOW_COUNT:
        return f"only {diff.n_nucleated} nucleated cells counted (< {config.min_cells})"
    if flag == FLAG_BLASTS:
        return f"blasts {diff.blast_percent:.1f} % (>= {config.blast_flag_percent:g} %)"
    return flag


def differential_rows(diff: SampleDifferential) -> list[dict]:
    rows = [
        {"sample_id": diff.sample_id, "class": name, "count": count, "percent": p, "ci_low": lo, "ci_high": hi}
        for name, count, p, lo, hi in zip(diff.class_names, diff.counts, diff.percent, diff.ci_low, diff.ci_high)
    ]
    nan = math.nan
    rows.append({"sample_id": diff.sample_id, "class": NUCLEATED_ROW, "count": diff.n_nucleated,
                 "percent": nan, "ci_low": nan, "ci_high": nan})
    rows.append({"sample_id": diff.sample_id, "class": BLAST_ROW, "count": diff.blasts,
                 "percent": diff.blast_percent, "ci_low": diff.blast_low, "ci_high": diff.blast_high})
    rows.append({"sample_id": diff.sample_id, "class": ME_ROW, "count": diff.myeloid + diff.erythroid,
                 "percent": diff.me_ratio, "ci_low": diff.me_low, "ci_high": diff.me_high})
    return rows


def differential_table(diffs: Sequence[SampleDifferential]):
    """differential.csv as a DataFrame, samples in the order given."""
    import pandas as pd

    rows = [row for diff in diffs for row in differential_rows(diff)]
    df = pd.DataFrame(rows, columns=["sample_id", "class", "count", "percent", "ci_low", "ci_high"])
    return df.astype({"count": np.int64, "percent": np.float64, "ci_low": np.float64, "ci_high": np.float64})


def summary_table(diffs: Sequence[SampleDifferential]):
    """One row per sample: the archive table of the report, as data."""
    import pandas as pd

    rows = [
        {
            "sample_id": d.sample_id, "n_cells": d.n_cells, "n_nucleated": d.n_nucleated,
            "blast_percent": d.blast_percent, "blast_ci_low": d.blast_low, "blast_ci_high": d.blast_high,
            "me_ratio": d.me_ratio, "me_ci_low": d.me_low, "me_ci_high": d.me_high,
            "needs_review": d.needs_review, "flags": ";".join(d.flags),
        }
        for d in diffs
    ]
    return pd.DataFrame(rows, columns=["sample_id", "n_cells", "n_nucleated", "blast_percent", "blast_ci_low",
                                       "blast_ci_high", "me_ratio", "me_ci_low", "me_ci_high", "needs_review",
                                       "flags"])
