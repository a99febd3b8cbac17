"""Differential counts: exact intervals (scipy's), denominators, M:E ratio, blasts, flags."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
from scipy.stats import binomtest

from slideproc.config import ReportConfig
from slideproc.differential import (
    BLAST_ROW,
    COLUMNS,
    FLAG_BLASTS,
    FLAG_BLASTS_BORDERLINE,
    FLAG_LOW_COUNT,
    FLAG_MODEL_POOR,
    FLAG_NO_ERYTHROID,
    FLAG_NOT_ADJUSTED,
    FLAG_REVIEW,
    ME_ROW,
    NUCLEATED_ROW,
    differential_table,
    proportion_ci,
    ratio_ci,
    sample_differential,
    summary_table,
)
from slideproc.schema import MATEK_CLASSES

CLASSES = list(MATEK_CLASSES)
CONFIG = ReportConfig()


def counts_of(**by_class):
    return [by_class.get(c, 0) for c in CLASSES]


@pytest.mark.parametrize("k,n", [(0, 1), (1, 1), (0, 500), (3, 500), (250, 500), (499, 500), (500, 500),
                                 (17, 23), (1, 100000), (4321, 10000)])
def test_proportion_ci_equals_scipy(k, n):
    ci = binomtest(k, n).proportion_ci(method="exact")
    assert proportion_ci(k, n) == (ci.low, ci.high)


def test_every_class_interval_equals_scipy():
    rng = np.random.default_rng(3)
    counts = rng.integers(0, 80, len(CLASSES))
    d = sample_differential("S", CLASSES, counts, CONFIG)
    for name, count, p, lo, hi, keep in zip(CLASSES, d.counts, d.percent, d.ci_low, d.ci_high, d.nucleated):
        if not keep:
            continue
        ci = binomtest(count, d.n_nucleated).proportion_ci(method="exact")
        assert lo == 100.0 * ci.low and hi == 100.0 * ci.high, name
        assert p == 100.0 * count / d.n_nucleated
        assert lo <= p <= hi


def test_percentages_sum_to_100_over_nucleated_classes():
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 200, len(CLASSES))
    d = sample_differential("S", CLASSES, counts, CONFIG)
    df = differential_table([d])
    nucleated = [c for c in CLASSES if c not in CONFIG.non_cell_classes]
    rows = df[df["class"].isin(nucleated)]
    assert rows["percent"].sum() == pytest.approx(100.0)
    # Non-cell classes are counted, but have no percent.
    non_cell = df[df["class"].isin(CONFIG.non_cell_classes)]
    assert non_cell["count"].tolist() == [counts[CLASSES.index(c)] for c in non_cell["class"]]
    assert non_cell["percent"].isna().all()
    assert d.n_nucleated == sum(counts[CLASSES.index(c)] for c in nucleated)
    assert d.n_cells == sum(counts)


def test_non_cell_classes_stay_out_of_the_denominator():
    d = sample_differential("S", CLASSES, counts_of(BLA=10, LYT=90, ART=1000, KSC=50, NIF=7), CONFIG)
    assert d.n_nucleated == 100 and d.n_cells == 1157
    assert d.blast_percent == 10.0
    assert d.percent[CLASSES.index("LYT")] == 90.0


def test_me_ratio_and_interval():
    d = sample_differential("S", CLASSES, counts_of(NGS=200, MYB=100, EBO=80, PEB=20, LYT=100), CONFIG)
    assert (d.myeloid, d.erythroid) == (300, 100)
    assert d.me_ratio == 3.0
    ci = binomtest(300, 400).proportion_ci(method="exact")
    assert d.me_low == pytest.approx(ci.low / (1 - ci.low))
    assert d.me_high == pytest.approx(ci.high / (1 - ci.high))
    assert d.me_low < 3.0 < d.me_high


def test_me_ratio_edge_cases():
    assert ratio_ci(5, 0)[0] == math.inf and ratio_ci(5, 0)[2] == math.inf
    assert ratio_ci(0, 5)[:2] == (0.0, 0.0)
    assert all(math.isnan(v) for v in ratio_ci(0, 0))


def test_blast_percent_and_flags():
    d = sample_differential("AML", CLASSES, counts_of(BLA=300, LYT=300, EBO=10), CONFIG)
    assert d.blast_percent == pytest.approx(300 / 610 * 100)
    ci = binomtest(300, 610).proportion_ci(method="exact")
    assert (d.blast_low, d.blast_high) == (100 * ci.low, 100 * ci.high)
    assert FLAG_BLASTS in d.flags and FLAG_LOW_COUNT not in d.flags
    # No validation record given: raw only, and said.
    assert FLAG_NOT_ADJUSTED in d.flags
    small = sample_differential("small", CLASSES, counts_of(LYT=498, EBO=1, ART=100), CONFIG)
    assert FLAG_LOW_COUNT in small.flags  # flagged, not hidden
    ok = sample_differential("ok", CLASSES, counts_of(LYT=490, EBO=10), CONFIG)
    assert ok.flags == (FLAG_NOT_ADJUSTED,)


def test_blasts_interval_across_the_threshold_is_borderline():
    # 105 / 500 = 21 %: the exact interval (17.6-24.8 %) crosses 20 %: borderline, not high.
    d = sample_differential("B", CLASSES, counts_of(BLA=105, LYT=385, EBO=10), CONFIG)
    assert d.blast_low < 20.0 <= d.blast_high
    assert FLAG_BLASTS_BORDERLINE in d.flags and FLAG_BLASTS not in d.flags
    # 150 / 500 = 30 % (interval 26.0-34.2 %): high. 50 / 500 = 10 %: neither.
    assert FLAG_BLASTS in sample_differential("H", CLASSES, counts_of(BLA=150, LYT=340, EBO=10), CONFIG).flags
    low = sample_differential("L", CLASSES, counts_of(BLA=50, LYT=440, EBO=10), CONFIG).flags
    assert FLAG_BLASTS not in low and FLAG_BLASTS_BORDERLINE not in low


def test_me_without_erythroid_cells_is_empty_and_flagged_not_inf():
    d = sample_differential("S", CLASSES, counts_of(NGS=300, LYT=200), CONFIG)
    assert math.isnan(d.me_ratio) and math.isnan(d.me_low) and math.isnan(d.me_high)
    assert FLAG_NO_ERYTHROID in d.flags
    row = differential_table([d]).set_index("class").loc[ME_ROW]
    assert math.isnan(row["percent"]) and FLAG_NO_ERYTHROID in row["flags"].split(";")
    text = differential_table([d]).to_csv(index=False)
    assert "inf" not in text


def test_many_cells_below_review_confidence_are_flagged():
    config = dataclasses.replace(CONFIG, review_flag_percent=25.0)
    d = sample_differential("S", CLASSES, counts_of(LYT=490, EBO=10), config, needs_review=125)
    assert d.review_percent == 25.0 and FLAG_REVIEW in d.flags
    assert FLAG_REVIEW not in sample_differential("S", CLASSES, counts_of(LYT=490, EBO=10), config,
                                                  needs_review=124).flags


def test_a_poor_model_flags_the_sample():
    d = sample_differential("S", CLASSES, counts_of(LYT=490, EBO=10), CONFIG, model_poor="balanced accuracy 0.4")
    assert FLAG_MODEL_POOR in d.flags
    assert FLAG_MODEL_POOR in differential_table([d])["flags"].iloc[0].split(";")


def test_empty_sample_is_nan_not_an_error():
    d = sample_differential("E", CLASSES, [0] * len(CLASSES), CONFIG, needs_review=0)
    assert d.n_nucleated == 0 and math.isnan(d.blast_percent) and math.isnan(d.me_ratio)
    assert all(math.isnan(p) for p in d.percent)
    assert FLAG_LOW_COUNT in d.flags


def test_table_rows_and_columns():
    ds = [sample_differential(s, CLASSES, counts_of(BLA=5, NGS=50, EBO=20, ART=3), CONFIG, needs_review=4)
          for s in ("A", "B")]
    df = differential_table(ds)
    assert df.columns.tolist() == COLUMNS
    assert COLUMNS[:6] == ["sample_id", "class", "count", "percent", "ci_low", "ci_high"]  # today's, first
    assert df["adjusted_percent"].isna().all()  # no validation record given
    assert len(df) == 2 * (len(CLASSES) + 3)
    a = df[df["sample_id"] == "A"].set_index("class")
    assert a.loc[NUCLEATED_ROW, "count"] == 75
    assert a.loc[BLAST_ROW, "percent"] == pytest.approx(100 * 5 / 75)
    assert a.loc[ME_ROW, "count"] == 75 and a.loc[ME_ROW, "percent"] == pytest.approx(55 / 20)
    s = summary_table(ds)
    assert s["sample_id"].tolist() == ["A", "B"]
    assert s["needs_review"].tolist() == [4, 4]
    assert s["flags"].tolist() == [f"{FLAG_LOW_COUNT};{FLAG_NOT_ADJUSTED}"] * 2


def test_groups_come_from_the_config():
    config = dataclasses.replace(CONFIG, non_cell_classes=("ART",), myeloid_classes=("NGS",),
                                 erythroid_classes=("EBO", "PEB"), min_cells=10)
    d = sample_differential("S", CLASSES, counts_of(NGS=40, MYB=60, EBO=20, KSC=100, ART=5), config)
    assert d.n_nucleated == 220  # KSC counted as a cell here
    assert (d.myeloid, d.erythroid) == (40, 20)
    # A model without the blast class or a group member still gives a differential.
    few = ["LYT", "NGS", "EBO"]
    d2 = sample_differential("S", few, [10, 30, 10], CONFIG)
    assert math.isnan(d2.blast_percent) and d2.me_ratio == 3.0


def test_counts_must_match_classes():
    with pytest.raises(ValueError):
        sample_differential("S", CLASSES, [1, 2, 3], CONFIG)
