"""One writer per OUT_DIR: a second `slideproc run` into the same folder refuses.

An advisory ``flock`` on OUT_DIR/.slideproc.lock; the kernel releases it when the
process dies (SIGKILL included), so a crashed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from .errors import StoreError, UsageError

LOCK_NAME = ".slideproc.lock"


@contextmanager
def exclusive_out_dir(out_dir: Path):
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
            raise UsageError(
                f"{out_dir} is in use by another slideproc process (lock {path}); wait for it to "
                "finish or choose another --out"
            ) from None
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
        except OSError:
            pass  # the pid is for people; the lock is the flock, held either way (e.g. a full disk)
        yield
    finally:
        os.close(fd)
