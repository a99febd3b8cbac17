"""A real Dask cluster: `dask scheduler` and two `dask worker` processes on 127.0.0.1,
one offering the resource GPU=1. The run must give the local run's outputs, and
classify only on the GPU-resource worker; killing a worker mid-run loses nothing."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from slideproc.cli import main

from engine_fixtures import archive_inputs, assert_same_outputs

pytestmark = pytest.mark.timeout(600)
BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def cluster(tmp_path):
    port = _free_port()
    address = f"tcp://127.0.0.1:{port}"
    # As workers/start-*-worker.sh run them: with workers/dask.yaml.
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DASK_CONFIG": str(REPO / "workers")}
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = {}

    def start(name, args):
        log = open(logs / f"{name}.log", "w")
        procs[name] = subprocess.Popen([str(BIN / "dask"), *args], stdout=log, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True)

    start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"])
    preload = str(Path(__file__).resolve().parents[1] / "workers" / "slideproc_preload.py")
    common = ["worker", address, "--nthreads", "1", "--no-dashboard", "--preload", preload]
    start("cpu", [*common, "--name", "cpu-worker"])
    start("gpu", [*common, "--name", "gpu-worker", "--resources", "GPU=1"])
    from distributed import Client

    with Client(address, timeout="60s") as client:
        client.wait_for_workers(2, timeout=120)
        workers = {w["name"]: addr for addr, w in client.scheduler_info()["workers"].items()}
    try:
        yield address, workers, procs, logs
    finally:
        for proc in procs.values():
            try:
                os.killpg(proc.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        for proc in procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)


def test_cluster_run_equals_local_and_classifies_on_gpu_worker(cluster, small_archive, tiny_model,
                                                                reference_run, tmp_path):
    address, workers, _procs, _logs = cluster
    out = tmp_path / "out"
    rc = main(["-q", "run", *archive_inputs(small_archive), "--model", str(tiny_model), "--out", str(out),
               "--scheduler", address])
    assert rc == 0
    assert_same_outputs(reference_run, out)
    run = json.loads((out / "run.json").read_text())
    assert run["cluster"]["workers"][workers["gpu-worker"]] == {"GPU": 1}
    for sample in run["samples"].values():
        if sample["n_cells"]:
            assert sample["classify_workers"] == [workers["gpu-worker"]]


def _worker_pids(nanny_pid: int) -> list[int]:
    import psutil

    return [p.pid for p in psutil.Process(nanny_pid).children(recursive=True)]


def test_killing_a_worker_mid_run_loses_nothing(cluster, small_archive, tiny_model, reference_run, tmp_path):
    address, _workers, procs, _logs = cluster
    out = tmp_path / "out"
    run = subprocess.Popen([str(BIN / "slideproc"), "-q", "run", *archive_inputs(small_archive), "--model",
                            str(tiny_model), "--out", str(out), "--scheduler", address],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    # Wait until the run has started working, then kill the CPU worker's process
    # (its nanny starts a new one; the scheduler re-runs what was lost).
    deadline = time.time() + 120
    while time.time() < deadline and not (out / "results.zarr").exists():
        time.sleep(0.2)
    time.sleep(1.0)
    victims = _worker_pids(procs["cpu"].pid)
    assert victims, "the CPU worker process was not found"
    for pid in victims:
        os.kill(pid, signal.SIGKILL)
    output, _ = run.communicate(timeout=400)
    assert run.returncode == 0, output
    assert_same_outputs(reference_run, out)


def test_workers_keep_glibc_malloc_defaults(cluster):
    """Dask's MALLOC_TRIM_THRESHOLD_=65536 made detection 1.39x slower per tile
    (cluster.py); neither slideproc's local workers nor workers started with
    workers/dask.yaml get it."""
    from distributed import Client

    from slideproc.cluster import open_client
    from slideproc.config import load_run_config

    # A lambda travels by value (this test module is not importable on the workers).
    _trim_setting = lambda: __import__("os").environ.get("MALLOC_TRIM_THRESHOLD_")  # noqa: E731
    with open_client(None, load_run_config(None).engine, workers=1) as client:
        assert set(client.run(_trim_setting).values()) == {None}
    with Client(cluster[0], timeout="60s") as client:
        assert set(client.run(_trim_setting).values()) == {None}


def test_code_digest_is_the_same_for_a_checkout_and_an_installed_copy(tmp_path):
    """The start-up check compares code sha256s: a checkout (whose slideproc/configs is a
    link to ../configs) and an installed copy of the same code (a wheel holds configs as a
    folder) must agree, and one changed line must not."""
    import shutil

    import slideproc as package
    from slideproc.cluster import _code_sha256_fn, code_sha256

    copy = tmp_path / "site-packages" / "slideproc"
    shutil.copytree(Path(package.__file__).parent, copy, symlinks=False,
                    ignore=shutil.ignore_patterns("__pycache__"))
    assert not (copy / "configs").is_symlink() and (copy / "configs" / "default.yaml").is_file()
    assert _code_sha256_fn()(str(copy)) == code_sha256()
    with open(copy / "configs" / "default.yaml", "a", encoding="utf-8") as fh:
        fh.write("\n")
    assert _code_sha256_fn()(str(copy)) != code_sha256()
