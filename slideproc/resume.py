"""Resume: a complete sample is reused only while it is still the same sample.

Each sample ``slideproc run`` completes carries, in its Zarr attributes, a
record of what it was made from (``made_from``)::

    files            [{name, path, bytes, mtime_ns}] per source, in order
    mpp              {source: level-0 um/px}, as resolved before the run from the
                     files' headers, the manifest and --mpp (plan.py, the same
                     function the workers use); mpp_from says where each came from
    config_sha256    digest of the settings that change cells or classes
    model_sha256     digest of model.keras; labels_sha256 of labels.json,
                     calibration.json (the same weights, other probabilities) and
                     feature_record.npz (other unlike_record flags)

A re-run compares that record with what it is about to process, before any
work: a sample whose files were added, removed or changed (size or mtime), or
whose resolved mpp changed (another --mpp, a manifest edit), is redone, and
the log says which sample and what changed. A sample without a record (an
older slideproc) is redone too.

The model and the settings are properties of the whole store: a run whose
model or result settings differ from the store's is refused (exit 2) before
anything is written, naming what differs; results of two models are never
mixed in one results.zarr. Settings that change no result (engine, report,
classify.batch_size, and the source keys other than working_mpp_um, whose
effect is the resolved mpp recorded per sample) may differ freely; the report
is rebuilt from the store with the latest run's report settings.

``--no-resume`` redoes every sample of this run (and no other); the old
sample stays in the store until the new one is complete (zarr_store commit).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from .errors import UsageError
from .sources.discover import SampleSpec

log = logging.getLogger("slideproc.run")

# Sections and keys of the run config that change no cell and no class: they
# may differ between the runs that fill one store.
_NOT_RESULTS = {"engine": None, "report": None, "classify": ("batch_size",)}
# source.working_mpp_um changes detection; the other source keys decide each
# file's resolution (recorded per sample, resolved) or whether it can be read.
_SOURCE_RESULT_KEYS = ("working_mpp_um",)


def results_config(config: dict) -> dict:
    """The part of a run config (``config.to_dict`` form) that changes results."""
    out = {}
    for section, values in sorted((config or {}).items()):
        if section in _NOT_RESULTS:
            keys = _NOT_RESULTS[section]
            if keys is None or not isinstance(values, dict):
                continue
            values = {k: v for k, v in values.items() if k not in keys}
        elif section == "source" and isinstance(values, dict):
            values = {k: v for k, v in values.items() if k in _SOURCE_RESULT_KEYS}
        out[section] = values
    return out


def digest(value) -> str:
    """sha256 of a JSON value, keys sorted: the same settings give the same digest."""
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def config_digest(config: dict) -> str:
    return digest(results_config(config))


def _file_entry(ref) -> dict:
    try:
        st = os.stat(ref.path)
        size, mtime = int(st.st_size), int(st.st_mtime_ns)
    except OSError:
        size = mtime = None
    return {"name": ref.name, "path": ref.path, "bytes": size, "mtime_ns": mtime}


def input_record(spec: SampleSpec, config: dict, model_sha256: str | None, labels_sha256: str | None = None,
                 sample_plan=None) -> dict:
    """What ``spec`` is about to be made from. ``sample_plan``: its plan.SamplePlan
    (each source's resolved mpp and where it came from), when planned."""
    by_name = {s.name: s for s in getattr(sample_plan, "sources", None) or []}
    return {
        "files": [_file_entry(ref) for ref in spec.sources],
        "mpp": {ref.name: getattr(by_name.get(ref.name), "mpp", None) for ref in spec.sources},
        "mpp_from": {ref.name: getattr(by_name.get(ref.name), "mpp_from", "") for ref in spec.sources},
        "config_sha256": config_digest(config),
        "model_sha256": model_sha256,
        "labels_sha256": labels_sha256,
    }


def _when(ns) -> str:
    from datetime import datetime, timezone

    if not isinstance(ns, int):
        return "?"
    return datetime.fromtimestamp(ns / 1e9, timezone.utc).isoformat(timespec="seconds")


def differences(old: dict | None, new: dict) -> list[str]:
    """What changed between a stored record and the one a run is about to make, in words."""
    if not isinstance(old, dict) or "files" not in old:
        return ["no record of what it was made from (written by an older slideproc)"]
    out = []
    before = {f.get("name"): f for f in old.get("files") or []}
    after = {f["name"]: f for f in new["files"]}
    added = [n for n in after if n not in before]
    removed = [n for n in before if n not in after]
    if added:
        out.append(f"file(s) added: {', '.join(added)}")
    if removed:
        out.append(f"file(s) gone: {', '.join(str(n) for n in removed)}")
    for name, f in after.items():
        o = before.get(name)
        if o is None:
            continue
        if f["bytes"] is None:
            continue  # unreadable now: the run fails it at open, naming the file
        if o.get("bytes") != f["bytes"]:
            out.append(f"{name} changed ({o.get('bytes')} -> {f['bytes']} bytes)")
        elif o.get("mtime_ns") != f["mtime_ns"]:
            out.append(f"{name} changed (modified {_when(o.get('mtime_ns'))} -> {_when(f['mtime_ns'])})")
    old_mpp, new_mpp = old.get("mpp") or {}, new["mpp"]
    for name in after:
        a, b = old_mpp.get(name) if isinstance(old_mpp, dict) else None, new_mpp.get(name)
        if name in before and b is not None and a != b:
            source = new["mpp_from"].get(name)
            out.append(f"mpp of {name}: {a} -> {b} um/px" + (f" ({source})" if source else ""))
    if old.get("config_sha256") != new["config_sha256"]:
        out.append("settings that change results differ")
    if old.get("model_sha256") != new["model_sha256"]:
        out.append("another model")
    elif old.get("labels_sha256") not in (None, new.get("labels_sha256")):
        out.append("another labels.json / calibration.json / feature_record.npz")
    return out


@dataclass
class ResumePlan:
    todo: list[SampleSpec] = field(default_factory=list)
    skipped: list[SampleSpec] = field(default_factory=list)
    # sample_id -> what changed, for the samples of ``todo`` that are redone
    redo: dict[str, list[str]] = field(default_factory=dict)
    # sample_id -> the record each sample of ``todo`` will be written with
    records: dict[str, dict] = field(default_factory=dict)
    # sample_id -> stored attrs of each sample of ``skipped`` (its provenance)
    kept: dict[str, dict] = field(default_factory=dict)


def _flatten(value, prefix: str = "") -> dict:
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            out.update(_flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    return {prefix: value}


def check_store_matches(out_dir: Path, config: dict, model) -> None:
    """UsageError (exit 2) when the store's complete samples were made with another model or settings."""
    from .store import zarr_store

    done = zarr_store.completed_samples(out_dir)
    if not done:
        return
    root = zarr_store.read_root_attrs(out_dir)
    store = zarr_store.store_path(out_dir)
    fix = f"choose a new --out, or delete {store} to redo every sample"
    old_sha = root.get("model_sha256")
    if old_sha and old_sha != model.sha256:
        where = f", {root['model_path']}" if root.get("model_path") else ""
        raise UsageError(
            f"{store} holds {len(done)} sample(s) made with another model (sha256 {old_sha[:12]}...{where}); "
            f"this run's model {model.path} is sha256 {model.sha256[:12]}...; results of two models are never "
            f"mixed in one store: {fix} with this model"
        )
    old_labels = root.get("labels_sha256")
    if old_labels and getattr(model, "labels_sha256", None) and old_labels != model.labels_sha256:
        raise UsageError(
            f"{store} holds {len(done)} sample(s) made with another labels.json / calibration.json / "
            f"feature_record.npz for this model; {fix} with this one"
        )
    old_cfg = root.get("config")
    if isinstance(old_cfg, dict) and config_digest(old_cfg) != config_digest(config):
        a, b = _flatten(results_config(old_cfg)), _flatten(results_config(config))
        changed = [f"{k}: {a.get(k)} -> {b.get(k)}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]
        shown = "; ".join(changed[:6]) + (f"; and {len(changed) - 6} more" if len(changed) > 6 else "")
        raise UsageError(
            f"{store} holds {len(done)} sample(s) made with other settings ({shown}); results made with two "
            f"settings are never mixed in one store: {fix} with these settings, or run with the old ones"
        )


def plan(out_dir: Path, samples: list[SampleSpec], config: dict, model, resume: bool, inputs=None) -> ResumePlan:
    """Which of ``samples`` to run, which to keep; raises UsageError when the store cannot be resumed.

    ``inputs``: the run's plan.Plan (each source's resolved mpp).
    """
    from .store import zarr_store

    planned = {p.sample_id: p for p in getattr(inputs, "samples", None) or []}

    result = ResumePlan()
    model_sha = model.sha256 if model is not None else None
    labels_sha = getattr(model, "labels_sha256", None)
    stored = {}
    if model is not None and zarr_store.store_path(out_dir).is_dir():
        check_store_matches(out_dir, config, model)
        stored = zarr_store.completed_sample_attrs(out_dir)
    for spec in samples:
        record = input_record(spec, config, model_sha, labels_sha, planned.get(spec.sample_id))
        attrs = stored.get(spec.sample_id)
        if attrs is None:
            result.todo.append(spec)
        elif not resume:
            result.todo.append(spec)
            result.redo[spec.sample_id] = ["--no-resume"]
        else:
            changes = differences(attrs.get("made_from"), record)
            if changes:
                result.todo.append(spec)
                result.redo[spec.sample_id] = changes
            else:
                result.skipped.append(spec)
                result.kept[spec.sample_id] = attrs
        if spec.sample_id not in result.kept:
            result.records[spec.sample_id] = record
    return result


def say(plan_: ResumePlan, out_dir: Path) -> None:
    """Log the resume decisions: what is kept, and each redone sample with what changed."""
    if plan_.skipped:
        log.info("resuming: %d sample(s) already complete in %s, made from the same inputs, are kept",
                 len(plan_.skipped), out_dir)
    forced = [sid for sid, why in plan_.redo.items() if why == ["--no-resume"]]
    if forced:
        log.info("--no-resume: redoing %d complete sample(s) of this run; each is replaced once its new "
                 "results are complete", len(forced))
    for sid, why in plan_.redo.items():
        if why != ["--no-resume"]:
            log.warning("%s: redoing it, its inputs changed since it was made: %s", sid, "; ".join(why))
