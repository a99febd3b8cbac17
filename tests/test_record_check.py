"""The record check (classify/record_check.py): cells unlike the crops the model was
characterised on are counted, and a sample with clearly too many is flagged unlike_record,
from the fit to the report."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from engine_fixtures import small_archive, tiny_model  # noqa: F401  (fixtures)
from slideproc import differential as dif
from slideproc.classify.record_check import (FEATURE_RECORD_FILE, SHIFT_LIMIT, FeatureRecord, fit_feature_record,
                                             read_feature_record, shift_verdict, write_feature_record)
from slideproc.cli import main
from slideproc.config import ReportConfig


def test_residual_is_what_the_axes_leave_out():
    """Hand-computed: axes e1, e2 of R^3 about the mean (1, 1, 1) leave out the third coordinate."""
    record = FeatureRecord(mean=np.ones(3, np.float32), components=np.eye(3, dtype=np.float32)[:2],
                           thresholds=np.array([5.0, 20.0], np.float32), n=10)
    x = np.array([[4, 5, 13], [1, 1, 1], [-2, 7, 1]], np.float32)
    np.testing.assert_allclose(record.residuals(x), [12.0, 0.0, 0.0], atol=1e-6)
    # Thresholds per predicted class: 12 > 5 for class 0, 12 < 20 for class 1.
    assert record.beyond(x, np.array([0, 0, 0])).tolist() == [True, False, False]
    assert record.beyond(x, np.array([1, 1, 1])).tolist() == [False, False, False]


def test_fit_flags_about_five_percent_of_like_cells_and_all_shifted_ones():
    rng = np.random.default_rng(0)
    n, d = 600, 64
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    scales = np.r_[np.linspace(10, 3, 8), np.full(d - 8, 0.5)]

    def draw(m, offset=0.0):
        y = rng.integers(0, 3, m)
        z = rng.normal(size=(m, d)) * scales
        z[:, 0] += 8 * y  # classes apart along the first axis
        x = z @ basis.T
        return x + offset, y

    x, y = draw(n)
    record = fit_feature_record(x, y, y, 3, components=8)
    assert record.components.shape == (8, d) and record.thresholds.shape == (3,) and record.n == n
    like, like_y = draw(4000)
    share = record.beyond(like, like_y).mean()
    assert 0.03 < share < 0.08, share  # out-of-fold 0.95 quantiles: about 5 % of new like cells
    # Another "stain": a shift along a direction the record never varied in.
    shifted, shifted_y = draw(500, offset=6.0 * basis[:, -1])
    assert record.beyond(shifted, shifted_y).mean() > 0.95


def test_fit_refuses_too_few_crops():
    with pytest.raises(ValueError, match="too few"):
        fit_feature_record(np.zeros((6, 4)), np.zeros(6, int), np.zeros(6, int), 2)


@pytest.mark.parametrize("k,n", [(0, 100), (25, 100), (50, 100), (3, 12), (200, 1000)])
def test_verdict_is_the_exact_interval_against_the_limit(k, n):
    share, low, flagged = shift_verdict(k, n)
    exact = binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact").low
    assert share == pytest.approx(k / n) and low == pytest.approx(exact, abs=1e-9)
    assert flagged == (exact > SHIFT_LIMIT)


def test_verdict_values():
    assert shift_verdict(50, 100)[2] and not shift_verdict(25, 100)[2]  # lower ends 0.398 and 0.169
    share, low, flagged = shift_verdict(0, 0)
    assert math.isnan(share) and math.isnan(low) and not flagged


def test_file_round_trip_and_refusals(tmp_path):
    assert read_feature_record(tmp_path, 3) is None  # a model written before the check
    record = FeatureRecord(np.arange(4, dtype=np.float32), np.eye(4, dtype=np.float32)[:2],
                           np.array([1, 2, 3], np.float32), n=40)
    write_feature_record(tmp_path, record)
    back = read_feature_record(tmp_path, 3)
    np.testing.assert_array_equal(back.thresholds, record.thresholds)
    assert back.n == 40 and back.quantile == pytest.approx(0.95)
    with pytest.raises(ValueError, match="does not fit this model"):
        read_feature_record(tmp_path, 8)
    (tmp_path / FEATURE_RECORD_FILE).write_bytes(b"not a numpy archive")
    with pytest.raises(ValueError, match="cannot be read"):
        read_feature_record(tmp_path, 3)


NAMES = ("BLA", "PMO", "MYB", "EBO", "LYT", "ART")


def _diff(record_check):
    return dif.sample_differential("P1", NAMES, [10, 20, 30, 30, 10, 5], ReportConfig(), record_check=record_check)


def test_the_flag_comes_first_and_says_why():
    diff = _diff({"cells": 105, "beyond": 60})
    assert diff.flags[0] == dif.FLAG_UNLIKE_RECORD
    text = dif.describe_flag(dif.FLAG_UNLIKE_RECORD, diff, ReportConfig())
    assert "60 of 105 cells (57 %" in text and "evaluate --characterise" in text and "other flags still apply" in text
    summary = dif.summary_table([diff, _diff({"cells": 105, "beyond": 6}), _diff(None)]).set_index("sample_id",
                                                                                                    append=True)
    assert summary["beyond_record_percent"].tolist()[:2] == pytest.approx([100 * 60 / 105, 100 * 6 / 105])
    assert math.isnan(summary["beyond_record_percent"].tolist()[2])
    assert dif.FLAG_UNLIKE_RECORD not in _diff({"cells": 105, "beyond": 6}).flags
    assert dif.FLAG_UNLIKE_RECORD not in _diff(None).flags  # not checked: no flag, no figure


# ---------------------------------------------------------------------------
# End to end: train writes the record, run stores the check, report flags it
# ---------------------------------------------------------------------------

def test_train_writes_a_record_that_loads(tiny_model):  # noqa: F811
    from slideproc.classify.loading import load_model_dir

    n_val = len(pd.read_csv(tiny_model / "validation_predictions.csv"))
    assert n_val >= 10, "the engine's tiny model should have enough validation crops for a record"
    record = load_model_dir(tiny_model).feature_record
    assert record is not None and record.n == n_val
    assert record.thresholds.shape == (len(json.loads((tiny_model / "labels.json").read_text())["labels"]),)


def _run(model: Path, folder: Path, out: Path) -> int:
    return main(["-q", "run", str(folder), "--mpp", "0.25", "--model", str(model), "--out", str(out),
                 "--workers", "1"])


def test_run_stores_the_check_and_flags_a_sample_unlike_the_record(small_archive, tiny_model, tmp_path):  # noqa: F811
    import zarr

    folder = tmp_path / "S1"
    shutil.copytree(small_archive / "folders" / "folder_000", folder)
    assert _run(tiny_model, folder, tmp_path / "out") == 0
    group = zarr.open_group(str(tmp_path / "out" / "results.zarr" / "samples" / "S1"), mode="r")
    beyond = group["cells/beyond_record"][...]
    check = dict(group.attrs)["record_check"]
    assert beyond.dtype == bool and len(beyond) == dict(group.attrs)["n_cells"] == check["cells"]
    assert check["beyond"] == int(beyond.sum()) and check["expected_share"] == pytest.approx(0.05)
    summary = pd.read_csv(tmp_path / "out" / "report" / "summary.csv").set_index("sample_id")
    assert summary.loc["S1", "beyond_record_percent"] == pytest.approx(100 * beyond.mean())
    page = (tmp_path / "out" / "report" / "index.html").read_text()
    assert f"{int(beyond.sum())} of {len(beyond)} cells" in page and "beyond the model&#x27;s record" in page
    # Each cell's verdict reaches what a reader opens: the cells CSV (1/0), QuPath's
    # measurements and needs_review.csv, cell by cell as stored.
    _assert_cell_verdicts(tmp_path / "out", "S1", beyond.astype(int))

    # The same cells against a record they all lie beyond (every threshold below any residual).
    odd = tmp_path / "model_odd"
    shutil.copytree(tiny_model, odd)
    record = read_feature_record(odd, len(json.loads((odd / "labels.json").read_text())["labels"]))
    write_feature_record(odd, FeatureRecord(record.mean, record.components, np.full_like(record.thresholds, -1.0),
                                            n=record.n))
    assert _run(odd, folder, tmp_path / "out_odd") == 0
    flags = pd.read_csv(tmp_path / "out_odd" / "differential.csv")["flags"].iloc[0].split(";")
    assert flags[0] == "unlike_record"
    page = (tmp_path / "out_odd" / "report" / "index.html").read_text()
    assert "cells unlike the model&#x27;s record" in page and "beyond_record 1 in cells/S1.csv" in page
    _assert_cell_verdicts(tmp_path / "out_odd", "S1", np.ones(len(beyond), int))


def _assert_cell_verdicts(out: Path, sample_id: str, expected) -> None:
    """cells/<id>.csv, the GeoJSON's measurements and needs_review.csv carry ``expected``
    (one int per cell, in cell_id order; None: the sample was not checked)."""
    cells = pd.read_csv(out / "cells" / f"{sample_id}.csv")
    geo = json.loads((out / "geojson" / f"{sample_id}.geojson").read_text())["features"]
    review = pd.read_csv(out / "report" / "needs_review.csv")
    assert cells.columns[-1] == "beyond_record" and review.columns[-1] == "beyond_record"
    if expected is None:
        assert cells["beyond_record"].isna().all() and review["beyond_record"].isna().all()
        assert not any("beyond_record" in f["properties"]["measurements"] for f in geo)
        return
    assert cells["beyond_record"].tolist() == list(expected)
    by_cell = {f["properties"]["cell_id"]: f["properties"]["measurements"]["beyond_record"] for f in geo}
    assert [by_cell[i] for i in range(len(expected))] == [float(v) for v in expected]
    assert len(review) > 0  # the tiny model is unsure of most cells
    assert review["beyond_record"].tolist() == [int(expected[i]) for i in review["cell_id"]]


def test_a_model_without_a_record_runs_unchecked(small_archive, tiny_model, tmp_path):  # noqa: F811
    import zarr

    old = tmp_path / "model_old"
    shutil.copytree(tiny_model, old)
    (old / FEATURE_RECORD_FILE).unlink()
    folder = tmp_path / "S1"
    shutil.copytree(small_archive / "folders" / "folder_000", folder)
    assert _run(old, folder, tmp_path / "out") == 0
    group = zarr.open_group(str(tmp_path / "out" / "results.zarr" / "samples" / "S1"), mode="r")
    assert "record_check" not in dict(group.attrs) and "beyond_record" not in group["cells"]
    assert math.isnan(pd.read_csv(tmp_path / "out" / "report" / "summary.csv")["beyond_record_percent"].iloc[0])
    assert "cells not checked against the model&#x27;s record" in (tmp_path / "out" / "report" / "index.html").read_text()
    _assert_cell_verdicts(tmp_path / "out", "S1", None)


def test_evaluate_reports_the_check_and_characterise_refits_it(tiny_model, tmp_path):  # noqa: F811
    from slideproc.classify.loading import load_model_dir

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    crops = tmp_path / "crops"
    assert main(["-q", "synth", str(crops), "--kind", "crops", "--cells", "84", "--seed", "5"]) == 0
    before = (model / FEATURE_RECORD_FILE).read_bytes()
    assert main(["-q", "evaluate", str(model), str(crops / "crops"), "--out", str(tmp_path / "e"),
                 "--characterise"]) == 0
    metrics = json.loads((tmp_path / "e" / "metrics.json").read_text())
    check = metrics["record_check"]
    assert check["cells"] == metrics["n"] and 0 <= check["beyond"] <= check["cells"]
    assert (model / "feature_record.train.npz").read_bytes() == before  # training's record kept
    assert load_model_dir(model).feature_record.n == metrics["n"]  # the lab's crops are the record now


def test_a_record_that_does_not_fit_the_model_is_refused_before_anything_is_written(
        small_archive, tiny_model, tmp_path, capsys):  # noqa: F811
    """A record of another model.keras, of another feature width, or a damaged file:
    one line naming the file, exit 1 (as a damaged model.keras); no results written where
    it can be told without Keras (all but the width)."""
    from slideproc.classify.loading import clear_cache, load_model_dir
    from slideproc.errors import ModelError

    n_labels = len(json.loads((tiny_model / "labels.json").read_text())["labels"])
    record = read_feature_record(tiny_model, n_labels)
    assert record.model_sha256 == (tiny_model / "model.sha256").read_text().split()[0]
    folder = tmp_path / "S1"
    shutil.copytree(small_archive / "folders" / "folder_000", folder)
    cases = {
        "another model": FeatureRecord(record.mean, record.components, record.thresholds, n=record.n,
                                       model_sha256="0" * 64),
        "width": FeatureRecord(record.mean[:10], record.components[:, :10], record.thresholds, n=record.n,
                               model_sha256=record.model_sha256),
        "damaged": None,
    }
    for name, bad in cases.items():
        model = tmp_path / f"model_{name.replace(' ', '_')}"
        shutil.copytree(tiny_model, model)
        if bad is None:
            path = model / FEATURE_RECORD_FILE
            path.write_bytes(path.read_bytes()[:200])
        else:
            write_feature_record(model, bad)
        clear_cache()
        with pytest.raises(ModelError, match="feature_record.npz"):
            load_model_dir(model)
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        assert _run(model, folder, out) == 1, name  # a ModelError, like a damaged model.keras
        err = capsys.readouterr().err.strip().splitlines()
        assert any("feature_record.npz" in line and str(model) in line for line in err), (name, err)
        if name != "width":  # the width is known only once Keras loads the model, on the workers
            assert not (out / "results.zarr").exists(), name


def test_a_store_is_never_checked_against_two_records(small_archive, tiny_model, tmp_path, capsys):  # noqa: F811
    """After evaluate --characterise refits the record, a resumed run into the same OUT_DIR
    is refused (its stored samples were checked against the old record)."""
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    folder = tmp_path / "S1"
    shutil.copytree(small_archive / "folders" / "folder_000", folder)
    out = tmp_path / "out"
    assert _run(model, folder, out) == 0
    crops = tmp_path / "crops"
    assert main(["-q", "synth", str(crops), "--kind", "crops", "--cells", "84", "--seed", "7"]) == 0
    assert main(["-q", "evaluate", str(model), str(crops / "crops"), "--out", str(tmp_path / "e"),
                 "--characterise"]) == 0
    capsys.readouterr()
    assert _run(model, folder, out) == 2
    assert "feature_record.npz" in capsys.readouterr().err
