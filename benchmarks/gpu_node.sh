#!/usr/bin/env bash
# Engine throughput on a GPU node, started the way workers/README.md tells an
# operator: a scheduler, workers/start-gpu-worker.sh (one worker, GPU=1) and
# workers/start-cpu-worker.sh (the other cores), then benchmarks/bench_run.py
# --scheduler for each model input size. The models have random weights
# (benchmarks/untrained_model.py): only their cost per crop matters here.
#
#   KERAS_BACKEND=jax benchmarks/gpu_node.sh WORK_DIR [INPUT_SIZE ...]   # default sizes: 96 299
#
# Needs a GPU, slideproc importable, the `dask` command on PATH and the Matek
# crops at ../shared/data/real/matek_bm. Results: benchmarks/results/run.jsonl
# (as every benchmark) and WORK_DIR/*.log.
set -euo pipefail
work=${1:?usage: $0 WORK_DIR [INPUT_SIZE ...]}
shift
sizes=("$@")
[ ${#sizes[@]} -gt 0 ] || sizes=(96 299)
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
mkdir -p "$work"
export XLA_PYTHON_CLIENT_PREALLOCATE=false TF_FORCE_GPU_ALLOW_GROWTH=true PYTHONUNBUFFERED=1
matek=$repo/../shared/data/real/matek_bm

[ -d "$matek" ] || { echo "Matek crops not found at $matek" >&2; exit 2; }
for size in "${sizes[@]}"; do
  python3 "$here/untrained_model.py" "$work/model$size" --input-size "$size" > "$work/model$size.log" 2>&1
done

port=${PORT:-8786}
scheduler=tcp://127.0.0.1:$port
cpu_workers=${CPU_WORKERS:-$(( $(nproc) - 2 ))}
dask scheduler --host 127.0.0.1 --port "$port" --dashboard-address :0 > "$work/scheduler.log" 2>&1 &
pids=($!)
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
sleep 3
"$repo/workers/start-gpu-worker.sh" "$scheduler" "$work/model${sizes[0]}" > "$work/gpu-worker.log" 2>&1 &
pids+=($!)
"$repo/workers/start-cpu-worker.sh" "$scheduler" "$cpu_workers" > "$work/cpu-workers.log" 2>&1 &
pids+=($!)
# Wait for every worker (the GPU one loads and compiles its model first).
python3 - "$scheduler" "$(( cpu_workers + 1 ))" <<'EOF'
import sys
from distributed import Client
with Client(sys.argv[1], timeout="60s") as c:
    c.wait_for_workers(int(sys.argv[2]), timeout=300)
    print({a: w.get("resources") for a, w in c.scheduler_info(n_workers=-1)["workers"].items()})
EOF

for size in "${sizes[@]}"; do
  python3 "$here/bench_run.py" --model "$work/model$size" --scheduler "$scheduler" --skip-memory ${BENCH_ARGS:-} \
    > "$work/bench$size.log" 2>&1 || { echo "bench_run for $size px failed:"; tail -20 "$work/bench$size.log"; }
  grep -E '"(ratio_engine_to_bare|engine_marginal_cells_per_s|cells_per_s|precision)"' "$work/bench$size.log" || true
done
