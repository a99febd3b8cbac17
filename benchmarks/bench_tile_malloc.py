"""Per-tile detection time with and without Dask's MALLOC_TRIM_THRESHOLD_=65536.

    python benchmarks/bench_tile_malloc.py SLIDE [--repeats 3]

Runs the same detect_tile loop over SLIDE's planned tiles in fresh child
processes, once with glibc's malloc defaults and once with the variable Dask's
nanny sets by default (see slideproc/cluster.py), alternating, and reports the
seconds and ms per tile of each.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import record  # noqa: E402

CHILD = """
import sys, time
from slideproc.config import load_run_config
from slideproc.detect import detect_tile, plan_source
from slideproc.sources.base import SourceRef
cfg = load_run_config(None)
ref = SourceRef(sys.argv[1], "slide", "openslide")
geo, tiles = plan_source(ref, cfg)
tiles = tiles[:int(sys.argv[2])]
detect_tile(ref, tiles[0], geo, cfg)  # imports and first-call costs out of the timing
t = time.perf_counter()
for tile in tiles:
    detect_tile(ref, tile, geo, cfg)
print(time.perf_counter() - t, len(tiles))
"""


def child(slide: Path, tiles: int, trim: bool) -> tuple[float, int]:
    env = {k: v for k, v in os.environ.items() if k != "MALLOC_TRIM_THRESHOLD_"}
    if trim:
        env["MALLOC_TRIM_THRESHOLD_"] = "65536"
    out = subprocess.run([sys.executable, "-c", CHILD, str(slide), str(tiles)], env=env, check=True,
                         capture_output=True, text=True).stdout.split()
    return float(out[-2]), int(out[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("slide", type=Path)
    p.add_argument("--tiles", type=int, default=24)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()
    runs = {"glibc_defaults_s": [], "dask_trim_65536_s": []}
    n = 0
    for _ in range(args.repeats):
        for key, trim in (("glibc_defaults_s", False), ("dask_trim_65536_s", True)):
            seconds, n = child(args.slide, args.tiles, trim)
            runs[key].append(round(seconds, 3))
    best = {k: min(v) for k, v in runs.items()}
    record("tile_malloc", {
        "command": "python benchmarks/bench_tile_malloc.py " + " ".join(sys.argv[1:]), "slide": str(args.slide),
        "tiles": n, **runs, "ms_per_tile_glibc_defaults": round(1e3 * best["glibc_defaults_s"] / n, 1),
        "ms_per_tile_dask_trim": round(1e3 * best["dask_trim_65536_s"] / n, 1),
        "slowdown_with_trim": round(best["dask_trim_65536_s"] / best["glibc_defaults_s"], 3),
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
