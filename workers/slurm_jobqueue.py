"""Example: slideproc on a SLURM cluster with dask-jobqueue (pip install dask-jobqueue).

CPU jobs from dask-jobqueue detect and crop cells; GPU jobs submitted with
workers/slurm-gpu-worker.sbatch (Dask resource GPU=1) classify them; both join
the one scheduler this script starts. Adapt queue names, accounts, memory and
paths to your site, then run on a login node:

    python workers/slurm_jobqueue.py /archive/slides --model /shared/models/bm-v1 --out /shared/results

The archive, MODEL_DIR and OUT_DIR must be on a filesystem every node sees.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
PRELOAD = str(HERE / "slideproc_preload.py")


def main() -> int:
    from dask_jobqueue import SLURMCluster
    from distributed import Client

    from slideproc.config import load_run_config
    from slideproc.runner import run_archive

    p = argparse.ArgumentParser()
    p.add_argument("inputs", nargs="+", type=Path)
    p.add_argument("--model", type=Path, required=True)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--config", type=Path, default=None)
    p.add_argument("--cpu-jobs", type=int, default=4, help="CPU nodes (16 single-threaded workers each)")
    p.add_argument("--gpu-jobs", type=int, default=1, help="GPU jobs (one GPU worker each)")
    args = p.parse_args()

    cluster = SLURMCluster(
        queue="cpu", cores=16, processes=16, memory="64GB", walltime="12:00:00",
        job_script_prologue=["export CUDA_VISIBLE_DEVICES="],
        worker_extra_args=["--preload", PRELOAD],
    )
    cluster.scale(jobs=args.cpu_jobs)
    for _ in range(args.gpu_jobs):
        subprocess.run(["sbatch", f"--export=ALL,SLIDEPROC_WORKERS_DIR={HERE}", str(HERE / "slurm-gpu-worker.sbatch"), cluster.scheduler_address,
                        str(args.model)], check=True)
    with Client(cluster) as client:
        client.wait_for_workers(1)
        status = run_archive(args.inputs, args.out, load_run_config(args.config), args.model,
                             scheduler=cluster.scheduler_address)
    cluster.close()
    return status


if __name__ == "__main__":
    sys.exit(main())
