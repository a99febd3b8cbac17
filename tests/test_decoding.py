"""Decoding image fields: the pixels a person sees (EXIF/TIFF orientation), every
page of a multi-page file, formats decided by content, the pixel limit and the
decompression-bomb guard, fields too small to hold a cell."""

from __future__ import annotations

import json
import struct
import zlib

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image, ImageOps

from slideproc.cli import main
from slideproc.errors import SourceError
from slideproc.sources import ImageReader, open_source
from slideproc.sources.discover import discover

pytestmark = pytest.mark.timeout(600)

# What a viewer does to the stored pixels for each EXIF orientation, and its inverse
# (how a camera stores an upright scene under that tag).
T = Image.Transpose
SHOW = {2: [T.FLIP_LEFT_RIGHT], 3: [T.ROTATE_180], 4: [T.FLIP_TOP_BOTTOM], 5: [T.TRANSPOSE],
        6: [T.ROTATE_270], 7: [T.TRANSVERSE], 8: [T.ROTATE_90]}
STORE = {2: T.FLIP_LEFT_RIGHT, 3: T.ROTATE_180, 4: T.FLIP_TOP_BOTTOM, 5: T.TRANSPOSE,
         6: T.ROTATE_90, 7: T.TRANSVERSE, 8: T.ROTATE_270}


def _upright(w=40, h=24) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (h, w, 3), np.uint8)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied_exactly(tmp_path, orientation):
    up = _upright()
    stored = Image.fromarray(up)
    if orientation > 1:
        stored = stored.transpose(STORE[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    path = tmp_path / f"o{orientation}.png"  # lossless, so the check is exact
    stored.save(path, exif=exif)
    # Pillow's own transform agrees with the upright scene (the test's premise)
    with Image.open(path) as im:
        np.testing.assert_array_equal(np.asarray(ImageOps.exif_transpose(im)), up)
    with ImageReader(str(path)) as r:
        assert r.dimensions == (40, 24)  # the viewer's frame, from the header alone
        np.testing.assert_array_equal(r.read_region((0, 0), 0, (40, 24)), up)
        assert bool(r.conversions) == (orientation > 1)
    # a TIFF's Orientation tag, decoded by tifffile: the same pixels
    tif = tmp_path / f"o{orientation}.tif"
    tifffile.imwrite(tif, np.asarray(stored), photometric="rgb",
                     extratags=[(274, "H", 1, orientation, False)])
    with ImageReader(str(tif)) as r:
        assert r.dimensions == (40, 24)
        np.testing.assert_array_equal(r.read_region((0, 0), 0, (40, 24)), up)


def test_multipage_tiff_pages_are_fields_and_previews_named(tmp_path, capsys):
    a, b, c = _upright(64, 48), _upright(64, 48)[::-1], _upright(30, 20)
    with tifffile.TiffWriter(tmp_path / "stack.tif") as tw:
        for arr in (a, b, c):
            tw.write(arr, photometric="rgb")
        tw.write(a[::4, ::4], photometric="rgb")  # 16 x 12: a preview of page 1
    found = discover([tmp_path / "stack.tif"])
    (sample,) = found.samples
    assert [(r.name, r.page) for r in sample.sources] == [("stack.tif#1", 0), ("stack.tif#2", 1), ("stack.tif#3", 2)]
    for ref, arr in zip(sample.sources, (a, b, c)):
        with open_source(ref) as r:
            h, w = arr.shape[:2]
            np.testing.assert_array_equal(r.read_region((0, 0), 0, (w, h)), arr)
    assert found.left_out == [(f"{tmp_path / 'stack.tif'}#4",
                               "page 4 is a preview: page 1 reduced 4 times (16 x 12 px), not a field")]
    assert main(["plan", str(tmp_path / "stack.tif"), "--mpp", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "stack  3 fields" in out and "stack.tif#4: page 4 is a preview" in out


def test_formats_decided_by_content_and_other_files_named(tmp_path, capsys):
    yy, xx = np.mgrid[0:48, 0:64]
    arr = np.dstack([xx * 3, yy * 4, 255 - xx * 2]).astype(np.uint8)  # smooth: little JPEG noise
    folder = tmp_path / "s1"
    folder.mkdir()
    Image.fromarray(arr).save(folder / "a.jfif", format="JPEG", quality=95)
    Image.fromarray(arr).save(folder / "b.jpe", format="JPEG", quality=95)
    Image.fromarray(arr).save(folder / "c.webp", format="WEBP", lossless=True)
    Image.fromarray(arr).save(folder / "d", format="PNG")  # no suffix at all
    Image.fromarray(arr).save(folder / "e.bmp")
    (folder / "scan.ndpa").write_bytes(b"\x00\x01binary annotation")  # not an image
    (folder / "notes.txt").write_text("side-car")  # side-cars and hidden files: silent
    (folder / ".DS_Store").write_bytes(b"\x00" * 10)
    found = discover([tmp_path])
    (sample,) = found.samples
    assert sorted(r.name for r in sample.sources) == ["a.jfif", "b.jpe", "c.webp", "d", "e.bmp"]
    for ref in sample.sources:
        with open_source(ref) as r:
            px = r.read_region((0, 0), 0, (64, 48))
        assert np.abs(px.astype(int) - arr).mean() < 3  # JPEG noise at most
    assert [p for p, _ in found.left_out] == [str(folder / "scan.ndpa")]
    assert "not a slide or image slideproc can read" in found.left_out[0][1]


def _png_header_only(path, w, h) -> None:
    """A few hundred bytes that claim w x h pixels (a decompression bomb's header)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64))
                     + chunk(b"IEND", b""))


def test_decompression_bomb_is_refused_from_its_header(tmp_path):
    bomb = tmp_path / "bomb.png"
    _png_header_only(bomb, 60000, 60000)  # 3.6 gigapixels, 10.8 GB decoded
    with ImageReader(str(bomb), max_pixels=None) as r:  # the default limit, 500 MP
        assert r.dimensions == (60000, 60000)
        with pytest.raises(SourceError) as info:
            r.read_region((0, 0), 0, (8, 8))
    msg = str(info.value)
    assert "bomb.png" in msg and "(3,600 MP) is more than source.max_image_pixels (500,000,000)" in msg


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    """A 16 x 16 px field alone, and beside a good field."""
    root = tmp_path_factory.mktemp("tiny")
    tiny = np.full((16, 16, 3), 230, np.uint8)
    tiny[4:10, 4:10] = (120, 40, 150)
    (root / "alone").mkdir()
    Image.fromarray(tiny).save(root / "alone" / "tiny.png")
    (root / "mixed").mkdir()
    Image.fromarray(tiny).save(root / "mixed" / "tiny.png")
    Image.fromarray(np.full((200, 200, 3), 235, np.uint8)).save(root / "mixed" / "field.png")
    out = root / "out"
    rc = main(["-q", "detect", str(root / "alone"), str(root / "mixed"), "--mpp", "0.25", "--out", str(out),
               "--workers", "1"])
    return rc, out


def test_a_16px_field_is_named_with_the_reason(tiny_run, capsys):
    rc, out = tiny_run
    assert rc == 1
    errors = pd.read_csv(out / "errors.csv", keep_default_na=False)
    why = "16 x 16 px is 4 x 4 um at 0.25 um/px, narrower than the smallest nucleus detected (5 um"
    alone = errors[errors.sample_id == "alone"]
    assert len(alone) == 1 and why in alone.iloc[0]["error"] and "tiny.png" in alone.iloc[0]["error"]
    assert "concatenate" not in "".join(errors["error"])
    # beside a good field it is left out of its sample and named; the sample completes
    mixed = errors[errors.sample_id == "mixed"]
    assert len(mixed) == 1 and why in mixed.iloc[0]["error"]
    run = json.loads((out / "run.json").read_text())
    assert run["samples"]["mixed"]["status"] == "complete"
    assert (out / "cells" / "mixed.csv").exists()
