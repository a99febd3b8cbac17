"""Temperature scaling (Guo et al. 2017): one scalar T fitted on held-out data.

The model outputs softmax probabilities p = softmax(z). Since log p = z - const,
softmax(log p / T) = softmax(z / T): calibrating from probabilities is exact,
so the model keeps its plain softmax head. T > 1 softens an over-confident
network, T < 1 sharpens an under-confident one; the argmax never changes.
"""

from __future__ import annotations

import numpy as np

# Floor for log(p): a float32 softmax underflows to 0 near exp(-104).
_TINY = 1e-30


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Calibrated float32 probabilities, rows summing to 1."""
    probs = np.asarray(probs, np.float64)
    if temperature == 1.0:
        return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)
    z = np.log(np.maximum(probs, _TINY)) / temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _nll(probs: np.ndarray, y: np.ndarray, temperature: float) -> float:
    p = apply_temperature(probs, temperature).astype(np.float64)
    return float(-np.mean(np.log(np.maximum(p[np.arange(len(y)), y], _TINY))))


def fit_temperature(probs: np.ndarray, y_true: np.ndarray) -> float:
    """T minimising the negative log-likelihood of y_true; 1.0 when there is nothing to fit."""
    from scipy.optimize import minimize_scalar

    y = np.asarray(y_true, int)
    if len(y) < 2:
        return 1.0
    # Search log T in [-3, 3]: T from 0.05 to 20 covers any sane network.
    res = minimize_scalar(lambda t: _nll(probs, y, float(np.exp(t))), bounds=(-3.0, 3.0), method="bounded")
    return float(np.exp(res.x)) if res.success else 1.0
