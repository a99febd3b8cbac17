"""Bad models: refused before OUT_DIR is touched, with one line naming the file.

`slideproc run` checks MODEL_DIR in the driver, without importing Keras
(engine.read_model_info): files present, labels.json valid, the .keras archive
free of custom code (safe loading only), and labels.json agreeing with the
archive's own input size and output units. The workers' full safe load
(classify/loading.py) repeats these checks with Keras.

The default run uses a hand-made archive shaped like the ones `slideproc train`
writes; the slow test applies the same damage to a real trained model.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from pathlib import Path

import pytest

from rel_helpers import assert_one_line_error, copy_fields, slideproc, tree

pytestmark = pytest.mark.timeout(600)
LABELS = ["ABE", "ART", "BAS", "BLA", "EBO", "EOS", "FGC", "HAC", "KSC", "LYI", "LYT", "MMZ", "MON",
          "MYB", "NGB", "NGS", "NIF", "OTH", "PEB", "PLM", "PMO"]


def _layer(cls, name, config, module="keras.layers"):
    return {"module": module, "class_name": cls, "config": {"name": name, **config},
            "registered_name": None, "name": name, "inbound_nodes": []}


def _write_archive(model_file: Path, config: dict, extra: dict | None = None) -> None:
    with zipfile.ZipFile(model_file, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("metadata.json", json.dumps({"keras_version": "3"}))
        zf.writestr("model.weights.h5", b"")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    (model_file.parent / "model.sha256").write_text(f"{digest}  model.keras\n")


def _read_config(model_file: Path) -> dict:
    with zipfile.ZipFile(model_file) as zf:
        return json.loads(zf.read("config.json"))


def _rewrite(model_file: Path, config: dict, extra: dict | None = None) -> None:
    """Replace config.json (keeping the other members) and the sha256 beside it."""
    with zipfile.ZipFile(model_file) as zf:
        members = {n: zf.read(n) for n in zf.namelist() if n != "config.json"}
    model_file.unlink()
    with zipfile.ZipFile(model_file, "w") as zf:
        zf.writestr("config.json", json.dumps(config))
        for name, data in {**members, **(extra or {})}.items():
            zf.writestr(name, data)
    digest = hashlib.sha256(model_file.read_bytes()).hexdigest()
    (model_file.parent / "model.sha256").write_text(f"{digest}  model.keras\n")


def fake_model(dest: Path) -> Path:
    """A MODEL_DIR with the layout and config.json shape `slideproc train` writes (75 px, 21 classes)."""
    dest.mkdir(parents=True)
    config = {"module": "keras", "class_name": "Functional", "registered_name": "Functional", "config": {
        "name": "classifier", "trainable": True,
        "layers": [_layer("InputLayer", "crops", {"batch_shape": [None, 75, 75, 3], "dtype": "uint8"}),
                   _layer("Dense", "classes", {"units": len(LABELS), "activation": "softmax"})],
        "input_layers": ["crops", 0, 0], "output_layers": ["classes", 0, 0]}}
    _write_archive(dest / "model.keras", config)
    (dest / "labels.json").write_text(json.dumps({"labels": LABELS, "input_size_px": 75, "temperature": 1.0}))
    return dest


def _labels(model: Path, **change) -> None:
    info = json.loads((model / "labels.json").read_text())
    info.update(change)
    (model / "labels.json").write_text(json.dumps(info))


def _add_layer(model: Path, layer: dict, extra: dict | None = None) -> None:
    config = _read_config(model / "model.keras")
    config["config"]["layers"].insert(1, layer)
    _rewrite(model / "model.keras", config, extra)


# name -> (damage(model_dir), words the one error line must hold)
DAMAGE = {
    "missing_dir": (lambda m: shutil.rmtree(m), ["model directory not found", "slideproc train"]),
    "missing_model_file": (lambda m: (m / "model.keras").unlink(), ["model.keras is missing"]),
    "labels_fewer_than_outputs": (lambda m: _labels(m, labels=LABELS[:-1]),
                                  ["lists 20 labels but", "has 21 outputs"]),
    "input_size_contradicts_model": (lambda m: _labels(m, input_size_px=299),
                                     ["says input_size_px 299 but", "takes 75 px inputs"]),
    "lambda_layer": (lambda m: _add_layer(m, _layer("Lambda", "payload", {"function": "exec"})),
                     ["contains code slideproc does not load", "Lambda"]),
    "foreign_module_layer": (lambda m: _add_layer(m, _layer("Payload", "payload", {}, module="evil.payload")),
                             ["contains code slideproc does not load", "evil.payload"]),
    "pickle_in_archive": (lambda m: _add_layer(m, _layer("Dense", "d2", {"units": 3}), {"payload.pkl": b"x"}),
                          ["holds unexpected files", "payload.pkl"]),
}


@pytest.fixture(scope="module")
def good_fields(fields, tmp_path_factory) -> Path:
    return copy_fields(fields, tmp_path_factory.mktemp("inputs") / "sample")


@pytest.mark.parametrize("case", sorted(DAMAGE))
def test_bad_model_is_refused_before_anything_is_written(case, good_fields, tmp_path):
    model = fake_model(tmp_path / "model")
    damage, words = DAMAGE[case]
    damage(model)
    out = tmp_path / "out"
    proc = slideproc("run", good_fields, "--mpp", "0.25", "--model", model, "--out", out)
    # a path naming no model directory is bad usage (exit 2); a damaged model exit 1
    line = assert_one_line_error(proc, 2 if case == "missing_dir" else 1, *words)
    assert str(model) in line
    assert not out.exists(), tree(out)


def test_run_config_cannot_set_the_model_input_size(good_fields, tmp_path):
    """The model's input size always wins: crops are cut as crops.field_of_view_um
    (micrometres) and resampled to it. A run config that tries to set one is an
    unknown key, exit 2."""
    config = tmp_path / "run.yaml"
    config.write_text("classify:\n  input_size_px: 299\n")
    out = tmp_path / "out"
    proc = slideproc("run", good_fields, "--mpp", "0.25", "--model", fake_model(tmp_path / "m"),
                     "--config", config, "--out", out)
    assert_one_line_error(proc, 2, "unknown config key 'classify.input_size_px'")
    assert not out.exists()


@pytest.mark.slow
@pytest.mark.parametrize("case", ["labels_fewer_than_outputs", "input_size_contradicts_model", "lambda_layer",
                                  "foreign_module_layer", "pickle_in_archive"])
def test_real_trained_model_damaged_is_refused(case, tiny_model, good_fields, tmp_path):
    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    damage, words = DAMAGE[case]
    damage(model)
    out = tmp_path / "out"
    proc = slideproc("run", good_fields, "--mpp", "0.25", "--model", model, "--out", out)
    assert_one_line_error(proc, 1, *words)
    assert not out.exists()


@pytest.mark.slow
def test_real_model_with_lambda_is_refused_by_the_worker_loader_too(tiny_model, tmp_path):
    """Defence in depth: the workers' loader refuses custom code even if the driver's check is skipped."""
    from slideproc.classify.loading import clear_cache, load_model_dir
    from slideproc.errors import ModelError

    model = tmp_path / "model"
    shutil.copytree(tiny_model, model)
    DAMAGE["lambda_layer"][0](model)
    clear_cache()
    with pytest.raises(ModelError, match="contains code slideproc does not load"):
        load_model_dir(model)
