"""CSV and JSON views of a run: cells/<sample_id>.csv, histograms.csv, errors.csv, run.json.

Every file is written whole (temporary + ``os.replace``) and every run-derived
file can be rebuilt from results.zarr alone, in a fixed order (samples sorted
by id, cells in stored order), so a resumed run ends with the same bytes as an
uninterrupted one.

Public API::

    cells_table(sample_id, cells) -> DataFrame           # the CSV's columns, in order
    write_cells_csv(out_dir, sample_id, cells) -> Path   # `detect` (no class) or `run`
    write_sample_csv(out_dir, sample_id) -> Path         # `run`: from the store
    histograms_table(out_dir) -> DataFrame
    write_histograms_csv(out_dir) -> Path
    read_errors_csv(out_dir) -> [dict]                   # errors.csv's rows; [] without it
    write_errors_csv(out_dir, errors) -> Path            # errors: dicts or objects with
                                                         # sample_id, path, stage, error
    sample_summaries(out_dir) -> list[dict]              # per complete sample, for run.json
    write_run_json(out_dir, info) -> Path
    remove_sample_files(out_dir, sample_id) -> None      # cells CSV + GeoJSON (--no-resume)
    rebuild_tables(out_dir, *, errors=None, run_info=None) -> list[str]
    read_table(path) -> DataFrame                        # any of these CSVs, ids kept as text

The engine calls ``write_sample_csv`` right after ``zarr_store.write_sample``
and ``rebuild_tables`` (then ``report.write_report``) at the end of the run.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from ..schema import CELL_CSV_COLUMNS, DETECT_COLUMNS, DETECT_CSV_COLUMNS
from . import zarr_store
from .atomic import atomic_write_text, remove_stale_temporaries

CELLS_DIR = "cells"
HISTOGRAMS_CSV = "histograms.csv"
ERRORS_CSV = "errors.csv"
RUN_JSON = "run.json"
ERROR_COLUMNS = ("sample_id", "path", "stage", "error")

# Fixed dtypes: the same numbers print the same whether they come from the
# engine's memory or back from the store (float32 prints its shortest repr).
_CSV_DTYPES = {
    "x": np.float64, "y": np.float64,
    "x0": np.int64, "y0": np.int64, "x1": np.int64, "y1": np.int64,
    "area_um2": np.float32, "confidence": np.float32,
}


# Columns that hold names, never numbers: pandas' defaults would read the
# sample ids 001, 1e5, True and NA as 1, 100000.0, a boolean and a missing value.
TEXT_COLUMNS = ("sample_id", "source", "path", "class", "stage", "error")


def read_table(path: str | os.PathLike):
    """Read a CSV slideproc wrote (cells, histograms, differential, errors, truth, manifests).

    Name columns (TEXT_COLUMNS) stay text exactly as written; only an empty
    field is missing (NaN): "NA", "null" or "nan" as a sample id is a name.
    The pandas equivalent: ``pd.read_csv(path, dtype={"sample_id": str},
    keep_default_na=False, na_values=[""])``.
    """
    import pandas as pd

    return pd.read_csv(path, dtype={c: str for c in TEXT_COLUMNS}, keep_default_na=False, na_values=[""])


def _to_csv(df) -> str:
    return df.to_csv(index=False, lineterminator="\n")


def cells_path(out_dir: str | os.PathLike, sample_id: str) -> Path:
    return Path(out_dir) / CELLS_DIR / f"{zarr_store.check_sample_id(sample_id)}.csv"


def cells_table(sample_id: str, cells):
    """Cells as the CSV has them: CELL_CSV_COLUMNS when ``cells`` has ``class``, else DETECT_CSV_COLUMNS.

    ``beyond_record`` (run's CSV): 1, 0, or empty when the sample was checked
    against no record (:func:`beyond_record_column`).

    ``cell_id`` is kept when present, else the row number.
    """
    import pandas as pd

    classified = "class" in cells.columns
    columns = CELL_CSV_COLUMNS if classified else DETECT_CSV_COLUMNS
    n = len(cells)
    data: dict[str, Any] = {
        "sample_id": [sample_id] * n,
        "cell_id": cells["cell_id"].to_numpy(np.int64) if "cell_id" in cells.columns else np.arange(n, dtype=np.int64),
    }
    for col in columns[2:]:
        if col == "beyond_record":
            data[col] = beyond_record_column(cells)
            continue
        values = cells[col].to_numpy()
        data[col] = values.astype(_CSV_DTYPES[col]) if col in _CSV_DTYPES else values.astype(str)
    return pd.DataFrame(data, columns=list(columns))


def beyond_record_column(cells):
    """``cells``' beyond_record as the CSVs write it: Int8 1 / 0, <NA> (an empty field) when unchecked.

    0/1 rather than True/False so that a spreadsheet can sum it; a table without
    the column (a sample checked against no record) is <NA> throughout.
    """
    import pandas as pd

    if "beyond_record" not in cells.columns:
        return pd.array([pd.NA] * len(cells), dtype="Int8")
    return pd.array(cells["beyond_record"], dtype="boolean").astype("Int8")


def write_cells_csv(out_dir: str | os.PathLike, sample_id: str, cells) -> Path:
    """Write cells/<sample_id>.csv from a cell table (DETECT_COLUMNS [+ class, confidence])."""
    missing = [c for c in DETECT_COLUMNS if c not in cells.columns]
    if missing:
        from ..errors import StoreError

        raise StoreError(f"cell table for {sample_id} lacks columns {', '.join(missing)}")
    return atomic_write_text(cells_path(out_dir, sample_id), _to_csv(cells_table(sample_id, cells)))


def write_sample_csv(out_dir: str | os.PathLike, sample_id: str) -> Path:
    """Write cells/<sample_id>.csv of a complete sample from results.zarr."""
    cells, _probabilities, _attrs = zarr_store.read_sample(out_dir, sample_id)
    return write_cells_csv(out_dir, sample_id, cells)


def histograms_table(out_dir: str | os.PathLike):
    """One row per complete sample (sorted by id): sample_id, n_cells, one count column per class."""
    import pandas as pd

    class_names = list(zarr_store.read_root_attrs(out_dir).get("class_names") or [])
    rows = []
    for sample_id in sorted(zarr_store.completed_samples(out_dir)):
        hist = zarr_store.read_histogram(out_dir, sample_id)
        rows.append([sample_id, int(hist.sum()), *[int(v) for v in hist]])
    columns = ["sample_id", "n_cells", *class_names]
    df = pd.DataFrame(rows, columns=columns)
    return df.astype({c: np.int64 for c in columns[1:]})


def write_histograms_csv(out_dir: str | os.PathLike) -> Path:
    return atomic_write_text(Path(out_dir) / HISTOGRAMS_CSV, _to_csv(histograms_table(out_dir)))


def _error_record(err: Any) -> dict:
    get = err.get if isinstance(err, dict) else (lambda k, d=None: getattr(err, k, d))
    # One line per error: a traceback or a multi-line message would split the row.
    return {k: " ".join(str(get(k, "") or "").split()) for k in ERROR_COLUMNS}


def read_errors_csv(out_dir: str | os.PathLike) -> list[dict]:
    """errors.csv's rows (dicts of ERROR_COLUMNS, strings); [] when there is none."""
    import pandas as pd

    path = Path(out_dir) / ERRORS_CSV
    if not path.is_file():
        return []
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    return [{c: str(row.get(c, "")) for c in ERROR_COLUMNS} for row in df.to_dict("records")]


def write_errors_csv(out_dir: str | os.PathLike, errors: Iterable[Any]) -> Path:
    """errors.csv (sample_id, path, stage, error), sorted by sample_id then path; header only when none."""
    import pandas as pd

    rows = sorted((_error_record(e) for e in errors), key=lambda r: (r["sample_id"], r["path"], r["stage"]))
    df = pd.DataFrame(rows, columns=list(ERROR_COLUMNS))
    return atomic_write_text(Path(out_dir) / ERRORS_CSV, _to_csv(df))


def sample_summaries(out_dir: str | os.PathLike) -> list[dict]:
    """Per complete sample (sorted): its stored attributes (status, sources, mpp, n_cells, times...)."""
    import zarr

    out = []
    for sample_id in sorted(zarr_store.completed_samples(out_dir)):
        path = zarr_store.store_path(out_dir) / zarr_store.SAMPLES / sample_id
        attrs = dict(zarr.open_group(str(path), mode="r").attrs)
        attrs.pop("class_names", None)  # the run's class list is at the top of run.json
        out.append({"sample_id": sample_id, **attrs})
    return out


def write_run_json(out_dir: str | os.PathLike, info: dict) -> Path:
    """run.json: ``info`` as given (JSON-able; numpy values converted), keys in given order."""
    text = json.dumps(zarr_store._plain(info), indent=2, ensure_ascii=False) + "\n"
    return atomic_write_text(Path(out_dir) / RUN_JSON, text)


def remove_sample_files(out_dir: str | os.PathLike, sample_id: str) -> None:
    """Delete a sample's cells CSV and GeoJSON (with --no-resume, before redoing it)."""
    from .geojson import geojson_path

    for path in (cells_path(out_dir, sample_id), geojson_path(out_dir, sample_id)):
        try:
            path.unlink()
        except FileNotFoundError:
            pass


def rebuild_tables(out_dir: str | os.PathLike, *, errors: Iterable[Any] | None = None,
                   run_info: dict | None = None) -> list[str]:
    """Rewrite cells/*.csv of every complete sample and histograms.csv from results.zarr.

    errors.csv is written when ``errors`` is given (the failures of this run),
    run.json when ``run_info`` is given. Returns the complete sample ids, sorted.
    """
    out_dir = Path(out_dir)
    remove_stale_temporaries(out_dir)
    remove_stale_temporaries(out_dir / CELLS_DIR)
    samples = sorted(zarr_store.completed_samples(out_dir))
    for sample_id in samples:
        write_sample_csv(out_dir, sample_id)
    # A cells CSV of no stored sample (a `detect` run's, into the same OUT_DIR) is not
    # deleted (it may be the user's only copy) but named: it is in no differential.
    cells_dir = out_dir / CELLS_DIR
    stray = sorted(p.name for p in cells_dir.glob("*.csv") if p.stem not in set(samples)) if cells_dir.is_dir() else []
    if stray:
        logging.getLogger("slideproc.store").warning(
            "%s: %d file(s) of no sample in results.zarr (%s), left by an earlier `detect` run: not in the "
            "differential or the report; move them away, or choose another --out", cells_dir, len(stray),
            ", ".join(stray[:5]) + (", ..." if len(stray) > 5 else ""))
    write_histograms_csv(out_dir)
    if errors is not None:
        write_errors_csv(out_dir, errors)
    if run_info is not None:
        write_run_json(out_dir, run_info)
    return samples
