"""Classification cost per cell in the engine for 1, 2, 4 and 8 test-time views (CPU).

    python benchmarks/bench_tta_cost.py MODEL_DIR [--crops 256] [--rounds 3]

Times the engine's own classify task (``slideproc.tasks.classify_task``: the
worker's predictor, resize, views, calibration) on real Matek crops at their
native 250 px, in one process, the view counts in turns (1 2 4 8 1 2 4 8 ...),
so a machine whose load changes slows them alike; reports the median
milliseconds per cell and the ratio to one view. One warm-up call per view
count first (it traces the predict function). The engine runs one such task
per batch of cells on each worker, so this is its classify cost per cell on
one worker process; detection and cropping come on top.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REAL, record  # noqa: E402

VIEWS = (1, 2, 4, 8)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    p.add_argument("--crops", type=int, default=256)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()

    from slideproc.classify.loading import load_model_dir
    from slideproc.datasets import read_rgb
    from slideproc.tasks import classify_task

    files = sorted((REAL / "matek_bm").glob("*/*.jpg"))[::7][:args.crops]
    crops = np.stack([read_rgb(f) for f in files])
    loaded = load_model_dir(args.model_dir)
    for v in VIEWS:  # warm-up: trace the predict function, build each predictor
        classify_task(str(args.model_dir), loaded.sha256, [crops[:32]], 32, "auto", False, v)
    times = {v: [] for v in VIEWS}
    for _ in range(args.rounds):
        for v in VIEWS:
            t = time.perf_counter()
            out = classify_task(str(args.model_dir), loaded.sha256, [crops], 32, "auto", False, v)
            times[v].append((time.perf_counter() - t) / out["n"])
    ms = {v: 1000 * float(np.median(times[v])) for v in VIEWS}
    record("tta_cost", {
        "command": "python benchmarks/bench_tta_cost.py " + " ".join(sys.argv[1:]),
        "model_input_px": loaded.input_size_px, "crops": int(len(crops)), "crop_px": list(crops.shape[1:3]),
        "threads": os.environ.get("OMP_NUM_THREADS", "TensorFlow default (all cores)"),
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        "ms_per_cell": {str(v): round(ms[v], 2) for v in VIEWS},
        "ratio_to_1_view": {str(v): round(ms[v] / ms[1], 2) for v in VIEWS},
    })
    return 0


if __name__ == "__main__":
    sys.exit(main())
