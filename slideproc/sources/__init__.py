"""Sources: open a slide or an image field behind one reader protocol.

``open_source(ref)`` picks the reader named in the ref; ``open_path(path)``
tries OpenSlide, then the image decoders, and names the file and what was
tried when neither can open it. ``resolve_mpp`` applies the rule of README.md (Inputs, Resolution):
the file's metadata, else the manifest / --mpp, else the configured fallback,
else a MissingMppError naming the file and the fix.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..errors import MissingMppError, SourceError
from .base import PAD_VALUE, SlideReader, SourceRef
from .image_reader import IMAGE_SUFFIXES, ArrayReader, ImageReader, decode_image
from .openslide_reader import SLIDE_SUFFIXES, OpenSlideReader, detect_format

__all__ = [
    "PAD_VALUE", "SlideReader", "SourceRef", "ArrayReader", "ImageReader", "OpenSlideReader",
    "open_source", "open_path", "cached_reader", "resolve_mpp", "reader_kind_for",
    "IMAGE_SUFFIXES", "SLIDE_SUFFIXES", "decode_image",
]


def reader_kind_for(path: str | Path) -> str | None:
    """"openslide" or "image" for a file that looks like one, else None (no I/O beyond a header)."""
    path = str(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in (".jpg", ".jpeg", ".png", ".bmp"):
        return "image"
    if suffix in (".tif", ".tiff"):
        # A pyramidal/tiled TIFF is a slide; a plain (striped) TIFF is an image field.
        return "openslide" if detect_format(path) else "image"
    if suffix in SLIDE_SUFFIXES or detect_format(path):
        return "openslide"
    return None


def open_path(path: str | Path, kind: str | None = None) -> SlideReader:
    path = str(path)
    if not os.path.exists(path):
        raise SourceError(f"{path}: file not found")
    if os.path.isdir(path):
        raise SourceError(f"{path}: is a directory, not a slide or image file")
    if os.path.getsize(path) == 0:
        raise SourceError(f"{path}: file is empty (0 bytes); copy it again from the scanner")
    kind = kind or reader_kind_for(path)
    if kind == "openslide":
        return OpenSlideReader(path)
    if kind == "image":
        return ImageReader(path)
    raise SourceError(
        f"{path}: neither OpenSlide nor the image decoders recognise this file "
        f"(tried: OpenSlide formats {', '.join(sorted(SLIDE_SUFFIXES))}; images "
        f"{', '.join(sorted(IMAGE_SUFFIXES))})"
    )


def open_source(ref: SourceRef) -> SlideReader:
    return open_path(ref.path, ref.reader)


_local = threading.local()
_MAX_CACHED = 8


def cached_reader(ref: SourceRef) -> SlideReader:
    """An open reader for ``ref``, cached per thread (OpenSlide handles are not
    shared between threads). A few handles per thread bound open files."""
    cache = getattr(_local, "readers", None)
    if cache is None:
        cache = _local.readers = {}
    reader = cache.get(ref)
    if reader is None:
        if len(cache) >= _MAX_CACHED:
            old_ref = next(iter(cache))
            cache.pop(old_ref).close()
        reader = cache[ref] = open_source(ref)
    return reader


def resolve_mpp(reader: SlideReader, ref: SourceRef, fallback: float | None = None) -> float:
    """Level-0 um/px: metadata, else manifest/--mpp, else configured fallback, else error."""
    for value in (reader.mpp, ref.mpp, fallback):
        if value is not None and value > 0:
            return float(value)
    raise MissingMppError(
        f"{ref.path}: no resolution (um per pixel) in the file; give it with --mpp UM, "
        "an 'mpp' column in manifest.csv, or source.fallback_mpp_um in the config"
    )
