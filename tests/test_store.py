"""results.zarr and the CSV tables: DESIGN layout, dtypes, atomicity, rebuild from the store."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import zarr

from slideproc.errors import StoreError
from slideproc.schema import CELL_CSV_COLUMNS, DETECT_CSV_COLUMNS, MATEK_CLASSES
from slideproc.store import tables, zarr_store

CLASSES = list(MATEK_CLASSES)
REPO = Path(__file__).resolve().parents[1]


def make_sample(n: int, seed: int = 0, sources=("slide_a.tiff", "slide_b.tiff"), n_classes: int = len(CLASSES)):
    """A cell table and classifier outputs drawn with numpy (no model, no engine)."""
    rng = np.random.default_rng(seed)
    x = rng.uniform(50, 1950, n)
    y = rng.uniform(50, 1450, n)
    r = rng.integers(8, 40, n)
    cells = pd.DataFrame(
        {
            "source": rng.choice(list(sources), n),
            "x": x,
            "y": y,
            "x0": np.floor(x - r).astype(np.int64),
            "y0": np.floor(y - r).astype(np.int64),
            "x1": np.ceil(x + r).astype(np.int64),
            "y1": np.ceil(y + r).astype(np.int64),
            "area_um2": rng.uniform(20, 300, n).astype(np.float32),
        }
    )
    probabilities = rng.dirichlet(np.full(n_classes, 0.3), n).astype(np.float32)
    class_index = probabilities.argmax(axis=1).astype(np.int16)
    confidence = probabilities.max(axis=1).astype(np.float32)
    return cells, class_index, confidence, probabilities


@pytest.fixture()
def out(tmp_path):
    zarr_store.init_store(tmp_path, class_names=CLASSES, run_id="run-1", model_sha256="ab" * 32,
                          config={"report": {"min_cells": 500}})
    return tmp_path


def entries(out):
    """Sample-level folders in results.zarr/samples (temporaries included)."""
    return sorted(p.name for p in (Path(out) / "results.zarr" / "samples").iterdir() if p.is_dir())


def write(out, sample_id, n, seed=0, crops=False, **kw):
    cells, ci, conf, prob = make_sample(n, seed)
    crop_arr = np.random.default_rng(seed).integers(0, 256, (n, 16, 16, 3), dtype=np.uint8) if crops else None
    attrs = {"sources": ["slide_b.tiff"], "mpp": 0.25, "started": "2026-01-01T00:00:00+00:00",
             "finished": "2026-01-01T00:01:00+00:00"}
    zarr_store.write_sample(out, sample_id, cells, ci, conf, prob, CLASSES, attrs, crops=crop_arr, **kw)
    return cells, ci, conf, prob, crop_arr


def test_layout_and_dtypes_per_design(out):
    cells, ci, conf, prob, crops = write(out, "S1", 300, crops=True)
    root = zarr.open(str(out / "results.zarr"), mode="r")
    assert root.attrs["class_names"] == CLASSES
    assert root.attrs["run_id"] == "run-1"
    assert root.attrs["model_sha256"] == "ab" * 32
    assert root.attrs["slideproc_version"]
    assert root.attrs["config"] == {"report": {"min_cells": 500}}
    s = root["samples/S1"]
    assert s.attrs["status"] == "complete"
    assert s.attrs["n_cells"] == 300
    assert s.attrs["mpp"] == 0.25
    assert s.attrs["started"] and s.attrs["finished"]
    # The attrs' source list comes first, cells' other sources are appended.
    assert s.attrs["sources"] == ["slide_b.tiff", "slide_a.tiff"]
    expected = {
        "cells/source": (np.int32, (300,)),
        "cells/x": (np.float64, (300,)),
        "cells/y": (np.float64, (300,)),
        "cells/bbox": (np.int32, (300, 4)),
        "cells/area_um2": (np.float32, (300,)),
        "cells/class_index": (np.int16, (300,)),
        "cells/confidence": (np.float32, (300,)),
        "cells/probabilities": (np.float16, (300, len(CLASSES))),
        "histogram": (np.int64, (len(CLASSES),)),
        "crops": (np.uint8, (300, 16, 16, 3)),
    }
    for name, (dtype, shape) in expected.items():
        arr = s[name]
        assert arr.dtype == dtype, name
        assert arr.shape == shape, name
    sources = np.asarray(s.attrs["sources"])[s["cells/source"][:]]
    assert list(sources) == list(cells["source"])
    np.testing.assert_array_equal(s["cells/x"][:], cells["x"].to_numpy())
    np.testing.assert_array_equal(s["cells/bbox"][:], cells[["x0", "y0", "x1", "y1"]].to_numpy())
    np.testing.assert_array_equal(s["cells/class_index"][:], ci)
    np.testing.assert_array_equal(s["cells/probabilities"][:], prob.astype(np.float16))
    np.testing.assert_array_equal(s["crops"][:], crops)
    # The histogram is the count of the cells' classes.
    np.testing.assert_array_equal(s["histogram"][:], np.bincount(s["cells/class_index"][:], minlength=len(CLASSES)))


def test_read_sample_round_trip(out):
    cells, ci, conf, prob, _ = write(out, "S1", 120)
    back, probabilities, attrs = zarr_store.read_sample(out, "S1")
    assert list(back["cell_id"]) == list(range(120))
    for col in ("source", "x", "y", "x0", "y0", "x1", "y1", "area_um2"):
        np.testing.assert_array_equal(back[col].to_numpy(), cells[col].to_numpy())
    np.testing.assert_array_equal(back["class_index"], ci)
    assert list(back["class"]) == [CLASSES[i] for i in ci]
    np.testing.assert_array_equal(back["confidence"], conf)
    assert probabilities.dtype == np.float16 and probabilities.shape == (120, len(CLASSES))
    assert attrs["status"] == "complete"
    assert zarr_store.read_crops(out, "S1") is None


def test_zero_cell_sample(out):
    write(out, "EMPTY", 0)
    assert zarr_store.completed_samples(out) == {"EMPTY"}
    s = zarr.open(str(out / "results.zarr"), mode="r")["samples/EMPTY"]
    assert s["cells/x"].shape == (0,)
    assert s["cells/bbox"].shape == (0, 4)
    assert s["cells/probabilities"].shape == (0, len(CLASSES))
    assert s["histogram"][:].sum() == 0 and s["histogram"].shape == (len(CLASSES),)
    cells, prob, attrs = zarr_store.read_sample(out, "EMPTY")
    assert len(cells) == 0 and attrs["n_cells"] == 0
    path = tables.write_sample_csv(out, "EMPTY")
    assert pd.read_csv(path).columns.tolist() == list(CELL_CSV_COLUMNS)


def test_write_error_leaves_nothing_complete(out, monkeypatch):
    """A disk-full error in the middle of a sample: one-line StoreError, no sample, no temporary."""
    real_put = zarr_store._put
    calls = {"n": 0}

    def failing_put(group, name, data, chunk_rows):
        calls["n"] += 1
        if calls["n"] == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(group, name, data, chunk_rows)

    monkeypatch.setattr(zarr_store, "_put", failing_put)
    with pytest.raises(StoreError) as info:
        write(out, "S1", 50)
    message = str(info.value)
    assert "\n" not in message and "S1" in message and "No space left on device" in message
    assert zarr_store.completed_samples(out) == set()
    assert entries(out) == []


def test_failed_rewrite_keeps_previous_complete_sample(out, monkeypatch):
    write(out, "S1", 40, seed=1)
    before, _, _ = zarr_store.read_sample(out, "S1")
    monkeypatch.setattr(zarr_store, "_fsync_tree", lambda root: (_ for _ in ()).throw(OSError(errno.EIO, "I/O error")))
    with pytest.raises(StoreError):
        write(out, "S1", 10, seed=2)
    after, _, _ = zarr_store.read_sample(out, "S1")
    pd.testing.assert_frame_equal(before, after)


def test_killed_mid_sample_is_not_complete_and_is_cleaned(tmp_path):
    """SIGKILL-like death (os._exit) just before the commit rename: a resume sees no sample."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import make_sample, CLASSES
        from slideproc.store import zarr_store
        zarr_store.init_store({str(tmp_path)!r}, class_names=CLASSES, run_id="r")
        zarr_store._commit = lambda tmp, final: os._exit(9)
        cells, ci, conf, prob = make_sample(30)
        zarr_store.write_sample({str(tmp_path)!r}, "S1", cells, ci, conf, prob, CLASSES, {{"mpp": 0.25}})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    samples = tmp_path / "results.zarr" / "samples"
    leftovers = entries(tmp_path)
    assert len(leftovers) == 1 and leftovers[0].startswith(".S1")
    # Status "complete" is inside the temporary, yet it is not reported.
    assert json.loads((samples / leftovers[0] / "zarr.json").read_text())["attributes"]["status"] == "complete"
    assert zarr_store.completed_samples(tmp_path) == set()
    zarr_store.init_store(tmp_path, class_names=CLASSES, run_id="r2")  # the resume
    assert entries(tmp_path) == []


def test_sample_moved_aside_by_a_dead_commit_is_restored(tmp_path):
    """A redo killed between the commit's two renames (S1 moved aside, the new one not yet
    renamed in): the next run puts the old S1 back instead of deleting it as a temporary."""
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_store import make_sample, CLASSES
        from slideproc.store import zarr_store
        zarr_store.init_store({str(tmp_path)!r}, class_names=CLASSES, run_id="r")
        cells, ci, conf, prob = make_sample(30, seed=1)
        zarr_store.write_sample({str(tmp_path)!r}, "S1", cells, ci, conf, prob, CLASSES, {{"mpp": 0.25}})
        real_rename = os.rename
        def rename(src, dst):
            if os.path.basename(str(src)).startswith(".S1.tmp-"):
                os._exit(9)  # the old S1 is aside; die before the new one is renamed in
            return real_rename(src, dst)
        os.rename = rename
        cells, ci, conf, prob = make_sample(7, seed=2)
        zarr_store.write_sample({str(tmp_path)!r}, "S1", cells, ci, conf, prob, CLASSES, {{"mpp": 0.25}})
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr
    assert zarr_store.completed_samples(tmp_path) == set()
    assert sorted(e.split("-")[0] for e in entries(tmp_path)) == [".S1.old", ".S1.tmp"]
    zarr_store.init_store(tmp_path, class_names=CLASSES, run_id="r2")  # the next run
    assert entries(tmp_path) == ["S1"]
    assert zarr_store.read_sample(tmp_path, "S1")[2]["n_cells"] == 30


def test_incomplete_status_is_not_complete(out):
    write(out, "S1", 5)
    meta = out / "results.zarr" / "samples" / "S1" / "zarr.json"
    doc = json.loads(meta.read_text())
    doc["attributes"]["status"] = "writing"
    meta.write_text(json.dumps(doc))
    assert zarr_store.completed_samples(out) == set()
    with pytest.raises(StoreError, match="not complete"):
        zarr_store.read_sample(out, "S1")


def test_replace_and_remove_sample(out):
    write(out, "S1", 30, seed=1)
    write(out, "S1", 7, seed=2)
    assert zarr_store.read_sample(out, "S1")[2]["n_cells"] == 7
    assert entries(out) == ["S1"]
    zarr_store.remove_sample(out, "S1")
    zarr_store.remove_sample(out, "S1")  # absent: nothing to do
    assert zarr_store.completed_samples(out) == set()


@pytest.mark.parametrize("bad", ["", "..", ".hidden", "a/b", "a\\b", "/abs"])
def test_sample_id_cannot_escape(out, bad):
    with pytest.raises(StoreError, match="sample id"):
        write(out, bad, 3)


def test_other_classes_refused_on_resume(out):
    write(out, "S1", 3)
    with pytest.raises(StoreError, match="other classes"):
        zarr_store.init_store(out, class_names=CLASSES[:5], run_id="r2")


def test_mismatched_sizes_refused(out):
    cells, ci, conf, prob = make_sample(10)
    with pytest.raises(StoreError, match="disagree"):
        zarr_store.write_sample(out, "S1", cells, ci[:5], conf, prob, CLASSES, {})


def test_missing_store_is_one_clear_line(tmp_path):
    with pytest.raises(StoreError, match="slideproc run") as info:
        zarr_store.read_root_attrs(tmp_path)
    assert "\n" not in str(info.value)


# ----------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------
def test_cells_csv_from_store(out):
    cells, ci, conf, _prob, _ = write(out, "S1", 80)
    path = tables.write_sample_csv(out, "S1")
    assert path == out / "cells" / "S1.csv"
    # round_trip: pandas' default float parser may be one ulp off.
    df = pd.read_csv(path, float_precision="round_trip")
    assert df.columns.tolist() == list(CELL_CSV_COLUMNS)
    assert (df["sample_id"] == "S1").all()
    assert df["cell_id"].tolist() == list(range(80))
    assert df["class"].tolist() == [CLASSES[i] for i in ci]
    np.testing.assert_array_equal(df["x"].to_numpy(), cells["x"].to_numpy())
    np.testing.assert_allclose(df["confidence"].to_numpy(), conf, rtol=1e-6)
    assert df["source"].tolist() == cells["source"].tolist()


def test_engine_csv_equals_rebuilt_csv(out):
    """The CSV the engine writes from memory is byte-identical to the one rebuilt from the store."""
    cells, ci, conf, _prob, _ = write(out, "S1", 60)
    mem = cells.assign(**{"class": [CLASSES[i] for i in ci], "confidence": conf})
    first = tables.write_cells_csv(out, "S1", mem).read_bytes()
    assert tables.write_sample_csv(out, "S1").read_bytes() == first


def test_detect_csv_columns(tmp_path):
    cells, *_ = make_sample(12)
    df = pd.read_csv(tables.write_cells_csv(tmp_path, "D1", cells))
    assert df.columns.tolist() == list(DETECT_CSV_COLUMNS)


def test_histograms_csv_equals_cell_counts(out):
    for i, sid in enumerate(["S2", "S1", "S3"]):
        write(out, sid, 50 + 10 * i, seed=i)
    write(out, "S0", 0)
    df = pd.read_csv(tables.write_histograms_csv(out))
    assert df.columns.tolist() == ["sample_id", "n_cells", *CLASSES]
    assert df["sample_id"].tolist() == ["S0", "S1", "S2", "S3"]
    for _, row in df.iterrows():
        cells, _, _ = zarr_store.read_sample(out, row["sample_id"])
        counts = cells["class"].value_counts()
        assert row["n_cells"] == len(cells)
        for name in CLASSES:
            assert row[name] == counts.get(name, 0)


def test_errors_csv_one_line_sorted(tmp_path):
    class Failure:
        sample_id, path, stage, error = "B", "b.svs", "read", "cannot open\nb.svs: truncated"

    path = tables.write_errors_csv(tmp_path, [Failure(), {"sample_id": "A", "path": "a.tif", "stage": "mpp",
                                                          "error": "no mpp"}])
    df = pd.read_csv(path)
    assert df.columns.tolist() == ["sample_id", "path", "stage", "error"]
    assert df["sample_id"].tolist() == ["A", "B"]
    assert df["error"].tolist()[1] == "cannot open b.svs: truncated"
    assert pd.read_csv(tables.write_errors_csv(tmp_path, [])).empty


def test_rebuild_is_deterministic(out):
    for i, sid in enumerate(["S1", "S2"]):
        write(out, sid, 40, seed=i)
    info = {"run_id": "run-1", "model": {"sha256": np.str_("ab")}, "samples": tables.sample_summaries(out)}
    tables.rebuild_tables(out, errors=[], run_info=info)
    names = ["cells/S1.csv", "cells/S2.csv", "histograms.csv", "errors.csv", "run.json"]
    first = {n: (out / n).read_bytes() for n in names}
    (out / "cells" / "S1.csv").unlink()  # as after a crash between the store and the CSV
    assert tables.rebuild_tables(out, errors=[], run_info=info) == ["S1", "S2"]
    assert {n: (out / n).read_bytes() for n in names} == first
    run = json.loads(first["run.json"])
    assert [s["sample_id"] for s in run["samples"]] == ["S1", "S2"]
    assert run["samples"][0]["status"] == "complete"


def test_atomic_table_write_failure_keeps_old_file(out, monkeypatch):
    write(out, "S1", 10)
    path = tables.write_histograms_csv(out)
    old = path.read_bytes()
    write(out, "S2", 10, seed=3)

    def no_space(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "replace", no_space)
    with pytest.raises(StoreError, match="histograms.csv"):
        tables.write_histograms_csv(out)
    assert path.read_bytes() == old
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


def test_real_write_failure_from_the_kernel(tmp_path):
    """A real failed write (file-size limit: the kernel refuses with EFBIG, as a full disk
    refuses with ENOSPC), in its own process: StoreError, nothing complete, no temporary."""
    script = textwrap.dedent(
        f"""
        import resource, signal, sys
        sys.path.insert(0, {str(REPO)!r})
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import numpy as np
        from test_store import make_sample, CLASSES
        from slideproc.errors import StoreError
        from slideproc.store import zarr_store
        zarr_store.init_store({str(tmp_path)!r}, class_names=CLASSES, run_id="r")
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing us
        resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))
        cells, ci, conf, prob = make_sample(2000)
        crops = np.random.default_rng(0).integers(0, 256, (2000, 32, 32, 3), dtype=np.uint8)
        try:
            zarr_store.write_sample({str(tmp_path)!r}, "S1", cells, ci, conf, prob, CLASSES, {{}}, crops=crops)
        except StoreError as err:
            print(err)
            sys.exit(3)
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 3, proc.stderr
    message = proc.stdout.strip()
    assert len(message.splitlines()) == 1 and "S1" in message and "File too large" in message
    assert zarr_store.completed_samples(tmp_path) == set()
    assert entries(tmp_path) == []
