"""Detection across four microscopes, cameras and stains: the TXL-PBC fields (issue 15).

    python benchmarks/bench_txl.py [--split val] [--config CONFIG] [--limit N] [--jobs 2]

TXL-PBC (../shared/data/real/txl_pbc, SOURCES.md) holds peripheral-blood fields
from four public sets, told apart by their size: BCCD 640x480, BCD 416x416,
PBC (CellaVision) ~360x363, Raabin-WBC 575x575. Labels are YOLO boxes, classes
0 WBC, 1 RBC, 2 platelet. Per source it reports

- the WBC hit rate: WBC boxes holding a detection (target >= 95 %);
- the RBC and platelet false-hit rates: boxes holding a detection that lies
  outside every WBC box (targets <= 5 % and <= 10 %);

with each field's mpp from its own red-cell boxes: 7.5 um over the median
longer side of the RBC boxes clear of the field's edge (a field with fewer
than 3 such boxes takes its source's median), and with ``--mpp auto`` each
field's mpp estimated from its red cells as ``--mpp auto`` does
(slideproc.mpp_estimate): then also how often the estimate lies within 10 %
(and 20 %) of the field's own box mpp, refused fields counting as misses.

``--config`` runs detection with a run config (e.g. configs/od-red-channel.yaml,
the single nuclear channel that was the default before issue 15).
Split: thresholds were tuned on ``train`` only; figures are reported on ``val``.
``--set KEY=VALUE`` overrides config keys (exploration). ``--fields-csv`` writes
one row per field for a closer look.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REAL, record  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from slideproc.detection_eval import BOX_CLASSES, box_mpp, read_yolo_boxes, txl_source  # noqa: E402

SOURCES = ("BCCD", "BCD", "PBC", "Raabin")
CLASS_NAMES = BOX_CLASSES


def fields(data: Path, split: str, sources, limit: int | None):
    """[(image, label, source, (w, h))], every k-th field of each source when ``limit`` is set."""
    from PIL import Image

    per = defaultdict(list)
    for img in sorted((data / "images" / split).iterdir()):
        with Image.open(img) as im:
            size = im.size
        src = txl_source(size)
        if src in sources:
            per[src].append((img, data / "labels" / split / (img.stem + ".txt"), src, size))
    out = []
    for src in sources:
        lst = per[src]
        if limit and len(lst) > limit:
            lst = [lst[i] for i in np.linspace(0, len(lst) - 1, limit).round().astype(int)]
        out += lst
    return out


def _one(job):
    """Detect one field at one resolution; its box hits (and estimate, for auto)."""
    img, label, src, (w, h), mode, mpp_boxes, own_boxes, overrides, config = job
    from slideproc.config import load_run_config, with_overrides
    from slideproc.detect import detect_source
    from slideproc.detection_eval import box_hits
    from slideproc.sources.base import SourceRef

    cfg = load_run_config(config)
    cfg = with_overrides(cfg, overrides) if overrides else cfg
    boxes, classes = read_yolo_boxes(label, w, h)
    row = {"field": img.name, "source": src, "mode": mode, "mpp_boxes": mpp_boxes, "own_boxes": own_boxes}
    mpp = mpp_boxes
    if mode == "auto":  # what --mpp auto does: the field's resolution from its red cells
        import numpy as np
        from PIL import Image

        from slideproc.errors import MppEstimateError
        from slideproc.mpp_estimate import estimate_mpp

        try:
            mpp = estimate_mpp(np.asarray(Image.open(img).convert("RGB")), where=img.name).mpp
        except MppEstimateError as err:
            # A refused field fails its sample: its white cells count as missed.
            row.update(error=str(err), detections=0)
            for c in CLASS_NAMES:
                row[f"{c}_hit"], row[f"{c}_n"] = 0, int((classes == c).sum())
            return row
    row["mpp"] = mpp
    df = detect_source(SourceRef(str(img), img.name, "image", mpp), cfg)
    hits = box_hits(df[["x", "y"]].to_numpy(), boxes, classes)
    row["detections"] = len(df)
    for c, (k, n) in hits.items():
        row[f"{c}_hit"], row[f"{c}_n"] = k, n
    return row


def summarise(rows: list[dict]) -> dict:
    out = {}
    for (src, mode), grp in sorted(_groups(rows).items()):
        ok = [r for r in grp if "error" not in r]
        s = {"fields": len(grp), "refused": len(grp) - len(ok), "detections": sum(r["detections"] for r in ok)}
        for c in CLASS_NAMES:
            # over every field: a refused one (auto) has no hit
            k, n = sum(r.get(f"{c}_hit", 0) for r in grp), sum(r.get(f"{c}_n", 0) for r in grp)
            s[c] = f"{k}/{n}"
            s[f"{c}_rate"] = round(k / n, 4) if n else None
        if mode == "auto":
            # The estimate against the field's own box mpp (fields with >= 3 clear red-cell boxes);
            # a refused field counts as a miss.
            own = [r for r in grp if r["own_boxes"]]
            s["mpp_within_10pct"] = f"{sum('error' not in r and abs(r['mpp'] / r['mpp_boxes'] - 1) <= 0.10 for r in own)}/{len(own)}"
            s["mpp_within_20pct"] = f"{sum('error' not in r and abs(r['mpp'] / r['mpp_boxes'] - 1) <= 0.20 for r in own)}/{len(own)}"
            ratios = [r["mpp"] / r["mpp_boxes"] for r in own if "error" not in r]
            s["mpp_ratio_median"] = round(float(np.median(ratios)), 3) if ratios else None
            s.update(reference_spread(own))
        s["targets_met"] = bool(s["WBC_rate"] is not None and s["WBC_rate"] >= 0.95
                                and (s["RBC_rate"] or 0) <= 0.05 and (s["Platelet_rate"] or 0) <= 0.10)
        out[f"{src}/{mode}"] = s
    return out


def reference_spread(own: list[dict], group: int = 10) -> dict:
    """How far the box mpp itself lets an estimate agree, and what pooling would give.

    ``box_within_10pct_of_source_median``: fields whose box mpp lies within 10 %
    of their source's median box mpp. A source of one microscope and camera has
    one true resolution, so this is about the share of fields that even an exact
    per-source value would get within 10 % of the box mpp: the boxes' own spread.
    ``pooled_within_10pct``: the fields with their own box mpp, in runs of
    ``group`` (file order, the names are random; the last run may be shorter),
    each field given exp(median(log estimate)) of its run (with an even count,
    the geometric mean of the two middle estimates), as if a sample's fields
    shared one estimate; refused fields take the pooled value.
    """
    boxes = np.array([r["mpp_boxes"] for r in own])
    med = float(np.median(boxes)) if len(boxes) else float("nan")
    pooled_ok = 0
    for i in range(0, len(own), group):
        run = own[i:i + group]
        est = [np.log(r["mpp"]) for r in run if "error" not in r]
        if est:
            pooled = float(np.exp(np.median(est)))
            pooled_ok += sum(abs(pooled / r["mpp_boxes"] - 1) <= 0.10 for r in run)
    return {"box_within_10pct_of_source_median": f"{int(np.sum(np.abs(boxes / med - 1) <= 0.10))}/{len(own)}",
            "pooled_within_10pct": f"{pooled_ok}/{len(own)}"}


def _groups(rows):
    g = defaultdict(list)
    for r in rows:
        g[(r["source"], r["mode"])].append(r)
    return g


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=REAL / "txl_pbc")
    p.add_argument("--split", default="val", choices=["train", "val"])
    p.add_argument("--sources", nargs="+", default=list(SOURCES), choices=SOURCES)
    p.add_argument("--mpp", nargs="+", default=["boxes"], choices=["boxes", "auto"],
                   help="boxes: each field's mpp from its red-cell boxes; auto: estimated as --mpp auto does")
    p.add_argument("--limit", type=int, default=None, help="at most N fields per source, spread evenly")
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--config", type=Path, default=None, help="run config (default: the packaged default)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. segment.min_nuclear_contrast=0.05 (exploration)")
    p.add_argument("--fields-csv", type=Path, default=None)
    p.add_argument("--no-record", action="store_true", help="print only, do not append to benchmarks/results")
    args = p.parse_args()
    import yaml

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    todo = fields(args.data, args.split, args.sources, args.limit)
    # Box mpp per field; fields with too few clear red cells take their source's median.
    mpps = []
    for img, label, src, (w, h) in todo:
        mpps.append(box_mpp(*read_yolo_boxes(label, w, h), w, h))
    median = {s: float(np.median([m for m, t in zip(mpps, todo) if t[2] == s and m])) for s in args.sources
              if any(m for m, t in zip(mpps, todo) if t[2] == s)}
    jobs = [(img, label, src, size, mode, m or median[src], m is not None, overrides, args.config)
            for mode in args.mpp for (img, label, src, size), m in zip(todo, mpps)]
    if args.jobs > 1:
        from multiprocessing import get_context

        with get_context("spawn").Pool(args.jobs) as pool:
            rows = pool.map(_one, jobs, chunksize=4)
    else:
        rows = [_one(j) for j in jobs]
    if args.fields_csv:
        import pandas as pd

        pd.DataFrame(rows).to_csv(args.fields_csv, index=False)
    summary = summarise(rows)
    data = {"split": args.split, "limit": args.limit, "config": str(args.config or "default"),
            "overrides": overrides, "per_source": summary}
    if args.no_record:
        print(json.dumps(data, indent=1))
    else:
        record("txl_detection", data)
    for key, s in summary.items():
        extra = (f"  mpp within 10 % {s['mpp_within_10pct']} (20 %: {s['mpp_within_20pct']}), refused {s['refused']};"
                 f" box mpp within 10 % of the source's median {s['box_within_10pct_of_source_median']},"
                 f" pooled by 10 fields within 10 % {s['pooled_within_10pct']}"
                 if "mpp_within_10pct" in s else "")
        print(f"{key:14s} WBC {s['WBC']:>9s}  RBC false {s['RBC']:>9s}  platelet false {s['Platelet']:>7s}"
              f"  dets {s['detections']}{extra}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
