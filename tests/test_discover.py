"""slideproc/sources/discover.py: INPUT paths and manifest.csv -> samples."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from slideproc.cli import main
from slideproc.errors import SlideprocError, UsageError
from slideproc.sources.discover import check_sample_id, discover, read_manifest, Discovery


def _png(path: Path, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def _ids(found):
    return [s.sample_id for s in found.samples]


# ----------------------------------------------------------------------------
# slides, folders
# ----------------------------------------------------------------------------
def test_slide_file(real_slides):
    found = discover([real_slides / "CMU-1-Small-Region.svs"])
    assert _ids(found) == ["CMU-1-Small-Region"] and not found.problems
    (ref,) = found.samples[0].sources
    assert ref.reader == "openslide" and ref.name == "CMU-1-Small-Region.svs"
    assert os.path.isabs(ref.path) and ref.mpp is None


def test_plain_tiff_given_directly_is_an_image(real_slides):
    found = discover([real_slides / "pathml-smalltif.tif"])
    assert _ids(found) == ["pathml-smalltif"]
    assert found.samples[0].sources[0].reader == "image"


def test_image_folder_is_one_sample(tmp_path):
    folder = tmp_path / "patient 7"
    for i in range(3):
        _png(folder / f"field{i}.png", i)
    (folder / ".hidden.png").write_bytes(b"x")
    (folder / "notes.txt").write_text("not an image")
    found = discover([folder])
    assert _ids(found) == ["patient_7"]
    refs = found.samples[0].sources
    assert [r.name for r in refs] == ["field0.png", "field1.png", "field2.png"]
    assert all(r.reader == "image" for r in refs)


def test_dot_folder_is_named_after_the_folder(tmp_path, monkeypatch):
    folder = tmp_path / "marrow01"
    _png(folder / "a.png")
    monkeypatch.chdir(folder)
    assert _ids(discover(["."])) == ["marrow01"]


def test_folder_of_folders(tmp_path):
    for name in ("s1", "s2", "s3"):
        for i in range(2):
            _png(tmp_path / "archive" / name / f"f{i}.jpg", i)
    (tmp_path / "archive" / "empty").mkdir()
    found = discover([tmp_path / "archive"])
    assert _ids(found) == ["s1", "s2", "s3"] and not found.problems
    assert all(len(s.sources) == 2 for s in found.samples)


def test_folder_with_slides_and_dicom_pair(real_slides, tmp_path):
    folder = tmp_path / "scans"
    folder.mkdir()
    for name in ("small.svs", "boxes.tiff", "boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(real_slides / name, folder / name)
    found = discover([folder])
    # one sample per slide; the DICOM pair is one slide (OpenSlide opens the set from one file)
    assert sorted(_ids(found)) == ["boxes", "boxes_0", "small"]
    by_id = {s.sample_id: s for s in found.samples}
    assert [r.name for r in by_id["boxes_0"].sources] == ["boxes_0.dcm"]
    assert all(s.sources[0].reader == "openslide" for s in found.samples)


def test_folder_of_only_dicom_is_named_after_the_folder(real_slides, tmp_path):
    folder = tmp_path / "dicom-wsi"
    folder.mkdir()
    for name in ("boxes_0.dcm", "boxes_1.dcm"):
        shutil.copy(real_slides / name, folder / name)
    found = discover([folder])
    assert _ids(found) == ["dicom-wsi"]


def test_real_slides_folder(real_slides):
    found = discover([real_slides])
    ids = _ids(found)
    # the one plain TIFF is an image field: a sample named after the folder
    assert "slides" in ids and "CMU-1-Small-Region" in ids and "boxes_0" in ids
    assert "boxes_1" not in ids  # second file of the DICOM pair
    assert len(ids) == len(set(ids)) == 9


def test_missing_input_is_a_problem_not_fatal(tmp_path, real_slides):
    found = discover([tmp_path / "nope.svs", real_slides / "small.svs"])
    assert _ids(found) == ["small"]
    assert found.problems == [(str(tmp_path / "nope.svs"), "input not found; check the path")]


def test_empty_dir_is_a_problem(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "readme.txt").write_text("x")
    found = discover([tmp_path / "empty", tmp_path / "junk"])
    assert found.samples == []
    assert [p for p, _ in found.problems] == [str(tmp_path / "empty"), str(tmp_path / "junk")]
    assert all("holds no slides or images" in why for _, why in found.problems)


def test_colliding_sample_ids(tmp_path, real_slides):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        d.mkdir()
        shutil.copy(real_slides / "small.svs", d / "small.svs")
    with pytest.raises(UsageError, match="same sample_id 'small'"):
        discover([a / "small.svs", b / "small.svs"])
    # a folder and a slide of the same name
    _png(tmp_path / "c" / "small" / "x.png")
    shutil.copy(real_slides / "small.svs", tmp_path / "c" / "small.svs")
    with pytest.raises(UsageError, match="manifest"):
        discover([tmp_path / "c"])


# ----------------------------------------------------------------------------
# manifest
# ----------------------------------------------------------------------------
def test_manifest_several_files_per_sample(tmp_path, real_slides):
    _png(tmp_path / "fields" / "a1.png")
    _png(tmp_path / "fields" / "a2.png")
    shutil.copy(real_slides / "small.svs", tmp_path / "s.svs")
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(
        "sample_id,path,mpp\n"
        "A,fields/a1.png,0.25\n"
        "A,fields/a2.png,0.25\n"
        f"B,{tmp_path / 's.svs'},\n"
        "C,missing/later.png,0.5\n"
    )
    found = discover([manifest])
    assert _ids(found) == ["A", "B", "C"]
    a, b, c = found.samples
    assert [r.name for r in a.sources] == ["fields/a1.png", "fields/a2.png"]
    assert all(r.mpp == 0.25 and r.reader == "image" for r in a.sources)
    assert a.sources[0].path == str((tmp_path / "fields" / "a1.png").resolve())  # relative to the manifest
    assert b.sources[0].reader == "openslide" and b.sources[0].mpp is None
    # a file that is missing is still a sample: opening it later names it
    assert c.sources[0].path == str(tmp_path / "missing" / "later.png") and c.sources[0].mpp == 0.5
    assert a.origin == str(manifest)


def test_manifest_without_mpp_column_and_bom_and_blank_lines(tmp_path):
    _png(tmp_path / "a.png")
    manifest = tmp_path / "m.csv"
    manifest.write_bytes("\ufeff sample_id , path \r\n\r\nX,a.png\r\n\r\n".encode("utf-8"))
    found = discover([manifest])
    assert _ids(found) == ["X"] and found.samples[0].sources[0].mpp is None


def test_manifest_quoted_path_with_comma(tmp_path):
    _png(tmp_path / "a,b.png")
    manifest = tmp_path / "m.csv"
    manifest.write_text('sample_id,path\nX,"a,b.png"\n')
    assert discover([manifest]).samples[0].sources[0].name == "a,b.png"


@pytest.mark.parametrize(
    "text,match",
    [
        ("sample,path\nA,a.png\n", "missing sample_id"),
        ("sample_id\nA\n", "missing path"),
        ("", "missing path, sample_id"),
        ("sample_id,path,mpp,notes\nA,a.png,,x\n", "unknown manifest column"),
        ("sample_id,path,path\nA,a.png,b.png\n", "appears twice"),
        ("sample_id,path,mpp\nA,a.png,fast\n", "line 2: mpp must be a positive number"),
        ("sample_id,path,mpp\nA,a.png,-0.25\n", "mpp must be a positive"),
        ("sample_id,path,mpp\nA,a.png,0\n", "mpp must be a positive"),
        ("sample_id,path,mpp\nA,a.png,nan\n", "mpp must be a positive"),
        ("sample_id,path,mpp\nA,a.png,inf\n", "mpp must be a positive"),
        ("sample_id,path\nA,a.png\nA,a.png\n", "line 3: sample 'A' lists 'a.png' twice"),
        ("sample_id,path\n../x,a.png\n", "'../x' is not allowed"),
        ("sample_id,path\n/abs,a.png\n", "'/abs' is not allowed"),
        ("sample_id,path\na/b,a.png\n", "'a/b' is not allowed"),
        ("sample_id,path\n..,a.png\n", "'..' is not allowed"),
        ("sample_id,path\n,a.png\n", "'' is not allowed"),
        ("sample_id,path\nA,\n", "empty path"),
        ("sample_id,path\nA,a.png,extra\n", "3 fields but the header has 2"),
        ("sample_id,path\n", "lists no samples"),
        ('sample_id,path\nA,"a.png\n', "not valid CSV"),
    ],
)
def test_manifest_errors(tmp_path, text, match):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text(text)
    with pytest.raises(UsageError, match=match) as info:
        discover([manifest])
    assert str(manifest) in str(info.value) and "\n" not in str(info.value)


def test_manifest_not_utf8(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_bytes(b"sample_id,path\n\xff\xfe,a.png\n")
    with pytest.raises(UsageError, match="not UTF-8"):
        discover([manifest])


def test_manifest_duplicates_across_sample_and_manifest_collide(tmp_path, real_slides):
    shutil.copy(real_slides / "small.svs", tmp_path / "small.svs")
    manifest = tmp_path / "m.csv"
    manifest.write_text("sample_id,path\nsmall,small.svs\n")
    with pytest.raises(UsageError, match="same sample_id 'small'"):
        discover([manifest, tmp_path / "small.svs"])


def test_one_file_in_two_samples_is_refused(tmp_path, real_slides):
    """A manifest listing one file under two sample_ids (or a file given beside a manifest
    that lists it under another id) would count its cells for two patients: exit 2, naming
    the file and both samples."""
    shutil.copy(real_slides / "small.svs", tmp_path / "small.svs")
    manifest = tmp_path / "m.csv"
    manifest.write_text("sample_id,path\nA,small.svs\nB,small.svs\n")
    with pytest.raises(UsageError, match=r"small.svs is in two samples, 'A' and 'B'; a file belongs to one"):
        discover([manifest])
    manifest.write_text("sample_id,path\nA,small.svs\n")
    with pytest.raises(UsageError, match="is in two samples, 'A' and 'small'"):
        discover([manifest, tmp_path / "small.svs"])
    assert main(["plan", str(manifest), str(tmp_path / "small.svs")]) == 2
    # a link to the file is the file
    (tmp_path / "link.svs").symlink_to(tmp_path / "small.svs")
    manifest.write_text("sample_id,path\nA,small.svs\nB,link.svs\n")
    with pytest.raises(UsageError, match="is in two samples, 'A' and 'B'"):
        discover([manifest])


@pytest.mark.parametrize("good", ["A", "a.b-c_d", "0", "x" * 128])
def test_check_sample_id_good(good):
    assert check_sample_id(good, "here") == good


@pytest.mark.parametrize("bad", ["", ".", "..", "../x", "/abs", "a/b", "a\\b", "-x", ".x", "a b", "x" * 129, "a\n", "é"])
def test_check_sample_id_bad(bad):
    with pytest.raises(UsageError):
        check_sample_id(bad, "here")


# ----------------------------------------------------------------------------
# fuzz: whatever the manifest holds, only SlideprocError comes out
# ----------------------------------------------------------------------------
_CELL = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["sample_id", "path", "mpp", "A", "a.png", "../x", "0.25", "-1", "inf", "nan",
                     "1e999", "", " ", '"', '""', "a\x00b", "x.svs", "/", ".", "\r", "\n", ","]),
)
_ROW = st.lists(_CELL, max_size=5)


@st.composite
def _manifest_text(draw):
    if draw(st.integers(0, 3)) == 0:
        return draw(st.text(max_size=200))
    header = draw(st.sampled_from([["sample_id", "path"], ["sample_id", "path", "mpp"], ["path", "sample_id", "mpp"]]))
    header = draw(st.one_of(st.just(header), _ROW))
    rows = draw(st.lists(_ROW, max_size=6))
    sep = draw(st.sampled_from(["\n", "\r\n", "\r"]))
    quote = draw(st.booleans())

    def line(cells):
        if quote:
            return ",".join('"' + c.replace('"', '""') + '"' for c in cells)
        return ",".join(cells)

    return sep.join(line(r) for r in [header] + rows) + draw(st.sampled_from(["", sep]))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(text=_manifest_text(), as_bytes=st.booleans())
def test_fuzz_manifest_parser(tmp_path, text, as_bytes):
    manifest = tmp_path / "manifest.csv"
    if as_bytes:
        manifest.write_bytes(text.encode("utf-8", "surrogatepass"))
    else:
        manifest.write_bytes(text.encode("utf-16", "surrogatepass") if "\x00" in text else text.encode("utf-8", "surrogatepass"))
    out = Discovery()
    try:
        read_manifest(manifest, out)
    except SlideprocError as err:
        assert "\n" not in str(err)
        return
    for sample in out.samples:
        check_sample_id(sample.sample_id, "fuzz")
        assert sample.sources and all(os.path.isabs(r.path) for r in sample.sources)
        assert all(r.mpp is None or (0 < r.mpp < float("inf")) for r in sample.sources)


# ----------------------------------------------------------------------------
# the discovery rule at any depth (issue 14)
# ----------------------------------------------------------------------------
def test_samples_at_any_depth_named_after_their_folder(tmp_path):
    _png(tmp_path / "archive" / "2023" / "P001" / "f0.png")
    _png(tmp_path / "archive" / "2023" / "P001" / "f1.png", 1)
    _png(tmp_path / "archive" / "2024" / "march" / "P002" / "f0.png")
    _png(tmp_path / "archive" / "top.png")  # a field directly in the input: a sample named after it
    found = discover([tmp_path / "archive"])
    assert sorted(_ids(found)) == ["P001", "P002", "archive"]
    by_id = {s.sample_id: s for s in found.samples}
    assert [r.name for r in by_id["P001"].sources] == ["f0.png", "f1.png"]
    assert not found.problems and not found.left_out


def test_manifest_in_a_walked_folder_claims_its_files(tmp_path, real_slides):
    """synth's layout: OUT/manifest.csv names the folder samples and their mpp;
    the slides beside it are found by the folder rule; nothing counted twice."""
    _png(tmp_path / "OUT" / "folders" / "s1" / "a.png")
    _png(tmp_path / "OUT" / "folders" / "s1" / "b.png", 1)
    _png(tmp_path / "OUT" / "loose" / "c.png", 2)
    (tmp_path / "OUT" / "slides").mkdir()
    shutil.copy(real_slides / "small.svs", tmp_path / "OUT" / "slides" / "small.svs")
    (tmp_path / "OUT" / "manifest.csv").write_text("sample_id,path,mpp\nS1,folders/s1,0.3\nC,loose/c.png,0.4\n")
    (tmp_path / "OUT" / "truth.csv").write_text("sample_id,source,x,y\n")
    found = discover([tmp_path / "OUT"])
    by_id = {s.sample_id: s for s in found.samples}
    assert sorted(by_id) == ["C", "S1", "small"]
    assert [(r.name, r.mpp) for r in by_id["S1"].sources] == [("a.png", 0.3), ("b.png", 0.3)]
    assert [(r.name, r.mpp) for r in by_id["C"].sources] == [("loose/c.png", 0.4)]
    assert by_id["small"].sources[0].mpp is None
    assert not found.left_out and not found.problems


def test_output_folders_zarr_and_mrxs_data_are_not_inputs(tmp_path):
    _png(tmp_path / "in" / "s1" / "a.png")
    out = tmp_path / "in" / "results"
    _png(out / "report" / "plot.png")  # a run's output inside the input: not a sample
    (out / "run.json").write_text("{}")
    (out / "errors.csv").write_text("sample_id,path,stage,error\n")
    (tmp_path / "in" / "store.zarr").mkdir()
    (tmp_path / "in" / "store.zarr" / "zarr.json").write_text("{}")
    (tmp_path / "in" / "scans").mkdir()
    (tmp_path / "in" / "scans" / "slide.mrxs").write_bytes(b"[GENERAL]")
    # the .mrxs slide's own data folder (its Data*.dat files hold JPEG/PNG tiles)
    _png(tmp_path / "in" / "scans" / "slide" / "tile.png").rename(tmp_path / "in" / "scans" / "slide" / "Data0000.dat")
    os.symlink(tmp_path / "in", tmp_path / "in" / "s1" / "loop")  # a symlink loop is walked once
    found = discover([tmp_path / "in"])
    assert sorted(_ids(found)) == ["s1", "slide"]
    assert found.left_out == [(str(out), "a slideproc output folder (run.json, errors.csv), not an input")]


def test_files_left_out_are_named(tmp_path):
    _png(tmp_path / "s1" / "a.png")
    (tmp_path / "s1" / "Thumbs.db").write_bytes(b"\x07\x00\x00\x00junk" * 8)
    (tmp_path / "s1" / "meta.xml").write_text("<x/>")
    (tmp_path / "s1" / ".hidden.png").write_bytes(b"")
    found = discover([tmp_path / "s1"])
    assert _ids(found) == ["s1"]
    assert [p for p, _ in found.left_out] == [str(tmp_path / "s1" / "Thumbs.db")]
    only_junk = tmp_path / "junk2"
    only_junk.mkdir()
    (only_junk / "x.bin").write_bytes(b"\x00\x01")
    found = discover([only_junk])
    assert found.problems == [(str(only_junk), "folder holds no slides or images (jpg, png, tif, svs, ...) "
                                               "(1 other file(s), named in the log)")]
    assert found.left_out[0][0] == str(only_junk / "x.bin")
