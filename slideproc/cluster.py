"""Start or join the Dask cluster a run uses. Only this module and engine.py touch Dask.

Without an address: a LocalCluster sized to the machine (one single-threaded
worker process per core: TensorFlow and scikit-image release the GIL unevenly,
processes avoid contention). With ``--scheduler tcp://HOST:PORT``: that cluster,
as its operator started it (see workers/README.md).
"""

from __future__ import annotations

import functools
import logging
import os
import sys
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
    """Yield a ``distributed.Client``; a local cluster started here is closed on exit.

    With ``scheduler``: the address must answer as a Dask scheduler and have a
    worker within ``cfg.connect_timeout_s`` seconds, else UsageError (exit 2).
    Nothing is written before this returns, so a wrong address costs nothing.
    """
    import dask
    from distributed import Client

    if scheduler:
        if workers is not None:
            log.warning("--workers %d is for the local cluster; with --scheduler the cluster's own workers run "
                        "(start or stop them there)", workers)
        probe_scheduler(scheduler, cfg.connect_timeout_s)
        try:
            client = Client(scheduler, timeout=f"{cfg.connect_timeout_s}s")
        except (OSError, TimeoutError) as err:
            raise UsageError(
                f"cannot reach the Dask scheduler at {scheduler} ({err}); start it with "
                "`dask scheduler` or leave out --scheduler to run locally"
            ) from None
        try:
            _wait_for_a_worker(client, scheduler, cfg.connect_timeout_s)
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


def _refused(address: str, timeout_s: float) -> str | None:
    """Why a TCP ``address`` refuses connections at once (or its host name does not resolve),
    or None (also for other protocols).

    distributed's connect retries a refused port with back-off until its deadline,
    so a closed port would read as "did not answer"; one plain socket tells the two apart.
    """
    import socket

    from distributed.comm.addressing import parse_address, parse_host_port

    try:
        scheme, location = parse_address(address)
        if scheme not in ("tcp", "tls"):
            return None
        host, port = parse_host_port(location)
    except (ValueError, TypeError):
        return None
    try:
        socket.create_connection((host, port), timeout=timeout_s).close()
    except ConnectionRefusedError as err:
        return err.strerror or "connection refused"
    except socket.gaierror as err:  # a host name that does not resolve: said now, not after the deadline
        return f"the host name {host!r} does not resolve: {err.strerror or err}"
    except OSError:
        return None  # unreachable host, DNS, timeout: distributed's connect says it in its own words
    return None


def probe_scheduler(address: str, timeout_s: float) -> dict:
    """Ask ``address`` who it is, within ``timeout_s`` seconds; its identity, or UsageError.

    distributed's own connect waits for the handshake without a deadline: a
    port where another server listens (an HTTP server, say) hangs
    ``Client(address, timeout=...)`` forever. Here the whole exchange (connect,
    handshake, the ``identity`` request) has one deadline, in a thread of its
    own so that it works whether or not the caller runs an event loop.
    """
    import asyncio
    import concurrent.futures

    from distributed.comm import connect

    async def ask() -> dict:
        comm = await connect(address, timeout=timeout_s)
        try:
            await comm.write({"op": "identity", "reply": True})
            return await comm.read()
        finally:
            await comm.close()

    def run() -> dict:
        return asyncio.run(asyncio.wait_for(ask(), timeout_s))

    fix = "check the address (`dask scheduler` prints it), or leave out --scheduler to run locally"
    refused = _refused(address, timeout_s)
    if refused:
        raise UsageError(f"cannot reach the Dask scheduler at {address} ({refused}); {fix}")
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        try:
            identity = pool.submit(run).result()
        except (asyncio.TimeoutError, TimeoutError, concurrent.futures.TimeoutError):
            raise UsageError(f"{address} did not answer as a Dask scheduler within {timeout_s:g} s "
                             f"(engine.connect_timeout_s); {fix}") from None
        except (OSError, ValueError, TypeError) as err:
            text = str(err).splitlines()[0] if str(err) else type(err).__name__
            raise UsageError(f"cannot reach the Dask scheduler at {address} ({text}); {fix}") from None
        except Exception as err:  # noqa: BLE001 - whatever the server said, it is not a scheduler
            raise UsageError(f"{address} is not a Dask scheduler ({type(err).__name__}); {fix}") from None
    if not isinstance(identity, dict) or identity.get("type") != "Scheduler":
        kind = identity.get("type") if isinstance(identity, dict) else type(identity).__name__
        raise UsageError(f"{address} is not a Dask scheduler (it answered as {kind!r}); {fix}")
    return identity


def _wait_for_a_worker(client, address: str, timeout_s: float) -> None:
    try:
        client.wait_for_workers(1, timeout=timeout_s)
    except (TimeoutError, OSError):
        raise UsageError(f"the Dask scheduler at {address} has no worker (waited {timeout_s:g} s, "
                         "engine.connect_timeout_s); start workers with workers/start-cpu-worker.sh "
                         "(workers/README.md)") from None


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


def _code_sha256_fn():
    """A function (sent by value, like the check) giving the sha256 of a slideproc package
    folder's code: every .py and .yaml file under it, relative path and bytes, in sorted
    order (caches, compiled files and tests are not part of it)."""

    def code_sha256(root: str) -> str:
        import hashlib
        import os

        digest = hashlib.sha256()
        # followlinks: a checkout's slideproc/configs is a link to ../configs, which a wheel
        # holds as a folder; both must give the same digest
        for folder, dirs, files in sorted(os.walk(root, followlinks=True)):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith("."))
            for name in sorted(files):
                if name.endswith((".py", ".yaml")):
                    path = os.path.join(folder, name)
                    digest.update(os.path.relpath(path, root).replace(os.sep, "/").encode())
                    with open(path, "rb") as fh:
                        digest.update(hashlib.sha256(fh.read()).digest())
        return digest.hexdigest()

    return code_sha256


@functools.cache
def code_sha256() -> str:
    """sha256 of this process's slideproc code (see _code_sha256_fn); recorded in run.json
    and compared with every worker's by the start-up check. Computed once per process: the
    code a process imported does not change under it."""
    import slideproc

    return _code_sha256_fn()(os.path.dirname(slideproc.__file__))


def _worker_check():
    """The start-up check, as a function that travels by value.

    Defined inside this function so that cloudpickle sends its code, not a
    reference to ``slideproc.cluster``: a worker that cannot import slideproc
    still runs it and says why, instead of failing to unpickle it.
    """

    def check(version: str, model_file: str | None, import_backend: bool = True,
              code_sha256: str | None = None, digest=None) -> list[str]:
        import importlib
        import os

        problems = []
        try:
            mod = importlib.import_module("slideproc")
        except Exception as err:  # noqa: BLE001 - any import failure is the finding
            return [f"cannot import slideproc ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})"]
        have = getattr(mod, "__version__", "?")
        if have != version:
            problems.append(f"runs slideproc {have}, this run is slideproc {version} (install the same version)")
        elif code_sha256 is not None and digest is not None:
            # The version string does not change with every commit: a worker on older code
            # of the same version would silently count differently (a review saw it).
            theirs = digest(os.path.dirname(mod.__file__))
            if theirs != code_sha256:
                problems.append(f"runs other slideproc code than this run (code sha256 {theirs[:12]}... != "
                                f"{code_sha256[:12]}..., version {have} on both): install this checkout's "
                                "slideproc there and restart the worker")
        if model_file is not None and import_backend:
            backend = os.environ.get("KERAS_BACKEND", "tensorflow")
            try:
                keras = importlib.import_module("keras")
                backend = keras.backend.backend()
            except Exception as err:  # noqa: BLE001
                text = str(err).splitlines()[0] if str(err) else type(err).__name__
                problems.append(f"cannot open the Keras backend {backend!r} ({text}); install it there, "
                                "or start the worker with KERAS_BACKEND naming one that is installed")
        if model_file is not None:
            if not os.access(model_file, os.R_OK):
                problems.append(f"cannot read the model {model_file} (put it on a filesystem every worker mounts)")
        return problems

    return check


def check_workers(client, model_file: str | None, import_backend: bool = True) -> dict:
    """Before any work is submitted: can every worker run this run? Returns worker_summary(client).

    Each worker must import slideproc, at this version; the workers that will
    classify (those with the ``GPU`` resource when there are any, else all)
    must also import Keras with their backend and read ``model_file``. Any
    failure is a UsageError (exit 2) naming each worker and what it lacks.
    ``import_backend=False`` (the local cluster: the workers are this process's
    own environment, checked by :func:`check_backend`) skips the Keras import,
    which costs 5-35 s per worker on a loaded 2-core machine.
    """
    from .errors import UsageError as _Usage
    from . import __version__

    summary = worker_summary(client)
    gpu = any(res.get(GPU, 0) > 0 for res in summary.values())
    classifiers = [a for a, res in summary.items() if not gpu or res.get(GPU, 0) > 0]
    others = [a for a in summary if a not in classifiers]
    names = _worker_names(client)
    check = _worker_check()
    code = code_sha256()
    found: dict = {}
    for addrs, model in ((classifiers, model_file), (others, None)):
        if not addrs:
            continue
        try:
            found.update(client.run(check, __version__, model, import_backend, code, _code_sha256_fn(),
                                    workers=addrs, on_error="return"))
        except (TimeoutError, OSError) as err:
            raise _Usage(f"the Dask workers did not answer slideproc's start-up check ({err})") from None
    bad = []
    for addr in sorted(found):
        result = found[addr]
        if isinstance(result, BaseException):
            text = str(result).splitlines()[0] if str(result) else type(result).__name__
            result = [f"cannot run slideproc's start-up check ({type(result).__name__}: {text})"]
        for problem in result or []:
            bad.append(f"worker {names.get(addr, addr)} ({addr}): {problem}")
    if bad:
        raise _Usage("these Dask workers cannot run this run: " + "; ".join(bad)
                     + " (workers/README.md, 'Start-up check')")
    return summary


def _worker_names(client) -> dict:
    info = client.scheduler_info(n_workers=-1) if _accepts_n_workers(client) else client.scheduler_info()
    return {addr: str(w.get("name", addr)) for addr, w in info.get("workers", {}).items()}


# Keras 3's backends and the module each needs.
KERAS_BACKENDS = {"tensorflow": "tensorflow", "jax": "jax", "torch": "torch", "numpy": "numpy",
                  "openvino": "openvino"}


def keras_backend_name() -> tuple[str, str]:
    """(backend, where it was set) as Keras will choose it: KERAS_BACKEND, else
    $KERAS_HOME/keras.json (~/.keras), else tensorflow. Reads no module."""
    import json

    name = os.environ.get("KERAS_BACKEND")
    if name:
        return name, "KERAS_BACKEND"
    home = os.environ.get("KERAS_HOME") or os.path.join(os.path.expanduser("~"), ".keras")
    path = os.path.join(home, "keras.json")
    try:
        with open(path, encoding="utf-8") as fh:
            name = json.load(fh).get("backend")
        if name:
            return str(name), path
    except (OSError, ValueError, AttributeError):
        pass
    return "tensorflow", "the default"


def check_backend() -> str:
    """UsageError (exit 2) unless Keras and the backend it will use are installed here.

    Looks modules up without importing them (importing TensorFlow costs seconds):
    a backend that is not installed is a set-up error, said once, before any
    work, not once per sample from the workers.
    """
    import importlib.util

    name, where = keras_backend_name()
    if name not in KERAS_BACKENDS:
        raise UsageError(f"{where} names the Keras backend {name!r}, which Keras does not have; use one of "
                         f"{', '.join(KERAS_BACKENDS)} (README.md, GPU machines)")
    for module in ("keras", KERAS_BACKENDS[name]):
        if importlib.util.find_spec(module) is None:
            raise UsageError(f"the Keras backend {name!r} ({where}) needs the Python package {module!r}, which is "
                             f"not installed in {sys.prefix}; install it, or set KERAS_BACKEND to an installed "
                             "backend (tensorflow is the default)")
    return name
