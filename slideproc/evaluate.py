"""``slideproc evaluate``: score a MODEL_DIR on a class-folder data set.

Predictions go through the engine's own path (``Predictor``: same resize,
fixed batches, calibrated probabilities), so the figures describe the model
as ``run`` will use it. Writes EVAL_DIR/metrics.json, predictions.csv and
confusion_matrix.png.
"""

from __future__ import annotations

import csv
import json
import logging
from pathlib import Path

import numpy as np

from .classify.loading import load_model_dir
from .classify.predict import get_predictor
from .datasets import load_eval_set
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


def evaluate(model_dir: Path, data_dir: Path, out_dir: Path, *, batch_size: int = 32, workers: int = 2) -> dict:
    loaded = load_model_dir(model_dir)
    labels = loaded.labels
    data = load_eval_set(Path(data_dir), labels)  # unknown classes fail before any prediction
    predictor = get_predictor(model_dir, batch_size)
    log.info("evaluating %s on %d images of %s", model_dir, len(data), data_dir)
    probs = np.concatenate([predictor.predict(x) for x in iter_crops(data.paths, loaded.input_size_px,
                                                                     batch_size, workers)])
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
        **classification_metrics(data.labels, probs, labels),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    plot_confusion(out_dir / "confusion_matrix.png", np.asarray(metrics["confusion_matrix"]["matrix"]), labels,
                   f"{Path(model_dir).name} on {Path(data_dir).name}: balanced accuracy "
                   f"{metrics['balanced_accuracy']:.3f}")
    log.info("top-1 %.3f, balanced accuracy %.3f, macro-F1 %.3f, ECE %.3f; wrote %s",
             metrics["top1_accuracy"], metrics["balanced_accuracy"], metrics["macro_f1"], metrics["ece"], out_dir)
    return metrics
