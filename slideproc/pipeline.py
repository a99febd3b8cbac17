"""Streaming input pipelines for training and prediction from image files.

Images are read from disk batch by batch (the full Matek set, 171,375 crops,
does not fit in memory) by a thread pool: PIL decoding and the numpy
augmentation release the GIL, so reading overlaps with the model's step.
Keras' PyDataset runs on every backend (the GPU machines have JAX, not
TensorFlow), which tf.data would not.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Iterator

from .backend_noise import import_keras

import_keras()  # the first keras import anywhere: without TensorFlow's start-up lines on stderr
import keras  # noqa: E402
import numpy as np

from .augment import augment
from .classify.preprocess import resize_crop
from .config import AugmentConfig
from .datasets import ImageSet, read_rgb


def load_crop(path, size_px: int) -> np.ndarray:
    """An image file as the model's uint8 input (the resize inference uses)."""
    return resize_crop(read_rgb(path), size_px)


def class_weights(labels: np.ndarray, n_classes: int, max_weight: float | None = None) -> np.ndarray:
    """n / (C * n_c), at most ``max_weight``: every class carries the same total
    weight unless it is so small that its weight would pass the bound; absent classes 0.

    float64 (n_classes,). The bound keeps a handful of images from dominating
    the gradient (1 image among 3,000 in 14 classes would weigh ~210).
    """
    counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
    present = counts > 0
    w = np.zeros(n_classes)
    w[present] = len(labels) / (present.sum() * counts[present])
    if max_weight is not None:
        w = np.minimum(w, max_weight)
    return w


class TrainingBatches(keras.utils.PyDataset):
    """(uint8 images, one-hot targets, sample weights) batches for one epoch.

    The order and the augmentation of epoch e depend only on (seed, e, batch
    index), never on thread timing, so a run is reproducible. Call
    ``set_epoch`` before each epoch (training calls fit once per epoch).
    """

    def __init__(self, data: ImageSet, size_px: int, batch_size: int, *, seed: int,
                 augment_cfg: AugmentConfig | None, balance: str, steps: int | None = None,
                 workers: int = 2, max_class_weight: float | None = None):
        super().__init__(workers=workers, use_multiprocessing=False, max_queue_size=2 * workers + 2)
        self.data = data
        self.size_px = size_px
        self.batch_size = batch_size
        self.seed = seed
        self.augment_cfg = augment_cfg
        self.balance = balance
        n_classes = len(data.classes)
        self.onehot = np.eye(n_classes, dtype=np.float32)
        cw = class_weights(data.labels, n_classes, max_class_weight)
        self.weights = cw if balance == "class_weight" else np.ones(n_classes)
        # Drop the last partial batch: one batch shape keeps one compiled step.
        self.steps = steps or max(1, len(data) // batch_size)
        self.epoch = 0
        self._order = self._make_order()

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self._order = self._make_order()

    def _make_order(self) -> np.ndarray:
        rng = np.random.default_rng([self.seed, self.epoch, 7])
        n = self.steps * self.batch_size
        if self.balance == "sampling":
            counts = np.bincount(self.data.labels)
            p = 1.0 / counts[self.data.labels]
            return rng.choice(len(self.data), size=n, replace=True, p=p / p.sum())
        reps = int(np.ceil(n / len(self.data)))
        return np.concatenate([rng.permutation(len(self.data)) for _ in range(reps)])[:n]

    def __len__(self) -> int:
        return self.steps

    def __getitem__(self, index: int):
        idx = self._order[index * self.batch_size:(index + 1) * self.batch_size]
        rng = np.random.default_rng([self.seed, self.epoch, index])
        x = np.empty((len(idx), self.size_px, self.size_px, 3), np.uint8)
        for j, i in enumerate(idx):
            img = load_crop(self.data.paths[i], self.size_px)
            x[j] = augment(img, rng, self.augment_cfg) if self.augment_cfg is not None else img
        y = self.data.labels[idx]
        return x, self.onehot[y], self.weights[y].astype(np.float32)


def iter_crops(paths, size_px: int, batch_size: int, workers: int = 2) -> Iterator[np.ndarray]:
    """uint8 (<= batch_size, S, S, 3) arrays of the images in order.

    The next batch is read while the caller works on the current one.
    """
    paths = list(paths)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        def submit(start):
            return [pool.submit(load_crop, p, size_px) for p in paths[start:start + batch_size]]

        pending = submit(0)
        for start in range(0, len(paths), batch_size):
            following = submit(start + batch_size)
            yield np.stack([f.result() for f in pending])
            pending = following
