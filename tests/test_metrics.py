"""slideproc.metrics against scikit-learn and hand-computed cases (no TensorFlow)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import (accuracy_score, balanced_accuracy_score, confusion_matrix, f1_score, log_loss,
                             roc_auc_score)

from slideproc.classify.calibration import apply_temperature, fit_temperature
from slideproc.metrics import classification_metrics, expected_calibration_error, paper_comparison


def _probs(rng, n, c, sharp=3.0):
    z = rng.normal(size=(n, c)) * sharp
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_figures_equal_sklearn():
    rng = np.random.default_rng(1)
    labels = ["A", "B", "C", "D"]
    y = rng.integers(0, 4, 200)
    p = _probs(rng, 200, 4)
    p[np.arange(100), y[:100]] += 2  # some skill
    p /= p.sum(axis=1, keepdims=True)
    m = classification_metrics(y, p, labels)
    pred = p.argmax(1)
    assert m["n"] == 200
    assert m["top1_accuracy"] == pytest.approx(accuracy_score(y, pred))
    assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
    assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
    assert m["weighted_f1"] == pytest.approx(f1_score(y, pred, average="weighted"))
    assert m["log_loss"] == pytest.approx(log_loss(y, p))
    assert m["roc_auc_macro_ovr"] == pytest.approx(roc_auc_score(y, p, multi_class="ovr", average="macro"))
    assert m["confusion_matrix"]["labels"] == labels
    assert m["confusion_matrix"]["matrix"] == confusion_matrix(y, pred).tolist()
    assert sum(v["support"] for v in m["per_class"].values()) == 200


def test_classes_absent_from_the_data_are_not_averaged():
    # A 4-class model scored on data holding only A and B.
    y = np.array([0, 0, 1, 1])
    p = np.array([[0.9, 0.05, 0.03, 0.02], [0.15, 0.1, 0.65, 0.1], [0.1, 0.8, 0.05, 0.05],
                  [0.2, 0.7, 0.05, 0.05]])
    m = classification_metrics(y, p, ["A", "B", "C", "D"])
    assert m["classes_present"] == ["A", "B"]
    assert m["balanced_accuracy"] == pytest.approx(0.75)  # recall A 0.5, B 1.0
    assert m["per_class"]["C"]["support"] == 0
    # One-vs-rest over A and B only: A ranks 0.9, 0.15 against 0.1, 0.2 (3 of 4 pairs); B is perfect.
    assert m["roc_auc_macro_ovr"] == pytest.approx((0.75 + 1.0) / 2)


def test_ece_hand_example():
    # Two samples at confidence 0.9 (one right, one wrong), two at 0.6 (both right).
    p = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.6, 0.4]])
    y = np.array([0, 1, 0, 0])
    expected = 0.5 * abs(0.5 - 0.9) + 0.5 * abs(1.0 - 0.6)
    assert expected_calibration_error(y, p) == pytest.approx(expected)


def test_paper_comparison_is_binary_over_one_hot_outputs():
    # 21 classes, every prediction wrong: top-1 is 0, yet binary accuracy is 19/21.
    c = 21
    y = np.zeros(10, int)
    p = np.full((10, c), 0.1 / (c - 1))
    p[:, 1] = 0.9
    pc = paper_comparison(y, p)
    assert classification_metrics(y, p, [f"K{i}" for i in range(c)])["top1_accuracy"] == 0.0
    assert pc["binary_accuracy"] == pytest.approx(19 / 21)
    assert pc["precision"] == 0.0 and pc["recall"] == 0.0
    assert "Meem & Hasan 2023" in pc["note"]


def test_temperature_scaling_recovers_a_known_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(4000, 5)) * 2.0
    y = np.array([rng.choice(5, p=row) for row in apply_temperature(_softmax(logits), 1.0)])
    overconfident = _softmax(logits * 2.5)  # as if T = 1/2.5 had been applied
    t = fit_temperature(overconfident, y)
    assert t == pytest.approx(2.5, rel=0.1)
    cal = apply_temperature(overconfident, t)
    assert np.allclose(cal.sum(1), 1, atol=1e-6)
    assert (cal.argmax(1) == overconfident.argmax(1)).all()
    assert expected_calibration_error(y, cal) < expected_calibration_error(y, overconfident)


def _softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)
