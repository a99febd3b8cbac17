"""What a model directory says about its own errors: the record the adjusted differential needs.

``slideproc train`` writes two files into MODEL_DIR (``write_model_card``, one call at the end
of training):

- ``validation_predictions.csv``: one row per validation crop: ``path, true_class``, then
  ``p_<class>`` for every class, the *calibrated* probabilities (the same calibration ``run``
  applies to every cell), ``%.9g`` so they round-trip float32.
- ``model_card.json``: labels, validation and training class counts, the imbalance handling
  (``balance``), the effective training prior and the reasoning behind it, the calibration
  used, the confusion matrix of the validation split (rows true class, columns predicted
  class), balanced accuracy and per-class recall / precision on the validation split.

**Effective training prior.** A classifier's posteriors are relative to the class mix it was
fitted under. With ``balance: class_weight`` each image of class c weighs w_c in the loss, so
the loss is that of a data set with class mix proportional to n_c * w_c (uniform when
w_c = n / (C n_c), the default); with ``balance: sampling`` batches are drawn class-balanced,
so the mix is uniform; with ``balance: none`` it is the training frequencies. The calibration
is fitted afterwards on the validation split (its class mix: ``validation_counts``); a
calibration with per-class biases (vector scaling, bias-corrected temperature) moves the
posteriors to that mix, a temperature alone does not. Which prior the quantifier should use
is therefore an empirical question: quantify.py re-fits a bias-corrected calibration on the
validation predictions, which makes the posteriors relative to the validation mix by
construction (the NLL-optimal biases make the mean posterior equal the label frequencies),
and BENCHMARKS.md measures that choice against the recorded prior.

**Re-characterisation.** The validation split is small (about 60 crops per class with the
shipped recipe) and it chose the best epoch and fitted the calibration. ``slideproc evaluate
MODEL_DIR DATA_DIR --characterise`` makes DATA_DIR's labelled crops (a lab's own, from its
own slides and stain) the record instead (``recharacterise``): the same two files, with
``record`` saying what the crops are; training's own record is kept once as
``validation_predictions.train.csv`` / ``model_card.train.json``. The class shares' error
and interval width shrink with the number of record crops per class (BENCHMARKS.md).

``run`` copies the card into ``results.zarr/model_card/`` (``store_card``) so ``report`` needs
nothing but OUT_DIR. A model directory written before this module has no
``validation_predictions.csv``: its card carries the quality figures of ``metrics.json``
where present, and ``missing`` says why no adjusted differential can be made.

Public API::

    write_model_card(model_dir, *, val_paths, val_labels, calibrated, classes, train_counts,
                     balance, loss_weights=None, calibration="", tta_views=1, record=...) -> Path
    recharacterise(model_dir, *, paths, labels, calibrated, source, tta_views=1) -> Path
    read_model_card(model_dir, tta_views=None) -> ModelCard   # never raises for a missing card
    store_card(out_dir, card) -> None                         # into results.zarr/model_card/
    load_stored_card(out_dir) -> ModelCard                    # ModelCard(missing=...) when absent
"""

from __future__ import annotations

import csv
import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

log = logging.getLogger("slideproc.model_card")

VALIDATION_CSV = "validation_predictions.csv"
# Training's own record, kept once when evaluate --characterise replaces it.
TRAIN_VALIDATION_CSV = "validation_predictions.train.csv"
TRAIN_CARD_JSON = "model_card.train.json"
RECORD_VALIDATION = ("validation split: held out from training, but it chose the best epoch and fitted the "
                     "calibration")
# Training's raw outputs of the validation split in each of 8 test-time views (train.py).
VALIDATION_VIEWS_FILE = "validation_views.npz"
CARD_JSON = "model_card.json"
STORE_GROUP = "model_card"
FORMAT = "slideproc-model-card/1"

PRIOR_REASONING = (
    "The effective training prior is the class mix the loss saw: proportional to n_c * w_c with "
    "class weights w_c (uniform for the default w_c = n / (C n_c)), uniform with class-balanced "
    "sampling, the training frequencies without balancing. Calibration fitted on the validation "
    "split with per-class biases moves the posteriors to the validation mix; a temperature alone "
    "does not. The adjusted differential re-fits a bias-corrected calibration on these validation "
    "predictions, so its posteriors are relative to the validation mix (validation_counts)."
)

MISSING_OLD_MODEL = (
    "adjusted differential not available: the model directory has no {file} (it was trained before "
    "slideproc recorded validation predictions); retrain it with this version to get class shares "
    "corrected for the classifier's known errors"
)


@dataclass(frozen=True)
class ModelCard:
    """A model's validation record.

    ``y_val`` int (n,) indices into ``labels``; ``p_val`` float64 (n, C) calibrated
    probabilities; both None when the record is missing (``missing`` then says why, one
    line). ``info`` is model_card.json's content (or what metrics.json had).
    """

    labels: tuple[str, ...]
    y_val: np.ndarray | None = None
    p_val: np.ndarray | None = None
    info: dict = field(default_factory=dict)
    missing: str = ""
    model_dir: str = ""

    @property
    def usable(self) -> bool:
        return not self.missing and self.y_val is not None and self.p_val is not None

    @property
    def balanced_accuracy(self) -> float | None:
        v = self.info.get("balanced_accuracy")
        return float(v) if isinstance(v, (int, float)) else None

    def recall(self, name: str) -> float | None:
        v = (self.info.get("per_class") or {}).get(name, {}).get("recall")
        return float(v) if isinstance(v, (int, float)) else None

    def support(self, name: str) -> int | None:
        v = (self.info.get("per_class") or {}).get(name, {}).get("support")
        return int(v) if isinstance(v, (int, float)) else None


def effective_training_prior(train_counts, balance: str, loss_weights=None) -> np.ndarray:
    """Class mix (C,) summing to 1 that training's loss corresponds to (see the module doc)."""
    n = np.asarray(train_counts, np.float64)
    if balance == "sampling":
        prior = (n > 0).astype(np.float64)
    elif balance == "class_weight" and loss_weights is not None:
        prior = n * np.asarray(loss_weights, np.float64)
    elif balance == "class_weight":
        prior = (n > 0).astype(np.float64)  # w_c = n / (C n_c): n_c w_c is the same for every class
    else:
        prior = n
    total = prior.sum()
    return prior / total if total > 0 else np.full(len(n), 1.0 / max(1, len(n)))


def write_model_card(model_dir, *, val_paths, val_labels, calibrated, classes, train_counts, balance: str,
                     loss_weights=None, calibration: str = "", tta_views: int = 1,
                     record: str = RECORD_VALIDATION, source: str = "") -> Path:
    """Write validation_predictions.csv and model_card.json into ``model_dir``; returns the json path.

    ``calibrated``: float (n, C) probabilities as ``run`` will report them; ``val_labels``: int (n,);
    ``train_counts``: images per class in the training split (C,) or {class: count}; ``record``:
    what the crops are (one line, kept in the card); ``source``: their folder, when not training's.
    """
    from .metrics import classification_metrics

    model_dir = Path(model_dir)
    classes = [str(c) for c in classes]
    y = np.asarray(val_labels, int)
    probs = np.asarray(calibrated, np.float64)
    if probs.shape != (len(y), len(classes)):
        raise ValueError(f"calibrated probabilities of shape {probs.shape} for {len(y)} crops and {len(classes)} classes")
    if isinstance(train_counts, dict):
        train_counts = [int(train_counts.get(c, 0)) for c in classes]
    tmp = model_dir / f".{VALIDATION_CSV}.{os.getpid()}.tmp"
    with open(tmp, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "true_class", *[f"p_{c}" for c in classes]])
        for path, label, row in zip(val_paths, y, probs):
            w.writerow([str(path), classes[label], *[f"{v:.9g}" for v in row]])
    os.replace(tmp, model_dir / VALIDATION_CSV)

    m = classification_metrics(y, probs, classes)
    prior = effective_training_prior(train_counts, balance, loss_weights)
    card = {
        "format": FORMAT,
        "labels": classes,
        "n_val": int(len(y)),
        "validation_counts": {c: int(k) for c, k in zip(classes, np.bincount(y, minlength=len(classes)))},
        "train_counts": {c: int(k) for c, k in zip(classes, train_counts)},
        "balance": balance,
        "loss_weights": None if loss_weights is None else [float(v) for v in loss_weights],
        "training_prior": {c: float(v) for c, v in zip(classes, prior)},
        "training_prior_reasoning": PRIOR_REASONING,
        "calibration": calibration,
        # The probabilities of validation_predictions.csv average this many test-time views.
        "tta_views": int(tta_views),
        "balanced_accuracy": m["balanced_accuracy"],
        "top1_accuracy": m["top1_accuracy"],
        "per_class": {c: {k: m["per_class"][c][k] for k in ("recall", "precision", "support")} for c in classes},
        "confusion_matrix": m["confusion_matrix"],
        "record": record,
        "note": f"figures on the record's crops ({record})",
    }
    if source:
        card["record_source"] = str(source)
    path = model_dir / CARD_JSON
    tmp = model_dir / f".{CARD_JSON}.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def recharacterise(model_dir, *, paths, labels, calibrated, source, tta_views: int = 1) -> Path:
    """Make labelled crops of ``source`` MODEL_DIR's record (``evaluate --characterise``); returns the json path.

    ``labels``: int (n,) indices into the model's classes; ``calibrated``: float (n, C) as ``run``
    reports them with ``tta_views`` views. Training's own record is renamed to the ``.train``
    names the first time (never overwritten afterwards, so it can be restored by hand); the
    training facts of its card (training counts, balancing, calibration) are carried over.
    Raises ValueError when ``labels`` miss a class (the methods need every class's errors) and
    OSError when MODEL_DIR cannot be written.
    """
    model_dir = Path(model_dir)
    classes = json.loads((model_dir / "labels.json").read_text(encoding="utf-8"))["labels"]
    y = np.asarray(labels, int)
    absent = [c for c, k in zip(classes, np.bincount(y, minlength=len(classes))) if k == 0]
    if absent:
        raise ValueError(f"{source} has no crops of class(es) {', '.join(absent)}; a record needs every class the "
                         f"model knows (its errors on each)")
    base = model_dir / CARD_JSON
    if (model_dir / TRAIN_CARD_JSON).is_file():
        base = model_dir / TRAIN_CARD_JSON
    old = json.loads(base.read_text(encoding="utf-8")) if base.is_file() else {}
    for name, kept in ((VALIDATION_CSV, TRAIN_VALIDATION_CSV), (CARD_JSON, TRAIN_CARD_JSON)):
        if (model_dir / name).is_file() and not (model_dir / kept).exists():
            os.replace(model_dir / name, model_dir / kept)
    return write_model_card(model_dir, val_paths=paths, val_labels=y, calibrated=calibrated, classes=classes,
                            train_counts=old.get("train_counts") or [0] * len(classes),
                            balance=old.get("balance", "unknown"), loss_weights=old.get("loss_weights"),
                            calibration=old.get("calibration", ""), tta_views=tta_views,
                            record="labelled crops given to slideproc evaluate --characterise: they neither "
                                   "trained the model nor chose its epoch or calibration", source=str(source))


def _read_validation_csv(path: Path, labels: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    df = pd.read_csv(path)
    cols = [f"p_{c}" for c in labels]
    missing = [c for c in ["true_class", *cols] if c not in df.columns]
    if missing:
        raise ValueError(f"{path} lacks column(s) {', '.join(missing)}")
    index = {c: i for i, c in enumerate(labels)}
    unknown = sorted(set(df["true_class"]) - set(index))
    if unknown:
        raise ValueError(f"{path} names class(es) {', '.join(map(str, unknown))} that labels.json does not list")
    return df["true_class"].map(index).to_numpy(int), df[cols].to_numpy(np.float64)


def _views_record(model_dir: Path, labels: tuple[str, ...], views: int) -> tuple[np.ndarray, np.ndarray] | None:
    """(labels, calibrated probabilities) of the validation split for ``views`` test-time views, from
    training's raw per-view outputs (validation_views.npz) and calibration.json; None without them."""
    from .classify.calibration import CALIBRATION_FILE, calibrate, read_calibrations

    npz, cal = model_dir / VALIDATION_VIEWS_FILE, model_dir / CALIBRATION_FILE
    if not (npz.is_file() and cal.is_file()):
        return None
    with np.load(npz, allow_pickle=False) as data:
        raw, y, classes = data["probabilities"], data["labels"], [str(c) for c in data["classes"]]
    fits = read_calibrations(cal, len(labels))
    if classes != list(labels) or views not in fits or raw.shape[0] < views:
        return None
    return np.asarray(y, int), np.asarray(calibrate(raw[:views].mean(axis=0), fits[views]), np.float64)


def read_model_card(model_dir, tta_views: int | None = None) -> ModelCard:
    """The card of MODEL_DIR; for an old or damaged one a card whose ``missing`` says why (never raises).

    ``tta_views``: the number of test-time views ``run`` averages (classify.tta_views). The
    validation probabilities must be calibrated as the cells' are: when it differs from the
    record's, they are rebuilt from training's per-view outputs and calibrations.
    """
    model_dir = Path(model_dir)
    try:
        labels = tuple(json.loads((model_dir / "labels.json").read_text(encoding="utf-8"))["labels"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        return ModelCard(labels=(), missing=f"adjusted differential not available: cannot read "
                                            f"{model_dir / 'labels.json'} ({type(err).__name__})",
                         model_dir=str(model_dir))
    info: dict = {}
    card_path = model_dir / CARD_JSON
    if card_path.is_file():
        try:
            info = json.loads(card_path.read_text(encoding="utf-8"))
        except ValueError:
            info = {}
    if not info:
        # An older model: its metrics.json still says how good it is on its validation split.
        try:
            v = json.loads((model_dir / "metrics.json").read_text(encoding="utf-8")).get("validation") or {}
            info = {k: v[k] for k in ("balanced_accuracy", "top1_accuracy", "per_class", "confusion_matrix", "n")
                    if k in v}
            if "n" in info:
                info["n_val"] = info.pop("n")
        except (OSError, ValueError, AttributeError):
            info = {}
    csv_path = model_dir / VALIDATION_CSV
    if not csv_path.is_file():
        return ModelCard(labels=labels, info=info, missing=MISSING_OLD_MODEL.format(file=VALIDATION_CSV),
                         model_dir=str(model_dir))
    recorded_views = int(info.get("tta_views") or 1)
    # Training's per-view outputs describe its validation split: only that record can be rebuilt.
    of_validation = not info.get("record_source")
    try:
        rebuilt = (_views_record(model_dir, labels, tta_views)
                   if tta_views is not None and tta_views != recorded_views and of_validation else None)
        if rebuilt is not None:
            y, p = rebuilt
            info = {**info, "tta_views": int(tta_views)}
        else:
            if tta_views is not None and tta_views != recorded_views:
                log.warning("%s: the record's predictions are for %d test-time view(s), the run uses %d and %s; "
                            "the adjusted differential uses them as they are", model_dir, recorded_views, tta_views,
                            f"{VALIDATION_VIEWS_FILE} cannot rebuild them" if of_validation else
                            f"they came from {info.get('record_source')} (evaluate --characterise with "
                            f"--tta-views {tta_views} matches them)")
            y, p = _read_validation_csv(csv_path, labels)
    except (OSError, ValueError, KeyError) as err:
        return ModelCard(labels=labels, info=info, model_dir=str(model_dir),
                         missing=f"adjusted differential not available: {err}")
    return ModelCard(labels=labels, y_val=y, p_val=p, info=info, model_dir=str(model_dir))


def store_card(out_dir, card: ModelCard) -> None:
    """Copy ``card`` into OUT_DIR/results.zarr/model_card/ (replacing an older copy), atomically."""
    import zarr

    from .store import zarr_store

    root = zarr_store.store_path(out_dir)
    for stale in root.glob(f".{STORE_GROUP}.*"):  # left by a crash during an earlier copy
        shutil.rmtree(stale, ignore_errors=True)
    final = root / STORE_GROUP
    tmp = root / f".{STORE_GROUP}.tmp-{uuid.uuid4().hex[:8]}"
    group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
    group.attrs.update(zarr_store._plain({"format": FORMAT, "labels": list(card.labels), "info": card.info,
                                          "missing": card.missing, "model_dir": card.model_dir}))
    if card.usable:
        group.create_array("validation_true_class", data=np.asarray(card.y_val, np.int16))
        group.create_array("validation_probabilities", data=np.asarray(card.p_val, np.float32))
    old = root / f".{STORE_GROUP}.old-{uuid.uuid4().hex[:8]}"
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


def load_stored_card(out_dir) -> ModelCard:
    """The card ``run`` stored with the results; a card with ``missing`` set when there is none."""
    import zarr

    from .store import zarr_store

    path = zarr_store.store_path(out_dir) / STORE_GROUP
    if not (path / "zarr.json").is_file():
        return ModelCard(labels=(), missing="adjusted differential not available: results.zarr holds no record "
                                            "of the model's validation errors (run before slideproc stored one); "
                                            "run again into a new folder to get it")
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    labels = tuple(attrs.get("labels") or ())
    y = p = None
    if "validation_true_class" in group and "validation_probabilities" in group:
        y = np.asarray(group["validation_true_class"][:], int)
        p = np.asarray(group["validation_probabilities"][:], np.float64)
    return ModelCard(labels=labels, y_val=y, p_val=p, info=dict(attrs.get("info") or {}),
                     missing=str(attrs.get("missing") or ""), model_dir=str(attrs.get("model_dir") or ""))
