"""The report's figures, as PNG bytes (matplotlib, imported on call).

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg
canvas directly, never through pyplot: no global backend switch, no figure
registry to leak, safe from worker threads.

Public API::

    differential_png(diff, config) -> bytes     # adjusted bars, raw diamonds, 95 % intervals, ranges shaded
    confidence_png(confidence, threshold, sample_id) -> bytes
    gallery_png(crops_by_class, sample_id) -> bytes   # {class: uint8 (k, H, W, 3)}
"""

from __future__ import annotations

import io
import math

import numpy as np

from .store.geojson import class_color

RANGE_COLOR = "#2e8b57"
GALLERY_PX = 64  # crops are shown at 64 px: enough to see the cell, small enough to embed


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig, fig.subplots()


def _save(fig) -> bytes:
    buf = io.BytesIO()
    # No software/date metadata: the same data gives the same bytes.
    fig.savefig(buf, format="png", dpi=100, metadata={"Software": None})
    return buf.getvalue()


def differential_png(diff, config) -> bytes:
    """Percent of nucleated cells per class (and per reference group), reference ranges shaded.

    Bars: the adjusted estimate with its 95 % interval when the sample has one (whiskers cover
    cell sampling and the classifier's uncertainty), and the raw count as hollow diamonds with
    its exact interval; the raw count as bars when there is no adjusted estimate.
    """
    from matplotlib.patches import Rectangle

    from .differential import reading_order

    adjusted = diff.adjusted
    labels, values, lows, highs, raws, raw_lows, raw_highs, ranges, colors = ([] for _ in range(9))
    single = {r.classes[0]: r for r in config.reference_ranges if len(r.classes) == 1}
    for i in reading_order(diff.class_names, config):
        name, keep = diff.class_names[i], diff.nucleated[i]
        if not keep:
            continue
        labels.append(name)
        raws.append(diff.percent[i])
        raw_lows.append(diff.ci_low[i])
        raw_highs.append(diff.ci_high[i])
        if adjusted:
            values.append(diff.adjusted_percent[i])
            lows.append(diff.adjusted_low[i])
            highs.append(diff.adjusted_high[i])
        r = single.get(name)
        ranges.append((r.low_percent, r.high_percent) if r else None)
        colors.append(np.asarray(class_color(name)) / 255.0)
    # Groups (erythroid precursors = PEB + EBO) get their own bar (raw: the adjusted
    # replicates are not kept per group).
    for r in config.reference_ranges:
        present = [c for c in r.classes if c in diff.class_names]
        if len(r.classes) > 1 and present:
            p, lo, hi = diff.group_percent(present)
            labels.append(f"{r.name} ({'+'.join(present)})")
            raws.append(p)
            raw_lows.append(lo)
            raw_highs.append(hi)
            if adjusted:
                idx = [diff.class_names.index(c) for c in present]
                values.append(float(sum(diff.adjusted_percent[j] for j in idx)))
                lows.append(math.nan)
                highs.append(math.nan)
            ranges.append((r.low_percent, r.high_percent))
            colors.append((0.45, 0.45, 0.45))
    if not adjusted:
        values, lows, highs = raws, raw_lows, raw_highs

    height = 1.2 + 0.28 * max(len(labels), 1)
    fig, ax = _figure(7.5, height)
    y = np.arange(len(labels))
    for yi, rng in zip(y, ranges):
        if rng is not None:
            # Drawn under the bar and taller than it, outlined, so a 0-1 % range stays visible.
            ax.add_patch(Rectangle((rng[0], yi - 0.45), rng[1] - rng[0], 0.9, facecolor=RANGE_COLOR,
                                   alpha=0.25, edgecolor=RANGE_COLOR, lw=1.0, zorder=0))
    if diff.n_nucleated > 0:
        v = np.asarray(values, dtype=float)
        xerr = np.nan_to_num(np.vstack([v - np.asarray(lows, float), np.asarray(highs, float) - v]), nan=0.0)
        ax.barh(y, v, color=colors, height=0.55, xerr=np.maximum(xerr, 0.0), zorder=2,
                error_kw={"ecolor": "black", "elinewidth": 0.8, "capsize": 2})
        if adjusted:
            r = np.asarray(raws, float)
            rerr = np.maximum(np.vstack([r - np.asarray(raw_lows, float), np.asarray(raw_highs, float) - r]), 0.0)
            ax.errorbar(r, y + 0.32, xerr=rerr, fmt="D", mfc="white", mec="#555555", ms=4, ecolor="#888888",
                        elinewidth=0.7, capsize=1.5, zorder=3, label="raw count")
        tops = [h for h in (*highs, *raw_highs) if not math.isnan(h)]
        xmax = max(max(tops, default=0.0), max((r[1] for r in ranges if r), default=0.0)) * 1.08
        ax.set_xlim(0, min(100.0, max(xmax, 5.0)))
    else:
        ax.set_xlim(0, 100)
        ax.text(50, (len(labels) - 1) / 2, "no nucleated cells counted", ha="center", va="center")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    # In the label, not a legend: a legend box would hide the longest ranges.
    ax.set_xlabel("% of nucleated cells: bars adjusted (95 % interval, cells and classifier), "
                  "diamonds raw count (95 % exact interval)" if adjusted else
                  "% of nucleated cells, raw count (whiskers: 95 % exact interval; green: typical adult range)",
                  fontsize=8 if adjusted else None)
    me_value = diff.adjusted_me[0] if adjusted else diff.me_ratio
    me = "no erythroid cells" if diff.erythroid == 0 else ("n/a" if math.isnan(me_value) else f"{me_value:.2f}")
    ax.set_title(f"{diff.sample_id}: {diff.n_nucleated} nucleated cells, M:E {me}", fontsize=10)
    ax.grid(axis="x", alpha=0.3)
    ax.set_axisbelow(True)
    fig.tight_layout()
    return _save(fig)


def confidence_png(confidence: np.ndarray, threshold: float, sample_id: str) -> bytes:
    """Histogram of the classifier's confidence, the review threshold marked."""
    confidence = np.asarray(confidence, dtype=float)
    fig, ax = _figure(5.0, 2.6)
    ax.hist(confidence, bins=np.linspace(0, 1, 21), color="#4682b4", edgecolor="white")
    ax.axvline(threshold, color="#c0392b", ls="--", lw=1)
    low = int((confidence < threshold).sum())
    ax.set_title(f"{sample_id}: confidence ({low} of {len(confidence)} below {threshold:g}: needs review)",
                 fontsize=9)
    ax.set_xlabel("confidence (max probability)")
    ax.set_ylabel("cells")
    ax.set_xlim(0, 1)
    fig.tight_layout()
    return _save(fig)


def _thumb(crop: np.ndarray) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(crop).resize((GALLERY_PX, GALLERY_PX), Image.BILINEAR))


def gallery_png(crops_by_class: dict, sample_id: str) -> bytes:
    """One row per class: its example crops side by side, at GALLERY_PX."""
    names = list(crops_by_class)
    columns = max((len(v) for v in crops_by_class.values()), default=1)
    gap = 4
    canvas = np.full((len(names) * (GALLERY_PX + gap), columns * (GALLERY_PX + gap), 3), 255, dtype=np.uint8)
    for r, name in enumerate(names):
        for c, crop in enumerate(crops_by_class[name]):
            y0, x0 = r * (GALLERY_PX + gap), c * (GALLERY_PX + gap)
            canvas[y0:y0 + GALLERY_PX, x0:x0 + GALLERY_PX] = _thumb(crop)
    scale = 1 / 60  # inches per pixel at dpi 100, leaving room for labels
    fig, ax = _figure(1.2 + canvas.shape[1] * scale, 0.6 + canvas.shape[0] * scale)
    ax.imshow(canvas, interpolation="nearest")
    ax.set_yticks([r * (GALLERY_PX + gap) + GALLERY_PX / 2 for r in range(len(names))], names, fontsize=8)
    ax.set_xticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.set_title(f"{sample_id}: example cells per class (highest confidence first)", fontsize=9)
    fig.tight_layout()
    return _save(fig)
