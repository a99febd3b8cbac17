"""End to end against the generator's truth (issues 4 and 5).

1. Train InceptionResNetV2 (configs/train-synth.yaml, weights none) on crops
   from `slideproc synth --kind crops` (seed A), unless --model is given.
2. Classifier: `slideproc evaluate` on crops from a fresh seed B.
   Target (issue 4): top-1 >= 0.97.
3. Engine: `slideproc run` on a fresh archive (seed C: slides + image folders
   with truth.csv); per sample, every class's share of nucleated cells against
   the truth. Targets (issue 5): every class within 2 percentage points, total
   count within 2 %.

    python benchmarks/bench_e2e.py [--model MODEL_DIR] [--crops-per-class 120] [--seeds 101 202 303]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import REPO, SLIDEPROC, record, timed_run  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=None)
    p.add_argument("--crops-per-class", type=int, default=120)
    p.add_argument("--seeds", type=int, nargs=3, default=[101, 202, 303], metavar=("TRAIN", "EVAL", "ARCHIVE"))
    p.add_argument("--cells", type=int, default=400, help="nucleated cells per synthetic sample")
    p.add_argument("--keep", type=Path, default=None, help="work here and keep it (default: a temp folder)")
    args = p.parse_args()
    import pandas as pd

    from slideproc.demo import compare_with_truth
    from slideproc.schema import MATEK_CLASSES

    root = args.keep or Path(tempfile.mkdtemp(prefix="slideproc-e2e-"))
    root.mkdir(parents=True, exist_ok=True)
    seed_train, seed_eval, seed_arch = args.seeds
    n_crops = args.crops_per_class * len(MATEK_CLASSES)
    result: dict = {"command": "python benchmarks/bench_e2e.py " + " ".join(sys.argv[1:]), "seeds": args.seeds}
    model = args.model
    if model is None:
        model = root / "model"
        timed_run(SLIDEPROC + ["-q", "synth", str(root / "train"), "--kind", "crops", "--cells", str(n_crops),
                               "--seed", str(seed_train)])
        result["train"] = timed_run(SLIDEPROC + ["-q", "train", str(root / "train" / "crops"), "--out", str(model),
                                                 "--config", str(REPO / "configs" / "train-synth.yaml")])
        m = json.loads((model / "metrics.json").read_text())
        result["train"]["validation"] = {k: m.get("validation", m).get(k) for k in
                                         ("top1_accuracy", "balanced_accuracy", "macro_f1")}
    result["model"] = str(model)

    timed_run(SLIDEPROC + ["-q", "synth", str(root / "eval"), "--kind", "crops", "--cells",
                           str(max(n_crops // 2, 21)), "--seed", str(seed_eval)])
    result["evaluate"] = timed_run(SLIDEPROC + ["-q", "evaluate", str(model), str(root / "eval" / "crops"),
                                                "--out", str(root / "eval_out")])
    m = json.loads((root / "eval_out" / "metrics.json").read_text())
    result["classifier_fresh_seed"] = {k: m[k] for k in ("top1_accuracy", "balanced_accuracy", "macro_f1", "n")}
    result["classifier_target_top1"] = 0.97

    arch = root / "archive"
    timed_run(SLIDEPROC + ["-q", "synth", str(arch), "--samples", "2", "--cells", str(args.cells),
                           "--seed", str(seed_arch)])
    out = root / "run"
    result["run"] = timed_run(SLIDEPROC + ["-q", "run", str(arch / "slides"), str(arch / "manifest.csv"),
                                           "--model", str(model), "--out", str(out)])
    from slideproc.config import load_run_config

    non_cell = tuple(load_run_config(None).report.non_cell_classes)
    cmp = compare_with_truth(arch / "truth.csv", out, non_cell)
    cmp.to_csv(root / "comparison.csv", index=False)
    per_sample = {}
    for sample_id, g in cmp.groupby("sample_id"):
        shares = g[g["class"] != "(cells)"]
        cells = g[g["class"] == "(cells)"].iloc[0]
        worst = shares.loc[shares["difference_pp"].abs().idxmax()]
        per_sample[sample_id] = {
            "max_abs_difference_pp": float(abs(worst["difference_pp"])), "worst_class": worst["class"],
            "cells_truth": int(cells["truth_percent"]), "cells_found": int(cells["measured_percent"]),
            "count_error_percent": round(100 * abs(cells["difference_pp"]) / max(cells["truth_percent"], 1), 2),
        }
    result["end_to_end"] = per_sample
    result["end_to_end_targets"] = {"max_abs_difference_pp": 2.0, "count_error_percent": 2.0}
    result["end_to_end_met"] = all(s["max_abs_difference_pp"] <= 2.0 and s["count_error_percent"] <= 2.0
                                   for s in per_sample.values())
    result["work_dir"] = str(root)
    record("e2e", result)
    print(pd.read_csv(root / "comparison.csv").to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
