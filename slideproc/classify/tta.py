"""Test-time augmentation: the views of a crop whose predictions are averaged.

A smear has no up or left, so a cell turned by 90 degrees or mirrored is the
same cell; training augments with all 8 such views (the dihedral group of the
square). At inference the softmax outputs of the first ``n`` views of
:data:`VIEWS` are averaged (before calibration):

- 1: the crop as it is
- 2: + mirrored left-right
- 4: + turned 180 degrees, + mirrored top-bottom (flips x 180 degrees)
- 8: + the four views turned by 90 and 270 degrees

Each subset is closed under its own flips, so no view count favours one
orientation. Cost: ``n`` forward passes per crop.
"""

from __future__ import annotations

import numpy as np

# (quarter turns counter-clockwise, mirrored left-right after turning)
VIEWS: tuple[tuple[int, bool], ...] = ((0, False), (0, True), (2, False), (2, True),
                                       (1, False), (1, True), (3, False), (3, True))
VIEW_COUNTS = (1, 2, 4, 8)


def check_views(n: int, key: str = "tta_views") -> int:
    """``n`` if it is one of 1, 2, 4, 8; ValueError naming ``key`` otherwise."""
    if isinstance(n, bool) or n not in VIEW_COUNTS:
        raise ValueError(f"{key} must be 1, 2, 4 or 8, got {n!r}")
    return int(n)


def view(crops: np.ndarray, index: int) -> np.ndarray:
    """View ``index`` of :data:`VIEWS` of uint8 (N, H, W, 3) square crops, contiguous, same shape."""
    turns, mirrored = VIEWS[index]
    out = np.rot90(crops, turns, axes=(1, 2))
    if mirrored:
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)
