"""Write a MODEL_DIR holding an untrained (random-weight) classifier, for timing only.

    python benchmarks/untrained_model.py OUT_DIR --input-size 299 [--classes 7]

Throughput depends on the network and its input size, not on its weights, and
`slideproc train` on a GPU node spends minutes compiling a training step a
timing run never needs. labels.json says plainly that the weights are random:
its predictions are meaningless, and nothing but a benchmark should load it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

MATEK7 = ["BLA", "EOS", "LYT", "MON", "NGS", "NIF", "PMO"]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", type=Path)
    p.add_argument("--input-size", type=int, default=299)
    p.add_argument("--classes", type=int, default=len(MATEK7))
    args = p.parse_args()
    import keras

    from slideproc.classify.loading import LABELS_FILE, MODEL_FILE, write_sha256
    from slideproc.classify.model import build_classifier

    labels = (MATEK7 + [f"C{i}" for i in range(len(MATEK7), args.classes)])[:args.classes]
    keras.config.set_dtype_policy("float32")
    model = build_classifier(len(labels), args.input_size)
    args.out.mkdir(parents=True, exist_ok=True)
    model.save(args.out / MODEL_FILE)
    sha = write_sha256(args.out / MODEL_FILE)
    info = {"labels": labels, "input_size_px": args.input_size, "temperature": 1.0,
            "architecture": "InceptionResNetV2", "dropout": 0.0,
            "weights": "random, untrained: for timing only (benchmarks/untrained_model.py)", "model_sha256": sha}
    (args.out / LABELS_FILE).write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
    print(f"wrote {args.out} ({args.input_size} px, {len(labels)} classes, random weights)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
