"""`slideproc report`: differential.csv, histograms, needs-review list, and an HTML page that renders."""

from __future__ import annotations

import dataclasses
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.stats import binomtest

from slideproc.cli import main
from slideproc.config import ReportConfig, RunConfig
from slideproc.differential import COLUMNS, FLAG_NOT_ADJUSTED
from slideproc.report import write_report
from slideproc.store import zarr_store
from test_store import CLASSES, make_sample

SAMPLES = {"AML-01": 700, "NORMAL-02": 900, "SMALL-03": 60, "EMPTY-04": 0}
NUCLEATED = [c for c in CLASSES if c not in ReportConfig().non_cell_classes]


def build_store(out: Path, samples: dict = SAMPLES) -> Path:
    zarr_store.init_store(out, class_names=CLASSES, run_id="run-x", model_sha256="cd" * 32,
                          config={"report": {"min_cells": 500}})
    for i, (sid, n) in enumerate(samples.items()):
        cells, ci, conf, prob = make_sample(n, seed=i)
        # One flat colour per crop: cheap to compress, and each cell still tells apart.
        colours = np.random.default_rng(i).integers(0, 256, (n, 1, 1, 3), dtype=np.uint8)
        crops = np.ascontiguousarray(np.broadcast_to(colours, (n, 24, 24, 3))) if i == 0 else None
        zarr_store.write_sample(out, sid, cells, ci, conf, prob, CLASSES,
                                {"mpp": 0.25, "source_dimensions": {"slide_a.tiff": [2000, 1500],
                                                                    "slide_b.tiff": [2000, 1500]}}, crops=crops)
    return out


@pytest.fixture(scope="module")
def reported(tmp_path_factory) -> Path:
    out = build_store(tmp_path_factory.mktemp("report"))
    write_report(out)
    return out


def test_outputs_written(reported):
    for name in ["differential.csv", "histograms.csv", "report/index.html", "report/summary.csv",
                 "report/needs_review.csv", "report/AML-01.gallery.png"]:
        assert (reported / name).is_file(), name
    for sid in SAMPLES:
        assert (reported / "geojson" / f"{sid}.geojson").is_file()
        assert (reported / "report" / f"{sid}.differential.png").stat().st_size > 1000
        assert (reported / "report" / f"{sid}.confidence.png").stat().st_size > 1000
    assert not (reported / "report" / "NORMAL-02.gallery.png").exists()  # no crops saved


def test_differential_csv(reported):
    df = pd.read_csv(reported / "differential.csv")
    assert df.columns.tolist() == COLUMNS
    # No model record in this store: raw only, flagged and said.
    assert df["adjusted_percent"].isna().all()
    assert df["flags"].str.contains(FLAG_NOT_ADJUSTED).all()
    assert df["sample_id"].unique().tolist() == sorted(SAMPLES)
    hist = pd.read_csv(reported / "histograms.csv").set_index("sample_id")
    for sid, rows in df.groupby("sample_id"):
        rows = rows.set_index("class")
        n = int(hist.loc[sid, NUCLEATED].sum())
        assert rows.loc["nucleated_cells", "count"] == n
        for cls in CLASSES:
            assert rows.loc[cls, "count"] == hist.loc[sid, cls]
        if n == 0:
            assert rows.loc[NUCLEATED, "percent"].isna().all()
            continue
        assert rows.loc[NUCLEATED, "percent"].sum() == pytest.approx(100.0)
        for cls in NUCLEATED:
            ci = binomtest(int(rows.loc[cls, "count"]), n).proportion_ci(method="exact")
            assert rows.loc[cls, "ci_low"] == pytest.approx(100 * ci.low, rel=1e-12, abs=1e-12)
            assert rows.loc[cls, "ci_high"] == pytest.approx(100 * ci.high, rel=1e-12, abs=1e-12)
        assert rows.loc["blast_percent", "percent"] == pytest.approx(rows.loc["BLA", "percent"])
        m = int(hist.loc[sid, list(ReportConfig().myeloid_classes)].sum())
        e = int(hist.loc[sid, list(ReportConfig().erythroid_classes)].sum())
        assert rows.loc["M:E", "percent"] == pytest.approx(m / e)
        assert rows.loc["M:E", "ci_low"] < m / e < rows.loc["M:E", "ci_high"]


def test_needs_review_lists_low_confidence_cells(reported):
    review = pd.read_csv(reported / "report" / "needs_review.csv")
    summary = pd.read_csv(reported / "report" / "summary.csv").set_index("sample_id")
    for sid in SAMPLES:
        cells, _, _ = zarr_store.read_sample(reported, sid)
        low = cells[cells["confidence"] < ReportConfig().review_confidence]
        mine = review[review["sample_id"] == sid]
        assert sorted(mine["cell_id"]) == sorted(low["cell_id"])
        assert mine["confidence"].is_monotonic_increasing  # the least sure first
        assert summary.loc[sid, "needs_review"] == len(low)
    # Flagged, not hidden: samples under 500 nucleated cells are in the table, with the flag.
    assert "low_count" in summary.loc["SMALL-03", "flags"].split(";")
    assert "low_count" in summary.loc["EMPTY-04", "flags"].split(";")
    assert "low_count" not in summary.loc["NORMAL-02", "flags"].split(";")


def test_html_is_self_contained(reported):
    page = (reported / "report" / "index.html").read_text()
    assert len(re.findall(r"<tr class='sample", page)) == len(SAMPLES)
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", page), "the page must not touch the network"
    imgs = re.findall(r"<img [^>]*src=\"([^\"]{0,30})", page)
    assert imgs and all(src.startswith("data:image/png;base64,") for src in imgs)
    assert "only 60 nucleated cells" not in page or "SMALL-03" in page


def test_report_is_deterministic(reported, tmp_path):
    """Rebuilding from the same store gives the same bytes (a resumed run ends like an uninterrupted one)."""
    out = build_store(tmp_path)
    write_report(out)
    for name in ["differential.csv", "histograms.csv", "report/index.html", "report/needs_review.csv",
                 "geojson/AML-01.geojson", "report/AML-01.differential.png"]:
        assert (out / name).read_bytes() == (reported / name).read_bytes(), name


SMALL = {"A": 40, "SMALL-03": 60}


def test_config_changes_the_flags(tmp_path):
    out = build_store(tmp_path, SMALL)
    cfg = dataclasses.replace(RunConfig(), report=dataclasses.replace(ReportConfig(), min_cells=10))
    write_report(out, cfg)
    summary = pd.read_csv(out / "report" / "summary.csv").set_index("sample_id")
    assert "low_count" not in summary.loc["SMALL-03", "flags"].split(";")


def test_cli_report(tmp_path, capsys):
    out = build_store(tmp_path / "out", SMALL)
    assert main(["report", str(out)]) == 0
    assert (out / "report" / "index.html").is_file()
    cfg = tmp_path / "report.yaml"
    cfg.write_text("report:\n  min_cells: 10\n")
    assert main(["report", str(out), "--config", str(cfg)]) == 0
    assert main(["report", str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "results.zarr" in err[0] and "slideproc run" in err[0]
    cfg.write_text("report:\n  min_cell: 10\n")
    assert main(["report", str(out), "--config", str(cfg)]) == 2
    assert "report.min_cell" in capsys.readouterr().err


# ----------------------------------------------------------------------------
# headless Chromium
# ----------------------------------------------------------------------------
def _chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    if os.path.exists("/usr/bin/chromium"):
        return "/usr/bin/chromium"
    pytest.skip("headless Chromium not found (Debian: apt-get install chromium); the HTML render test needs it")


def run_chromium(page: Path, tmp: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [
        _chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-extensions",
        f"--user-data-dir={tmp / 'chromium-profile'}", "--enable-logging=stderr", "--v=0",
        *args, page.resolve().as_uri(),
    ]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=180)


def console_messages(stderr: str) -> list[str]:
    """Every console message Chromium logged (errors, uncaught exceptions and logs alike)."""
    return [line for line in stderr.splitlines() if ":CONSOLE" in line]


def test_console_detector_catches_errors(tmp_path):
    bad = tmp_path / "bad.html"
    bad.write_text("<!doctype html><html><head><link rel=icon href='data:,'></head><body>"
                   "<script>missingFunction();</script></body></html>")
    proc = run_chromium(bad, tmp_path, "--dump-dom")
    assert any("missingFunction" in m for m in console_messages(proc.stderr)), proc.stderr[-2000:]


def test_html_renders_in_chromium(reported, tmp_path):
    page = reported / "report" / "index.html"
    # 1. The page as written: it loads, logs nothing to the console, one row per sample.
    proc = run_chromium(page, tmp_path, "--dump-dom")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert console_messages(proc.stderr) == []
    rows = re.findall(r'<tr class="sample[^"]*" data-sample-id="([^"]+)"', proc.stdout)
    assert rows == sorted(SAMPLES)
    # 2. A copy with a probe: every image decoded.
    probe = page.with_name("probe.html")
    probe.write_text(page.read_text().replace(
        "</body>",
        "<script>window.addEventListener('load', () => { const imgs = [...document.images];"
        " const broken = imgs.filter(i => !(i.complete && i.naturalWidth > 0)).length;"
        " console.log('probe images=' + imgs.length + ' broken=' + broken"
        " + ' rows=' + document.querySelectorAll('#archive tr.sample').length); });</script></body>"))
    try:
        proc = run_chromium(probe, tmp_path, "--dump-dom")
    finally:
        probe.unlink()
    messages = console_messages(proc.stderr)
    assert len(messages) == 1 and "probe images=" in messages[0], messages
    n_images = int(re.search(r"images=(\d+)", messages[0]).group(1))
    assert n_images == 2 * len(SAMPLES) + 1  # differential + confidence each, one gallery
    assert "broken=0" in messages[0] and f"rows={len(SAMPLES)}" in messages[0]
    # 3. A screenshot: something is drawn.
    shot = tmp_path / "shot.png"
    proc = run_chromium(page, tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", "--hide-scrollbars")
    assert shot.is_file(), proc.stderr[-2000:]
    from PIL import Image

    pixels = np.asarray(Image.open(shot).convert("L"), dtype=float)
    assert pixels.shape == (1600, 1280) and pixels.std() > 10
