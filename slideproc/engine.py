"""The batch engine: the only module that builds and runs Dask work.

Per sample: plan each source (mpp, foreground, tiles) -> detect per tile ->
cut the cells into fixed-size batches in a deterministic order -> crop (on a
CPU worker, at the slide's own resolution) -> classify (on a ``GPU`` resource
worker when the cluster has one) -> assemble and write the sample whole.
An image-folder sample takes a shorter path: ``engine.fields_per_task`` fields
are planned, detected and cropped by one task (``field_group_task``), whose
crops stay on the workers and go straight to the classify tasks; per-image
tasks would cost more scheduling than work on small fields.

Work is submitted as futures with back-pressure: at most
``tiles_in_flight_per_worker`` tiles per worker, and a bounded number of
batches waiting for the classifier, so memory follows tiles in flight, never
slide size. Tile results are consumed in tile order whatever order they finish
in, so batches, and therefore outputs, are the same on every run and resume.

A failure (unreadable file, no mpp, corrupt tile, dead worker past its
retries) fails its sample only: its futures are cancelled, it goes to
errors.csv, and the other samples finish.
"""

from __future__ import annotations

import logging
import os
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from .cluster import GPU, has_gpu_workers, worker_summary
from .config import RunConfig
from .errors import MissingMppError, SlideprocError, SourceError, StoreError
from .detect import empty_cells
from .schema import DETECT_COLUMNS
from .sources.discover import SampleSpec
from .tasks import (classify_task, crop_px_for, crop_task, detect_task, field_group_task, group_summary,
                    plan_task)

log = logging.getLogger("slideproc.engine")

# Cells per classify task: several fixed-size batches amortise the task overhead
# while the predictor still runs exactly ``batch_size`` crops per call.
BATCHES_PER_TASK = 4


@dataclass
class ModelInfo:
    path: str
    labels: tuple[str, ...]
    sha256: str
    input_size_px: int
    # sha256 of labels.json (label order, temperature), calibration.json and
    # feature_record.npz: part of what a stored sample was made with (resume.py).
    labels_sha256: str | None = None
    # sha256 of MODEL_DIR/feature_record.npz (None: the model has none): classify tasks
    # say which cells lie beyond the model's record (classify/record_check.py), each
    # checking its worker reads this same file
    feature_record_sha256: str | None = None


@dataclass
class SampleResult:
    sample_id: str
    status: str  # complete | failed | skipped
    n_cells: int = 0
    seconds: float = 0.0
    stage: str = ""
    error: str = ""
    path: str = ""
    classify_workers: list[str] = field(default_factory=list)
    crop_bytes: int = 0
    # Unreadable images left out of an image-folder sample: {"source", "path", "error"}.
    skipped_sources: list[dict] = field(default_factory=list)
    # The run that made the stored results (runner: run_id, when, how long, cells, model, config).
    made_by: dict = field(default_factory=dict)
    # Why a complete sample was made again (resume.py), e.g. ["file(s) added: b.jpg"].
    redone_because: list[str] = field(default_factory=list)


@dataclass
class _Sample:
    spec: SampleSpec
    started: float
    plans_pending: int
    geos: dict = field(default_factory=dict)  # source index -> Geometry
    n_tiles: dict = field(default_factory=dict)  # source index -> tile count
    tile_frames: dict = field(default_factory=dict)  # (source, tile) -> DataFrame
    cursor: tuple[int, int] = (0, 0)  # next (source, tile) to consume in order
    buffer: list = field(default_factory=list)  # DataFrames not yet batched
    batches: list = field(default_factory=list)  # DataFrames, in order
    probabilities: dict = field(default_factory=dict)  # batch index -> array
    crops: dict = field(default_factory=dict)  # batch index -> crops (save_crops)
    beyond: dict = field(default_factory=dict)  # batch index -> bool array beyond the record, or None
    # bool (n_cells,) concatenated in _finish; None when the model has no feature record
    beyond_record: np.ndarray | None = None
    futures: set = field(default_factory=set)
    crop_px: int = 0
    failed: tuple[str, str] | None = None
    skipped: list = field(default_factory=list)  # dicts for SampleResult.skipped_sources
    workers: set = field(default_factory=set)
    crop_bytes: int = 0
    # Image-folder path: field-group futures (kept so their crops stay on the
    # workers until classified), the source index each group ends before, and
    # the groups each in-flight classify batch reads.
    group_futs: dict = field(default_factory=dict)
    group_stop: dict = field(default_factory=dict)
    batch_groups: dict = field(default_factory=dict)

    def tiles_left(self) -> bool:
        src, tile = self.cursor
        return src < len(self.spec.sources)


def read_model_info(model_dir: str | Path) -> ModelInfo:
    """Labels, digest and input size from MODEL_DIR without importing Keras."""
    from .classify.loading import LABELS_FILE, MODEL_FILE, _expected_digest, _read_labels, check_archive
    from .errors import ModelError, ModelPathError

    model_dir = Path(model_dir)
    if model_dir.is_file():
        # `--model MODEL_DIR/model.keras`: the folder holds what goes with it (labels.json, model.sha256).
        if model_dir.name != MODEL_FILE:
            raise ModelPathError(f"--model {model_dir} is a file; give the folder that holds {MODEL_FILE} and "
                             f"{LABELS_FILE} (written by slideproc train)")
        log.info("--model %s: using its folder %s", model_dir, model_dir.parent)
        model_dir = model_dir.parent
    if not model_dir.is_dir():
        raise ModelPathError(f"model directory not found: {model_dir}; give the folder that holds {MODEL_FILE} "
                         "(written by `slideproc train`), or train one")
    if not (model_dir / MODEL_FILE).is_file():
        raise ModelError(f"{model_dir / MODEL_FILE} is missing; point --model at a directory written by slideproc train")
    info = _read_labels(model_dir)
    size = info.get("input_size_px") or info.get("input_size")
    if not isinstance(size, int) or size < 75:
        raise ModelError(f"{model_dir / LABELS_FILE}: key 'input_size_px' must be an integer >= 75")
    # Refuse a bad model before OUT_DIR is touched, not once per sample on the
    # workers: custom code (safe loading only), and a labels.json that does not
    # describe this model.keras (read from its config.json, without Keras).
    check_archive(model_dir / MODEL_FILE)
    in_px, n_out = _archive_shape(model_dir / MODEL_FILE)
    if n_out is not None and n_out != len(info["labels"]):
        raise ModelError(f"{model_dir / LABELS_FILE} lists {len(info['labels'])} labels but "
                         f"{model_dir / MODEL_FILE} has {n_out} outputs; use the labels.json written with this model")
    if in_px is not None and in_px != size:
        raise ModelError(f"{model_dir / LABELS_FILE} says input_size_px {size} but {model_dir / MODEL_FILE} "
                         f"takes {in_px} px inputs; use the labels.json written with this model")
    import hashlib

    # labels.json and calibration.json (when the model has one) turn the same
    # weights into other probabilities: one digest over both.
    side = hashlib.sha256((model_dir / LABELS_FILE).read_bytes())
    if (model_dir / "calibration.json").is_file():
        side.update(b"\0" + (model_dir / "calibration.json").read_bytes())
    from .classify.record_check import read_feature_record

    model_sha = _expected_digest(model_dir)
    try:
        # Refused here, before OUT_DIR is touched, not on every worker.
        record = read_feature_record(model_dir, len(info["labels"]), model_sha256=model_sha)
    except ValueError as err:
        raise ModelError(str(err)) from None
    if record is not None:
        # The record decides the unlike_record flag: a store's samples are never checked
        # against two records (resume.py compares this digest).
        side.update(b"\0record\0" + record.sha256.encode())
    labels_sha = side.hexdigest()
    return ModelInfo(str(model_dir.resolve()), tuple(info["labels"]), model_sha, size,
                     labels_sha256=labels_sha, feature_record_sha256=record.sha256 if record is not None else None)


def _archive_shape(model_file: Path) -> tuple[int | None, int | None]:
    """(input edge px, output units) of a functional .keras archive; None where unknown."""
    import json
    import zipfile

    try:
        with zipfile.ZipFile(model_file) as zf:
            cfg = json.loads(zf.read("config.json"))["config"]
        layers = {layer["name"]: layer for layer in cfg["layers"]}
        ins, outs = cfg["input_layers"], cfg["output_layers"]
        ins, outs = (ins[0] if isinstance(ins[0], list) else ins), (outs[0] if isinstance(outs[0], list) else outs)
        shape = layers[ins[0]]["config"].get("batch_shape") or [None, None]
        units = layers[outs[0]]["config"].get("units")
        return (shape[1] if isinstance(shape[1], int) else None), (units if isinstance(units, int) else None)
    except (OSError, zipfile.BadZipFile, KeyError, IndexError, TypeError, ValueError):
        return None, None  # not a plain functional model: the worker's full load checks it


class _Progress:
    """tqdm on a terminal; a log line every 15 s otherwise."""

    def __init__(self, enabled: bool):
        self.tty = enabled and sys.stderr.isatty()
        self.enabled = enabled
        self.total = 0
        self.done = 0
        self.cells = 0
        self.samples_done = 0
        self.samples_total = 0
        self.start = time.perf_counter()
        self._last = self.start
        self._bar = None
        if self.tty:
            from tqdm import tqdm

            self._bar = tqdm(total=0, unit="tile", dynamic_ncols=True, file=sys.stderr)

    def add_tiles(self, n: int) -> None:
        self.total += n
        if self._bar is not None:
            self._bar.total = self.total
            self._bar.refresh()

    def tile_done(self, cells: int) -> None:
        self.done += 1
        self.cells += cells
        if self._bar is not None:
            rate = self.cells / max(time.perf_counter() - self.start, 1e-9)
            self._bar.set_postfix_str(f"samples {self.samples_done}/{self.samples_total}, "
                                      f"{self.cells} cells, {rate:.1f} cells/s", refresh=False)
            self._bar.update(1)
        elif self.enabled and time.perf_counter() - self._last > 15:
            self._last = time.perf_counter()
            elapsed = self._last - self.start
            rate = self.done / max(elapsed, 1e-9)
            eta = (self.total - self.done) / rate if rate > 0 else float("nan")
            log.info("tiles %d/%d, samples %d/%d, %d cells, %.1f cells/s, ETA %.0f s",
                     self.done, self.total, self.samples_done, self.samples_total, self.cells,
                     self.cells / max(elapsed, 1e-9), eta)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


class Engine:
    """One run over an archive. ``run()`` returns the per-sample results."""

    def __init__(self, samples: list[SampleSpec], cfg: RunConfig, client, model: ModelInfo | None,
                 on_sample_done, save_crops: bool = False, progress: bool = True, local: bool = True):
        self.samples = samples
        self.cfg = cfg
        self.client = client
        self.model = model
        self.on_sample_done = on_sample_done  # (spec, cells, probs, crops, state) -> None
        self.save_crops = save_crops
        self.progress = _Progress(progress)
        n_workers = max(1, len(worker_summary(client)))
        self.max_tiles = n_workers * cfg.engine.tiles_in_flight_per_worker
        self.max_batches = 2 * n_workers + 2
        self.gpu = model is not None and has_gpu_workers(client)
        self.chunk = cfg.classify.batch_size * BATCHES_PER_TASK
        self.results: dict[str, SampleResult] = {}
        self.memory_fix = _memory_fix(client, cfg, local)

    # -- submission ------------------------------------------------------
    def _submit(self, state: _Sample, kind: str, fn, *args, resources=None, **extra):
        fut = self.client.submit(fn, *args, resources=resources, pure=False)
        self.meta[fut.key] = (kind, state, extra)
        state.futures.add(fut)
        self.ac.add(fut)
        return fut

    def run(self) -> dict[str, SampleResult]:
        from distributed import as_completed

        self.meta: dict = {}
        self.ac = as_completed()
        self.tile_queue: deque = deque()
        self.tiles_in_flight = 0
        self.batches_in_flight = 0
        states = []
        self.progress.samples_total = len(self.samples)
        for spec in self.samples:
            fields = all(ref.reader == "image" for ref in spec.sources)
            state = _Sample(spec, time.time(), plans_pending=0 if fields else len(spec.sources))
            states.append(state)
            if fields:
                step = max(1, self.cfg.engine.fields_per_task)
                for g, start in enumerate(range(0, len(spec.sources), step)):
                    stop = min(start + step, len(spec.sources))
                    state.group_stop[g] = stop
                    self.tile_queue.append(("group", state, g, start, stop))
                self.progress.add_tiles(len(spec.sources))
                continue
            for i, ref in enumerate(spec.sources):
                self._submit(state, "plan", plan_task, ref, self.cfg, source=i)
        self._fill()
        watch = _WorkerWatch(self.client, self.cfg.engine.no_worker_timeout_s, gpu=self.gpu)
        while True:
            fut = self._next(watch)
            if fut is None:
                break
            entry = self.meta.pop(fut.key, None)
            if entry is None:
                # A future of a sample that has failed meanwhile (_fail dropped its
                # meta): it may still be queued in as_completed, or finish cancelled.
                self._fill()
                continue
            kind, state, extra = entry
            state.futures.discard(fut)
            if kind in ("tile", "group"):
                self.tiles_in_flight -= 1
            elif kind == "classify":
                self.batches_in_flight -= 1
            if state.failed is None:
                try:
                    value = fut.result()
                except Exception as err:  # noqa: BLE001 - any task error fails the sample only
                    if not (kind == "plan" and self._skip_source(state, err, **extra)):
                        self._fail(state, kind, err, doing=self._doing(state, kind, extra),
                                   path=self._failing_file(state, kind, extra, err))
                else:
                    try:
                        getattr(self, f"_on_{kind}")(state, value, **extra)
                    except Exception as err:  # noqa: BLE001
                        # _finish (and so the store write) runs from any kind's handler.
                        stage = "write" if kind == "classify" or isinstance(err, StoreError) else kind
                        self._fail(state, stage, err)
            self._fill()
        self.progress.close()
        if watch.reason:
            for state in states:
                if state.spec.sample_id not in self.results:
                    self._fail(state, "engine", SlideprocError(watch.reason))
        for state in states:
            # A safety net: a sample the loop above left unfinished is a failure
            # to report, never a silent gap in the outputs.
            if state.spec.sample_id not in self.results:
                self._fail(state, "engine", RuntimeError("the engine stopped before this sample finished; re-run"))
        return self.results

    def _next(self, watch: "_WorkerWatch"):
        """The next finished future; None when none is left, or when the cluster
        has had no worker for ``engine.no_worker_timeout_s`` (``watch.reason``
        then says so): Dask itself would wait for a worker forever."""
        while not self.ac.has_ready():
            if self.ac.is_empty() or watch.lost():
                return None
            # as_completed's own wait (its __next__ polls the same way, every 100 ms).
            cond = getattr(self.ac, "thread_condition", None)
            if cond is None:
                time.sleep(0.05)
                continue
            with cond:
                cond.wait(timeout=0.1)
        return next(self.ac)

    @staticmethod
    def _failing_file(state: _Sample, kind: str, extra: dict, err: BaseException) -> str:
        """The one file a failed task of ``kind`` was reading, or "" (a crop or classify
        batch spans files). In a field group of several images, the image the error's
        line begins with (slideproc's errors name their file first: "PATH: ...")."""
        refs = state.spec.sources
        if kind in ("plan", "tile"):
            return refs[extra["source"]].path
        if kind == "group":
            start = extra["start"]
            group = refs[start:state.group_stop.get(extra["group"], start + 1)]
            if len(group) == 1:
                return group[0].path
            text = str(err)
            return next((r.path for r in group if text.startswith(r.path + ":")), "")
        return ""

    def _doing(self, state: _Sample, kind: str, extra: dict) -> str:
        """What a task of ``kind`` was doing, in words, for a failure message."""
        refs = state.spec.sources
        if kind == "plan":
            return f"opening {refs[extra['source']].path}"
        if kind == "tile":
            return f"reading {refs[extra['source']].path} (tile {extra['tile']})"
        if kind == "group":
            start = extra["start"]
            stop = state.group_stop.get(extra["group"], start + 1)
            more = f" and {stop - start - 1} more image(s)" if stop - start > 1 else ""
            return f"reading {refs[start].path}{more}"
        if kind == "crop":
            return f"cutting cell crops (batch {extra.get('batch')})"
        if kind == "classify":
            return f"classifying a batch of cells (batch {extra.get('batch')})"
        return kind

    def _fill(self) -> None:
        """Submit queued tiles up to the in-flight limits (back-pressure)."""
        while (self.tile_queue and self.tiles_in_flight < self.max_tiles
               and self.batches_in_flight < self.max_batches):
            kind, state, *item = self.tile_queue.popleft()
            if state.failed is not None:
                continue
            self.tiles_in_flight += 1
            if kind == "group":
                g, start, stop = item
                input_px = self.model.input_size_px if self.model is not None else None
                # The group's own future is not watched (its result holds the crops,
                # which must not travel to this client); its summary is.
                state.group_futs[g] = self.client.submit(
                    field_group_task, list(state.spec.sources[start:stop]), self.cfg,
                    self.cfg.crops.field_of_view_um, input_px, self.gpu, pure=False)
                self._submit(state, "group", group_summary, state.group_futs[g], group=g, start=start)
                continue
            src, tile, geo, stain = item
            self._submit(state, "tile", detect_task, state.spec.sources[src], tile, geo, self.cfg, stain,
                         source=src, tile=tile.index)

    # -- results ---------------------------------------------------------
    def _on_plan(self, state: _Sample, value, source: int) -> None:
        geo, tiles, stain = value
        state.geos[source] = geo
        state.n_tiles[source] = len(tiles)
        state.plans_pending -= 1
        self.progress.add_tiles(len(tiles))
        for tile in tiles:
            self.tile_queue.append(("tile", state, source, tile, geo, stain))
        if self.model is not None and geo is not None:
            px = crop_px_for(geo.mpp0, self.cfg.crops.field_of_view_um, self.model.input_size_px)
            state.crop_px = max(state.crop_px, px)
        self._advance(state)

    def _skip_source(self, state: _Sample, err: BaseException, source: int) -> bool:
        """Leave an unreadable image out of an image-folder sample, if others remain.

        A folder of fields is many independent images: one corrupt JPEG must not
        cost the other fields. A slide, a file without mpp (every field of that
        folder lacks it too) or the last readable image still fails the sample.
        """
        if (any(r.reader != "image" for r in state.spec.sources)
                or not isinstance(err, SourceError) or isinstance(err, MissingMppError)
                or not self._may_skip(state)):
            return False
        state.plans_pending -= 1
        self._record_skip(state, source, one_line(err))
        self._advance(state)
        return True

    @staticmethod
    def _may_skip(state: _Sample) -> bool:
        """A folder may lose unreadable images, not all of them; a lone image fails its sample."""
        n = len(state.spec.sources)
        return n >= 2 and len(state.skipped) + 1 < n

    def _record_skip(self, state: _Sample, source: int, message: str) -> None:
        ref = state.spec.sources[source]
        state.skipped.append({"source": ref.name, "path": ref.path, "error": message})
        state.n_tiles[source] = 0
        log.info("%s: skipped %s: %s", state.spec.sample_id, ref.name, message)

    def _on_group(self, state: _Sample, value: dict, group: int, start: int) -> None:
        """A field group's cells: one tile per field, consumed in source order like tiles."""
        by_field = dict(iter(value["cells"].groupby("_field", sort=True)))
        for k, geo in enumerate(value["geos"]):
            src = start + k
            if k in value["skipped"]:
                if not self._may_skip(state):
                    # The sample's last readable image: it fails, naming that file in errors.csv.
                    self._fail(state, "group", value["skipped"][k], path=state.spec.sources[src].path)
                    return
                self._record_skip(state, src, one_line(value["skipped"][k]))
                self.progress.tile_done(0)
                continue
            state.geos[src] = geo
            state.n_tiles[src] = 1
            frame = by_field.get(k)
            # _advance skips empty frames; it only needs one per field to move on.
            state.tile_frames[(src, 0)] = (frame.drop(columns="_field").assign(_group=group)
                                           if frame is not None else empty_cells())
            self.progress.tile_done(0 if frame is None else len(frame))
        if self.model is None:
            state.group_futs.pop(group, None)  # no crops to keep
        self._advance(state)

    def _on_tile(self, state: _Sample, cells: pd.DataFrame, source: int, tile: int) -> None:
        state.tile_frames[(source, tile)] = cells
        self.progress.tile_done(len(cells))
        self._advance(state)

    def _advance(self, state: _Sample) -> None:
        """Consume tile results in (source, tile) order; cut full batches; finish."""
        n_sources = len(state.spec.sources)
        src, tile = state.cursor
        while src < n_sources and src in state.n_tiles:
            if tile >= state.n_tiles[src]:
                src, tile = src + 1, 0
                continue
            frame = state.tile_frames.pop((src, tile), None)
            if frame is None:
                break
            if len(frame):
                state.buffer.append(frame.assign(_source_index=src))
            tile += 1
        state.cursor = (src, tile)
        done_detecting = src >= n_sources
        if self.model is None:
            if done_detecting:
                self._finish(state)
            return
        self._cut_batches(state, final=done_detecting)
        if done_detecting and not state.futures:
            self._finish(state)

    def _cut_batches(self, state: _Sample, final: bool) -> None:
        pending = pd.concat(state.buffer, ignore_index=True) if state.buffer else None
        state.buffer = []
        if pending is None:
            return
        start = 0
        while len(pending) - start >= self.chunk or (final and start < len(pending)):
            part = pending.iloc[start:start + self.chunk].reset_index(drop=True)
            start += len(part)
            self._submit_batch(state, part)
        if start < len(pending):
            state.buffer = [pending.iloc[start:].reset_index(drop=True)]

    def _submit_batch(self, state: _Sample, part: pd.DataFrame) -> None:
        index = len(state.batches)
        state.batches.append(part)
        resources = {GPU: 1} if self.gpu else None
        if "_group" in part:
            # Field groups: slices of their crops, which stay on the workers.
            parts, groups = [], set()
            for g, rows in part.groupby("_group", sort=False):
                r = rows["_row"].to_numpy()
                parts.append((state.group_futs[g], int(r[0]), int(r[-1]) + 1))
                groups.add(g)
            state.batch_groups[index] = groups
            self.batches_in_flight += 1
            self._submit(state, "classify", classify_task, self.model.path, self.model.sha256, parts,
                         self.cfg.classify.batch_size, self.cfg.classify.mixed_precision, self.save_crops,
                         self.cfg.classify.tta_views, self.model.feature_record_sha256, resources=resources,
                         batch=index)
            return
        crop_futs = []
        for src, group in part.groupby("_source_index", sort=True):
            geo = state.geos[src]
            crop_futs.append(self._submit(
                state, "crop", crop_task, state.spec.sources[src], geo.mpp0,
                group["x"].to_numpy(), group["y"].to_numpy(), self.cfg.crops.field_of_view_um,
                state.crop_px, self.model.input_size_px if self.gpu else None, batch=index))
        self.batches_in_flight += 1
        self._submit(state, "classify", classify_task, self.model.path, self.model.sha256, crop_futs,
                     self.cfg.classify.batch_size, self.cfg.classify.mixed_precision, self.save_crops,
                     self.cfg.classify.tta_views, self.model.feature_record_sha256, resources=resources,
                     batch=index)

    def _on_crop(self, state: _Sample, crops, batch: int) -> None:
        pass  # crop bytes are counted where they arrive, in the classify task

    def _on_classify(self, state: _Sample, value: dict, batch: int) -> None:
        state.probabilities[batch] = value["probabilities"]
        state.beyond[batch] = value.get("beyond_record")
        state.workers.add(value["worker"])
        state.crop_bytes += value["bytes_in"]
        if self.save_crops:
            state.crops[batch] = value["crops"]
        if state.batch_groups.pop(batch, None):
            self._release_groups(state)
        if not state.tiles_left() and not state.futures:
            self._finish(state)

    def _release_groups(self, state: _Sample) -> None:
        """Forget field groups whose crops every batch has read, so workers free them."""
        needed = set()
        for frame in state.buffer:
            needed.update(frame["_group"].unique().tolist())
        for groups in state.batch_groups.values():
            needed.update(groups)
        src = state.cursor[0]
        for g in list(state.group_futs):
            if state.group_stop[g] <= src and g not in needed:
                del state.group_futs[g]

    def _finish(self, state: _Sample) -> None:
        # A sample with no cells has no batches (pd.concat([]) raises).
        frames = state.batches if self.model is not None else state.buffer
        cells = pd.concat(frames, ignore_index=True) if frames else None
        if cells is None or len(cells) == 0:
            cells = pd.DataFrame({c: pd.Series(dtype="float64") for c in DETECT_COLUMNS})
            cells["_source_index"] = pd.Series(dtype="int64")
        probs = crops = None
        if self.model is not None:
            n_classes = len(self.model.labels)
            parts = [state.probabilities[i] for i in range(len(state.batches))]
            probs = np.concatenate(parts) if parts else np.zeros((0, n_classes), np.float32)
            checks = [state.beyond.get(i) for i in range(len(state.batches))]
            if self.model.feature_record_sha256 is not None:
                if all(c is not None for c in checks):
                    state.beyond_record = np.concatenate(checks) if checks else np.zeros(0, bool)
                else:  # classify_task refuses a worker without the record: not expected
                    log.warning("%s: some batches came back without the record check; the sample is not "
                                "checked", state.spec.sample_id)
            if self.save_crops:
                parts = [state.crops[i] for i in range(len(state.batches))]
                px = self.model.input_size_px
                crops = np.concatenate(parts) if parts else np.zeros((0, px, px, 3), np.uint8)
        cells = cells.drop(columns=["_group", "_row"], errors="ignore")
        state.buffer, state.batches, state.crops, state.group_futs = [], [], {}, {}
        self.on_sample_done(state.spec, cells, probs, crops, state)
        self.progress.samples_done += 1
        self.results[state.spec.sample_id] = SampleResult(
            state.spec.sample_id, "complete", n_cells=len(cells), seconds=time.time() - state.started,
            path=state.spec.origin, classify_workers=sorted(state.workers), crop_bytes=state.crop_bytes,
            skipped_sources=list(state.skipped))
        log.info("%s: %d cells in %.1f s", state.spec.sample_id, len(cells), time.time() - state.started)

    def _fail(self, state: _Sample, stage: str, err: BaseException, doing: str = "", path: str = "") -> None:
        """Fail the sample once. ``path``: the file its failing task was reading (errors.csv's
        path column); the sample's folder or manifest (``spec.origin``) when not one file."""
        if state.failed is not None:
            return
        if stage == "group":  # a field group opens and detects its images
            stage = "open" if isinstance(err, SourceError) else "detect"
        stage = {"plan": "open", "tile": "detect"}.get(stage, stage)
        if type(err).__name__ == "KilledWorker":
            tries = getattr(err, "allowed_failures", self.cfg.engine.retries) + 1
            message = (f"the Dask worker {doing or 'running it'} died ({tries} worker(s) in a row, most "
                       f"often out of memory); {self.memory_fix}, then run again (the worker logs say more)")
        else:
            message = one_line(err)
        state.failed = (stage, message)
        for fut in list(state.futures):
            fut.cancel()
            self.meta.pop(fut.key, None)
        state.futures.clear()
        state.buffer, state.batches, state.tile_frames, state.crops = [], [], {}, {}
        for fut in state.group_futs.values():
            fut.cancel()
        state.group_futs.clear()
        self.progress.samples_done += 1
        self.results[state.spec.sample_id] = SampleResult(
            state.spec.sample_id, "failed", stage=stage, error=message,
            path=path or os.path.abspath(state.spec.origin),
            seconds=time.time() - state.started, skipped_sources=list(state.skipped))
        # INFO, not ERROR: the runner prints each failure once, as the run's one
        # error line per failure (with -q that line is all the user sees).
        log.info("%s: failed at %s: %s", state.spec.sample_id, stage, message)
        self.tiles_in_flight = sum(1 for k, s, _ in self.meta.values() if k in ("tile", "group"))
        self.batches_in_flight = sum(1 for k, s, _ in self.meta.values() if k == "classify")


def one_line(err: BaseException) -> str:
    """The one line users see for an error from a task."""
    if isinstance(err, SlideprocError):
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    name = type(err).__name__
    if name == "KilledWorker":
        return "the worker running it died repeatedly (out of memory?); see the Dask worker logs"
    text = str(err).strip().splitlines()
    return f"{name}: {text[0]}" if text else name


def _memory_fix(client, cfg: RunConfig, local: bool) -> str:
    """What to raise when workers die: the setting, with the memory they have now."""
    try:
        info = client.scheduler_info()
        limits = [w.get("memory_limit") for w in info.get("workers", {}).values() if w.get("memory_limit")]
    except Exception:  # noqa: BLE001 - the advice is still right without the figure
        limits = []
    now = f"{min(limits) / 2**30:.1f} GiB per worker" if limits else "unknown"
    if local:
        return (f"raise engine.memory_limit (now {cfg.engine.memory_limit}: {now}) or lower "
                "engine.tiles_in_flight_per_worker / engine.workers")
    return f"start the workers with a larger --memory-limit (now {now}) or fewer per node"


class _WorkerWatch:
    """Says when the cluster has had no worker for ``timeout_s`` seconds.

    Dask keeps tasks waiting for a worker for ever (the scheduler only logs
    "Lost all workers"); an overnight run must end instead, naming why. The
    scheduler is asked at most every 2 s.
    """

    def __init__(self, client, timeout_s: float, gpu: bool = False):
        self.client = client
        self.timeout_s = timeout_s
        # Classification tasks that need the GPU resource wait for a worker offering it:
        # with none left they wait for ever however many CPU workers remain (a review
        # killed the only GPU=1 worker: the run hung), so only such workers count.
        self.gpu = gpu
        self.since: float | None = None
        self.checked = 0.0
        self.reason = ""

    def lost(self) -> bool:
        now = time.monotonic()
        if now - self.checked < 2.0:
            return bool(self.reason)
        self.checked = now
        try:
            n = sum(1 for res in worker_summary(self.client).values() if not self.gpu or res.get(GPU, 0) > 0)
        except Exception:  # noqa: BLE001 - a scheduler that does not answer has no worker for us either
            n = 0
        if n:
            self.since = None
            return False
        which = f"Dask worker with the {GPU} resource" if self.gpu else "Dask worker"
        if self.since is None:
            self.since = now
            log.warning("no %s left; waiting up to %.0f s (engine.no_worker_timeout_s) for one", which,
                        self.timeout_s)
        if now - self.since >= self.timeout_s:
            self.reason = (f"no {which} was left for {self.timeout_s:g} s (engine.no_worker_timeout_s), so "
                           "this sample could not finish"
                           + (f" (its cells are classified only on workers offering {GPU}; start one, or run "
                              "without GPU workers)" if self.gpu else "")
                           + "; see the workers' logs (a worker that cannot import "
                           "slideproc, or runs out of memory, dies on its first task), then run again")
        return bool(self.reason)
