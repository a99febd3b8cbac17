"""``slideproc train``: fit the InceptionResNetV2 classifier on class folders.

From pretrained weights, two phases: the head on a frozen backbone (its batch
norms stay in inference mode, so the ImageNet statistics are kept), then the
whole network at a lower learning rate. From ``--weights none`` one phase
trains everything. Each epoch is one ``fit`` call followed by a validation
pass; the epoch with the best validation macro-F1 is kept (macro-F1, not
accuracy: with 29,424 NGS against 8 ABE, accuracy rewards ignoring the rare
classes). At the end the kept network predicts the validation split in all
8 test-time views once, and a calibration (temperature or vector scaling,
``training.calibration``) is fitted for 1, 2, 4 and 8 averaged views
(calibration.json), so the engine's probabilities are calibrated whatever
``classify.tta_views`` it runs with.

Safeguards: classes under ``training.min_per_class`` images are left out and
named; class weights are bounded (``training.max_class_weight``); a kept
model whose validation balanced accuracy is near chance (below chance + 25 %
of the way to 1, :func:`near_chance_threshold`) fails the run (exit 1) or,
with ``training.near_chance: warn``, is written with a loud warning. The log
says "epoch N of M", the time left and when ``max_minutes`` will stop
training; Keras' progress bars are drawn only on a terminal.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import platform
import sys
import time
from pathlib import Path

from .backend_noise import import_keras

import_keras()  # the first keras import anywhere: without TensorFlow's start-up lines on stderr
import keras  # noqa: E402
import numpy as np

from .classify.calibration import (CALIBRATION_FILE, Calibration, calibrate, fit_calibration, fit_temperature,
                                   write_calibrations)
from .classify.loading import LABELS_FILE, MODEL_FILE, LoadedModel, write_sha256
from .classify.model import BACKBONE, build_classifier, initial_model, resolve_weights
from .classify.predict import Predictor, resolve_precision
from .classify.tta import VIEW_COUNTS
from .config import TrainConfig, dump_yaml, to_dict
from .datasets import ImageSet, load_train_val
from .errors import DataError, TrainingError
from .metrics import classification_metrics
from .model_card import write_model_card
from .pipeline import TrainingBatches, class_weights, iter_crops

log = logging.getLogger("slideproc.train")

HISTORY_FIELDS = ("epoch", "phase", "learning_rate", "loss", "accuracy", "val_loss", "val_accuracy",
                  "val_balanced_accuracy", "val_macro_f1", "seconds")
VALIDATION_VIEWS_FILE = "validation_views.npz"
# Share of the way from chance to perfect below which a model counts as near chance.
NEAR_CHANCE_SHARE = 0.25


def near_chance_threshold(n_classes: int) -> float:
    """Balanced accuracy below which a model of ``n_classes`` is "near chance".

    Chance (a constant or random answer) scores 1/C balanced accuracy; the
    threshold is a quarter of the way from there to 1: 0.34 for 8 classes,
    0.5 for 3, 0.625 for 2. A trained model below it has learnt next to
    nothing of what its data holds (issue: one-image classes drove a
    14-class model to 0.04).
    """
    chance = 1.0 / n_classes
    return chance + NEAR_CHANCE_SHARE * (1.0 - chance)


def learning_rate_at(progress: float, peak: float, warmup: float, kind: str) -> float:
    """Rate at ``progress`` (0-1) through a phase: linear warm-up over the first
    ``warmup`` share, then cosine to 0 at the end (or constant).

    Warm-up matters from scratch: the first Adam steps on random batch-norm
    statistics are the largest and least informed.
    """
    if warmup > 0 and progress < warmup:
        return peak * progress / warmup
    if kind == "constant":
        return peak
    t = min(1.0, (progress - warmup) / max(1e-9, 1.0 - warmup))
    return peak * 0.5 * (1.0 + math.cos(math.pi * t))


class _Clock:
    """How far through a phase training is: by epochs, or by the time budget
    when that runs out first.

    On a shared machine an epoch may take three times as long as planned; a
    schedule on epochs alone would then be cut off at a high learning rate.
    With ``max_minutes`` the rate decays on whichever is further along, and
    training stops when the next epoch would not fit, so it always ends on a
    decayed rate. (The run is then reproducible only up to the epoch count.)
    """

    def __init__(self, n_epochs: int, deadline: float | None):
        self.n_epochs = n_epochs
        self.deadline = deadline  # time.monotonic() value, or None
        self.durations: list[float] = []
        self.start = time.monotonic()
        # Seconds kept after the last epoch (final validation views, saving).
        self.reserve = 60.0

    def _epoch_seconds(self) -> float | None:
        # The first epoch includes compiling the step (minutes with XLA): skip it.
        timed = self.durations[1:]
        return float(np.median(timed[-3:])) if timed else None

    def progress(self, epoch: int) -> float:
        """Progress at the middle of ``epoch`` (0-based)."""
        p = (epoch + 0.5) / self.n_epochs
        d = self._epoch_seconds()
        if self.deadline is not None and d is not None:
            now = time.monotonic()
            p = max(p, (now - self.start + d / 2) / max(1.0, self._end() - self.start))
        return min(p, 1.0)

    def _end(self) -> float:
        return self.deadline - self.reserve if self.deadline is not None else math.inf

    def _typical(self) -> float:
        return self._epoch_seconds() or (self.durations[-1] if self.durations else 0.0)

    def out_of_time(self) -> bool:
        return self.deadline is not None and time.monotonic() + self._typical() > self._end()

    def projection(self, done: int) -> tuple[float, int | None]:
        """(seconds of epochs left in the phase, the epoch after which the time
        cap will stop it, or None when all epochs fit), after ``done`` epochs."""
        d = self._typical()
        left = self.n_epochs - done
        if self.deadline is None or d <= 0:
            return left * d, None
        fit = max(0, int((self._end() - time.monotonic()) // d))
        return (fit * d, done + fit) if fit < left else (left * d, None)


class _PlainProgress(keras.callbacks.Callback):
    """Progress inside an epoch as plain log lines, at most one per ``every`` seconds.

    Keras' progress bar redraws itself with carriage returns and ANSI colour
    codes: fine on a terminal, thousands of escape sequences per epoch in a
    redirected log. Training uses this instead when stdout is not a terminal.
    """

    def __init__(self, steps: int, every: float = 60.0):
        super().__init__()
        self.steps, self.every, self.label = steps, every, ""
        self.t0 = self.last = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.t0 = self.last = time.monotonic()

    def on_train_batch_end(self, batch, logs=None):
        now = time.monotonic()
        if now - self.last >= self.every and batch + 1 < self.steps:
            self.last = now
            loss = (logs or {}).get("loss")
            log.info("%s: step %d of %d%s [%.0f s]", self.label, batch + 1, self.steps,
                     f", loss {float(loss):.3f}" if loss is not None else "", now - self.t0)


def _optimizer(cfg, rate: float):
    """The optimizer; its rate is set before every epoch (a variable, so on any backend)."""
    t = cfg.training
    if t.optimizer == "sgd":
        return keras.optimizers.SGD(rate, momentum=0.9, nesterov=True, weight_decay=t.weight_decay or None)
    if t.optimizer == "adam":
        return keras.optimizers.Adam(rate)
    opt = keras.optimizers.AdamW(rate, weight_decay=t.weight_decay)
    # Decay shrinks weights towards 0; for biases and batch-norm offsets that
    # is a bias, not a regulariser.
    opt.exclude_from_weight_decay(var_names=["bias", "beta"])
    return opt


def recompute_bn_statistics(model: keras.Model, batches) -> int:
    """Set every backbone batch norm's moving statistics to the mean over ``batches``.

    A network trained from scratch changes faster than a 0.99 running average
    follows; evaluating with statistics of the current weights removes the
    epoch-to-epoch swings of validation accuracy. Momentum (k-1)/k at the k-th
    batch makes the running average an exact mean. Eager calls read the
    momentum attribute afresh; compiled training steps keep theirs.
    """
    bns = [layer for layer in model.get_layer(BACKBONE).layers
           if isinstance(layer, keras.layers.BatchNormalization) and layer.trainable]
    saved = [layer.momentum for layer in bns]
    k = 0
    try:
        for x in batches:
            k += 1
            for layer in bns:
                layer.momentum = (k - 1) / k
            model(x, training=True)
    finally:
        for layer, m in zip(bns, saved):
            layer.momentum = m
    return k


def _val_row(y: np.ndarray, probs: np.ndarray, classes) -> dict:
    m = classification_metrics(y, probs, classes)
    return {"val_loss": m["log_loss"], "val_accuracy": m["top1_accuracy"],
            "val_balanced_accuracy": m["balanced_accuracy"], "val_macro_f1": m["macro_f1"]}


class _History:
    def __init__(self, path: Path):
        self.path = path
        self.rows: list[dict] = []

    def add(self, row: dict) -> None:
        self.rows.append(row)
        with open(self.path, "w", newline="", encoding="utf-8") as fh:
            w = csv.DictWriter(fh, HISTORY_FIELDS)
            w.writeheader()
            for r in self.rows:
                w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def _check_sizes(train: ImageSet, val: ImageSet, batch_size: int) -> None:
    if len(train) < batch_size:
        raise DataError(
            f"only {len(train)} training images for a batch of {batch_size}; lower --batch-size or add images"
        )


def train(data_dir: Path, out_dir: Path, cfg: TrainConfig, *, val_dir: Path | None = None,
          verbose: int = 1) -> dict:
    """Train on DATA_DIR, write MODEL_DIR (out_dir); return metrics.json's content."""
    start = time.monotonic()
    t, m = cfg.training, cfg.model
    weights = resolve_weights(m.weights)
    train_set, val_set, left_out = load_train_val(Path(data_dir), val_fraction=t.val_fraction,
                                                  min_per_class=t.min_per_class, seed=t.seed, val_dir=val_dir)
    _check_sizes(train_set, val_set, t.batch_size)
    classes = train_set.classes
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    _write_split(out_dir / "split.csv", train_set, val_set)

    keras.utils.set_random_seed(t.seed)
    precision = resolve_precision(t.mixed_precision)
    previous_policy = keras.config.dtype_policy()
    keras.config.set_dtype_policy(precision)
    try:
        model = initial_model(list(classes), m.input_size_px, weights, dropout=m.dropout,
                              bn_momentum=m.bn_momentum)
    finally:
        keras.config.set_dtype_policy(previous_policy)
    log.info("input %d px, %s, backend %s", m.input_size_px, precision, keras.backend.backend())

    batches = TrainingBatches(train_set, m.input_size_px, t.batch_size, seed=t.seed, augment_cfg=t.augment,
                              balance=t.balance, steps=t.steps_per_epoch, workers=t.workers,
                              max_class_weight=t.max_class_weight)
    plain = TrainingBatches(train_set, m.input_size_px, t.batch_size, seed=t.seed + 1, augment_cfg=None,
                            balance="none", workers=t.workers)
    weights_used = dict(zip(classes, (float(w) for w in batches.weights)))
    if t.balance == "class_weight":
        capped = [c for c, w in zip(classes, class_weights(train_set.labels, len(classes))) if w > t.max_class_weight]
        log.info("class weights: %s%s", ", ".join(f"{c} {w:.2f}" for c, w in weights_used.items()),
                 f" (capped at max_class_weight {t.max_class_weight:g}: {', '.join(capped)})" if capped else "")

    def predictor_for(network: keras.Model) -> Predictor:
        """A predictor running ``network`` as it is (in its own dtype policy)."""
        loaded = LoadedModel(model=network, labels=classes, sha256="(training)", input_size_px=m.input_size_px,
                             temperature=1.0, path=out_dir)
        return Predictor(loaded, batch_size=t.batch_size, mixed_precision="float32")

    def validate_views(predictor: Predictor, views: int) -> np.ndarray:
        """Uncalibrated probabilities of each of the first ``views`` views, (views, N, C)."""
        out = [predictor.predict_views(x, views) for x in iter_crops(val_set.paths, m.input_size_px, t.batch_size,
                                                                     t.workers)]
        return np.concatenate(out, axis=1)

    def validate(predictor: Predictor) -> np.ndarray:
        """Uncalibrated probabilities on the validation split, averaged over ``training.tta_views`` views."""
        return validate_views(predictor, t.tta_views).mean(axis=0)

    training_predictor = predictor_for(model)

    phases = []
    if weights.pretrained and t.head_epochs > 0:
        phases.append(("head", t.head_epochs, t.head_learning_rate, False))
    phases.append(("finetune" if weights.pretrained else "train", t.epochs, t.learning_rate, True))
    total_epochs = sum(p[1] for p in phases)

    loss = keras.losses.CategoricalCrossentropy(label_smoothing=t.label_smoothing)
    history = _History(out_dir / "history.csv")
    best = {"macro_f1": -1.0, "epoch": 0, "weights": None, "probs": None}
    epoch, since_best, stopped = 0, 0, ""
    deadline = start + 60 * t.max_minutes if t.max_minutes is not None else None
    if deadline is not None:
        log.info("time cap: max_minutes %g, until %s; the last epoch is the one that ends before then, less "
                 "a minute or two kept for calibration and saving", t.max_minutes,
                 time.strftime("%H:%M", time.localtime(time.time() + deadline - time.monotonic())))
    # Keras draws progress bars on stdout: only where a person watches them.
    bars = bool(verbose) and sys.stdout.isatty()
    progress = _PlainProgress(len(batches)) if verbose and not bars else None
    for phase_index, (phase, n_epochs, peak, backbone_trainable) in enumerate(phases):
        model.get_layer(BACKBONE).trainable = backbone_trainable
        steps = len(batches)
        warmup = min(1.0, t.warmup_epochs / n_epochs)
        model.compile(optimizer=_optimizer(cfg, learning_rate_at(0.5 / n_epochs, peak, warmup, t.schedule)),
                      loss=loss, metrics=[keras.metrics.CategoricalAccuracy(name="accuracy")],
                      jit_compile="auto" if t.jit_compile is None else t.jit_compile,
                      run_eagerly=t.run_eagerly)
        clock = _Clock(n_epochs, deadline if backbone_trainable else None)
        log.info("phase %s: %d epochs x %d steps, peak learning rate %g, backbone %s", phase, n_epochs, steps,
                 peak, "trainable" if backbone_trainable else "frozen")
        for phase_epoch in range(n_epochs):
            tick = time.monotonic()
            rate = learning_rate_at(clock.progress(phase_epoch), peak, warmup, t.schedule)
            model.optimizer.learning_rate = rate
            batches.set_epoch(epoch)
            if progress is not None:
                progress.label = f"epoch {epoch + 1} of {total_epochs} ({phase})"
            fit = model.fit(batches, epochs=1, verbose=1 if bars else 0,
                            callbacks=[progress] if progress is not None else None)
            if backbone_trainable and t.bn_recompute_batches:
                plain.set_epoch(epoch)
                recompute_bn_statistics(model, (plain[i][0] for i in range(min(t.bn_recompute_batches,
                                                                                   len(plain)))))
            val_tick = time.monotonic()
            probs = validate(training_predictor)
            # The final pass predicts 8 views of the validation split: keep time for it.
            clock.reserve = min(60.0 + 8 * (time.monotonic() - val_tick) / t.tta_views,
                                30.0 * (t.max_minutes or 0))
            row = {"epoch": epoch + 1, "phase": phase, "learning_rate": rate,
                   "loss": float(fit.history["loss"][-1]), "accuracy": float(fit.history["accuracy"][-1]),
                   **_val_row(val_set.labels, probs, classes), "seconds": time.monotonic() - tick}
            clock.durations.append(row["seconds"])
            history.add(row)
            epoch += 1
            improved = row["val_macro_f1"] > best["macro_f1"]
            if improved:
                best.update(macro_f1=row["val_macro_f1"], epoch=epoch, weights=model.get_weights(), probs=probs)
                since_best = 0
            else:
                since_best += 1
            left, cap_epoch = clock.projection(phase_epoch + 1)
            left += sum(p[1] for p in phases[phase_index + 1:]) * clock._typical()
            eta = time.strftime("%H:%M", time.localtime(time.time() + left))
            when = (f"; max_minutes {t.max_minutes:g} will stop it after epoch {cap_epoch - phase_epoch - 1 + epoch}"
                    if cap_epoch is not None and phase_epoch + 1 < n_epochs else "")
            log.info("epoch %d of %d (%s): loss %.3f, val accuracy %.3f, balanced %.3f, macro-F1 %.3f%s [%.0f s]; "
                     "about %.0f min of epochs left (until %s)%s", epoch, total_epochs, phase, row["loss"],
                     row["val_accuracy"], row["val_balanced_accuracy"], row["val_macro_f1"],
                     " *best*" if improved else "", row["seconds"], left / 60, eta, when)
            if phase_epoch + 1 < n_epochs and clock.out_of_time():
                stopped = (f"time budget: another epoch would pass max_minutes {t.max_minutes} "
                           f"(at {(time.monotonic() - start) / 60:.1f} min)")
            elif t.early_stopping_patience and backbone_trainable and since_best >= t.early_stopping_patience:
                stopped = f"early stopping: no better macro-F1 for {since_best} epochs"
            if stopped:
                break
        if stopped:
            log.info("stopped after epoch %d of %d: %s", epoch, total_epochs, stopped)
            break

    model.set_weights(best["weights"])
    saved = _float32_copy(model, cfg, len(classes))
    # Calibrate and report on the network as saved (float32, whatever it
    # trained in), from all 8 views once: every view count gets its own fit.
    log.info("best epoch %d (val macro-F1 %.3f as trained, %s); predicting the validation split in %d views "
             "to calibrate", best["epoch"], best["macro_f1"], precision, max(VIEW_COUNTS))
    final = predictor_for(saved)
    parts = [final.predict_views(x, max(VIEW_COUNTS), with_features=True)
             for x in iter_crops(val_set.paths, m.input_size_px, t.batch_size, t.workers)]
    views = np.concatenate([p[0] for p in parts], axis=1)
    val_features = np.concatenate([p[1] for p in parts])  # first view's pooled features (record_check.py)
    raw = {k: views[:k].mean(axis=0) for k in VIEW_COUNTS}
    y_val = val_set.labels
    fits = {k: fit_calibration(raw[k], y_val, t.calibration) for k in VIEW_COUNTS}
    calibration = fits[t.tta_views]
    temperature = fit_temperature(raw[1], y_val)  # labels.json keeps it for older readers
    best["probs"] = raw[t.tta_views]
    calibrated = calibrate(best["probs"], calibration)
    sha = _save_model(saved, out_dir)
    write_calibrations(out_dir / CALIBRATION_FILE, fits,
                       fitted_on=f"validation split (n={len(val_set)}), {t.calibration} scaling by negative "
                                 f"log-likelihood")
    np.savez_compressed(out_dir / VALIDATION_VIEWS_FILE, probabilities=views.astype(np.float32), labels=y_val,
                        classes=np.asarray(classes))
    info = {"labels": list(classes), "input_size_px": m.input_size_px, "temperature": temperature,
            "architecture": "InceptionResNetV2", "dropout": m.dropout,
            "preprocessing": "uint8 RGB resized to input_size_px (PIL bilinear), then x / 127.5 - 1 "
                             "inside the model (CropPreprocess layer)",
            "calibration": f"{t.calibration} scaling per number of test-time views in {CALIBRATION_FILE}, fitted "
                           f"on the validation split (n={len(val_set)}); 'temperature' here is the one-view "
                           f"temperature",
            "weights": weights.describe(), "model_sha256": sha}
    (out_dir / LABELS_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    dump_yaml(cfg, out_dir / "config.yaml")

    uncal = classification_metrics(y_val, best["probs"], classes)
    validation = classification_metrics(y_val, calibrated, classes)
    by_views = {}
    for k in VIEW_COUNTS:
        mk = classification_metrics(y_val, calibrate(raw[k], fits[k]), classes)
        by_views[str(k)] = {key: mk[key] for key in ("top1_accuracy", "balanced_accuracy", "macro_f1", "log_loss",
                                                     "ece")}
    threshold = near_chance_threshold(len(classes))
    near_chance = validation["balanced_accuracy"] < threshold
    quality = {
        "status": "near chance" if near_chance else "ok",
        "chance_balanced_accuracy": round(1.0 / len(classes), 4),
        "near_chance_below": round(threshold, 4),
        "rule": f"validation balanced accuracy below chance + {NEAR_CHANCE_SHARE:g} x (1 - chance) is near "
                f"chance; training.near_chance: {t.near_chance}",
    }
    metrics = {
        "weights": weights.describe(),
        "pretrained": weights.pretrained,
        "architecture": "InceptionResNetV2",
        "input_size_px": m.input_size_px,
        "classes": list(classes),
        "left_out_classes": left_out,
        "min_per_class": t.min_per_class,
        "class_weights": weights_used,
        "data_dir": str(data_dir),
        "val_dir": str(val_dir) if val_dir else None,
        "n_train": len(train_set),
        "n_val": len(val_set),
        "train_counts": train_set.counts(),
        "val_counts": val_set.counts(),
        "best_epoch": best["epoch"],
        "epochs_run": epoch,
        "epochs_planned": total_epochs,
        "stopped": stopped or "completed all epochs",
        "train_minutes": round((time.monotonic() - start) / 60, 2),
        "temperature": temperature,
        "calibration": {"method": t.calibration, "file": CALIBRATION_FILE, "tta_views": t.tta_views,
                        **calibration.to_dict()},
        "model_sha256": sha,
        "backend": keras.backend.backend(),
        "precision": precision,
        "versions": {"keras": keras.__version__, "python": platform.python_version(), "numpy": np.__version__},
        # Wall time means little without the machine's load: record both.
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15_min": [round(x, 2) for x in os.getloadavg()],
        "seed": t.seed,
        "quality": quality,
        "validation": {
            "note": f"validation split at the best epoch, {t.tta_views} test-time view(s), probabilities calibrated "
                    "with the calibration fitted on this same split (so ece here is optimistic; evaluate on other "
                    "data for an honest one)",
            **validation,
        },
        "validation_uncalibrated": {"log_loss": uncal["log_loss"], "ece": uncal["ece"]},
        "validation_by_views": {"note": "the same split, each view count with its own calibration (as "
                                        "classify.tta_views would use it)", **by_views},
        "config": to_dict(cfg),
    }
    (out_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    from .evaluate import plot_reliability

    plot_reliability(out_dir / "reliability.png", validation["reliability"], validation["ece"],
                     f"{out_dir.name}: validation split (calibrated on it), {t.tta_views} view(s)")
    # What the adjusted differential needs: validation predictions, priors, confusion matrix.
    write_model_card(out_dir, val_paths=val_set.paths, val_labels=y_val, calibrated=calibrated,
                     classes=classes, train_counts=train_set.counts(), balance=t.balance,
                     loss_weights=batches.weights if t.balance == "class_weight" else None,
                     calibration=info.get("calibration", ""), tta_views=t.tta_views)
    _write_feature_record(out_dir, val_features, y_val, calibrated.argmax(axis=1), len(classes), sha)
    v = metrics["validation"]
    log.info("validation: top-1 %.3f, balanced accuracy %.3f, macro-F1 %.3f, ECE %.3f; 4 views: balanced "
             "%.3f; initial weights: %s; wrote %s in %.1f min", v["top1_accuracy"], v["balanced_accuracy"],
             v["macro_f1"], v["ece"], by_views["4"]["balanced_accuracy"], weights.describe(), out_dir,
             metrics["train_minutes"])
    if near_chance:
        message = (f"the trained model is near chance: validation balanced accuracy {v['balanced_accuracy']:.3f} "
                   f"with {len(classes)} classes (chance {1 / len(classes):.3f}, near-chance threshold "
                   f"{threshold:.3f}); do not use {out_dir} as it is: check the class folders (counts: "
                   f"{', '.join(f'{c} {n}' for c, n in train_set.counts().items())}), the learning rate and "
                   f"the epochs")
        if t.near_chance == "fail":
            raise TrainingError(message)
        log.warning("WARNING: %s", message)
    return metrics


def _write_feature_record(out_dir: Path, features: np.ndarray, y_val, predicted, n_classes: int,
                          model_sha256: str) -> None:
    """MODEL_DIR/feature_record.npz from the validation split: what `run` checks each
    sample's cells against (classify/record_check.py). A record an earlier training left
    in MODEL_DIR is removed first: it belongs to another model."""
    from .classify.record_check import FEATURE_RECORD_FILE, fit_feature_record, write_feature_record

    for stale in (FEATURE_RECORD_FILE, FEATURE_RECORD_FILE.replace(".npz", ".train.npz")):
        (out_dir / stale).unlink(missing_ok=True)
    try:
        write_feature_record(out_dir, fit_feature_record(features, y_val, predicted, n_classes,
                                                         model_sha256=model_sha256))
    except ValueError as err:
        log.warning("no record check for this model (run will not say whether a sample's cells look like "
                    "the validation crops): %s", err)


def _write_split(path: Path, train_set: ImageSet, val_set: ImageSet) -> None:
    """Which image went where, so the validation figures can be reproduced with evaluate."""
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "class", "subset"])
        for subset_name, data in (("train", train_set), ("val", val_set)):
            for p, y in zip(data.paths, data.labels):
                w.writerow([str(p), data.classes[y], subset_name])


def _float32_copy(model: keras.Model, cfg: TrainConfig, n_classes: int) -> keras.Model:
    """The trained network rebuilt under float32, whatever policy it trained in."""
    m = cfg.model
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy("float32")
    try:
        clean = build_classifier(n_classes, m.input_size_px, dropout=m.dropout, bn_momentum=m.bn_momentum)
    finally:
        keras.config.set_dtype_policy(previous)
    clean.set_weights(model.get_weights())
    return clean


def _save_model(clean: keras.Model, out_dir: Path) -> str:
    """model.keras (float32, no optimizer) written atomically, and model.sha256."""
    final = out_dir / MODEL_FILE
    tmp = out_dir / f".{MODEL_FILE}.{os.getpid()}.tmp.keras"
    clean.save(tmp)
    os.replace(tmp, final)
    return write_sha256(final)
