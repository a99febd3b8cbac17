"""The input cases of ../shared/data/cases (README.md there) and the archive
recipes, run as users run them: each asserts the right cells, coordinates,
mpp and samples (slideproc 0.x before issue 14 got each of them wrong with
exit 0, or ran for hours)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from slideproc.cli import main

pytestmark = pytest.mark.timeout(900)


def _cells(out: Path, sample: str) -> pd.DataFrame:
    return pd.read_csv(out / "cells" / f"{sample}.csv")


def _run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


@pytest.fixture(scope="module")
def cases_run(cases_dir, tmp_path_factory):
    """One `detect --mpp 0.09` over the EXIF, multi-page and implausible-mpp cases
    (the resolution the cases README gives; the crops are Matek's 0.09 um/px)."""
    out = tmp_path_factory.mktemp("cases") / "out"
    rc = main(["-q", "detect", str(cases_dir / "exif-rotated"), str(cases_dir / "multipage-tiff"),
               str(cases_dir / "implausible-mpp" / "dpi72.tif"), "--mpp", "0.09", "--out", str(out),
               "--workers", "1"])
    return rc, out


def test_exif_rotated_cells_are_in_the_frame_a_viewer_shows(cases_run):
    rc, out = cases_run
    assert rc == 0
    rotated, upright = _cells(out, "rotated"), _cells(out, "upright")
    # Two Matek crops side by side: their two centred cells and two nuclei cut
    # by the crops' borders (top and bottom of the seam).
    assert len(rotated) == len(upright) == 4
    # The same cells at the same coordinates as the upright copy (JPEG noise: < 1 px),
    # inside the 500 x 250 frame a viewer shows, not the stored 250 x 500 one.
    a = rotated.sort_values("x")[["x", "y"]].to_numpy()
    b = upright.sort_values("x")[["x", "y"]].to_numpy()
    np.testing.assert_allclose(a, b, atol=1.0)
    assert rotated["x1"].max() <= 500 and rotated["y1"].max() <= 250 and rotated["x"].max() > 250
    notes = _run_json(out)["resolution"]["rotated"][0]["notes"]
    assert notes == ["EXIF orientation 6 applied (rotated 90 degrees clockwise)"]


def test_multipage_tiff_every_page_is_a_field(cases_run):
    rc, out = cases_run
    stack, separate = _cells(out, "stack"), _cells(out, "separate")
    # Each page: its centred cell and nuclei cut by the border (of those, the
    # default channel misses page 1's sliver at the bottom edge).
    assert len(stack) == len(separate) == 5  # page 0 alone held 2
    assert stack["source"].value_counts().to_dict() == {"fields.tif#1": 2, "fields.tif#2": 3}
    assert separate["source"].value_counts().to_dict() == {"a.png": 2, "b.png": 3}
    # page N holds the cells of the separate file N, at the same coordinates
    for page, name in (("fields.tif#1", "a.png"), ("fields.tif#2", "b.png")):
        a = stack[stack.source == page].sort_values("x")[["x", "y"]].to_numpy()
        b = separate[separate.source == name].sort_values("x")[["x", "y"]].to_numpy()
        np.testing.assert_allclose(a, b, atol=1e-6)


def test_implausible_mpp_file_uses_the_users_mpp_with_a_note(cases_run):
    rc, out = cases_run
    record = _run_json(out)["resolution"]["dpi72"]
    assert record[0]["mpp"] == 0.09 and record[0]["mpp_from"] == "user"
    note = record[0]["notes"][0]
    assert "using 0.09 um/px from --mpp" in note and "352.8 um/px (72 pixels per inch)" in note
    cells = _cells(out, "dpi72")
    # 1,024 px at 0.09 um/px is 92 um of smear: dozens of cells, not 0 on a "36 cm slide"
    assert len(cells) > 10
    assert 20 < cells["area_um2"].median() < 1000  # um2 of a cell, not of a 352.8 um pixel


def test_implausible_mpp_without_mpp_is_refused_before_any_tile(cases_dir, tmp_path):
    """One line naming the file and the fix, exit 1; as a user runs it (console script)."""
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "slideproc.cli", "-q", "detect",
                           str(cases_dir / "implausible-mpp" / "dpi72.tif"), "--out", str(out), "--workers", "1"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stderr
    lines = [l for l in proc.stderr.splitlines() if l.strip()]
    assert len(lines) == 1 and "Traceback" not in proc.stderr
    assert "dpi72.tif" in lines[0] and "352.8 um/px (72 pixels per inch)" in lines[0]
    assert "--mpp UM" in lines[0]
    assert not (out / "cells" / "dpi72.csv").exists()


@pytest.mark.slow
def test_large_jpeg_is_read_with_the_default_limit(cases_dir, tmp_path):
    """A 90 MP stitched field (above Pillow's 89 MP guard): read, with its cells."""
    out = tmp_path / "out"
    rc = main(["-q", "detect", str(cases_dir / "large-jpeg" / "big"), "--mpp", "0.09", "--out", str(out),
               "--workers", "1"])
    assert rc == 0
    cells = _cells(out, "big")
    # Four Matek crops on glass, centred at 1,128-7,128 px: their four cells and
    # four nuclei cut by the crops' borders (7 with configs/od-red-channel.yaml,
    # the channel before issue 15, which found three of the cut ones).
    assert len(cells) == 8
    for c in (1128, 3128, 5128, 7128):
        assert (np.hypot(cells.x - c, cells.y - c) < 30).any(), c  # 2.7 um
    assert cells["x"].max() > 7000 and cells["y"].max() > 7000  # level-0 px of the 9,500 px field


def test_large_jpeg_limit_message_advice_works(cases_dir, tmp_path, capsys):
    """Over a lower source.max_image_pixels: refused naming the key; the advised
    config makes it pass. Header only: nothing is decoded either way."""
    low = tmp_path / "low.yaml"
    low.write_text("source:\n  max_image_pixels: 50000000\n")
    big = cases_dir / "large-jpeg" / "big"
    assert main(["plan", str(big), "--mpp", "0.09", "--config", str(low)]) == 1
    out, err = capsys.readouterr()
    line = [l for l in err.splitlines() if "field.jpg" in l][0]
    assert "9,500 x 9,500 px (90 MP) is more than source.max_image_pixels (50,000,000)" in line
    advised = line.split("set ")[1].split(" in a config")[0]  # e.g. source: {max_image_pixels: 90250000}
    fixed = tmp_path / "fixed.yaml"
    fixed.write_text(advised + "\n")
    assert main(["plan", str(big), "--mpp", "0.09", "--config", str(fixed)]) == 0
    assert "big  1 field  0.09 um/px (user)" in capsys.readouterr().out


# ----------------------------------------------------------------------------
# the recipes: synth's own archive, and samples two levels down
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def synth_archive(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synth") / "OUT"
    assert main(["-q", "synth", str(root), "--kind", "both", "--samples", "2", "--cells", "40",
                 "--size", "2048", "--seed", "5"]) == 0
    return root


def test_synth_archive_round_trips_through_detect(synth_archive, tmp_path, capsys):
    """`detect OUT` finds the two slides AND the two folder samples (two levels
    down), at the mpp OUT/manifest.csv gives them, and finds their cells; a file
    in no sample is named in the log and in run.json."""
    from slideproc.detection_eval import score_output

    junk = synth_archive / "slides" / "Thumbs.db"
    junk.write_bytes(b"\x07\x00\x00\x00junk" * 8)
    out = tmp_path / "det"
    assert main(["-q", "detect", str(synth_archive), "--out", str(out), "--workers", "1"]) == 0
    err = capsys.readouterr().err
    assert f"left out: {junk}: not a slide or image slideproc can read" in err
    expected = set(pd.read_csv(synth_archive / "samples.csv")["sample_id"])
    assert expected == {"slide_000", "slide_001", "folder_000", "folder_001"}
    assert {p.stem for p in (out / "cells").glob("*.csv")} == expected
    record = _run_json(out)
    assert {(s, r[0]["mpp"], r[0]["mpp_from"]) for s, r in record["resolution"].items()} == {
        ("slide_000", 0.25, "metadata"), ("slide_001", 0.25, "metadata"),
        ("folder_000", 0.25, "manifest"), ("folder_001", 0.25, "manifest")}
    # truth.csv, samples.csv, manifest.csv: side-cars or read; only the junk file is named
    assert record["left_out"] == [{"path": str(junk), "reason": "not a slide or image slideproc can read "
                                   "(OpenSlide, Pillow and tifffile do not recognise it)"}]
    scores = score_output(out, synth_archive / "truth.csv").set_index("sample_id")
    for sample in expected:
        assert scores.loc[sample, "recall"] >= 0.9, scores


def test_synth_archive_round_trips_through_run(small_archive, tiny_model, tmp_path):
    """`run OUT` on synth's archive root: all four samples, each source's mpp in the
    store; and a field with no cell completes with 0 cells (it raised
    "No objects to concatenate")."""
    import zarr
    from PIL import Image

    blank = tmp_path / "blank"
    blank.mkdir()
    Image.fromarray(np.full((300, 300, 3), 240, np.uint8)).save(blank / "glass.png")
    (blank / "manifest.csv").write_text("sample_id,path,mpp\nblank,glass.png,0.25\n")
    out = tmp_path / "run"
    assert main(["-q", "run", str(small_archive), str(blank), "--model", str(tiny_model), "--out", str(out),
                 "--workers", "1"]) == 0
    samples = zarr.open_group(str(out / "results.zarr"), mode="r")["samples"]
    expected = set(pd.read_csv(small_archive / "samples.csv")["sample_id"])
    assert {k for k, _ in samples.groups()} == expected | {"blank"} and len(expected) == 4
    for sample in expected:
        assert samples[sample].attrs["mpp"] == [0.25] * len(samples[sample].attrs["sources"])
        assert samples[sample].attrs["n_cells"] > 0
    assert samples["blank"].attrs["status"] == "complete" and samples["blank"].attrs["n_cells"] == 0


def test_archive_year_patient_fields(tmp_path, capsys):
    """archive/<year>/<patient>/<fields>: one sample per patient, nothing dropped."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for year, patients in (("2023", ("P001", "P002")), ("2024", ("P003",))):
        for patient in patients:
            folder = tmp_path / "archive" / year / patient
            folder.mkdir(parents=True)
            for i in range(2):
                Image.fromarray(rng.integers(150, 256, (64, 80, 3), np.uint8)).save(folder / f"f{i}.png")
    assert main(["plan", str(tmp_path / "archive"), "--mpp", "0.25"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "3 sample(s), 6 file(s)"
    for patient in ("P001", "P002", "P003"):
        assert f"{patient}  2 fields  0.25 um/px (user)" in out
    # the same patient folder under two years: refused, naming both, exit 2
    shutil.copytree(tmp_path / "archive" / "2023" / "P001", tmp_path / "archive" / "2024" / "P001")
    assert main(["plan", str(tmp_path / "archive")]) == 2
    err = capsys.readouterr().err
    assert "same sample_id 'P001'" in err and "2023/P001" in err and "2024/P001" in err and "manifest.csv" in err
