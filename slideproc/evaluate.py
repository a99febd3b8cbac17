"""``slideproc evaluate``: score a MODEL_DIR on a class-folder data set.

Predictions go through the engine's own path (``Predictor``: same resize,
fixed batches, calibrated probabilities), so the figures describe the model
as ``run`` will use it, with the same test-time views (``classify.tta_views``).
Writes EVAL_DIR/metrics.json (with ECE and the reliability bins),
predictions.csv, confusion_matrix.png, reliability.png and differential.csv:
DATA_DIR's crops taken as one sample (``sample_id`` = the folder's name), the same
columns as ``run``'s differential.csv (raw and adjusted, with the model's validation
record) plus ``true_percent`` from the folder labels. Run it on crops the model did
not train on, nor was characterised on (its validation split): on those the adjusted
estimate is in-sample.

With ``characterise=True`` (``--characterise``) DATA_DIR's crops then become the model's
record for the adjusted differential (model_card.recharacterise): a lab's own labelled
crops describe the model's errors on its slides better, and with more crops per class
than the validation split's ~60 the adjusted shares' error shrinks (BENCHMARKS.md). The
differential.csv written here still uses the record the model had before, so it is an
out-of-sample check of that record. The record check (classify/record_check.py) is refitted
on the same crops; metrics.json's ``record_check`` says how many of DATA_DIR's crops lie
beyond the model's record as it was (about 5 % for crops like its validation crops).
"""

from __future__ import annotations

import csv
import json
import logging
import os
from pathlib import Path

import numpy as np

from .classify.calibration import calibrate
from .classify.loading import load_model_dir
from .classify.predict import get_predictor, mean_views
from .classify.record_check import shift_verdict
from .datasets import load_eval_set
from .errors import UsageError
from .metrics import classification_metrics
from .pipeline import iter_crops

log = logging.getLogger("slideproc.evaluate")


def write_predictions(path: Path, data, probs: np.ndarray, labels) -> None:
    pred = probs.argmax(axis=1)
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "true_class", "predicted_class", "confidence", *[f"p_{c}" for c in labels]])
        for p, y, k, row in zip(data.paths, data.labels, pred, probs):
            # %.9g round-trips float32, so figures recomputed from the CSV match.
            w.writerow([str(p), labels[y], labels[k], f"{row[k]:.9g}", *[f"{v:.9g}" for v in row]])


def plot_confusion(path: Path, matrix: np.ndarray, labels, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = matrix.sum(axis=1, keepdims=True)
    share = np.divide(matrix, rows, out=np.zeros_like(matrix, dtype=float), where=rows > 0)
    n = len(labels)
    fig, ax = plt.subplots(figsize=(1.2 + 0.45 * n, 1.0 + 0.45 * n))
    ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(n), labels, rotation=90)
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    for i in range(n):
        for j in range(n):
            if matrix[i, j]:
                ax.text(j, i, str(matrix[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] > 0.5 else "black")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def plot_reliability(path: Path, reliability: dict, ece: float, title: str) -> None:
    """Reliability diagram: accuracy against mean confidence per confidence bin
    (metrics.reliability_bins), bars shaded by their share of the crops."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    edges = np.asarray(reliability["edges"])
    count = np.asarray(reliability["count"], float)
    share = count / max(1.0, count.sum())
    fig, (ax, ax2) = plt.subplots(2, 1, figsize=(4.2, 5.0), sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    ax.plot([0, 1], [0, 1], color="0.5", lw=1, ls="--", label="perfect calibration")
    mids = (edges[:-1] + edges[1:]) / 2
    for lo, hi, k, acc, conf in zip(edges[:-1], edges[1:], count, reliability["accuracy"],
                                    reliability["confidence"]):
        if k:
            ax.bar(lo, acc, width=hi - lo, align="edge", color="tab:blue", alpha=0.8, edgecolor="white")
            ax.plot([conf, conf], [conf, acc], color="tab:red", lw=1)
    ax.set_ylabel("accuracy in bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_title(f"{title}\nECE {ece:.3f} ({len(count)} bins, n={int(count.sum())})", fontsize=8)
    ax.legend(loc="upper left", fontsize=7)
    ax2.bar(mids, share, width=edges[1] - edges[0], color="0.6")
    ax2.set_xlabel("confidence (top class probability)")
    ax2.set_ylabel("share")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_differential(path: Path, model_dir: Path, sample_id: str, y_true, probs: np.ndarray, labels,
                       cfg=None, tta_views: int = 1, record_check: dict | None = None):
    """differential.csv of the crops as one sample, with ``true_percent``; returns the DataFrame.
    ``record_check``: ``{"cells": n, "beyond": k}`` of the crops (classify/record_check.py), or None."""
    import math

    from . import differential as dif
    from .config import ReportConfig
    from .model_card import read_model_card
    from .quantify import quantify
    from .report import adjuster, model_poor

    cfg = cfg or ReportConfig()
    labels = list(labels)
    y_true = np.asarray(y_true, int)
    counts = np.bincount(probs.argmax(axis=1), minlength=len(labels)) if len(probs) else np.zeros(len(labels), int)
    card = read_model_card(model_dir, tta_views=tta_views)
    quantifier, missing = adjuster(card, labels, cfg)
    adjustment = None
    if quantifier is not None:
        point, reps = quantify(quantifier, probs, seed=0)
        adjustment = dif.Adjustment(point, reps, cfg.adjustment)
    diff = dif.sample_differential(sample_id, labels, counts, cfg, needs_review=int((probs.max(axis=1)
                                   < cfg.review_confidence).sum()) if len(probs) else 0,
                                   adjustment=adjustment, adjustment_missing=missing, model_poor=model_poor(card, cfg),
                                   record_check=record_check)
    table = dif.differential_table([diff])
    true_counts = np.bincount(y_true, minlength=len(labels))
    truth = dif.sample_differential(sample_id, labels, true_counts, cfg)
    true = {name: p for name, p in zip(labels, truth.percent)}
    true[dif.NUCLEATED_ROW] = math.nan
    true[dif.BLAST_ROW] = truth.blast_percent
    true[dif.ME_ROW] = truth.me_ratio
    table.insert(table.columns.get_loc("flags"), "true_percent", table["class"].map(true).astype(np.float64))
    table.to_csv(path, index=False, lineterminator="\n")
    return table


def _fit_features(features: np.ndarray, true_class, predicted, n_classes: int, model_sha256: str):
    """The record check fitted on the new record crops, or None (logged) when they are too few."""
    from .classify.record_check import fit_feature_record

    try:
        return fit_feature_record(features, true_class, predicted, n_classes, model_sha256=model_sha256)
    except ValueError as err:
        log.warning("the record check was not refitted (the model keeps its former one, if any): %s", err)
        return None


def _replace_feature_record(model_dir: Path, record, first: bool) -> None:
    """Write the refitted record; on the first characterisation (``first``) training's
    record is kept as feature_record.train.npz, never overwritten later."""
    from .classify.record_check import FEATURE_RECORD_FILE, write_feature_record

    current = model_dir / FEATURE_RECORD_FILE
    kept = model_dir / FEATURE_RECORD_FILE.replace(".npz", ".train.npz")
    if first and current.is_file() and not kept.exists():
        os.replace(current, kept)
    write_feature_record(model_dir, record)


def evaluate(model_dir: Path, data_dir: Path, out_dir: Path, *, batch_size: int = 32, workers: int = 2,
             tta_views: int = 1, characterise: bool = False) -> dict:
    """Score MODEL_DIR on DATA_DIR's class folders; write and return metrics.json's content.

    ``tta_views`` (1, 2, 4, 8): probabilities averaged over that many views
    before calibration, as ``run`` does with ``classify.tta_views``. ``characterise``:
    afterwards make DATA_DIR's crops MODEL_DIR's record (see the module doc); UsageError (exit 2)
    before any prediction when DATA_DIR lacks one of the model's classes.
    """
    loaded = load_model_dir(model_dir)
    labels = loaded.labels
    data = load_eval_set(Path(data_dir), labels)  # unknown classes fail before any prediction
    if characterise:
        absent = [c for c, k in zip(labels, np.bincount(data.labels, minlength=len(labels))) if k == 0]
        if absent:
            raise UsageError(f"--characterise: {data_dir} has no crops of class(es) {', '.join(absent)}; the record "
                            f"needs the model's errors on every class it knows: add a folder of each")
    predictor = get_predictor(model_dir, batch_size, tta_views=tta_views)
    log.info("evaluating %s on %d images of %s (%d test-time view%s)", model_dir, len(data), data_dir,
             tta_views, "" if tta_views == 1 else "s")
    # One pass gives the probabilities and the first view's pooled features (record_check.py).
    parts = [predictor.predict_views(x, tta_views, with_features=True)
             for x in iter_crops(data.paths, loaded.input_size_px, batch_size, workers)]
    probs = calibrate(mean_views(np.concatenate([p[0] for p in parts], axis=1)), predictor.calibration)
    features = np.concatenate([p[1] for p in parts])
    record_check = None
    if loaded.feature_record is not None:
        beyond = loaded.feature_record.beyond(features, probs.argmax(axis=1))
        share, low, flagged = shift_verdict(int(beyond.sum()), len(beyond))
        record_check = {"cells": int(len(beyond)), "beyond": int(beyond.sum()), "share": share,
                        "share_ci_low": low, "unlike_record": bool(flagged),
                        "note": "crops beyond the model's record of its validation crops (about 5 % of crops "
                                "like them; classify/record_check.py)"}
        log.info("%d of %d crops (%.0f %%) lie beyond the model's record (about 5 %% of crops like it)%s",
                 record_check["beyond"], len(beyond), 100 * share,
                 ": they look unlike the crops it was characterised on" if flagged else "")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    write_predictions(out_dir / "predictions.csv", data, probs, labels)
    metrics = {
        "model_dir": str(model_dir),
        "model_sha256": loaded.sha256,
        "data_dir": str(data_dir),
        "weights": loaded.info.get("weights", "unknown (not recorded in labels.json)"),
        "temperature": loaded.temperature,
        "calibrated": True,
        "calibration": predictor.calibration.to_dict(),
        "tta_views": tta_views,
        **classification_metrics(data.labels, probs, labels),
        "record_check": record_check,
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    write_differential(out_dir / "differential.csv", Path(model_dir), Path(data_dir).resolve().name or "data",
                       data.labels, probs, labels, tta_views=tta_views, record_check=record_check)
    plot_confusion(out_dir / "confusion_matrix.png", np.asarray(metrics["confusion_matrix"]["matrix"]), labels,
                   f"{Path(model_dir).name} on {Path(data_dir).name}: balanced accuracy "
                   f"{metrics['balanced_accuracy']:.3f}")
    plot_reliability(out_dir / "reliability.png", metrics["reliability"], metrics["ece"],
                     f"{Path(model_dir).name} on {Path(data_dir).name}, {tta_views} view(s)")
    log.info("top-1 %.3f, balanced accuracy %.3f, macro-F1 %.3f, ECE %.3f; wrote %s",
             metrics["top1_accuracy"], metrics["balanced_accuracy"], metrics["macro_f1"], metrics["ece"], out_dir)
    if characterise:
        from .model_card import TRAIN_CARD_JSON, recharacterise

        from .classify.loading import clear_cache

        # Fitted before anything in MODEL_DIR changes; training's files are kept on the first
        # characterisation only (model_card.train.json not there yet).
        record = _fit_features(features, data.labels, probs.argmax(axis=1), len(labels), loaded.sha256)
        first = not (Path(model_dir) / TRAIN_CARD_JSON).exists()
        recharacterise(model_dir, paths=data.paths, labels=data.labels, calibrated=probs, source=Path(data_dir),
                       tta_views=tta_views)
        if record is not None:
            _replace_feature_record(Path(model_dir), record, first)
        clear_cache()
        log.info("%s now characterises %s for the adjusted differential (%d crops, %d test-time view(s)); "
                 "training's record is kept as %s", data_dir, model_dir, len(data), tta_views, TRAIN_CARD_JSON)
    return metrics
