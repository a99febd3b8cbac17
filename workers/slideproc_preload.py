"""Dask worker preload for slideproc workers.

    dask worker tcp://SCHEDULER:8786 --preload workers/slideproc_preload.py \
        [--slideproc-model /shared/models/bm-v1] [--resources GPU=1]

At worker start it:
- keeps TensorFlow quiet and, on a GPU, lets it grow its memory instead of
  taking the whole card (several processes may share a node);
- limits TensorFlow's CPU threads to the worker's ``--nthreads`` so CPU workers
  on one node do not oversubscribe the cores;
- with ``--slideproc-model``, loads the model once at start-up (into the same
  per-process cache the classify tasks use), so the first batch does not wait.

Nothing here is required: tasks load what they need lazily. It only makes the
first minutes of a run faster and the logs readable.
"""

from __future__ import annotations

import logging
import os

import click

log = logging.getLogger("slideproc.worker")


@click.command()
@click.option("--slideproc-model", default=None, help="MODEL_DIR to load at start-up")
@click.option("--slideproc-batch-size", default=32, show_default=True, type=int)
def dask_setup(worker, slideproc_model, slideproc_batch_size):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    threads = str(max(1, int(getattr(worker.state, "nthreads", 1) or 1)))
    os.environ.setdefault("SLIDEPROC_TF_THREADS", threads)
    resources = dict(getattr(worker.state, "total_resources", {}) or {})
    log.info("slideproc worker %s: resources %s, TF threads %s", worker.address, resources, threads)
    if slideproc_model:
        from slideproc.classify.predict import get_predictor

        predictor = get_predictor(slideproc_model, slideproc_batch_size)
        log.info("slideproc worker %s: model %s loaded (sha256 %s)", worker.address, slideproc_model,
                 predictor.loaded.sha256[:12])
