"""Cluster faults an operator meets: never hang, never write before there is a cluster.

Real processes: `slideproc` console scripts, `python -m http.server`, and
`dask scheduler` / `dask worker` on 127.0.0.1 (tests/dask_procs.py).

- a --scheduler address where something else listens (an HTTP server) or
  nothing listens: exit 2 within slideproc's own deadline, OUT_DIR not created;
- workers that cannot import slideproc, or cannot open the Keras backend: the
  start-up check names each worker and what it lacks, exit 2, nothing written;
- every worker gone mid-run: the samples not finished fail with that reason
  after engine.no_worker_timeout_s instead of a run that waits for ever;
- a task that kills its worker (out of memory): the sample fails naming the
  file being read and engine.memory_limit.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rel_helpers import ENV, SLIDEPROC, assert_clean_stderr, assert_one_line_error, read_errors, slideproc

from dask_procs import broken_slideproc, cluster, free_port
from engine_fixtures import archive_inputs
from test_rel_models import fake_model

pytestmark = pytest.mark.timeout(900)


def _wait_listening(port: int, timeout: float = 30) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise AssertionError(f"nothing listens on {port}")


@pytest.mark.parametrize("listener", ["http_server", "closed_port"])
def test_scheduler_address_that_is_no_scheduler_fails_fast_and_writes_nothing(listener, fields, tmp_path):
    tiny_model = fake_model(tmp_path / "model")  # checked in the driver only: the run never gets further
    port = free_port()
    http = None
    if listener == "http_server":
        # The exact step: python3 -m http.server PORT --bind 127.0.0.1
        http = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                                cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        _wait_listening(port)
    cfg = tmp_path / "fast.yaml"
    cfg.write_text("engine:\n  connect_timeout_s: 5\n", encoding="utf-8")
    out = tmp_path / "out"
    try:
        start = time.monotonic()
        # Before the fix: no output and no exit (a hang; here the timeout raises).
        proc = slideproc("run", fields, "--model", tiny_model, "--out", out, "--mpp", "0.25",
                         "--scheduler", f"tcp://127.0.0.1:{port}", "--config", cfg, timeout=600)
        elapsed = time.monotonic() - start
    finally:
        if http is not None:
            http.kill()
            http.wait()
    expected = "did not answer as a Dask scheduler within 5 s" if http else "cannot reach the Dask scheduler"
    assert_one_line_error(proc, 2, f"tcp://127.0.0.1:{port}", expected, "engine.connect_timeout_s" if http else "")
    # 5 s of deadline; the rest is starting Python on a machine that may be loaded.
    assert elapsed < 300, elapsed
    assert not out.exists(), "OUT_DIR (lock, results.zarr) must not be created before there is a cluster"


def test_default_deadline_is_slideprocs_own(fields, tmp_path):
    """With the shipped config the HTTP server case ends too (30 s deadline), not only with a short one."""
    tiny_model = fake_model(tmp_path / "model")
    port = free_port()
    http = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1"],
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_listening(port)
        out = tmp_path / "out"
        proc = slideproc("run", fields, "--model", tiny_model, "--out", out, "--mpp", "0.25",
                         "--scheduler", f"tcp://127.0.0.1:{port}", timeout=600)
    finally:
        http.kill()
        http.wait()
    assert_one_line_error(proc, 2, "did not answer as a Dask scheduler within 30 s")
    assert not out.exists()


def test_workers_that_cannot_run_slideproc_are_named_before_any_work(fields, tmp_path):
    """One worker where `import slideproc` fails, one whose KERAS_BACKEND is not installed."""
    tiny_model = fake_model(tmp_path / "model")
    shadow = broken_slideproc(tmp_path)
    path = os.pathsep.join(p for p in (str(shadow), os.environ.get("PYTHONPATH", "")) if p)
    out = tmp_path / "out"
    with cluster(tmp_path) as c:
        c.worker("broken-node", {"PYTHONPATH": path})
        c.worker("nobackend-node", {"KERAS_BACKEND": "nosuch"})
        c.wait_for_workers(2)
        # Before the fix the run hung: the broken worker died on its first task ("Lost all workers").
        proc = slideproc("run", fields, "--model", tiny_model, "--out", out, "--mpp", "0.25",
                         "--scheduler", c.address, timeout=300)
    line = assert_one_line_error(proc, 2, "these Dask workers cannot run this run")
    assert "worker broken-node (" in line and "cannot import slideproc" in line and "broken install" in line
    assert "worker nobackend-node (" in line and "cannot open the Keras backend 'nosuch'" in line
    assert not out.exists()


def _gpu_tasks_submitted(client) -> bool:
    """Whether the scheduler holds a task restricted to the GPU resource: the run's engine has
    decided to classify on GPU workers only."""
    return client.run_on_scheduler(
        lambda dask_scheduler: any(ts.resource_restrictions for ts in dask_scheduler.tasks.values()))


def _run_then_kill(c, small_archive, tiny_model, tmp_path, victim: str, *, after_gpu_tasks: bool = False):
    """Start `slideproc run` on the cluster with engine.no_worker_timeout_s 5, kill worker
    ``victim`` (and its nanny: nothing restarts it) once the run has begun writing (with
    ``after_gpu_tasks``: once its first GPU-restricted task is on the scheduler); returns
    (exit status, stderr, seconds from the kill to the end, OUT_DIR)."""
    from distributed import Client

    cfg = tmp_path / "watch.yaml"
    cfg.write_text("engine:\n  no_worker_timeout_s: 5\n", encoding="utf-8")
    out = tmp_path / "out"
    run = subprocess.Popen([SLIDEPROC, "-q", "run", *archive_inputs(small_archive), "--model", str(tiny_model),
                            "--out", str(out), "--scheduler", c.address, "--config", str(cfg)],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV)
    deadline = time.time() + 300
    while time.time() < deadline and run.poll() is None and not (out / "results.zarr").exists():
        time.sleep(0.2)
    if after_gpu_tasks:
        # The engine asks whether any worker offers the GPU after results.zarr exists; a kill
        # that lands before it asks leaves a run without GPU workers, which classifies on the
        # CPU worker and rightly succeeds (this test failed 1 in 4 that way under load).
        with Client(c.address, timeout="60s") as client:
            while time.time() < deadline and run.poll() is None and not _gpu_tasks_submitted(client):
                time.sleep(0.05)
    assert run.poll() is None, run.communicate()
    c.kill(victim)
    killed = time.monotonic()
    # Before the fix: the run waited for a worker for ever (killed here by the timeout).
    _stdout, stderr = run.communicate(timeout=240)
    return run.returncode, stderr, time.monotonic() - killed, out


def test_all_workers_lost_mid_run_fails_the_rest_instead_of_waiting(small_archive, tiny_model, tmp_path):
    with cluster(tmp_path) as c:
        c.worker("only-worker")
        c.wait_for_workers(1)
        returncode, stderr, waited, out = _run_then_kill(c, small_archive, tiny_model, tmp_path, "only-worker")
    assert returncode == 1, stderr
    assert_clean_stderr(stderr)
    errors = read_errors(out)
    from slideproc.store import zarr_store

    done = zarr_store.completed_samples(out)
    assert len(errors) >= 1 and len(done) + len(errors) == 4, (done, errors)
    assert set(errors.stage) == {"engine"}
    assert errors.error.str.contains("no Dask worker was left for 5 s").all()
    assert waited < 120, waited


def test_a_worker_on_other_code_of_the_same_version_is_named_before_any_work(fields, tmp_path):
    """Review: the start-up check compared only slideproc.__version__, which does not change
    with every commit; a worker on older code passed it and silently changed the counts.
    Now it compares the code's sha256: a worker whose slideproc differs by one line is named,
    exit 2, nothing written."""
    import shutil

    import slideproc as package  # `slideproc` here is the CLI helper

    other = tmp_path / "other"
    shutil.copytree(Path(package.__file__).parent, other / "slideproc",
                    ignore=shutil.ignore_patterns("__pycache__"))
    with open(other / "slideproc" / "differential.py", "a", encoding="utf-8") as fh:
        fh.write("\n# an older or newer line\n")
    path = os.pathsep.join(p for p in (str(other), os.environ.get("PYTHONPATH", "")) if p)
    tiny_model = fake_model(tmp_path / "model")
    out = tmp_path / "out"
    with cluster(tmp_path) as c:
        c.worker("other-code-node", {"PYTHONPATH": path})
        c.worker("same-code-node")
        c.wait_for_workers(2)
        proc = slideproc("run", fields, "--model", tiny_model, "--out", out, "--mpp", "0.25",
                         "--scheduler", c.address, timeout=300)
    line = assert_one_line_error(proc, 2, "these Dask workers cannot run this run")
    assert "worker other-code-node (" in line and "runs other slideproc code than this run" in line
    assert "same-code-node" not in line
    assert not out.exists()


def test_losing_the_only_gpu_worker_fails_the_rest_instead_of_waiting(small_archive, tiny_model, tmp_path):
    """Review: with the only GPU=1 worker killed and a CPU worker left, the classification
    tasks waited for ever for the resource (the watch counted any worker). Now only workers
    offering it count, and the unfinished samples fail after engine.no_worker_timeout_s."""
    with cluster(tmp_path) as c:
        c.worker("cpu-node")
        c.worker("gpu-node", None, "--resources", "GPU=1")
        c.wait_for_workers(2)
        returncode, stderr, waited, out = _run_then_kill(c, small_archive, tiny_model, tmp_path, "gpu-node",
                                                         after_gpu_tasks=True)
    assert returncode == 1, stderr
    assert waited < 120, waited
    errors = read_errors(out)
    from slideproc.store import zarr_store

    done = zarr_store.completed_samples(out)
    assert len(errors) >= 1 and len(done) + len(errors) == 4, (done, errors)
    assert errors.error.str.contains("no Dask worker with the GPU resource was left for 5 s").all()


def test_a_task_that_kills_its_worker_names_the_file_and_the_memory_setting(tmp_path):
    """A 16000 x 16000 PNG field (768 MB decoded; PNG has no tiles, so it is decoded whole)
    with 700 MB per worker: the nanny kills the worker (engine.retries 0: no second try), and
    the sample fails naming what to raise. (A 6000 x 6000 field, this test's first version,
    now fits in 700 MB and no longer kills the worker.)"""
    from PIL import Image, ImageDraw

    folder = tmp_path / "in" / "huge"
    folder.mkdir(parents=True)
    img = Image.new("RGB", (16000, 16000), (230, 230, 230))
    draw = ImageDraw.Draw(img)
    for y in range(150, 16000, 600):
        for x in range(150, 16000, 600):
            draw.ellipse((x - 40, y - 40, x + 40, y + 40), fill=(90, 40, 140))
    img.save(folder / "field.png", compress_level=1)
    del img, draw
    cfg = tmp_path / "mem.yaml"
    cfg.write_text("source:\n  working_mpp_um: 0.25\nengine:\n  memory_limit: 700MB\n  retries: 0\n",
                   encoding="utf-8")
    out = tmp_path / "out"
    proc = slideproc("detect", folder, "--out", out, "--mpp", "0.25", "--workers", "1", "--config", cfg,
                     timeout=600)
    assert proc.returncode == 1, proc.stderr
    errors = read_errors(out)
    assert list(errors.sample_id) == ["huge"]
    message = errors.error[0]
    assert str(folder / "field.png") in message, message
    assert "engine.memory_limit (now 700MB" in message and "out of memory" in message
    assert "huge: detect: the Dask worker reading" in proc.stderr


def test_a_scheduler_host_that_does_not_resolve_is_said_at_once(fields, tmp_path):
    """Review: an unknown host waited out the 30 s deadline, then said "Timed out trying
    to connect". Now the name that does not resolve is said at once, exit 2."""
    out = tmp_path / "out"
    start = time.monotonic()
    proc = slideproc("run", fields, "--model", fake_model(tmp_path / "model"), "--out", out, "--mpp", "0.25",
                     "--scheduler", "tcp://nosuchhost.invalid:8786", timeout=300)
    assert_one_line_error(proc, 2, "the host name 'nosuchhost.invalid' does not resolve")
    assert time.monotonic() - start < 25
    assert not out.exists()
