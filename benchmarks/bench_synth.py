"""Synthetic archive speed and memory (issue 2).

Times `slideproc synth` for one slide of 4096^2 and one of 16384^2 (cells at
the same density, 300 per 4096^2) and records the peak RSS of the 16k write
against the slide's raw size (16384^2 x 3 bytes = 768 MB): memory must stay
bounded by tiles and caches, never by the slide.

    python benchmarks/bench_synth.py [--sizes 4096 16384]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import SLIDEPROC, record, timed_run  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[4096, 16384])
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            cells = max(1, round(300 * (n / 4096) ** 2))
            r = timed_run([*SLIDEPROC, "-q", "synth", str(Path(tmp) / str(n)), "--kind", "slide", "--samples", "1",
                           "--cells", str(cells), "--size", str(n), "--seed", "0"], rss=True)
            results[str(n)] = {"cells": cells, "seconds": round(r["seconds"], 1),
                               "peak_rss_mb": round(r["peak_rss_total_mb"]),
                               "raw_mb": round(n * n * 3 / 2**20)}
    record("synth", {"slides": results})


if __name__ == "__main__":
    main()
