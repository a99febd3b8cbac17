"""Class-folder image data sets (the Matek layout) and their train/validation split.

``DATA_DIR/<CLASS>/**/*.jpg|jpeg|png|tif|tiff``: one folder per class, images
anywhere below it. Files are listed in sorted order and split with a seeded
generator, so the same folder and seed give the same split on any machine.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError

log = logging.getLogger("slideproc.datasets")

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".tif", ".tiff")


@dataclass(frozen=True)
class ImageSet:
    """Image paths with integer labels into ``classes``."""

    paths: tuple[Path, ...]
    labels: np.ndarray  # int (N,)
    classes: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.paths)

    def counts(self) -> dict[str, int]:
        n = np.bincount(self.labels, minlength=len(self.classes))
        return {c: int(k) for c, k in zip(self.classes, n)}


def scan_class_folders(data_dir: Path) -> dict[str, list[Path]]:
    """{class: sorted image paths}; classes are the sub-folders holding images."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise DataError(f"data directory not found: {data_dir}")
    found: dict[str, list[Path]] = {}
    for sub in sorted(p for p in data_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p for p in sub.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if files:
            found[sub.name] = files
    if not found:
        raise DataError(
            f"{data_dir} holds no class folders with images; expected DATA_DIR/<CLASS>/*.jpg|png|tif"
        )
    return found


def filter_min_per_class(found: dict[str, list[Path]], min_per_class: int
                         ) -> tuple[dict[str, list[Path]], dict[str, int]]:
    """(kept classes, {left-out class: image count}); classes under ``min_per_class`` are left out."""
    kept = {c: f for c, f in found.items() if len(f) >= min_per_class}
    dropped = {c: len(f) for c, f in found.items() if len(f) < min_per_class}
    if dropped:
        log.warning("left out %d classes with fewer than %d images: %s", len(dropped), min_per_class,
                    ", ".join(f"{c} ({n})" for c, n in dropped.items()))
    if len(kept) < 2:
        raise DataError(
            f"only {len(kept)} class(es) have >= {min_per_class} images; lower --min-per-class "
            f"(counts: {', '.join(f'{c} {len(f)}' for c, f in found.items())})"
        )
    return kept, dropped


def image_set(found: dict[str, list[Path]], classes: tuple[str, ...]) -> ImageSet:
    index = {c: i for i, c in enumerate(classes)}
    paths, labels = [], []
    for cls, files in found.items():
        paths += files
        labels += [index[cls]] * len(files)
    return ImageSet(tuple(paths), np.asarray(labels, np.int64), classes)


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (train, val): round(n * val_fraction) of each class to validation.

    A class keeps at least one image for training; a class of one image has
    none for validation.
    """
    rng = np.random.default_rng(seed)
    train, val = [], []
    for cls in np.unique(labels):
        idx = np.flatnonzero(labels == cls)
        idx = idx[rng.permutation(len(idx))]
        n_val = min(int(round(len(idx) * val_fraction)), len(idx) - 1)
        val += list(idx[:n_val])
        train += list(idx[n_val:])
    return np.sort(np.asarray(train, np.int64)), np.sort(np.asarray(val, np.int64))


def subset(data: ImageSet, idx: np.ndarray) -> ImageSet:
    return ImageSet(tuple(data.paths[i] for i in idx), data.labels[idx], data.classes)


def load_train_val(data_dir: Path, *, val_fraction: float, min_per_class: int, seed: int,
                   val_dir: Path | None = None) -> tuple[ImageSet, ImageSet, dict[str, int]]:
    """(training set, validation set, {class left out: its image count}) for ``slideproc train``."""
    found, dropped = filter_min_per_class(scan_class_folders(data_dir), min_per_class)
    classes = tuple(found)
    data = image_set(found, classes)
    if val_dir is None:
        tr, va = stratified_split(data.labels, val_fraction, seed)
        train, val = subset(data, tr), subset(data, va)
    else:
        val_found = scan_class_folders(val_dir)
        unknown = sorted(set(val_found) - set(classes))
        if unknown:
            log.warning("--val-dir classes not in training, left out: %s", ", ".join(unknown))
        train = data
        val = image_set({c: f for c, f in val_found.items() if c in classes}, classes)
    if len(val) == 0:
        raise DataError("the validation set is empty; raise --val-fraction or give --val-dir")
    log.info("classes (%d): %s", len(classes), " ".join(classes))
    log.info("train %d images, validation %d images", len(train), len(val))
    return train, val, dropped


def load_eval_set(data_dir: Path, labels: tuple[str, ...]) -> ImageSet:
    """Every image of DATA_DIR labelled with the model's classes; unknown classes are an error."""
    found = scan_class_folders(data_dir)
    unknown = sorted(set(found) - set(labels))
    if unknown:
        raise DataError(
            f"{data_dir} has classes the model does not know: {', '.join(unknown)} "
            f"(model classes: {' '.join(labels)}); remove or rename those folders"
        )
    return image_set(found, tuple(labels))


def read_rgb(path: Path) -> np.ndarray:
    """uint8 (H, W, 3) RGB; grey, palette and RGBA images are converted."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except Exception as err:  # PIL raises several types for a broken file
        raise DataError(f"cannot read image {path}: {err}") from None
