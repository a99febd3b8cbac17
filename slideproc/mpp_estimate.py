"""Resolution (um per pixel) of a field that carries none, from the red cells it shows.

Microscope-camera images almost never carry their resolution. Red cells are the
one ruler every blood or marrow film holds: normal red cells are discs of nearly
one size, about 7.5 um across in a dried, stained film (:data:`RBC_DIAMETER_UM`).
So the typical red-cell size is measured in the field's own pixels (no scale
needed) and mpp = 7.5 um / that diameter.

Measuring the typical size without a scale (granulometry, the pattern spectrum
of mathematical morphology: Matheron, Random Sets and Integral Geometry, 1975;
Maragos, IEEE TPAMI 11:701, 1989):

1. Red cells against plasma and glass: the summed optical density (OD against
   the field's glass, :func:`slideproc.segment.glass_level`) above Otsu's
   threshold, computed on the pixels that are neither nuclear nor near-black
   (a camera's black border would otherwise pull the threshold above every
   cell); holes filled (a red cell's pale centre).
2. Nuclear pixels (white cells, erythroblasts) and a 2-px rim around them are
   taken out. Nuclear = detection's default nuclear channel above its Otsu
   threshold (capped at 0.3, the level this estimator was fitted with):
   min(OD_G - OD_B, 5 (OD_R - 0.5 OD_B)), on which red cells read
   low whatever their tint (on OD_R - 0.5 OD_B the grey-violet red cells of
   some cameras read as nuclei and would be lost).
3. The opening transform: each masked pixel's value is the radius of the
   largest disc inside the mask that covers it (openings by discs of radii in
   a 4 % geometric ladder, each a pair of Euclidean distance transforms).
   Every pixel of an isolated disc of radius R gets R, and touching or
   overlapping discs keep their own R (the neck between them does not
   matter, unlike connected components or a watershed); specks, slivers and
   the rims of cut cells get small values.
4. The typical inscribed radius r0: the mode of the area-weighted histogram
   of those values (smoothed over +-1.5 rungs), refined as the median of the
   values within 15 % of it.
5. The whole red cells near that size: the mask cut into one region per cell
   by a watershed of its distance transform (maxima >= 0.7 r0 apart), regions
   clear of the field's edge whose maximum lies within 0.75-1.33 r0; their
   median equivalent (area) diameter.
6. Diameter = the geometric mean of :data:`DIAMETER_PER_RADIUS` x r0 and
   :data:`DIAMETER_PER_AREA_DIAMETER` x that median (the opening reads every
   cell but depends on its shape: a ragged or oval cell's inscribed disc is
   small; the area reads shape-free but from fewer cells); r0's reading alone
   when fewer than 3 whole cells are found.

The two factors turn each reading into the diameter a person boxing the red
cells measures (the longer side of the box: cells are oval, their outline is
ragged, and boxes are drawn with a margin; an ideal disc would give 2 and 1).
They were fitted once, together, to the most fields within 10 % over 225
fields of the TXL-PBC *train* split (60 per source; the box mpp is 7.5 um over
the median longer side of a field's red-cell boxes, as the developer data's
resolutions were set), and are checked on its *val* split (BENCHMARKS.md,
"--mpp auto").

The estimate is refused (:class:`~slideproc.errors.MppEstimateError`, one
line naming the file) when the red cells at the typical size cover less than
``min_red_cells`` cells' worth of area or less than :data:`MIN_COVERAGE` of
the field (a crop around one cell), or the result lies outside
:data:`slideproc.sources.mpp.MPP_RANGE_UM`: a field of blasts without red cells,
a blank field, a thumbnail.

A sample of several fields gets one value, :func:`pool_estimates` (the median of
its fields' estimates), which ``plan`` computes once in the driver
(:mod:`slideproc.plan`) and the workers take from the source references: the
fields share one microscope, a field's own estimate scatters around it, and a
field too poor in red cells to be measured alone takes the sample's value.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .config import SegmentConfig
from .errors import FieldsDisagreeError, MppEstimateError

# Normal red-cell diameter in a dried, stained film, um: 6.7-7.7 um (LabCE,
# "Appearance of the erythrocyte"); ~7.5 um in Bain BJ, Blood Cells: A
# Practical Guide, 5th ed., Wiley-Blackwell 2015; 7.8 um for the cell in
# suspension (Guyton & Hall, Textbook of Medical Physiology, ch. "Red Blood
# Cells, Anemia, and Polycythemia").
RBC_DIAMETER_UM = 7.5
# Box diameter / inscribed radius at the mode, and box diameter / a whole cell's
# equivalent (area) diameter, fitted together on the TXL-PBC train split (module
# docstring). An ideal disc would give 2.0 and 1.0.
DIAMETER_PER_RADIUS = 2.44
DIAMETER_PER_AREA_DIAMETER = 1.25
# Red cells' worth of area at the typical size below which a field is refused.
# Chosen on the TXL-PBC train split: 3 refuses 4 of 225 fields (2 of them
# estimated within 10 %), 5 refuses 13 (10 within 10 %); the count hardly tells
# a good estimate from a bad one (41-44 beyond 10 % at any threshold 1-5).
MIN_RED_CELLS = 3
# Share of the field the red cells at the typical size must cover. A film's
# field is 30-45 % red cells; a crop around one nucleated cell (Matek's 250 px)
# shows fragments of a few, and what it reads as "red cells" are granules and
# cut cells. Chosen on the TXL-PBC train split (10 % keeps 215 of 225 fields,
# 177 of the 181 estimated within 10 %) and every 40th developer Matek crop
# (keeps 17 of the 56 estimates, was 56, of which 9 and 2 within 10 %).
MIN_COVERAGE = 0.10
# A sample's fields are not pooled when one field's own estimate lies further than
# this factor from the median of the others (pool_estimates). On the TXL-PBC
# fields (each source one microscope) in samples of 10, a field lay at most 1.52x
# from the others' median (train, a Raabin field the estimator misread; 99th
# percentile 1.26; val at most 1.35), so 1.5 failed one of the 101 train samples for
# an estimate the median had already outvoted; the oil objectives a differential is read
# with differ by 1.59x (63x / 100x) or more (60x / 100x 1.67, 50x / 100x 2).
POOL_DISAGREEMENT = 1.6
# Whole cells needed for the area reading to count.
_MIN_WHOLE_CELLS = 3
# Fields longer than this (px) are measured on a decimated copy: a red cell
# stays >= ~12 px across on any field the range below admits, and the cost of
# the opening ladder (two distance transforms per rung) stays ~1 s.
_MAX_SIDE_PX = 1024
# The coarse pass's longer side, and the typical radius the fine pass aims at (px).
_COARSE_SIDE_PX, _FINE_RADIUS_PX = 256, 16.0
# The ladder of opening radii, px: from 3 px, 4 % apart.
_R_MIN_PX, _R_STEP = 3.0, 1.04
# The mode is refined over values within this factor of it.
_PEAK_WINDOW = 1.15
# Summed OD (R + G + B) from which a pixel is near-black, not stain.
_BLACK_OD = 2.0
# Nuclear channel used to take white cells out: detection's default channel,
# with the threshold bound (0.3) the estimator's factors were fitted under.
_NUCLEAR = SegmentConfig(nuclear_weights=(0.0, 1.0, -1.0), also_weights=(5.0, 0.0, -2.5),
                         nuclear_threshold_max=0.3)


@dataclass(frozen=True)
class MppEstimate:
    """``mpp``: um/px at level 0 (float). ``n_cells``: red cells' worth of area
    at the typical size (area within 15 % of the mode / the area of one).
    ``low``/``high``: the spread (um/px): the mpp that the whole cells' 75th /
    25th percentile area diameters would give in place of their median (or,
    without whole cells, the opening values between half and twice the mode)."""

    mpp: float
    n_cells: int
    low: float
    high: float

    # How many fields the estimate pools (pool_estimates); 1 for one field's own.
    fields: int = 1

    @property
    def spread(self) -> float:
        """(high - low) / mpp: the interquartile range relative to the estimate."""
        return (self.high - self.low) / self.mpp


def pool_estimates(estimates: dict[str, MppEstimate]) -> MppEstimate:
    """One resolution for a sample's fields: the median of their estimates (taken on
    log mpp, so a field 20 % over weighs as one 20 % under).

    Why pool: a sample is one film under one microscope and camera, so its fields
    share one true resolution; each field's own estimate scatters around it by
    ~6-8 % (TXL-PBC, one source per microscope: standard deviation of a field's
    estimate over its source's median 0.05-0.08), and a field with too few red
    cells of its own, which would fail its whole sample, takes the pooled value.
    Measured with benchmarks/bench_txl.py (BENCHMARKS.md, "--mpp auto"): fields
    within 10 % of their box mpp 79 % -> 82 % on val in samples of 10 fields, none refused.

    ``estimates``: {field path: its own estimate}, at least one. Returns an
    :class:`MppEstimate` with ``n_cells`` summed, ``low``/``high`` the 25th / 75th
    percentiles of the fields' estimates (one field: its own) and ``fields``.
    Raises :class:`~slideproc.errors.FieldsDisagreeError` naming the field whose
    estimate lies furthest from the median of the others, when that is more than
    :data:`POOL_DISAGREEMENT` times: fields taken with different objectives, which
    one value would misread.
    """
    if not estimates:
        raise ValueError("pool_estimates needs at least one field's estimate")
    if len(estimates) == 1:
        return next(iter(estimates.values()))
    names = list(estimates)
    logs = np.log([estimates[k].mpp for k in names])
    mpp = float(np.exp(np.median(logs)))
    # Each field against the median of the others: against a median it is part of, two
    # fields (or a sample split evenly between two objectives) would pass up to 1.6^2 apart.
    others = np.array([np.median(np.delete(logs, i)) for i in range(len(logs))])
    far = np.abs(logs - others)
    i = int(np.argmax(far))
    if np.exp(far[i]) > POOL_DISAGREEMENT:
        raise FieldsDisagreeError(
            f"{names[i]}: its red cells read {np.exp(logs[i]):.3g} um/px against {np.exp(others[i]):.3g} um/px "
            f"for the other {len(names) - 1} field(s) of its sample (more than {POOL_DISAGREEMENT:g}x apart: "
            "another objective?); put fields taken at other magnifications in their own sample (folder), or "
            "give each its mpp in manifest.csv", names[i])
    low, high = np.exp(np.percentile(logs, [25, 75]))
    return MppEstimate(mpp, sum(e.n_cells for e in estimates.values()), float(low), float(high), len(estimates))


def _masks(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(red cells: filled, nuclei and a 2-px rim taken out; nuclear pixels), bool
    (h, w) each, of a uint8 (h, w, 3) field."""
    from skimage.filters import threshold_otsu

    from .segment import estimate_stain, od_table, stain_channels

    rgb = np.asarray(rgb, np.uint8)
    no_blur = 1e6  # mpp so large that smoothing_um / mpp ~ 0: the scale is what is unknown
    stain = estimate_stain([rgb], no_blur, _NUCLEAR)
    nuc, _ = stain_channels(rgb, stain.glass, _NUCLEAR, no_blur)
    nuclear = nuc > stain.threshold
    table = od_table(stain.glass)
    total = table[0][rgb[..., 0]] + table[1][rgb[..., 1]] + table[2][rgb[..., 2]]
    # Near-black pixels (summed OD >= 2, darker than any stained cell: a
    # camera's black border or vignette, a label) would pull Otsu's threshold
    # above every cell; they are neither red cells nor background here.
    dark = total >= _BLACK_OD
    rest = total[~nuclear & ~dark]
    if rest.size < 64:
        return np.zeros(total.shape, bool), nuclear
    rest = rest[:: max(1, rest.size // 200_000)]
    if float(rest.max() - rest.min()) < 1e-6:
        return np.zeros(total.shape, bool), nuclear
    cells = ndimage.binary_fill_holes((total > float(threshold_otsu(rest))) & ~dark)
    return cells & ~ndimage.binary_dilation(nuclear, iterations=2), nuclear


def opening_transform(mask: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Float64 (h, w): per pixel of ``mask``, the largest of ``radii`` (px, ascending)
    whose disc opening keeps it; 0 outside the mask or below the first radius.

    Opening by a disc of radius r = the pixels within r of a point at least r
    inside the mask, so each rung is two Euclidean distance transforms (scipy)
    instead of a structuring-element erosion and dilation, whose cost grows
    with r squared. The field's edge is not background: a cut cell keeps the
    width it shows.
    """
    inside = ndimage.distance_transform_edt(np.pad(mask, 1, mode="edge"))[1:-1, 1:-1]
    value = np.zeros(mask.shape)
    for r in radii:
        core = inside >= r
        if not core.any():
            break
        value[(ndimage.distance_transform_edt(~core) <= r) & mask] = r
    return value


def whole_cell_diameters(mask: np.ndarray, r0: float) -> np.ndarray:
    """Equivalent diameters (float64, px) of the whole red cells of ``mask`` near the typical size.

    The mask is cut into one region per cell by a watershed of its distance
    transform from maxima at least 0.7 r0 apart and 0.6 r0 deep (touching cells
    part at their neck); a region counts when its maximum lies within 0.75-1.33
    r0 and it does not touch the field's edge (a cut cell reads small).
    """
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    dist = ndimage.distance_transform_edt(np.pad(mask, 1, mode="edge"))[1:-1, 1:-1]
    peaks = peak_local_max(dist, min_distance=max(2, int(0.7 * r0)), threshold_abs=0.6 * r0,
                           labels=mask.astype(np.int32))
    if len(peaks) == 0:
        return np.zeros(0)
    markers = np.zeros(mask.shape, np.int32)
    markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
    regions = watershed(-dist, markers, mask=mask)
    h, w = mask.shape
    areas = np.bincount(regions.ravel(), minlength=len(peaks) + 1)
    out = []
    for i, sl in enumerate(ndimage.find_objects(regions, max_label=len(peaks)), start=1):
        if sl is None or sl[0].start == 0 or sl[1].start == 0 or sl[0].stop == h or sl[1].stop == w:
            continue
        if 0.75 * r0 <= dist[tuple(peaks[i - 1])] <= 1.33 * r0:
            out.append(2.0 * np.sqrt(areas[i] / np.pi))
    return np.asarray(out, np.float64)


def _typical_radius(mask: np.ndarray, rung: float, r_max: float):
    """(r0 px, opening values within 15 % of the mode, all positive opening values)
    of a red-cell mask, or None when the mask holds nothing (module docstring, 3-4)."""
    radii = _R_MIN_PX * rung ** np.arange(200)
    radii = radii[(radii < min(mask.shape) / 3) & (radii <= r_max)]
    if not len(radii):
        return None
    values = opening_transform(mask, radii)[mask]
    values = values[values > 0]
    if values.size == 0:
        return None
    hist = np.bincount(np.searchsorted(radii, values), minlength=len(radii)).astype(np.float64)
    mode = radii[int(np.argmax(ndimage.gaussian_filter1d(hist, 1.5)))]
    near = values[(values >= mode / _PEAK_WINDOW) & (values <= mode * _PEAK_WINDOW)]
    return float(np.median(near)), near, values


_FIX = "give the resolution with --mpp UM or an 'mpp' column in manifest.csv"


def _refused(where: str, reason: str) -> MppEstimateError:
    return MppEstimateError(f"{where}: cannot estimate the resolution from red cells: {reason}; {_FIX}", reason=reason)


def estimate_mpp(rgb: np.ndarray, min_red_cells: int = MIN_RED_CELLS, where: str = "field") -> MppEstimate:
    """mpp (um/px) of one uint8 (h, w, 3) field from its red cells (module docstring).

    Raises :class:`MppEstimateError` naming ``where`` when the red cells at
    the typical size cover less than ``min_red_cells`` cells' worth of area,
    or the estimate lies outside the plausible range.
    """
    from .sources.mpp import MPP_RANGE_UM

    rgb = np.asarray(rgb, np.uint8)
    # Two passes, for speed: the ladder costs two distance transforms per rung
    # over every pixel, and a field at full size is ~30x the cost of detecting
    # it. A coarse pass (longer side <= 256 px, 8 % rungs) finds the typical
    # radius; the fine pass decimates so that it is ~16-32 px (enough for 4 %
    # rungs), and stops the ladder at 3x it.
    step_c = max(1, int(np.ceil(max(rgb.shape[:2]) / _COARSE_SIDE_PX)))
    coarse = _typical_radius(_masks(np.ascontiguousarray(rgb[::step_c, ::step_c]))[0], _R_STEP * _R_STEP, np.inf)
    if coarse is None:
        raise _refused(where, "none found")
    r_level0 = coarse[0] * step_c
    step = max(1, int(r_level0 / _FINE_RADIUS_PX), int(np.ceil(max(rgb.shape[:2]) / _MAX_SIDE_PX)))
    mask, _ = _masks(np.ascontiguousarray(rgb[::step, ::step]))
    fine = _typical_radius(mask, _R_STEP, 3.0 * r_level0 / step)
    if fine is None:
        raise _refused(where, "none found")
    r0, near, values = fine
    n_cells = int(near.size / (np.pi * r0 * r0))
    if n_cells < min_red_cells:
        raise _refused(where, f"found {n_cells} at a typical size, need {min_red_cells}")
    coverage = near.size / mask.size
    if coverage < MIN_COVERAGE:
        # floor, not round: 9.7 % must not read "10 %, need 10 %"
        shown = math.floor(1000 * coverage) / 10
        raise _refused(where, f"red cells of a typical size cover {shown:.1f} % of the field, need "
                              f"{100 * MIN_COVERAGE:.0f} % (a crop around one cell, or no film)")
    # Two readings of the size, in level-0 px: the opening mode (every red cell,
    # touching or not, but shape-dependent: a ragged or oval cell's inscribed
    # disc is small) and the whole cells' equivalent diameter (area-based,
    # fewer cells); their geometric mean, or the first where < 3 whole cells.
    by_opening = DIAMETER_PER_RADIUS * r0 * step
    whole = whole_cell_diameters(mask, r0) * step
    if len(whole) >= _MIN_WHOLE_CELLS:
        diameter = float(np.sqrt(by_opening * DIAMETER_PER_AREA_DIAMETER * np.median(whole)))
        # the spread: the same mean with the whole cells' quartiles in place of their median
        q25, q75 = np.sqrt(by_opening * DIAMETER_PER_AREA_DIAMETER * np.percentile(whole, [25, 75]))
    else:
        diameter = by_opening
        wide = values[(values >= r0 / 2) & (values <= r0 * 2)]
        q25, q75 = np.percentile(wide, [25, 75]) * DIAMETER_PER_RADIUS * step
    est = MppEstimate(RBC_DIAMETER_UM / diameter, n_cells, RBC_DIAMETER_UM / float(q75),
                      RBC_DIAMETER_UM / float(q25))
    lo, hi = MPP_RANGE_UM
    if not lo <= est.mpp <= hi:
        raise MppEstimateError(f"{where}: red cells give {est.mpp:.3g} um/px, outside the plausible "
                               f"{lo:g}-{hi:g} um/px; {_FIX}",
                               reason=f"{est.mpp:.3g} um/px, outside the plausible {lo:g}-{hi:g} um/px")
    return est


# A slide without a resolution is measured on a window this size (level-0 px)
# at its centre, where a smear's monolayer usually lies; an image field whole.
_SLIDE_WINDOW_PX = 2048
_cache: dict = {}


def estimate_source_mpp(reader, ref, min_red_cells: int = MIN_RED_CELLS) -> MppEstimate:
    """The red-cell estimate for one open source (``reader`` of ``ref``).

    An image field is measured whole (decimated above 1,024 px a side); a
    slide on a 2,048 px window of level 0 at its centre. Cached per file
    (path, page, size, modification time), because ``plan``, ``detect`` and
    every worker resolve the same source. Raises :class:`MppEstimateError`
    naming the file.
    """
    try:
        stat = os.stat(ref.path)
        key = (ref.path, ref.page, stat.st_size, stat.st_mtime_ns, min_red_cells)
    except OSError:
        key = None
    if key is not None and key in _cache:
        return _cache[key]
    w, h = reader.dimensions
    if ref.reader == "image":
        x, y, ww, hh = 0, 0, w, h
    else:
        ww, hh = min(w, _SLIDE_WINDOW_PX), min(h, _SLIDE_WINDOW_PX)
        x, y = (w - ww) // 2, (h - hh) // 2
    est = estimate_mpp(reader.read_region((x, y), 0, (ww, hh)), min_red_cells, where=ref.path)
    if key is not None:
        if len(_cache) > 256:
            _cache.clear()
        _cache[key] = est
    return est
