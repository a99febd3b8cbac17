"""Test-time augmentation on a trained MODEL_DIR's own validation split (an experiment).

    python benchmarks/exp_tta.py MODEL_DIR

Reads split.csv, predicts the validation crops in 1, 2 (identity, flip),
4 (identity, flip, 180-degree rotation, both) and all 8 dihedral views, and
prints balanced accuracy and macro-F1 of the averaged probabilities. The
engine predicts one view; this measures what averaging views would buy
(BENCHMARKS.md, classifier, session 4).
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import record  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("model_dir", type=Path)
    args = p.parse_args()

    import numpy as np

    from slideproc.classify.loading import load_model_dir
    from slideproc.classify.predict import Predictor
    from slideproc.metrics import classification_metrics
    from slideproc.pipeline import iter_crops

    loaded = load_model_dir(args.model_dir)
    val = [r for r in csv.DictReader(open(args.model_dir / "split.csv")) if r["subset"] == "val"]
    x = np.concatenate(list(iter_crops([r["path"] for r in val], loaded.input_size_px, 32, 2)))
    y = np.array([loaded.labels.index(r["class"]) for r in val])
    predictor = Predictor(loaded, batch_size=32, mixed_precision="float32")
    views = {}  # (quarter turns, flipped) -> probabilities
    for k in range(4):
        for flip in (False, True):
            v = np.rot90(x, k, axes=(1, 2))
            views[(k, flip)] = predictor.predict_raw(np.ascontiguousarray(v[:, :, ::-1] if flip else v))
    sets = {"1": [(0, False)], "2": [(0, False), (0, True)],
            "4": [(0, False), (0, True), (2, False), (2, True)], "8": list(views)}
    out = {"model_dir": str(args.model_dir), "n_val": len(val)}
    for name, keys in sets.items():
        m = classification_metrics(y, np.mean([views[k] for k in keys], axis=0), list(loaded.labels))
        out[f"views_{name}"] = {"balanced_accuracy": round(m["balanced_accuracy"], 4),
                                "macro_f1": round(m["macro_f1"], 4)}
    record("tta", {"command": "python benchmarks/exp_tta.py " + " ".join(sys.argv[1:]), **out})
    return 0


if __name__ == "__main__":
    sys.exit(main())
