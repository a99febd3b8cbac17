"""Tiny data sets and one tiny trained model shared by the classifier tests.

Training even a 75 px InceptionResNetV2 for one epoch costs tens of seconds on
two cores, so the model is trained once per test process (module-level cache)
and reused by test_classify, test_train and test_evaluate.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Classes told apart by colour and shape, like the synthetic generator's.
COLOURS = {"AAA": (200, 60, 60), "BBB": (60, 60, 200), "CCC": (60, 170, 60)}
_cache: dict[str, Path] = {}


def disc_image(rng: np.random.Generator, colour, size: int = 64) -> np.ndarray:
    yy, xx = np.mgrid[:size, :size]
    cy, cx = rng.uniform(size * 0.4, size * 0.6, 2)
    r = rng.uniform(size * 0.2, size * 0.35)
    img = np.full((size, size, 3), 235, np.float32)
    inside = (yy - cy) ** 2 + (xx - cx) ** 2 < r ** 2
    img[inside] = colour
    img += rng.normal(0, 8, img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def write_class_folders(root: Path, per_class: int, seed: int = 0, classes=None, size: int = 64,
                        suffix: str = ".png") -> Path:
    rng = np.random.default_rng(seed)
    for name in classes or COLOURS:
        folder = root / name / "sub"  # images anywhere below the class folder
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            Image.fromarray(disc_image(rng, COLOURS.get(name, (128, 128, 128)), size)).save(
                folder / f"{name}_{i:03d}{suffix}")
    return root


TINY_CONFIG = """
model: {input_size_px: 75, weights: none, dropout: 0.2, bn_momentum: 0.9}
training:
  batch_size: 8
  epochs: 1
  val_fraction: 0.25
  seed: 0
  learning_rate: 0.001
  warmup_epochs: 0.0
  # Tracing the training graph of InceptionResNetV2 takes minutes on 2 cores;
  # four eager steps take seconds.
  run_eagerly: true
  workers: 2
  # Plumbing tests on a dozen images per class: keep every class, and a
  # one-epoch model near chance warns instead of failing the run.
  min_per_class: 1
  near_chance: warn
"""


def tiny_data(tmp_root: Path) -> Path:
    if "data" not in _cache:
        _cache["data"] = write_class_folders(tmp_root / "tiny_data", per_class=12)
    return _cache["data"]


def tiny_model(tmp_root: Path) -> Path:
    """MODEL_DIR trained through the CLI in-process (also the CLI's in-process test)."""
    if "model" not in _cache:
        from slideproc.cli import main

        data = tiny_data(tmp_root)
        cfg = tmp_root / "tiny.yaml"
        cfg.write_text(TINY_CONFIG, encoding="utf-8")
        out = tmp_root / "tiny_model"
        rc = main(["-q", "train", str(data), "--out", str(out), "--config", str(cfg)])
        assert rc == 0
        _cache["model"] = out
    return _cache["model"]
