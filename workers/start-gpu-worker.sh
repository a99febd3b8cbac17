#!/usr/bin/env bash
# Start one slideproc GPU worker per visible GPU on this node.
#   workers/start-gpu-worker.sh tcp://SCHEDULER:8786 [MODEL_DIR]
# Each worker owns one card (CUDA_VISIBLE_DEVICES) and offers the Dask resource
# GPU=1: slideproc sends its classification batches only to such workers.
set -euo pipefail
scheduler=${1:?usage: $0 tcp://SCHEDULER:8786 [MODEL_DIR]}
model=${2:-}
here=$(cd "$(dirname "$0")" && pwd)
# workers/dask.yaml: keep glibc's malloc defaults (see the file) unless DASK_CONFIG is set.
export DASK_CONFIG="${DASK_CONFIG:-$here}"
gpus=$(nvidia-smi --query-gpu=index --format=csv,noheader 2>/dev/null || echo 0)
pids=()
for gpu in $gpus; do
  extra=()
  [ -n "$model" ] && extra=(--slideproc-model "$model")
  CUDA_VISIBLE_DEVICES=$gpu dask worker "$scheduler" \
    --name "gpu-$(hostname)-$gpu" --nworkers 1 --nthreads 1 \
    --resources "GPU=1" --memory-limit auto \
    --preload "$here/slideproc_preload.py" "${extra[@]}" &
  pids+=($!)
done
wait "${pids[@]}"
