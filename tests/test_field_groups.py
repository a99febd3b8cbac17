"""The engine's image-folder path: several fields planned, detected and cropped per task.

Grouping is a scheduling choice only: outputs must not depend on the group size,
detection must equal the library's per-tile path, and the crops the classifier
saw (--save-crops) must give back the stored probabilities.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import zarr

from slideproc.cli import main
from slideproc.config import load_run_config
from slideproc.detect import concat_cells, detect_field, detect_tile, plan_source, source_stain
from slideproc.sources.base import SourceRef

from engine_fixtures import assert_same_outputs

pytestmark = pytest.mark.timeout(600)


def _per_tile(ref, cfg) -> pd.DataFrame:
    geo, tiles = plan_source(ref, cfg)
    return concat_cells([detect_tile(ref, t, geo, cfg) for t in tiles])


@pytest.fixture(scope="module")
def five_fields(small_archive, tmp_path_factory):
    """A manifest naming one folder of five synthetic fields (the archive's two, and
    turned copies), so groups of 1 and 2 fields and batches that span groups occur."""
    from PIL import Image

    root = tmp_path_factory.mktemp("fields")
    folder = root / "five"
    folder.mkdir()
    sources = sorted((small_archive / "folders").rglob("*.png"))
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sources]
    views = [images[0], images[1], np.rot90(images[0]), np.flipud(images[1]), np.fliplr(images[0])]
    for i, img in enumerate(views):
        Image.fromarray(np.ascontiguousarray(img)).save(folder / f"field_{i}.png")
    manifest = root / "manifest.csv"
    manifest.write_text(f"sample_id,path,mpp\nfive,{folder},0.25\n", encoding="utf-8")
    return manifest


def test_detect_field_equals_per_tile_path_on_synthetic_fields(five_fields):
    cfg = load_run_config(None)
    for path in sorted(five_fields.parent.glob("five/*.png")):
        ref = SourceRef(str(path), path.name, "image", mpp=0.25)
        source_stain.cache_clear()
        _, fused = detect_field(ref, cfg)
        assert len(fused) > 0
        pd.testing.assert_frame_equal(fused, _per_tile(ref, cfg))


def test_detect_field_equals_per_tile_path_on_real_matek_crops(matek_dir):
    cfg = load_run_config(None)
    files = sorted(matek_dir.glob("*/*.jpg"))[::40]
    for path in files:
        ref = SourceRef(str(path), path.name, "image", mpp=0.094)
        pd.testing.assert_frame_equal(detect_field(ref, cfg)[1], _per_tile(ref, cfg))


def _config(tmp_path, fields_per_task: int):
    path = tmp_path / f"fields{fields_per_task}.yaml"
    path.write_text(f"engine:\n  fields_per_task: {fields_per_task}\n", encoding="utf-8")
    return str(path)


def test_group_size_does_not_change_outputs(five_fields, tiny_model, tmp_path):
    outs = {}
    for k in (1, 2, 16):
        outs[k] = tmp_path / f"out{k}"
        rc = main(["-q", "run", str(five_fields), "--model", str(tiny_model), "--out", str(outs[k]),
                   "--workers", "2", "--config", _config(tmp_path, k)])
        assert rc == 0
    cells = pd.read_csv(outs[16] / "cells" / "five.csv")
    assert cells["source"].nunique() == 5 and len(cells) > 128  # several classify batches
    assert_same_outputs(outs[1], outs[2])
    assert_same_outputs(outs[1], outs[16])
    # and detection equals the library's serial per-tile loop, field by field, in order
    cfg = load_run_config(None)
    want = concat_cells([_per_tile(SourceRef(str(p), p.name, "image", mpp=0.25), cfg)
                         for p in sorted(five_fields.parent.glob("five/*.png"))])
    np.testing.assert_allclose(cells["x"], want["x"], atol=1e-6)
    np.testing.assert_allclose(cells["y"], want["y"], atol=1e-6)
    assert list(cells["source"]) == list(want["source"])


def test_saved_crops_reproduce_the_stored_probabilities(small_archive, tiny_model, tmp_path):
    from slideproc.classify.predict import get_predictor

    out = tmp_path / "out"
    rc = main(["-q", "run", str(small_archive / "manifest.csv"), str(small_archive / "slides"),
               "--model", str(tiny_model), "--out", str(out), "--workers", "2", "--save-crops"])
    assert rc == 0
    predictor = get_predictor(tiny_model, 32)
    size = predictor.input_size_px
    root = zarr.open_group(str(out / "results.zarr"), mode="r")
    kinds = set()
    for name, g in root["samples"].groups():
        crops = g["crops"][:]
        n = g.attrs["n_cells"]
        assert crops.shape == (n, size, size, 3) and crops.dtype == np.uint8
        assert n > 0
        stored = g["cells/probabilities"][:].astype(np.float32)
        np.testing.assert_allclose(predictor.predict(crops), stored, atol=2e-3)  # float16 storage
        kinds.add("folder" if name.startswith("folder") else "slide")
    assert kinds == {"folder", "slide"}


def test_crops_resized_by_the_producer_equal_those_resized_by_the_classifier(five_fields):
    """With GPU workers the CPU workers resize the crops to the model input; the
    pixels must be exactly those the classify task would have made."""
    from slideproc.classify.preprocess import resize_crops
    from slideproc.tasks import crop_task, field_group_task

    cfg = load_run_config(None)
    refs = [SourceRef(str(p), p.name, "image", mpp=0.25) for p in sorted(five_fields.parent.glob("five/*.png"))]
    fov = cfg.crops.field_of_view_um
    native = field_group_task(refs, cfg, fov, 299)
    resized = field_group_task(refs, cfg, fov, 299, resize=True)
    assert native["crops"].shape[1] < 299 and resized["crops"].shape[1:] == (299, 299, 3)
    np.testing.assert_array_equal(resized["crops"], resize_crops(native["crops"], 299))
    pd.testing.assert_frame_equal(resized["cells"], native["cells"])

    cells = native["cells"][native["cells"]["_field"] == 0]
    xs, ys, px = cells["x"].to_numpy(), cells["y"].to_numpy(), native["crops"].shape[1]
    np.testing.assert_array_equal(crop_task(refs[0], 0.25, xs, ys, fov, px, resize_px=299),
                                  resize_crops(crop_task(refs[0], 0.25, xs, ys, fov, px), 299))
