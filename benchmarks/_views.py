"""Raw softmax outputs of a MODEL_DIR in all 8 test-time views, cached (experiment helper).

``validation_views(model_dir)`` returns (views (8, N, C), labels (N,), classes)
for the model's own validation split: from MODEL_DIR/validation_views.npz when
training wrote it, else predicted from split.csv. ``folder_views(model_dir,
data_dir)`` does the same for a class-folder data set. Predictions are cached
under /tmp/slideproc-views/ keyed by the model's sha256 and the file list, so
several experiments on the same models pay for the network once.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np

CACHE = Path("/tmp/slideproc-views")


def _predict(model_dir: Path, paths: list[str], tag: str) -> np.ndarray:
    from slideproc.classify.loading import load_model_dir
    from slideproc.classify.predict import Predictor
    from slideproc.pipeline import iter_crops

    loaded = load_model_dir(model_dir)
    key = hashlib.sha256((loaded.sha256 + "\n".join(paths)).encode()).hexdigest()[:16]
    cache = CACHE / f"{Path(model_dir).name}-{tag}-{key}.npy"
    if cache.is_file():
        return np.load(cache)
    predictor = Predictor(loaded, batch_size=32, mixed_precision="float32")
    views = np.concatenate([predictor.predict_views(x, 8) for x in iter_crops(paths, loaded.input_size_px, 32, 2)],
                           axis=1)
    CACHE.mkdir(parents=True, exist_ok=True)
    np.save(cache, views)
    return views


def validation_views(model_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    model_dir = Path(model_dir)
    npz = model_dir / "validation_views.npz"
    if npz.is_file():
        d = np.load(npz)
        return d["probabilities"], d["labels"], [str(c) for c in d["classes"]]
    from slideproc.classify.loading import load_model_dir

    classes = list(load_model_dir(model_dir).labels)
    rows = [r for r in csv.DictReader(open(model_dir / "split.csv")) if r["subset"] == "val"]
    y = np.array([classes.index(r["class"]) for r in rows])
    return _predict(model_dir, [r["path"] for r in rows], "val"), y, classes


def folder_views(model_dir: Path, data_dir: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    from slideproc.classify.loading import load_model_dir
    from slideproc.datasets import load_eval_set

    classes = list(load_model_dir(model_dir).labels)
    data = load_eval_set(Path(data_dir), tuple(classes))
    return _predict(model_dir, [str(p) for p in data.paths], "folder"), data.labels, classes
