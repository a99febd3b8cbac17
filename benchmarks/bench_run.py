"""Engine throughput and memory (issue 5).

1. Throughput: `slideproc run` over folders of 700 and 1,400 real Matek crops
   (each crop a field of view); the marginal rate
   (cells(1400) - cells(700)) / (time(1400) - time(700)) cancels start-up, and
   is compared with a bare `predict_on_batch` loop of the same model at batch
   32 over the same crops, in the same run. Target: ratio >= 0.9.
2. Memory: peak RSS of the Dask workers for a synthetic slide and one 4x larger
   in area. Target: ratio <= 1.1.

    python benchmarks/bench_run.py [--model MODEL_DIR | --input-size 299] [--skip-memory] [--skip-throughput]
    python benchmarks/bench_run.py --model MODEL_DIR --scheduler tcp://HOST:8786 --skip-memory [--crops 3500]

With --scheduler the runs go to a running cluster (benchmarks/gpu_node.sh
starts one on a GPU node); its warm workers are warmed once more before the
pair is timed. On a fast GPU 700/1,400 crops are mostly start-up: use --crops.

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
    """Seconds of a predict_on_batch loop over the folder's crops (decode and resize excluded).

    The network is the one the engine's predictor runs: the same model file
    under the same precision policy (float32 on a CPU, mixed_float16 on a
    GPU), so the ratio compares the engine with its own model, not with a
    differently typed copy.
    """
    import numpy as np
    from PIL import Image

    from slideproc.classify.loading import load_model_dir
    from slideproc.classify.predict import Predictor

    predictor = Predictor(load_model_dir(model_dir), batch_size=batch)
    net, size = predictor.network, predictor.input_size_px
    crops = np.stack([np.asarray(Image.open(p).convert("RGB").resize((size, size))) for p in sorted(folder.iterdir())])
    pad = (-len(crops)) % batch
    crops = np.concatenate([crops, np.zeros((pad, size, size, 3), np.uint8)])
    net.predict_on_batch(crops[:batch])  # compile once, as the engine's warm workers have
    start = time.perf_counter()
    for i in range(0, len(crops), batch):
        np.asarray(net.predict_on_batch(crops[i:i + batch]))  # to host memory, as the engine needs it
    seconds = time.perf_counter() - start
    return {"seconds": seconds, "cells": len(crops) - pad, "cells_per_s": (len(crops) - pad) / seconds,
            "precision": predictor.precision}


def count_cells(out: Path) -> int:
    import pandas as pd

    return int(sum(len(pd.read_csv(p)) for p in (out / "cells").glob("*.csv")))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--mpp", type=float, default=None, help="um/px of the Matek crops (default: the red-cell estimate, 0.094)")
    p.add_argument("--workers", type=int, default=None)
    p.add_argument("--scheduler", default=None,
                   help="tcp://HOST:PORT of a running cluster (e.g. GPU + CPU workers) instead of a local one")
    p.add_argument("--crops", type=int, default=700,
                   help="crops of the smaller folder; the larger holds twice as many (the issue's pair: 700, 1400)")
    p.add_argument("--skip-memory", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--input-size", type=int, default=96,
                   help="input size of the throwaway model trained when --model is not given (299: the GPU default)")
    p.add_argument("--memory-size", type=int, default=8192, help="edge of the smaller slide, level-0 px")
    args = p.parse_args()
    if args.scheduler and not args.skip_memory:
        p.error("--scheduler measures throughput only: add --skip-memory (worker RSS needs the local cluster's "
                "worker processes as children of the run)")
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
        # near chance by design: warn, not fail.
        cfg.write_text("training:\n  epochs: 1\n  steps_per_epoch: 2\n  run_eagerly: true\n  near_chance: warn\n",
                       encoding="utf-8")
        timed_run(SLIDEPROC + ["train", str(REAL / "matek_bm"), "--out", str(model), "--weights", "none",
                               "--config", str(cfg), "--input-size", str(args.input_size), "--min-per-class", "100"])
    result = {"command": "python benchmarks/bench_run.py " + " ".join(sys.argv[1:]), "model": str(model), "mpp": mpp}
    extra = ["--workers", str(args.workers)] if args.workers else []
    if args.scheduler:
        extra += ["--scheduler", args.scheduler]
        result["scheduler"] = args.scheduler
    if not args.skip_throughput:
        result.update(throughput_benchmark(tmp, model, mpp, extra, args.crops))
    if not args.skip_memory:
        result["memory"] = memory_benchmark(tmp, model, args.memory_size, extra)
    record("run", result)
    return 0


def throughput_benchmark(tmp: Path, model: Path, mpp: float, extra: list[str], n: int = 700) -> dict:
    """Marginal cells/s of `slideproc run` (n -> 2n crops, 700 -> 1,400) against a bare predict loop."""
    f700 = crop_folder(tmp / "f700" / f"crops{n}", n)
    f1400 = crop_folder(tmp / "f1400" / f"crops{2 * n}", 2 * n)
    runs = {}
    if "--scheduler" in extra:
        # A running cluster's workers keep the model (and its compiled predict
        # function) between runs: warm them first, or only the 700 run would
        # pay for loading and compiling, and the difference would flatter the engine.
        warm = crop_folder(tmp / "warm" / "crops64", 64)
        timed_run(SLIDEPROC + ["-q", "run", str(warm), "--model", str(model), "--out", str(tmp / "outwarm"),
                               "--mpp", str(mpp)] + extra)
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
