"""Resolution: --mpp > manifest > metadata > config fallback (sources/mpp.py), TIFF
units read the same for tiled and striped files, implausible or non-square
metadata refused with one line naming the file and the fix. All through
`slideproc plan` (no pixels read) and the library function the workers call."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from slideproc.cli import main
from slideproc.config import SourceConfig
from slideproc.errors import ImplausibleMppError, NonSquarePixelsError
from slideproc.sources import SourceRef, open_path, reader_kind_for, resolve_mpp

UM_PER = {"INCH": 25400.0, "CENTIMETER": 10000.0}


def _tiff(path, mpp_x, mpp_y=None, unit="CENTIMETER", tiled=True, size=512):
    """An RGB TIFF whose resolution tags say mpp_x (across) and mpp_y (down) um/px."""
    mpp_y = mpp_x if mpp_y is None else mpp_y
    rng = np.random.default_rng(0)
    arr = rng.integers(180, 256, (size, size, 3), np.uint8)
    kw = {"tile": (256, 256)} if tiled else {"rowsperstrip": 64}
    tifffile.imwrite(path, arr, photometric="rgb", resolution=(UM_PER[unit] / mpp_x, UM_PER[unit] / mpp_y),
                     resolutionunit=unit, **kw)
    return path


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "striped"])
@pytest.mark.parametrize("unit", ["INCH", "CENTIMETER"])
def test_tiff_resolution_units_read_the_same_tiled_and_striped(tmp_path, tiled, unit, capsys):
    path = _tiff(tmp_path / "s.tif", 0.25, unit=unit, tiled=tiled)
    # tiled: a slide OpenSlide opens; striped (a camera's TIFF): an image field
    assert reader_kind_for(path) == ("openslide" if tiled else "image")
    assert main(["plan", str(path)]) == 0
    out = capsys.readouterr().out
    assert "s  " in out and "0.25 um/px (metadata)" in out


@pytest.mark.parametrize("tiled", [True, False], ids=["tiled", "striped"])
def test_non_square_pixels_are_refused_naming_both_values(tmp_path, tiled, capsys):
    path = _tiff(tmp_path / "ns.tif", 0.25, 0.5, tiled=tiled)
    with open_path(path) as r:
        with pytest.raises(NonSquarePixelsError) as info:
            resolve_mpp(r, SourceRef(str(path), path.name, "image"), SourceConfig())
    msg = str(info.value)
    assert str(path) in msg and "0.25 um/px across" in msg and "0.5 um/px down" in msg and "--mpp" in msg
    assert main(["plan", str(path)]) == 1
    _, err = capsys.readouterr()
    assert "pixels are not square" in err and err.count("\n") == 1
    # rounding in the tags is not "non-square": 0.2500 vs 0.2505 is one value
    near = _tiff(tmp_path / "near.tif", 0.25, 0.2505, tiled=tiled)
    with open_path(near) as r:
        res = resolve_mpp(r, SourceRef(str(near), near.name, "image"), SourceConfig())
    assert res.mpp == pytest.approx(0.25025) and res.source == "metadata"


def test_precedence_user_over_manifest_over_metadata(tmp_path, capsys):
    slide = _tiff(tmp_path / "m.tif", 0.25)
    (tmp_path / "manifest.csv").write_text("sample_id,path,mpp\nM,m.tif,0.3\n")
    assert main(["plan", str(slide)]) == 0
    assert "M" not in capsys.readouterr().out.split()  # the file alone: its own metadata
    assert main(["plan", str(tmp_path / "manifest.csv")]) == 0
    out = capsys.readouterr().out
    assert "M  slide  0.3 um/px (manifest)" in out
    assert "using 0.3 um/px from the manifest's mpp column; the file says 0.25 um/px" in out
    assert main(["plan", str(tmp_path / "manifest.csv"), "--mpp", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "M  slide  0.2 um/px (user)" in out and "from --mpp" in out


def test_implausible_metadata_is_refused_and_overridable(tmp_path):
    # a camera TIFF with an editor's 72 dpi, striped: the same rule as a tiled one
    path = _tiff(tmp_path / "cam.tif", 25400 / 72, unit="INCH", tiled=False)
    ref = SourceRef(str(path), path.name, "image")
    with open_path(path) as r:
        with pytest.raises(ImplausibleMppError) as info:
            resolve_mpp(r, ref, SourceConfig(fallback_mpp_um=0.25))
        msg = str(info.value)
        assert str(path) in msg and "352.8 um/px (72 pixels per inch)" in msg and "--mpp UM" in msg
        res = resolve_mpp(r, SourceRef(str(path), path.name, "image", mpp=0.1), SourceConfig())
        assert (res.mpp, res.source) == (0.1, "manifest") and "352.8" in res.note


@pytest.mark.parametrize("argv, needle", [
    (["plan", "x.svs", "--mpp", "352.8"], "--mpp: expected the level-0 resolution in um per pixel, between 0.02 and 2"),
    (["detect", "x.svs", "--out", "o", "--mpp", "0.001"], "between 0.02 and 2"),
])
def test_implausible_mpp_on_the_command_line_is_bad_usage(argv, needle, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    assert needle in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_implausible_mpp_in_manifest_or_config_is_bad_usage(tmp_path, capsys):
    _tiff(tmp_path / "a.tif", 0.25)
    (tmp_path / "m.csv").write_text("sample_id,path,mpp\nA,a.tif,72\n")
    assert main(["plan", str(tmp_path / "m.csv")]) == 2
    assert "line 2: mpp 72 um per pixel is outside" in capsys.readouterr().err
    (tmp_path / "c.yaml").write_text("source:\n  fallback_mpp_um: 96\n")
    assert main(["plan", str(tmp_path / "a.tif"), "--config", str(tmp_path / "c.yaml")]) == 2
    assert "'source.fallback_mpp_um' must be between 0.02 and 2" in capsys.readouterr().err
