"""The developer Matek crops split once, for every benchmark: a development part and a test part.

    python benchmarks/matek_split.py OUT_DIR [--data ../shared/data/real/matek_bm]

writes OUT_DIR/dev/<CLASS>/ and OUT_DIR/test/<CLASS>/ as symbolic links to the crops (the
class-folder layout that `slideproc train` and `slideproc evaluate` read), and
OUT_DIR/split.csv (path, class, part).

The test part is what accuracy, calibration and differential figures are reported on: no
training run, no choice of recipe, threshold or calibration method may look at it. Training
and model selection use the dev part only (`train` cuts its own validation split from it).

Rule: a crop is in the test part when the first hex digit of sha1("<CLASS>/<file name>") is
0-3 (a quarter of each class, ~100 of 400), so the split is the same on every machine, does
not depend on the order files are listed in, and a crop added later never moves an old one.
The Matek crops carry no patient or source-image id, so the split cannot be grouped by
patient (Matek et al. 2021 do not publish one); near-identical crops of one cell were not
found (no two files share a sha256). Classes with fewer than `--min-per-class` crops (the
single-crop classes) are left out of both parts.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import os
from pathlib import Path

from _util import REAL

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"}


def part_of(cls: str, name: str) -> str:
    """'test' for a quarter of the crops chosen by a hash of their class and name, else 'dev'."""
    digit = hashlib.sha1(f"{cls}/{name}".encode()).hexdigest()[0]
    return "test" if digit in "0123" else "dev"


def split(data: Path, out: Path, min_per_class: int = 100) -> dict[str, dict[str, int]]:
    """Link every crop of `data` into out/dev or out/test; returns counts per part and class."""
    counts: dict[str, dict[str, int]] = {"dev": {}, "test": {}}
    rows = []
    for cls_dir in sorted(p for p in data.iterdir() if p.is_dir()):
        files = sorted(f for f in cls_dir.rglob("*") if f.suffix.lower() in IMAGE_SUFFIXES)
        if len(files) < min_per_class:
            continue
        for f in files:
            part = part_of(cls_dir.name, f.name)
            dest = out / part / cls_dir.name / f.name
            dest.parent.mkdir(parents=True, exist_ok=True)
            if not dest.exists():
                os.symlink(f.resolve(), dest)
            counts[part][cls_dir.name] = counts[part].get(cls_dir.name, 0) + 1
            rows.append((str(f.resolve()), cls_dir.name, part))
    with open(out / "split.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "class", "part"])
        w.writerows(rows)
    return counts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--data", type=Path, default=REAL / "matek_bm")
    ap.add_argument("--min-per-class", type=int, default=100)
    args = ap.parse_args()
    counts = split(args.data, args.out, args.min_per_class)
    for part, per in counts.items():
        print(part, sum(per.values()), dict(sorted(per.items())))


if __name__ == "__main__":
    main()
