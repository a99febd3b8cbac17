"""Do a sample's cells look like the crops the model was characterised on?

The adjusted differential corrects for a changed class mix (prior-probability
shift) using the model's record of its errors on validation crops. It cannot
correct for cells that look unlike those crops: another lab's stain, camera,
white balance or preparation (covariate shift). There the classifier errs in
ways the record never saw, and both the shares and their intervals are wrong
while the confidences look as usual. Measured (BENCHMARKS.md, "cells unlike the
record"): a model trained on Matek marrow crops called 29 of 29 white cells of
30 Raabin-WBC blood fields eosinophils (adjusted 97 %, interval 83-100 %); on
BCCD's labelled white-cell crops its top-1 was 0.04 at the same mean confidence
as on its own test crops.

The check: each cell's pooled backbone features (the 1536 values before the
softmax head) are projected on the first ``components`` principal axes of the
record crops' features; what the projection leaves out (the residual norm) is
small for cells like the record's and large for cells unlike them. This is the
residual score of ViM (Wang et al. 2022, "ViM: Out-Of-Distribution with
Virtual-logit Matching", CVPR); here without the virtual logit, as a per-cell
distance. On this model family the residual separated other sources far
better than a class-conditional Mahalanobis distance in the same principal
subspace (Lee et al. 2018), which flagged none of them (measured, BENCHMARKS.md).

A cell is *beyond the record* when its residual exceeds the ``quantile``
(0.95) of the record crops predicted as the same class, each record crop
scored out-of-fold (``folds``-fold, so a crop never scores against axes fitted
on itself). About 5 % of crops like the record's are beyond it, and 6-13 % of
the cells the pipeline cuts from fields like them (measured, BENCHMARKS.md).
A sample is flagged ``unlike_record`` when the lower end of the exact 95 %
interval of its share beyond the record lies above :data:`SHIFT_LIMIT` (20 %):
with few cells the flag needs a clear excess, with many a smaller one
suffices. Not 10 %: cells cut from fields by the pipeline (neighbours cut by
the field edge, white margin) are less like the record's crops than the crops
themselves, and held-out Matek crops run through the whole pipeline had 6-13 %
of their cells beyond the record (3 % of the same crops classified whole).

Storage: ``MODEL_DIR/feature_record.npz`` (numpy arrays only, read without
pickle), written by ``train`` from its validation split and replaced by
``evaluate --characterise`` from the lab's crops.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

FEATURE_RECORD_FILE = "feature_record.npz"
FEATURE_LAYER = "pool"  # classify/model.py: the pooled backbone features
COMPONENTS = 32
QUANTILE = 0.95
FOLDS = 5
# A sample is flagged when the lower end of its beyond-record share's exact 95 %
# interval exceeds this (see the module doc for why 20 % and not 10 %).
SHIFT_LIMIT = 0.20
# Fewer record crops predicted as a class than this: that class uses the
# threshold over all record crops (a quantile of a handful is noise).
MIN_CLASS_CROPS = 20


@dataclass(frozen=True, eq=False)  # holds arrays: compared by identity
class FeatureRecord:
    """Principal axes of the record crops' features and per-class residual thresholds.

    ``mean``: float32 (D,); ``components``: float32 (k, D), orthonormal rows;
    ``thresholds``: float32 (C,), residual above which a cell predicted as class
    c is beyond the record; ``n``: record crops; ``quantile``: the thresholds'
    quantile of the out-of-fold record residuals; ``model_sha256``: the model.keras it
    was fitted for ("" when not bound); ``sha256``: digest of the file it was read from.
    """

    mean: np.ndarray
    components: np.ndarray
    thresholds: np.ndarray
    n: int
    quantile: float = QUANTILE
    model_sha256: str = ""
    sha256: str = ""

    def residuals(self, features: np.ndarray) -> np.ndarray:
        """Norm of what the principal axes leave out of each row, float32 (N,).

        ``features``: float (N, D) pooled backbone features."""
        return _residuals(np.asarray(features, np.float64), self.mean, self.components).astype(np.float32)

    def beyond(self, features: np.ndarray, predicted: np.ndarray) -> np.ndarray:
        """bool (N,): the cell's residual exceeds the threshold of its predicted class
        (``predicted``: int (N,) class indices, the model's label order)."""
        predicted = np.asarray(predicted, np.int64)
        if len(predicted) == 0:
            return np.zeros(0, bool)
        return self.residuals(features) > self.thresholds[predicted]


def _residuals(x: np.ndarray, mean: np.ndarray, components: np.ndarray) -> np.ndarray:
    z = x - mean
    return np.linalg.norm(z - (z @ components.T) @ components, axis=1)


def _fit_axes(x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.decomposition import PCA

    mean = x.mean(axis=0)
    k = max(1, min(k, len(x) - 1, x.shape[1]))
    pca = PCA(k, random_state=0).fit(x - mean)
    return mean, pca.components_


def fit_feature_record(features: np.ndarray, true_class: np.ndarray, predicted: np.ndarray, n_classes: int, *,
                       components: int = COMPONENTS, quantile: float = QUANTILE, folds: int = FOLDS,
                       seed: int = 0, model_sha256: str = "") -> FeatureRecord:
    """Fit the check on record crops (the validation split, or a lab's labelled crops).

    ``features``: float (N, D) pooled features; ``true_class``, ``predicted``: int
    (N,) class indices; ``model_sha256``: the model.keras the features come from (the
    record is refused for any other). The axes are fitted on all N crops; the thresholds come
    from out-of-fold residuals (scikit-learn's StratifiedKFold by true class,
    PCA per fold). Raises ValueError with fewer than 2 * ``folds`` crops."""
    from sklearn.model_selection import KFold, StratifiedKFold

    x = np.asarray(features, np.float64)
    y = np.asarray(true_class, np.int64)
    pred = np.asarray(predicted, np.int64)
    if x.ndim != 2 or len(x) != len(y) or len(x) != len(pred):
        raise ValueError(f"features {x.shape}, true classes {y.shape} and predictions {pred.shape} do not match")
    if len(x) < 2 * folds:
        raise ValueError(f"{len(x)} record crops are too few to fit the record check (need {2 * folds})")
    _classes, per_class = np.unique(y, return_counts=True)
    smallest = int(per_class.min()) if len(per_class) > 1 else 0
    splitter = (StratifiedKFold(folds, shuffle=True, random_state=seed) if smallest >= folds
                else KFold(folds, shuffle=True, random_state=seed))
    oof = np.empty(len(x))
    for train_idx, test_idx in splitter.split(x, y):
        mean, axes = _fit_axes(x[train_idx], components)
        oof[test_idx] = _residuals(x[test_idx], mean, axes)
    overall = float(np.quantile(oof, quantile))
    thresholds = np.full(n_classes, overall)
    for c in range(n_classes):
        mine = oof[pred == c]
        if len(mine) >= MIN_CLASS_CROPS:
            thresholds[c] = np.quantile(mine, quantile)
    mean, axes = _fit_axes(x, components)
    return FeatureRecord(mean.astype(np.float32), axes.astype(np.float32), thresholds.astype(np.float32),
                         n=int(len(x)), quantile=float(quantile), model_sha256=str(model_sha256))


def write_feature_record(model_dir: str | Path, record: FeatureRecord) -> Path:
    """Write MODEL_DIR/feature_record.npz (atomically)."""
    import io

    from ..store.atomic import atomic_write_bytes

    buf = io.BytesIO()
    np.savez(buf, mean=record.mean, components=record.components, thresholds=record.thresholds,
             n=np.int64(record.n), quantile=np.float64(record.quantile), model_sha256=np.str_(record.model_sha256))
    return atomic_write_bytes(Path(model_dir) / FEATURE_RECORD_FILE, buf.getvalue())


def read_feature_record(model_dir: str | Path, n_classes: int, model_sha256: str | None = None
                        ) -> FeatureRecord | None:
    """MODEL_DIR's record check, or None when the model has none (written before it).

    Raises ValueError (one line naming the file and the fix) for a damaged file, or one
    that does not fit the model: another class count or another model.keras
    (``model_sha256``, when given and the file names one). The feature width is checked
    where the network is loaded (classify/loading.py)."""
    import hashlib
    import zipfile

    path = Path(model_dir) / FEATURE_RECORD_FILE
    if not path.is_file():
        return None
    fix = "re-run slideproc evaluate --characterise on labelled crops, or retrain"
    try:
        raw = path.read_bytes()
        with np.load(path, allow_pickle=False) as data:
            record = FeatureRecord(data["mean"].astype(np.float32), data["components"].astype(np.float32),
                                   data["thresholds"].astype(np.float32), n=int(data["n"]),
                                   quantile=float(data["quantile"]),
                                   model_sha256=str(data["model_sha256"]) if "model_sha256" in data else "",
                                   sha256=hashlib.sha256(raw).hexdigest())
    except (OSError, KeyError, ValueError, TypeError, EOFError, zipfile.BadZipFile) as err:
        raise ValueError(f"{path} cannot be read ({type(err).__name__}: {err}); {fix}") from None
    mean, axes, thr = record.mean, record.components, record.thresholds
    if mean.ndim != 1 or axes.ndim != 2 or axes.shape[1] != mean.shape[0] or thr.shape != (n_classes,):
        raise ValueError(f"{path} does not fit this model (thresholds {thr.shape} for {n_classes} classes, "
                         f"axes {axes.shape}, mean {mean.shape}); {fix}")
    if model_sha256 and record.model_sha256 and record.model_sha256 != model_sha256:
        raise ValueError(f"{path} was fitted for another model.keras (sha256 {record.model_sha256[:12]}..., "
                         f"this one {model_sha256[:12]}...); {fix}")
    return record


def shift_verdict(n_beyond: int, n_cells: int, limit: float = SHIFT_LIMIT) -> tuple[float, float, bool]:
    """(share beyond, lower end of its exact 95 % interval, flagged) for a sample.

    The interval is Clopper-Pearson (quantify.exact_interval, scipy's beta
    quantiles); flagged when its lower end exceeds ``limit``. No cells: (nan, nan, False)."""
    from ..quantify import exact_interval

    if n_cells <= 0:
        return float("nan"), float("nan"), False
    low, _high = exact_interval(np.array([n_beyond]), n_cells)
    low = float(low[0])
    return n_beyond / n_cells, low, low > limit
