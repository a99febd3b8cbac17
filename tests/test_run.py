"""`slideproc run` end to end on a local Dask cluster: outputs read back as users would."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from slideproc.cli import main
from slideproc.outlock import exclusive_out_dir
from slideproc.schema import CELL_CSV_COLUMNS

from engine_fixtures import archive_inputs, digest_outputs

pytestmark = pytest.mark.timeout(600)


def test_zarr_layout_and_dtypes(reference_run, tiny_model):
    root = zarr.open_group(str(reference_run / "results.zarr"), mode="r")
    labels = json.loads((tiny_model / "labels.json").read_text())["labels"]
    assert list(root.attrs["class_names"]) == labels
    assert len(root.attrs["model_sha256"]) == 64
    samples = root["samples"]
    names = sorted(k for k, _ in samples.groups())
    assert len(names) == 4
    for name in names:
        g = samples[name]
        assert g.attrs["status"] == "complete"
        n = g.attrs["n_cells"]
        assert g["cells/x"].dtype == np.float64 and g["cells/y"].dtype == np.float64
        assert g["cells/bbox"].dtype == np.int32 and g["cells/bbox"].shape == (n, 4)
        assert g["cells/area_um2"].dtype == np.float32
        assert g["cells/class_index"].dtype == np.int16
        assert g["cells/confidence"].dtype == np.float32
        assert g["cells/probabilities"].dtype == np.float16
        assert g["cells/probabilities"].shape == (n, len(labels))
        hist = g["histogram"][:]
        assert hist.dtype == np.int64
        counts = np.bincount(g["cells/class_index"][:], minlength=len(labels))
        np.testing.assert_array_equal(hist, counts)
        probs = g["cells/probabilities"][:].astype(np.float32)
        if n:
            np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=2e-2)
            np.testing.assert_array_equal(probs.argmax(axis=1), g["cells/class_index"][:])


def test_csv_outputs_match_store(reference_run):
    hist = pd.read_csv(reference_run / "histograms.csv")
    root = zarr.open_group(str(reference_run / "results.zarr"), mode="r")
    labels = list(root.attrs["class_names"])
    assert list(hist.columns) == ["sample_id", "n_cells", *labels]
    for _, row in hist.iterrows():
        cells = pd.read_csv(reference_run / "cells" / f"{row.sample_id}.csv")
        assert list(cells.columns) == list(CELL_CSV_COLUMNS)
        assert len(cells) == row.n_cells > 0
        counts = cells["class"].value_counts()
        for label in labels:
            assert row[label] == counts.get(label, 0)
        g = root["samples"][row.sample_id]
        np.testing.assert_allclose(cells["x"], g["cells/x"][:])
    errors = pd.read_csv(reference_run / "errors.csv")
    assert len(errors) == 0
    run = json.loads((reference_run / "run.json").read_text())
    assert run["model"]["sha256"] == root.attrs["model_sha256"]
    assert set(run["samples"]) == set(hist.sample_id)
    assert all(s["status"] == "complete" for s in run["samples"].values())
    assert "dask" in run["versions"] and "keras" in run["versions"]
    assert (reference_run / "differential.csv").exists()
    assert (reference_run / "report" / "index.html").exists()
    assert len(list((reference_run / "geojson").glob("*.geojson"))) == len(hist)


def test_resume_skips_complete_samples_and_changes_nothing(reference_run, small_archive, tiny_model, tmp_path):
    out = tmp_path / "out"
    shutil.copytree(reference_run, out)
    before = digest_outputs(out)
    rc = main(["-q", "run", *archive_inputs(small_archive), "--model", str(tiny_model), "--out", str(out),
               "--workers", "1"])
    assert rc == 0
    run = json.loads((out / "run.json").read_text())
    assert all(s["status"] == "skipped" for s in run["samples"].values())
    assert digest_outputs(out) == before
    # Each sample keeps the provenance of the run that made it (before: "skipped", 0 cells, 0 s).
    first = json.loads((reference_run / "run.json").read_text())
    for sid, sample in run["samples"].items():
        made = first["samples"][sid]
        assert sample["n_cells"] == made["n_cells"] > 0
        assert sample["made_by"]["run_id"] == first["run_id"] != run["run_id"]
        assert sample["made_by"]["n_cells"] == made["n_cells"]
        assert sample["made_by"]["seconds"] > 0 and sample["made_by"]["finished"] >= sample["made_by"]["started"]
        assert sample["made_by"]["model_sha256"] == run["model"]["sha256"]
    # ... and the resumed run is a new entry of the folder's history.
    assert [r["run_id"] for r in run["runs"]] == [first["run_id"], run["run_id"]]
    assert run["runs"][-1]["samples"] == {"skipped": 4}
    assert run["runs"][0]["samples"] == {"complete": 4}


def test_bad_sample_fails_alone(real_slides, small_archive, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    rc = main(["-q", "run", str(small_archive / "slides"), str(real_slides / "unreadable.svs"),
               str(real_slides / "histolab-broken.svs"), "--model", str(tiny_model), "--out", str(out),
               "--workers", "2"])
    assert rc == 1
    errors = pd.read_csv(out / "errors.csv")
    assert set(errors.sample_id) == {"unreadable", "histolab-broken"}
    assert set(errors.stage) <= {"open", "detect"}
    assert errors.error.str.contains("unreadable.svs|histolab-broken.svs").all()
    hist = pd.read_csv(out / "histograms.csv")
    assert len(hist) == 2  # both good slides complete
    err = capsys.readouterr().err
    assert "Traceback" not in err and "unreadable" in err


def test_second_run_into_same_out_dir_refuses(small_archive, tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    with exclusive_out_dir(out):
        rc = main(["run", *archive_inputs(small_archive), "--model", str(tiny_model), "--out", str(out)])
    assert rc == 2
    assert "in use by another slideproc process" in capsys.readouterr().err
    assert not (out / "results.zarr").exists()


def test_missing_model_is_a_clear_error(small_archive, tmp_path, capsys):
    rc = main(["run", str(small_archive / "slides"), "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")])
    assert rc == 2  # a path that names no model is bad usage, like an INPUT that does not exist
    err = capsys.readouterr().err
    assert "nope" in err and "Traceback" not in err
    assert not (tmp_path / "o").exists()


def test_detect_writes_cells_without_classes(small_archive, tmp_path):
    out = tmp_path / "det"
    assert main(["-q", "detect", *archive_inputs(small_archive), "--out", str(out), "--workers", "2"]) == 0
    files = sorted((out / "cells").glob("*.csv"))
    assert len(files) == 4
    truth = pd.read_csv(small_archive / "truth.csv")
    for f in files:
        cells = pd.read_csv(f)
        assert "class" not in cells.columns and len(cells) > 0
        sample_truth = truth[truth.sample_id == f.stem]
        # detection itself is scored in tests/test_detect.py; here: the same sources and a sane count
        assert set(cells.source) <= set(sample_truth.source)
        assert abs(len(cells) - len(sample_truth)) <= 0.1 * len(sample_truth) + 2


def test_a_sample_missing_files_and_a_failed_sample_are_in_the_report_and_every_rerun(
        real_slides, small_archive, tiny_model, tmp_path):
    """Kinds of fault from a review: a folder sample complete without an unreadable field
    raised no flag, its re-run exited 0 with an empty errors.csv, and a failed sample was
    absent from the report and summary.csv (only errors.csv and stderr named it). Now the
    sample is flagged `files_not_read`, every re-run names the file again (exit 1), and the
    failed sample is a row of summary.csv and a line above the report's archive."""
    folder = tmp_path / "partial"
    shutil.copytree(small_archive / "folders" / "folder_000", folder)
    data = (folder / "field_000.png").read_bytes()
    (folder / "bad.png").write_bytes(data[: len(data) // 3])
    out = tmp_path / "out"
    args = ["-q", "run", str(folder), str(real_slides / "unreadable.svs"), "--mpp", "0.25",
            "--model", str(tiny_model), "--out", str(out), "--workers", "1"]
    assert main(args) == 1
    summary = pd.read_csv(out / "report" / "summary.csv", keep_default_na=False).set_index("sample_id")
    assert summary.loc["partial", "status"] == "complete" and "files_not_read" in summary.loc["partial", "flags"]
    assert summary.loc["unreadable", "status"] == "failed"
    assert "unreadable.svs" in summary.loc["unreadable", "error"]
    assert summary.loc["unreadable", "n_cells"] == ""
    flags = pd.read_csv(out / "differential.csv").groupby("sample_id")["flags"].first()
    assert "files_not_read" in flags["partial"]
    page = (out / "report" / "index.html").read_text()
    assert "1 sample(s) failed and are not in this report: unreadable." in page
    assert "Archive (1 samples; 1 failed, above)" in page
    assert "bad.png (not read)" in page
    assert "1 of 2 files could not be read and are not counted: bad.png (" in page
    # resumed: the sample is kept, and its unread file is named again
    assert main(args) == 1
    errors = pd.read_csv(out / "errors.csv")
    row = errors[errors.sample_id == "partial"].iloc[0]
    assert row.stage == "open" and row.path.endswith("bad.png") and "kept from an earlier run" in row.error
    assert json.loads((out / "run.json").read_text())["samples"]["partial"]["status"] == "skipped"
    # a run given other inputs: run.json still names who made the samples it did not touch
    first_id = json.loads((out / "run.json").read_text())["samples"]["partial"]["made_by"]["run_id"]
    assert main(["-q", "run", str(small_archive / "folders" / "folder_001"), "--mpp", "0.25",
                 "--model", str(tiny_model), "--out", str(out), "--workers", "1"]) == 0
    record = json.loads((out / "run.json").read_text())
    assert set(record["samples"]) == {"folder_001"}
    # ... and the earlier failure of a sample it was not given stays named, marked as such
    errors = pd.read_csv(out / "errors.csv")
    assert list(errors.sample_id) == ["unreadable"]
    assert "(an earlier run's failure (run " in errors.error[0]
    summary = pd.read_csv(out / "report" / "summary.csv", keep_default_na=False).set_index("sample_id")
    assert summary.loc["unreadable", "status"] == "failed" and summary.loc["folder_001", "n_cells"] != ""
    assert record["earlier_samples"]["partial"]["made_by"]["run_id"] == first_id
    assert [s["source"] for s in record["earlier_samples"]["partial"]["skipped_sources"]] == ["bad.png"]


def test_a_sample_the_last_run_could_not_redo_is_flagged_with_its_earlier_results(
        small_archive, tiny_model, tmp_path):
    """A sample whose file changed is redone; when the redo fails, the store keeps the
    earlier results (README). The report shows them flagged `last_run_failed` with the
    error, so nobody reads them as this run's."""
    folder = tmp_path / "S1"
    shutil.copytree(small_archive / "folders" / "folder_000", folder)
    out = tmp_path / "out"
    args = ["-q", "run", str(folder), "--mpp", "0.25", "--model", str(tiny_model), "--out", str(out),
            "--workers", "1"]
    assert main(args) == 0
    field = folder / "field_000.png"
    field.write_bytes(field.read_bytes()[:5000])  # changed, so redone, and now unreadable
    assert main(args) == 1
    flags = pd.read_csv(out / "differential.csv").groupby("sample_id")["flags"].first()
    assert "last_run_failed" in flags["S1"]
    page = (out / "report" / "index.html").read_text()
    assert "the last run could not redo this sample; these are an earlier run&#x27;s results:" in page
    assert "field_000.png" in page and "(last_run_failed)" in page


def test_a_detect_runs_cells_table_left_in_out_dir_is_named(small_archive, tiny_model, tmp_path, capsys):
    """Review: `run` into an OUT_DIR where `detect` had written cells/<id>.csv left that
    file beside the run's tables without a word. It is kept (it may be the only copy) and
    named in one warning."""
    out = tmp_path / "out"
    other = small_archive / "folders" / "folder_001"
    assert main(["-q", "detect", str(other), "--mpp", "0.25", "--out", str(out), "--workers", "1"]) == 0
    capsys.readouterr()
    assert main(["-q", "run", str(small_archive / "folders" / "folder_000"), "--mpp", "0.25",
                 "--model", str(tiny_model), "--out", str(out), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert "1 file(s) of no sample in results.zarr (folder_001.csv), left by an earlier `detect` run" in err
    assert (out / "cells" / "folder_001.csv").exists()
