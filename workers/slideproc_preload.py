"""Dask worker preload for slideproc workers.

    dask worker tcp://SCHEDULER:8786 --preload workers/slideproc_preload.py \
        [--slideproc-model /shared/models/bm-v1] [--resources GPU=1]

At worker start it:
- keeps TensorFlow quiet and, on a GPU, lets TensorFlow grow its memory and
  stops JAX from taking 75 % of the card up front (several processes may
  share a node). CPU threads need nothing here: Dask's nanny starts every
  worker with OMP_NUM_THREADS=1 (and MKL/OpenBLAS alike), so N one-thread
  workers on N cores do not oversubscribe them;
- with ``--slideproc-model``, loads the model once at start-up (into the same
  per-process cache the classify tasks use) and runs one batch through it, so
  the predict function is compiled before the first real batch arrives.

Nothing here is required: tasks load what they need lazily. It only makes the
first minutes of a run faster and the logs readable.
"""

from __future__ import annotations

import logging
import os
import time

import click

# A child of Dask's logger, so the worker's log shows these lines at its INFO level.
log = logging.getLogger("distributed.worker.slideproc")


@click.command()
@click.option("--slideproc-model", default=None, help="MODEL_DIR to load at start-up")
@click.option("--slideproc-batch-size", default=32, show_default=True, type=int)
def dask_setup(worker, slideproc_model, slideproc_batch_size):
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    os.environ.setdefault("TF_FORCE_GPU_ALLOW_GROWTH", "true")
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    resources = dict(getattr(worker.state, "total_resources", {}) or {})
    log.info("slideproc worker %s: resources %s", worker.address, resources)
    if slideproc_model:
        import numpy as np

        from slideproc.classify.predict import get_predictor

        start = time.perf_counter()
        predictor = get_predictor(slideproc_model, slideproc_batch_size)
        size = predictor.input_size_px
        predictor.predict_raw(np.zeros((1, size, size, 3), np.uint8))  # compiles the predict function
        log.info("slideproc worker %s: model %s loaded and compiled in %.1f s (sha256 %s, %s)", worker.address,
                 slideproc_model, time.perf_counter() - start, predictor.loaded.sha256[:12], predictor.precision)
