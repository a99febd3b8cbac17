"""Training-time augmentation for single-cell smear crops (numpy and PIL only).

Applied after the crop is resized to the model input with the same function as
inference (classify.preprocess.resize_crop), so augmentation perturbs the
image the model would see and adds no resampling difference of its own:
the scale/shift step resamples at a ratio of about 1 only.

- orientation: a smear has no up or left: flips and 90-degree rotations give
  the 8 equivalent views of a cell, exactly (no interpolation);
- scale and shift: cell size and centring vary between labs and detectors;
- brightness/contrast: illumination and camera exposure;
- stain jitter in optical density (Beer-Lambert: OD = -log(I / I0)), per RGB
  channel: stain concentration scales OD, so a gain and a small offset per
  channel mimic another lab's May-Gruenwald-Giemsa batch.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from .config import AugmentConfig

# Reflect-padding for the scale/shift step, as a fraction of the crop edge: at
# scale 1 - 0.3 and shift 0.1 the sampling box reaches 0.31 edges outside.
_PAD_FRACTION = 0.35


def _scale_shift(img: np.ndarray, rng: np.random.Generator, scale: float, shift: float) -> np.ndarray:
    size = img.shape[0]
    s = rng.uniform(1.0 - scale, 1.0 + scale)
    dx, dy = rng.uniform(-shift, shift, size=2) * size
    pad = int(np.ceil(_PAD_FRACTION * size))
    padded = np.pad(img, ((pad, pad), (pad, pad), (0, 0)), mode="reflect")
    half = size / (2.0 * s)
    cx, cy = pad + size / 2.0 + dx, pad + size / 2.0 + dy
    box = (cx - half, cy - half, cx + half, cy + half)
    out = Image.fromarray(padded).transform((size, size), Image.EXTENT, box, resample=Image.BILINEAR)
    return np.asarray(out)


def _orientation(img: np.ndarray, rng: np.random.Generator, flips: bool, rotate90: bool) -> np.ndarray:
    if rotate90:
        img = np.rot90(img, k=int(rng.integers(4)))
    if flips and rng.random() < 0.5:
        img = img[:, ::-1]
    if flips and not rotate90 and rng.random() < 0.5:
        img = img[::-1]  # with rotations, one flip already reaches all 8 views
    return img


def _photometric(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    x = img.astype(np.float32)
    if cfg.stain > 0:
        od = -np.log((x + 1.0) / 256.0)
        gain = rng.uniform(1.0 - cfg.stain, 1.0 + cfg.stain, size=3).astype(np.float32)
        bias = rng.uniform(-cfg.stain / 2, cfg.stain / 2, size=3).astype(np.float32)
        x = 256.0 * np.exp(-np.maximum(od * gain + bias, 0.0)) - 1.0
    if cfg.contrast > 0:
        c = rng.uniform(1.0 - cfg.contrast, 1.0 + cfg.contrast)
        mean = x.mean()
        x = (x - mean) * c + mean
    if cfg.brightness > 0:
        x = x + rng.uniform(-cfg.brightness, cfg.brightness) * 255.0
    return np.clip(x + 0.5, 0, 255).astype(np.uint8)


def augment(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    """One uint8 (S, S, 3) crop -> an augmented uint8 (S, S, 3) crop."""
    if cfg.scale > 0 or cfg.shift > 0:
        img = _scale_shift(img, rng, cfg.scale, cfg.shift)
    img = _orientation(img, rng, cfg.flips, cfg.rotate90)
    if cfg.stain > 0 or cfg.contrast > 0 or cfg.brightness > 0:
        img = _photometric(img, rng, cfg)
    return np.ascontiguousarray(img)
