"""Which calibration calibrates unseen crops best: temperature vs vector scaling (an experiment).

    python benchmarks/exp_calibration.py MODEL_DIR [MODEL_DIR ...] [--folds 5 --repeats 3]

Chooses the method on development data only: each model's own validation
split (never the test split) is cut into stratified folds; each method is
fitted on the other folds and scored on the held-out one, so every crop is
scored by a calibration that did not see it. Pooled over folds and repeats,
per number of test-time views: ECE (15 bins), negative log-likelihood, and
balanced accuracy (vector scaling can move the argmax). Raw 8-view outputs
come from benchmarks/_views.py.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import record  # noqa: E402
from _views import validation_views  # noqa: E402

METHODS = ("none", "temperature", "vector")


def cross_fitted(probs: np.ndarray, y: np.ndarray, method: str, folds: int, seed: int) -> np.ndarray:
    """Each crop calibrated by a ``method`` fit on the other folds (stratified)."""
    from sklearn.model_selection import StratifiedKFold

    from slideproc.classify.calibration import calibrate, fit_calibration

    if method == "none":
        return probs / probs.sum(1, keepdims=True)
    out = np.empty_like(probs, dtype=np.float64)
    for fit_idx, held in StratifiedKFold(folds, shuffle=True, random_state=seed).split(probs, y):
        out[held] = calibrate(probs[held], fit_calibration(probs[fit_idx], y[fit_idx], method))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dirs", nargs="+", type=Path)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from sklearn.metrics import balanced_accuracy_score, log_loss

    from slideproc.metrics import expected_calibration_error

    results = {}
    for model_dir in args.model_dirs:
        views, y, classes = validation_views(model_dir)
        per_model = {}
        for k in (1, 2, 4, 8):
            raw = views[:k].mean(0).astype(np.float64)
            row = {}
            for method in METHODS:
                ece, nll, bal = [], [], []
                for r in range(args.repeats):
                    cal = cross_fitted(raw, y, method, args.folds, seed=r)
                    cal = cal / cal.sum(1, keepdims=True)  # float32 rows: renormalise for scikit-learn
                    ece.append(expected_calibration_error(y, cal))
                    nll.append(log_loss(y, cal, labels=list(range(len(classes)))))
                    bal.append(balanced_accuracy_score(y, cal.argmax(1)))
                row[method] = {"ece": round(float(np.mean(ece)), 4), "nll": round(float(np.mean(nll)), 4),
                               "balanced_accuracy": round(float(np.mean(bal)), 4)}
            per_model[str(k)] = row
            print(f"{Path(model_dir).name} views {k}: " + "; ".join(
                f"{m} ECE {v['ece']:.4f} NLL {v['nll']:.3f} bal {v['balanced_accuracy']:.3f}" for m, v in row.items()))
        results[str(model_dir)] = {"n_val": int(len(y)), "by_views": per_model}
    mean = {}
    for k in ("1", "2", "4", "8"):
        mean[k] = {m: {key: round(float(np.mean([r["by_views"][k][m][key] for r in results.values()])), 4)
                       for key in ("ece", "nll", "balanced_accuracy")} for m in METHODS}
    print("mean over models:", mean)
    record("exp_calibration", {"command": "python benchmarks/exp_calibration.py " + " ".join(sys.argv[1:]),
                               "split": "each model's own validation split (dev), cross-fitted", "models": results,
                               "mean": mean})
    return 0


if __name__ == "__main__":
    sys.exit(main())
