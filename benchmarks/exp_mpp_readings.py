"""Other readings of the red cells' size for --mpp auto, against each field's box mpp (an experiment).

    python benchmarks/bench_txl.py --split train --mpp auto --sample-size 1 --no-record --fields-csv F.csv
    python benchmarks/exp_mpp_readings.py F.csv [--threshold-scale 0.8]

For every field of F.csv with its own red-cell boxes, the estimator's red-cell mask
(mpp_estimate._masks, its Otsu threshold times --threshold-scale) is read five ways:
the opening mode r0, the whole cells' median area diameter, their median box longer
side, major axis and maximum Feret diameter (skimage regionprops). Each reading, and
the geometric means r0 x area (the estimator) and r0 x box, gets its best single factor
(most fields within 10 % of the box mpp) and prints fields within 10 % overall and per
source, with each source's median of box size / reading over that factor (its offset).
BENCHMARKS.md, "Other readings of the red cells' size, tried and not built".
"""

from __future__ import annotations

import argparse
import inspect
import sys
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2] / "shared" / "data" / "real" / "txl_pbc" / "images"
_SCALE = 1.0


def _masks(rgb):
    """mpp_estimate._masks with its red-cell threshold scaled by _SCALE."""
    from slideproc import mpp_estimate as me

    src = inspect.getsource(me._masks).replace("float(threshold_otsu(rest))",
                                               "float(threshold_otsu(rest)) * _SCALE")
    ns = dict(vars(me), _SCALE=_SCALE)
    exec(src, ns)  # noqa: S102 - an experiment on the estimator's own code
    return ns["_masks"](rgb)


def readings(job):
    from PIL import Image
    from scipy import ndimage
    from skimage.feature import peak_local_max
    from skimage.measure import regionprops
    from skimage.segmentation import watershed

    from slideproc import mpp_estimate as me

    split, name = job
    rgb = np.asarray(Image.open(ROOT / split / name).convert("RGB"))
    try:  # the estimator's two passes (mpp_estimate.estimate_mpp)
        step_c = max(1, int(np.ceil(max(rgb.shape[:2]) / me._COARSE_SIDE_PX)))
        coarse = me._typical_radius(_masks(np.ascontiguousarray(rgb[::step_c, ::step_c]))[0], me._R_STEP ** 2,
                                    np.inf)
        r_level0 = coarse[0] * step_c
        step = max(1, int(r_level0 / me._FINE_RADIUS_PX), int(np.ceil(max(rgb.shape[:2]) / me._MAX_SIDE_PX)))
        mask, _ = _masks(np.ascontiguousarray(rgb[::step, ::step]))
        r0 = me._typical_radius(mask, me._R_STEP, 3.0 * r_level0 / step)[0]
    except Exception as err:  # noqa: BLE001 - a refused field is a row with its reason
        return {"field": name, "err": str(err)}
    # The whole cells as mpp_estimate.whole_cell_diameters cuts them.
    dist = ndimage.distance_transform_edt(np.pad(mask, 1, mode="edge"))[1:-1, 1:-1]
    peaks = peak_local_max(dist, min_distance=max(2, int(0.7 * r0)), threshold_abs=0.6 * r0,
                           labels=mask.astype(np.int32))
    markers = np.zeros(mask.shape, np.int32)
    if len(peaks):
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    regions = watershed(-dist, markers, mask=mask) if len(peaks) else markers
    h, w = mask.shape
    got = {"area": [], "box": [], "major": [], "feret": []}
    for p in regionprops(regions):
        y0, x0, y1, x1 = p.bbox
        if y0 == 0 or x0 == 0 or y1 == h or x1 == w or not 0.75 * r0 <= dist[tuple(peaks[p.label - 1])] <= 1.33 * r0:
            continue
        got["area"].append(2 * np.sqrt(p.area / np.pi))
        got["box"].append(max(y1 - y0, x1 - x0))
        got["major"].append(p.axis_major_length)
        got["feret"].append(p.feret_diameter_max)
    row = {"field": name, "r0": r0 * step}
    row.update({k: float(np.median(v)) * step if len(v) >= 3 else np.nan for k, v in got.items()})
    return row


def main() -> int:
    global _SCALE
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("fields_csv", type=Path, help="bench_txl.py --fields-csv output (--sample-size 1)")
    p.add_argument("--split", default="train")
    p.add_argument("--threshold-scale", type=float, default=1.0)
    p.add_argument("--jobs", type=int, default=2)
    args = p.parse_args()
    _SCALE = args.threshold_scale
    ref = pd.read_csv(args.fields_csv)
    with Pool(args.jobs) as pool:
        rows = pool.map(readings, [(args.split, n) for n in ref.field], chunksize=8)
    d = ref.merge(pd.DataFrame(rows), on="field")
    d = d[d.own_boxes & (d["err"].isna() if "err" in d else True)].copy()
    d["ref"] = 7.5 / d.mpp_boxes  # the box diameter the reference mpp stands for, px
    print(f"{len(d)} fields with their own red-cell boxes, threshold x {_SCALE:g}")
    ways = {k: d[k] for k in ("r0", "area", "box", "major", "feret")}
    ways["r0 x area"] = np.sqrt(d.r0 * d.area)
    ways["r0 x box"] = np.sqrt(d.r0 * d.box)
    for name, x in ways.items():
        guess = np.nanmedian(d.ref / x)
        within = lambda f, idx=d.index: int((np.abs(f * x[idx] / d.ref[idx] - 1) <= 0.1).sum())  # noqa: E731
        best = max(np.linspace(guess * 0.85, guess * 1.15, 61), key=within)
        per = " ".join(f"{src} {np.nanmedian(g.ref / x[g.index]) / best:.3f} {within(best, g.index)}/{len(g)}"
                       for src, g in d.groupby("source"))
        print(f"  {name:<10} factor {best:.3f}  within 10 % {within(best)}/{len(d)} | {per}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
