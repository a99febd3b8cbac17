"""`slideproc info` on the real slides (in-process and as a subprocess), and lazy TensorFlow."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from slideproc.cli import main

REPO = Path(__file__).resolve().parents[1]
BAD = ("unopenable.tiff", "unreadable.svs", "histolab-broken.svs")


def _blocks(out: str) -> dict[str, str]:
    """sample_id -> its block of `slideproc info` output."""
    blocks = {}
    for block in out.strip().split("\n\n"):
        first = block.splitlines()[0]
        blocks[first.split()[0]] = block
    return blocks


def _run(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, timeout=120,
                          cwd=REPO, env=env)


def test_info_real_slides_in_process(real_slides, capsys):
    rc = main(["info", "-v", str(real_slides)])
    out, err = capsys.readouterr()
    assert rc == 1  # three files cannot be read; the others are still reported
    blocks = _blocks(out)
    cmu = blocks["CMU-1-Small-Region"]
    assert "format: aperio" in cmu and "dimensions: 2220 x 2967 px" in cmu
    assert "levels: 1 (downsamples 1)" in cmu
    assert "mpp: 0.499 um/px (file metadata)" in cmu and "objective power: 20x" in cmu
    fg = float(re.search(r"foreground: ([\d.]+) %", cmu).group(1))
    assert 10 < fg < 95  # tissue with glass around it
    boxes = blocks["boxes"]
    assert "format: generic-tiff" in boxes and "dimensions: 300 x 250 px" in boxes
    assert "levels: 4 (downsamples 1, 2, 4.01613, 8.08631)" in boxes
    levels = blocks["pathml-small_HE_levels"]
    assert "dimensions: 300 x 250 px" in levels and "levels: 4" in levels
    assert "dimensions: 16 x 16 px" in blocks["small"]
    dicom = blocks["boxes_0"]
    assert "format: dicom" in dicom and "dimensions: 16 x 16 px" in dicom
    # the plain 16-bit TIFF is an image field (its 160 x 120 second page a preview);
    # its 96 dpi is no microscope's resolution: refused, naming the fix
    field = blocks["slides"]
    assert "pathml-smalltif.tif" in field and "dimensions: 640 x 480 px" in field
    assert "mpp: unknown" in field and "96 pixels per inch" in field and "--mpp" in field
    # the three bad files: an ERROR line in their block, one line each on stderr
    for name in BAD:
        stem = name.rsplit(".", 1)[0]
        # the path as given or resolved (../shared may be a symbolic link)
        assert any(f"ERROR: {path}" in blocks[stem] for path in (real_slides / name, (real_slides / name).resolve()))
    err_lines = [l for l in err.splitlines() if l.startswith("slideproc: error:")]
    assert len(err_lines) == 3
    for name in BAD:
        assert sum(name in l for l in err_lines) == 1
    assert "Traceback" not in err


def test_info_subprocess_no_traceback(real_slides):
    proc = _run("-m", "slideproc.cli", "info", "-v", str(real_slides / "small.svs"), str(real_slides / "unreadable.svs"),
                str(real_slides / "histolab-broken.svs"), str(real_slides / "unopenable.tiff"),
                str(real_slides / "no-such-file.svs"))
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    errors = [l for l in proc.stderr.splitlines() if l.startswith("slideproc: error:")]
    assert len(errors) == 4  # three bad files and the missing one
    assert any("no-such-file.svs" in l and "not found" in l for l in errors)
    assert "small  (" in proc.stdout and "dimensions: 16 x 16 px" in proc.stdout


def test_info_console_script(real_slides):
    script = Path(sys.executable).parent / "slideproc"
    if not script.exists():
        pytest.skip("console script not installed in this environment")
    proc = subprocess.run([str(script), "info", str(real_slides / "CMU-1-Small-Region.svs")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "2220 x 2967" in proc.stdout


def test_info_mpp_applies_to_images(real_slides, capsys):
    rc = main(["info", "-v", "--mpp", "0.3", str(real_slides / "pathml-smalltif.tif"),
               str(real_slides / "small.svs")])
    out, _ = capsys.readouterr()
    assert rc == 0
    blocks = _blocks(out)
    field = blocks["pathml-smalltif"]
    assert "mpp: 0.3 um/px (--mpp)" in field
    assert "foreground: 100.0 %" in field  # a field of view is taken whole
    assert "the file says 264.6 um/px (96 pixels per inch)" in field
    # --mpp is what the user wants, over the file's own metadata, with a note
    assert "mpp: 0.3 um/px (--mpp)" in blocks["small"]
    assert "note: " in blocks["small"] and "the file says 0.499 um/px" in blocks["small"]


def test_info_manifest_mpp_and_folder(tmp_path, capsys):
    arr = np.full((60, 80, 3), 240, np.uint8)
    arr[20:40, 30:50] = (150, 70, 160)
    Image.fromarray(arr).save(tmp_path / "f1.png")
    Image.fromarray(arr).save(tmp_path / "f2.png")
    (tmp_path / "m.csv").write_text("sample_id,path,mpp\nP1,f1.png,0.25\nP1,f2.png,\n")
    rc = main(["info", "-v", str(tmp_path / "m.csv")])
    out, _ = capsys.readouterr()
    assert rc == 0
    block = _blocks(out)["P1"]
    assert "  f1.png" in block and "  f2.png" in block  # two sources: each named
    assert "mpp: 0.25 um/px (manifest)" in block
    assert "mpp: unknown" in block  # f2 has no mpp: said, but not a failure of info


def test_info_missing_and_empty_inputs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    rc = main(["info", str(tmp_path / "nope.svs"), str(tmp_path / "empty")])
    _, err = capsys.readouterr()
    assert rc == 1
    lines = [l for l in err.splitlines() if l.strip()]
    assert len(lines) == 2 and all(l.startswith("slideproc: error:") for l in lines)


def test_info_bad_manifest_is_usage_error(tmp_path, capsys):
    (tmp_path / "m.csv").write_text("sample_id,path\n../x,a.png\n")
    assert main(["info", str(tmp_path / "m.csv")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'../x' is not allowed" in err


def test_usage_errors_exit_2(capsys):
    assert main(["info"]) == 2
    assert main(["info", "x.svs", "--mpp", "-1"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err


# ----------------------------------------------------------------------------
# TensorFlow stays out of --help and info
# ----------------------------------------------------------------------------
_HEAVY = ("tensorflow", "keras")


def test_import_cli_does_not_import_tensorflow():
    proc = _run("-c", "import slideproc.cli, sys; "
                      "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules, "
                      "sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))")
    assert proc.returncode == 0, proc.stderr


_CHECK = """
import sys
import slideproc.cli
try:
    rc = slideproc.cli.main(sys.argv[1:])
except SystemExit as e:  # --help exits through argparse
    rc = e.code
heavy = sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras'))
assert not heavy, heavy[:5]
sys.exit(rc)
"""


@pytest.mark.parametrize("argv", [["--help"], ["info", "--help"], ["info", "{slides}"]])
def test_help_and_info_do_not_import_tensorflow(real_slides, argv):
    argv = [a.format(slides=real_slides) for a in argv]
    proc = _run("-c", _CHECK, *argv)
    assert proc.returncode in (0, 1), proc.stderr  # info on the folder exits 1 (bad files)
    assert "AssertionError" not in proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["info", "{slides}/small.svs"]])
def test_importtime_shows_no_tensorflow(real_slides, argv):
    """The same seen from the interpreter: `python -X importtime` lists every import."""
    argv = [a.format(slides=real_slides) for a in argv]
    proc = _run("-X", "importtime", "-m", "slideproc.cli", *argv)
    assert proc.returncode == 0, proc.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip().split(".")[0]
                for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "slideproc" in imported
    assert not imported & set(_HEAVY)


def test_info_on_a_folder_of_many_images_is_one_line_per_sample(tmp_path, capsys):
    """292 fields printed 2,341 lines before; now one line per sample, details with -v."""
    rng = np.random.default_rng(0)
    for sample, n in (("P1", 40), ("P2", 3)):
        (tmp_path / sample).mkdir()
        for i in range(n):
            grey = rng.integers(100, 256, (48, 64), np.uint8)  # greyscale: converted when read
            Image.fromarray(grey).save(tmp_path / sample / f"f{i:03d}.png")
    assert main(["info", "--mpp", "0.25", str(tmp_path)]) == 0
    out = capsys.readouterr().out.strip().splitlines()
    assert out == ["P1  40 files, png, 64 x 48 px  mpp 0.25 um/px (--mpp)  foreground 100.0 %",
                   "P2  3 files, png, 64 x 48 px  mpp 0.25 um/px (--mpp)  foreground 100.0 %"]
    assert main(["info", "-v", "--mpp", "0.25", str(tmp_path)]) == 0
    detailed = capsys.readouterr().out
    assert detailed.count("dimensions: 64 x 48 px") == 43 and "  f039.png" in detailed


def test_summary_line_names_where_a_range_of_mpp_came_from():
    """Fields of one folder estimated one by one (--mpp auto) give a range; the
    line says it was estimated, as it does for a single value."""
    from slideproc.info import SourceInfo, format_sample_line
    from slideproc.sources.discover import SampleSpec

    est = "estimated from red cells"
    infos = [SourceInfo(f"f{i}.jpg", f"/x/f{i}.jpg", "jpeg", (640, 480), 1, (1.0,), m, est, None, 1.0)
             for i, m in enumerate((0.0684, 0.0946))]
    line = format_sample_line(SampleSpec("fields", ()), infos)
    assert "mpp 0.0684-0.0946 um/px (estimated from red cells)" in line
    infos[1].mpp_origin = "--mpp"
    assert "um/px (--mpp/estimated from red cells)" in format_sample_line(SampleSpec("fields", ()), infos)
