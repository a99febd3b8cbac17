"""The report's figures, as PNG bytes (matplotlib, imported on call).

Figures are built with ``matplotlib.figure.Figure`` and rendered by the Agg
canvas directly, never through pyplot: no global backend switch, no figure
registry to leak, safe from worker threads.

Public API::

    differential_png(diff, config) -> bytes     # bars with 95 % intervals, reference ranges shaded
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
    """Percent of nucleated cells per class (and per reference group) with 95 % exact intervals."""
    from matplotlib.patches import Rectangle

    labels, values, lows, highs, ranges, colors = [], [], [], [], [], []
    single = {r.classes[0]: r for r in config.reference_ranges if len(r.classes) == 1}
    from .differential import reading_order

    for i in reading_order(diff.class_names, config):
        name, keep, p, lo, hi = (diff.class_names[i], diff.nucleated[i], diff.percent[i],
                                 diff.ci_low[i], diff.ci_high[i])
        if not keep:
            continue
        labels.append(name)
        values.append(p)
        lows.append(lo)
        highs.append(hi)
        r = single.get(name)
        ranges.append((r.low_percent, r.high_percent) if r else None)
        colors.append(np.asarray(class_color(name)) / 255.0)
    # Groups (erythroid precursors = PEB + EBO) get their own bar.
    for r in config.reference_ranges:
        present = [c for c in r.classes if c in diff.class_names]
        if len(r.classes) > 1 and present:
            p, lo, hi = diff.group_percent(present)
            labels.append(f"{r.name} ({'+'.join(present)})")
            values.append(p)
            lows.append(lo)
            highs.append(hi)
            ranges.append((r.low_percent, r.high_percent))
            colors.append((0.45, 0.45, 0.45))

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
        xerr = np.vstack([v - np.asarray(lows), np.asarray(highs) - v])
        ax.barh(y, v, color=colors, height=0.55, xerr=xerr, zorder=2,
                error_kw={"ecolor": "black", "elinewidth": 0.8, "capsize": 2})
        xmax = max(float(np.nanmax(highs)) if len(highs) else 0.0,
                   max((r[1] for r in ranges if r), default=0.0)) * 1.08
        ax.set_xlim(0, min(100.0, max(xmax, 5.0)))
    else:
        ax.set_xlim(0, 100)
        ax.text(50, (len(labels) - 1) / 2, "no nucleated cells counted", ha="center", va="center")
    ax.set_yticks(y, labels, fontsize=8)
    ax.set_ylim(len(labels) - 0.5, -0.5)
    # In the label, not a legend: a legend box would hide the longest ranges.
    ax.set_xlabel("% of nucleated cells (whiskers: 95 % exact interval; green: typical adult range)")
    me = "n/a" if math.isnan(diff.me_ratio) else ("inf" if math.isinf(diff.me_ratio) else f"{diff.me_ratio:.2f}")
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
