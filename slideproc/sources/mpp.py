"""Which level-0 resolution (um per pixel) a source is processed at, and why.

:func:`resolve_mpp` is the one place that decides it, for ``detect``, ``run``,
``info`` and ``plan`` alike. Precedence, first that applies:

1. ``"user"``: ``source.mpp_um`` in the config, which ``--mpp`` sets, for
   every input (the user said so for this run);
2. ``"manifest"``: the ``mpp`` column of the source's manifest.csv row;
3. ``"metadata"``: the file's own resolution tags (OpenSlide's
   ``openslide.mpp-x/-y``; a plain TIFF's XResolution/YResolution in inch or
   centimetre; ImageJ's micron calibration). Refused when outside
   :data:`MPP_RANGE_UM` (an image editor's 72 dpi is 352.8 um/px) or when
   across and down differ beyond rounding;
4. ``"estimated"``: from the source's own red cells
   (:func:`slideproc.mpp_estimate.estimate_source_mpp`), when
   ``source.estimate_mpp`` is ``red_cells`` (``--mpp auto``); also, before
   metadata, when the manifest's mpp column says ``auto``. The only branch
   that reads pixels; refused with :class:`MppEstimateError` (one line naming
   the file) when the field holds too few red cells. A sample's fields share
   one value, pooled by the plan (``SourceRef.sample_mpp``);
5. ``"config fallback"``: ``source.fallback_mpp_um``;
6. otherwise :class:`MissingMppError` naming the file and the fixes.

Where 1 or 2 overrides metadata that says something else, the result carries a
one-line ``note`` for the log. Adding a source (e.g. an estimate from the
image) means one more branch here and one more ``source`` name.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..errors import ImplausibleMppError, MissingMppError, NonSquarePixelsError

if TYPE_CHECKING:  # config imports this module's constants; no cycle at run time
    from ..config import SourceConfig
    from .base import SlideReader, SourceRef

# What brightfield microscopes produce: a 100x oil objective on a fine camera
# reaches ~0.03 um/px, a 4x objective ~1.6 um/px (issue 14: "about 0.02-2").
MPP_RANGE_UM = (0.02, 2.0)
# Across and down within this share of each other are the same value written
# with rounding (0.2527 vs 0.2528); beyond it the pixels are not square.
SQUARE_TOLERANCE = 0.01

SOURCES = ("user", "manifest", "metadata", "estimated", "config fallback")


@dataclass(frozen=True)
class ResolvedMpp:
    """A source's level-0 resolution and where it came from.

    ``mpp``: um per pixel (float, > 0). ``source``: one of :data:`SOURCES`.
    ``note``: one line for the log when the chosen value overrides metadata
    that says otherwise (else ""). ``metadata``: what the file itself says,
    (across, down) um/px, or None. ``estimate``: for ``"estimated"``, the
    :class:`~slideproc.mpp_estimate.MppEstimate` (red cells used, spread).
    """

    mpp: float
    source: str
    note: str = ""
    metadata: tuple[float, float] | None = None
    estimate: object | None = None

    def describe(self) -> str:
        """Where the value came from, for ``plan``/``info``: the source name,
        with the red-cell count and interquartile range when estimated."""
        e = self.estimate
        if e is None:
            return self.source
        fields = getattr(e, "fields", 1)
        if fields > 1:
            return (f"estimated from {e.n_cells} red cells in the sample's {fields} fields, "
                    f"fields' IQR {e.low:.4g}-{e.high:.4g}")
        return f"estimated from {e.n_cells} red cells, IQR {e.low:.4g}-{e.high:.4g}"


def metadata_mpp(reader: SlideReader) -> tuple[float, float] | None:
    """(across, down) um/px from the file's metadata, or None when it holds none."""
    xy = getattr(reader, "mpp_xy", None)
    if xy is not None:
        return xy
    value = reader.mpp
    return (float(value), float(value)) if value else None


def _show(xy: tuple[float, float]) -> str:
    x, y = xy
    return f"{x:.4g} um/px" if _square(xy) else f"{x:.4g} x {y:.4g} um/px (across x down)"


def _square(xy: tuple[float, float]) -> bool:
    x, y = xy
    return abs(x - y) <= SQUARE_TOLERANCE * max(x, y)


def plausible(mpp: float) -> bool:
    lo, hi = MPP_RANGE_UM
    return lo <= mpp <= hi


def _estimated(reader: SlideReader, ref: SourceRef, meta) -> ResolvedMpp:
    from ..errors import MppEstimateError
    from ..mpp_estimate import estimate_source_mpp

    if ref.sample_mpp_error:
        raise MppEstimateError(ref.sample_mpp_error)
    # The sample's pooled estimate when the plan made one (mpp_estimate.pool_estimates)
    est = ref.sample_mpp if ref.sample_mpp is not None else estimate_source_mpp(reader, ref)
    note = ""
    if meta is not None:
        note = f"{ref.path}: using {est.mpp:.4g} um/px estimated from red cells (manifest mpp auto); the file says {_show(meta)}"
    return ResolvedMpp(est.mpp, "estimated", note, meta, est)


def resolve_mpp(reader: SlideReader, ref: SourceRef, cfg: SourceConfig) -> ResolvedMpp:
    """The level-0 um/px ``ref`` is processed at (see the module docstring).

    ``reader``: the open source (only its metadata is read; pixels only for
    an estimate);
    ``cfg``: the config's ``source`` section (``mpp_um``, ``estimate_mpp``,
    ``fallback_mpp_um``).
    Raises :class:`ImplausibleMppError` / :class:`NonSquarePixelsError` for
    metadata that cannot be used and nothing given over it, and
    :class:`MissingMppError` when nothing gives a resolution; each names the
    file and the fix (all are ``MissingMppError``, a ``SourceError``).
    """
    meta = metadata_mpp(reader)
    detail = getattr(reader, "mpp_detail", "") or ""
    for value, source, how in ((cfg.mpp_um, "user", "--mpp (source.mpp_um)"),
                               (ref.mpp, "manifest", "the manifest's mpp column")):
        if value:
            value = float(value)
            note = ""
            if source == "user" and ref.mpp and abs(float(ref.mpp) - value) > SQUARE_TOLERANCE * value:
                note = f"{ref.path}: using {value:g} um/px from {how}; the manifest says {float(ref.mpp):g} um/px"
            elif meta is not None and not (_square(meta) and abs(meta[0] - value) <= SQUARE_TOLERANCE * value):
                said = f"{_show(meta)}{f' ({detail})' if detail else ''}"
                note = f"{ref.path}: using {value:g} um/px from {how}; the file says {said}"
            return ResolvedMpp(value, source, note, meta)
    if ref.estimate_mpp and not cfg.mpp_um:
        return _estimated(reader, ref, meta)
    if meta is not None:
        fix = "give the true resolution with --mpp UM or an 'mpp' column in manifest.csv"
        said = f"{_show(meta)}{f' ({detail})' if detail else ''}"
        if not _square(meta):
            raise NonSquarePixelsError(
                f"{ref.path}: pixels are not square ({meta[0]:.4g} um/px across, {meta[1]:.4g} um/px down); "
                f"slideproc does not resample per axis: resample the image to square pixels, or, if the "
                f"metadata is wrong, {fix}")
        value = (meta[0] + meta[1]) / 2  # equal within rounding (checked above)
        if not plausible(value):
            lo, hi = MPP_RANGE_UM
            raise ImplausibleMppError(
                f"{ref.path}: the file's resolution says {said}, which no brightfield microscope produces "
                f"(expected {lo:g}-{hi:g} um/px); {fix}")
        return ResolvedMpp(value, "metadata", "", meta)
    if cfg.estimate_mpp == "red_cells":
        return _estimated(reader, ref, None)
    if cfg.fallback_mpp_um:
        return ResolvedMpp(float(cfg.fallback_mpp_um), "config fallback", "", None)
    raise MissingMppError(
        f"{ref.path}: no resolution (um per pixel) in the file; give it with --mpp UM, "
        "an 'mpp' column in manifest.csv, or source.fallback_mpp_um in the config, or estimate it "
        "from the red cells with --mpp auto (or 'auto' in the manifest's mpp column)"
    )
