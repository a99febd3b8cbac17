"""Seconds per training step of the classifier, per dtype policy and input size.

    python benchmarks/bench_train_step.py [--configs float32:96 mixed_bfloat16:96 mixed_bfloat16:112]
    python benchmarks/bench_train_step.py --interleave --configs mixed_bfloat16:96 mixed_bfloat16:112

Each configuration runs in a fresh process: InceptionResNetV2 as slideproc
builds it (batch-norm momentum 0.9), AdamW, XLA-compiled, a batch of 32 random
crops; 3 warm-up steps, then the mean of 6. This is what chose
configs/train-cpu.yaml's bfloat16 at 112 px (BENCHMARKS.md).

``--interleave`` builds every configuration in one process and times their
steps in turns (A B A B ...; the median of ``--steps`` each), so a machine
whose load changes during the run slows all of them alike and their ratio
still holds; ratios are reported against the first configuration.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _util import record  # noqa: E402

CHILD = """
import sys, time
import numpy as np, keras
from slideproc.classify.model import build_classifier
policy, size = sys.argv[1], int(sys.argv[2])
keras.config.set_dtype_policy(policy)
model = build_classifier(7, size, bn_momentum=0.9)
model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy", jit_compile=True)
x = np.random.default_rng(0).integers(0, 256, (32, size, size, 3), dtype=np.uint8)
y = keras.utils.to_categorical(np.arange(32) % 7, 7)
for _ in range(3):
    model.train_on_batch(x, y)
t = time.perf_counter()
for _ in range(6):
    model.train_on_batch(x, y)
print((time.perf_counter() - t) / 6)
"""


INTERLEAVED = """
import sys, time
import numpy as np, keras
from slideproc.classify.model import build_classifier
steps = int(sys.argv[1])
runs = []
for item in sys.argv[2:]:
    policy, size = item.split(":")
    keras.config.set_dtype_policy(policy)
    model = build_classifier(8, int(size), bn_momentum=0.9)
    model.compile(optimizer=keras.optimizers.AdamW(1e-3), loss="categorical_crossentropy", jit_compile=True)
    x = np.random.default_rng(0).integers(0, 256, (32, int(size), int(size), 3), dtype=np.uint8)
    y = keras.utils.to_categorical(np.arange(32) % 8, 8)
    for _ in range(3):
        model.train_on_batch(x, y)
    runs.append((model, x, y, []))
keras.config.set_dtype_policy("float32")
for _ in range(steps):
    for model, x, y, times in runs:
        t = time.perf_counter()
        model.train_on_batch(x, y)
        times.append(time.perf_counter() - t)
print(" ".join(str(float(np.median(r[3]))) for r in runs))
"""


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--configs", nargs="+", default=["float32:96", "mixed_bfloat16:96", "mixed_bfloat16:112"])
    p.add_argument("--interleave", action="store_true", help="time all configurations in turns in one process")
    p.add_argument("--steps", type=int, default=8, help="timed steps per configuration with --interleave")
    args = p.parse_args()
    steps = {}
    if args.interleave:
        out = subprocess.run([sys.executable, "-c", INTERLEAVED, str(args.steps), *args.configs], check=True,
                             capture_output=True, text=True)
        medians = [float(v) for v in out.stdout.split()[-len(args.configs):]]
        record("train_step", {"command": "python benchmarks/bench_train_step.py " + " ".join(sys.argv[1:]),
                              "seconds_per_step_of_32_median": dict(zip(args.configs, [round(m, 3) for m in medians])),
                              "ratio_to_first": dict(zip(args.configs, [round(m / medians[0], 3) for m in medians]))})
        return 0
    for item in args.configs:
        policy, size = item.split(":")
        out = subprocess.run([sys.executable, "-c", CHILD, policy, size], check=True, capture_output=True, text=True)
        steps[item] = round(float(out.stdout.split()[-1]), 3)
    record("train_step", {"command": "python benchmarks/bench_train_step.py " + " ".join(sys.argv[1:]),
                          "seconds_per_step_of_32": steps})
    return 0


if __name__ == "__main__":
    sys.exit(main())
