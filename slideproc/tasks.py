"""The functions Dask runs on workers: plain arguments in, plain arrays/tables out.

Each takes small picklable arguments (a SourceRef, a TileSpec, the config) and
opens what it needs itself (readers cached per worker thread, the model cached
per worker process by its sha256), so a task can run anywhere and be re-run
after a worker dies without side effects.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd

from .config import RunConfig
from .sources import SourceRef, cached_reader
from .tiling import Geometry, TileSpec


def plan_task(ref: SourceRef, cfg: RunConfig):
    """Open a source, resolve its mpp, find the foreground: (geometry, tiles, stain)."""
    from .detect import plan_source_and_stain

    return plan_source_and_stain(ref, cfg)


def detect_task(ref: SourceRef, tile: TileSpec, geo: Geometry, cfg: RunConfig, stain=None) -> pd.DataFrame:
    """Cells whose centroid this tile's core owns, level-0 coordinates of ``ref``.
    ``stain`` comes from the plan task (else the worker estimates it, once per source)."""
    from .detect import detect_tile

    return detect_tile(ref, tile, geo, cfg, stain=stain)


def crop_px_for(mpp0: float, fov_um: float, input_px: int) -> int:
    """Crop edge in pixels: the field of view at the slide's own resolution, never
    more than the model input. Crops travel between workers at this size and are
    resized on the classifying worker: 25 um at 0.25 um/px is 100 px, 9x fewer
    bytes than a 299 px model input."""
    return int(max(16, min(input_px, round(fov_um / mpp0))))


def crop_task(ref: SourceRef, mpp0: float, xs: np.ndarray, ys: np.ndarray, fov_um: float, out_px: int,
              resize_px: int | None = None) -> np.ndarray:
    """uint8 (N, out_px, out_px, 3) crops centred on level-0 (xs, ys); with
    ``resize_px``, resized to the model input here (see :func:`classify_task`)."""
    from .crops import extract_crops

    reader = cached_reader(ref)
    crops = extract_crops(reader, mpp0, np.asarray(xs), np.asarray(ys), fov_um, out_px)
    if resize_px:
        from .classify.preprocess import resize_crops

        crops = resize_crops(crops, resize_px)
    return crops


def field_group_task(refs: list[SourceRef], cfg: RunConfig, fov_um: float, input_px: int | None,
                     resize: bool = False) -> dict:
    """Detect (and, with ``input_px``, crop) a group of image fields in one task.

    A folder of small fields would otherwise cost three tasks per image (plan,
    detect, crop), each a scheduler round trip that on a small machine costs as
    much as the image's work. Returns ``cells`` (DETECT_COLUMNS plus ``_field``,
    the field's index in ``refs``, and ``_row``, the cell's row in ``crops``),
    ``geos`` (per field; None where skipped), ``skipped`` ({field: its SourceError}
    for unreadable images, which the engine may leave out of their
    sample) and ``crops`` (uint8, cells' order; None without ``input_px``).

    A missing mpp is raised, not skipped: every field of the folder lacks it.
    Crops are cut at the field's own resolution (:func:`crop_px_for`); fields of
    different resolution in one group, or every field with ``resize``, are
    resized to ``input_px`` here (see :func:`classify_task` for where and why).
    """
    from .crops import extract_crops
    from .detect import concat_cells, detect_field
    from .errors import MissingMppError, SourceError

    geos, frames, crops, skipped = [], [], [], {}
    for i, ref in enumerate(refs):
        try:
            geo, cells = detect_field(ref, cfg)
        except MissingMppError:
            raise
        except SourceError as err:
            geos.append(None)
            skipped[i] = err
            continue
        geos.append(geo)
        frames.append(cells.assign(_field=i))
        if input_px and len(cells):
            px = crop_px_for(geo.mpp0, fov_um, input_px)
            crops.append(extract_crops(cached_reader(ref), geo.mpp0, cells["x"].to_numpy(),
                                       cells["y"].to_numpy(), fov_um, px))
    cells = concat_cells(frames)
    if "_field" not in cells:
        cells["_field"] = pd.Series(dtype="int64")
    cells["_row"] = np.arange(len(cells), dtype=np.int64)
    out = None
    if input_px:
        from .classify.preprocess import resize_crops

        if resize or len({c.shape[1] for c in crops}) > 1:
            crops = [resize_crops(c, input_px) for c in crops]
        out = np.concatenate(crops) if crops else np.zeros((0, input_px, input_px, 3), np.uint8)
    return {"cells": cells, "geos": geos, "skipped": skipped, "crops": out}


def group_summary(result: dict) -> dict:
    """A field group's result less its crops: what the engine (the client) needs.
    The crops stay on the workers and go straight to the classify tasks."""
    return {k: v for k, v in result.items() if k != "crops"}


def classify_task(model_dir: str, sha256: str, parts: list, batch_size: int,
                  mixed_precision: str = "auto", return_crops: bool = False, tta_views: int = 1,
                  record_sha256: str | None = None) -> dict:
    """Calibrated probabilities for the concatenated crops, and where it ran.

    ``tta_views`` (classify.tta_views: 1, 2, 4, 8): each crop is predicted in
    that many turned/mirrored views, the probabilities averaged and then
    calibrated for that many views (classify/tta.py); the cost is that many
    forward passes.

    ``parts`` are uint8 crop arrays (:func:`crop_task`) or ``(group, start, stop)``
    slices of a :func:`field_group_task` result's crops; those not yet at the
    model input are resized here. Where the classifier is a CPU worker, that
    is the cheap place: crops travel at their native size (up to 9x fewer
    bytes). A GPU worker is one process feeding a fast card, and resizing
    there starved it (299 px on an H200: 300 cells/s against 1,500 for the bare
    model), so with GPU workers the crop-producing CPU workers resize (the
    same function, so the same pixels either way). ``sha256`` is part of the task's arguments so a changed model
    never reuses a cached predictor; the predictor itself is cached per worker
    process. ``return_crops`` also returns the model-input crops (--save-crops).
    ``record_sha256``: digest of the feature_record.npz the run started with (None: the
    model has none); a worker whose model folder holds another fails the task (ModelError).
    """
    from .classify.predict import get_predictor
    from .classify.preprocess import resize_crops

    start = time.perf_counter()
    predictor = get_predictor(model_dir, batch_size, mixed_precision, tta_views)
    if predictor.loaded.sha256 != sha256:
        from .errors import ModelError

        raise ModelError(f"{model_dir}: the model changed during the run (sha256 {sha256[:12]}...); re-run")
    record = predictor.loaded.feature_record
    if (record.sha256 if record is not None else None) != record_sha256:
        from .errors import ModelError

        # A worker reading another feature_record.npz (an old copy of the model folder, or
        # one refitted during the run) would check cells against another record.
        raise ModelError(f"{model_dir}: feature_record.npz on worker {_worker_address()} is not the one this run "
                         f"started with; give every worker the same model folder and re-run")
    arrays = [p[0]["crops"][p[1]:p[2]] if isinstance(p, tuple) else p for p in parts]
    bytes_in = sum(int(a.nbytes) for a in arrays)
    arrays = [resize_crops(a, predictor.input_size_px) for a in arrays]
    batch = np.concatenate(arrays) if len(arrays) > 1 else arrays[0]
    probs, beyond = predictor.predict_checked(batch)
    out = {
        "probabilities": np.asarray(probs, dtype=np.float32),
        # bool (N,): the cell lies beyond the model's record (classify/record_check.py); None
        # for a model without a feature record
        "beyond_record": beyond,
        "worker": _worker_address(),
        "seconds": time.perf_counter() - start,
        "n": int(len(batch)),
        "bytes_in": bytes_in,
    }
    if return_crops:
        out["crops"] = batch
    return out


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"
