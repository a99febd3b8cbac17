"""Calibration of the classifier's probabilities, fitted on held-out crops.

Two standard methods, both fitted by minimising the negative log-likelihood
on the validation split (Guo et al. 2017, "On calibration of modern neural
networks", section 4.2):

- ``temperature``: one scalar T, ``softmax(log p / T)``. The argmax never
  changes.
- ``vector``: per class a scale and an offset, ``softmax(s * log p + b)``
  ("vector scaling"; 2C parameters). It can correct classes that are over-
  or under-confident in different ways, and the offsets move the decision
  towards the validation split's class shares, so the argmax can change.

The model outputs softmax probabilities p = softmax(z); log p = z - const, so
calibrating from probabilities is exact for both methods and the network
keeps its plain softmax head.

With test-time augmentation the probabilities averaged over the views are
what is calibrated (averaging softens them, so each number of views has its
own fit). A model directory holds every fit in ``calibration.json``
(:data:`CALIBRATION_FILE`); :func:`calibrate` is the one function that turns
raw (view-averaged) probabilities into calibrated ones, whatever the method.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

CALIBRATION_FILE = "calibration.json"
METHODS = ("temperature", "vector")
# Floor for log(p): a float32 softmax underflows to 0 near exp(-104).
_TINY = 1e-30


def _log_probs(probs: np.ndarray) -> np.ndarray:
    return np.log(np.maximum(np.asarray(probs, np.float64), _TINY))


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclass(frozen=True)
class Calibration:
    """One fitted calibration. ``method`` "none" leaves probabilities as they are.

    ``temperature`` is used by method "temperature"; ``scale`` and ``bias``
    (one float per class, in label order) by method "vector".
    """

    method: str = "none"
    temperature: float = 1.0
    scale: tuple[float, ...] = ()
    bias: tuple[float, ...] = ()

    def apply(self, probs: np.ndarray) -> np.ndarray:
        """Calibrated float32 (N, C) probabilities, rows summing to 1, from (N, C) probabilities."""
        probs = np.asarray(probs, np.float64)
        if self.method == "vector":
            if len(self.scale) != probs.shape[1]:
                raise ValueError(f"vector calibration for {len(self.scale)} classes applied to {probs.shape[1]}")
            z = _log_probs(probs) * np.asarray(self.scale) + np.asarray(self.bias)
            return _softmax(z).astype(np.float32)
        if self.method == "temperature" and self.temperature != 1.0:
            return _softmax(_log_probs(probs) / self.temperature).astype(np.float32)
        return (probs / probs.sum(axis=1, keepdims=True)).astype(np.float32)

    def to_dict(self) -> dict:
        if self.method == "vector":
            return {"method": "vector", "scale": [round(float(v), 6) for v in self.scale],
                    "bias": [round(float(v), 6) for v in self.bias]}
        return {"method": self.method, "temperature": round(float(self.temperature), 6)}

    @classmethod
    def from_dict(cls, data: dict, n_classes: int, where: str = "calibration") -> "Calibration":
        """Read a record written by :meth:`to_dict`; ValueError naming ``where`` when it is not one."""
        method = data.get("method") if isinstance(data, dict) else None
        if method == "vector":
            scale, bias = data.get("scale"), data.get("bias")
            ok = all(isinstance(v, list) and len(v) == n_classes
                     and all(isinstance(x, (int, float)) and np.isfinite(x) for x in v) for v in (scale, bias))
            if not ok:
                raise ValueError(f"{where}: vector calibration needs 'scale' and 'bias' of {n_classes} numbers")
            return cls("vector", scale=tuple(float(x) for x in scale), bias=tuple(float(x) for x in bias))
        if method in ("temperature", "none"):
            t = data.get("temperature", 1.0)
            if isinstance(t, bool) or not isinstance(t, (int, float)) or not t > 0:
                raise ValueError(f"{where}: 'temperature' must be a positive number, got {t!r}")
            return cls(method, temperature=float(t))
        raise ValueError(f"{where}: 'method' must be one of temperature, vector, none; got {method!r}")


def calibrate(probs: np.ndarray, calibration: Calibration) -> np.ndarray:
    """Calibrated probabilities: the one entry point for anything holding raw model outputs.

    ``probs``: float (N, C) softmax outputs (averaged over the test-time views
    the calibration was fitted for). Returns float32 (N, C).
    """
    return calibration.apply(probs)


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """Temperature-scaled float32 probabilities, rows summing to 1."""
    return Calibration("temperature", temperature=float(temperature)).apply(probs)


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


def fit_vector(probs: np.ndarray, y_true: np.ndarray) -> Calibration:
    """Vector scaling: per-class scale s and offset b of log p minimising the NLL (L-BFGS-B).

    Starts from temperature scaling (s = 1/T, b = 0). Scales are kept in
    [0.05, 20] like the temperature; offsets in [-10, 10] (e^10: no sane
    prior ratio is larger). A class absent from the fitting data keeps the
    temperature's scale and a zero offset (nothing tells where to move it).
    """
    from scipy.optimize import minimize

    y = np.asarray(y_true, int)
    n_classes = np.asarray(probs).shape[1]
    t = fit_temperature(probs, y)
    if len(y) < 2:
        return Calibration("temperature", temperature=t)
    logp = _log_probs(probs)
    onehot = np.eye(n_classes)[y]
    present = np.bincount(y, minlength=n_classes) > 0

    def loss(theta):
        s, b = theta[:n_classes], theta[n_classes:]
        z = logp * s + b
        z = z - z.max(axis=1, keepdims=True)
        lse = np.log(np.exp(z).sum(axis=1))
        nll = float(np.mean(lse - (z * onehot).sum(axis=1)))
        dz = (np.exp(z - lse[:, None]) - onehot) / len(y)
        return nll, np.concatenate([(dz * logp).sum(axis=0), dz.sum(axis=0)])

    x0 = np.concatenate([np.full(n_classes, 1.0 / t), np.zeros(n_classes)])
    bounds = [(0.05, 20.0) if present[c] else (1.0 / t, 1.0 / t) for c in range(n_classes)]
    bounds += [(-10.0, 10.0) if present[c] else (0.0, 0.0) for c in range(n_classes)]
    res = minimize(loss, x0, jac=True, method="L-BFGS-B", bounds=bounds)
    theta = res.x if np.all(np.isfinite(res.x)) and res.fun <= loss(x0)[0] else x0
    return Calibration("vector", scale=tuple(theta[:n_classes]), bias=tuple(theta[n_classes:]))


def fit_calibration(probs: np.ndarray, y_true: np.ndarray, method: str) -> Calibration:
    """Fit ``method`` (temperature | vector) on (N, C) probabilities and integer labels."""
    if method == "temperature":
        return Calibration("temperature", temperature=fit_temperature(probs, y_true))
    if method == "vector":
        return fit_vector(probs, y_true)
    raise ValueError(f"calibration method must be one of {', '.join(METHODS)}, got {method!r}")


def write_calibrations(path: Path, fits: dict[int, Calibration], *, fitted_on: str) -> None:
    """MODEL_DIR/calibration.json: one fit per number of test-time views."""
    record = {"fitted_on": fitted_on,
              "note": "probabilities averaged over N test-time views are calibrated with views[N]; "
                      "slideproc.classify.calibration.calibrate applies a fit",
              "views": {str(k): fits[k].to_dict() for k in sorted(fits)}}
    Path(path).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def read_calibrations(path: Path, n_classes: int) -> dict[int, Calibration]:
    """{number of views: Calibration} from calibration.json; ValueError naming the file when malformed."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError:
        raise ValueError(f"{path} is not valid JSON; restore it from the training output") from None
    views = data.get("views") if isinstance(data, dict) else None
    if not isinstance(views, dict) or not views:
        raise ValueError(f"{path}: key 'views' must map numbers of views to calibrations")
    out = {}
    for key, value in views.items():
        if not str(key).isdigit():
            raise ValueError(f"{path}: view count {key!r} is not a number")
        out[int(key)] = Calibration.from_dict(value, n_classes, where=f"{path} views[{key}]")
    return out
