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


def plan_task(ref: SourceRef, cfg: RunConfig) -> tuple[Geometry, list[TileSpec]]:
    """Open a source, resolve its mpp, compute the foreground mask and the tiles."""
    from .detect import plan_source

    return plan_source(ref, cfg)


def detect_task(ref: SourceRef, tile: TileSpec, geo: Geometry, cfg: RunConfig) -> pd.DataFrame:
    """Cells whose centroid this tile's core owns, level-0 coordinates of ``ref``."""
    from .detect import detect_tile

    return detect_tile(ref, tile, geo, cfg)


def crop_px_for(mpp0: float, fov_um: float, input_px: int) -> int:
    """Crop edge in pixels: the field of view at the slide's own resolution, never
    more than the model input. Crops travel between workers at this size and are
    resized on the classifying worker: 25 um at 0.25 um/px is 100 px, 9x fewer
    bytes than a 299 px model input."""
    return int(max(16, min(input_px, round(fov_um / mpp0))))


def crop_task(ref: SourceRef, mpp0: float, xs: np.ndarray, ys: np.ndarray, fov_um: float, out_px: int) -> np.ndarray:
    """uint8 (N, out_px, out_px, 3) crops centred on level-0 (xs, ys)."""
    from .crops import extract_crops

    reader = cached_reader(ref)
    return extract_crops(reader, mpp0, np.asarray(xs), np.asarray(ys), fov_um, out_px)


def classify_task(model_dir: str, sha256: str, crops: list[np.ndarray], batch_size: int,
                  mixed_precision: str = "auto") -> dict:
    """Calibrated probabilities for the concatenated crops, and where it ran.

    ``sha256`` is part of the task's arguments so a changed model never reuses
    a cached predictor; the predictor itself is cached per worker process.
    """
    from .classify.predict import get_predictor

    start = time.perf_counter()
    batch = np.concatenate(crops) if len(crops) > 1 else crops[0]
    predictor = get_predictor(model_dir, batch_size, mixed_precision)
    if predictor.loaded.sha256 != sha256:
        from .errors import ModelError

        raise ModelError(f"{model_dir}: the model changed during the run (sha256 {sha256[:12]}...); re-run")
    probs = predictor.predict(batch)
    return {
        "probabilities": np.asarray(probs, dtype=np.float32),
        "worker": _worker_address(),
        "seconds": time.perf_counter() - start,
        "n": int(len(batch)),
        "bytes_in": int(batch.nbytes),
    }


def _worker_address() -> str:
    try:
        from distributed import get_worker

        return get_worker().address
    except (ImportError, ValueError):
        return "local"
