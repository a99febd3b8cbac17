"""Readers for single fields of view: image files (jpg/png/tif) and in-memory arrays.

A field is small (a camera frame), so it is decoded whole once and kept. It has
one level; the tiling layer resamples it to the working resolution.
"""

from __future__ import annotations

import logging
import warnings

import numpy as np

from ..errors import SourceError
from .base import paste_into_canvas

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".tif", ".tiff", ".bmp"})


def to_rgb8(arr: np.ndarray, path: str = "<array>") -> tuple[np.ndarray, list[str]]:
    """Any greyscale/RGB/RGBA array of any integer or float depth -> uint8 RGB.

    Returns the array and a list of what was converted (said in the log).
    """
    notes = []
    arr = np.asarray(arr)
    if arr.ndim == 2:
        arr = arr[..., None]
        notes.append("greyscale -> RGB")
    elif arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[2] > 4:
        # A planar TIFF (one page per channel) decodes channel-first.
        arr = np.moveaxis(arr, 0, 2)
        notes.append("planar -> interleaved")
    if arr.ndim != 3 or arr.shape[2] not in (1, 2, 3, 4):
        raise SourceError(f"{path}: unsupported image shape {arr.shape} (expected HxW, HxWx3 or HxWx4)")
    if arr.dtype != np.uint8:
        if np.issubdtype(arr.dtype, np.integer):
            top = float(np.iinfo(arr.dtype).max)
            # A 16-bit camera often fills only 12 bits: stretch what is used.
            used = float(arr.max()) if arr.size else 0.0
            scale = 255.0 / (used if 0 < used < top else top)
        else:
            scale = 255.0 if float(np.nanmax(arr)) <= 1.0 else 1.0
        notes.append(f"{arr.dtype} -> uint8")
        arr = np.clip(np.nan_to_num(arr.astype(np.float64)) * scale + 0.5, 0, 255).astype(np.uint8)
    channels = arr.shape[2]
    if channels in (2, 4):
        # Transparent pixels are glass: composite onto white.
        alpha = arr[..., -1:].astype(np.uint16)
        rgb = arr[..., :-1].astype(np.uint16)
        arr = ((rgb * alpha + 255 * (255 - alpha) + 127) // 255).astype(np.uint8)
        notes.append("alpha composited onto white")
        channels -= 1
    if channels == 1:
        arr = np.repeat(arr, 3, axis=2)
    return np.ascontiguousarray(arr), notes


def decode_image(path: str) -> tuple[np.ndarray, list[str]]:
    """Decode an image file to uint8 RGB and the conversions made; one clear
    SourceError when it cannot be decoded."""
    suffix = path.lower().rsplit(".", 1)[-1]
    try:
        if suffix in ("tif", "tiff"):
            import tifffile

            arr = tifffile.imread(path, key=0)
        else:
            from PIL import Image

            with warnings.catch_warnings():
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                with Image.open(path) as im:
                    im.load()
                    if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                    arr = np.asarray(im)
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except Exception as err:  # decoders raise many types; all mean "unreadable"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SourceError(f"{path}: cannot decode image ({reason}); re-export it as PNG or JPEG") from None
    if arr.size == 0:
        raise SourceError(f"{path}: image is empty")
    rgb, notes = to_rgb8(arr, path)
    if notes:
        log.warning("%s: converted %s", path, ", ".join(notes))
    return rgb, notes


class ArrayReader:
    """A one-level source over an in-memory RGB array (tests, synthetic fields)."""

    name = "array"

    def __init__(self, array: np.ndarray, mpp: float | None = None, path: str = "<array>", fmt: str = "array"):
        self.path = path
        self.format = fmt
        self._array, self.conversions = to_rgb8(array, path)
        self._mpp = mpp

    @property
    def dimensions(self) -> tuple[int, int]:
        h, w = self._array.shape[:2]
        return (w, h)

    @property
    def level_count(self) -> int:
        return 1

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return (self.dimensions,)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return (1.0,)

    @property
    def mpp(self) -> float | None:
        return self._mpp

    @property
    def objective_power(self) -> float | None:
        return None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        if level != 0:
            raise SourceError(f"{self.path}: has one level, asked for level {level}")
        if int(size[0]) < 0 or int(size[1]) < 0:
            raise SourceError(f"{self.path}: region size must not be negative, got {size}")
        return paste_into_canvas(self._array, int(location[0]), int(location[1]), int(size[0]),
                                 int(size[1]), self.dimensions)

    def close(self) -> None:
        self._array = np.zeros((0, 0, 3), np.uint8)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class ImageReader(ArrayReader):
    """One image file as a field of view. Plain images carry no trusted mpp
    (a PNG's 72 dpi is a screen setting, not the microscope's)."""

    name = "image"

    def __init__(self, path: str):
        arr, notes = decode_image(str(path))
        fmt = str(path).lower().rsplit(".", 1)[-1]
        super().__init__(arr, mpp=None, path=str(path), fmt=fmt)
        self.conversions = notes
