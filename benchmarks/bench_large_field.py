"""Detection of one large plain JPEG field from its DCT-scaled level vs its full-size decode.

    python benchmarks/bench_large_field.py [JPEG] [--mpp 0.09] [--repeats 2]

JPEG defaults to ../shared/data/cases/large-jpeg/big/field.jpg (9,500 x 9,500
px, 90 MP). Each run is a fresh child process calling ``detect_field`` (the
engine's per-field work) once with the reader's levels (default: JPEGs over
``LEVELS_FROM_PIXELS`` read from the level nearest the working resolution) and
once with one level (the full-size decode, as before), alternating; it reports
seconds, peak RSS and the cells of each, and the ratios.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, record  # noqa: E402

CHILD = """
import resource, sys, time
import slideproc.sources.image_reader as ir
from slideproc.config import load_run_config, with_overrides
from slideproc.detect import detect_field
from slideproc.sources.base import SourceRef
if sys.argv[3] == "single":
    ir.LEVELS_FROM_PIXELS = 10**12
cfg = with_overrides(load_run_config(None), {"source.mpp_um": float(sys.argv[2])})
t = time.perf_counter()
geo, cells = detect_field(SourceRef(sys.argv[1], "field.jpg", "image"), cfg)
print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024, len(cells), geo.level)
"""


def child(path: Path, mpp: float, mode: str) -> tuple[float, int, int, int]:
    out = subprocess.run([sys.executable, "-c", CHILD, str(path), str(mpp), mode], check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[-4]), int(out[-3]), int(out[-2]), int(out[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("jpeg", type=Path, nargs="?",
                   default=REPO.parent / "shared" / "data" / "cases" / "large-jpeg" / "big" / "field.jpg")
    p.add_argument("--mpp", type=float, default=0.09)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    runs: dict[str, list] = {"levels": [], "single": []}
    for _ in range(args.repeats):
        for mode in runs:
            runs[mode].append(child(args.jpeg, args.mpp, mode))
    best = {m: min(r[0] for r in v) for m, v in runs.items()}
    rss = {m: max(r[1] for r in v) for m, v in runs.items()}
    record("large_field", {
        "command": "python benchmarks/bench_large_field.py " + " ".join(sys.argv[1:]), "jpeg": str(args.jpeg),
        "mpp": args.mpp, "runs_s_rssMB_cells_level": runs,
        "seconds_levels": round(best["levels"], 2), "seconds_single": round(best["single"], 2),
        "speedup": round(best["single"] / best["levels"], 2),
        "peak_rss_mb_levels": rss["levels"], "peak_rss_mb_single": rss["single"],
        "cells_levels": runs["levels"][0][2], "cells_single": runs["single"][0][2],
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
