"""What a plain image file is, from its header alone: no pixels are decoded.

Used by discovery (is this file an image, and how many fields does it hold?),
by ``slideproc plan`` and ``info``, and by :class:`ImageReader` before it
decodes. The format is decided by content (Pillow's and tifffile's parsers),
not by the file's suffix, so a ``.jfif``, ``.jpe``, ``.webp`` or an image
without a suffix is read like a ``.jpg``.

- **Pages.** Every page of a multi-page TIFF (every frame of a multi-frame
  image) is a field of view, except reduced-resolution copies (flagged as such
  in the TIFF, or a smaller page whose size is page 1's divided by one integer
  >= 2: a preview), which are listed in ``previews`` so they can be named.
- **Orientation.** EXIF Orientation (JPEG, WebP, PNG eXIf) and the TIFF
  Orientation tag: ``size`` is the frame a viewer shows (5-8 swap width and
  height); decoding applies the same transform.
- **Resolution.** A TIFF's XResolution/YResolution with ResolutionUnit inch or
  centimetre (the same conversion OpenSlide 4 applies to tiled TIFFs), or
  ImageJ's micron calibration (unit NONE, ``unit=micron`` in the
  description). Other formats' dpi (JPEG JFIF, PNG pHYs) is a screen setting
  of the camera software, never a microscope's resolution, and is ignored.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import SourceError

_TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
# EXIF/TIFF orientations that swap width and height (transpose, rotate 90, ...).
_SWAPS = frozenset({5, 6, 7, 8})
ORIENTATION_WORDS = {
    2: "mirrored", 3: "rotated 180 degrees", 4: "flipped upside down", 5: "transposed",
    6: "rotated 90 degrees clockwise", 7: "transversed", 8: "rotated 90 degrees counter-clockwise",
}
_UM_PER_UNIT = {2: 25400.0, 3: 10000.0}  # TIFF ResolutionUnit: 2 inch, 3 centimetre
_UNIT_NAME = {2: "inch", 3: "centimetre"}


@dataclass(frozen=True)
class ImageHeader:
    """A plain image file as its header describes it.

    ``format``: "tiff" or Pillow's format name, lower case ("jpeg", "png", ...).
    ``pages``: indices (0-based, TIFF pages or image frames) that are fields;
    ``page_sizes``: (w, h) per page as a viewer shows it (orientation applied).
    ``previews``: (index, reason) of pages left out as reduced copies.
    ``orientation``: 1-8 (1 = as stored). ``mpp_xy``: (across, down) um/px or
    None; ``mpp_detail``: what the tags literally say (for messages).
    """

    path: str
    format: str
    pages: tuple[int, ...]
    page_sizes: dict = field(default_factory=dict)
    previews: tuple[tuple[int, str], ...] = ()
    orientation: int = 1
    mpp_xy: tuple[float, float] | None = None
    mpp_detail: str = ""
    # Which library decodes the pixels: tifffile for TIFFs it parses (16-bit,
    # planar, many channels), Pillow for everything else.
    decoder: str = "pillow"

    def size(self, page: int | None = None) -> tuple[int, int]:
        return self.page_sizes[self.pages[0] if page is None else page]

    @property
    def orientation_note(self) -> str:
        if self.orientation in ORIENTATION_WORDS:
            return f"EXIF orientation {self.orientation} applied ({ORIENTATION_WORDS[self.orientation]})"
        return ""


def is_tiff(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) in _TIFF_MAGIC
    except OSError:
        return False


def read_header(path: str) -> ImageHeader:
    """The header of ``path``; SourceError when neither tifffile nor Pillow can parse it."""
    if is_tiff(path):
        try:
            return _tiff_header(path)
        except SourceError:
            raise
        except Exception:  # noqa: BLE001 - a TIFF tifffile cannot parse may still open in Pillow
            pass
    return _pillow_header(path)


def _oriented(size: tuple[int, int], orientation: int) -> tuple[int, int]:
    w, h = size
    return (h, w) if orientation in _SWAPS else (w, h)


def _previews(sizes: list[tuple[int, int]], reduced: list[bool]) -> tuple[list[int], list[tuple[int, str]]]:
    """Split page indices into fields and reduced copies of the first page."""
    w0, h0 = sizes[0]
    fields, previews = [], []
    for i, ((w, h), red) in enumerate(zip(sizes, reduced)):
        if i and red:
            previews.append((i, "a reduced-resolution copy (TIFF NewSubfileType)"))
            continue
        if i and (w, h) != (w0, h0) and w and h:
            k = round(w0 / w)
            if k >= 2 and abs(w0 / k - w) <= 1 and abs(h0 / k - h) <= 1:
                previews.append((i, f"a preview: page 1 reduced {k} times ({w} x {h} px)"))
                continue
        fields.append(i)
    return fields, previews


def _tiff_header(path: str) -> ImageHeader:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        pages = list(tif.pages)
        if not pages:
            raise SourceError(f"{path}: TIFF holds no pages")
        stored, reduced = [], []
        for page in pages:
            shape = page.shape
            # tifffile shapes are (h, w[, s]) or (s, h, w) for planar pages.
            if getattr(page, "planarconfig", 1) == 2 and len(shape) == 3:
                h, w = shape[1], shape[2]
            else:
                h, w = shape[0], shape[1] if len(shape) > 1 else 1
            stored.append((int(w), int(h)))
            reduced.append(bool(int(getattr(page, "subfiletype", 0) or 0) & 1))
        first = pages[0]
        orientation = _tag(first, "Orientation", 1)
        try:
            orientation = int(orientation)
        except (TypeError, ValueError):
            orientation = 1
        mpp_xy, detail = _tiff_resolution(first, tif)
    fields, previews = _previews(stored, reduced)
    return ImageHeader(path, "tiff", tuple(fields), {i: _oriented(s, orientation) for i, s in enumerate(stored)},
                       tuple(previews), orientation if orientation in range(1, 9) else 1, mpp_xy, detail,
                       decoder="tifffile")


def _tag(page, name: str, default=None):
    tag = page.tags.get(name)
    return default if tag is None else tag.value


def _rational(value) -> float | None:
    try:
        num, den = value
        return float(num) / float(den) if den else None
    except (TypeError, ValueError):
        try:
            return float(value)
        except (TypeError, ValueError):
            return None


def _tiff_resolution(page, tif) -> tuple[tuple[float, float] | None, str]:
    """(across, down) um/px and the tags' literal wording, or (None, "")."""
    xres, yres = _rational(_tag(page, "XResolution")), _rational(_tag(page, "YResolution"))
    unit = int(_tag(page, "ResolutionUnit", 2) or 1)  # TIFF's default unit is the inch
    if not xres or not yres or xres <= 0 or yres <= 0:
        return None, ""
    if unit in _UM_PER_UNIT:
        per = _UM_PER_UNIT[unit]
        res = f"{xres:g}" if abs(xres - yres) < 1e-9 else f"{xres:g} x {yres:g}"
        return (per / xres, per / yres), f"{res} pixels per {_UNIT_NAME[unit]}"
    # ImageJ/Fiji writes unit NONE and the calibration in its description.
    meta = getattr(tif, "imagej_metadata", None) or {}
    unit_name = str(meta.get("unit", "")).strip().lower().replace("\\u00b5", "u")
    if unit_name in ("micron", "microns", "um", "\u00b5m", "\u03bcm", "micrometer", "micrometre"):
        return (1.0 / xres, 1.0 / yres), f"ImageJ calibration {1.0 / xres:g} um per pixel"
    return None, ""


def _pillow_header(path: str) -> ImageHeader:
    from PIL import Image, UnidentifiedImageError

    try:
        unguard_pillow()
        with Image.open(path) as im:
            fmt = (im.format or "image").lower()
            n = int(getattr(im, "n_frames", 1) or 1)
            size = tuple(im.size)
            try:
                orientation = int(im.getexif().get(0x0112, 1) or 1)
            except Exception:  # noqa: BLE001 - a broken EXIF block is not a broken image
                orientation = 1
            sizes = [size]
            for i in range(1, n):
                im.seek(i)
                sizes.append(tuple(im.size))
    except FileNotFoundError:
        raise SourceError(f"{path}: file not found") from None
    except UnidentifiedImageError:
        raise SourceError(f"{path}: cannot decode image (not a format Pillow or tifffile reads); "
                          "re-export it as PNG or JPEG") from None
    except Exception as err:  # noqa: BLE001 - Pillow's plugins raise many types
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise SourceError(f"{path}: cannot decode image ({reason}); re-export it as PNG or JPEG") from None
    if orientation not in range(1, 9):
        orientation = 1
    fields, previews = _previews(sizes, [False] * len(sizes))
    return ImageHeader(path, fmt, tuple(fields), {i: _oriented(s, orientation) for i, s in enumerate(sizes)},
                       tuple(previews), orientation)


def unguard_pillow() -> None:
    """Turn off Pillow's global decompression-bomb guard (a warning at 89 MP, an
    error at 179 MP, raised at open): it refuses stitched microscope fields.
    slideproc applies ``source.max_image_pixels`` itself, from the header,
    before any decode (:func:`slideproc.sources.image_reader.check_pixels`)."""
    from PIL import Image

    Image.MAX_IMAGE_PIXELS = None


def page_name(name: str, page: int) -> str:
    """The output name of page ``page`` (0-based) of file ``name``: ``fields.tif#2`` is the second page."""
    return f"{name}#{page + 1}"
