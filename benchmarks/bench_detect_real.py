"""Detection's guard rails on real images (issues 3 and 15): Matek crop centres, BCCD boxes, H&E dots.

    python benchmarks/bench_detect_real.py [matek dev] [matek held] [bccd] [he] [--config CONFIG]

- ``matek dev``: the developer crops, the first 160 of BLA, EOS, LYT, MON, NGS,
  NIF, PMO in ../shared/data/real/MANIFEST.csv order and the single crops of the
  rarer classes (1,126), each crop a field at 0.095 um/px: a detection within
  5 um of the crop centre. ``matek held``: crops 161-400 of those seven classes
  (1,680), never looked at for a choice.
- ``bccd``: the 40 BCCD fields at 0.069 um/px (mpp from the red-cell boxes):
  WBC boxes holding a detection, RBC / platelet boxes holding one outside every
  WBC box (``detection_eval.box_hits``).
- ``he``: the two bone-marrow H&E fields (MICCAI 2015) at 0.35 um/px against
  their cell-centre dots: recall, precision, F1 at 4 um (another stain).

``--config`` runs them with a run config (e.g. configs/od-red-channel.yaml).
"""

from __future__ import annotations

import argparse
import csv
import sys
import xml.etree.ElementTree as ET
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REAL  # noqa: E402

LARGE = ("BLA", "EOS", "LYT", "MON", "NGS", "NIF", "PMO")
MATEK_MPP, BCCD_MPP, HE_MPP = 0.095, 0.069, 0.35


def _detect(path: Path, cfg):
    from slideproc.detect import detect_source
    from slideproc.sources.base import SourceRef

    return detect_source(SourceRef(str(path), path.name, "image", None), cfg)


def matek(cfg, part: str) -> dict:
    """Crops with a detection within 5 um of the centre, per class and in all."""
    rows = [r["file"] for r in csv.DictReader(open(REAL / "MANIFEST.csv")) if r["file"].startswith("matek_bm/")]
    by = defaultdict(list)
    for f in rows:
        by[f.split("/")[1]].append(f)
    lo, hi = (0, 160) if part == "dev" else (160, 400)
    files = [f for c in LARGE for f in by[c][lo:hi]]
    if part == "dev":
        files += [f for c, fs in by.items() if c not in LARGE and c != "ART" and len(fs) < 100 for f in fs]
    hits = defaultdict(lambda: [0, 0])
    for f in files:
        df = _detect(REAL / f, cfg)
        h = hits[f.split("/")[1]]
        h[0] += bool(len(df)) and bool((np.hypot(df.x - 124.5, df.y - 124.5) * MATEK_MPP <= 5.0).any())
        h[1] += 1
    total = [sum(h[0] for h in hits.values()), sum(h[1] for h in hits.values())]
    return {"crops_hit": f"{total[0]}/{total[1]}", "per_class": {c: f"{a}/{b}" for c, (a, b) in hits.items()}}


def bccd(cfg) -> dict:
    from slideproc.detection_eval import box_hits

    tot = defaultdict(lambda: [0, 0])
    for xml in sorted((REAL / "bccd" / "Annotations").glob("*.xml")):
        objs = ET.parse(xml).findall("object")
        boxes = np.array([[float(o.find("bndbox").find(k).text) for k in ("xmin", "ymin", "xmax", "ymax")]
                          for o in objs])
        classes = np.array([{"Platelets": "Platelet"}.get(o.find("name").text, o.find("name").text) for o in objs])
        df = _detect(REAL / "bccd" / "JPEGImages" / (xml.stem + ".jpg"), cfg)
        for c, (k, n) in box_hits(df[["x", "y"]].to_numpy(), boxes, classes).items():
            tot[c][0] += k
            tot[c][1] += n
    return {c: f"{k}/{n}" for c, (k, n) in tot.items()}


def he(cfg) -> dict:
    import pandas as pd

    from slideproc.detection_eval import score_tables

    truth, det = [], []
    for png in sorted((REAL / "bm_he_miccai2015").glob("BM_GRAZ_HE_*_01.png")):
        dots = np.loadtxt(png.with_name(png.stem + "_dots.txt"))
        truth.append(pd.DataFrame({"sample_id": "he", "source": png.name, "x": dots[:, 0], "y": dots[:, 1]}))
        det.append(_detect(png, cfg).assign(sample_id="he"))
    s = score_tables(pd.concat(truth), pd.concat(det), HE_MPP, 4.0).iloc[-1]
    return {k: round(float(s[k]), 3) for k in ("recall", "precision", "f1")}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", nargs="*", default=["matek", "dev", "matek", "held", "bccd", "he"])
    p.add_argument("--config", type=Path, default=None)
    args = p.parse_args()
    from slideproc.config import load_run_config, with_overrides

    base = load_run_config(args.config)
    words = list(args.what)
    while words:
        w = words.pop(0)
        if w == "matek":
            part = words.pop(0) if words and words[0] in ("dev", "held") else "dev"
            cfg = with_overrides(base, {"source.fallback_mpp_um": MATEK_MPP})
            print(f"matek {part}:", matek(cfg, part))
        elif w == "bccd":
            print("bccd:", bccd(with_overrides(base, {"source.fallback_mpp_um": BCCD_MPP})))
        elif w == "he":
            print("he:", he(with_overrides(base, {"source.fallback_mpp_um": HE_MPP})))
        else:
            p.error(f"unknown check {w!r}: matek [dev|held], bccd, he")
    return 0


if __name__ == "__main__":
    sys.exit(main())
