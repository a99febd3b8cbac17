"""geojson/<sample_id>.geojson: the cells as QuPath detections.

QuPath (File > Import objects, or drag and drop) reads a FeatureCollection of
features ``{"type": "Feature", "id": UUID, "geometry": Polygon, "properties":
{"objectType": "detection", "classification": {"name", "color"},
"measurements": {...}}}``. Coordinates are level-0 pixels of the cell's
source file. A sample made of several files (an image folder) gives one
collection whose features name their file in ``properties.source``; import the
features of one source onto that image.

Each cell is the ellipse inscribed in its bounding box, 16 vertices, closed,
counter-clockwise (RFC 7946), inside the source's bounds when the sample's
attributes carry them (``source_dimensions``: {source: [width, height]}) and
never below 0. Vertices at 0, 90, 180 and 270 degrees touch the box, so the
polygon's bounds give the box back.

Public API::

    geojson_path(out_dir, sample_id) -> Path
    class_color(name) -> [r, g, b]
    cells_to_geojson(cells, sample_id, bounds=None) -> dict
    write_sample_geojson(out_dir, sample_id, cells=None, attrs=None) -> Path   # from the store
    read_geojson(path) -> DataFrame (cell_id, source, x, y, x0, y0, x1, y1, area_um2, class, confidence,
                                     beyond_record)
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import uuid
from pathlib import Path

import numpy as np

from . import zarr_store
from .atomic import atomic_write_text
from .tables import beyond_record_column

GEOJSON_DIR = "geojson"
# A multiple of 4, so the ring touches all four sides of the box; 16 is smooth at
# any zoom for a cell of <= 100 px and keeps a 50,000-cell file near 30 MB.
N_VERTICES = 16
_DECIMALS = 3  # 1/1000 px: exact enough, and short files
_NAMESPACE = uuid.UUID("6f1c1e2a-4d43-4b0b-9a57-5e1de9a1c0de")  # stable feature ids across re-runs

# One colour per Matek class, chosen so that related cells look related
# (neutrophil lineage in greens, erythroid in reds, lymphoid in blues) and
# non-cell classes in greys. Other labels get a colour from a hash of the name.
CLASS_COLORS = {
    "BLA": (220, 20, 60), "PMO": (255, 140, 0), "MYB": (218, 165, 32), "MMZ": (154, 205, 50),
    "NGB": (60, 179, 113), "NGS": (0, 128, 0), "EOS": (255, 99, 71), "ABE": (199, 21, 133),
    "BAS": (75, 0, 130), "MON": (147, 112, 219), "FGC": (255, 0, 255), "LYT": (30, 144, 255),
    "LYI": (0, 191, 255), "PLM": (0, 0, 205), "PEB": (139, 0, 0), "EBO": (178, 34, 34),
    "HAC": (0, 206, 209), "OTH": (160, 82, 45), "ART": (128, 128, 128), "NIF": (169, 169, 169),
    "KSC": (105, 105, 105),
}


def class_color(name: str) -> list[int]:
    """A stable RGB colour for a class name (the same in every run and on every machine)."""
    if name in CLASS_COLORS:
        return list(CLASS_COLORS[name])
    digest = hashlib.sha256(name.encode("utf-8")).digest()
    return [64 + digest[i] % 160 for i in range(3)]


def geojson_path(out_dir: str | os.PathLike, sample_id: str) -> Path:
    return Path(out_dir) / GEOJSON_DIR / f"{zarr_store.check_sample_id(sample_id)}.geojson"


def _rings(boxes: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """Closed rings (N, N_VERTICES + 1, 2) of the ellipses inscribed in ``boxes`` (N, 4), all at once.

    ``limits`` (N, 2): each cell's source width and height (inf when unknown).
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    x0, y0 = boxes[:, 0], boxes[:, 1]
    # A box of zero width still gets a 1 px ellipse: QuPath drops empty polygons.
    x1 = np.maximum(boxes[:, 2], x0 + 1.0)
    y1 = np.maximum(boxes[:, 3], y0 + 1.0)
    cx, cy, rx, ry = (x0 + x1) / 2, (y0 + y1) / 2, (x1 - x0) / 2, (y1 - y0) / 2
    theta = np.arange(N_VERTICES) * (2 * math.pi / N_VERTICES)
    xs = np.round(cx[:, None] + rx[:, None] * np.cos(theta), _DECIMALS)
    ys = np.round(cy[:, None] + ry[:, None] * np.sin(theta), _DECIMALS)
    xs = np.clip(xs, 0.0, limits[:, :1])
    ys = np.clip(ys, 0.0, limits[:, 1:2])
    ring = np.stack([xs, ys], axis=2)
    return np.concatenate([ring, ring[:, :1]], axis=1)  # GeoJSON rings are closed


def _f32(value: float) -> float:
    """A float32 as its shortest decimal (0.8123, not 0.8123000144958496); float32() gives it back."""
    return float(str(np.float32(value)))


def cells_to_geojson(cells, sample_id: str, bounds: dict | None = None) -> dict:
    """A FeatureCollection of ``cells`` (read_sample's DataFrame: class, confidence, bbox...).

    Measurements: ``confidence``, ``area_um2`` (um^2) and, when the sample was
    checked against the model's record, ``beyond_record`` (1.0 / 0.0).

    ``bounds``: optional {source: (width, height)} in level-0 pixels.
    """
    import pandas as pd

    bounds = {str(k): (float(v[0]), float(v[1])) for k, v in (bounds or {}).items()}
    sources = [str(s) for s in cells["source"].tolist()]
    limits = np.array([bounds.get(s, (math.inf, math.inf)) for s in sources], dtype=np.float64).reshape(-1, 2)
    rings = _rings(cells[["x0", "y0", "x1", "y1"]].to_numpy(), limits).tolist()
    colors: dict[str, list[int]] = {}
    features = []
    columns = ("cell_id", "x", "y", "area_um2", "class", "confidence")
    beyond = beyond_record_column(cells).tolist()
    # Plain lists: `class` is a keyword, so itertuples would rename it.
    for ring, source, outside, (cell_id, x, y, area, name, confidence) in zip(
        rings, sources, beyond, zip(*(cells[c].tolist() for c in columns))
    ):
        name, cell_id = str(name), int(cell_id)
        color = colors.setdefault(name, class_color(name))
        measurements = {"confidence": _f32(confidence), "area_um2": _f32(area)}
        if outside is not pd.NA:
            # QuPath measurements are numbers: 1.0 / 0.0, so a measurement map or
            # a filter shows the cells unlike the model's record.
            measurements["beyond_record"] = float(outside)
        features.append(
            {
                "type": "Feature",
                "id": str(uuid.uuid5(_NAMESPACE, f"{sample_id}/{cell_id}")),
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": {
                    "objectType": "detection",
                    "classification": {"name": name, "color": color},
                    "measurements": measurements,
                    "source": source,
                    "cell_id": cell_id,
                    "centroid": [float(x), float(y)],
                },
            }
        )
    return {"type": "FeatureCollection", "features": features}


def write_sample_geojson(out_dir: str | os.PathLike, sample_id: str, cells=None, attrs: dict | None = None) -> Path:
    """Write geojson/<sample_id>.geojson from the store (or from ``cells``/``attrs`` already read)."""
    if cells is None or attrs is None:
        cells, _probabilities, attrs = zarr_store.read_sample(out_dir, sample_id)
    doc = cells_to_geojson(cells, sample_id, bounds=attrs.get("source_dimensions"))
    # One feature per line: diff-able and still a valid JSON document.
    lines = ",\n".join(json.dumps(f, separators=(",", ":")) for f in doc["features"])
    text = '{"type":"FeatureCollection","features":[\n' + lines + "\n]}\n"
    return atomic_write_text(geojson_path(out_dir, sample_id), text)


def read_geojson(path: str | os.PathLike):
    """The cells of a slideproc GeoJSON file, with the box taken from each polygon's bounds."""
    import pandas as pd

    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    rows = []
    for feature in doc.get("features", []):
        props = feature["properties"]
        ring = np.asarray(feature["geometry"]["coordinates"][0], dtype=np.float64)
        x, y = props.get("centroid", [math.nan, math.nan])
        rows.append(
            {
                "cell_id": int(props.get("cell_id", len(rows))),
                "source": props.get("source", ""),
                "x": float(x),
                "y": float(y),
                "x0": int(round(ring[:, 0].min())),
                "y0": int(round(ring[:, 1].min())),
                "x1": int(round(ring[:, 0].max())),
                "y1": int(round(ring[:, 1].max())),
                "area_um2": float(props["measurements"].get("area_um2", math.nan)),
                "class": props["classification"]["name"],
                "confidence": float(props["measurements"].get("confidence", math.nan)),
                "beyond_record": props["measurements"].get("beyond_record", pd.NA),
            }
        )
    columns = ["cell_id", "source", "x", "y", "x0", "y0", "x1", "y1", "area_um2", "class", "confidence",
               "beyond_record"]
    df = pd.DataFrame(rows, columns=columns)
    df["beyond_record"] = pd.array(df["beyond_record"], dtype="boolean")
    return df
