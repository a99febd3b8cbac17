"""--mpp auto beside the TXL benchmark: its cost per field against detection, and Matek crops.

    python benchmarks/bench_mpp_auto.py speed   # 10 val fields each of BCCD and PBC
    python benchmarks/bench_mpp_auto.py matek --every 40 --offset 20

speed: per field, the estimate (slideproc.mpp_estimate.estimate_mpp) and the
detection at the estimated mpp, timed alternately in one process; medians and
the median ratio. matek: every Nth developer Matek crop from an offset (offset 0
was used to choose the coverage rule, offset 20 was not): refused, estimated,
and how many lie within 10 % / 20 % of the crops' 0.094 um/px.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from _util import REAL  # noqa: E402
from bench_txl import fields  # noqa: E402

from slideproc.errors import MppEstimateError  # noqa: E402
from slideproc.mpp_estimate import estimate_mpp  # noqa: E402

MATEK_MPP = 0.094


def speed() -> None:
    from slideproc.config import load_run_config
    from slideproc.detect import detect_source
    from slideproc.sources.base import SourceRef

    cfg = load_run_config(None)
    te, td = [], []
    for img, _, _, _ in fields(REAL / "txl_pbc", "val", ("BCCD", "PBC"), 10):
        rgb = np.asarray(Image.open(img).convert("RGB"))
        t = time.perf_counter()
        mpp = estimate_mpp(rgb).mpp
        te.append(time.perf_counter() - t)
        t = time.perf_counter()
        detect_source(SourceRef(str(img), img.name, "image", mpp), cfg)
        td.append(time.perf_counter() - t)
    print(f"estimate median {np.median(te):.3f} s, detect median {np.median(td):.3f} s, "
          f"ratio {np.median(np.array(te) / np.array(td)):.2f}")


def matek(every: int, offset: int) -> None:
    crops = sorted(p for p in (REAL / "matek_bm").glob("*/*.*"))[offset::every]
    vals, refused = [], 0
    for f in crops:
        try:
            vals.append(estimate_mpp(np.asarray(Image.open(f).convert("RGB"))).mpp)
        except MppEstimateError:
            refused += 1
    v = np.asarray(vals)
    print(f"{len(crops)} crops; refused {refused}; estimated {len(v)}; within 10 %: "
          f"{int((abs(v / MATEK_MPP - 1) <= 0.1).sum())}; within 20 %: {int((abs(v / MATEK_MPP - 1) <= 0.2).sum())}"
          + (f"; median {np.median(v):.4f}" if len(v) else ""))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["speed", "matek"])
    p.add_argument("--every", type=int, default=40)
    p.add_argument("--offset", type=int, default=20)
    a = p.parse_args()
    speed() if a.what == "speed" else matek(a.every, a.offset)
    return 0


if __name__ == "__main__":
    sys.exit(main())
