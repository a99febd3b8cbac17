"""`slideproc demo`: the whole job on its embedded default, in minutes on a laptop.

1. synthesize an archive: two pyramidal TIFF slides and one image folder, with truth.csv;
2. train a small classifier on synthetic single-cell crops (configs/train-demo.yaml);
3. run the engine on a local Dask cluster (results.zarr, CSVs, report, GeoJSON);
4. print where everything is and how each sample's differential compares with the truth.
"""

from __future__ import annotations

import csv
import logging
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from .config import PACKAGE_CONFIG_DIR, load_run_config, load_train_config

log = logging.getLogger("slideproc.demo")

SLIDE_PX = 3072  # 768 um square at 0.25 um/px: a few seconds to write and to process
SLIDE_CELLS = 250
FOLDER_CELLS = 150
CROPS_PER_CLASS = 60


def _say(text: str) -> None:
    print(f"[demo] {text}", flush=True)


def synthesize(archive: Path, seed: int) -> None:
    """Two slides and one image folder in ``archive``, one truth.csv for all three."""
    from .synthetic.archive import write_archive

    write_archive(archive, samples=2, cells=SLIDE_CELLS, kind="slide", seed=seed, size=(SLIDE_PX, SLIDE_PX))
    part = archive.parent / ".demo-folder-part"
    shutil.rmtree(part, ignore_errors=True)
    write_archive(part, samples=1, cells=FOLDER_CELLS, kind="folder", seed=seed + 1)
    shutil.rmtree(archive / "folders", ignore_errors=True)
    shutil.move(str(part / "folders"), str(archive / "folders"))
    shutil.copy(part / "manifest.csv", archive / "manifest.csv")
    with open(archive / "truth.csv", "a", newline="") as out, open(part / "truth.csv", newline="") as extra:
        rows = list(csv.reader(extra))[1:]
        csv.writer(out, lineterminator="\n").writerows(rows)
    shutil.rmtree(part)


def compare_with_truth(truth_csv: Path, results: Path, non_cell: tuple[str, ...]) -> pd.DataFrame:
    """Per sample and class: truth % and measured % of nucleated cells, and the difference."""
    from .store.tables import read_table

    truth = read_table(truth_csv)
    hist = read_table(results / "histograms.csv").set_index("sample_id")
    classes = [c for c in hist.columns if c != "n_cells"]
    rows = []
    for sample_id, group in truth.groupby("sample_id"):
        if sample_id not in hist.index:
            continue
        t_counts = group["class"].value_counts()
        counted = [c for c in classes if c not in non_cell]
        t_total = sum(t_counts.get(c, 0) for c in counted)
        m_total = sum(int(hist.loc[sample_id, c]) for c in counted)
        for c in counted:
            t = 100.0 * t_counts.get(c, 0) / max(t_total, 1)
            m = 100.0 * int(hist.loc[sample_id, c]) / max(m_total, 1)
            if t or m:
                rows.append({"sample_id": sample_id, "class": c, "truth_percent": round(t, 1),
                             "measured_percent": round(m, 1), "difference_pp": round(m - t, 1)})
        rows.append({"sample_id": sample_id, "class": "(cells)", "truth_percent": float(len(group)),
                     "measured_percent": float(hist.loc[sample_id, "n_cells"]),
                     "difference_pp": float(hist.loc[sample_id, "n_cells"] - len(group))})
    return pd.DataFrame(rows)


def run_demo(out: Path, seed: int = 2026) -> int:
    from .runner import run_archive
    from .train import train

    t0 = time.perf_counter()
    out = Path(out)
    archive, crops, model_dir, results = out / "archive", out / "train-crops", out / "model", out / "results"
    for path in (archive, crops, model_dir, results):
        shutil.rmtree(path, ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)

    _say(f"1/4 synthesizing an archive (2 slides, 1 image folder) in {archive}")
    synthesize(archive, seed)
    from .synthetic.archive import write_archive

    write_archive(crops, cells=CROPS_PER_CLASS * 21, kind="crops", seed=seed + 2)
    _say(f"2/4 training a small InceptionResNetV2 on {CROPS_PER_CLASS} synthetic crops per class "
         "(weights: none, configs/train-demo.yaml)")
    t1 = time.perf_counter()
    metrics = train(crops / "crops", model_dir, load_train_config(PACKAGE_CONFIG_DIR / "train-demo.yaml"), verbose=0)
    _say(f"    trained in {time.perf_counter() - t1:.0f} s; validation balanced accuracy "
         f"{metrics.get('validation', metrics).get('balanced_accuracy', float('nan')):.3f}")

    _say(f"3/4 running the engine on a local Dask cluster -> {results}")
    cfg = load_run_config()
    status = run_archive([archive / "slides", archive / "manifest.csv"], results, cfg, model_dir, progress=False)

    _say("4/4 differential vs ground truth (percent of nucleated cells)")
    table = compare_with_truth(archive / "truth.csv", results, cfg.report.non_cell_classes)
    table.to_csv(out / "comparison.csv", index=False)
    for sample_id, group in table.groupby("sample_id"):
        cells = group[group["class"] == "(cells)"].iloc[0]
        diffs = group[group["class"] != "(cells)"]["difference_pp"].abs()
        print(f"  {sample_id}: {int(cells.measured_percent)} cells found, {int(cells.truth_percent)} placed; "
              f"largest class difference {diffs.max():.1f} percentage points")
    print(f"""
Outputs:
  archive (inputs + truth.csv)   {archive}
  model                          {model_dir}
  results.zarr                   {results / 'results.zarr'}
  per-cell tables                {results / 'cells'}
  differential counts            {results / 'differential.csv'}
  report                         {results / 'report' / 'index.html'}
  QuPath GeoJSON                 {results / 'geojson'}
  differential vs truth          {out / 'comparison.csv'}
Done in {time.perf_counter() - t0:.0f} s.""")
    return status
