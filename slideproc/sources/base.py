"""The reader protocol every source implements, and the picklable reference to one.

Dask tasks carry a :class:`SourceRef` (path, reader name, mpp override), never an
open handle; :func:`slideproc.sources.open_source` opens it inside the task and
caches the handle per worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np

# Outside the slide is blank glass: padding is white, as OpenSlide's transparent
# pixels are when composited onto a white background.
PAD_VALUE = 255


@dataclass(frozen=True)
class SourceRef:
    """One file of one sample.

    ``path`` is absolute; ``name`` is what outputs call it (relative to the
    sample's folder, the manifest, or the file name of a slide given directly).
    ``mpp`` is the resolution from the manifest's mpp column (see
    :func:`slideproc.sources.mpp.resolve_mpp` for the precedence).
    ``page``: for an image file with several pages (a multi-page TIFF), the
    0-based page this source is; its ``name`` is then ``file#N`` (N from 1).
    ``estimate_mpp``: the manifest's mpp column says ``auto`` (estimate the
    resolution from the red cells, :mod:`slideproc.mpp_estimate`).
    ``sample_mpp``: where the resolution is estimated from red cells, the
    sample's pooled estimate (an :class:`~slideproc.mpp_estimate.MppEstimate`
    over all its fields, :func:`slideproc.plan.plan_inputs`), used in place of
    this file's own; ``sample_mpp_error``: why the sample has none (its fields
    disagree), raised for every field of it.
    """

    path: str
    name: str
    reader: str  # "openslide" | "image"
    mpp: float | None = None
    page: int | None = None
    estimate_mpp: bool = False
    sample_mpp: "MppEstimate | None" = None  # noqa: F821 - slideproc.mpp_estimate, not imported here
    sample_mpp_error: str = ""


@runtime_checkable
class SlideReader(Protocol):
    path: str
    format: str

    @property
    def dimensions(self) -> tuple[int, int]: ...

    @property
    def level_count(self) -> int: ...

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]: ...

    @property
    def level_downsamples(self) -> tuple[float, ...]: ...

    @property
    def mpp(self) -> float | None:
        """Level-0 micrometres per pixel from the file's metadata, or None."""

    @property
    def objective_power(self) -> float | None: ...

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """uint8 (h, w, 3) RGB; ``location`` in level-0 pixels; padded with white at edges."""

    def close(self) -> None: ...


def paste_into_canvas(region: np.ndarray, x: int, y: int, w: int, h: int, bounds: tuple[int, int]) -> np.ndarray:
    """Place the part of an image inside ``bounds`` into a white (h, w, 3) canvas.

    ``region`` is the full image (or level) array; (x, y) the canvas origin in
    its pixel coordinates, possibly negative or past the edge.
    """
    out = np.full((h, w, 3), PAD_VALUE, dtype=np.uint8)
    bw, bh = bounds
    sx0, sy0 = max(x, 0), max(y, 0)
    sx1, sy1 = min(x + w, bw), min(y + h, bh)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y : sy1 - y, sx0 - x : sx1 - x] = region[sy0:sy1, sx0:sx1]
    return out
