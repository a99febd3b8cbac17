"""GeoJSON for QuPath: valid closed polygons inside the slide, QuPath's properties, round trip."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from slideproc.store import geojson, zarr_store
from test_store import CLASSES, make_sample

WIDTH, HEIGHT = 2000, 1500
BOUNDS = {"slide_a.tiff": [WIDTH, HEIGHT], "slide_b.tiff": [WIDTH, HEIGHT]}


@pytest.fixture()
def out(tmp_path):
    zarr_store.init_store(tmp_path, class_names=CLASSES, run_id="r")
    cells, ci, conf, prob = make_sample(200, seed=5)
    # Cells whose box overhangs the slide's edges must still give polygons inside it.
    cells.loc[0, ["x0", "y0"]] = [-6, -4]
    cells.loc[1, ["x1", "y1"]] = [WIDTH + 7, HEIGHT + 3]
    zarr_store.write_sample(tmp_path, "S1", cells, ci, conf, prob, CLASSES,
                            {"mpp": 0.25, "source_dimensions": BOUNDS})
    return tmp_path


def signed_area(ring):
    ring = np.asarray(ring)
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * float(np.sum(x[:-1] * y[1:] - x[1:] * y[:-1]))


def test_feature_collection_is_valid_for_qupath(out):
    path = geojson.write_sample_geojson(out, "S1")
    assert path == out / "geojson" / "S1.geojson"
    doc = json.loads(path.read_text())
    assert doc["type"] == "FeatureCollection"
    assert len(doc["features"]) == 200
    ids = set()
    colors: dict[str, list] = {}
    for f in doc["features"]:
        assert f["type"] == "Feature"
        ids.add(f["id"])
        geom = f["geometry"]
        assert geom["type"] == "Polygon" and len(geom["coordinates"]) == 1
        ring = geom["coordinates"][0]
        assert len(ring) >= 4 and ring[0] == ring[-1], "ring must be closed"
        xy = np.asarray(ring)
        assert (xy[:, 0] >= 0).all() and (xy[:, 0] <= WIDTH).all()
        assert (xy[:, 1] >= 0).all() and (xy[:, 1] <= HEIGHT).all()
        assert signed_area(ring) > 0  # counter-clockwise, RFC 7946
        props = f["properties"]
        assert props["objectType"] == "detection"
        cls = props["classification"]
        assert cls["name"] in CLASSES
        assert len(cls["color"]) == 3 and all(isinstance(c, int) and 0 <= c <= 255 for c in cls["color"])
        assert colors.setdefault(cls["name"], cls["color"]) == cls["color"]  # one colour per class
        assert 0.0 <= props["measurements"]["confidence"] <= 1.0
        assert props["measurements"]["area_um2"] > 0
        assert props["source"] in BOUNDS
    assert len(ids) == 200


def test_round_trip_equals_the_store(out):
    path = geojson.write_sample_geojson(out, "S1")
    back = geojson.read_geojson(path)
    cells, _prob, _attrs = zarr_store.read_sample(out, "S1")
    assert back["cell_id"].tolist() == cells["cell_id"].tolist()
    assert back["source"].tolist() == cells["source"].tolist()
    assert back["class"].tolist() == cells["class"].tolist()
    np.testing.assert_array_equal(back["x"].to_numpy(), cells["x"].to_numpy())
    np.testing.assert_array_equal(back["y"].to_numpy(), cells["y"].to_numpy())
    np.testing.assert_array_equal(back["confidence"].to_numpy(np.float32), cells["confidence"].to_numpy())
    np.testing.assert_array_equal(back["area_um2"].to_numpy(np.float32), cells["area_um2"].to_numpy())
    # The polygon's bounds give the box back, clipped to the slide.
    box = cells[["x0", "y0", "x1", "y1"]].to_numpy().copy()
    box[:, [0, 1]] = np.maximum(box[:, [0, 1]], 0)
    box[:, 2] = np.minimum(box[:, 2], WIDTH)
    box[:, 3] = np.minimum(box[:, 3], HEIGHT)
    np.testing.assert_array_equal(back[["x0", "y0", "x1", "y1"]].to_numpy(), box)


def test_ids_stable_across_rewrites(out):
    first = geojson.write_sample_geojson(out, "S1").read_bytes()
    assert geojson.write_sample_geojson(out, "S1").read_bytes() == first


def test_zero_cells(tmp_path):
    zarr_store.init_store(tmp_path, class_names=CLASSES, run_id="r")
    cells, ci, conf, prob = make_sample(0)
    zarr_store.write_sample(tmp_path, "E", cells, ci, conf, prob, CLASSES, {"mpp": 0.5})
    doc = json.loads(geojson.write_sample_geojson(tmp_path, "E").read_text())
    assert doc == {"type": "FeatureCollection", "features": []}
    assert len(geojson.read_geojson(geojson.geojson_path(tmp_path, "E"))) == 0


def test_class_colors_stable_and_distinct():
    known = [tuple(geojson.class_color(c)) for c in CLASSES]
    assert len(set(known)) == len(CLASSES)
    assert geojson.class_color("NEWCLASS") == geojson.class_color("NEWCLASS")
    assert all(0 <= v <= 255 for v in geojson.class_color("NEWCLASS"))


def test_degenerate_box_still_a_polygon():
    cells = pd.DataFrame({"cell_id": [0], "source": ["a"], "x": [5.0], "y": [5.0], "x0": [5], "y0": [5],
                          "x1": [5], "y1": [5], "area_um2": [1.0], "class": ["LYT"], "confidence": [0.9]})
    ring = geojson.cells_to_geojson(cells, "S")["features"][0]["geometry"]["coordinates"][0]
    assert ring[0] == ring[-1] and signed_area(ring) > 0
