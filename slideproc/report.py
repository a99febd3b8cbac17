"""`slideproc report OUT_DIR`: everything a reader needs, from results.zarr alone.

Writes, in OUT_DIR:

- ``differential.csv``   per sample and class: count, percent of nucleated cells,
                         95 % exact interval (percent units), then rows
                         nucleated_cells, blast_percent and M:E (see differential.py)
- ``histograms.csv``     one row per sample, one count column per class
- ``geojson/<sample_id>.geojson``  QuPath detections
- ``report/summary.csv``  the archive table as data (one row per sample)
- ``report/needs_review.csv``  cells below ``report.review_confidence``, per sample
                         lowest confidence first: the cells to look at first
- ``report/index.html``  self-contained page (no network; images inline as base64)
- ``report/<sample_id>.differential.png``, ``.confidence.png``, ``.gallery.png``
  (gallery only when crops were saved)

Public API::

    write_report(out_dir, config=None) -> Path   # config: RunConfig, ReportConfig or None
                                                 # (None: the config stored with the run)
"""

from __future__ import annotations

import base64
import html
import logging
import math
import os
from pathlib import Path

import numpy as np

from . import differential as dif
from .config import ReportConfig, RunConfig, config_from_dict
from .store import geojson, tables, zarr_store
from .store.atomic import atomic_write_bytes, atomic_write_text, remove_stale_temporaries

log = logging.getLogger("slideproc.report")

REPORT_DIR = "report"
DIFFERENTIAL_CSV = "differential.csv"
NEEDS_REVIEW_COLUMNS = ["sample_id", "cell_id", "source", "x", "y", "class", "confidence"]


def _report_config(out_dir, config) -> ReportConfig:
    if isinstance(config, ReportConfig):
        return config
    if isinstance(config, RunConfig):
        return config.report
    if config is not None:
        raise TypeError(f"config must be a RunConfig or ReportConfig, got {type(config).__name__}")
    stored = zarr_store.read_root_attrs(out_dir).get("config")
    if isinstance(stored, dict):
        try:
            return config_from_dict(RunConfig, stored, source=f"config stored in {zarr_store.store_path(out_dir)}").report
        except Exception as err:  # noqa: BLE001 - an old or foreign config: say so, use defaults
            log.warning("%s; using the default report settings", err)
    return ReportConfig()


def _fmt(value: float, digits: int = 1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf"
    return f"{value:.{digits}f}"


def _examples(cells, per_class: int) -> dict[str, np.ndarray]:
    """Row indices of the ``per_class`` most confident cells of each class (ties: lower cell_id)."""
    if per_class <= 0 or len(cells) == 0:
        return {}
    order = np.lexsort((cells["cell_id"].to_numpy(), -cells["confidence"].to_numpy()))
    ordered = cells.iloc[order]
    out = {}
    for name, group in ordered.groupby("class", sort=True):
        out[str(name)] = group.index.to_numpy()[:per_class]
    return out


def write_report(out_dir: str | os.PathLike, config=None) -> Path:
    """Write the differential, histograms, GeoJSON and the HTML report; returns report/index.html."""
    import pandas as pd

    from . import plots

    out_dir = Path(out_dir)
    root_attrs = zarr_store.read_root_attrs(out_dir)  # StoreError naming the fix when absent
    cfg = _report_config(out_dir, config)
    class_names = list(root_attrs.get("class_names") or [])
    report_dir = out_dir / REPORT_DIR
    for folder in (out_dir, report_dir, out_dir / geojson.GEOJSON_DIR):
        remove_stale_temporaries(folder)

    diffs, review_frames, sections = [], [], []
    for sample_id in sorted(zarr_store.completed_samples(out_dir)):
        cells, _probabilities, attrs = zarr_store.read_sample(out_dir, sample_id)
        names = list(attrs.get("class_names") or class_names)
        counts = zarr_store.read_histogram(out_dir, sample_id)
        review = cells[cells["confidence"] < cfg.review_confidence]
        diff = dif.sample_differential(sample_id, names, counts, cfg, needs_review=len(review))
        diffs.append(diff)
        review_frames.append(
            review.sort_values(["confidence", "cell_id"], kind="mergesort")
            .assign(sample_id=sample_id)[NEEDS_REVIEW_COLUMNS]
        )
        geojson.write_sample_geojson(out_dir, sample_id, cells=cells, attrs=attrs)

        pngs = {
            "differential": plots.differential_png(diff, cfg),
            "confidence": plots.confidence_png(cells["confidence"].to_numpy(), cfg.review_confidence, sample_id),
        }
        examples = _examples(cells, cfg.gallery_per_class)
        if examples:
            # Only the examples are read: a sample's crops can run to gigabytes.
            wanted = np.unique(np.concatenate(list(examples.values())))
            crops = zarr_store.read_crops(out_dir, sample_id, index=wanted)
            if crops is not None:
                row = {int(r): i for i, r in enumerate(wanted)}
                pngs["gallery"] = plots.gallery_png(
                    {k: crops[[row[int(r)] for r in v]] for k, v in examples.items()}, sample_id
                )
        for kind, data in pngs.items():
            atomic_write_bytes(report_dir / f"{sample_id}.{kind}.png", data)
        sections.append((diff, attrs, pngs))

    atomic_write_text(out_dir / DIFFERENTIAL_CSV,
                      dif.differential_table(diffs).to_csv(index=False, lineterminator="\n"))
    tables.write_histograms_csv(out_dir)
    atomic_write_text(report_dir / "summary.csv",
                      dif.summary_table(diffs).to_csv(index=False, lineterminator="\n"))
    review_all = (pd.concat(review_frames, ignore_index=True) if review_frames
                  else pd.DataFrame(columns=NEEDS_REVIEW_COLUMNS))
    atomic_write_text(report_dir / "needs_review.csv", review_all.to_csv(index=False, lineterminator="\n"))
    page = render_html(root_attrs, cfg, sections)
    return atomic_write_text(report_dir / "index.html", page)


# ----------------------------------------------------------------------------
# HTML
# ----------------------------------------------------------------------------
_CSS = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 1.5em auto; max-width: 1100px;
       color: #222; padding: 0 1em; }
h1 { font-size: 1.5em; } h2 { font-size: 1.2em; border-top: 1px solid #ccc; padding-top: 0.8em; }
table { border-collapse: collapse; margin: 0.5em 0 1em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f0f0f0; } td.id, th.id { text-align: left; }
tr.flagged td { background: #fff4e5; }
.flag { color: #a04000; font-weight: 600; }
.meta { color: #555; font-size: 0.85em; }
img { max-width: 100%; height: auto; display: block; margin: 0.4em 0; }
details { margin: 0.5em 0; }
"""


def _mpp(value) -> str:
    """One resolution per sample when its sources agree (the usual case), else each one."""
    if isinstance(value, (list, tuple)):
        distinct = sorted({v for v in value if v is not None})
        return ", ".join(f"{v:g}" for v in distinct) + " um/px" if distinct else "n/a"
    return f"{value:g} um/px" if isinstance(value, (int, float)) else "n/a"


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode("ascii")}">'


def _ci(p: float, lo: float, hi: float, digits: int = 1) -> str:
    if isinstance(p, float) and math.isnan(p):
        return "n/a"
    return f"{_fmt(p, digits)} <span class=meta>({_fmt(lo, digits)}&ndash;{_fmt(hi, digits)})</span>"


def _sample_table(diff, cfg) -> str:
    ranges = {r.classes[0]: r for r in cfg.reference_ranges if len(r.classes) == 1}
    rows = []
    for i in dif.reading_order(diff.class_names, cfg):
        name, count, keep, p, lo, hi = (diff.class_names[i], diff.counts[i], diff.nucleated[i],
                                        diff.percent[i], diff.ci_low[i], diff.ci_high[i])
        r = ranges.get(name)
        ref = f"{r.low_percent:g}&ndash;{r.high_percent:g}" if r else ""
        value = _ci(p, lo, hi) if keep else "<span class=meta>not a nucleated cell</span>"
        rows.append(f"<tr><td class=id>{html.escape(name)}</td><td>{count}</td><td>{value}</td><td>{ref}</td></tr>")
    for r in cfg.reference_ranges:
        present = [c for c in r.classes if c in diff.class_names]
        if len(r.classes) > 1 and present:
            p, lo, hi = diff.group_percent(present)
            rows.append(
                f"<tr><td class=id>{html.escape(r.name)} ({'+'.join(map(html.escape, present))})</td>"
                f"<td>{diff.count_of(present)}</td><td>{_ci(p, lo, hi)}</td>"
                f"<td>{r.low_percent:g}&ndash;{r.high_percent:g}</td></tr>"
            )
    return (
        "<table><thead><tr><th class=id>class</th><th>count</th><th>% of nucleated (95 % CI)</th>"
        "<th>typical adult %</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def render_html(root_attrs: dict, cfg: ReportConfig, sections) -> str:
    """The report page; ``sections``: [(SampleDifferential, sample attrs, {kind: png bytes})]."""
    e = html.escape
    head = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        # An empty icon: no favicon request, hence no console error from file://.
        "<link rel=icon href='data:,'>"
        f"<title>slideproc report</title><style>{_CSS}</style></head><body>"
    )
    sha = root_attrs.get("model_sha256") or "n/a"
    meta = (
        f"<p class=meta>run {e(str(root_attrs.get('run_id', 'n/a')))} &middot; "
        f"slideproc {e(str(root_attrs.get('slideproc_version', '')))} &middot; model sha256 {e(str(sha))}</p>"
        "<p class=meta>Percentages are of nucleated cells counted: "
        f"{e(', '.join(cfg.non_cell_classes))} are counted but left out of the denominator. "
        "Intervals are 95 % exact binomial (Clopper-Pearson). "
        f"M:E = ({e(' '.join(cfg.myeloid_classes))}) : ({e(' '.join(cfg.erythroid_classes))}), "
        f"typical adult {cfg.me_ratio_low:g}&ndash;{cfg.me_ratio_high:g}. "
        "Reference ranges are typical adult values, not this laboratory's. "
        f"Cells with confidence below {cfg.review_confidence:g} are listed in needs_review.csv.</p>"
    )
    rows = []
    for i, (diff, _attrs, _pngs) in enumerate(sections):
        flags = "; ".join(dif.describe_flag(f, diff, cfg) for f in diff.flags)
        rows.append(
            f"<tr class='sample{' flagged' if diff.flags else ''}' data-sample-id='{e(diff.sample_id)}'>"
            f"<td class=id><a href='#sample-{i}'>{e(diff.sample_id)}</a></td>"
            f"<td>{diff.n_cells}</td><td>{diff.n_nucleated}</td>"
            f"<td>{_ci(diff.blast_percent, diff.blast_low, diff.blast_high)}</td>"
            f"<td>{_ci(diff.me_ratio, diff.me_low, diff.me_high, 2)}</td>"
            f"<td>{diff.needs_review}</td><td class='id flag'>{e(flags)}</td></tr>"
        )
    archive = (
        f"<h2>Archive ({len(sections)} samples)</h2>"
        "<table id=archive><thead><tr><th class=id>sample</th><th>cells counted</th><th>nucleated cells</th>"
        "<th>blast % (95 % CI)</th><th>M:E (95 % CI)</th><th>needs review</th><th class=id>flags</th></tr></thead>"
        "<tbody>" + "".join(rows) + "</tbody></table>"
    )
    if not sections:
        archive += "<p>No complete samples in this run yet.</p>"
    blocks = []
    for i, (diff, attrs, pngs) in enumerate(sections):
        sources = ", ".join(str(s) for s in attrs.get("sources") or [])
        flags = "".join(f"<p class=flag>{e(dif.describe_flag(f, diff, cfg))}</p>" for f in diff.flags)
        gallery = (_img(pngs["gallery"], f"example cells of {diff.sample_id}") if "gallery" in pngs
                   else "<p class=meta>No crops saved (run with --save-crops for a gallery).</p>")
        blocks.append(
            f"<section class=sample id='sample-{i}'><h2>{e(diff.sample_id)}</h2>"
            f"<p class=meta>sources: {e(sources)} &middot; mpp {e(_mpp(attrs.get('mpp')))} &middot; "
            f"{diff.n_cells} cells counted, {diff.n_nucleated} nucleated, {diff.needs_review} need review</p>"
            f"{flags}{_img(pngs['differential'], f'differential of {diff.sample_id}')}"
            f"<details><summary>Counts and intervals</summary>{_sample_table(diff, cfg)}</details>"
            f"{_img(pngs['confidence'], f'confidence of {diff.sample_id}')}{gallery}</section>"
        )
    return head + "<h1>slideproc differential report</h1>" + meta + archive + "".join(blocks) + "</body></html>\n"
