"""Batch prediction: uint8 crops in, calibrated float32 probabilities out.

Every call goes through one compiled predict function with one input shape:
crops are resized to the model input (the same resampling as training, see
preprocess.py), and the last batch is padded to ``batch_size``, so the
function is traced once per process and never again. With ``tta_views`` > 1
each crop is also predicted turned and mirrored (tta.py) and the softmax
outputs are averaged before the model's calibration for that many views.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path

from ..backend_noise import import_keras

import_keras()  # the first keras import anywhere: without TensorFlow's start-up lines on stderr
import keras  # noqa: E402
import numpy as np

from ..errors import InputError, ModelError
from .calibration import calibrate
from .loading import LoadedModel, load_model_dir
from .model import build_classifier
from .preprocess import resize_crops
from .tta import check_views, view

log = logging.getLogger("slideproc.classify")

PRECISIONS = ("auto", "float32", "mixed_float16", "mixed_bfloat16")


def gpu_available() -> bool:
    backend = keras.backend.backend()
    if backend == "tensorflow":
        import tensorflow as tf

        return bool(tf.config.list_physical_devices("GPU"))
    if backend == "jax":
        import jax

        return any(d.platform == "gpu" for d in jax.devices())
    return False


def cpu_has_bf16(cpuinfo: str = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU has bfloat16 instructions (None where it cannot be told)."""
    try:
        with open(cpuinfo, encoding="utf-8") as fh:
            flags = next((line for line in fh if line.startswith("flags")), "").split()
    except OSError:
        return None
    return bool({"avx512_bf16", "amx_bf16"} & set(flags)) if flags else None


def resolve_precision(mixed_precision: str) -> str:
    if mixed_precision not in PRECISIONS:
        raise ModelError(f"mixed precision must be one of {', '.join(PRECISIONS)}, got {mixed_precision!r}")
    if mixed_precision == "auto":
        # float16 halves memory traffic on a GPU's tensor cores; a CPU gains nothing.
        return "mixed_float16" if gpu_available() else "float32"
    if mixed_precision == "mixed_bfloat16" and cpu_has_bf16() is False and not gpu_available():
        log.warning("mixed_bfloat16 on a CPU without bfloat16 instructions (avx512_bf16, amx_bf16) is emulated "
                    "and slower than float32: set mixed_precision: float32 (and input_size_px: 96 in train-cpu.yaml)")
    return mixed_precision


def _rebuild(loaded: LoadedModel, policy: str) -> keras.Model:
    """The same network built under another dtype policy, with the loaded weights."""
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        model = build_classifier(len(loaded.labels), loaded.input_size_px,
                                 dropout=float(loaded.info.get("dropout", 0.0)))
    finally:
        keras.config.set_dtype_policy(previous)
    model.set_weights(loaded.model.get_weights())
    return model


def mean_views(views: np.ndarray) -> np.ndarray:
    """Softmax outputs (views, N, C) averaged over the views in float64, float32 (N, C): the
    one average every path calibrates (run, evaluate)."""
    return np.mean(views, axis=0, dtype=np.float64).astype(np.float32)


class Predictor:
    """Fixed-batch predictor for one loaded model.

    ``predict(crops)`` takes uint8 (N, H, W, 3) RGB crops of any size and
    returns float32 (N, C) probabilities in ``labels`` order, averaged over
    ``tta_views`` views (1, 2, 4 or 8; each costs one forward pass) and
    calibrated with the model's calibration for that many views.
    """

    def __init__(self, loaded: LoadedModel, batch_size: int = 32, mixed_precision: str = "auto",
                 tta_views: int = 1):
        if batch_size < 1:
            raise ModelError(f"batch size must be >= 1, got {batch_size}")
        try:
            self.tta_views = check_views(tta_views)
        except ValueError as err:
            raise ModelError(str(err)) from None
        self.loaded = loaded
        self.labels = loaded.labels
        self.batch_size = int(batch_size)
        self.input_size_px = loaded.input_size_px
        self.precision = resolve_precision(mixed_precision)
        # The network that runs the batches: the loaded one, or a copy built under
        # the mixed-precision policy (benchmarks time it bare, as the engine runs it).
        self.network = loaded.model if self.precision == "float32" else _rebuild(loaded, self.precision)
        self._features_net = None  # built on first use (predict_views with_features)
        # Keras' predict function is not meant to be entered by two threads at once.
        self._lock = threading.Lock()
        self.calibration = loaded.calibration_for(self.tta_views)
        log.info("predictor: batch %d, %s, %d px, %d test-time view%s", self.batch_size, self.precision,
                 self.input_size_px, self.tta_views, "" if self.tta_views == 1 else "s")

    def predict_raw(self, crops: np.ndarray, views: int | None = None) -> np.ndarray:
        """Uncalibrated softmax outputs averaged over the first ``views`` views
        (default: the predictor's ``tta_views``), float32 (N, C)."""
        return mean_views(self.predict_views(crops, views or self.tta_views))

    def _feature_network(self) -> keras.Model:
        """The network with a second output: the pooled backbone features (record_check.py)."""
        if self._features_net is None:
            from .record_check import FEATURE_LAYER

            self._features_net = keras.Model(self.network.inputs,
                                             [self.network.outputs[0], self.network.get_layer(FEATURE_LAYER).output])
        return self._features_net

    def predict_views(self, crops: np.ndarray, views: int, with_features: bool = False):
        """Uncalibrated softmax outputs of each of the first ``views`` views, float32 (views, N, C);
        with ``with_features`` also the first view's pooled backbone features, float32 (N, D),
        from the same forward pass: ``(outputs, features)``."""
        crops = np.asarray(crops)
        if crops.dtype != np.uint8 or crops.ndim != 4 or crops.shape[-1] != 3:
            raise InputError(
                f"crops must be uint8 RGB of shape (N, H, W, 3), got {crops.dtype} {crops.shape}"
            )
        views = check_views(views, "views")
        n = len(crops)
        out = np.empty((views, n, len(self.labels)), np.float32)
        feats = None
        if n == 0:
            return (out, np.zeros((0, 0), np.float32)) if with_features else out
        crops = resize_crops(crops, self.input_size_px)
        size = self.input_size_px
        batch = np.zeros((self.batch_size, size, size, 3), np.uint8)
        with self._lock:
            for v in range(views):
                for start in range(0, n, self.batch_size):
                    chunk = crops[start:start + self.batch_size]
                    batch[:len(chunk)] = view(chunk, v) if v else chunk
                    batch[len(chunk):] = 0  # padding; its rows are dropped below
                    if with_features and v == 0:
                        probs, f = self._feature_network().predict_on_batch(batch)
                        if feats is None:
                            feats = np.empty((n, int(np.shape(f)[-1])), np.float32)
                        feats[start:start + len(chunk)] = np.asarray(f, np.float32)[:len(chunk)]
                    else:
                        probs = self.network.predict_on_batch(batch)
                    out[v, start:start + len(chunk)] = np.asarray(probs, np.float32)[:len(chunk)]
        return (out, feats) if with_features else out

    def predict(self, crops: np.ndarray) -> np.ndarray:
        """Calibrated probabilities averaged over ``tta_views`` views, float32 (N, C)."""
        return calibrate(self.predict_raw(crops), self.calibration)

    def predict_checked(self, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """``(probabilities, beyond)``: predict()'s calibrated float32 (N, C), and bool (N,)
        whether each cell lies beyond the model's record (record_check.py; first view's
        features, from the same forward pass), or None when the model has no feature record."""
        record = self.loaded.feature_record
        if record is None:
            return self.predict(crops), None
        views, feats = self.predict_views(crops, self.tta_views, with_features=True)
        probs = calibrate(mean_views(views), self.calibration)
        beyond = record.beyond(feats, probs.argmax(axis=1)) if len(probs) else np.zeros(0, bool)
        return probs, beyond


_predictors: dict[tuple, Predictor] = {}
_plock = threading.Lock()


def get_predictor(model_dir: str | Path, batch_size: int = 32, mixed_precision: str = "auto",
                  tta_views: int = 1) -> Predictor:
    """One Predictor per (model sha256, labels, calibration, feature record, batch size, precision, views)
    per process."""
    loaded = load_model_dir(model_dir)
    record = loaded.feature_record
    key = (loaded.sha256, loaded.labels, loaded.temperature, tuple(sorted(loaded.calibrations.items())),
           None if record is None else record.sha256,
           int(batch_size), mixed_precision, int(tta_views))
    with _plock:
        if key not in _predictors:
            _predictors[key] = Predictor(loaded, batch_size, mixed_precision, tta_views)
        return _predictors[key]
