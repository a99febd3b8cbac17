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
    from .cluster import code_sha256

    # the code, not only the version string (which does not change with every commit)
    out = {"slideproc": __version__, "slideproc_code_sha256": code_sha256(), "python": platform.python_version()}
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


def _check_inputs(inputs) -> None:
    """A command-line INPUT that does not exist is a typo: exit 2 before anything is written."""
    from .errors import UsageError

    for path in inputs:
        if not os.path.lexists(path):
            raise UsageError(f"input {path} not found; check the path (nothing was written)")


def _provenance(attrs: dict) -> dict:
    """The record of the run that made a stored sample: when, with what, how long, how many cells."""
    made = attrs.get("made_from") or {}
    keys = ("run_id", "started", "finished", "seconds", "n_cells", "slideproc_version", "model_sha256",
            "config_sha256")
    out = {k: attrs.get(k, made.get(k)) for k in keys}
    out["files"] = made.get("files")
    out["mpp"] = attrs.get("mpp")
    return out


def _run_summary(info: dict) -> dict:
    counts: dict = {}
    for sample in (info.get("samples") or {}).values():
        status = sample.get("status", "?") if isinstance(sample, dict) else "?"
        counts[status] = counts.get(status, 0) + 1
    model = info.get("model") or {}
    return {"run_id": info.get("run_id"), "command": info.get("command"), "started": info.get("started"),
            "finished": info.get("finished"), "seconds": info.get("seconds"), "inputs": info.get("inputs"),
            "model_sha256": model.get("sha256") if isinstance(model, dict) else None, "samples": counts}


_CARRIED = "(an earlier run's failure"


def _carried_errors(out_dir: Path, this_run: set[str], stored: dict | None) -> list[dict]:
    """errors.csv rows of an earlier run for samples this run was not given and that the
    store does not hold complete: kept, marked, so that a run over part of an archive does
    not make an earlier failure vanish from errors.csv and the report. None for ``stored``
    (``detect``: no store): nothing is carried, as a detect run has no record of success."""
    from .store import tables

    if stored is None:
        return []
    try:
        old = tables.read_errors_csv(out_dir)
    except (OSError, ValueError):
        return []
    run_id = (_earlier_runs(out_dir)[-1:] or [{}])[0].get("run_id", "?")
    carried = []
    for row in old:
        if row["sample_id"] in this_run or row["sample_id"] in stored:
            continue
        if _CARRIED not in row["error"]:
            row = {**row, "error": f"{row['error']} {_CARRIED} (run {run_id}); this run was not given the sample)"}
        carried.append(row)
    return carried


def _earlier_runs(out_dir: Path) -> list:
    """The run history kept in OUT_DIR/run.json (empty when there is none or it is unreadable)."""
    import json

    from .store.tables import RUN_JSON

    try:
        old = json.loads((out_dir / RUN_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(old, dict):
        return []
    runs = old.get("runs")
    if isinstance(runs, list) and runs:
        return runs
    return [_run_summary(old)] if old.get("run_id") else []


def run_archive(inputs, out_dir: Path, cfg: RunConfig, model_dir: Path | None, *, scheduler=None,
                workers=None, resume: bool = True, save_crops: bool = False, progress: bool = True) -> int:
    """Run (model_dir given) or detect (None) over ``inputs``; returns the exit status.

    Order matters for "bad usage writes nothing": inputs, manifests, the model,
    its backend, the config's class names, the lock (checked, not taken) and
    the store's model/settings are all checked before the cluster is started or
    reached (with its own deadline, and a start-up check of every worker);
    only then are OUT_DIR, the lock and results.zarr created.
    """
    from contextlib import ExitStack

    from . import resume as resuming
    from .cluster import check_backend, check_workers, open_client
    from .config import check_report_classes
    from .engine import Engine, SampleResult, read_model_info
    from .outlock import check_free
    from .store import tables

    from .plan import log_plan, plan_inputs, plan_record

    out_dir = Path(out_dir)
    _check_inputs(inputs)
    # Discovery and each source's resolution from headers (no pixels, but for
    # --mpp auto estimates): bad manifests / id collisions are a UsageError before anything is written;
    # files left out and mpp overrides are logged here and kept for run.json.
    plan = plan_inputs(inputs, cfg)
    found = plan.discovery
    log_plan(plan)
    model = read_model_info(model_dir) if model_dir is not None else None
    if model is not None:
        check_backend()
        for note in check_report_classes(cfg.report, model.labels, f"the model in {model.path}"):
            log.warning("%s", note)
    check_free(out_dir)
    config = to_dict(cfg)
    work = resuming.plan(out_dir, found.samples, config, model, resume, plan)
    run_id = uuid.uuid4().hex[:12]
    started = _now()
    t0 = time.perf_counter()
    results: dict = {}
    dashboard = None
    workers_seen: dict = {}
    with ExitStack() as stack:
        client = None

        def connect():
            nonlocal client, dashboard, workers_seen
            client = stack.enter_context(open_client(scheduler, cfg.engine, workers))
            workers_seen = check_workers(client, str(Path(model.path) / "model.keras") if model else None,
                                         import_backend=bool(scheduler))
            dashboard = client.dashboard_link
            if progress:  # one line, not the log's and this one both
                print(f"slideproc: Dask dashboard at {dashboard}", flush=True)
            else:
                log.info("Dask dashboard: %s", dashboard)

        if work.todo:
            connect()  # before OUT_DIR exists: a wrong --scheduler or a bad worker writes nothing
        stack.enter_context(exclusive_out_dir(out_dir))
        # Under the lock, the store as it is now (another run may have finished meanwhile).
        work = resuming.plan(out_dir, found.samples, config, model, resume, plan)
        stored = {}
        if model is not None:
            from .store import zarr_store

            stored = zarr_store.completed_sample_attrs(out_dir)
            zarr_store.init_store(out_dir, class_names=list(model.labels), run_id=run_id,
                                  model_sha256=model.sha256, config=config,
                                  extra_attrs={"model_path": model.path, "labels_sha256": model.labels_sha256,
                                               "config_sha256": resuming.config_digest(config)})
            # The model's validation record goes with the results: `report` needs nothing else.
            from .model_card import read_model_card, store_card

            store_card(out_dir, read_model_card(model_dir, tta_views=cfg.classify.tta_views))
        resuming.say(work, out_dir)

        def on_sample_done(spec, cells, probs, crops, state):
            table = _source_table(cells)
            mpp = [state.geos[i].mpp0 if i in state.geos else None for i in range(len(spec.sources))]
            finished = _now()
            attrs = {
                "sources": [ref.name for ref in spec.sources],
                "source_paths": [ref.path for ref in spec.sources],
                "mpp": mpp,
                # Level-0 (width, height) per source: keeps GeoJSON polygons inside the slide.
                "source_dimensions": {ref.name: list(state.geos[i].level0_dims)
                                      for i, ref in enumerate(spec.sources) if i in state.geos},
                "started": datetime.fromtimestamp(state.started, timezone.utc).isoformat(timespec="seconds"),
                "finished": finished,
                "seconds": round(time.time() - state.started, 3),
                "run_id": run_id,
                "slideproc_version": __version__,
                "model_sha256": model.sha256 if model is not None else None,
                "config_sha256": resuming.config_digest(config),
                # What it was made from: a resume reuses it only while these still hold (resume.py).
                "made_from": work.records.get(spec.sample_id, {}),
                # Unreadable images left out of this sample (also rows in errors.csv).
                "skipped_sources": list(state.skipped),
            }
            if model is None:
                tables.write_cells_csv(out_dir, spec.sample_id, table)
                return
            class_index = probs.argmax(axis=1).astype(np.int16) if len(probs) else np.zeros(0, np.int16)
            confidence = probs.max(axis=1).astype(np.float32) if len(probs) else np.zeros(0, np.float32)
            beyond = state.beyond_record
            if beyond is not None:
                from .classify.record_check import QUANTILE

                # How many of the cells lie beyond the model's record (classify/record_check.py):
                # the differential flags a sample unlike the record.
                attrs["record_check"] = {"cells": int(len(beyond)), "beyond": int(beyond.sum()),
                                         "expected_share": round(1.0 - QUANTILE, 6)}
            zarr_store.write_sample(out_dir, spec.sample_id, table, class_index, confidence, probs,
                                    list(model.labels), attrs, crops=crops, beyond_record=beyond)
            try:
                tables.write_sample_csv(out_dir, spec.sample_id)
            except StoreError as err:
                # The sample is complete in results.zarr, the record a resume trusts; its
                # CSV is rebuilt from there at the end of the run (which says it if it fails).
                log.info("%s: %s", spec.sample_id, err)

        if work.todo:
            if client is None:
                connect()
            engine = Engine(work.todo, cfg, client, model, on_sample_done, save_crops=save_crops,
                            progress=progress, local=not scheduler)
            results = engine.run()
        now_stored = zarr_store.completed_sample_attrs(out_dir) if model is not None and results else {}
        stored_at_end = (now_stored or zarr_store.completed_sample_attrs(out_dir)) if model is not None else None
        for sid, result in results.items():
            if sid in work.redo:
                result.redone_because = list(work.redo[sid])
            if result.status == "complete" and sid in now_stored:
                result.made_by = _provenance(now_stored[sid])
            elif result.status == "failed" and sid in stored:
                old = stored[sid]
                result.error += (f" (its earlier results, run {old.get('run_id', '?')} of "
                                 f"{old.get('finished', '?')}, stay in the store until it completes)")
                result.made_by = _provenance(old)
        for spec in work.skipped:
            kept = work.kept.get(spec.sample_id, {})
            results[spec.sample_id] = SampleResult(
                spec.sample_id, "skipped", n_cells=int(kept.get("n_cells") or 0),
                seconds=float(kept.get("seconds") or 0.0), path=spec.origin,
                skipped_sources=list(kept.get("skipped_sources") or []), made_by=_provenance(kept))
        for path, reason in found.problems:
            results[f"<{Path(path).name}>"] = SampleResult(Path(path).name or path, "failed", stage="input",
                                                           error=f"{path}: {reason}", path=path)
        failures = [r for r in results.values() if r.status == "failed"]
        n_failed_samples = len(failures)
        # A sample complete without some unreadable images: one row per file left out, in
        # every run that keeps that sample (a resume must not turn the loss silent).
        failures += [SampleResult(r.sample_id, "partial", stage="open", path=s["path"],
                                  error=s["error"] + (" (a file of a sample kept from an earlier run; replace it "
                                                      "and re-run with --no-resume)" if r.status == "skipped" else ""))
                     for r in list(results.values())
                     for s in getattr(r, "skipped_sources", [])]
        # Said before the tables are written: on a full disk they may not be.
        for r in failures:
            print(f"slideproc: error: {r.sample_id}: {r.stage}: {r.error}", file=sys.stderr)
        carried = _carried_errors(out_dir, {r.sample_id for r in results.values()}, stored_at_end)
        if carried:
            log.warning("%d earlier failure(s) of samples this run was not given stay in errors.csv (%s)",
                        len(carried), ", ".join(sorted({r["sample_id"] for r in carried})))
        tables.write_errors_csv(out_dir, [
            {"sample_id": r.sample_id, "path": r.path, "stage": r.stage, "error": r.error} for r in failures]
            + carried)
        run_json = {
            "run_id": run_id,
            "command": "run" if model is not None else "detect",
            "started": started,
            "finished": _now(),
            "seconds": round(time.perf_counter() - t0, 3),
            "versions": _versions(),
            "model": None if model is None else {"path": model.path, "sha256": model.sha256,
                                                 "labels_sha256": model.labels_sha256,
                                                 "labels": list(model.labels), "input_size_px": model.input_size_px},
            "config": config,
            "config_sha256": resuming.config_digest(config),
            "inputs": [str(p) for p in inputs],
            "input_files": _input_sizes(found.samples),
            "cluster": {"scheduler": scheduler or "local", "dashboard": dashboard, "workers": workers_seen},
            "samples": {sid: {k: v for k, v in vars(r).items() if k != "sample_id"}
                        for sid, r in sorted(results.items())},
            # Samples complete in the store that this run was not given (an earlier run's
            # inputs): the report and tables hold them, so run.json names who made them.
            "earlier_samples": {sid: {"made_by": _provenance(attrs),
                                      "skipped_sources": list(attrs.get("skipped_sources") or [])}
                                for sid, attrs in sorted((stored_at_end or {}).items()) if sid not in results},
            # Files under the inputs that are in no sample, and each source's mpp
            # and where it came from (sources/mpp.py), as planned from headers.
            **plan_record(plan),
        }
        # Every run into this OUT_DIR, oldest first, this one last; each sample's own
        # record (made_by) says which of them made it.
        run_json["runs"] = _earlier_runs(out_dir) + [_run_summary(run_json)]
        if model is not None:
            tables.rebuild_tables(out_dir)
            from .report import write_report

            write_report(out_dir, cfg)
        tables.write_run_json(out_dir, run_json)
    n_ok = sum(r.status in ("complete", "skipped") for r in results.values())
    n_not_read = len(failures) - n_failed_samples
    log.info("%d sample(s) complete, %d failed%s; outputs in %s", n_ok, n_failed_samples,
             f", {n_not_read} file(s) not read" if n_not_read else "", out_dir)
    return 1 if failures else 0
