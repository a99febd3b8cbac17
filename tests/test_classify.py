"""slideproc.classify: preprocessing, safe loading, the Predictor, JAX parity."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from classify_fixtures import disc_image, tiny_model
from slideproc.errors import ModelError

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return tiny_model(tmp_path_factory.getbasetemp())


@pytest.fixture(scope="module")
def crops() -> np.ndarray:
    rng = np.random.default_rng(5)
    return np.stack([disc_image(rng, c, 64) for c in [(200, 60, 60), (60, 60, 200), (60, 170, 60)] * 4])


def test_importing_the_cli_loads_no_tensorflow():
    code = ("import slideproc.cli, slideproc.config, slideproc.datasets, slideproc.metrics, "
            "slideproc.classify, sys; "
            "bad = [m for m in ('tensorflow', 'keras', 'jax') if m in sys.modules]; assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_preprocess_layer_scales_uint8_to_minus_one_one():
    import keras

    from slideproc.classify.preprocess import CropPreprocess, resize_crops

    x = np.array([[[[0, 127, 255]]]], np.uint8).repeat(4, 1).repeat(4, 2)
    y = keras.ops.convert_to_numpy(CropPreprocess(4)(x))
    assert np.allclose(y[0, 0, 0], [-1.0, 127 / 127.5 - 1, 1.0])
    assert resize_crops(np.zeros((2, 50, 60, 3), np.uint8), 75).shape == (2, 75, 75, 3)


def test_load_model_dir(model_dir):
    from slideproc.classify.loading import load_model_dir, sha256_file

    loaded = load_model_dir(model_dir)
    assert loaded.labels == ("AAA", "BBB", "CCC")
    assert loaded.input_size_px == 75
    assert loaded.sha256 == sha256_file(model_dir / "model.keras")
    assert loaded.temperature > 0
    assert load_model_dir(model_dir) is loaded  # per-process cache


def test_predictor_pads_resizes_and_calibrates(model_dir, crops):
    from slideproc.classify.loading import load_model_dir
    from slideproc.classify.predict import Predictor, get_predictor

    loaded = load_model_dir(model_dir)
    # One batch size (4) across the tests: each new batch shape would trace the predict function again.
    pred = Predictor(loaded, batch_size=4)
    p = pred.predict(crops[:10])  # 2 full batches and a padded one; 64 px crops resized to 75
    assert p.dtype == np.float32 and p.shape == (10, 3)
    assert np.allclose(p.sum(axis=1), 1.0, atol=1e-5)
    # Padding and batch boundaries change nothing.
    one = np.concatenate([pred.predict(crops[i:i + 1]) for i in range(3)])
    assert np.allclose(one, p[:3], atol=1e-5)
    assert pred.predict(crops[:0]).shape == (0, 3)
    assert get_predictor(model_dir, 4) is get_predictor(model_dir, 4)
    with pytest.raises(Exception, match="uint8"):
        pred.predict(crops.astype(np.float32))


def _copy(model_dir: Path, tmp_path: Path) -> Path:
    """A copy whose model.keras is a link: no 220 MB copy, and its digest stays memoised."""
    dst = tmp_path / "copy"
    shutil.copytree(model_dir, dst, ignore=shutil.ignore_patterns("model.keras"))
    (dst / "model.keras").symlink_to(model_dir / "model.keras")
    return dst


def test_labels_mismatch_refused(model_dir, tmp_path):
    from slideproc.classify.loading import load_model_dir

    bad = _copy(model_dir, tmp_path)
    info = json.loads((bad / "labels.json").read_text())
    info["labels"] = info["labels"][:2]
    (bad / "labels.json").write_text(json.dumps(info))
    # Same model file as the cached one: the cache must not hide the mismatch.
    with pytest.raises(ModelError, match="2 labels but .* 3 outputs"):  # refused before loading weights
        load_model_dir(bad)


def test_changed_model_file_refused(model_dir, tmp_path):
    from slideproc.classify.loading import load_model_dir

    bad = _copy(model_dir, tmp_path)
    (bad / "model.sha256").write_text("0" * 64 + "  model.keras\n")
    with pytest.raises(ModelError, match="does not match"):
        load_model_dir(bad)


def _model_dir_with(model, tmp_path: Path) -> Path:
    from slideproc.classify.loading import write_sha256

    d = tmp_path / "evil"
    d.mkdir()
    model.save(d / "model.keras")
    write_sha256(d / "model.keras")
    (d / "labels.json").write_text(json.dumps({"labels": ["a", "b"], "temperature": 1.0}))
    return d


def test_lambda_layer_refused(tmp_path):
    import keras

    from slideproc.classify.loading import load_model_dir

    inp = keras.Input((4,))
    out = keras.layers.Dense(2, activation="softmax")(keras.layers.Lambda(lambda x: x * 2)(inp))
    with pytest.raises(ModelError, match="Lambda"):
        load_model_dir(_model_dir_with(keras.Model(inp, out), tmp_path))


@pytest.mark.filterwarnings("ignore")
def test_custom_code_refused(tmp_path):
    import keras

    from slideproc.classify.loading import load_model_dir

    @keras.saving.register_keras_serializable(package="elsewhere")
    class Sneaky(keras.layers.Layer):
        def call(self, x):
            return x

    inp = keras.Input((4,))
    out = keras.layers.Dense(2, activation="softmax")(Sneaky()(inp))
    with pytest.raises(ModelError, match="Sneaky"):
        load_model_dir(_model_dir_with(keras.Model(inp, out), tmp_path))


def test_not_a_keras_archive_refused(tmp_path):
    from slideproc.classify.loading import load_model_dir, write_sha256

    d = tmp_path / "junk"
    d.mkdir()
    (d / "model.keras").write_bytes(b"not a zip")
    write_sha256(d / "model.keras")
    (d / "labels.json").write_text(json.dumps({"labels": ["a"]}))
    with pytest.raises(ModelError, match="not a Keras 3"):
        load_model_dir(d)


def test_weights_resolution(tmp_path, monkeypatch):
    from slideproc.classify.model import IMAGENET_NOTOP_FILE, resolve_weights

    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    with pytest.raises(ModelError, match=str(tmp_path / "kh" / "models" / IMAGENET_NOTOP_FILE)):
        resolve_weights("imagenet")
    assert not resolve_weights("none").pretrained
    assert "not pretrained" in resolve_weights("none").describe()
    with pytest.raises(ModelError, match="not imagenet, none"):
        resolve_weights(str(tmp_path / "missing.h5"))


_JAX_SCRIPT = """
import sys, numpy as np, keras
assert keras.backend.backend() == "jax", keras.backend.backend()
from slideproc.classify.predict import get_predictor
crops = np.load(sys.argv[2])
np.save(sys.argv[3], np.stack([get_predictor(sys.argv[1], 4, tta_views=v).predict(crops) for v in (1, 4)]))
"""


def test_jax_backend_predicts_the_same_classes(model_dir, crops, tmp_path):
    pytest.importorskip("jax", reason="JAX is not installed (pip install 'jax[cpu]', the dev extra has it)")
    from slideproc.classify.predict import get_predictor

    # One view and 4 test-time views (turned/mirrored crops, their own calibration).
    tf_probs = np.stack([get_predictor(model_dir, 4, tta_views=v).predict(crops) for v in (1, 4)])
    np.save(tmp_path / "crops.npy", crops)
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "3"}
    subprocess.run([sys.executable, "-c", _JAX_SCRIPT, str(model_dir), str(tmp_path / "crops.npy"),
                    str(tmp_path / "jax.npy")], check=True, cwd=REPO, env=env, timeout=600)
    jax_probs = np.load(tmp_path / "jax.npy")
    assert (jax_probs.argmax(-1) == tf_probs.argmax(-1)).all()
    assert np.allclose(jax_probs, tf_probs, atol=1e-3)


@pytest.mark.slow
def test_fine_tune_start_copies_a_model_dir(model_dir, crops):
    from slideproc.classify.loading import load_model_dir
    from slideproc.classify.model import initial_model, resolve_weights
    from slideproc.classify.predict import Predictor
    from slideproc.classify.preprocess import resize_crops

    source = resolve_weights(str(model_dir))
    assert source.kind == "model_dir" and source.pretrained and "fine-tuned from" in source.describe()
    loaded = load_model_dir(model_dir)
    start = initial_model(list(loaded.labels), 75, source, dropout=0.2, bn_momentum=None)
    # Same labels: backbone and head are copied, so the start predicts as the source does.
    raw = Predictor(loaded, batch_size=4).predict_raw(crops[:4])
    assert np.allclose(start.predict_on_batch(resize_crops(crops[:4], 75)), raw, atol=1e-5)
