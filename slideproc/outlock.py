"""One writer per OUT_DIR: a second `slideproc run` into the same folder refuses.

An advisory ``flock`` on OUT_DIR/.slideproc.lock; the kernel releases it when the
process dies (SIGKILL included), so a crashed run never leaves a stale lock.
"""

from __future__ import annotations

import fcntl
import os
from contextlib import contextmanager
from pathlib import Path

from .errors import UsageError

LOCK_NAME = ".slideproc.lock"


@contextmanager
def exclusive_out_dir(out_dir: Path):
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(
                f"{out_dir} is in use by another slideproc process (lock {path}); wait for it to "
                "finish or choose another --out"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)
