"""Classification metrics of ``slideproc evaluate`` and of training's validation.

Everything is computed from (true label index, probability matrix) with
scikit-learn where it has the figure, so metrics.json can be checked against
scikit-learn on predictions.csv. Averages over classes ("macro", balanced
accuracy, ROC AUC) run over the classes present in the ground truth: a
21-class model scored on a 7-class data set is not charged for the 14 classes
it was never shown.
"""

from __future__ import annotations

import warnings

import numpy as np

ECE_BINS = 15

PAPER_NOTE = (
    "For comparison with Meem & Hasan 2023 only: Keras-style binary metrics over the "
    "N x C one-hot outputs thresholded at 0.5, where true negatives dominate (their "
    "'96.19 % accuracy' is this binary accuracy over 21 outputs). Not a measure of "
    "top-1 correctness; use top1_accuracy and balanced_accuracy. auc is the exact ROC "
    "AUC over the flattened outputs (Keras' AUC approximates it with 200 thresholds)."
)


def reliability_bins(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> dict:
    """Top-label reliability: per equal-width confidence bin, its count, mean confidence and accuracy.

    Bin i holds confidences in (i/n, (i+1)/n]; empty bins have count 0 and
    None for the means. This is what a reliability diagram draws and what
    :func:`expected_calibration_error` sums.
    """
    probs = np.asarray(probs, np.float64)
    conf = probs.max(axis=1)
    correct = (probs.argmax(axis=1) == np.asarray(y_true)).astype(np.float64)
    # Confidence 0 cannot occur (a softmax row's maximum is >= 1/C).
    bins = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count, confidence, accuracy = [], [], []
    for b in range(n_bins):
        mask = bins == b
        count.append(int(mask.sum()))
        confidence.append(float(conf[mask].mean()) if mask.any() else None)
        accuracy.append(float(correct[mask].mean()) if mask.any() else None)
    return {"edges": [round(i / n_bins, 6) for i in range(n_bins + 1)], "count": count,
            "confidence": confidence, "accuracy": accuracy}


def expected_calibration_error(y_true: np.ndarray, probs: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """ECE (Guo et al. 2017): sum over equal-width confidence bins of |accuracy - confidence| x bin share."""
    r = reliability_bins(y_true, probs, n_bins)
    n = sum(r["count"])
    return float(sum(k / n * abs(a - c) for k, a, c in zip(r["count"], r["accuracy"], r["confidence"]) if k))


def ece_noise_floor(probs: np.ndarray, n_bins: int = ECE_BINS, draws: int = 200, seed: int = 0) -> dict:
    """ECE that a perfectly calibrated model with these probabilities would show on this many crops.

    Binned ECE is biased upwards on finite data: even labels drawn from the
    model's own probabilities (a model calibrated by construction) give an ECE
    above 0. Monte-Carlo over ``draws`` label draws (seeded): the mean and the
    90 % quantile. A measured ECE at or below the 90 % quantile cannot be told
    from perfect calibration on this many crops (Roelofs et al. 2022,
    "Mitigating bias in calibration error estimation", on the bias of binned ECE).
    """
    probs = np.asarray(probs, np.float64)
    probs = probs / probs.sum(axis=1, keepdims=True)
    rng = np.random.default_rng(seed)
    cum = np.cumsum(probs, axis=1)
    eces = []
    for _ in range(draws):
        u = rng.random((len(probs), 1))
        y = np.minimum((u > cum).sum(axis=1), probs.shape[1] - 1)
        eces.append(expected_calibration_error(y, probs, n_bins))
    return {"mean": float(np.mean(eces)), "q90": float(np.quantile(eces, 0.9)), "draws": draws}


def roc_auc_macro_ovr(y_true: np.ndarray, probs: np.ndarray) -> float | None:
    """Mean one-vs-rest ROC AUC over the classes present (None if fewer than two)."""
    from sklearn.metrics import roc_auc_score

    present = np.unique(y_true)
    if len(present) < 2:
        return None
    return float(np.mean([roc_auc_score(y_true == c, probs[:, c]) for c in present]))


def paper_comparison(y_true: np.ndarray, probs: np.ndarray) -> dict:
    from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

    onehot = np.eye(probs.shape[1], dtype=int)[y_true].ravel()
    flat = probs.ravel()
    hard = (flat > 0.5).astype(int)  # Keras binary metrics: positive when > 0.5
    return {
        "note": PAPER_NOTE,
        "binary_accuracy": float(accuracy_score(onehot, hard)),
        "precision": float(precision_score(onehot, hard, zero_division=0)),
        "recall": float(recall_score(onehot, hard, zero_division=0)),
        "auc": float(roc_auc_score(onehot, flat)),
    }


def classification_metrics(y_true, probs, labels) -> dict:
    """All figures of metrics.json for integer labels into ``labels`` and (N, C) probabilities."""
    from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score,
                                 log_loss, precision_recall_fscore_support)

    y_true = np.asarray(y_true, int)
    probs = np.asarray(probs, np.float64)
    # Rows of float32 softmax sum to 1 within ~1e-7, which scikit-learn's
    # float64 check (rtol 1.5e-8) calls "not probabilities": renormalise.
    probs = probs / probs.sum(axis=1, keepdims=True)
    labels = list(labels)
    if len(y_true) == 0:
        raise ValueError("no samples to score")
    y_pred = probs.argmax(axis=1)
    present = sorted(int(c) for c in np.unique(y_true))
    idx = list(range(len(labels)))
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=idx, zero_division=0)
    with warnings.catch_warnings():
        # "y_pred contains classes not in y_true": expected when scoring on a subset.
        warnings.simplefilter("ignore", UserWarning)
        balanced = float(balanced_accuracy_score(y_true, y_pred))
    return {
        "n": int(len(y_true)),
        "top1_accuracy": float(accuracy_score(y_true, y_pred)),
        "balanced_accuracy": balanced,
        "macro_f1": float(f1_score(y_true, y_pred, labels=present, average="macro", zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, labels=present, average="weighted", zero_division=0)),
        "roc_auc_macro_ovr": roc_auc_macro_ovr(y_true, probs),
        "log_loss": float(log_loss(y_true, probs, labels=idx)),
        "ece": expected_calibration_error(y_true, probs),
        "ece_bins": ECE_BINS,
        # What a perfectly calibrated model would show on this many crops.
        "ece_noise_floor": ece_noise_floor(probs),
        "reliability": reliability_bins(y_true, probs),
        "classes_present": [labels[c] for c in present],
        "per_class": {
            labels[c]: {"precision": float(p[c]), "recall": float(r[c]), "f1": float(f[c]), "support": int(s[c])}
            for c in idx
        },
        "confusion_matrix": {
            "labels": labels,
            "rows": "true class",
            "columns": "predicted class",
            "matrix": confusion_matrix(y_true, y_pred, labels=idx).tolist(),
        },
        "paper_comparison": paper_comparison(y_true, probs),
    }
