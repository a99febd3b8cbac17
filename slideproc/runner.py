"""`slideproc run` and `slideproc detect`: inputs -> engine -> outputs, with provenance.

The engine (engine.py) schedules the work; this module decides what to run
(discovery, resume), where results go (store/), and what the run reports
(run.json, errors.csv, exit status).
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
import uuid
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

import numpy as np
import pandas as pd

from . import __version__
from .config import RunConfig, to_dict
from .errors import StoreError
from .outlock import exclusive_out_dir

log = logging.getLogger("slideproc.run")


def _versions() -> dict:
    out = {"slideproc": __version__, "python": platform.python_version()}
    for dist in ("tensorflow", "tensorflow-cpu", "keras", "jax", "dask", "distributed", "zarr",
                 "openslide-python", "openslide-bin", "scikit-image", "numpy", "pandas"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    return out


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _input_sizes(samples) -> list[dict]:
    rows = []
    for spec in samples:
        for ref in spec.sources:
            try:
                size = os.path.getsize(ref.path)
            except OSError:
                size = None
            rows.append({"sample_id": spec.sample_id, "source": ref.name, "path": ref.path, "bytes": size})
    return rows


def _source_table(cells: pd.DataFrame) -> pd.DataFrame:
    """Cells in output form, without the engine's bookkeeping columns."""
    return cells.drop(columns=["_source_index"], errors="ignore").reset_index(drop=True)


def run_archive(inputs, out_dir: Path, cfg: RunConfig, model_dir: Path | None, *, scheduler=None,
                workers=None, resume: bool = True, save_crops: bool = False, progress: bool = True) -> int:
    """Run (model_dir given) or detect (None) over ``inputs``; returns the exit status."""
    from .cluster import open_client
    from .engine import Engine, SampleResult, read_model_info
    from .store import tables

    from .plan import log_plan, plan_inputs, plan_record

    out_dir = Path(out_dir)
    # Discovery and each source's resolution from headers (no pixels): bad
    # manifests / id collisions are a UsageError before anything is written;
    # files left out and mpp overrides are logged here and kept for run.json.
    plan = plan_inputs(inputs, cfg)
    found = plan.discovery
    log_plan(plan)
    model = read_model_info(model_dir) if model_dir is not None else None
    run_id = uuid.uuid4().hex[:12]
    started = _now()
    t0 = time.perf_counter()
    with exclusive_out_dir(out_dir):
        if model is not None:
            from .store import zarr_store

            if not resume:
                for sample_id in sorted(zarr_store.completed_samples(out_dir)):
                    zarr_store.remove_sample(out_dir, sample_id)
                    tables.remove_sample_files(out_dir, sample_id)
            zarr_store.init_store(out_dir, class_names=list(model.labels), run_id=run_id,
                                  model_sha256=model.sha256, config=to_dict(cfg))
            done = zarr_store.completed_samples(out_dir)
        else:
            done = set()
        todo = [s for s in found.samples if s.sample_id not in done]
        skipped = [s for s in found.samples if s.sample_id in done]
        if skipped:
            log.info("resuming: %d sample(s) already complete in %s are skipped", len(skipped), out_dir)

        def on_sample_done(spec, cells, probs, crops, state):
            table = _source_table(cells)
            attrs = {
                "sources": [ref.name for ref in spec.sources],
                "source_paths": [ref.path for ref in spec.sources],
                "mpp": [state.geos[i].mpp0 if i in state.geos else None for i in range(len(spec.sources))],
                # Level-0 (width, height) per source: keeps GeoJSON polygons inside the slide.
                "source_dimensions": {ref.name: list(state.geos[i].level0_dims)
                                      for i, ref in enumerate(spec.sources) if i in state.geos},
                "started": datetime.fromtimestamp(state.started, timezone.utc).isoformat(timespec="seconds"),
                "finished": _now(),
                "run_id": run_id,
                # Unreadable images left out of this sample (also rows in errors.csv).
                "skipped_sources": list(state.skipped),
            }
            if model is None:
                tables.write_cells_csv(out_dir, spec.sample_id, table)
                return
            class_index = probs.argmax(axis=1).astype(np.int16) if len(probs) else np.zeros(0, np.int16)
            confidence = probs.max(axis=1).astype(np.float32) if len(probs) else np.zeros(0, np.float32)
            zarr_store.write_sample(out_dir, spec.sample_id, table, class_index, confidence, probs,
                                    list(model.labels), attrs, crops=crops)
            try:
                tables.write_sample_csv(out_dir, spec.sample_id)
            except StoreError as err:
                # The sample is complete in results.zarr, the record a resume trusts; its
                # CSV is rebuilt from there at the end of the run (which says it if it fails).
                log.info("%s: %s", spec.sample_id, err)

        results: dict = {}
        dashboard = None
        workers_seen: dict = {}
        if todo:
            with open_client(scheduler, cfg.engine, workers) as client:
                dashboard = client.dashboard_link
                log.info("Dask dashboard: %s", dashboard)
                if progress:
                    print(f"slideproc: Dask dashboard at {dashboard}", flush=True)
                from .cluster import worker_summary

                workers_seen = worker_summary(client)
                engine = Engine(todo, cfg, client, model, on_sample_done, save_crops=save_crops, progress=progress)
                results = engine.run()
        for spec in skipped:
            results[spec.sample_id] = SampleResult(spec.sample_id, "skipped", path=spec.origin)
        for path, reason in found.problems:
            results[f"<{Path(path).name}>"] = SampleResult(Path(path).name or path, "failed", stage="input",
                                                           error=f"{path}: {reason}", path=path)
        failures = [r for r in results.values() if r.status == "failed"]
        # A sample complete without some unreadable images: one row per file left out.
        failures += [SampleResult(r.sample_id, "partial", stage="open", error=s["error"], path=s["path"])
                     for r in list(results.values()) for s in getattr(r, "skipped_sources", [])]
        # Said before the tables are written: on a full disk they may not be.
        for r in failures:
            print(f"slideproc: error: {r.sample_id}: {r.stage}: {r.error}", file=sys.stderr)
        tables.write_errors_csv(out_dir, [
            {"sample_id": r.sample_id, "path": r.path, "stage": r.stage, "error": r.error} for r in failures])
        run_json = {
            "run_id": run_id,
            "command": "run" if model is not None else "detect",
            "started": started,
            "finished": _now(),
            "seconds": round(time.perf_counter() - t0, 3),
            "versions": _versions(),
            "model": None if model is None else {"path": model.path, "sha256": model.sha256,
                                                 "labels": list(model.labels), "input_size_px": model.input_size_px},
            "config": to_dict(cfg),
            "inputs": [str(p) for p in inputs],
            "input_files": _input_sizes(found.samples),
            "cluster": {"scheduler": scheduler or "local", "dashboard": dashboard, "workers": workers_seen},
            "samples": {sid: {k: v for k, v in vars(r).items() if k != "sample_id"}
                        for sid, r in sorted(results.items())},
            # Files under the inputs that are in no sample, and each source's mpp
            # and where it came from (sources/mpp.py), as planned from headers.
            **plan_record(plan),
        }
        if model is not None:
            tables.rebuild_tables(out_dir)
            from .report import write_report

            write_report(out_dir, cfg)
        tables.write_run_json(out_dir, run_json)
    n_ok = sum(r.status in ("complete", "skipped") for r in results.values())
    log.info("%d sample(s) complete, %d failed; outputs in %s", n_ok, len(failures), out_dir)
    return 1 if failures else 0
