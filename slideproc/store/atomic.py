"""Whole-file writes: a reader (or a resume after a crash) sees the old file or the new one.

The text goes to a hidden temporary beside the target, is flushed to disk, and
``os.replace`` swaps it in; that rename is atomic on one filesystem.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path

from ..errors import StoreError


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` whole or not at all; StoreError (one line) on failure."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except OSError as err:
        try:
            tmp.unlink()
        except OSError:
            pass
        reason = err.strerror or str(err)
        raise StoreError(
            f"cannot write {path}: {reason}; free disk space or fix the folder's permissions, then run again"
        ) from None
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: str | os.PathLike) -> None:
    """Delete ``.NAME.tmp-*`` files a crashed write left in ``folder``."""
    folder = Path(folder)
    if not folder.is_dir():
        return
    for entry in folder.iterdir():
        if entry.name.startswith(".") and ".tmp-" in entry.name and entry.is_file():
            try:
                entry.unlink()
            except OSError:
                pass
