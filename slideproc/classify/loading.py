"""Load a MODEL_DIR as ``slideproc train`` writes it, once per process.

MODEL_DIR holds ``model.keras`` (Keras 3 archive), ``model.sha256`` (its
digest, sha256sum format), ``labels.json`` (label order, input size,
temperature) and, from models trained with test-time augmentation support,
``calibration.json`` (one calibration per number of views, see
calibration.py; a model without it is calibrated with labels.json's
temperature). Loading checks, in order: the files exist, the
digest matches, the archive holds only Keras layers and slideproc's registered
ones (no Lambda, no foreign module: a ``.keras`` file names Python modules that
deserialisation would import), Keras' own ``safe_mode`` load, and that the
model's output has one unit per label.

The cache is keyed by the model's sha256 (and labels.json's), so a Dask worker that asks for the
same model from many tasks loads it once; the digest itself is memoised per
(path, size, mtime) so asking again costs no re-hash of a 200 MB file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ModelError, ModelPathError
from .calibration import CALIBRATION_FILE, Calibration, read_calibrations

log = logging.getLogger("slideproc.classify")

MODEL_FILE = "model.keras"
SHA_FILE = "model.sha256"
LABELS_FILE = "labels.json"
# Members of a Keras 3 archive; anything else (a pickle, a script) is refused.
_ARCHIVE_MEMBERS = {"config.json", "metadata.json", "model.weights.h5"}

_lock = threading.Lock()
_models: dict[str, "LoadedModel"] = {}
_digests: dict[tuple[str, int, int], str] = {}


@dataclass(frozen=True)
class LoadedModel:
    """A loaded classifier and what the engine needs to know about it."""

    model: Any = field(repr=False)  # keras.Model
    labels: tuple[str, ...]
    sha256: str
    input_size_px: int
    temperature: float
    path: Path
    info: dict = field(default_factory=dict, repr=False)  # labels.json as read
    # {number of test-time views: Calibration} from calibration.json; empty for
    # models written before it (then labels.json's temperature calibrates).
    calibrations: dict = field(default_factory=dict, repr=False)
    # record_check.FeatureRecord from feature_record.npz; None for models written before it.
    feature_record: Any = field(default=None, repr=False)

    def calibration_for(self, views: int = 1) -> Calibration:
        """The calibration fitted for probabilities averaged over ``views`` views.

        A model without a fit for that many views (trained before
        calibration.json existed) gets its one-view temperature, with a
        warning: averaged views are softer than one, so that fit over-sharpens
        slightly.
        """
        if views in self.calibrations:
            return self.calibrations[views]
        if views != 1:
            log.warning("%s has no calibration fitted for %d test-time views; using its one-view one "
                        "(retrain to fit one)", self.path, views)
        return self.calibrations.get(1) or Calibration("temperature", temperature=self.temperature)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _file_digest(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    with _lock:
        if key in _digests:
            return _digests[key]
    value = sha256_file(path)
    with _lock:
        _digests[key] = value
    return value


def write_sha256(model_file: Path) -> str:
    """Write MODEL_DIR/model.sha256 beside model_file; return the digest."""
    value = sha256_file(model_file)
    (model_file.parent / SHA_FILE).write_text(f"{value}  {model_file.name}\n", encoding="utf-8")
    return value


def _expected_digest(model_dir: Path) -> str:
    path = model_dir / SHA_FILE
    if not path.is_file():
        raise ModelError(
            f"{path} is missing; slideproc train writes it (or run: sha256sum model.keras > model.sha256)"
        )
    text = path.read_text(encoding="utf-8").split()
    if not text or len(text[0]) != 64:
        raise ModelError(f"{path} does not hold a sha256 digest; rewrite it with: sha256sum model.keras")
    return text[0].lower()


def _unsafe_objects(node: Any, found: list[str]) -> list[str]:
    """Names of serialized objects outside Keras and slideproc's registered layers."""
    if isinstance(node, dict):
        cls = node.get("class_name")
        if isinstance(cls, str):
            module = node.get("module") or ""
            registered = node.get("registered_name") or ""
            if cls in ("Lambda", "__lambda__") or (
                module and not (module == "keras" or module.startswith("keras.")
                                or (module.startswith("slideproc.") and registered.startswith("slideproc>")))
            ):
                found.append(f"{cls} ({module or 'no module'})")
        for value in node.values():
            _unsafe_objects(value, found)
    elif isinstance(node, list):
        for value in node:
            _unsafe_objects(value, found)
    return found


def _output_units(config: dict) -> int | None:
    """Units of the functional model's output layer, read from config.json (None if not found)."""
    try:
        inner = config["config"]
        name = inner["output_layers"][0][0]
        for layer in inner["layers"]:
            if layer["config"].get("name") == name:
                return int(layer["config"]["units"])
    except (KeyError, IndexError, TypeError, ValueError):
        return None
    return None


def check_archive(model_file: Path) -> dict:
    """Refuse a .keras archive with foreign members, custom code or Lambda layers; return its config."""
    try:
        with zipfile.ZipFile(model_file) as zf:
            names = set(zf.namelist())
            extra = sorted(n for n in names if n not in _ARCHIVE_MEMBERS and not n.startswith("assets/"))
            if extra:
                raise ModelError(f"{model_file} holds unexpected files ({', '.join(extra[:3])}); refusing to load it")
            config = json.loads(zf.read("config.json"))
    except (zipfile.BadZipFile, KeyError, json.JSONDecodeError):
        raise ModelError(f"{model_file} is not a Keras 3 .keras archive; retrain or re-save the model") from None
    bad = _unsafe_objects(config, [])
    if bad:
        raise ModelError(
            f"{model_file} contains code slideproc does not load ({', '.join(sorted(set(bad))[:3])}); "
            f"only Keras layers and slideproc's registered layers are allowed"
        )
    return config


def _read_labels(model_dir: Path) -> dict:
    path = model_dir / LABELS_FILE
    try:
        info = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelError(f"{path} is missing; a MODEL_DIR written by slideproc train has it") from None
    except json.JSONDecodeError:
        raise ModelError(f"{path} is not valid JSON; restore it from the training output") from None
    labels = info.get("labels") if isinstance(info, dict) else None
    if not isinstance(labels, list) or not labels or not all(isinstance(x, str) for x in labels):
        raise ModelError(f"{path}: key 'labels' must be a non-empty list of class names")
    if len(set(labels)) != len(labels):
        raise ModelError(f"{path}: key 'labels' lists a class twice")
    temperature = info.get("temperature", 1.0)
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ModelError(f"{path}: key 'temperature' must be a positive number, got {temperature!r}")
    return info


def load_model_dir(path: str | Path) -> LoadedModel:
    """Load (or fetch from the per-process cache) the model in MODEL_DIR."""
    model_dir = Path(path)
    model_file = model_dir / MODEL_FILE
    if not model_dir.is_dir():
        raise ModelPathError(f"model directory not found: {model_dir}")
    if not model_file.is_file():
        raise ModelError(f"{model_file} is missing; point at a directory written by slideproc train")
    expected = _expected_digest(model_dir)
    digest = _file_digest(model_file)
    if digest != expected:
        raise ModelError(
            f"{model_file} does not match {model_dir / SHA_FILE} (sha256 {digest[:12]}... != {expected[:12]}...); "
            f"the file was changed or damaged: restore or retrain it"
        )
    # labels.json is part of the key: the same weights with another label list
    # or temperature is another model to the engine.
    labels_path = model_dir / LABELS_FILE
    cal_path = model_dir / CALIBRATION_FILE
    from .record_check import FEATURE_RECORD_FILE, read_feature_record

    key = digest + "".join(":" + (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "")
                           for p in (labels_path, cal_path, model_dir / FEATURE_RECORD_FILE))
    with _lock:
        cached = _models.get(key)
    if cached is not None:
        return cached

    info = _read_labels(model_dir)
    calibrations = {}
    if cal_path.is_file():
        try:
            calibrations = read_calibrations(cal_path, len(info["labels"]))
        except ValueError as err:
            raise ModelError(str(err)) from None
    try:
        feature_record = read_feature_record(model_dir, len(info["labels"]), model_sha256=digest)
    except ValueError as err:
        raise ModelError(str(err)) from None
    config = check_archive(model_file)
    # Refuse a label mismatch before reading 200 MB of weights.
    units = _output_units(config)
    if units is not None and units != len(info["labels"]):
        raise ModelError(
            f"{model_dir / LABELS_FILE} lists {len(info['labels'])} labels but {model_file} has {units} outputs; "
            f"use the labels.json written with this model"
        )
    from ..backend_noise import import_keras

    import_keras()  # without TensorFlow's start-up lines on stderr (a worker's first keras import)
    import keras

    from . import preprocess  # noqa: F401  (registers CropPreprocess)

    try:
        model = keras.saving.load_model(model_file, compile=False, safe_mode=True)
    except Exception as err:
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ModelError(f"cannot load {model_file} safely: {first}") from None
    labels = tuple(info["labels"])
    n_out = model.output_shape[-1]
    if n_out != len(labels):
        raise ModelError(
            f"{model_dir / LABELS_FILE} lists {len(labels)} labels but {model_file} has {n_out} outputs; "
            f"use the labels.json written with this model"
        )
    size = model.input_shape[1]
    if feature_record is not None:
        from .record_check import FEATURE_LAYER

        try:
            width = int(model.get_layer(FEATURE_LAYER).output.shape[-1])
        except ValueError:
            width = -1  # no such layer: not a network build_classifier made
        if width != feature_record.mean.shape[0]:
            raise ModelError(f"{model_dir / FEATURE_RECORD_FILE} is for features of width "
                             f"{feature_record.mean.shape[0]}, {model_file} gives {width}; re-run slideproc "
                             f"evaluate --characterise on labelled crops, or retrain")
    loaded = LoadedModel(model=model, labels=labels, sha256=digest, input_size_px=int(size),
                         temperature=float(info.get("temperature", 1.0)), path=model_dir, info=info,
                         calibrations=calibrations, feature_record=feature_record)
    log.info("loaded model %s (sha256 %s, %d classes, %d px)", model_dir, digest[:12], len(labels), size)
    with _lock:
        _models.setdefault(key, loaded)
        return _models[key]


def clear_cache() -> None:
    """Forget loaded models (tests; a long-lived process switching models)."""
    with _lock:
        _models.clear()
        _digests.clear()
