"""slideproc train: data sets, split, augmentation, config, and the MODEL_DIR it writes."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from classify_fixtures import tiny_data, tiny_model, write_class_folders
from slideproc.config import AugmentConfig, load_train_config
from slideproc.datasets import load_eval_set, load_train_val, scan_class_folders, stratified_split
from slideproc.errors import ConfigError, DataError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp())


def test_scan_finds_images_below_class_folders(tmp_path):
    write_class_folders(tmp_path, 3, classes=["AAA", "BBB"], suffix=".jpg")
    (tmp_path / "AAA" / "notes.txt").write_text("not an image")
    (tmp_path / "empty").mkdir()
    found = scan_class_folders(tmp_path)
    assert list(found) == ["AAA", "BBB"] and len(found["AAA"]) == 3


def test_min_per_class_leaves_out_and_reports(tmp_path, caplog):
    write_class_folders(tmp_path, 10, classes=["AAA", "BBB"])
    write_class_folders(tmp_path, 2, classes=["CCC"], seed=1)
    train, val, left_out = load_train_val(tmp_path, val_fraction=0.2, min_per_class=5, seed=0)
    assert train.classes == ("AAA", "BBB") and left_out == {"CCC": 2}
    assert "CCC (2)" in caplog.text
    with pytest.raises(DataError, match="lower --min-per-class"):
        load_train_val(tmp_path, val_fraction=0.2, min_per_class=50, seed=0)


def test_split_is_stratified_seeded_and_disjoint():
    labels = np.repeat([0, 1, 2], [50, 20, 1])
    tr, va = stratified_split(labels, 0.2, seed=3)
    assert np.bincount(labels[va], minlength=3).tolist() == [10, 4, 0]  # a single image stays in training
    assert not set(tr) & set(va) and len(tr) + len(va) == len(labels)
    tr2, va2 = stratified_split(labels, 0.2, seed=3)
    assert (va == va2).all()
    assert not (stratified_split(labels, 0.2, seed=4)[1] == va).all()


def test_val_dir_and_unknown_eval_classes(tmp_path):
    write_class_folders(tmp_path / "tr", 4, classes=["AAA", "BBB"])
    write_class_folders(tmp_path / "va", 2, classes=["AAA", "BBB"], seed=1)
    train, val, _ = load_train_val(tmp_path / "tr", val_fraction=0.2, min_per_class=1, seed=0,
                                   val_dir=tmp_path / "va")
    assert len(train) == 8 and len(val) == 4
    write_class_folders(tmp_path / "ev", 1, classes=["AAA", "ZZZ"])
    with pytest.raises(DataError, match="does not know: ZZZ"):
        load_eval_set(tmp_path / "ev", ("AAA", "BBB"))


def test_augmentation_is_seeded_and_keeps_shape():
    from slideproc.augment import augment

    img = np.random.default_rng(0).integers(0, 255, (75, 75, 3), dtype=np.uint8)
    cfg = AugmentConfig()
    a = augment(img, np.random.default_rng(1), cfg)
    b = augment(img, np.random.default_rng(1), cfg)
    assert a.dtype == np.uint8 and a.shape == img.shape and (a == b).all()
    # Orientation alone is exact: one of the 8 dihedral views of the input.
    only = AugmentConfig(scale=0, shift=0, brightness=0, contrast=0, stain=0)
    c = augment(img, np.random.default_rng(2), only)
    views = [np.rot90(v, k) for v in (img, img[:, ::-1]) for k in range(4)]
    assert any((c == v).all() for v in views)


def test_config_keys_are_validated(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("training: {augment: {scale: 0.6}}\n")
    with pytest.raises(ConfigError, match="training.augment.scale"):
        load_train_config(bad)
    bad.write_text("training: {optimiser: adam}\n")
    with pytest.raises(ConfigError, match="training.optimiser"):
        load_train_config(bad)


@pytest.mark.parametrize("name", ["train.yaml", "train-cpu.yaml", "train-paper.yaml"])
def test_shipped_configs_load(name):
    cfg = load_train_config(REPO / "configs" / name)
    assert cfg.model.input_size_px >= 75


def test_model_dir_contents(model_dir, tmp_path_factory):
    for name in ("model.keras", "model.sha256", "labels.json", "config.yaml", "metrics.json", "history.csv"):
        assert (model_dir / name).is_file(), name
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["pretrained"] is False and "not pretrained" in metrics["weights"]
    assert metrics["classes"] == ["AAA", "BBB", "CCC"]
    assert metrics["n_train"] + metrics["n_val"] == 36
    assert metrics["model_sha256"] == (model_dir / "model.sha256").read_text().split()[0]
    for key in ("top1_accuracy", "balanced_accuracy", "macro_f1", "ece", "paper_comparison"):
        assert key in metrics["validation"]
    labels = json.loads((model_dir / "labels.json").read_text())
    assert labels["labels"] == metrics["classes"] and labels["temperature"] == metrics["temperature"]
    rows = list(csv.DictReader(open(model_dir / "history.csv")))
    assert len(rows) == 1 and rows[0]["phase"] == "train"
    cfg = load_train_config(model_dir / "config.yaml")  # the effective config loads back
    assert cfg.model.input_size_px == 75 and cfg.model.weights == "none"


def test_train_refuses_bad_weights_path(tmp_path_factory):
    from slideproc.cli import main

    data = tiny_data(tmp_path_factory.getbasetemp())
    out = tmp_path_factory.mktemp("never")
    assert main(["train", str(data), "--out", str(out), "--weights", str(out / "nope.h5")]) == 1


@pytest.mark.slow
def test_cpu_recipe_on_real_matek_crops(matek_dir, tmp_path):
    """The shipped recipe on the 8 Matek classes with >= 100 crops, from scratch, <= 30 min on 2 cores."""
    from slideproc.cli import main

    out = tmp_path / "model"
    assert main(["train", str(matek_dir), "--out", str(out), "--min-per-class", "100", "--weights", "none",
                 "--config", str(REPO / "configs" / "train-cpu.yaml")]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["classes"] == ["ART", "BLA", "EOS", "LYT", "MON", "NGS", "NIF", "PMO"]
    assert metrics["train_minutes"] <= 30
    # A regression guard, not the 0.85 target (not reached: seeds 0 and 1
    # scored 0.786 and 0.765 on their validation splits of the dev crops).
    assert metrics["validation"]["balanced_accuracy"] >= 0.72
    assert metrics["quality"]["status"] == "ok"


def test_mixed_precision_training_reports_the_float32_model_it_saves(tmp_path_factory, tmp_path):
    """train-cpu.yaml trains in bfloat16; what is saved, calibrated and reported
    is the float32 copy, so metrics.json describes the file the engine loads."""
    from classify_fixtures import TINY_CONFIG

    from slideproc.classify.loading import load_model_dir
    from slideproc.classify.predict import Predictor
    from slideproc.cli import main
    from slideproc.metrics import classification_metrics

    data = tiny_data(tmp_path_factory.getbasetemp())
    cfg = tmp_path / "bf16.yaml"
    cfg.write_text(TINY_CONFIG.replace("  workers: 2", "  workers: 2\n  mixed_precision: mixed_bfloat16"),
                   encoding="utf-8")
    out = tmp_path / "model"
    assert main(["-q", "train", str(data), "--out", str(out), "--config", str(cfg)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["precision"] == "mixed_bfloat16"
    loaded = load_model_dir(out)
    assert all(w.dtype == np.float32 for w in loaded.model.get_weights())
    split = list(csv.DictReader(open(out / "split.csv")))
    val = [r for r in split if r["subset"] == "val"]
    from slideproc.pipeline import iter_crops

    crops = np.concatenate(list(iter_crops([r["path"] for r in val], 75, 8, 1)))
    probs = Predictor(loaded, batch_size=8, mixed_precision="float32").predict(crops)
    y = np.array([metrics["classes"].index(r["class"]) for r in val])
    again = classification_metrics(y, probs, metrics["classes"])
    assert again["balanced_accuracy"] == pytest.approx(metrics["validation"]["balanced_accuracy"])
    assert again["log_loss"] == pytest.approx(metrics["validation"]["log_loss"], rel=1e-4)


def test_cpu_has_bf16_reads_cpuinfo_flags(tmp_path):
    from slideproc.classify.predict import cpu_has_bf16

    info = tmp_path / "cpuinfo"
    info.write_text("processor: 0\nflags\t\t: fpu sse avx512f avx512_bf16\n", encoding="utf-8")
    assert cpu_has_bf16(str(info)) is True
    info.write_text("processor: 0\nflags\t\t: fpu sse avx2\n", encoding="utf-8")
    assert cpu_has_bf16(str(info)) is False
    assert cpu_has_bf16(str(tmp_path / "absent")) is None
