"""Overnight safety: SIGKILL the whole run mid-archive, re-run, get the uninterrupted outputs."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slideproc.store import zarr_store

from engine_fixtures import archive_inputs, assert_same_outputs

pytestmark = pytest.mark.timeout(600)
BIN = Path(sys.executable).parent


def test_sigkill_mid_archive_then_resume_equals_uninterrupted(small_archive, tiny_model, reference_run, tmp_path):
    out = tmp_path / "out"
    args = [str(BIN / "slideproc"), "-q", "run", *archive_inputs(small_archive), "--model", str(tiny_model),
            "--out", str(out), "--workers", "2"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if out.exists() and len(zarr_store.completed_samples(out)) >= 1:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed; use a larger archive"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = zarr_store.completed_samples(out)
    assert 1 <= len(done_before) < 4
    # Nothing half-written may look complete.
    for sample_id in done_before:
        cells, _probs, attrs = zarr_store.read_sample(out, sample_id)
        assert attrs["status"] == "complete" and attrs["n_cells"] == len(cells)
    rc = subprocess.run(args, capture_output=True, text=True, timeout=400)
    assert rc.returncode == 0, rc.stderr
    assert_same_outputs(reference_run, out)
