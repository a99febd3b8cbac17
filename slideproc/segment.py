"""Nucleated-cell candidates in one RGB tile of a Romanowsky-type (MGG/Pappenheim) smear.

A pure function of arrays: ``segment_tile(rgb, mpp, cfg)``. Every size is given
in micrometres and turned into pixels here from ``mpp``, so one config serves
any resolution.

Method:

1. Stain. Optical density per channel against the glass level (fixed per
   source by ``estimate_stain``, so every tile is cut alike; brightness does
   not matter). Nuclear channel = min(OD_G - OD_B, 5 (OD_R - 0.5 OD_B))
   (``nuclear_weights``, ``also_weights``): ~0.2-0.8 in nuclei, whether they
   stain blue-purple or magenta; ~0-0.1 in red cells, pink or grey-violet,
   which absorb blue about as much as green; ~0 in eosin, which absorbs no
   red light (BENCHMARKS.md, TXL-PBC: four microscopes, cameras and stains).
2. Threshold. Otsu on the stained pixels' nuclear channel, clamped to
   ``nuclear_threshold_min/max`` so a source with few nuclei cannot adapt
   down to red cells. Blobs larger than a nucleus (a blast in deep-blue
   cytoplasm) are thresholded again on their own pixels when clearly two-level
   and the darker part lies inside the blob (a darker rim is deep-blue
   cytoplasm around a paler nucleus: such a blob is kept whole).
3. Split. Touching nuclei form one blob with a waist: maxima of its distance
   transform with an inscribed radius >= ``min_nucleus_radius_um`` seed a
   watershed; splits whose neck is not a waist (a bean-shaped nucleus) are undone.
4. Group. Lobes of a segmented neutrophil/band/eosinophil are separate pieces
   a few um apart in one cytoplasm: pieces within ``lobe_merge_distance_um``
   whose gap is cytoplasm (not glass, not a red cell) are one cell while the
   group spans <= ``max_lobed_extent_um``; pieces too small to be a nucleus
   (granule clumps, a platelet lying on a cell) join their neighbour anyway.
5. Filter and measure. Groups outside [min, max]_nucleus_area_um2, nowhere
   ``min_nuclear_contrast`` above the threshold, or smaller than
   ``small_nucleus_um2`` and paler on average than ``small_nucleus_min_od``
   (a platelet clump; small nuclei are the densest) are dropped. Where the
   threshold sits above ``pale_nucleus_threshold`` (a field dense with dark
   nuclei), steps 2-5 run again at that level on its blobs that hold no
   nucleus kept so far (or are big enough to be cut again), and the cells
   found there that touch no kept nucleus are added: pale blast, monocyte and
   lymphocyte nuclei that the field's threshold misses. The cell mask is
   the nucleus grown through cytoplasm by <= ``cytoplasm_um`` (nearest
   nucleus wins between touching cells); it gives the centre, box and area.

Speed: OD by table look-up, one blur, one labelling of the blobs, one
distance transform with indices (in windows around the nuclei) shared by
grouping and cell masks; ~0.11 s per 1,144 px synthetic-smear tile on one core
(benchmarks/bench_tile_malloc.py).
The pale-level pass (only above ``pale_nucleus_threshold``) works in the box
around its candidate blobs; where it runs it adds up to ~60-100 % to a tile.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from .config import SegmentConfig


@dataclass(frozen=True)
class SegmentResult:
    """Cells of one tile. Coordinates are tile pixels (x right, y down).

    ``labels`` is int32 (h, w): 0 background, i + 1 the cell mask of cell i.
    ``centroid`` float64 (N, 2) x, y of the nucleus (all lobes together);
    ``bbox`` int64 (N, 4) x0, y0, x1, y1 of the cell mask (x1, y1 exclusive);
    ``area_um2`` float64 (N,) area of the cell mask; ``nucleus_area_um2`` (N,).
    """

    labels: np.ndarray
    centroid: np.ndarray
    bbox: np.ndarray
    area_um2: np.ndarray
    nucleus_area_um2: np.ndarray

    def __len__(self) -> int:
        return len(self.area_um2)


@dataclass(frozen=True)
class Stain:
    """What segmentation adapts to, fixed per source so that every tile of a
    slide is cut the same way (results then do not depend on the tile size).

    ``glass``: RGB level of blank glass (OD reference); ``threshold``: the
    nuclear-channel threshold.
    """

    glass: tuple[float, float, float]
    threshold: float


def _empty(shape: tuple[int, int]) -> SegmentResult:
    return SegmentResult(
        labels=np.zeros(shape, np.int32),
        centroid=np.zeros((0, 2), np.float64),
        bbox=np.zeros((0, 4), np.int64),
        area_um2=np.zeros(0, np.float64),
        nucleus_area_um2=np.zeros(0, np.float64),
    )


# ----------------------------------------------------------------------------
# stain
# ----------------------------------------------------------------------------
def glass_level(rgb: np.ndarray) -> tuple[float, float, float]:
    """RGB of blank glass: the 99th percentile per channel.

    A field with no glass (dense) gets its brightest pixels: OD is then
    relative, which the adaptive threshold absorbs. Dim illumination still
    has glass well above 60/255; below that the guess is floored.
    """
    flat = np.asarray(rgb).reshape(-1, 3)
    step = max(1, flat.shape[0] // 65536)  # a sample is enough for a percentile
    glass = np.maximum(np.percentile(flat[::step], 99.0, axis=0), 60.0)
    return (float(glass[0]), float(glass[1]), float(glass[2]))


def od_table(glass) -> np.ndarray:
    """Float64 (3, 256): optical density of each 8-bit level per channel against
    the ``glass`` RGB (Beer-Lambert, log10(I0 / I), +1 for level 0), floored at 0."""
    glass = np.asarray(glass, np.float64)
    levels = np.arange(256, dtype=np.float64)
    return np.clip(np.log10((glass[:, None] + 1.0) / (levels[None, :] + 1.0)), 0.0, None)


def stain_channels(rgb: np.ndarray, glass, cfg: SegmentConfig, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """(nuclear channel, stained mask) of a uint8 tile, as segmentation sees them.

    OD comes from a 256-entry table per channel, already multiplied by the
    channel's weight (no per-pixel logarithm or product), and only the nuclear
    channel is blurred (``smoothing_um``): a tile costs two or three table
    look-ups and one filter.

    Nuclear channel = ``nuclear_weights`` . (OD_R, OD_G, OD_B), by default
    OD_G - OD_B: haemoglobin absorbs blue (its Soret band) about as much as
    green, chromatin green far more, so red cells read low whether they stain
    pink or grey-violet (on OD_R - 0.5 OD_B, the channel before issue 15, the
    grey-violet ones absorb red light and read as high as nuclei, and magenta
    nuclei read low). Eosin and stacked pink red cells read high on OD_G - OD_B
    too, so ``also_weights`` names a second channel a nucleus must stand out on
    as well, by default 5 (OD_R - 0.5 OD_B): the nuclear channel is the
    pixelwise minimum of the two. ``also_weights`` empty: one channel
    (configs/od-red-channel.yaml, for H&E sections).
    """
    glass = np.asarray(glass, np.float64)
    od = od_table(glass)
    rgb = np.asarray(rgb, dtype=np.uint8)
    nuc = _weighted_od(rgb, od, cfg.nuclear_weights)
    if cfg.also_weights:
        np.minimum(nuc, _weighted_od(rgb, od, cfg.also_weights), out=nuc)
    sigma = cfg.smoothing_um / mpp
    if sigma > 0.3:
        nuc = ndimage.gaussian_filter(nuc, sigma, mode="nearest", truncate=3.0)
    # Stained: any channel's OD above stained_min_od, i.e. darker than the
    # glass by that factor: an integer comparison per channel.
    cut = np.floor((glass + 1.0) / 10.0 ** cfg.stained_min_od - 1.0)
    stained = (rgb[..., 0] < cut[0]) | (rgb[..., 1] < cut[1]) | (rgb[..., 2] < cut[2])
    return nuc, stained


def _weighted_od(rgb: np.ndarray, od: np.ndarray, w) -> np.ndarray:
    """float32 (h, w) sum of w[c] * OD_c by table look-up (``od``: (3, 256) OD per level)."""
    lut = (od * np.asarray(w, np.float64)[:, None]).astype(np.float32)
    out = None
    for c in range(3):
        if w[c] == 0.0:
            continue
        if out is None:
            out = lut[c][rgb[..., c]]
        else:
            out += lut[c][rgb[..., c]]
    return out


def nuclear_threshold(nuc: np.ndarray, stained: np.ndarray, cfg: SegmentConfig) -> float:
    """Otsu on the stained pixels' nuclear channel, clamped to the configured bounds."""
    from skimage.filters import threshold_otsu

    values = nuc[stained]
    if values.size < 64:
        return cfg.nuclear_threshold_max
    step = max(1, values.size // 200_000)
    values = values[::step]
    if float(values.max() - values.min()) < 1e-6:
        return cfg.nuclear_threshold_max
    t = float(threshold_otsu(values))
    return float(min(max(t, cfg.nuclear_threshold_min), cfg.nuclear_threshold_max))


# ----------------------------------------------------------------------------
# split and group
# ----------------------------------------------------------------------------
def _refine_large(mask: np.ndarray, nuc: np.ndarray, t: float, cfg: SegmentConfig, mpp: float,
                  labels: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Re-threshold blobs larger than ``max_single_nucleus_area_um2`` with Otsu on
    their own pixels, twice at most: deep-blue cytoplasm crosses the tile
    threshold, but the nucleus inside it is darker still.

    ``labels``: the blobs of ``mask`` labelled, when the caller has them.
    Returns the mask and its labels (None when the last cut changed it):
    labelling a whole tile is one of the costlier steps, so it is done once
    where nothing changes."""
    from skimage.filters import threshold_otsu

    big_px = cfg.max_single_nucleus_area_um2 / (mpp * mpp)
    hole_px = cfg.max_hole_um2 / (mpp * mpp)
    keep_px = cfg.min_nucleus_area_um2 / (mpp * mpp)
    for _ in range(2):
        if labels is None:
            labels, _ = ndimage.label(mask)
        sizes = np.bincount(labels.ravel())
        big = np.flatnonzero(sizes > big_px)
        big = big[big > 0]
        if big.size == 0:
            return mask, labels
        changed = False
        slices = ndimage.find_objects(labels)
        for i in big:
            sl = slices[i - 1]
            comp = labels[sl] == i
            vals = nuc[sl][comp]
            tl = float(threshold_otsu(vals))
            # Only a real two-level blob (nucleus clearly darker) is cut again.
            hi, lo = vals[vals > tl], vals[vals <= tl]
            if hi.size == 0 or lo.size == 0 or hi.mean() - lo.mean() < cfg.min_refine_contrast:
                continue
            inner = comp & (nuc[sl] > tl)
            inner = binary_opening(inner, _disk(0.5 / mpp))
            inner = _fill_small_holes(inner, hole_px)
            # Chromatin clumps alone are not a nucleus: the cut must keep a
            # nucleus-sized share of the blob (N:C of 0.3 or more).
            if inner.sum() < max(keep_px, cfg.min_refine_fraction * comp.sum()):
                continue
            # A nucleus lies inside its cytoplasm: a darker part that sits
            # nearer the blob's edge than the rest is a rim of deep-blue
            # cytoplasm around a paler (blast) nucleus, not a nucleus.
            depth = _depth(comp, sl, mask.shape)
            rest = comp & ~inner
            if rest.any() and depth[inner].mean() < depth[rest].mean():
                continue
            sub = mask[sl]
            sub[comp] = inner[comp]
            changed = True
        if not changed:
            return mask, labels
        labels = None
    return mask, None


def _depth(comp: np.ndarray, sl, shape) -> np.ndarray:
    """Distance of each pixel of ``comp`` (the blob in its box ``sl``) to the
    blob's edge; the tile's own border is not an edge (the blob goes on)."""
    pad = np.pad(comp, 1)
    if sl[0].start == 0:
        pad[0] = pad[1]
    if sl[0].stop == shape[0]:
        pad[-1] = pad[-2]
    if sl[1].start == 0:
        pad[:, 0] = pad[:, 1]
    if sl[1].stop == shape[1]:
        pad[:, -1] = pad[:, -2]
    return ndimage.distance_transform_edt(pad)[1:-1, 1:-1]


def _fill_small_holes(mask: np.ndarray, max_px: float) -> np.ndarray:
    """Fill holes up to ``max_px`` (pale nucleoli, chromatin gaps). Larger
    enclosed spaces are glass or red cells ringed by cells: filling those would
    make a blob that depends on how far the tile reaches, so they stay open.
    A hole is a background component (4-connected) not touching the border."""
    lab, n = ndimage.label(~mask)
    if n <= 1:
        return mask
    small = np.bincount(lab.ravel(), minlength=n + 1) <= max_px
    small[0] = False
    border = np.concatenate([lab[0], lab[-1], lab[:, 0], lab[:, -1]])
    small[border] = False
    return mask | small[lab]


def _disk(radius_px: float) -> np.ndarray:
    r = max(0, int(round(radius_px)))
    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    return (xx * xx + yy * yy) <= r * r + 0.25


def binary_opening(mask: np.ndarray, structure: np.ndarray) -> np.ndarray:
    """``scipy.ndimage.binary_opening(mask, structure)`` (outside the array
    counts as background) as AND/OR of shifted views, one per element of the
    small, symmetric ``structure``: the same pixels, ~20x faster than scipy's
    general erosion and dilation on a 1,144 px tile."""
    r = structure.shape[0] // 2
    offsets = [(dy - r, dx - r) for dy, dx in zip(*np.nonzero(structure))]
    h, w = mask.shape
    pad = np.zeros((h + 2 * r, w + 2 * r), bool)
    pad[r:r + h, r:r + w] = mask
    eroded = np.ones((h, w), bool)
    for dy, dx in offsets:
        eroded &= pad[r + dy:r + dy + h, r + dx:r + dx + w]
    pad[r:r + h, r:r + w] = eroded
    out = np.zeros((h, w), bool)
    for dy, dx in offsets:
        out |= pad[r + dy:r + dy + h, r + dx:r + dx + w]
    return out


def _split_touching(mask: np.ndarray, r_min_px: float, labels: np.ndarray | None = None) -> np.ndarray:
    """Label image of ``mask`` with touching round nuclei split by a distance
    watershed (``labels``: ``mask`` already labelled, if at hand)."""
    from skimage.segmentation import watershed

    if labels is None:
        labels, _ = ndimage.label(mask)
    if not labels.any():
        return np.zeros(mask.shape, np.int32)
    out = np.zeros_like(labels)
    next_label = 1
    slices = ndimage.find_objects(labels)
    pad = 2
    for i, sl in enumerate(slices, start=1):
        if sl is None:
            continue
        y0, x0 = max(sl[0].start - pad, 0), max(sl[1].start - pad, 0)
        y1, x1 = min(sl[0].stop + pad, mask.shape[0]), min(sl[1].stop + pad, mask.shape[1])
        comp = labels[y0:y1, x0:x1] == i
        h, w = comp.shape
        # Only a blob wider than two nuclei can hold two of them.
        if max(h, w) < 4 * r_min_px:
            out[y0:y1, x0:x1][comp] = next_label
            next_label += 1
            continue
        dist = ndimage.distance_transform_edt(comp)
        size = max(3, int(2 * r_min_px) | 1)
        peaks = (dist == ndimage.maximum_filter(dist, size=size)) & (dist >= r_min_px)
        # Plateaus give several adjacent peak pixels: one marker per plateau.
        markers, n_markers = ndimage.label(peaks, structure=np.ones((3, 3)))
        if n_markers <= 1:
            out[y0:y1, x0:x1][comp] = next_label
            next_label += 1
            continue
        ws = watershed(-dist, markers, mask=comp)
        ws = _merge_wide_necks(ws, dist, n_markers)
        for k in np.unique(ws[comp]):
            out[y0:y1, x0:x1][ws == k] = next_label
            next_label += 1
    return out


def _root(parent: list[int], a: int) -> int:
    """Union-find root of ``a`` (with path halving); ``parent`` maps label -> parent label."""
    while parent[a] != a:
        parent[a] = parent[parent[a]]
        a = parent[a]
    return a


def _merge_wide_necks(ws: np.ndarray, dist: np.ndarray, n: int) -> np.ndarray:
    """Undo splits whose shared border is not a waist (kidney-shaped or folded nuclei).

    Two nuclei touching leave a neck narrower than ~70 % of the smaller one's
    inscribed radius; a single bean-shaped nucleus does not narrow that much.
    """
    peak = ndimage.maximum(dist, ws, index=np.arange(1, n + 1))
    parent = list(range(n + 1))

    # Neck half-width between each pair of touching regions: the largest
    # distance value on their shared border.
    necks: dict[tuple[int, int], float] = {}
    for axis in (0, 1):
        a = ws.take(np.arange(ws.shape[axis] - 1), axis=axis)
        b = ws.take(np.arange(1, ws.shape[axis]), axis=axis)
        da = dist.take(np.arange(dist.shape[axis] - 1), axis=axis)
        db = dist.take(np.arange(1, dist.shape[axis]), axis=axis)
        sel = (a != b) & (a > 0) & (b > 0)
        for la, lb, v in zip(a[sel], b[sel], np.minimum(da[sel], db[sel])):
            key = (min(la, lb), max(la, lb))
            if v > necks.get(key, 0.0):
                necks[key] = float(v)
    for (la, lb), neck in necks.items():
        if neck >= 0.7 * min(peak[la - 1], peak[lb - 1]):
            ra, rb = _root(parent, la), _root(parent, lb)
            if ra != rb:
                parent[rb] = ra
    lut = np.array([_root(parent, i) for i in range(n + 1)], dtype=ws.dtype)
    return lut[ws]


def _group_lobes(frag: np.ndarray, nearest: np.ndarray, dist: np.ndarray, cytoplasm: np.ndarray,
                 cfg: SegmentConfig, mpp: float) -> np.ndarray:
    """Fragment -> cell look-up table: fragments that share one cytoplasm are one cell.

    ``nearest``/``dist``: for each pixel, the closest fragment and its distance.
    """
    n = int(frag.max())
    lut_identity = np.arange(n + 1, dtype=np.int32)
    if n <= 1 or cfg.lobe_merge_distance_um <= 0:
        return lut_identity
    half_gap = cfg.lobe_merge_distance_um / 2.0 / mpp
    # Each fragment grown by half the merge distance, through cytoplasm only:
    # the gap between lobes must be cytoplasm, not glass or a red cell.
    grown = np.where((dist <= half_gap) & (cytoplasm | (frag > 0)), nearest, 0)
    pairs: set[tuple[int, int]] = set()
    for a, b in ((grown[:-1], grown[1:]), (grown[:, :-1], grown[:, 1:])):  # vertical, horizontal neighbours
        sel = (a != b) & (a > 0) & (b > 0)
        if sel.any():
            lo = np.minimum(a[sel], b[sel]).astype(np.int64)
            hi = np.maximum(a[sel], b[sel]).astype(np.int64)
            for code in np.unique(lo * (n + 1) + hi).tolist():
                pairs.add((code // (n + 1), code % (n + 1)))
    if not pairs:
        return lut_identity
    slices = ndimage.find_objects(frag)
    box = {i + 1: [s[1].start, s[0].start, s[1].stop, s[0].stop] for i, s in enumerate(slices) if s is not None}
    area = np.bincount(frag.ravel(), minlength=n + 1)
    parent = list(range(n + 1))

    max_extent = cfg.max_lobed_extent_um / mpp
    max_area = cfg.max_nucleus_area_um2 / (mpp * mpp)
    satellite = cfg.satellite_area_um2 / (mpp * mpp)
    # Closest pairs first: lobes of one cell are nearer each other than a
    # neighbour's nucleus is. Ties broken by label pair, so the order (and
    # the result) does not depend on anything outside the two fragments.
    cy, cx = _centroids(frag, n)
    order = sorted(pairs, key=lambda p: ((cx[p[0]] - cx[p[1]]) ** 2 + (cy[p[0]] - cy[p[1]]) ** 2, p))
    for la, lb in order:
        ra, rb = _root(parent, la), _root(parent, lb)
        if ra == rb:
            continue
        ba, bb = box[ra], box[rb]
        u = [min(ba[0], bb[0]), min(ba[1], bb[1]), max(ba[2], bb[2]), max(ba[3], bb[3])]
        # A piece too small to be a nucleus (a granule clump, a pinched-off
        # lobe, a platelet lying on the cell) joins its neighbour whatever
        # the span; two nucleus-sized pieces only while they span one cell.
        small = min(area[ra], area[rb]) < satellite
        if (not small and max(u[2] - u[0], u[3] - u[1]) > max_extent) or area[ra] + area[rb] > max_area:
            continue
        parent[rb] = ra
        box[ra] = u
        area[ra] += area[rb]
    return np.array([_root(parent, i) for i in range(n + 1)], dtype=np.int32)


def _centroids(labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(cy, cx) per label 0..n (pixel-centre convention); 0 for empty labels."""
    flat = labels.ravel()
    fg = np.flatnonzero(flat)
    lab = flat[fg]
    w = labels.shape[1]
    cnt = np.bincount(lab, minlength=n + 1).astype(np.float64)
    sy = np.bincount(lab, weights=(fg // w).astype(np.float64), minlength=n + 1)
    sx = np.bincount(lab, weights=(fg % w).astype(np.float64), minlength=n + 1)
    cnt[cnt == 0] = 1
    return sy[: n + 1] / cnt[: n + 1], sx[: n + 1] / cnt[: n + 1]


def _reach_px(cfg: SegmentConfig, mpp: float) -> float:
    """How far from a fragment its distance is ever read: lobe grouping
    (half the merge distance) and the cell mask (cytoplasm_um)."""
    return max(cfg.lobe_merge_distance_um / 2.0, cfg.cytoplasm_um) / mpp


def nearest_fragment(frag: np.ndarray, reach_px: float) -> tuple[np.ndarray, np.ndarray]:
    """(dist, nearest): for every pixel, the Euclidean distance to the nearest
    fragment pixel (``frag`` > 0) and that fragment's label; exact wherever the
    distance is <= ``reach_px``. Beyond, where nothing reads them, ``dist`` is
    only known to exceed the reach (inf, label 0, where no window reached).

    Why windows: a smear tile is mostly glass and red cells, and a distance
    transform with indices over all of it cost ~30 % of segmentation. Each
    fragment's box grown by the reach, merged with the boxes it overlaps, is
    transformed on its own and the results are combined nearest-wins. Exact:
    a pixel within reach of fragment F lies in F's grown box, so the window
    holding F gives its true distance, and any window gives a real distance
    to some fragment pixel, never a shorter one. Dense fields, whose windows
    cover most of the tile, take one transform of the whole.
    """
    shape = frag.shape
    windows = _merged_boxes(ndimage.find_objects(frag), int(np.ceil(reach_px)) + 1, shape)
    if sum((y1 - y0) * (x1 - x0) for y0, x0, y1, x1 in windows) > 0.5 * frag.size:
        # Dense: one transform of the whole, returned as it is (filling and
        # combining whole-tile arrays nearest-wins cost ~20 % more here).
        d, (iy, ix) = ndimage.distance_transform_edt(frag == 0, return_indices=True)
        return d, frag[iy, ix]
    dist = np.full(shape, np.inf)
    nearest = np.zeros(shape, frag.dtype)
    for y0, x0, y1, x1 in windows:
        sub = frag[y0:y1, x0:x1]
        d, (iy, ix) = ndimage.distance_transform_edt(sub == 0, return_indices=True)
        dv, nv = dist[y0:y1, x0:x1], nearest[y0:y1, x0:x1]
        closer = d < dv
        dv[closer] = d[closer]
        nv[closer] = sub[iy[closer], ix[closer]]
    return dist, nearest


def _merged_boxes(slices, grow: int, shape) -> list[tuple[int, int, int, int]]:
    """The boxes of ``slices`` grown by ``grow`` px (clipped to ``shape``),
    overlapping ones merged into their common box until none overlap."""
    boxes = [[max(s[0].start - grow, 0), max(s[1].start - grow, 0), min(s[0].stop + grow, shape[0]),
              min(s[1].stop + grow, shape[1])] for s in slices if s is not None]
    merged = True
    while merged and len(boxes) > 1:
        merged = False
        out: list[list[int]] = []
        for b in sorted(boxes):
            for o in out:
                if b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3]:
                    o[:] = [min(o[0], b[0]), min(o[1], b[1]), max(o[2], b[2]), max(o[3], b[3])]
                    merged = True
                    break
            else:
                out.append(b)
        boxes = out
    return [tuple(b) for b in boxes]


def _level_blobs(nuc: np.ndarray, t: float, cfg: SegmentConfig, mpp: float) -> tuple[np.ndarray, np.ndarray]:
    """Blobs above level ``t``: (labels, keep), the blobs being ``keep[labels]``.

    Threshold; an opening drops strands thinner than ~1 um and specks; small
    holes are filled; pieces below ``min_fragment_area_um2`` are not kept.
    """
    px_area = mpp * mpp
    mask = nuc > t
    if not mask.any():
        return np.zeros(nuc.shape, np.int32), np.zeros(1, bool)
    mask = binary_opening(mask, _disk(0.5 / mpp))
    mask = _fill_small_holes(mask, cfg.max_hole_um2 / px_area)
    labels, _ = ndimage.label(mask)
    keep = np.bincount(labels.ravel()) >= cfg.min_fragment_area_um2 / px_area
    keep[0] = False
    return labels, keep


def _fragments(mask: np.ndarray, nuc: np.ndarray, t: float, cfg: SegmentConfig, mpp: float,
               labels: np.ndarray | None = None) -> np.ndarray:
    """Nuclear fragments of the blobs ``mask`` found at level ``t`` (``labels``:
    those blobs labelled, if at hand), labelled 1..n (all 0 when there are
    none): blobs too big for one nucleus are cut again at their own level,
    touching nuclei are split."""
    if not mask.any():
        return np.zeros(mask.shape, np.int32)
    # Blobs too big for one nucleus hold dark nuclei in blue cytoplasm (blasts,
    # plasma cells, proerythroblasts): cut them again at their own level.
    mask, labels = _refine_large(mask, nuc, t, cfg, mpp, labels)
    return _split_touching(mask, cfg.min_nucleus_radius_um / mpp, labels)


def _kept(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The blobs ``keep[labels]``, labelled 1..n in the order of ``labels``."""
    renumber = np.zeros(len(keep), labels.dtype)
    renumber[keep] = np.arange(1, int(keep.sum()) + 1, dtype=labels.dtype)
    return renumber[labels]


def _cells_of(frag: np.ndarray, nuc: np.ndarray, cytoplasm: np.ndarray, t: float, cfg: SegmentConfig,
              mpp: float):
    """Fragments grouped into cells and filtered: (dist, nearest, frag_to_cell, nucleus areas).

    ``dist``/``nearest``: distance of every pixel to the nearest fragment and
    which one it is (one distance transform serves lobe grouping and the cell
    masks); ``frag_to_cell``: fragment -> cell 1..N, 0 for dropped ones.
    """
    m0 = int(frag.max())
    if m0 == 0:
        return None, None, np.zeros(1, np.int32), np.zeros(0, np.float64)
    dist, nearest = nearest_fragment(frag, _reach_px(cfg, mpp))
    group = _group_lobes(frag, nearest, dist, cytoplasm, cfg, mpp)  # fragment -> cell lut

    # Drop groups outside the nucleus size window (platelets, debris; sheets
    # too big to be one nucleus) and groups that are nowhere clearly darker
    # than the threshold (granule specks, pale cytoplasm); number the rest 1..N.
    cells = group[frag]
    m = int(group.max())
    flat = cells.ravel()
    fg = np.flatnonzero(flat)
    ids, level = flat[fg], nuc.ravel()[fg]  # each nuclear pixel's cell and its level
    n_px = np.bincount(ids, minlength=m + 1)
    nuc_area = n_px * (mpp * mpp)
    peak = np.full(m + 1, -np.inf, np.float32)
    np.maximum.at(peak, ids, level)
    ok = (nuc_area >= cfg.min_nucleus_area_um2) & (nuc_area <= cfg.max_nucleus_area_um2)
    ok &= peak >= t + cfg.min_nuclear_contrast
    if cfg.small_nucleus_min_od > 0:
        # Small and pale is a platelet clump, not a nucleus: small nuclei
        # (lymphocytes, normoblasts) hold the densest chromatin of all.
        mean = np.bincount(ids, weights=level, minlength=m + 1) / np.maximum(n_px, 1)
        ok &= (nuc_area >= cfg.small_nucleus_um2) | (mean >= cfg.small_nucleus_min_od)
    ok[0] = False
    renum = np.zeros(m + 1, np.int32)
    renum[ok] = np.arange(1, int(ok.sum()) + 1, dtype=np.int32)
    return dist, nearest, renum[group], nuc_area[ok]


def _add_pale_nuclei(frag, dist, nearest, frag_to_cell, nuc_area, nuc, cytoplasm, cfg: SegmentConfig,
                     mpp: float):
    """Cells found again at ``pale_nucleus_threshold`` in the blobs of that
    level that touch no nucleus kept at the field's own threshold, added to
    those (same outputs as :func:`_cells_of`, for the union of fragments).

    Only whole new cells are added; every cell of the first level stays as it
    was cut. (At the lower level a dark nucleus grows into its cytoplasm and
    joins its neighbours', so a pale blob that holds first-level nuclei is
    as often several cells as one pale nucleus cut into pieces.) The work is
    confined to the box around those blobs.
    """
    tp = cfg.pale_nucleus_threshold
    labels, keep = _level_blobs(nuc, tp, cfg, mpp)
    first = frag_to_cell[frag] > 0
    size = np.bincount(labels.ravel(), minlength=len(keep)) * (mpp * mpp)
    # Blobs that hold a first-level nucleus may still hold a pale one when
    # big enough to be cut again (_refine_large); the others cannot.
    touched = np.zeros(len(keep), bool)
    touched[labels[first]] = True
    keep = keep & (size >= cfg.min_nucleus_area_um2) & (~touched | (size > cfg.max_single_nucleus_area_um2))
    if not keep.any():
        return frag, dist, nearest, frag_to_cell, nuc_area
    mask = keep[labels]
    # Box around the blobs, with room for lobe grouping and cell masks.
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    r = int(np.ceil(max(cfg.lobe_merge_distance_um, cfg.cytoplasm_um) / mpp)) + 2
    sub = (slice(max(rows[0] - r, 0), rows[-1] + r + 1), slice(max(cols[0] - r, 0), cols[-1] + r + 1))
    frag2 = _fragments(mask[sub], nuc[sub], tp, cfg, mpp)
    _, _, lut2, area2 = _cells_of(frag2, nuc[sub], cytoplasm[sub], tp, cfg, mpp)
    if len(area2) == 0:
        return frag, dist, nearest, frag_to_cell, nuc_area
    cells2 = lut2[frag2]
    # Cells of the pale level that touch a first-level nucleus are not new.
    new = np.ones(len(area2) + 1, bool)
    new[cells2[first[sub]]] = False
    new[0] = False
    if not new.any():
        return frag, dist, nearest, frag_to_cell, nuc_area
    newid = np.zeros(len(area2) + 1, np.int32)
    newid[new] = len(nuc_area) + np.arange(1, int(new.sum()) + 1, dtype=np.int32)
    m1 = int(frag.max())
    sel = new[cells2]
    added = np.where(sel, frag2 + m1, 0).astype(frag.dtype)
    frag = frag.copy()
    frag[sub][sel] = added[sel]  # glass or dropped first-level specks only
    frag_to_cell = np.concatenate([frag_to_cell, newid[lut2[1:]]]).astype(np.int32)
    nuc_area = np.concatenate([nuc_area, area2[new[1:]]])
    # Distance to the nearest fragment, now the new ones too: they lie in the
    # box, whose margin holds every pixel they can reach (cytoplasm_um).
    if dist is None:
        dist, nearest = np.full(frag.shape, np.inf), np.zeros_like(frag)
    else:
        dist, nearest = dist.copy(), nearest.copy()
    d2, near2 = nearest_fragment(added, _reach_px(cfg, mpp))
    closer = d2 < dist[sub]
    dist[sub][closer] = d2[closer]
    nearest[sub][closer] = near2[closer]
    return frag, dist, nearest, frag_to_cell, nuc_area

# ----------------------------------------------------------------------------
# the tile
# ----------------------------------------------------------------------------
def estimate_stain(rgbs: list[np.ndarray], mpp: float, cfg: SegmentConfig) -> Stain:
    """Glass level and nuclear threshold pooled over sample patches of one source."""
    if not rgbs:
        return Stain((255.0, 255.0, 255.0), cfg.nuclear_threshold_max)
    pooled = np.concatenate([np.asarray(r).reshape(-1, 3) for r in rgbs])
    glass = glass_level(pooled)
    nucs, stains = [], []
    for r in rgbs:
        nuc, stained = stain_channels(r, glass, cfg, mpp)
        nucs.append(nuc.ravel())
        stains.append(stained.ravel())
    t = nuclear_threshold(np.concatenate(nucs), np.concatenate(stains), cfg)
    return Stain(glass, t)


def segment_tile(rgb: np.ndarray, mpp: float, cfg: SegmentConfig | None = None,
                 stain: Stain | None = None) -> SegmentResult:
    """Candidate nucleated cells of one uint8 (h, w, 3) RGB tile at ``mpp`` um/px.

    ``stain`` fixes the glass level and threshold (per source, see
    :func:`estimate_stain`); without it both adapt to this tile alone.
    """
    cfg = cfg or SegmentConfig()
    rgb = np.asarray(rgb)
    if rgb.ndim != 3 or rgb.shape[2] != 3:
        raise ValueError(f"segment_tile needs an (h, w, 3) RGB array, got shape {rgb.shape}")
    shape = rgb.shape[:2]
    if min(shape) < 2:
        return _empty(shape)
    px_area = mpp * mpp

    # 1. stain; a light blur (0.4 um) evens out JPEG noise and granules.
    nuc, stained = stain_channels(rgb, stain.glass if stain else glass_level(rgb), cfg, mpp)

    # 2-3. threshold, split touching nuclei; 4. group lobes into cells. Lobes
    # share cytoplasm: stained and bluish-lilac, neither glass nor a red cell
    # (platelets lie on those).
    t = stain.threshold if stain else nuclear_threshold(nuc, stained, cfg)
    cytoplasm = stained & (nuc > cfg.cytoplasm_min_od)
    labels, keep = _level_blobs(nuc, t, cfg, mpp)
    kept = _kept(labels, keep)
    frag = _fragments(kept > 0, nuc, t, cfg, mpp, kept)
    del kept
    del labels
    dist, nearest, frag_to_cell, nuc_area = _cells_of(frag, nuc, cytoplasm, t, cfg, mpp)
    # A field dense with dark nuclei sets its threshold above a pale nucleus
    # (a blast's or promyelocyte's open chromatin): look again at the pale level.
    if 0 < cfg.pale_nucleus_threshold < t:
        frag, dist, nearest, frag_to_cell, nuc_area = _add_pale_nuclei(
            frag, dist, nearest, frag_to_cell, nuc_area, nuc, cytoplasm, cfg, mpp)
    n = len(nuc_area)
    if n == 0:
        return _empty(shape)
    cells = frag_to_cell[frag]

    # Cell mask: the nucleus grown through cytoplasm by at most cytoplasm_um;
    # touching cells share the gap (nearest nucleus wins).
    body = np.where((dist <= cfg.cytoplasm_um / mpp) & cytoplasm, frag_to_cell[nearest], 0).astype(np.int32)
    body = np.where(cells > 0, cells, body)
    # Keep only the part connected to its own nucleus (not stray islands).
    body = _connected_to_seed(body, cells)
    area = np.bincount(body.ravel(), minlength=n + 1)[1:] * px_area
    # The centre of the cell, not of its nucleus: an eccentric nucleus
    # (plasma cell, myelocyte) lies 3-5 um off the cell's centre.
    cy, cx = _centroids(body if cfg.centroid == "cell" else cells, n)
    centroid = np.stack([cx[1:], cy[1:]], axis=1)
    slices = ndimage.find_objects(body, max_label=n)
    bbox = np.array([[s[1].start, s[0].start, s[1].stop, s[0].stop] for s in slices], dtype=np.int64)
    return SegmentResult(labels=body, centroid=centroid, bbox=bbox, area_um2=area.astype(np.float64),
                         nucleus_area_um2=nuc_area.astype(np.float64))


def _connected_to_seed(body: np.ndarray, seeds: np.ndarray) -> np.ndarray:
    """Zero the parts of each body label not 4-connected to its seed pixels."""
    comp, _ = ndimage.label(body > 0)
    # A component is kept for the label whose seed it contains.
    good = np.bincount(comp[seeds > 0], minlength=int(comp.max()) + 1) > 0
    good[0] = False
    out = body.copy()
    out[~good[comp]] = 0
    return out
