"""results.zarr: the run's record, one Zarr v3 group per sample, written atomically.

Layout (README.md, "Outputs")::

    results.zarr/                 attrs: slideproc_version, run_id, class_names,
                                  model_sha256, config
      samples/<sample_id>/        attrs: status "complete", sources, mpp, n_cells,
                                  class_names, started, finished (+ what the engine adds)
        cells/source              int32 index into attrs["sources"]
        cells/x, cells/y          float64 centroid, level-0 px of that source
        cells/bbox                int32 (N, 4): x0, y0, x1, y1
        cells/area_um2            float32
        cells/class_index         int16 into class_names
        cells/confidence          float32 (max probability)
        cells/probabilities       float16 (N, C)
        cells/beyond_record       bool, the cell lies beyond the model's record
                                  (classify/record_check.py); only with a model
                                  that has feature_record.npz
        histogram                 int64 (C,)
        crops                     uint8 (N, H, W, 3), only with --save-crops

Public API (the engine's contract)::

    init_store(out_dir, *, class_names, run_id, model_sha256=None, config=None) -> Path
    write_sample(out_dir, sample_id, cells, class_index, confidence, probabilities,
                 class_names, attrs, crops=None, beyond_record=None) -> Path
    read_sample(out_dir, sample_id) -> (cells DataFrame, probabilities (N, C) float16, attrs)
    read_crops(out_dir, sample_id) -> uint8 (N, H, W, 3) | None
    completed_samples(out_dir) -> set[str]
    completed_sample_attrs(out_dir) -> {sample_id: attrs}
    remove_sample(out_dir, sample_id) -> None
    read_root_attrs(out_dir) -> dict
    clean_stale(out_dir) -> list[Path]

Atomicity: a sample is written into a hidden sibling directory
``samples/.<sample_id>.tmp-<random>/`` with status "complete" already in its
attributes, flushed to disk, then renamed to ``samples/<sample_id>/``. The
rename is the commit point: a crash before it leaves only a hidden directory,
which ``completed_samples`` never reports and ``init_store`` deletes. Zarr's
local store already writes each file via a temporary and a rename, so the root
attributes are never half-written either.

Only one process may call ``init_store`` per OUT_DIR at a time (it deletes
temporaries); ``write_sample`` calls for different samples may run in
parallel, from any process.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from ..errors import StoreError
from ..schema import DETECT_COLUMNS

STORE_NAME = "results.zarr"
SAMPLES = "samples"
COMPLETE = "complete"
FORMAT = "slideproc-results/1"

# 65,536 cells per chunk: a dense marrow slide holds ~10^4-10^5 nucleated cells,
# so most samples are one chunk per array, and a chunk of probabilities
# (65,536 x 21 float16) stays under 3 MB.
CELL_CHUNK = 65_536
# Crops are big (a 299 px crop is 268 kB); 64 per chunk keeps chunks ~17 MB.
CROP_CHUNK = 64
_TMP_MARK = ".tmp-"
_OLD_MARK = ".old-"  # a sample moved aside while its replacement is renamed in
_DEL_MARK = ".del-"  # a sample being deleted (remove_sample)
_FIX = "free disk space or fix the permissions of the output folder, then run again (complete samples are kept)"


def store_path(out_dir: str | os.PathLike) -> Path:
    return Path(out_dir) / STORE_NAME


def _samples_dir(out_dir: str | os.PathLike) -> Path:
    return store_path(out_dir) / SAMPLES


def check_sample_id(sample_id: str) -> str:
    """A sample id is one path component: it must not escape or hide in the store."""
    if (
        not isinstance(sample_id, str)
        or not sample_id.strip()
        or sample_id in (".", "..")
        or sample_id.startswith(".")
        or any(c in sample_id for c in "/\\\0")
    ):
        raise StoreError(
            f"sample id {sample_id!r} cannot be a store folder name: use a name without "
            "path separators that does not start with '.'"
        )
    return sample_id


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars/arrays, tuples and paths become plain types."""

    def default(v: Any) -> Any:
        if isinstance(v, np.generic):
            return v.item()
        if isinstance(v, np.ndarray):
            return v.tolist()
        if isinstance(v, (os.PathLike, _dt.datetime, _dt.date)):
            return str(v)
        if isinstance(v, (set, frozenset)):
            return sorted(v)
        raise TypeError(f"{type(v).__name__} is not JSON serializable")

    return json.loads(json.dumps(value, default=default))


def _os_error_message(err: BaseException) -> str:
    if isinstance(err, OSError):
        return err.strerror or str(err) or type(err).__name__
    return str(err) or type(err).__name__


def _fsync_tree(root: Path) -> None:
    """Flush every file and directory under ``root`` so the rename commits data, not promises."""
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(dirpath))


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return  # some filesystems cannot open directories; the rename is still atomic
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# ----------------------------------------------------------------------------
# the root group
# ----------------------------------------------------------------------------
def clean_stale(out_dir: str | os.PathLike) -> list[Path]:
    """Delete temporaries left by a crashed write; returns what was deleted."""
    samples = _samples_dir(out_dir)
    removed = []
    if not samples.is_dir():
        return removed
    for entry in sorted(samples.iterdir()):
        if not entry.name.startswith("."):
            continue
        if _OLD_MARK in entry.name:
            # A sample moved aside by a commit that died before its replacement
            # was renamed in: it is still the sample's only complete version.
            final = samples / entry.name[1:].split(_OLD_MARK)[0]
            if not final.exists():
                try:
                    os.rename(entry, final)
                    continue
                except OSError:
                    pass
        if _TMP_MARK in entry.name or _OLD_MARK in entry.name or _DEL_MARK in entry.name:
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
    return removed


def init_store(
    out_dir: str | os.PathLike,
    *,
    class_names: Sequence[str],
    run_id: str,
    model_sha256: str | None = None,
    config: dict | None = None,
    extra_attrs: dict | None = None,
) -> Path:
    """Create results.zarr (or reopen it for a resume) and clean stale temporaries.

    A store written with other class names is refused: its samples would be
    counted against the wrong labels.
    """
    import zarr

    from .. import __version__

    path = store_path(out_dir)
    class_names = [str(c) for c in class_names]
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        root = zarr.open_group(str(path), mode="a", zarr_format=3)
        old = dict(root.attrs)
        if old.get("class_names") and list(old["class_names"]) != class_names and completed_samples(out_dir):
            raise StoreError(
                f"{path} holds samples classified with other classes ({', '.join(old['class_names'])}); "
                "use a new output folder or --no-resume"
            )
        if SAMPLES not in root:
            root.create_group(SAMPLES)
        attrs = {
            "format": FORMAT,
            "slideproc_version": __version__,
            "run_id": str(run_id),
            "class_names": class_names,
            "model_sha256": model_sha256,
            "config": config,
        }
        attrs.update(extra_attrs or {})
        root.attrs.update(_plain(attrs))
        clean_stale(out_dir)
    except StoreError:
        raise
    except OSError as err:
        raise StoreError(f"cannot create {path}: {_os_error_message(err)}; {_FIX}") from None
    return path


def read_root_attrs(out_dir: str | os.PathLike) -> dict:
    import zarr

    path = store_path(out_dir)
    if not (path / "zarr.json").is_file():
        raise StoreError(
            f"no results store at {path}: run `slideproc run INPUT... --model MODEL_DIR --out {Path(out_dir)}` first"
        )
    try:
        return dict(zarr.open_group(str(path), mode="r").attrs)
    except Exception as err:  # noqa: BLE001 - any read failure is one line for the user
        raise StoreError(f"cannot read {path}: {_os_error_message(err)}") from None


# ----------------------------------------------------------------------------
# samples
# ----------------------------------------------------------------------------
def _validate(cells, class_index, confidence, probabilities, class_names, crops):
    n = len(cells)
    missing = [c for c in DETECT_COLUMNS if c not in cells.columns]
    if missing:
        raise StoreError(f"cell table lacks columns {', '.join(missing)} (expected {', '.join(DETECT_COLUMNS)})")
    class_index = np.asarray(class_index)
    confidence = np.asarray(confidence)
    probabilities = np.asarray(probabilities)
    n_classes = len(class_names)
    if probabilities.size == 0:
        probabilities = probabilities.reshape(0, n_classes)
    if class_index.shape != (n,) or confidence.shape != (n,) or probabilities.shape != (n, n_classes):
        raise StoreError(
            f"results disagree in size: {n} cells, class_index {class_index.shape}, "
            f"confidence {confidence.shape}, probabilities {probabilities.shape} for {n_classes} classes"
        )
    if n and (class_index.min() < 0 or class_index.max() >= n_classes):
        raise StoreError(f"class_index out of range 0..{n_classes - 1}")
    if crops is not None:
        crops = np.asarray(crops)
        if crops.ndim != 4 or crops.shape[0] != n or crops.shape[3] != 3 or crops.dtype != np.uint8:
            raise StoreError(f"crops must be uint8 (N, H, W, 3) with N = {n}, got {crops.dtype} {crops.shape}")
    return class_index, confidence, probabilities, crops


def _source_index(cells, sources: list[str]) -> tuple[np.ndarray, list[str]]:
    """Index cells' sources into ``sources`` (extended with any the list lacks)."""
    sources = [str(s) for s in sources]
    lookup = {s: i for i, s in enumerate(sources)}
    index = np.empty(len(cells), dtype=np.int32)
    for i, s in enumerate(cells["source"].astype(str).tolist()):
        if s not in lookup:
            lookup[s] = len(sources)
            sources.append(s)
        index[i] = lookup[s]
    return index, sources


def _put(group, name: str, data: np.ndarray, chunk_rows: int) -> None:
    chunks = (max(1, min(len(data), chunk_rows)),) + tuple(max(1, d) for d in data.shape[1:])
    arr = group.create_array(name, shape=data.shape, dtype=data.dtype, chunks=chunks)
    if data.size:
        arr[...] = data


def write_sample(
    out_dir: str | os.PathLike,
    sample_id: str,
    cells,
    class_index,
    confidence,
    probabilities,
    class_names: Sequence[str],
    attrs: dict | None = None,
    crops: np.ndarray | None = None,
    beyond_record: np.ndarray | None = None,
) -> Path:
    """Write one classified sample whole, or not at all; returns its group path.

    ``cells``: DataFrame with DETECT_COLUMNS (``source`` as in cells/*.csv).
    ``attrs``: JSON-able dict; ``sources`` (list of source names) gives the order
    of the ``cells/source`` index and is extended with any cell source it lacks;
    ``beyond_record``: bool (N,), the cells beyond the model's record
    (classify/record_check.py), stored as ``cells/beyond_record`` when given.
    ``mpp``, ``started``, ``finished`` and anything else are kept as given
    (``finished`` defaults to now, UTC). ``status``, ``n_cells`` and
    ``class_names`` are set here. An existing sample of that id is replaced.
    Raises StoreError (one line) on any write failure; nothing half-written is
    then left where a resume would see it.
    """
    import zarr

    check_sample_id(sample_id)
    class_names = [str(c) for c in class_names]
    class_index, confidence, probabilities, crops = _validate(
        cells, class_index, confidence, probabilities, class_names, crops
    )
    samples = _samples_dir(out_dir)
    final = samples / sample_id
    tmp = samples / f".{sample_id}{_TMP_MARK}{uuid.uuid4().hex}"
    attrs = dict(attrs or {})
    source_index, sources = _source_index(cells, list(attrs.get("sources") or []))
    histogram = np.bincount(class_index.astype(np.int64), minlength=len(class_names)).astype(np.int64)
    attrs.update(
        status=COMPLETE,
        sample_id=sample_id,
        sources=sources,
        n_cells=int(len(cells)),
        class_names=class_names,
    )
    attrs.setdefault("finished", _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    try:
        attrs = _plain(attrs)
    except TypeError as err:
        raise StoreError(f"sample {sample_id}: attributes are not JSON-serializable ({err})") from None
    bbox = np.stack([cells[c].to_numpy() for c in ("x0", "y0", "x1", "y1")], axis=1) if len(cells) else np.zeros((0, 4))
    try:
        samples.mkdir(parents=True, exist_ok=True)
        group = zarr.open_group(str(tmp), mode="w", zarr_format=3)
        _put(group, "cells/source", source_index, CELL_CHUNK)
        _put(group, "cells/x", cells["x"].to_numpy(dtype=np.float64), CELL_CHUNK)
        _put(group, "cells/y", cells["y"].to_numpy(dtype=np.float64), CELL_CHUNK)
        _put(group, "cells/bbox", np.asarray(bbox).astype(np.int32).reshape(-1, 4), CELL_CHUNK)
        _put(group, "cells/area_um2", cells["area_um2"].to_numpy(dtype=np.float32), CELL_CHUNK)
        _put(group, "cells/class_index", class_index.astype(np.int16), CELL_CHUNK)
        _put(group, "cells/confidence", confidence.astype(np.float32), CELL_CHUNK)
        _put(group, "cells/probabilities", probabilities.astype(np.float16), CELL_CHUNK)
        _put(group, "histogram", histogram, max(1, len(class_names)))
        if beyond_record is not None:
            beyond_record = np.asarray(beyond_record, bool)
            if beyond_record.shape != (len(cells),):
                raise ValueError(f"beyond_record has shape {beyond_record.shape} for {len(cells)} cells")
            _put(group, "cells/beyond_record", beyond_record, CELL_CHUNK)
        if crops is not None:
            _put(group, "crops", crops, CROP_CHUNK)
        # Status last and inside the temporary: the rename below publishes it.
        group.attrs.update(attrs)
        _fsync_tree(tmp)
        _commit(tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if isinstance(err, Exception):
            raise StoreError(f"cannot write sample {sample_id} to {final}: {_os_error_message(err)}; {_FIX}") from None
        raise
    return final


def _commit(tmp: Path, final: Path) -> None:
    """Rename ``tmp`` to ``final``; an existing ``final`` is moved aside first, then deleted."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}{_OLD_MARK}{uuid.uuid4().hex}")
        os.rename(final, old)
    os.rename(tmp, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _open_sample(out_dir, sample_id):
    import zarr

    check_sample_id(sample_id)
    path = _samples_dir(out_dir) / sample_id
    if not (path / "zarr.json").is_file():
        raise StoreError(f"sample {sample_id} is not in {store_path(out_dir)}")
    group = zarr.open_group(str(path), mode="r")
    attrs = dict(group.attrs)
    if attrs.get("status") != COMPLETE:
        raise StoreError(f"sample {sample_id} in {store_path(out_dir)} is not complete; run again to redo it")
    return group, attrs


def read_sample(out_dir: str | os.PathLike, sample_id: str):
    """Return ``(cells, probabilities, attrs)`` of a complete sample.

    ``cells`` has columns cell_id, DETECT_COLUMNS (``source`` as a name),
    class_index, class, confidence, beyond_record, in stored order (cell_id =
    row number). ``beyond_record`` is pandas' nullable ``boolean``: the stored
    ``cells/beyond_record``, or <NA> on every row of a sample checked against no
    record (a model without feature_record.npz).
    """
    import pandas as pd

    try:
        group, attrs = _open_sample(out_dir, sample_id)
        sources = np.asarray(attrs.get("sources") or [], dtype=object)
        names = np.asarray(attrs.get("class_names") or read_root_attrs(out_dir)["class_names"], dtype=object)
        source_index = group["cells/source"][...]
        bbox = group["cells/bbox"][...].reshape(-1, 4)
        class_index = group["cells/class_index"][...]
        probabilities = group["cells/probabilities"][...]
        n = len(source_index)
        cells = pd.DataFrame(
            {
                "cell_id": np.arange(n, dtype=np.int64),
                "source": sources[source_index] if n else np.asarray([], dtype=object),
                "x": group["cells/x"][...],
                "y": group["cells/y"][...],
                "x0": bbox[:, 0],
                "y0": bbox[:, 1],
                "x1": bbox[:, 2],
                "y1": bbox[:, 3],
                "area_um2": group["cells/area_um2"][...],
                "class_index": class_index,
                "class": names[class_index] if n else np.asarray([], dtype=object),
                "confidence": group["cells/confidence"][...],
                "beyond_record": pd.array(
                    group["cells/beyond_record"][...] if "cells/beyond_record" in group else [pd.NA] * n,
                    dtype="boolean"),
            }
        )
    except StoreError:
        raise
    except Exception as err:  # noqa: BLE001 - a damaged store is one line for the user
        raise StoreError(
            f"cannot read sample {sample_id} from {store_path(out_dir)}: {_os_error_message(err)}; "
            "run again with --no-resume to redo it"
        ) from None
    return cells, probabilities, attrs


def read_histogram(out_dir: str | os.PathLike, sample_id: str) -> np.ndarray:
    group, _attrs = _open_sample(out_dir, sample_id)
    return group["histogram"][...]


def read_crops(out_dir: str | os.PathLike, sample_id: str, index=None) -> np.ndarray | None:
    """The sample's crops (all, or rows ``index``), or None when none were saved."""
    group, _attrs = _open_sample(out_dir, sample_id)
    if "crops" not in group:
        return None
    arr = group["crops"]
    if index is None:
        return arr[...]
    index = np.asarray(index, dtype=np.int64)
    if index.size == 0:
        return np.zeros((0, *arr.shape[1:]), dtype=np.uint8)
    return arr.get_orthogonal_selection((index,))


def completed_samples(out_dir: str | os.PathLike) -> set[str]:
    """Ids of samples whose group is in place with status "complete"."""
    return set(completed_sample_attrs(out_dir))


def completed_sample_attrs(out_dir: str | os.PathLike) -> dict[str, dict]:
    """{sample_id: attributes} of the complete samples (reads each group's zarr.json only)."""
    samples = _samples_dir(out_dir)
    done = {}
    if not samples.is_dir():
        return done
    for entry in samples.iterdir():
        if entry.name.startswith("."):
            continue  # temporaries and moved-aside groups are never complete
        meta = entry / "zarr.json"
        try:
            doc = json.loads(meta.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        attrs = doc.get("attributes") or {}
        if attrs.get("status") == COMPLETE:
            done[entry.name] = attrs
    return done


def remove_sample(out_dir: str | os.PathLike, sample_id: str) -> None:
    """Delete a sample (for --no-resume): moved aside atomically first, then deleted."""
    check_sample_id(sample_id)
    final = _samples_dir(out_dir) / sample_id
    if not final.exists():
        return
    old = final.with_name(f".{sample_id}{_DEL_MARK}{uuid.uuid4().hex}")
    try:
        os.rename(final, old)
    except OSError as err:
        raise StoreError(f"cannot remove sample {sample_id} from {store_path(out_dir)}: {_os_error_message(err)}") from None
    shutil.rmtree(old, ignore_errors=True)
