"""Score detections against ground-truth cell centres.

One-to-one matching by centroid distance in micrometres: every (truth, detection)
pair closer than ``max_distance_um`` is a candidate (KD-tree), and pairs are
taken closest first, each point at most once (greedy by distance; on cell
centres, which lie a cell radius apart, it equals the optimal assignment in all
but contrived cases). Then recall = matched / truth, precision = matched /
detections, F1, and the count error (detections - truth), per sample and overall.

``slideproc score-detection OUT_DIR TRUTH_CSV`` runs it on a ``detect``/``run``
output directory (cells/<sample_id>.csv) and a ``truth.csv`` from ``synth``.

Fields annotated with boxes instead (TXL-PBC: WBC / RBC / platelet boxes in YOLO
label files) are read with :func:`read_yolo_boxes`, their resolution taken from
the red-cell boxes with :func:`box_mpp`, and scored with :func:`box_hits`; the
benchmark (benchmarks/bench_txl.py) and the tests share these.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from .errors import InputError
from .store.tables import read_table


@dataclass(frozen=True)
class Score:
    n_true: int
    n_detected: int
    matched: int
    recall: float
    precision: float
    f1: float
    count_error: int  # detections - truth
    mean_distance_um: float  # over matched pairs

    def as_dict(self) -> dict:
        return asdict(self)


def match_points(truth_um: np.ndarray, det_um: np.ndarray, max_distance_um: float) -> np.ndarray:
    """(K, 2) int indices (truth, detection) of one-to-one matches within ``max_distance_um``."""
    from scipy.spatial import cKDTree

    truth_um = np.asarray(truth_um, np.float64).reshape(-1, 2)
    det_um = np.asarray(det_um, np.float64).reshape(-1, 2)
    if len(truth_um) == 0 or len(det_um) == 0:
        return np.zeros((0, 2), np.int64)
    pairs = cKDTree(truth_um).sparse_distance_matrix(cKDTree(det_um), max_distance_um, output_type="ndarray")
    if len(pairs) == 0:
        return np.zeros((0, 2), np.int64)
    order = np.lexsort((pairs["j"], pairs["i"], pairs["v"]))  # closest first, ties stable
    used_t = np.zeros(len(truth_um), bool)
    used_d = np.zeros(len(det_um), bool)
    out = []
    for k in order:
        i, j = int(pairs["i"][k]), int(pairs["j"][k])
        if not used_t[i] and not used_d[j]:
            used_t[i] = used_d[j] = True
            out.append((i, j))
    return np.asarray(out, np.int64).reshape(-1, 2)


def score(truth_um: np.ndarray, det_um: np.ndarray, max_distance_um: float = 4.0) -> Score:
    truth_um = np.asarray(truth_um, np.float64).reshape(-1, 2)
    det_um = np.asarray(det_um, np.float64).reshape(-1, 2)
    m = match_points(truth_um, det_um, max_distance_um)
    return _score_from(len(truth_um), len(det_um), m, truth_um, det_um)


def _score_from(n_true: int, n_det: int, m: np.ndarray, truth_um, det_um) -> Score:
    k = len(m)
    recall = k / n_true if n_true else (1.0 if n_det == 0 else 0.0)
    precision = k / n_det if n_det else (1.0 if n_true == 0 else 0.0)
    f1 = 2 * recall * precision / (recall + precision) if recall + precision > 0 else 0.0
    dist = float(np.mean(np.hypot(*(truth_um[m[:, 0]] - det_um[m[:, 1]]).T))) if k else float("nan")
    return Score(n_true, n_det, k, recall, precision, f1, n_det - n_true, dist)


def score_tables(truth: pd.DataFrame, detections: pd.DataFrame, mpp: dict | float,
                 max_distance_um: float = 4.0) -> pd.DataFrame:
    """Per-sample scores and an ``overall`` row (pooled counts).

    Both tables hold sample_id, source, x, y (level-0 px of ``source``); points
    are matched only within the same (sample_id, source). ``mpp``: level-0
    um/px, one for all, or a dict keyed by (sample_id, source) or source.
    """
    for name, df in (("truth", truth), ("detections", detections)):
        missing = {"sample_id", "source", "x", "y"} - set(df.columns)
        if missing:
            raise InputError(f"{name} table lacks column(s) {', '.join(sorted(missing))}")
    rows = []
    tot = {"n_true": 0, "n_det": 0, "matched": 0, "dist_sum": 0.0}
    samples = sorted(set(truth["sample_id"].astype(str)) | set(detections["sample_id"].astype(str)))
    t_groups = {k: g for k, g in truth.assign(sample_id=truth["sample_id"].astype(str)).groupby(["sample_id", "source"])}
    d_groups = {k: g for k, g in detections.assign(sample_id=detections["sample_id"].astype(str)).groupby(["sample_id", "source"])}
    for sample in samples:
        keys = sorted({k for k in list(t_groups) + list(d_groups) if k[0] == sample}, key=str)
        n_t = n_d = k_m = 0
        dsum = 0.0
        for key in keys:
            src = key[1]
            f = mpp if isinstance(mpp, (int, float)) else mpp.get(key, mpp.get(src))
            t = t_groups.get(key)
            d = d_groups.get(key)
            t_um = t[["x", "y"]].to_numpy(np.float64) * f if t is not None else np.zeros((0, 2))
            d_um = d[["x", "y"]].to_numpy(np.float64) * f if d is not None else np.zeros((0, 2))
            m = match_points(t_um, d_um, max_distance_um)
            n_t += len(t_um)
            n_d += len(d_um)
            k_m += len(m)
            if len(m):
                dsum += float(np.sum(np.hypot(*(t_um[m[:, 0]] - d_um[m[:, 1]]).T)))
        rows.append(_row(sample, n_t, n_d, k_m, dsum))
        tot["n_true"] += n_t
        tot["n_det"] += n_d
        tot["matched"] += k_m
        tot["dist_sum"] += dsum
    rows.append(_row("overall", tot["n_true"], tot["n_det"], tot["matched"], tot["dist_sum"]))
    return pd.DataFrame(rows)


def _row(sample: str, n_t: int, n_d: int, k: int, dsum: float) -> dict:
    recall = k / n_t if n_t else (1.0 if n_d == 0 else 0.0)
    precision = k / n_d if n_d else (1.0 if n_t == 0 else 0.0)
    f1 = 2 * recall * precision / (recall + precision) if recall + precision > 0 else 0.0
    return {"sample_id": sample, "n_true": n_t, "n_detected": n_d, "matched": k,
            "recall": recall, "precision": precision, "f1": f1, "count_error": n_d - n_t,
            "mean_distance_um": dsum / k if k else float("nan")}


# ----------------------------------------------------------------------------
# files
# ----------------------------------------------------------------------------
def read_detections(out_dir: str | Path) -> pd.DataFrame:
    """All cells/<sample_id>.csv of a ``detect``/``run`` output directory."""
    cells = Path(out_dir) / "cells"
    files = sorted(cells.glob("*.csv")) if cells.is_dir() else []
    if not files:
        raise InputError(f"{out_dir}: no cells/<sample_id>.csv found; run `slideproc detect ... --out {out_dir}` first")
    frames = []
    for f in files:
        df = read_table(f)
        if "sample_id" not in df.columns:
            df["sample_id"] = f.stem
        frames.append(df)
    return pd.concat(frames, ignore_index=True)


def read_truth(path: str | Path) -> pd.DataFrame:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: truth file not found; give the truth.csv that `slideproc synth` wrote")
    df = read_table(path)
    missing = {"sample_id", "source", "x", "y"} - set(df.columns)
    if missing:
        raise InputError(f"{path}: needs columns sample_id,source,x,y; missing {', '.join(sorted(missing))}")
    return df


def _manifest_mpp(base: Path) -> dict[str, float]:
    """sample_id -> mpp from a manifest.csv beside truth.csv (image fields carry none)."""
    path = base / "manifest.csv"
    if not path.is_file():
        return {}
    df = read_table(path)
    if "mpp" not in df.columns:
        return {}
    return {str(k): float(v) for k, v in zip(df["sample_id"], df["mpp"]) if pd.notna(v) and v > 0}


def source_mpp(truth_path: str | Path, pairs, fallback: float | None = None) -> dict[tuple[str, str], float]:
    """Level-0 um/px of each (sample_id, source) named in truth.csv or the detections.

    The file's own metadata first (looked up beside truth.csv, or anywhere
    below it: synth writes slides/<name> and folders/<sample>/<name>), then
    the mpp column of a manifest.csv there, then ``fallback`` (--mpp).
    """
    from .sources import open_path

    base = Path(truth_path).parent
    manifest = _manifest_mpp(base)
    out = {}
    for sample, src in sorted(set(pairs)):
        mpp = None
        path = Path(src) if Path(src).is_absolute() else base / src
        if not path.exists():
            found = sorted(base.rglob(Path(src).name), key=lambda q: (sample not in q.parts, str(q)))
            path = found[0] if found else path
        if path.exists():
            try:
                reader = open_path(path)
                mpp = reader.mpp
                reader.close()
            except Exception:  # unreadable here: the manifest, --mpp or the error below decides
                mpp = None
        mpp = mpp or manifest.get(sample) or fallback
        if not mpp:
            raise InputError(
                f"{path}: no resolution (um per pixel) known for this source; give it with --mpp UM"
            )
        out[(sample, src)] = float(mpp)
    return out


def score_output(out_dir: str | Path, truth_csv: str | Path, max_distance_um: float = 4.0,
                 mpp: float | None = None) -> pd.DataFrame:
    truth = read_truth(truth_csv)
    det = read_detections(out_dir)
    pairs = [(str(a), str(b)) for df in (truth, det) for a, b in zip(df["sample_id"], df["source"])]
    mpps = source_mpp(truth_csv, pairs, mpp)
    return score_tables(truth, det, mpps, max_distance_um)


# ----------------------------------------------------------------------------
# boxes (fields annotated with WBC / RBC / platelet boxes, not cell centres)
# ----------------------------------------------------------------------------
BOX_CLASSES = ("WBC", "RBC", "Platelet")


def box_hits(points: np.ndarray, boxes: np.ndarray, classes: np.ndarray) -> dict[str, tuple[int, int]]:
    """Detections scored against class boxes of one field: ``{class: (hits, boxes)}``.

    ``points`` (N, 2) detection centres x, y and ``boxes`` (M, 4) x0, y0, x1, y1,
    both in the field's pixels; ``classes`` (M,) str, one of :data:`BOX_CLASSES`.
    A WBC box is hit when a detection lies in it (inclusive edges); an RBC or
    platelet box is *falsely* hit when a detection outside every WBC box lies
    in it (a platelet or red cell lying on a white cell is not a false hit, its
    white cell is). Peripheral blood: the nucleated cells are the WBCs.
    """
    pts = np.asarray(points, np.float64).reshape(-1, 2)
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    classes = np.asarray(classes)
    inside = ((pts[None, :, 0] >= boxes[:, None, 0]) & (pts[None, :, 0] <= boxes[:, None, 2])
              & (pts[None, :, 1] >= boxes[:, None, 1]) & (pts[None, :, 1] <= boxes[:, None, 3]))
    is_wbc = classes == "WBC"
    in_wbc = inside[is_wbc].any(axis=0)
    out = {}
    for c in BOX_CLASSES:
        sel = classes == c
        hit = inside[sel] if c == "WBC" else inside[sel] & ~in_wbc[None, :]
        out[c] = (int(hit.any(axis=1).sum()), int(sel.sum()))
    return out


# TXL-PBC's four sources told apart by field size (px); every other size is PBC (CellaVision
# fields of ~360 x 363 px). Source: the data set's description (shared data SOURCES).
TXL_SOURCES = {(640, 480): "BCCD", (416, 416): "BCD", (575, 575): "Raabin"}


def txl_source(size: tuple[int, int]) -> str:
    """The TXL-PBC source ("BCCD", "BCD", "PBC" or "Raabin") of a field from its (width, height) in px."""
    return TXL_SOURCES.get(tuple(size), "PBC")


def read_yolo_boxes(label: str | Path, w: int, h: int,
                    class_names: tuple[str, ...] = BOX_CLASSES) -> tuple[np.ndarray, np.ndarray]:
    """Boxes of a YOLO label file (one "class cx cy bw bh" line per box, fractions of the field).

    Returns float64 (M, 4) x0, y0, x1, y1 in the field's pixels (``w`` x ``h``) and object
    (M,) class names (``class_names[class]``); (0, 4) and (0,) for an empty file.
    Raises OSError for a missing file, ValueError for a malformed one.
    """
    label = Path(label)
    rows = np.loadtxt(label, ndmin=2) if label.stat().st_size else np.zeros((0, 5))
    rows = rows.reshape(-1, 5)
    cx, cy, bw, bh = rows[:, 1] * w, rows[:, 2] * h, rows[:, 3] * w, rows[:, 4] * h
    boxes = np.stack([cx - bw / 2, cy - bh / 2, cx + bw / 2, cy + bh / 2], axis=1)
    return boxes, np.asarray(class_names, dtype=object)[rows[:, 0].astype(int)]


def box_mpp(boxes: np.ndarray, classes: np.ndarray, w: int, h: int, min_boxes: int = 3) -> float | None:
    """A field's mpp (um/px) from its red-cell boxes: 7.5 um
    (:data:`slideproc.mpp_estimate.RBC_DIAMETER_UM`) over the median longer side of the
    "RBC" boxes clear of the field's edge (by more than 2 px; a cut cell's box is short).
    None when fewer than ``min_boxes`` such boxes. How the TXL-PBC benchmark's reference
    resolution is set (BENCHMARKS.md)."""
    from .mpp_estimate import RBC_DIAMETER_UM

    rbc = np.asarray(boxes, np.float64).reshape(-1, 4)[np.asarray(classes) == "RBC"]
    clear = (rbc[:, 0] > 2) & (rbc[:, 1] > 2) & (rbc[:, 2] < w - 2) & (rbc[:, 3] < h - 2)
    sides = np.maximum(rbc[:, 2] - rbc[:, 0], rbc[:, 3] - rbc[:, 1])[clear]
    return RBC_DIAMETER_UM / float(np.median(sides)) if len(sides) >= max(1, min_boxes) else None
