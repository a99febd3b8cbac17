"""A real Dask cluster for tests: `dask scheduler` and `dask worker` processes on 127.0.0.1.

Each process is started in its own session (so a test can kill a worker and
its nanny together) with the test process's environment plus what the test
adds, as workers/start-*-worker.sh would run them (with workers/dask.yaml).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parents[1]
PRELOAD = str(REPO / "workers" / "slideproc_preload.py")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cluster:
    def __init__(self, logs: Path, scheduler_env: dict | None = None):
        self.logs = logs
        self.port = free_port()
        self.address = f"tcp://127.0.0.1:{self.port}"
        self.procs: dict[str, subprocess.Popen] = {}
        self.base_env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "DASK_CONFIG": str(REPO / "workers"),
                         "TF_CPP_MIN_LOG_LEVEL": "3"}
        self._start("scheduler", ["scheduler", "--host", "127.0.0.1", "--port", str(self.port), "--no-dashboard"],
                    scheduler_env or {})

    def _start(self, name: str, args: list[str], env: dict) -> subprocess.Popen:
        log = open(self.logs / f"{name}.log", "w")
        proc = subprocess.Popen([str(BIN / "dask"), *args], stdout=log, stderr=subprocess.STDOUT,
                                env={**self.base_env, **env}, start_new_session=True)
        self.procs[name] = proc
        return proc

    def worker(self, name: str, env: dict | None = None, *extra: str) -> subprocess.Popen:
        return self._start(name, ["worker", self.address, "--nthreads", "1", "--no-dashboard", "--name", name,
                                  "--preload", PRELOAD, *extra], env or {})

    def wait_for_workers(self, n: int, timeout: float = 180) -> dict:
        """{worker name: address} once ``n`` workers are connected."""
        from distributed import Client

        with Client(self.address, timeout="60s") as client:
            client.wait_for_workers(n, timeout=timeout)
            return {w["name"]: addr for addr, w in client.scheduler_info()["workers"].items()}

    def kill(self, name: str, sig=signal.SIGKILL) -> None:
        """Kill a process and everything it started (a worker and its nanny)."""
        try:
            os.killpg(self.procs[name].pid, sig)
        except ProcessLookupError:
            pass

    def close(self) -> None:
        for name in list(self.procs):
            self.kill(name, signal.SIGTERM)
        deadline = time.time() + 20
        for name, proc in self.procs.items():
            try:
                proc.wait(timeout=max(0.1, deadline - time.time()))
            except subprocess.TimeoutExpired:
                self.kill(name)
                proc.wait()

    def log(self, name: str) -> str:
        return (self.logs / f"{name}.log").read_text(errors="replace")


@contextmanager
def cluster(tmp_path: Path, scheduler_env: dict | None = None):
    logs = tmp_path / "dask-logs"
    logs.mkdir(exist_ok=True)
    c = Cluster(logs, scheduler_env)
    try:
        yield c
    finally:
        c.close()


def broken_slideproc(root: Path) -> Path:
    """A folder to put first on a worker's PYTHONPATH where `import slideproc` fails,
    as on a node whose slideproc install is broken or half-copied."""
    pkg = root / "broken" / "slideproc"
    pkg.mkdir(parents=True, exist_ok=True)
    (pkg / "__init__.py").write_text(
        'raise ImportError("slideproc on this node is a broken install (test)")\n', encoding="utf-8")
    return pkg.parent
