"""Reader for every format OpenSlide opens (svs, ndpi, mrxs, scn, generic TIFF, DICOM, ...)."""

from __future__ import annotations

import numpy as np

from ..errors import SourceError
from .base import PAD_VALUE

# Formats OpenSlide can read. A .tif/.tiff may also be a plain image; those go
# to the image reader when OpenSlide does not recognise them.
SLIDE_SUFFIXES = frozenset(
    {".svs", ".tif", ".tiff", ".ndpi", ".vms", ".vmu", ".scn", ".mrxs", ".svslide", ".bif", ".dcm"}
)


def detect_format(path: str) -> str | None:
    import openslide

    try:
        return openslide.OpenSlide.detect_format(path)
    except Exception:  # unreadable header: the open will say why
        return None


class OpenSlideReader:
    name = "openslide"

    def __init__(self, path: str):
        import openslide

        self.path = str(path)
        try:
            self._slide = openslide.OpenSlide(self.path)
        except openslide.OpenSlideUnsupportedFormatError:
            raise SourceError(
                f"{self.path}: not a slide format OpenSlide can read "
                "(convert it to a pyramidal TIFF, or put plain images in an image folder)"
            ) from None
        except openslide.OpenSlideError as err:
            raise SourceError(f"{self.path}: OpenSlide cannot open it: {err}") from None
        except OSError as err:
            raise SourceError(f"{self.path}: cannot open: {err.strerror or err}") from None
        props = self._slide.properties
        self.format = props.get("openslide.vendor", "unknown")

    @property
    def dimensions(self) -> tuple[int, int]:
        return tuple(self._slide.dimensions)

    @property
    def level_count(self) -> int:
        return self._slide.level_count

    @property
    def level_dimensions(self) -> tuple[tuple[int, int], ...]:
        return tuple(tuple(d) for d in self._slide.level_dimensions)

    @property
    def level_downsamples(self) -> tuple[float, ...]:
        return tuple(float(d) for d in self._slide.level_downsamples)

    @property
    def mpp_xy(self) -> tuple[float, float] | None:
        """(across, down) level-0 um/px from the slide's metadata, or None.
        One axis given alone stands for both (some scanners write only mpp-x)."""
        import openslide

        props = self._slide.properties
        values = []
        for key in (openslide.PROPERTY_NAME_MPP_X, openslide.PROPERTY_NAME_MPP_Y):
            try:
                value = float(props[key])
            except (KeyError, ValueError):
                value = None
            values.append(value if value is not None and value > 0 else None)
        x, y = values
        if x is None and y is None:
            return None
        return (x or y, y or x)

    @property
    def mpp(self) -> float | None:
        """Mean of :attr:`mpp_xy` (sources.mpp.resolve_mpp refuses unequal axes)."""
        xy = self.mpp_xy
        return float(np.mean(xy)) if xy else None

    @property
    def mpp_detail(self) -> str:
        """What a TIFF's resolution tags say, e.g. "72 pixels per inch" ("" otherwise)."""
        props = self._slide.properties
        unit, xres = props.get("tiff.ResolutionUnit"), props.get("tiff.XResolution")
        if unit in ("inch", "centimeter") and xres:
            try:
                return f"{float(xres):g} pixels per {'centimetre' if unit == 'centimeter' else 'inch'}"
            except ValueError:
                return ""
        return ""

    @property
    def objective_power(self) -> float | None:
        import openslide

        try:
            return float(self._slide.properties[openslide.PROPERTY_NAME_OBJECTIVE_POWER])
        except (KeyError, ValueError):
            return None

    def read_region(self, location: tuple[int, int], level: int, size: tuple[int, int]) -> np.ndarray:
        import openslide

        w, h = int(size[0]), int(size[1])
        if w <= 0 or h <= 0:
            if w < 0 or h < 0:
                raise SourceError(f"{self.path}: region size must not be negative, got {size}")
            return np.full((h, w, 3), PAD_VALUE, dtype=np.uint8)
        x, y = int(location[0]), int(location[1])
        if level > 0 and (x < 0 or y < 0):
            # Left of or above a downsampled level, OpenSlide floors the offset
            # (location -4 at downsample 4.016 starts on level pixel 0, not -1):
            # read the part inside the slide and place it here.
            d = self.level_downsamples[level]
            ox, oy = round(max(-x, 0) / d), round(max(-y, 0) / d)
            out = np.full((h, w, 3), PAD_VALUE, dtype=np.uint8)
            if ox < w and oy < h:
                out[oy:, ox:] = self.read_region((max(x, 0), max(y, 0)), level, (w - ox, h - oy))
            return out
        try:
            rgba = np.asarray(self._slide.read_region((x, y), level, (w, h)))
        except openslide.OpenSlideError as err:
            raise SourceError(f"{self.path}: cannot read tiles (corrupt file?): {err}") from None
        if rgba[..., 3].min() == 255:
            return np.ascontiguousarray(rgba[..., :3])
        # Transparent = outside the scanned area: composite onto white glass.
        rgb = rgba[..., :3].astype(np.uint16)
        alpha = rgba[..., 3:4].astype(np.uint16)
        out = (rgb * alpha + PAD_VALUE * (255 - alpha) + 127) // 255
        return out.astype(np.uint8)

    def close(self) -> None:
        self._slide.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
