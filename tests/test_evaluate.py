"""slideproc evaluate: metrics.json equals scikit-learn on predictions.csv; the CLI end to end."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, log_loss,
                             precision_recall_fscore_support, roc_auc_score)

from classify_fixtures import tiny_model, write_class_folders
from slideproc.cli import main
from slideproc.metrics import ECE_BINS

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def evaluated(model_dir, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("eval")
    data = write_class_folders(root / "data", 7, seed=11)  # fresh seed: images not seen in training
    out = root / "out"
    assert main(["-q", "evaluate", str(model_dir), str(data), "--out", str(out), "--batch-size", "4"]) == 0
    return out


def test_every_figure_equals_sklearn_on_predictions_csv(evaluated):
    m = json.loads((evaluated / "metrics.json").read_text())
    df = pd.read_csv(evaluated / "predictions.csv")
    labels = m["confusion_matrix"]["labels"]
    assert list(df.columns) == ["path", "true_class", "predicted_class", "confidence", *[f"p_{c}" for c in labels]]
    y = df["true_class"].map(labels.index).to_numpy()
    pred = df["predicted_class"].map(labels.index).to_numpy()
    p = df[[f"p_{c}" for c in labels]].to_numpy()
    p = p / p.sum(axis=1, keepdims=True)
    assert (p.argmax(1) == pred).all() and np.allclose(df["confidence"], p.max(1), atol=1e-6)
    present = sorted(set(y))
    assert m["n"] == len(df) == 21
    assert m["top1_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, labels=present, average="macro", zero_division=0))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, labels=present, average="weighted", zero_division=0))
    assert m["log_loss"] == pytest.approx(log_loss(y, p, labels=list(range(len(labels)))), rel=1e-6)
    assert m["roc_auc_macro_ovr"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro",
                                                                 labels=list(range(len(labels)))))
    assert m["confusion_matrix"]["matrix"] == confusion_matrix(y, pred, labels=range(len(labels))).tolist()
    prec, rec, f1, sup = precision_recall_fscore_support(y, pred, labels=range(len(labels)), zero_division=0)
    for i, c in enumerate(labels):
        assert m["per_class"][c] == pytest.approx(
            {"precision": prec[i], "recall": rec[i], "f1": f1[i], "support": sup[i]})
    # ECE, recomputed independently: equal-width bins over the confidence column.
    conf, correct = p.max(1), (pred == y)
    edges = np.linspace(0, 1, ECE_BINS + 1)
    ece = sum(abs(correct[(conf > lo) & (conf <= hi)].mean() - conf[(conf > lo) & (conf <= hi)].mean())
              * ((conf > lo) & (conf <= hi)).mean()
              for lo, hi in zip(edges[:-1], edges[1:]) if ((conf > lo) & (conf <= hi)).any())
    assert m["ece"] == pytest.approx(ece, abs=1e-9)
    # paper_comparison: binary metrics over the one-hot outputs at 0.5.
    onehot = np.eye(len(labels), dtype=int)[y].ravel()
    hard = (p.ravel() > 0.5).astype(int)
    pc = m["paper_comparison"]
    assert pc["binary_accuracy"] == pytest.approx(accuracy_score(onehot, hard))
    assert pc["auc"] == pytest.approx(roc_auc_score(onehot, p.ravel()))
    assert "Meem & Hasan 2023" in pc["note"]
    assert (evaluated / "confusion_matrix.png").stat().st_size > 1000


def test_evaluate_matches_training_validation_pipeline(evaluated, model_dir):
    m = json.loads((evaluated / "metrics.json").read_text())
    assert m["model_sha256"] == (model_dir / "model.sha256").read_text().split()[0]
    assert "not pretrained" in m["weights"]


def test_unknown_class_is_a_one_line_error(model_dir, tmp_path, capsys):
    data = write_class_folders(tmp_path / "data", 2, classes=["AAA", "ZZZ"])
    assert main(["evaluate", str(model_dir), str(data), "--out", str(tmp_path / "o"), "--batch-size", "4"]) == 1
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("slideproc: error:")]
    assert len(errors) == 1 and "ZZZ" in errors[0] and "Traceback" not in err


def test_evaluate_cli_as_a_subprocess(model_dir, tmp_path):
    data = write_class_folders(tmp_path / "data", 2, seed=3)
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    r = subprocess.run([sys.executable, "-m", "slideproc.cli", "-q", "evaluate", str(model_dir), str(data),
                        "--out", str(tmp_path / "o"), "--batch-size", "4"], cwd=REPO, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((tmp_path / "o" / "metrics.json").read_text())["n"] == 6
