"""Training that cannot fail silently: tiny classes left out and named, bounded
class weights, a near-chance model is a failure, and a plain redirected log."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from classify_fixtures import TINY_CONFIG
from slideproc.config import load_train_config
from slideproc.pipeline import class_weights
from slideproc.train import near_chance_threshold

REPO = Path(__file__).resolve().parents[1]


def _grey_classes(root: Path, counts: dict[str, int]) -> Path:
    """Class folders of images that look alike whatever their class: nothing to learn."""
    rng = np.random.default_rng(0)
    for name, n in counts.items():
        (root / name).mkdir(parents=True)
        for i in range(n):
            img = np.clip(rng.normal(180, 6, (40, 40, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(img).save(root / name / f"{name}_{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def failed_run(tmp_path_factory):
    """`slideproc train` as a user runs it, output redirected to a file, on data with
    one-image classes and nothing learnable (the default minimum and near_chance: fail)."""
    root = tmp_path_factory.mktemp("safeguards")
    data = _grey_classes(root / "data", {"AAA": 20, "BBB": 20, "CCC": 36, "ONE": 1, "TWO": 1})
    text = TINY_CONFIG.replace("  min_per_class: 1\n", "").replace("  near_chance: warn\n", "")
    text = text.replace("  epochs: 1", "  epochs: 2") + "  max_class_weight: 1.2\n  max_minutes: 0.3\n"
    cfg = root / "cfg.yaml"
    cfg.write_text(text, encoding="utf-8")
    out = root / "model"
    log = root / "train.log"
    with open(log, "wb") as fh:
        proc = subprocess.run([sys.executable, "-m", "slideproc.cli", "train", str(data), "--out", str(out),
                               "--config", str(cfg)], stdout=fh, stderr=subprocess.STDOUT, cwd=REPO, timeout=900)
    return proc.returncode, log.read_text(encoding="utf-8", errors="replace"), out


def test_near_chance_model_fails_the_run_but_is_written_with_the_reason(failed_run):
    rc, log, out = failed_run
    assert rc == 1
    assert "near chance" in log and "do not use" in log
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["quality"]["status"] == "near chance"
    assert metrics["quality"]["near_chance_below"] == pytest.approx(near_chance_threshold(3), abs=1e-4)
    assert (out / "model.keras").is_file()


def test_one_image_classes_are_left_out_by_default_and_named(failed_run):
    rc, log, out = failed_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["min_per_class"] == 20
    assert metrics["left_out_classes"] == {"ONE": 1, "TWO": 1}
    assert metrics["classes"] == ["AAA", "BBB", "CCC"]
    assert "ONE (1)" in log and "TWO (1)" in log


def test_class_weights_are_bounded(failed_run):
    _, log, out = failed_run
    weights = json.loads((out / "metrics.json").read_text())["class_weights"]
    # n / (C * n_c) is 1.27 for AAA and BBB (15 of 57 training images each), 0.70 for CCC.
    assert weights["AAA"] == pytest.approx(1.2) and weights["BBB"] == pytest.approx(1.2)
    assert weights["CCC"] == pytest.approx(57 / (3 * 27), rel=1e-3)
    assert "capped at max_class_weight 1.2: AAA, BBB" in log
    # The function itself: a 1-image class among 3,000 images in 14 classes.
    labels = np.r_[np.zeros(2999, int), [1]]
    assert class_weights(labels, 2).max() > 1000 and class_weights(labels, 2, 10.0).max() == 10.0


def test_redirected_log_is_plain_and_says_epoch_n_of_m_and_the_time_cap(failed_run):
    _, log, _ = failed_run
    assert "\x1b[" not in log and "\r" not in log  # no progress bars, no colour codes
    assert "absl::InitializeLog" not in log and "oneDNN custom operations" not in log
    assert "epoch 1 of 2 (train)" in log and "min of epochs left" in log
    assert "time cap: max_minutes 0.3" in log
    assert "stopped after epoch 1 of 2: time budget" in log


def test_defaults_are_documented_in_the_shipped_configs():
    for name in ("train.yaml", "train-cpu.yaml"):
        cfg = load_train_config(REPO / "configs" / name)
        assert cfg.training.min_per_class == 20 and cfg.training.max_class_weight == 10.0
        assert cfg.training.near_chance == "fail"
    assert near_chance_threshold(8) == pytest.approx(0.34375)
