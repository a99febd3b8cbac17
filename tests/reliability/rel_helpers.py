"""Helpers for the reliability suite: real `slideproc` processes on real files.

Every case runs the installed console script in its own process (as a lab's
overnight job would), then reads back what a user reads: the exit status,
stderr, errors.csv, run.json and the per-sample outputs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

BIN = Path(sys.executable).parent
SLIDEPROC = str(BIN / "slideproc")
# The test process's own environment (the in-process reference runs see the same
# threads and devices, so outputs compare exactly); only TensorFlow's C++ log is quieter.
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}


def slideproc(*args, timeout: float = 300, cwd=None) -> subprocess.CompletedProcess:
    """Run ``slideproc -q ARGS`` to completion; stdout and stderr as text."""
    return subprocess.run([SLIDEPROC, "-q", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env=ENV)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("slideproc: error:")]


def assert_clean_stderr(stderr: str) -> None:
    """No traceback, no multi-line error: every error is one `slideproc: error:` line."""
    assert "Traceback" not in stderr, stderr
    for line in stderr.splitlines():
        assert not line.startswith((" ", "\t")), f"continuation line on stderr: {line!r}\n{stderr}"


def assert_one_line_error(proc: subprocess.CompletedProcess, rc: int, *needles: str) -> str:
    """Exactly one stderr line, the error, naming each needle; the given exit status."""
    assert proc.returncode == rc, (proc.returncode, proc.stderr)
    assert_clean_stderr(proc.stderr)
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("slideproc: error:"), proc.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def read_errors(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "errors.csv", keep_default_na=False)


def read_run(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


def write_png(path: Path, rgb: np.ndarray) -> Path:
    from PIL import Image

    Image.fromarray(rgb).save(path)
    return path


def truncate(src: Path, dst: Path, keep: float = 0.5) -> Path:
    data = src.read_bytes()
    dst.write_bytes(data[: max(1, int(len(data) * keep))])
    return dst


def tree(out: Path) -> list[str]:
    """Every file under ``out`` (relative), for "nothing written" checks."""
    if not out.exists():
        return []
    return sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())


def copy_fields(fields: Path, dst: Path) -> Path:
    """Copy the image fields of one folder sample into ``dst`` (a new sample folder)."""
    dst.mkdir(parents=True, exist_ok=True)
    for p in sorted(fields.glob("*.png")):
        shutil.copy(p, dst / p.name)
    return dst
