"""Pyramidal tiled TIFF that OpenSlide opens as generic-tiff, with mpp.

Levels are successive pages, each half the size of the one before, down to
< 1024 px. Tiles are pulled from a render function band by band, so memory
holds one band of tiles (tile height x 4 tiles wide), never the slide: a
100k x 100k slide writes in the memory of a 4k one.

OpenSlide reads ``openslide.mpp-x/y`` from XResolution/YResolution when the
ResolutionUnit is centimetre: 0.25 um/px = 40000 px/cm.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np
import tifffile

from ..errors import StoreError

TILE = 512
MIN_LEVEL = 1024


def level_sizes(width: int, height: int, min_size: int = MIN_LEVEL) -> list[tuple[int, int]]:
    """(w, h) of each level: halve until the larger side is <= ``min_size``."""
    sizes = [(int(width), int(height))]
    d = 1
    while max(sizes[-1]) > min_size:
        d *= 2
        sizes.append((-(-width // d), -(-height // d)))
    return sizes


def _tiles(render: Callable, lw: int, lh: int, d: int, tile: int, band: int):
    """Tiles of one level in row-major order (what tifffile expects), rendered ``band`` tiles at a time."""
    for ty in range(0, lh, tile):
        for tx in range(0, lw, tile * band):
            n = min(band, -(-(lw - tx) // tile))
            img = render(tx * d, ty * d, n * tile, tile, d)
            for k in range(n):
                yield img[:, k * tile:(k + 1) * tile]


def write_pyramid(path: Path, width: int, height: int, mpp: float, render: Callable, *,
                  tile: int = TILE, compression: str = "jpeg", quality: int = 90,
                  min_level: int = MIN_LEVEL, description: str = "") -> list[tuple[int, int]]:
    """Write a tiled pyramid whose pixels come from ``render(x0, y0, w, h, downsample) -> uint8 HxWx3``
    (x0, y0 level-0 px; w, h level px). Returns the level sizes."""
    if compression not in ("jpeg", "deflate", "none"):
        raise StoreError(f"{path}: unknown TIFF compression {compression!r}; use jpeg, deflate or none")
    sizes = level_sizes(width, height, min_level)
    bigtiff = width * height * 3 * 1.4 > 2**32 - 2**25
    kw: dict = {}
    if compression == "jpeg":
        # Photometric RGB: tifffile's "ycbcr" expects YCbCr input, which would cost a conversion
        # per tile; OpenSlide decodes RGB JPEG tiles correctly.
        kw = dict(compression="jpeg", compressionargs={"level": quality}, photometric="rgb")
    elif compression == "deflate":
        kw = dict(compression="zlib", compressionargs={"level": 6}, photometric="rgb", predictor=True)
    else:
        kw = dict(photometric="rgb")
    try:
        with tifffile.TiffWriter(path, bigtiff=bigtiff) as tw:
            for k, (lw, lh) in enumerate(sizes):
                d = 2**k
                res = 1e4 / (mpp * d)  # px per cm
                tw.write(_tiles(render, lw, lh, d, tile, 4), shape=(lh, lw, 3), dtype=np.uint8,
                         tile=(tile, tile), resolution=(res, res), resolutionunit="CENTIMETER",
                         subfiletype=1 if k else 0, description=description if k == 0 else None,
                         metadata=None, software="slideproc synth", **kw)
    except OSError as err:
        raise StoreError(f"{path}: cannot write the slide ({err}); check the folder is writable and has space") from None
    return sizes
