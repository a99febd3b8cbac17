"""Detection speed (issue 3): `slideproc detect` vs a bare OpenSlide read of the same slide.

Writes one synthetic 16384^2 smear (0.25 um/px, cells at the density of the
default 300 per 4096^2), then, in the same run:

- bare: an OpenSlide `read_region` loop over the whole slide at level 0 in
  512-px tiles (decoding every pixel once, nothing else);
- detect: `slideproc detect SLIDE --out DIR` (sources, foreground, tiling,
  segmentation, CSV), wall time of the whole command;
- serial (optional, --serial): the library's `detect_sample` loop in-process.

ratio = bare / detect (target >= 0.5: finding the cells costs no more than
twice decoding the slide's pixels). Also scores the detections against the
slide's truth.csv (recall/precision at <= 4 um). Prints and appends a JSON line
to benchmarks/results/detect.jsonl.

    python benchmarks/bench_detect.py [--size 16384] [--seed 0] [--workers N] [--serial]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import SLIDEPROC, record, timed_run  # noqa: E402


def bare_read(path: Path, tile: int = 512) -> float:
    import numpy as np
    import openslide

    start = time.perf_counter()
    slide = openslide.OpenSlide(str(path))
    w, h = slide.dimensions
    checksum = 0
    for y in range(0, h, tile):
        for x in range(0, w, tile):
            region = slide.read_region((x, y), 0, (min(tile, w - x), min(tile, h - y)))
            checksum += int(np.asarray(region)[0, 0, 0])  # touch the pixels
    slide.close()
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=16384)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=None, help="detect --workers (default: the CLI's)")
    ap.add_argument("--serial", action="store_true", help="also time detect_sample in-process")
    ap.add_argument("--keep", type=Path, default=None, help="write the archive here and keep it")
    args = ap.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or Path(tmp)
        archive = root / "archive"
        slide = archive / "slides" / "slide_000.tiff"
        cells = max(1, round(300 * (args.size / 4096) ** 2))
        if not slide.exists():
            timed_run([*SLIDEPROC, "-q", "synth", str(archive), "--kind", "slide", "--samples", "1",
                       "--cells", str(cells), "--size", str(args.size), "--seed", str(args.seed)])
        bare_read(slide, 512)  # warm the page cache so neither timing pays for the disk
        t_bare = bare_read(slide, 512)
        out = root / "detect-out"
        cmd = [*SLIDEPROC, "-q", "detect", str(slide), "--out", str(out)]
        if args.workers:
            cmd += ["--workers", str(args.workers)]
        r = timed_run(cmd)
        t_detect = r["seconds"]
        t_bare_after = bare_read(slide, 512)  # load on a shared machine drifts: bracket detect
        t_bare_mean = (t_bare + t_bare_after) / 2

        from slideproc.detection_eval import score_output

        scores = score_output(out, archive / "truth.csv", 4.0).set_index("sample_id").loc["overall"]
        data = {
            "size": args.size, "cells_placed": cells, "seed": args.seed,
            "bare_read_s": round(t_bare_mean, 2), "bare_read_runs_s": [round(t_bare, 2), round(t_bare_after, 2)],
            "detect_cli_s": round(t_detect, 2), "detect_returncode": r["returncode"],
            "ratio": round(t_bare_mean / t_detect, 3), "target_ratio": 0.5,
            "recall": round(float(scores["recall"]), 4), "precision": round(float(scores["precision"]), 4),
            "n_detected": int(scores["n_detected"]),
        }
        if args.serial:
            from slideproc.config import RunConfig
            from slideproc.detect import detect_sample
            from slideproc.sources.discover import discover

            (sample,) = discover([slide]).samples
            start = time.perf_counter()
            df = detect_sample(sample, RunConfig())
            data["detect_serial_s"] = round(time.perf_counter() - start, 2)
            data["ratio_serial"] = round(t_bare_mean / data["detect_serial_s"], 3)
            data["n_detected_serial"] = len(df)
    record("detect", data)


if __name__ == "__main__":
    main()
