"""Engine throughput and memory (issue 5).

1. Throughput: `slideproc run` over folders of 700 and 1,400 real Matek crops
   (each crop a field of view); the marginal rate
   (cells(1400) - cells(700)) / (time(1400) - time(700)) cancels start-up, and
   is compared with a bare `predict_on_batch` loop of the same model at batch
   32 over the same crops, in the same run. Target: ratio >= 0.9.
2. Memory: peak RSS of the Dask workers for a synthetic slide and one 4x larger
   in area. Target: ratio <= 1.1.

    python benchmarks/bench_run.py [--model MODEL_DIR | --input-size 299] [--skip-memory] [--skip-throughput]

Without --model, a throwaway model of --input-size px is trained first on the
Matek crops (weights none, 2 steps; its accuracy does not matter here, only its
cost per crop).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REAL, SLIDEPROC, record, timed_run  # noqa: E402


def crop_folder(dest: Path, n: int) -> Path:
    """A folder of n Matek crops (symlinks, cycling through the real ones)."""
    files = sorted((REAL / "matek_bm").glob("*/*.jpg"))
    dest.mkdir(parents=True)
    for i in range(n):
        src = files[i % len(files)]
        (dest / f"{i:05d}_{src.name}").symlink_to(src)
    return dest


def bare_loop(model_dir: Path, folder: Path, batch: int = 32) -> dict:
    """Seconds of a predict_on_batch loop over the folder's crops (decode and resize excluded)."""
    import keras
    import numpy as np
    from PIL import Image

    from slideproc.classify import preprocess  # noqa: F401  registers the preprocessing layer

    model = keras.saving.load_model(model_dir / "model.keras", compile=False, safe_mode=True)
    size = model.input_shape[1]
    crops = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in sorted(folder.iterdir())])
    pad = (-len(crops)) % batch
    crops = np.concatenate([crops, np.zeros((pad, size, size, 3), np.uint8)])
    model.predict_on_batch(crops[:batch])  # compile once, as the engine's warm workers have
    start = time.perf_counter()
    for i in range(0, len(crops), batch):
        model.predict_on_batch(crops[i:i + batch])
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cells": len(crops) - pad, "cells_per_s": (len(crops) - pad) / seconds}


def count_cells(out: Path) -> int:
    import pandas as pd

    return int(sum(len(pd.read_csv(p)) for p in (out / "cells").glob("*.csv")))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--mpp", type=float, default=None, help="um/px of the Matek crops (default: the red-cell estimate, 0.094)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--input-size", type=int, default=96,
                   help="input size of the throwaway model trained when --model is not given (299: the GPU default)")
    p.add_argument("--memory-size", type=int, default=8192, help="edge of the smaller slide, level-0 px")
    args = p.parse_args()
    if not (REAL / "matek_bm").is_dir():
        print(f"real Matek crops not found at {REAL / 'matek_bm'}; nothing to measure", file=sys.stderr)
        return 2
    from slideproc.synthetic.from_real import MATEK_MPP

    mpp = args.mpp or MATEK_MPP  # estimated from red-cell diameters (configs/default.yaml, crops)
    tmp = Path(tempfile.mkdtemp(prefix="slideproc-bench-"))
    model = args.model
    if model is None:
        model = tmp / "model"
        # Only its cost per crop matters here: two eager steps, no graph tracing.
        cfg = tmp / "throwaway.yaml"
        cfg.write_text("training:\n  epochs: 1\n  steps_per_epoch: 2\n  run_eagerly: true\n", encoding="utf-8")
        timed_run(SLIDEPROC + ["train", str(REAL / "matek_bm"), "--out", str(model), "--weights", "none",
                               "--config", str(cfg), "--input-size", str(args.input_size), "--min-per-class", "100"])
    result = {"command": "python benchmarks/bench_run.py " + " ".join(sys.argv[1:]), "model": str(model), "mpp": mpp}
    extra = ["--workers", str(args.workers)] if args.workers else []
    if not args.skip_throughput:
        result.update(throughput_benchmark(tmp, model, mpp, extra))
    if not args.skip_memory:
        result["memory"] = memory_benchmark(tmp, model, args.memory_size, extra)
    record("run", result)
    return 0


def throughput_benchmark(tmp: Path, model: Path, mpp: float, extra: list[str]) -> dict:
    """Marginal cells/s of `slideproc run` (700 -> 1,400 crops) against a bare predict loop."""
    f700 = crop_folder(tmp / "f700" / "crops700", 700)
    f1400 = crop_folder(tmp / "f1400" / "crops1400", 1400)
    runs = {}
    for name, folder in (("700", f700), ("1400", f1400)):
        out = tmp / f"out{name}"
        r = timed_run(SLIDEPROC + ["-q", "run", str(folder), "--model", str(model), "--out", str(out),
                                   "--mpp", str(mpp)] + extra)
        r["cells"] = count_cells(out)
        runs[name] = r
    bare = bare_loop(model, f1400)
    marginal = (runs["1400"]["cells"] - runs["700"]["cells"]) / (runs["1400"]["seconds"] - runs["700"]["seconds"])
    return {
        "run_700": runs["700"], "run_1400": runs["1400"], "bare_predict_on_batch": bare,
        "engine_marginal_cells_per_s": marginal,
        "ratio_engine_to_bare": marginal / bare["cells_per_s"],
        "target_ratio": 0.9,
    }


def memory_benchmark(tmp: Path, model: Path, size: int, extra: list[str]) -> dict:
    """Peak worker RSS for a slide of size^2 and one of (2 size)^2 (4x the area)."""
    out = {}
    for name, edge in (("small", size), ("large", 2 * size)):
        archive = tmp / f"mem_{name}"
        cells = max(50, int(300 * (edge / 4096) ** 2))
        timed_run(SLIDEPROC + ["synth", str(archive), "--kind", "slide", "--samples", "1", "--cells", str(cells),
                               "--size", str(edge), "--seed", "7"])
        r = timed_run(SLIDEPROC + ["-q", "run", str(archive / "slides"), "--model", str(model), "--out",
                                   str(tmp / f"memout_{name}")] + extra, rss=True)
        out[name] = {"edge_px": edge, **r}
    out["ratio_peak_worker_rss"] = out["large"]["peak_rss_worker_mb"] / out["small"]["peak_rss_worker_mb"]
    out["target_ratio"] = 1.1
    return out


if __name__ == "__main__":
    sys.exit(main())
