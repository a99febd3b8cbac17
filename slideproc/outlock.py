"""One writer per OUT_DIR: every command that writes into it (run, detect, report) takes this lock.

An advisory ``flock`` on OUT_DIR/.slideproc.lock; the kernel releases it when the
process dies (SIGKILL included), so a crashed run never leaves a stale lock.
A second writer refuses (exit 2), naming the folder. Only the holder of the
lock writes into OUT_DIR, so the hidden temporaries a holder finds there are
leftovers of a process that died, never another process's writes in flight.

``check_free`` tells early, creating nothing, whether the lock is held: a run
checks it before it starts a cluster, and takes the lock after.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from .errors import StoreError, UsageError

LOCK_NAME = ".slideproc.lock"


def _in_use(out_dir: Path, path: Path) -> UsageError:
    return UsageError(f"{out_dir} is in use by another slideproc process (lock {path}); wait for it to "
                      "finish or choose another --out")


def check_free(out_dir: Path) -> None:
    """UsageError if OUT_DIR is a file or its lock is held now; creates nothing."""
    out_dir = Path(out_dir)
    path = out_dir / LOCK_NAME
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a folder; choose another --out")
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # no lock file (or unreadable: exclusive_out_dir says why when it takes it)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(out_dir, path) from None
    except OSError:
        pass
    finally:
        os.close(fd)  # closing drops the probe's lock


@contextmanager
def exclusive_out_dir(out_dir: Path):
    out_dir = Path(out_dir)
    path = out_dir / LOCK_NAME
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--out {out_dir} is a file, not a folder; choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as err:
        raise StoreError(f"cannot create {path}: {err.strerror or err}; choose another --out, "
                         "or free disk space / fix the folder's permissions") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise _in_use(out_dir, path) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is for people; the lock is the flock, held either way (e.g. a full disk)
        yield
    finally:
        os.close(fd)
