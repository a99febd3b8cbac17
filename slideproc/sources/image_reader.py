"""Readers for single fields of view: image files (any format Pillow or tifffile
reads, one page each) and in-memory arrays.

A field is decoded whole, once, on its first read and kept while its reader is
open (plain formats have no random access); it has one level, and the tiling
layer resamples it to the working resolution. Fields larger than
``source.max_image_pixels`` are refused from their header.
"""

from __future__ import annotations

import logging

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


# The TIFF/EXIF orientations as array transforms (the same as Pillow's
# ImageOps.exif_transpose, checked in tests/test_sources.py): tifffile returns
# pixels as stored, and 16-bit or many-channel TIFFs cannot go through Pillow.
_ORIENT = {
    2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
    5: lambda a: a.swapaxes(0, 1), 6: lambda a: np.rot90(a, -1),
    7: lambda a: np.rot90(a, 2).swapaxes(0, 1), 8: lambda a: np.rot90(a, 1),
}
# What source.max_image_pixels defaults to (config.py); used where a reader is
# opened without the config (a worker's reader cache refilled mid-task).
DEFAULT_MAX_IMAGE_PIXELS = 500_000_000


def check_pixels(path: str, size: tuple[int, int], max_pixels: int | None) -> None:
    """SourceError naming the config key when ``size`` (w, h) exceeds ``max_pixels``.

    Checked on the header, before decoding, so a decompression bomb (a few KB
    claiming gigapixels) is refused without allocating anything.
    """
    limit = DEFAULT_MAX_IMAGE_PIXELS if max_pixels is None else int(max_pixels)
    w, h = size
    if w * h > limit:
        gb = w * h * 3 / 1e9
        raise SourceError(
            f"{path}: {w:,} x {h:,} px ({w * h / 1e6:,.0f} MP) is more than source.max_image_pixels "
            f"({limit:,}); if the image is genuine, set source: {{max_image_pixels: {w * h}}} in a config "
            f"file given with --config (it decodes to {gb:.1f} GB; workers need that much memory, "
            f"engine.memory_limit)"
        )


def decode_image(path: str, page: int | None = None, max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
                 scale: int = 1) -> tuple[np.ndarray, list[str]]:
    """Decode one page (0-based; None = the first field) of an image file to uint8 RGB
    (h, w, 3) in the frame a viewer shows (EXIF/TIFF orientation applied), and
    the conversions made. One clear SourceError when it cannot be decoded or
    is larger than ``max_pixels`` (pixels, w x h, of the full image).

    ``scale`` (a JPEG only: 2, 4 or 8) decodes at 1/scale in the JPEG's DCT
    (Pillow's ``draft``, libjpeg's scaled IDCT): ceil(w / scale) x
    ceil(h / scale) pixels, output pixel i covering input [i*scale, (i+1)*scale),
    without ever holding the full-size image."""
    from .image_header import read_header, unguard_pillow

    try:
        header = read_header(path)
        page = header.pages[0] if page is None else page
        if page not in header.page_sizes:
            raise SourceError(f"{path}: has {len(header.page_sizes)} page(s), asked for page {page + 1}")
        check_pixels(path, header.size(page), max_pixels)
        notes = []
        if header.decoder == "tifffile":
            import tifffile

            arr = tifffile.imread(path, key=page)
            if header.orientation in _ORIENT:
                arr = _ORIENT[header.orientation](arr)
        else:
            from PIL import Image, ImageOps

            unguard_pillow()
            with Image.open(path) as im:
                if page:
                    im.seek(page)
                if scale > 1:
                    want = (-(-im.size[0] // scale), -(-im.size[1] // scale))
                    im.draft(im.mode, want)
                    if im.size != want:
                        raise SourceError(f"{path}: cannot be decoded at 1/{scale} scale (got {im.size}, "
                                          f"expected {want})")
                im.load()
                # Pillow's own transform (ImageOps.exif_transpose) for what it decodes.
                im = ImageOps.exif_transpose(im)
                if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV", "1"):
                    im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
                arr = np.asarray(im)
                del im  # one decoded copy held from here on, not Pillow's as well
        if header.orientation_note:
            notes.append(header.orientation_note)
    except SourceError:
        raise
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except MemoryError:
        raise SourceError(f"{path}: not enough memory to decode it; raise engine.memory_limit or "
                          "lower source.max_image_pixels to refuse such images") from None
    except Exception as err:  # decoders raise many types; all mean "unreadable"
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SourceError(f"{path}: cannot decode image ({reason}); re-export it as PNG or JPEG") from None
    if arr.size == 0:
        raise SourceError(f"{path}: image is empty")
    rgb, converted = to_rgb8(arr, path)
    if converted:
        log.warning("%s: converted %s", path, ", ".join(converted))
    if notes:
        log.info("%s: %s", path, "; ".join(notes))
    return rgb, notes + converted


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


# Plain JPEG fields larger than this are read like a slide with levels at 1/2,
# 1/4 and 1/8, decoded in the JPEG's DCT (no full-size decode): the 90 MP
# large-jpeg case at 0.09 um/px is detected from its 1/4 level (5.6 MP) with
# the same 7 cells, peak RSS 217 MB instead of 1,986 MB, 3-16x faster (two
# alternating pairs on a loaded 2-core machine; benchmarks/bench_large_field.py).
# Camera frames (5-20 MP) stay single-level: their pixels are as before.
LEVELS_FROM_PIXELS = 25_000_000
_JPEG_SCALES = (1, 2, 4, 8)


class ImageReader(ArrayReader):
    """One page of an image file as a field of view.

    Opening reads the header only (size, pages, orientation, resolution); the
    pixels are decoded on the first ``read_region``, so ``plan``/``info`` and
    mpp resolution never decode. Only TIFF resolution tags are trusted (in
    inch or centimetre, as OpenSlide reads them for tiled TIFFs); a JPEG's or
    PNG's dpi is a screen setting, not the microscope's (image_header.py).
    A JPEG over :data:`LEVELS_FROM_PIXELS` has levels 1, 2, 4, 8 (each decoded
    on its first read, at its own scale); every other image has one level.
    """

    name = "image"

    def __init__(self, path: str, page: int | None = None, max_pixels: int | None = None):
        from .image_header import read_header

        self.path = str(path)
        self.header = read_header(self.path)
        self.page = self.header.pages[0] if page is None else int(page)
        if self.page not in self.header.page_sizes:
            raise SourceError(f"{self.path}: has {len(self.header.page_sizes)} page(s), "
                              f"asked for page {self.page + 1}")
        self.max_pixels = max_pixels
        self.format = self.header.format
        self._arrays: dict[int, np.ndarray] = {}
        w, h = self._dims = self.header.size(self.page)
        big_jpeg = self.format == "jpeg" and len(self.header.page_sizes) == 1 and w * h > LEVELS_FROM_PIXELS
        self._scales = _JPEG_SCALES if big_jpeg else (1,)
        note = self.header.orientation_note
        self.conversions = [note] if note else []

    @property
    def dimensions(self) -> tuple[int, int]:
        return self._dims

    @property
    def level_count(self) -> int:
        return len(self._scales)

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        w, h = self._dims
        return tuple((-(-w // k), -(-h // k)) for k in self._scales)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(k) for k in self._scales)

    @property
    def mpp(self) -> float | None:
        xy = self.header.mpp_xy
        return (xy[0] + xy[1]) / 2 if xy else None

    @property
    def mpp_xy(self) -> tuple[float, float] | None:
        return self.header.mpp_xy

    @property
    def mpp_detail(self) -> str:
        return self.header.mpp_detail

    @property
    def decoded_bytes(self) -> int:
        return sum(int(a.nbytes) for a in self._arrays.values())

    def _pixels(self, level: int = 0) -> np.ndarray:
        arr = self._arrays.get(level)
        if arr is None:
            arr, notes = decode_image(self.path, self.page, self.max_pixels, self._scales[level])
            want = self.level_dimensions[level]
            if (arr.shape[1], arr.shape[0]) != want:
                raise SourceError(f"{self.path}: decoded {arr.shape[1]} x {arr.shape[0]} px, its header says "
                                  f"{want[0]} x {want[1]}; re-export it")
            self._arrays[level] = arr
            self.conversions = notes
        return arr

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        """uint8 (h, w, 3); ``location`` in level-0 pixels (level pixel = location // downsample)."""
        if not 0 <= level < len(self._scales):
            raise SourceError(f"{self.path}: has {len(self._scales)} level(s), asked for level {level}")
        if int(size[0]) < 0 or int(size[1]) < 0:
            raise SourceError(f"{self.path}: region size must not be negative, got {size}")
        k = self._scales[level]
        return paste_into_canvas(self._pixels(level), int(location[0]) // k, int(location[1]) // k,
                                 int(size[0]), int(size[1]), self.level_dimensions[level])

    def close(self) -> None:
        self._arrays = {}
