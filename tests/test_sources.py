"""slideproc/sources: the real slide files, image fields, padding, mpp resolution, caching."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slideproc.errors import MissingMppError, SlideprocError, SourceError
from slideproc.sources import (
    PAD_VALUE,
    ArrayReader,
    ImageReader,
    OpenSlideReader,
    SlideReader,
    SourceRef,
    cached_reader,
    open_path,
    open_source,
    reader_kind_for,
    resolve_mpp,
)

# What OpenSlide 4 says about each file (../shared/data/real/SOURCES.md).
# name: (format, (w, h), level count, downsamples (None = not checked), mpp, objective power)
GOOD = {
    "CMU-1-Small-Region.svs": ("aperio", (2220, 2967), 1, (1.0,), 0.499, 20.0),
    "boxes.tiff": ("generic-tiff", (300, 250), 4, (1.0, 2.0, 4.0161, 8.0863), None, None),
    "small.svs": ("aperio", (16, 16), 1, (1.0,), 0.499, 20.0),
    "boxes_0.dcm": ("dicom", (16, 16), 1, (1.0,), 0.499, 20.0),
    "pathml-small_HE_levels.tiff": ("generic-tiff", (300, 250), 4, (1.0, 2.0, 4.0161, 8.0863), None, None),
}
BAD = ["unopenable.tiff", "unreadable.svs", "histolab-broken.svs"]


# ----------------------------------------------------------------------------
# real slides
# ----------------------------------------------------------------------------
@pytest.mark.parametrize("name", sorted(GOOD))
def test_real_slide_metadata(real_slides, name):
    fmt, dims, n_levels, downsamples, mpp, power = GOOD[name]
    path = real_slides / name
    assert reader_kind_for(path) == "openslide"
    with open_path(path) as r:
        assert isinstance(r, SlideReader)
        assert r.format == fmt
        assert r.dimensions == dims
        assert r.level_count == n_levels == len(r.level_dimensions) == len(r.level_downsamples)
        assert r.level_dimensions[0] == dims
        assert r.level_downsamples == pytest.approx(downsamples, abs=1e-3)
        if mpp is not None:
            assert r.mpp == pytest.approx(mpp)
        else:
            # The generic TIFFs carry 72 dpi (a screen setting): OpenSlide reports
            # it, 25400 / 72 = 352.8 um/px. slideproc passes on what the file says.
            assert r.mpp is not None and r.mpp > 300
        assert r.objective_power == power
        # a corner region reads as RGB of the size asked
        tile = r.read_region((0, 0), r.level_count - 1, (8, 8))
        assert tile.shape == (8, 8, 3) and tile.dtype == np.uint8


def test_real_slide_pixels_are_real(real_slides):
    """CMU-1-Small-Region is H&E tissue: not blank, and level 0 agrees with OpenSlide."""
    import openslide

    path = real_slides / "CMU-1-Small-Region.svs"
    with open_path(path) as r:
        region = r.read_region((1000, 1000), 0, (64, 48))
    direct = np.asarray(openslide.OpenSlide(str(path)).read_region((1000, 1000), 0, (64, 48)))[..., :3]
    assert region.shape == (48, 64, 3)
    np.testing.assert_array_equal(region, direct)
    assert region.std() > 5


@pytest.mark.parametrize("name", BAD)
def test_bad_slides_give_one_clear_error(real_slides, name):
    path = real_slides / name
    with pytest.raises(SourceError) as info:
        reader = open_path(path)
        try:
            # unreadable.svs opens: its tiles are what is corrupt
            reader.read_region((0, 0), 0, (16, 16))
        finally:
            reader.close()
    msg = str(info.value)
    assert name in msg and "\n" not in msg
    assert info.value.__cause__ is None and info.value.__suppress_context__  # raised "from None"


def test_unreadable_opens_but_tiles_fail(real_slides):
    with open_path(real_slides / "unreadable.svs") as r:
        assert r.dimensions == (16, 16)
        with pytest.raises(SourceError, match="unreadable.svs.*Bogus marker length"):
            r.read_region((0, 0), 0, (16, 16))


def test_smalltif_is_an_image_field_converted(real_slides):
    path = real_slides / "pathml-smalltif.tif"
    assert reader_kind_for(path) == "image"  # OpenSlide refuses it; PIL/tifffile read it
    with open_path(path) as r:
        assert isinstance(r, ImageReader)
        assert r.dimensions == (640, 480) and r.level_count == 1
        # A striped TIFF's resolution tags are read as OpenSlide reads a tiled
        # one's: 96 pixels per inch = 264.6 um/px (which resolve_mpp refuses).
        assert r.mpp == pytest.approx(25400 / 96)
        assert r.conversions == []  # nothing decoded yet: opening reads the header only
        px = r.read_region((0, 0), 0, (640, 480))
        assert "greyscale -> RGB" in r.conversions
        assert any("uint16 -> uint8" in c for c in r.conversions)
    assert px.dtype == np.uint8 and px.shape == (480, 640, 3)
    assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()
    assert px.max() == 255  # the 16-bit range used is stretched to 8 bits
    assert px.std() > 1


def test_open_path_problems_name_the_file(tmp_path):
    with pytest.raises(SourceError, match="missing.svs: file not found"):
        open_path(tmp_path / "missing.svs")
    with pytest.raises(SourceError, match="is a directory"):
        open_path(tmp_path)
    empty = tmp_path / "empty.svs"
    empty.write_bytes(b"")
    with pytest.raises(SourceError, match="empty.svs: file is empty"):
        open_path(empty)
    odd = tmp_path / "notes.txt"
    odd.write_text("hello")
    with pytest.raises(SourceError, match="notes.txt: neither OpenSlide nor the image decoders"):
        open_path(odd)
    # A text file named .svs: OpenSlide refuses it with the file named
    fake = tmp_path / "fake.svs"
    fake.write_text("not a slide")
    with pytest.raises(SourceError, match="fake.svs"):
        open_path(fake)


# ----------------------------------------------------------------------------
# padding
# ----------------------------------------------------------------------------
def test_array_reader_pads_white_at_edges():
    rng = np.random.default_rng(1)
    arr = rng.integers(0, 200, (30, 40, 3), dtype=np.uint8)
    r = ArrayReader(arr, mpp=0.5)
    for (x, y, w, h) in [(-5, -7, 20, 20), (30, 20, 25, 25), (-10, -10, 60, 50), (100, 100, 8, 4), (0, 0, 40, 30)]:
        out = r.read_region((x, y), 0, (w, h))
        assert out.shape == (h, w, 3) and out.dtype == np.uint8
        expect = np.full((h, w, 3), PAD_VALUE, np.uint8)
        for yy in range(h):
            for xx in range(w):
                if 0 <= x + xx < 40 and 0 <= y + yy < 30:
                    expect[yy, xx] = arr[y + yy, x + xx]
        np.testing.assert_array_equal(out, expect)
    assert r.read_region((0, 0), 0, (0, 5)).shape == (5, 0, 3)
    with pytest.raises(SourceError):
        r.read_region((0, 0), 1, (4, 4))
    with pytest.raises(SourceError):
        r.read_region((0, 0), 0, (-4, 4))


def test_openslide_reader_pads_white_at_edges(real_slides):
    path = real_slides / "CMU-1-Small-Region.svs"
    with open_path(path) as r:
        w, h = r.dimensions
        inside = r.read_region((w - 10, h - 10), 0, (10, 10))
        out = r.read_region((w - 10, h - 10), 0, (30, 25))
        assert out.shape == (25, 30, 3)
        np.testing.assert_array_equal(out[:10, :10], inside)
        assert (out[10:] == PAD_VALUE).all() and (out[:, 10:] == PAD_VALUE).all()
        before = r.read_region((-20, -20), 0, (30, 30))
        assert (before[:20] == PAD_VALUE).all() and (before[:, :20] == PAD_VALUE).all()
        np.testing.assert_array_equal(before[20:, 20:], r.read_region((0, 0), 0, (10, 10)))
        far = r.read_region((10 * w, 10 * h), 0, (7, 5))
        assert far.shape == (5, 7, 3) and (far == PAD_VALUE).all()
        assert r.read_region((0, 0), 0, (0, 0)).shape == (0, 0, 3)
        # coarser level of a pyramid, past the edge
        with open_path(real_slides / "boxes.tiff") as b:
            lw, lh = b.level_dimensions[2]
            out = b.read_region((0, 0), 2, (lw + 6, lh + 3))
            assert out.shape == (lh + 3, lw + 6, 3) and (out[lh:] == PAD_VALUE).all()


# ----------------------------------------------------------------------------
# image fields
# ----------------------------------------------------------------------------
def _rgb(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def test_png_and_jpeg_fields(tmp_path):
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    Image.fromarray(arr).save(tmp_path / "a.jpg", quality=95)
    for name in ("a.png", "a.jpg"):
        assert reader_kind_for(tmp_path / name) == "image"
        with open_path(tmp_path / name) as r:
            assert r.dimensions == (64, 48) and r.level_count == 1 and r.mpp is None
            assert r.conversions == []
            px = r.read_region((0, 0), 0, (64, 48))
            if name.endswith("png"):
                np.testing.assert_array_equal(px, arr)


def test_truncated_and_corrupt_images(tmp_path):
    arr = _rgb(200, 200)
    Image.fromarray(arr).save(tmp_path / "full.jpg", quality=90)
    Image.fromarray(arr).save(tmp_path / "full.png")
    for ext in ("jpg", "png"):
        data = (tmp_path / f"full.{ext}").read_bytes()
        (tmp_path / f"trunc.{ext}").write_bytes(data[: len(data) // 2])
        (tmp_path / f"garbage.{ext}").write_bytes(b"\x89PNG\r\n" + bytes(range(256)) * 4)
        (tmp_path / f"zero.{ext}").write_bytes(b"")
        for stem in ("trunc", "garbage", "zero"):
            path = tmp_path / f"{stem}.{ext}"
            # Opening reads the header; a truncated file fails on its first read.
            with pytest.raises(SourceError) as info:
                ImageReader(str(path)).read_region((0, 0), 0, (8, 8))
            assert path.name in str(info.value) and "\n" not in str(info.value)
            with pytest.raises(SourceError):
                open_path(path).read_region((0, 0), 0, (8, 8))
    (tmp_path / "bad.tif").write_bytes(b"II*\x00" + b"\x00" * 50)
    with pytest.raises(SourceError, match="bad.tif"):
        open_path(tmp_path / "bad.tif")


def test_alpha_png_composited_on_white(tmp_path):
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:, :6, 3] = 255  # left half opaque red-ish, right half transparent
    rgba[:, 6:, 3] = 0
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    with ImageReader(str(tmp_path / "alpha.png")) as r:
        px = r.read_region((0, 0), 0, (12, 10))
        assert "alpha composited onto white" in r.conversions
    np.testing.assert_array_equal(px[:, :6], np.broadcast_to([200, 0, 0], (10, 6, 3)))
    assert (px[:, 6:] == 255).all()


def test_16bit_png(tmp_path):
    grey = (np.arange(40 * 30, dtype=np.uint32).reshape(30, 40) * 3).astype(np.uint16)
    Image.fromarray(grey).save(tmp_path / "g16.png")
    with ImageReader(str(tmp_path / "g16.png")) as r:
        px = r.read_region((0, 0), 0, (40, 30))
        assert "greyscale -> RGB" in r.conversions
        assert any(c.endswith("-> uint8") for c in r.conversions)
    assert px.dtype == np.uint8 and px.shape == (30, 40, 3)
    assert px[0, 0, 0] == 0 and px.max() == 255
    # order is kept: brighter in, brighter out
    assert (np.diff(px[..., 0].ravel().astype(int)) >= 0).all()


def test_array_reader_conversions():
    r = ArrayReader(np.linspace(0, 1, 20 * 10).reshape(10, 20), mpp=0.5)
    assert r.conversions == ["greyscale -> RGB", "float64 -> uint8"]
    px = r.read_region((0, 0), 0, (20, 10))
    assert px[0, 0, 0] == 0 and px[-1, -1, 0] == 255
    planar = np.zeros((3, 10, 20), np.uint8)
    planar[0] = 50
    r = ArrayReader(planar)
    assert r.dimensions == (20, 10) and (r.read_region((0, 0), 0, (1, 1))[0, 0] == [50, 0, 0]).all()
    with pytest.raises(SourceError, match="unsupported image shape"):
        ArrayReader(np.zeros((5, 5, 7), np.uint8))


# ----------------------------------------------------------------------------
# mpp
# ----------------------------------------------------------------------------
def _source_cfg(mpp=None, fallback=None):
    from slideproc.config import SourceConfig

    return SourceConfig(mpp_um=mpp, fallback_mpp_um=fallback)


def test_resolve_mpp_order(real_slides, tmp_path):
    """--mpp (user) > manifest > metadata > config fallback, each said with its source."""
    slide = real_slides / "small.svs"
    ref = SourceRef(str(slide), slide.name, "openslide")
    with open_path(slide) as r:
        res = resolve_mpp(r, ref, _source_cfg(fallback=0.7))
        assert (res.mpp, res.source, res.note) == (pytest.approx(0.499), "metadata", "")
        # the manifest's value wins over metadata, with a note naming both
        res = resolve_mpp(r, SourceRef(str(slide), slide.name, "openslide", mpp=0.3), _source_cfg(fallback=0.7))
        assert (res.mpp, res.source) == (0.3, "manifest")
        assert str(slide) in res.note and "0.3" in res.note and "0.499" in res.note
        # --mpp wins over both
        res = resolve_mpp(r, SourceRef(str(slide), slide.name, "openslide", mpp=0.3), _source_cfg(0.25, 0.7))
        assert (res.mpp, res.source) == (0.25, "user") and "--mpp" in res.note
        # agreeing within rounding: no note
        assert resolve_mpp(r, ref, _source_cfg(0.4992)).note == ""
    Image.fromarray(_rgb()).save(tmp_path / "f.png")
    path = str(tmp_path / "f.png")
    with open_path(path) as r:
        res = resolve_mpp(r, SourceRef(path, "f.png", "image", mpp=0.3), _source_cfg(fallback=0.7))
        assert (res.mpp, res.source, res.note) == (0.3, "manifest", "")
        res = resolve_mpp(r, SourceRef(path, "f.png", "image"), _source_cfg(fallback=0.7))
        assert (res.mpp, res.source) == (0.7, "config fallback")
        with pytest.raises(MissingMppError) as info:
            resolve_mpp(r, SourceRef(path, "f.png", "image"), _source_cfg())
    msg = str(info.value)
    assert path in msg and "--mpp" in msg and "mpp' column" in msg
    assert isinstance(info.value, SourceError)


def test_errors_pickle():
    import pickle

    err = MissingMppError("x.png: no mpp")
    again = pickle.loads(pickle.dumps(err))
    assert type(again) is MissingMppError and str(again) == str(err)


# ----------------------------------------------------------------------------
# open_source / cached_reader
# ----------------------------------------------------------------------------
def test_open_source_uses_the_refs_reader(real_slides, tmp_path):
    ref = SourceRef(str(real_slides / "small.svs"), "small.svs", "openslide")
    with open_source(ref) as r:
        assert isinstance(r, OpenSlideReader)
    Image.fromarray(_rgb()).save(tmp_path / "f.tif")  # a plain TIFF: an image field
    ref = SourceRef(str(tmp_path / "f.tif"), "f.tif", "image")
    with open_source(ref) as r:
        assert isinstance(r, ImageReader)
    with pytest.raises(SlideprocError):
        open_source(SourceRef(str(tmp_path / "f.tif"), "f.tif", "openslide"))


def test_cached_reader_per_thread(real_slides):
    ref = SourceRef(str(real_slides / "small.svs"), "small.svs", "openslide")
    a = cached_reader(ref)
    assert cached_reader(ref) is a  # same thread: same handle
    other = {}

    def work():
        other["r"] = cached_reader(ref)
        other["again"] = cached_reader(ref)
        other["px"] = other["r"].read_region((0, 0), 0, (4, 4))

    t = threading.Thread(target=work)
    t.start()
    t.join()
    assert other["r"] is other["again"]
    assert other["r"] is not a  # another thread: its own handle
    np.testing.assert_array_equal(other["px"], a.read_region((0, 0), 0, (4, 4)))


def test_cached_reader_bounds_open_handles(real_slides, tmp_path):
    refs = []
    for i in range(12):
        p = tmp_path / f"f{i}.png"
        Image.fromarray(_rgb(seed=i)).save(p)
        refs.append(SourceRef(str(p), p.name, "image"))
    readers = [cached_reader(r) for r in refs]
    assert cached_reader(refs[-1]) is readers[-1]
    assert cached_reader(refs[0]) is not readers[0]  # evicted and reopened
    # a failing open is not cached: the next call tries again and fails again
    bad = SourceRef(str(tmp_path / "nope.png"), "nope.png", "image")
    for _ in range(2):
        with pytest.raises(SourceError):
            cached_reader(bad)


def test_source_ref_pickles():
    import pickle

    ref = SourceRef("/a/b.svs", "b.svs", "openslide", 0.25)
    assert pickle.loads(pickle.dumps(ref)) == ref
    assert hash(ref) == hash(SourceRef("/a/b.svs", "b.svs", "openslide", 0.25))


def test_reader_kind_for(tmp_path, real_slides):
    assert reader_kind_for(tmp_path / "x.JPG") == "image"
    assert reader_kind_for(tmp_path / "x.svs") == "openslide"
    assert reader_kind_for(tmp_path / "x.ndpi") == "openslide"
    assert reader_kind_for(real_slides / "boxes.tiff") == "openslide"
    assert reader_kind_for(real_slides / "boxes_1.dcm") == "openslide"
    (tmp_path / "x.txt").write_text("x")
    assert reader_kind_for(tmp_path / "x.txt") is None


def test_negative_location_on_a_downsampled_level(real_slides):
    """OpenSlide floors a negative offset on a level of non-integer downsample;
    the reader places the slide where location / downsample says (rounded)."""
    with open_path(real_slides / "boxes.tiff") as r:
        d = r.level_downsamples[2]  # 4.016
        inside = r.read_region((0, 0), 2, (30, 30))
        for loc in (-4, -5, -16, -17, -40):
            k = round(-loc / d)
            out = r.read_region((loc, loc), 2, (30 + k, 30 + k))
            assert (out[:k] == PAD_VALUE).all() and (out[:, :k] == PAD_VALUE).all()
            np.testing.assert_array_equal(out[k:, k:], inside)
        assert (r.read_region((-1000, -1000), 2, (10, 10)) == PAD_VALUE).all()
