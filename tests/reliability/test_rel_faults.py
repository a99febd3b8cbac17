"""Faults: SIGKILL of the whole run at several points, a full output disk, and two
runs into one OUT_DIR. Real processes, real files.

What must hold after each: no sample is marked complete that is not (a
sample is published by one rename of a fully written, fsynced temporary),
the error is said in one line without a traceback, and a plain re-run
(resume) gives the outputs of an uninterrupted run.

SIGKILL of one Dask worker mid-run is tests/test_cluster.py::
test_killing_a_worker_mid_run_loses_nothing; SIGKILL of the whole run after
the first sample completed is tests/test_resume.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from rel_helpers import (
    ENV, SLIDEPROC, assert_clean_stderr, copy_fields, error_lines, read_errors, read_run, slideproc, tree,
)

from engine_fixtures import archive_inputs, assert_same_outputs

pytestmark = pytest.mark.timeout(900)
KILLER = str(Path(__file__).with_name("killer.py"))


# -- shared inputs -----------------------------------------------------------
@pytest.fixture(scope="module")
def folders(fields, tmp_path_factory) -> Path:
    """A folder of four image-folder samples (enough work that a second run starts while the first runs)."""
    root = tmp_path_factory.mktemp("folders") / "archive"
    for i in range(4):
        copy_fields(fields, root / f"s{i}")
    return root


@pytest.fixture(scope="module")
def detect_ref(folders, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("detect_ref") / "out"
    proc = slideproc("detect", folders, "--mpp", "0.25", "--out", out, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    return out


def same_cells(a: Path, b: Path, only: str | None = None) -> None:
    names = sorted(p.name for p in (a / "cells").glob(only or "*.csv"))
    assert names == sorted(p.name for p in (b / "cells").glob("*.csv")) and names
    for name in names:
        pd.testing.assert_frame_equal(pd.read_csv(a / "cells" / name), pd.read_csv(b / "cells" / name))


def no_temporaries(out: Path) -> None:
    left = [p for p in tree(out) if ".tmp-" in p or ".old-" in p]
    assert not left, left


# -- full disk -----------------------------------------------------------------
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (root only); yields (mount point, fill(free_kib), free())."""
    mnt = tmp_path / "disk"
    mnt.mkdir()
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({res.stderr.strip()}); needs root")
    filler = mnt / "filler"

    def fill(free_kib: int) -> None:
        st = os.statvfs(mnt)
        free = st.f_bavail * st.f_frsize - free_kib * 1024
        with open(filler, "ab") as fh:
            fh.write(b"\0" * max(0, free))
        while True:  # tmpfs may round: top up until exactly free_kib (or less) is left
            st = os.statvfs(mnt)
            if st.f_bavail * st.f_frsize <= free_kib * 1024:
                break
            try:
                with open(filler, "ab") as fh:
                    fh.write(b"\0" * 4096)
            except OSError:
                break

    def free() -> None:
        filler.unlink()

    try:
        yield mnt, fill, free
    finally:
        subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_full_disk_from_the_start_is_one_line_and_resume_completes(small_disk, folders, detect_ref):
    mnt, fill, free = small_disk
    out = mnt / "out"
    fill(0)
    proc = slideproc("detect", folders / "s0", "--mpp", "0.25", "--out", out, "--workers", "1")
    assert proc.returncode == 1
    assert_clean_stderr(proc.stderr)
    lines = error_lines(proc.stderr)
    assert lines and all("No space left on device" in line for line in lines), proc.stderr
    assert not list(out.glob("cells/*.csv"))
    no_temporaries(out)
    free()
    proc = slideproc("detect", folders / "s0", "--mpp", "0.25", "--out", out, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    same_cells(detect_ref, out, only="s0.csv")


def test_disk_full_during_the_run_fails_samples_cleanly(small_disk, folders, detect_ref):
    """Room for the lock and errors.csv, not for the cell tables: each sample fails at
    "write" with one line naming its file and the disk; no partial CSV is left."""
    mnt, fill, free = small_disk
    out = mnt / "out"
    out.mkdir()
    (out / "cells").mkdir()
    fill(8)
    proc = slideproc("detect", folders / "s0", "--mpp", "0.25", "--out", out, "--workers", "1")
    assert proc.returncode == 1
    assert_clean_stderr(proc.stderr)
    lines = error_lines(proc.stderr)
    assert any(line.startswith("slideproc: error: s0: write: cannot write ") and "s0.csv" in line
               and "No space left" in line for line in lines), proc.stderr
    assert not list(out.glob("cells/*.csv"))
    no_temporaries(out)
    free()
    proc = slideproc("detect", folders / "s0", "--mpp", "0.25", "--out", out, "--workers", "1")
    assert proc.returncode == 0, proc.stderr
    same_cells(detect_ref, out, only="s0.csv")


@pytest.mark.slow
def test_full_disk_with_a_model_marks_nothing_complete_then_resume_equals(small_disk, small_archive, tiny_model,
                                                                          reference_run):
    from slideproc.store import zarr_store

    mnt, fill, free = small_disk
    out = mnt / "out"
    args = ["run", *archive_inputs(small_archive), "--model", tiny_model, "--out", out, "--workers", "2"]
    out.mkdir()
    fill(96)  # the lock, the store's root and at most a sample or two
    proc = slideproc(*args, timeout=600)
    assert proc.returncode == 1
    assert_clean_stderr(proc.stderr)
    lines = error_lines(proc.stderr)
    assert lines and all("No space left on device" in line for line in lines), proc.stderr
    # Whatever fitted is whole; whatever did not is not marked complete (a temporary
    # may be left where Zarr's writer was still busy: hidden, never complete, and
    # removed by the next run).
    done = zarr_store.completed_samples(out)
    assert len(done) < 4
    for sample_id in done:
        cells, probs, attrs = zarr_store.read_sample(out, sample_id)
        assert attrs["status"] == "complete" and attrs["n_cells"] == len(cells) == len(probs)
    failed = {line.split(":")[2].strip() for line in lines if line.count(":") >= 3 and ": write: " in line}
    assert failed and not (failed & done), (failed, done)
    free()
    proc = slideproc(*args, timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert_same_outputs(reference_run, out)
    no_temporaries(out / "results.zarr")


# -- SIGKILL of the whole run at chosen points -----------------------------------
KILL_POINTS = {
    # nothing complete yet: tiles in flight
    "before_any_sample_completes": ("slideproc.engine:Engine._on_tile", 1),
    # mid-archive, mid-write: one sample published, the second fully written in its
    # temporary group but not yet renamed into place
    "mid_archive_during_a_sample_commit": ("slideproc.store.zarr_store:_commit", 2),
    # every sample complete; the final tables half rewritten
    "during_final_table_writing": ("slideproc.store.tables:write_histograms_csv", 1),
}


def _group_gone(pgid: int, timeout: float = 30) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    return False


@pytest.mark.slow
@pytest.mark.parametrize("point", sorted(KILL_POINTS))
def test_sigkill_whole_run_then_resume_equals_uninterrupted(point, small_archive, tiny_model, reference_run,
                                                            tmp_path):
    from slideproc.store import zarr_store

    target, nth = KILL_POINTS[point]
    out = tmp_path / "out"
    cli = ["-q", "run", *archive_inputs(small_archive), "--model", str(tiny_model), "--out", str(out),
           "--workers", "2"]
    proc = subprocess.Popen([sys.executable, KILLER, target, str(nth), "--", *cli], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    _out, err = proc.communicate(timeout=600)
    assert proc.returncode == -signal.SIGKILL, err
    assert _group_gone(proc.pid), "processes of the killed run are still alive"
    done = zarr_store.completed_samples(out)
    expect = {"before_any_sample_completes": 0, "mid_archive_during_a_sample_commit": 1}.get(point, 4)
    assert len(done) == expect, done
    for sample_id in done:  # nothing that looks complete is half-written
        cells, probs, attrs = zarr_store.read_sample(out, sample_id)
        assert attrs["status"] == "complete" and attrs["n_cells"] == len(cells) == len(probs)
    res = subprocess.run([SLIDEPROC, *cli], env=ENV, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    assert_same_outputs(reference_run, out)
    run = read_run(out)
    skipped = sum(s["status"] == "skipped" for s in run["samples"].values())
    assert skipped == expect
    no_temporaries(out / "results.zarr")
    assert len(read_errors(out)) == 0


# -- two runs into one OUT_DIR ---------------------------------------------------
def _wait_for_lock_holder(out: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    lock = out / ".slideproc.lock"
    deadline = time.time() + timeout
    while time.time() < deadline:
        if lock.exists() and lock.read_text().strip() == str(proc.pid):
            return
        assert proc.poll() is None, "the first run ended before the second could start"
        time.sleep(0.05)
    raise AssertionError("the first run never took the lock")


def _second_refuses_first_completes(first_args, second_args, out):
    first = subprocess.Popen([SLIDEPROC, "-q", *map(str, first_args)], env=ENV, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
    try:
        _wait_for_lock_holder(out, first)
        second = slideproc(*second_args, timeout=300)
        still_running = first.poll() is None
    finally:
        _stdout, err = first.communicate(timeout=600)
    assert still_running, "the first run finished before the second was refused; the check proved nothing"
    assert second.returncode == 2
    lines = [line for line in second.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "is in use by another slideproc process" in lines[0], second.stderr
    assert str(out) in lines[0] and "choose another --out" in lines[0]
    assert first.returncode == 0, err
    assert_clean_stderr(err)


def test_two_detects_into_one_out_dir_second_refuses_first_uncorrupted(folders, detect_ref, tmp_path):
    out = tmp_path / "out"
    args = ["detect", folders, "--mpp", "0.25", "--out", out, "--workers", "1"]
    _second_refuses_first_completes(args, args, out)
    same_cells(detect_ref, out)
    run = read_run(out)
    assert all(s["status"] == "complete" for s in run["samples"].values()) and len(run["samples"]) == 4


@pytest.mark.slow
def test_two_runs_into_one_out_dir_second_refuses_first_uncorrupted(small_archive, tiny_model, reference_run,
                                                                     tmp_path):
    out = tmp_path / "out"
    args = ["run", *archive_inputs(small_archive), "--model", tiny_model, "--out", out, "--workers", "2"]
    _second_refuses_first_completes(args, args, out)
    assert_same_outputs(reference_run, out)


# -- an OUT_DIR that cannot be made ----------------------------------------------
def test_out_dir_that_is_a_file_or_under_a_file_is_one_line(fields, tmp_path):
    """No root, no tmpfs needed: the lock's OSError path (a full disk, a read-only
    mount) is one line, never a traceback."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    proc = slideproc("detect", fields, "--mpp", "0.25", "--out", afile)
    assert proc.returncode == 2 and "is a file, not a folder; choose another --out" in proc.stderr, proc.stderr
    proc = slideproc("detect", fields, "--mpp", "0.25", "--out", afile / "out")
    assert proc.returncode == 1, proc.stderr
    assert_clean_stderr(proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("slideproc: error: cannot create ") and "Not a directory" in lines[0]
    assert afile.read_text() == "x"
