"""`slideproc train` with every crop cut to its central FRACTION before the resize (an experiment).

    python benchmarks/exp_train_centre_cut.py FRACTION DATA_DIR --out MODEL_DIR [train options...]

The same as `slideproc train DATA_DIR --out MODEL_DIR ...` except that training,
validation and the reported metrics see the middle FRACTION of each crop's side
(0.8 of a 250 px Matek crop = 19 um instead of 24 um), resized to the model
input: more pixels on the centred cell at the same cost, less of its
neighbours. Not a slideproc option: the engine would have to cut its crops the
same way. Measured in BENCHMARKS.md (classifier, session 4).
"""

from __future__ import annotations

import sys


def main() -> int:
    fraction = float(sys.argv[1])
    if not 0.1 <= fraction <= 1.0:
        sys.exit(f"FRACTION must be in [0.1, 1], got {fraction}")
    import numpy as np

    import slideproc.pipeline as pipeline
    from slideproc.classify.preprocess import resize_crop
    from slideproc.cli import main as slideproc_main
    from slideproc.datasets import read_rgb

    def load_centre(path, size_px: int) -> np.ndarray:
        img = read_rgb(path)
        h, w = img.shape[:2]
        ch, cw = round(h * fraction), round(w * fraction)
        y0, x0 = (h - ch) // 2, (w - cw) // 2
        return resize_crop(np.ascontiguousarray(img[y0:y0 + ch, x0:x0 + cw]), size_px)

    pipeline.load_crop = load_centre  # TrainingBatches and iter_crops read crops through it
    return slideproc_main(["train", *sys.argv[2:]])


if __name__ == "__main__":
    sys.exit(main())
