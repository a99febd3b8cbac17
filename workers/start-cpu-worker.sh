#!/usr/bin/env bash
# Start slideproc CPU workers (tile reading, cell detection, cropping) on this node.
#   workers/start-cpu-worker.sh tcp://SCHEDULER:8786 [NPROCS]
# One single-threaded process per core by default: the per-tile work is NumPy /
# scikit-image code that scales best in processes.
set -euo pipefail
scheduler=${1:?usage: $0 tcp://SCHEDULER:8786 [NPROCS]}
nprocs=${2:-$(nproc)}
here=$(cd "$(dirname "$0")" && pwd)
# workers/dask.yaml: keep glibc's malloc defaults (see the file) unless DASK_CONFIG is set.
export DASK_CONFIG="${DASK_CONFIG:-$here}"
# Hide GPUs: a CPU worker must never grab a card that a GPU worker owns.
CUDA_VISIBLE_DEVICES="" exec dask worker "$scheduler" \
  --name "cpu-$(hostname)" --nworkers "$nprocs" --nthreads 1 --memory-limit auto \
  --preload "$here/slideproc_preload.py"
