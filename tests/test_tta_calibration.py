"""Test-time augmentation views and calibration (temperature and vector scaling),
as the Predictor, evaluate and the engine's classify task use them."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from classify_fixtures import disc_image, tiny_model, write_class_folders
from slideproc.classify.calibration import (Calibration, calibrate, fit_calibration, fit_temperature,
                                            read_calibrations, write_calibrations)
from slideproc.classify.tta import VIEWS, view
from slideproc.metrics import expected_calibration_error, reliability_bins


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    rng = np.random.default_rng(5)
    return np.stack([disc_image(rng, c, 75) for c in [(200, 60, 60), (60, 60, 200), (60, 170, 60)] * 4])


def test_views_are_the_eight_distinct_turns_and_mirrors():
    x = np.arange(2 * 5 * 5 * 3, dtype=np.uint8).reshape(2, 5, 5, 3)
    seen = {view(x, i).tobytes() for i in range(len(VIEWS))}
    assert len(seen) == 8
    assert np.array_equal(view(x, 0), x)
    assert np.array_equal(view(x, 1), x[:, :, ::-1])  # mirrored left-right
    assert np.array_equal(view(x, 2), x[:, ::-1, ::-1])  # turned 180 degrees
    assert np.array_equal(view(x, 3), x[:, ::-1])  # mirrored top-bottom
    # The first 4 views are closed under mirroring: mirroring any of them gives one of them.
    first4 = {view(x, i).tobytes() for i in range(4)}
    assert all(view(x, i)[:, :, ::-1].tobytes() in first4 for i in range(4))


def _miscalibrated(n: int, seed: int):
    """Softmax outputs of a 4-class "model" that is over-confident on class 0 and under-confident on 3."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    z = rng.normal(0, 1, (n, 4))
    z[np.arange(n), y] += 1.5
    z *= np.array([3.0, 1.0, 1.0, 0.4])  # per-class distortion a single temperature cannot undo
    p = np.exp(z - z.max(1, keepdims=True))
    return p / p.sum(1, keepdims=True), y


def test_vector_scaling_calibrates_unseen_data_better_than_one_temperature():
    p_fit, y_fit = _miscalibrated(3000, 1)
    p_new, y_new = _miscalibrated(3000, 2)
    temp = fit_calibration(p_fit, y_fit, "temperature")
    vec = fit_calibration(p_fit, y_fit, "vector")
    assert temp.method == "temperature" and vec.method == "vector" and len(vec.scale) == 4

    def nll(p, y):
        return -np.mean(np.log(p[np.arange(len(y)), y]))
    raw = nll(p_new, y_new)
    assert nll(calibrate(p_new, vec), y_new) < nll(calibrate(p_new, temp), y_new) < raw
    assert expected_calibration_error(y_new, calibrate(p_new, vec)) < expected_calibration_error(y_new, p_new)
    # Temperature scaling never changes the predicted class.
    assert np.array_equal(calibrate(p_new, temp).argmax(1), p_new.argmax(1))
    assert temp.temperature == pytest.approx(fit_temperature(p_fit, y_fit))


def test_calibration_record_round_trips_and_bad_records_name_the_file(tmp_path):
    p, y = _miscalibrated(500, 3)
    fits = {1: fit_calibration(p, y, "vector"), 4: fit_calibration(p, y, "temperature")}
    path = tmp_path / "calibration.json"
    write_calibrations(path, fits, fitted_on="test")
    back = read_calibrations(path, 4)
    assert set(back) == {1, 4}
    for k in fits:
        assert np.allclose(calibrate(p, back[k]), calibrate(p, fits[k]), atol=1e-5)
    path.write_text(json.dumps({"views": {"1": {"method": "vector", "scale": [1, 2], "bias": [0, 0]}}}))
    with pytest.raises(ValueError, match="calibration.json"):
        read_calibrations(path, 4)
    assert np.allclose(Calibration().apply(p), p, atol=1e-6)


def test_reliability_bins_sum_to_the_ece():
    p, y = _miscalibrated(1000, 4)
    r = reliability_bins(y, p)
    assert sum(r["count"]) == 1000 and len(r["count"]) == len(r["edges"]) - 1
    ece = sum(k / 1000 * abs(a - c) for k, a, c in zip(r["count"], r["accuracy"], r["confidence"]) if k)
    assert ece == pytest.approx(expected_calibration_error(y, p))


def test_model_dir_holds_a_calibration_per_view_count_that_loading_reads(model_dir):
    from slideproc.classify.loading import load_model_dir

    record = json.loads((model_dir / "calibration.json").read_text())
    assert set(record["views"]) == {"1", "2", "4", "8"}
    loaded = load_model_dir(model_dir)
    for k in (1, 2, 4, 8):
        assert loaded.calibration_for(k).to_dict() == record["views"][str(k)]
    # The raw validation views are kept so calibrations can be refitted without the network.
    npz = np.load(model_dir / "validation_views.npz")
    assert npz["probabilities"].shape[0] == 8 and npz["probabilities"].shape[1] == len(npz["labels"])
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert set(metrics["validation_by_views"]) >= {"1", "2", "4", "8"}
    assert "ece" in metrics["validation"] and (model_dir / "reliability.png").is_file()


def test_predictor_averages_views_then_calibrates_for_that_many(model_dir, crops):
    from slideproc.classify.loading import load_model_dir
    from slideproc.classify.predict import Predictor

    loaded = load_model_dir(model_dir)
    one = Predictor(loaded, batch_size=4)
    four = Predictor(loaded, batch_size=4, tta_views=4)
    per_view = [one.predict_raw(view(crops, i)) for i in range(4)]
    assert np.allclose(four.predict_raw(crops), np.mean(per_view, axis=0), atol=1e-5)
    expected = calibrate(np.mean(per_view, axis=0), loaded.calibration_for(4))
    assert np.allclose(four.predict(crops), expected, atol=1e-5)
    with pytest.raises(Exception, match="1, 2, 4 or 8"):
        Predictor(loaded, batch_size=4, tta_views=3)


def test_classify_task_uses_the_configured_views(model_dir, crops):
    from slideproc.classify.loading import load_model_dir
    from slideproc.classify.predict import Predictor
    from slideproc.tasks import classify_task

    loaded = load_model_dir(model_dir)
    out = classify_task(str(model_dir), loaded.sha256, [crops[:6], crops[6:]], 4, "float32", False, 2)
    assert out["n"] == len(crops)
    assert np.allclose(out["probabilities"], Predictor(loaded, 4, "float32", tta_views=2).predict(crops), atol=1e-5)


def test_evaluate_with_views_reports_ece_and_a_reliability_diagram(model_dir, tmp_path):
    from slideproc.cli import main

    data = write_class_folders(tmp_path / "data", 5, seed=21)
    out = tmp_path / "eval"
    assert main(["-q", "evaluate", str(model_dir), str(data), "--out", str(out), "--batch-size", "4",
                 "--tta-views", "2"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["tta_views"] == 2 and m["calibration"] == json.loads(
        (model_dir / "calibration.json").read_text())["views"]["2"]
    assert 0.0 <= m["ece"] <= 1.0 and sum(m["reliability"]["count"]) == 15
    assert (out / "reliability.png").stat().st_size > 1000


def test_tta_views_config_value_is_checked(tmp_path):
    from slideproc.cli import main

    cfg = tmp_path / "bad.yaml"
    cfg.write_text("classify:\n  tta_views: 3\n")
    data = write_class_folders(tmp_path / "d", 1)
    assert main(["evaluate", str(tmp_path), str(data), "--config", str(cfg)]) == 2


def test_damaged_calibration_record_is_refused_naming_the_file(model_dir, tmp_path, capsys):
    import shutil

    from slideproc.cli import main

    copy = tmp_path / "copy"
    shutil.copytree(model_dir, copy, ignore=shutil.ignore_patterns("model.keras"))
    (copy / "model.keras").symlink_to(model_dir / "model.keras")
    record = json.loads((copy / "calibration.json").read_text())
    record["views"]["4"] = {"method": "vector", "scale": [1.0], "bias": [0.0]}
    (copy / "calibration.json").write_text(json.dumps(record))
    data = write_class_folders(tmp_path / "data", 2, seed=3)
    assert main(["evaluate", str(copy), str(data), "--out", str(tmp_path / "e")]) == 1
    err = capsys.readouterr().err
    assert "calibration.json views[4]: vector calibration needs 'scale' and 'bias' of 3 numbers" in err
    assert not (tmp_path / "e").exists()


def test_ece_noise_floor_is_what_a_calibrated_model_shows_and_shrinks_with_n():
    from slideproc.metrics import ece_noise_floor

    rng = np.random.default_rng(7)
    floors = []
    for n in (400, 4000):
        p = rng.dirichlet(np.full(8, 0.4), n)
        y = np.array([rng.choice(8, p=row) for row in p])  # calibrated by construction
        floor = ece_noise_floor(p)
        assert expected_calibration_error(y, p) <= floor["q90"] * 1.5
        floors.append(floor["mean"])
    assert floors[1] < floors[0] / 2  # ~1/sqrt(n)
