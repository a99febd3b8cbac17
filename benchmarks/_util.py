"""Shared helpers for the benchmarks: timing subprocesses, peak RSS, result records."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
REAL = REPO.parent / "shared" / "data" / "real"
SLIDEPROC = [sys.executable, "-m", "slideproc.cli"]


def record(name: str, data: dict) -> dict:
    """Print a result and append it to benchmarks/results/<name>.jsonl."""
    RESULTS.mkdir(parents=True, exist_ok=True)
    entry = {"benchmark": name, "time": time.strftime("%Y-%m-%dT%H:%M:%S"), "cores": os.cpu_count(),
             "machine": platform.machine(), **data}
    with open(RESULTS / f"{name}.jsonl", "a") as fh:
        fh.write(json.dumps(entry) + "\n")
    print(json.dumps(entry, indent=2))
    return entry


class PeakRSS:
    """Samples the summed RSS of a process tree (the CLI and its Dask workers)."""

    def __init__(self, pid: int, interval: float = 0.2):
        import psutil

        self.proc = psutil.Process(pid)
        self.interval = interval
        self.peak_total = 0
        self.peak_worker = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self):
        import psutil

        while not self._stop.is_set():
            try:
                procs = [self.proc] + self.proc.children(recursive=True)
                rss = []
                for p in procs:
                    try:
                        rss.append(p.memory_info().rss)
                    except psutil.Error:
                        pass
                self.peak_total = max(self.peak_total, sum(rss))
                if len(rss) > 1:
                    self.peak_worker = max(self.peak_worker, max(rss[1:]))
            except psutil.Error:
                break
            self._stop.wait(self.interval)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def timed_run(args: list[str], env: dict | None = None, rss: bool = False) -> dict:
    """Run a command; return wall seconds (and peak RSS of its tree)."""
    start = time.perf_counter()
    proc = subprocess.Popen(args, env={**os.environ, **(env or {})}, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if rss:
        with PeakRSS(proc.pid) as meter:
            out, _ = proc.communicate()
    else:
        out, _ = proc.communicate()
        meter = None
    seconds = time.perf_counter() - start
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(map(str, args))} failed ({proc.returncode}):\n{out[-3000:]}")
    result = {"seconds": seconds, "returncode": proc.returncode}
    if meter is not None:
        result["peak_rss_total_mb"] = meter.peak_total / 2**20
        result["peak_rss_worker_mb"] = meter.peak_worker / 2**20
    return result
