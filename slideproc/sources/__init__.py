"""Sources: open a slide or an image field behind one reader protocol.

``open_source(ref)`` picks the reader named in the ref; ``open_path(path)``
tries OpenSlide, then the image decoders, and names the file and what was
tried when neither can open it. ``resolve_mpp`` (sources/mpp.py; README.md
"Inputs") decides the resolution a source is processed at and says where it
came from.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

from ..errors import SourceError
from .base import PAD_VALUE, SlideReader, SourceRef
from .image_header import is_tiff, read_header
from .image_reader import IMAGE_SUFFIXES, ArrayReader, ImageReader, decode_image
from .mpp import ResolvedMpp, resolve_mpp
from .openslide_reader import SLIDE_SUFFIXES, OpenSlideReader, detect_format

__all__ = [
    "PAD_VALUE", "SlideReader", "SourceRef", "ArrayReader", "ImageReader", "OpenSlideReader",
    "open_source", "open_path", "cached_reader", "resolve_mpp", "ResolvedMpp", "reader_kind_for",
    "IMAGE_SUFFIXES", "SLIDE_SUFFIXES", "decode_image",
]


# Suffixes of slide formats that are not TIFF-based (a .svs/.ndpi/.scn is a
# TIFF too, but one OpenSlide should be asked about first).
_SLIDE_ONLY = SLIDE_SUFFIXES - {".tif", ".tiff"}


def reader_kind_for(path: str | Path) -> str | None:
    """"openslide" or "image" for a file that looks like one, else None.

    Decided by content where the suffix does not settle it: a TIFF is a slide
    when OpenSlide recognises it (tiled, pyramidal) and an image field when it
    does not (a striped camera TIFF); any file Pillow can identify is an image
    whatever its suffix (.jfif, .jpe, .webp, none). Reads headers only. A file
    with an image suffix that cannot be parsed is still "image", so opening it
    names the fault.
    """
    path = str(path)
    suffix = os.path.splitext(path)[1].lower()
    if suffix in _SLIDE_ONLY:
        return "openslide"
    if not os.path.isfile(path):
        return "image" if suffix in IMAGE_SUFFIXES else None
    if is_tiff(path):
        return "openslide" if detect_format(path) else "image"
    if suffix in IMAGE_SUFFIXES:
        return "image"
    if detect_format(path):
        return "openslide"
    try:
        read_header(path)
    except SourceError:
        return None
    return "image"


def open_path(path: str | Path, kind: str | None = None, page: int | None = None,
              max_pixels: int | None = None) -> SlideReader:
    """An open reader for ``path`` (``kind`` as :func:`reader_kind_for`; ``page``
    and ``max_pixels``, source.max_image_pixels, for image files). Image files
    are opened from their header; pixels are decoded on the first read."""
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
        return ImageReader(path, page=page, max_pixels=max_pixels)
    raise SourceError(
        f"{path}: neither OpenSlide nor the image decoders recognise this file "
        f"(tried: OpenSlide formats {', '.join(sorted(SLIDE_SUFFIXES))}; images "
        f"{', '.join(sorted(IMAGE_SUFFIXES))} and any other format Pillow reads)"
    )


def open_source(ref: SourceRef, max_pixels: int | None = None) -> SlideReader:
    return open_path(ref.path, ref.reader, ref.page, max_pixels)


_local = threading.local()
_MAX_CACHED = 8
# Decoded image fields kept per thread besides the one in use: a folder's
# fields are read by detection and then by cropping, so the last few are kept,
# but a few 90-MP fields (270 MB each decoded) must not pile up per thread.
_MAX_CACHED_BYTES = 512 * 2**20


def cached_reader(ref: SourceRef, max_pixels: int | None = None) -> SlideReader:
    """An open reader for ``ref``, cached per thread (OpenSlide handles are not
    shared between threads). At most 8 handles and about 512 MB of decoded
    image fields are kept per thread besides the one returned. ``max_pixels``
    (source.max_image_pixels) applies where the reader is opened here."""
    cache = getattr(_local, "readers", None)
    if cache is None:
        cache = _local.readers = {}
    reader = cache.get(ref)
    if reader is None:
        while cache and (len(cache) >= _MAX_CACHED or _held_bytes(cache) > _MAX_CACHED_BYTES):
            old_ref = next(iter(cache))
            cache.pop(old_ref).close()
        reader = cache[ref] = open_source(ref, max_pixels)
    return reader


def _held_bytes(cache: dict) -> int:
    return sum(getattr(r, "decoded_bytes", 0) for r in cache.values())
