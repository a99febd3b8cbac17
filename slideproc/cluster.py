"""Start or join the Dask cluster a run uses. Only this module and engine.py touch Dask.

Without an address: a LocalCluster sized to the machine (one single-threaded
worker process per core: TensorFlow and scikit-image release the GIL unevenly,
processes avoid contention). With ``--scheduler tcp://HOST:PORT``: that cluster,
as its operator started it (see workers/README.md).
"""

from __future__ import annotations

import logging
import os
from contextlib import contextmanager

from .config import EngineConfig
from .errors import UsageError

log = logging.getLogger(__name__)

GPU = "GPU"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


@contextmanager
def open_client(scheduler: str | None, cfg: EngineConfig, workers: int | None = None):
    """Yield a ``distributed.Client``; a local cluster started here is closed on exit."""
    import dask
    from distributed import Client

    if scheduler:
        try:
            client = Client(scheduler, timeout="20s")
        except (OSError, TimeoutError) as err:
            raise UsageError(
                f"cannot reach the Dask scheduler at {scheduler} ({err}); start it with "
                "`dask scheduler` or leave out --scheduler to run locally"
            ) from None
        try:
            yield client
        finally:
            client.close()
        return
    n = workers or cfg.workers or _cores()
    with dask.config.set(LOCAL_WORKER_CONFIG):
        cluster = _local_cluster(n, cfg)
    client = Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


# Dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536 so that they
# hand freed memory back to the OS. Setting any such glibc knob also turns off
# glibc's adaptive mmap threshold, so every large temporary array (segmentation
# makes dozens per tile) is a fresh mmap, zeroed page by page: detection ran
# 1.39x slower per tile (benchmarks/bench_tile_malloc.py). slideproc's
# memory is bounded by tiles in flight, so its workers keep glibc's defaults.
# workers/dask.yaml does the same for workers an operator starts.
LOCAL_WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


def _local_cluster(n: int, cfg: EngineConfig):
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=n,
        threads_per_worker=cfg.threads_per_worker,
        processes=True,
        memory_limit=cfg.memory_limit,
        dashboard_address=":0",
        # Worker deaths a task may survive before it is given up (lost workers
        # are retried this many times; then the sample fails, the run goes on).
        scheduler_kwargs={"allowed_failures": cfg.retries},
        # Task errors reach the user as one line per sample (errors.csv and
        # stderr); the workers' own tracebacks would only repeat them.
        silence_logs=logging.CRITICAL,
    )


def worker_summary(client) -> dict:
    """Workers and their resources, e.g. {"tcp://...": {"GPU": 1}}."""
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    return {addr: dict(w.get("resources") or {}) for addr, w in info.get("workers", {}).items()}


def _accepts_n_workers(client) -> bool:
    import inspect

    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):  # pragma: no cover
        return False


def has_gpu_workers(client) -> bool:
    return any(res.get(GPU, 0) > 0 for res in worker_summary(client).values())
