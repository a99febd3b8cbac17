"""Final figures on the held-out test split: views, calibration methods, seed ensembles (an experiment).

    python benchmarks/exp_test_report.py TEST_DIR MODEL_DIR [MODEL_DIR ...]

TEST_DIR is a class-folder set that no training, recipe choice or calibration
choice looked at (/work/matek_split/test, benchmarks/matek_split.py). For each
model and 1, 2, 4, 8 test-time views: top-1, balanced accuracy, macro-F1, and
ECE raw and after each calibration method, fitted on the model's own
validation split for that many views (the model's calibration.json holds the
configured method's fit; both are refitted here from the validation views so
the two methods are compared on equal terms). With several models (seeds), a
seed ensemble (probabilities of one view per model averaged, n models) is
set against one model with n views at the same classification cost;
ensemble probabilities are shown uncalibrated (the seeds' validation splits
differ, so there is no common held-out set to fit on).
"""

from __future__ import annotations

import argparse
import itertools
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import record  # noqa: E402
from _views import folder_views, validation_views  # noqa: E402


def scores(y, probs, classes) -> dict:
    from slideproc.metrics import classification_metrics

    m = classification_metrics(y, probs, classes)
    return {"top1": round(m["top1_accuracy"], 4), "balanced_accuracy": round(m["balanced_accuracy"], 4),
            "macro_f1": round(m["macro_f1"], 4), "ece": round(m["ece"], 4), "nll": round(m["log_loss"], 4),
            "recall": {c: round(v["recall"], 3) for c, v in m["per_class"].items()}}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("test_dir", type=Path)
    p.add_argument("model_dirs", nargs="+", type=Path)
    args = p.parse_args()

    from slideproc.classify.calibration import calibrate, fit_calibration

    out = {"command": "python benchmarks/exp_test_report.py " + " ".join(sys.argv[1:]),
           "split": f"{args.test_dir} (held out from training, recipe and calibration choice)", "models": {}}
    test_views = {}
    for model_dir in args.model_dirs:
        views, y, classes = folder_views(model_dir, args.test_dir)
        test_views[model_dir] = views
        vviews, vy, _ = validation_views(model_dir)
        per = {}
        for k in (1, 2, 4, 8):
            raw = views[:k].mean(0)
            vraw = vviews[:k].mean(0)
            row = {"raw": scores(y, raw, classes)}
            for method in ("temperature", "vector"):
                row[method] = scores(y, calibrate(raw, fit_calibration(vraw, vy, method)), classes)
            per[str(k)] = row
            print(f"{model_dir.name} views {k}: " + "; ".join(
                f"{m} bal {v['balanced_accuracy']:.3f} F1 {v['macro_f1']:.3f} ECE {v['ece']:.4f}"
                for m, v in row.items()))
        out["models"][str(model_dir)] = {"n_test": int(len(y)), "by_views": per}
    if len(args.model_dirs) > 1:
        ens = {}
        for n in range(2, len(args.model_dirs) + 1):
            for combo in itertools.combinations(args.model_dirs, n):
                probs = np.mean([test_views[m][0] for m in combo], axis=0)
                ens["+".join(m.name for m in combo)] = scores(y, probs, classes)
        out["seed_ensembles_1_view_each_uncalibrated"] = ens
        print("ensembles:", {k: (v["balanced_accuracy"], v["macro_f1"]) for k, v in ens.items()})
    for k in ("1", "2", "4", "8"):
        for method in ("raw", "temperature", "vector"):
            vals = [r["by_views"][k][method] for r in out["models"].values()]
            out.setdefault("mean", {}).setdefault(k, {})[method] = {
                key: round(float(np.mean([v[key] for v in vals])), 4)
                for key in ("balanced_accuracy", "macro_f1", "ece", "nll")}
    print("mean over models:", out["mean"])
    record("exp_test_report", out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
