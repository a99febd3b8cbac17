"""Cells unlike the model's record: how often `run` flags a sample `unlike_record`.

    python benchmarks/bench_record_check.py --model MODEL_DIR [--fields-per-sample 20] [--no-record]

The check (slideproc/classify/record_check.py) was chosen (32 principal axes, the 0.95 quantile)
on TXL-PBC *val* fields (30 per source) and the BCCD WBC crops; this benchmark measures it on
data that played no part in that choice (the 20 % limit was set after a first run of it, see
BENCHMARKS.md):

- in-distribution (must not be flagged): the held-out Matek test crops
  (benchmarks/matek_split.py), one forward pass per crop, per class; and the same crops run
  through the whole pipeline as image-folder samples (`slideproc run --mpp 0.094`), whose
  cells include neighbours cut by the crop edge;
- other sources (should be flagged): TXL-PBC *train* fields of the four sources (BCCD, BCD,
  PBC, Raabin-WBC; peripheral blood, other microscopes and stains), run as samples of
  ``--fields-per-sample`` fields with ``--mpp auto``.

A model directory without feature_record.npz (trained before the check) is copied to a
temporary directory and given one fitted on its own validation crops
(validation_predictions.csv), as `train` now does. Results: benchmarks/results/record_check.jsonl.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from bench_txl import fields  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data" / "real"


def with_record(model_dir: Path, work: Path) -> Path:
    """model_dir itself when it has a feature record; else a copy given one fitted on its validation crops."""
    from slideproc.classify.loading import load_model_dir
    from slideproc.classify.predict import Predictor
    from slideproc.classify.record_check import FEATURE_RECORD_FILE, fit_feature_record, write_feature_record
    from slideproc.pipeline import iter_crops

    if (model_dir / FEATURE_RECORD_FILE).is_file():
        return model_dir
    copy = work / model_dir.name
    shutil.copytree(model_dir, copy)
    val = pd.read_csv(copy / "validation_predictions.csv")
    loaded = load_model_dir(copy)
    labels = list(loaded.labels)
    pred = Predictor(loaded, batch_size=32, mixed_precision="float32")
    feats = np.concatenate([pred.predict_views(x, 1, with_features=True)[1]
                            for x in iter_crops(list(val["path"]), loaded.input_size_px, 32, 2)])
    probs = val[[f"p_{c}" for c in labels]].to_numpy()
    y = np.array([labels.index(c) for c in val["true_class"]])
    write_feature_record(copy, fit_feature_record(feats, y, probs.argmax(axis=1), len(labels)))
    print(f"fitted a record check for {model_dir} on its {len(val)} validation crops (in {copy})")
    return copy


def crop_level(model: Path, test_dir: Path) -> dict:
    """Share of held-out test crops beyond the record, per true class."""
    from slideproc.classify.loading import load_model_dir
    from slideproc.classify.predict import Predictor
    from slideproc.datasets import load_eval_set
    from slideproc.pipeline import iter_crops

    loaded = load_model_dir(model)
    data = load_eval_set(test_dir, loaded.labels)
    pred = Predictor(loaded, batch_size=32, mixed_precision="float32")
    beyond = np.concatenate([pred.predict_checked(x)[1] for x in iter_crops(data.paths, loaded.input_size_px, 32, 2)])
    out = {"all": f"{int(beyond.sum())}/{len(beyond)}"}
    for i, c in enumerate(loaded.labels):
        out[c] = round(float(beyond[data.labels == i].mean()), 3)
    return out


def run_samples(model: Path, inputs: Path, out: Path, mpp: str) -> pd.DataFrame:
    """`slideproc run` over a folder of sample folders; report/summary.csv's rows."""
    cmd = [str(Path(sys.executable).parent / "slideproc"), "run", str(inputs), "--out", str(out), "--model", str(model),
           "--mpp", mpp]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode not in (0, 1):
        raise SystemExit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr[-2000:]}")
    return pd.read_csv(out / "report" / "summary.csv")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, required=True)
    ap.add_argument("--test", type=Path, default=Path("/work/matek_split/test"),
                    help="held-out Matek crops in class folders (benchmarks/matek_split.py)")
    ap.add_argument("--txl", type=Path, default=SHARED / "txl_pbc")
    ap.add_argument("--fields-per-sample", type=int, default=20)
    ap.add_argument("--samples-per-source", type=int, default=4)
    ap.add_argument("--no-record", action="store_true")
    args = ap.parse_args()
    for need in (args.test, args.txl):
        if not need.is_dir():
            print(f"skipped: {need} not found (benchmarks/matek_split.py writes the test split; ../shared holds TXL-PBC)")
            return 0
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        model = with_record(args.model, work)
        crops = crop_level(model, args.test)
        print("held-out Matek test crops beyond the record (share per true class):", crops)
        # The test crops as image-folder samples of 100 crops (whole pipeline).
        matek_in = work / "matek"
        paths = sorted(args.test.glob("*/*.jpg"))
        rng = np.random.default_rng(0)
        rng.shuffle(paths)
        for i in range(0, len(paths), 100):
            folder = matek_in / f"matek-test-{i // 100:02d}"
            folder.mkdir(parents=True)
            for p in paths[i:i + 100]:
                shutil.copy(p, folder / p.name)
        rows = [run_samples(model, matek_in, work / "matek-out", "0.094").assign(kind="Matek test crops as fields")]
        txl_in = work / "txl"
        for src in ("BCCD", "BCD", "PBC", "Raabin"):
            todo = fields(args.txl, "train", [src], args.fields_per_sample * args.samples_per_source)
            for k in range(0, len(todo), args.fields_per_sample):
                folder = txl_in / f"{src}-{k // args.fields_per_sample}"
                folder.mkdir(parents=True)
                for img, *_ in todo[k:k + args.fields_per_sample]:
                    shutil.copy(img, folder / img.name)
        txl = run_samples(model, txl_in, work / "txl-out", "auto")
        txl["kind"] = "TXL-PBC train, " + txl["sample_id"].str.split("-").str[0]
        rows.append(txl)
    table = pd.concat(rows, ignore_index=True)
    table["unlike_record"] = table["flags"].fillna("").str.contains("unlike_record")
    summary = table.groupby("kind").agg(samples=("sample_id", "size"), flagged=("unlike_record", "sum"),
                                        cells=("n_cells", "sum"),
                                        beyond_median_pct=("beyond_record_percent", "median"),
                                        beyond_min_pct=("beyond_record_percent", "min"),
                                        beyond_max_pct=("beyond_record_percent", "max"))
    pd.set_option("display.width", 200)
    print(summary.round(1).to_string())
    print(f"({time.time() - started:.0f} s)")
    if not args.no_record:
        out = HERE / "results" / "record_check.jsonl"
        out.parent.mkdir(exist_ok=True)
        with open(out, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"date": time.strftime("%Y-%m-%d"), "model": str(args.model), "crops": crops,
                                 "samples": summary.reset_index().to_dict(orient="records")}) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
