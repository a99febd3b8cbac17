"""`slideproc report OUT_DIR`: everything a reader needs, from results.zarr alone.

Writes, in OUT_DIR:

- ``differential.csv``   per sample and class: count, percent of nucleated cells,
                         95 % exact interval (percent units; raw), the adjusted percent
                         and its 95 % interval, the sample's flags; then rows
                         nucleated_cells, blast_percent and M:E (see differential.py)
- ``histograms.csv``     one row per sample, one count column per class
- ``geojson/<sample_id>.geojson``  QuPath detections
- ``report/summary.csv``  the archive table as data (one row per sample)
- ``report/needs_review.csv``  cells below ``report.review_confidence``, per sample
                         lowest confidence first: the cells to look at first
                         (``beyond_record`` 1 / 0 / empty, as in cells/<sample_id>.csv)
- ``report/index.html``  self-contained page (no network; images inline as base64)
- ``report/<sample_id>.differential.png``, ``.confidence.png``, ``.gallery.png``
  (gallery only when crops were saved)

The adjusted differential needs the model's validation record, which ``run`` stores in
``results.zarr/model_card/`` (model_card.py); without it the samples get the raw
differential, the flag ``not_adjusted`` and one line saying why.

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
import zlib
from pathlib import Path

import numpy as np

from . import differential as dif
from . import model_card, quantify
from .config import ReportConfig, RunConfig, config_from_dict
from .store import geojson, tables, zarr_store
from .store.atomic import atomic_write_bytes, atomic_write_text, remove_stale_temporaries

log = logging.getLogger("slideproc.report")

REPORT_DIR = "report"
DIFFERENTIAL_CSV = "differential.csv"
NEEDS_REVIEW_COLUMNS = ["sample_id", "cell_id", "source", "x", "y", "class", "confidence", "beyond_record"]


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


def adjuster(card: model_card.ModelCard, class_names, cfg: ReportConfig):
    """(the fitted quantifier, "") or (None, one line saying why there is no adjusted differential)."""
    if cfg.adjustment == "none":
        return None, "adjusted differential not computed: report.adjustment is none in the config"
    if not card.usable:
        return None, card.missing
    if list(card.labels) != list(class_names):
        return None, ("adjusted differential not available: the stored model record lists other classes "
                      f"({', '.join(card.labels)}) than the results")
    prior = card.info.get("training_prior")
    prior = [prior.get(c, 0.0) for c in card.labels] if isinstance(prior, dict) else None
    try:
        return quantify.fit_quantifier(card.y_val, card.p_val, cfg.adjustment, training_prior=prior,
                                       n_boot=cfg.adjustment_bootstrap, seed=0), ""
    except ValueError as err:
        return None, f"adjusted differential not available: {err}"


def _record_words(card) -> str:
    """What the model's record is, in a few words for the report page."""
    info = card.info if card is not None else {}
    n = f"{info['n_val']} " if isinstance(info.get("n_val"), int) else ""
    if info.get("record_source"):
        return f"{n}crops from {info['record_source']} given to evaluate --characterise"
    return f"its {n}validation crops"


def model_poor(card: model_card.ModelCard, cfg: ReportConfig) -> str:
    """One line when the model's validation figures are below the configured minimums, else ""."""
    reasons = []
    ba = card.balanced_accuracy
    if ba is not None and ba < cfg.model_min_balanced_accuracy:
        reasons.append(f"validation balanced accuracy {ba:.2f} < {cfg.model_min_balanced_accuracy:g}")
    recall = card.recall(cfg.blast_class)
    if recall is not None and (card.support(cfg.blast_class) or 0) > 0 and recall < cfg.model_min_blast_recall:
        reasons.append(f"blast recall {recall:.2f} < {cfg.model_min_blast_recall:g}")
    return "poor figures on data it did not train on: " + "; ".join(reasons) if reasons else ""


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

    errors = tables.read_errors_csv(out_dir)  # the last run's failures
    card = model_card.load_stored_card(out_dir)
    quantifier, missing = adjuster(card, class_names, cfg)
    poor = model_poor(card, cfg)
    diffs, review_frames, sections = [], [], []
    for sample_id in sorted(zarr_store.completed_samples(out_dir)):
        cells, probabilities, attrs = zarr_store.read_sample(out_dir, sample_id)
        names = list(attrs.get("class_names") or class_names)
        counts = zarr_store.read_histogram(out_dir, sample_id)
        review = cells[cells["confidence"] < cfg.review_confidence]
        # errors.csv rows of this sample that are not its unread files: the last run failed
        # to redo it, and what the store holds is an earlier run's
        not_read = {str(x.get("path")) for x in attrs.get("skipped_sources") or ()}
        failed_now = "; ".join(r["error"] for r in errors if r["sample_id"] == sample_id and r["path"] not in not_read)
        adjustment = None
        if quantifier is not None and names == list(card.labels):
            point, reps = quantify.quantify(quantifier, np.asarray(probabilities, np.float64),
                                            seed=zlib.crc32(sample_id.encode()))
            adjustment = dif.Adjustment(point, reps, cfg.adjustment)
        diff = dif.sample_differential(sample_id, names, counts, cfg, needs_review=len(review),
                                       adjustment=adjustment, model_poor=poor,
                                       adjustment_missing=missing or "adjusted differential not available: the "
                                       "sample's classes differ from the model record's",
                                       skipped_sources=attrs.get("skipped_sources") or (),
                                       n_sources=len(attrs.get("sources") or ()), last_run_error=failed_now,
                                       record_check=attrs.get("record_check"))
        diffs.append(diff)
        review = review.sort_values(["confidence", "cell_id"], kind="mergesort")
        review_frames.append(review.assign(sample_id=sample_id, beyond_record=tables.beyond_record_column(review))
                             [NEEDS_REVIEW_COLUMNS])
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
    # The last run's errors: samples it could not complete are named in the report and
    # summary.csv, not only in errors.csv (a patient missing from the morning's table is
    # the failure a reader cannot see).
    failed = failed_samples(errors, {d.sample_id for d in diffs})
    atomic_write_text(report_dir / "summary.csv",
                      dif.summary_table(diffs, failed).to_csv(index=False, lineterminator="\n"))
    review_all = (pd.concat(review_frames, ignore_index=True) if review_frames
                  else pd.DataFrame(columns=NEEDS_REVIEW_COLUMNS))
    atomic_write_text(report_dir / "needs_review.csv", review_all.to_csv(index=False, lineterminator="\n"))
    page = render_html(root_attrs, cfg, sections, card=card, errors=errors, failed=failed)
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
.banner { background: #fde2e1; border: 1px solid #c0392b; padding: 0.5em; color: #8e1b10; }
.model, .about { font-size: 0.9em; }
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
    """Adjusted percent (when there is one) first, then the raw count and percent, then the reference."""
    ranges = {r.classes[0]: r for r in cfg.reference_ranges if len(r.classes) == 1}
    adjusted = diff.adjusted
    rows = []
    for i in dif.reading_order(diff.class_names, cfg):
        name, count, keep, p, lo, hi = (diff.class_names[i], diff.counts[i], diff.nucleated[i],
                                        diff.percent[i], diff.ci_low[i], diff.ci_high[i])
        r = ranges.get(name)
        ref = f"{r.low_percent:g}&ndash;{r.high_percent:g}" if r else ""
        if keep:
            value = _ci(p, lo, hi)
            adj = _ci(diff.adjusted_percent[i], diff.adjusted_low[i], diff.adjusted_high[i]) if adjusted else ""
        else:
            value = "<span class=meta>not a nucleated cell</span>"
            adj = "" if not adjusted else "<span class=meta>&ndash;</span>"
        first = f"<td><b>{adj}</b></td>" if adjusted else ""
        rows.append(f"<tr><td class=id>{html.escape(name)}</td>{first}<td>{count}</td><td>{value}</td>"
                    f"<td>{ref}</td></tr>")
    for r in cfg.reference_ranges:
        present = [c for c in r.classes if c in diff.class_names]
        if len(r.classes) > 1 and present:
            p, lo, hi = diff.group_percent(present)
            first = ""
            if adjusted:
                idx = [diff.class_names.index(c) for c in present]
                first = f"<td><b>{_fmt(sum(diff.adjusted_percent[j] for j in idx))}</b></td>"
            rows.append(
                f"<tr><td class=id>{html.escape(r.name)} ({'+'.join(map(html.escape, present))})</td>{first}"
                f"<td>{diff.count_of(present)}</td><td>{_ci(p, lo, hi)}</td>"
                f"<td>{r.low_percent:g}&ndash;{r.high_percent:g}</td></tr>"
            )
    head = ("<th>adjusted % of nucleated (95 % interval: cells and classifier)</th>" if adjusted else "")
    return (
        f"<table class=differential><thead><tr><th class=id>class</th>{head}<th>raw count</th>"
        "<th>raw % of nucleated (95 % interval: cell sampling only)</th>"
        "<th>typical adult %</th></tr></thead><tbody>" + "".join(rows) + "</tbody></table>"
    )


def _model_line(root_attrs: dict, card: model_card.ModelCard | None, cfg: ReportConfig) -> str:
    """Which model counted the cells and how good it is on data it did not train on."""
    e = html.escape
    sha = str(root_attrs.get("model_sha256") or "n/a")
    name = Path(card.model_dir).name if card is not None and card.model_dir else "model"
    parts = [f"Model <b>{e(name)}</b> (sha256 <code>{e(sha)}</code>)"]
    if card is not None and card.balanced_accuracy is not None:
        recalls = []
        order = [cfg.blast_class] + [c for c in card.labels if c != cfg.blast_class]
        for c in order:
            r = card.recall(c)
            if r is not None and (card.support(c) or 0) > 0:
                recalls.append(f"{'<b>' if c == cfg.blast_class else ''}{e(c)} {r:.2f}"
                               f"{'</b>' if c == cfg.blast_class else ''}")
        parts.append(
            f"on {e(_record_words(card))}, which it did not train on: balanced "
            f"accuracy <b>{card.balanced_accuracy:.2f}</b>; recall per class (share of each class's cells it "
            f"calls right): {', '.join(recalls)}"
        )
    else:
        parts.append("no validation figures recorded for this model")
    return "<p class=model>" + "; ".join(parts) + ".</p>"


def _record_check_words(diff) -> str:
    """The sample's record check in a few words (classify/record_check.py)."""
    if not diff.record_check:
        return "cells not checked against the model's record (the model has no feature_record.npz)"
    n, k = diff.record_check
    share = f" ({100 * k / n:.0f} %)" if n else ""
    return f"{k} of {n} cells{share} beyond the model's record ({dif.RECORD_EXPECTED_SHARE})"


def failed_samples(errors: list[dict], reported: set[str]) -> dict[str, str]:
    """{sample_id: its errors joined by '; '} for the errors.csv rows of samples not in
    ``reported`` (the samples the store holds): the samples that failed and have no figures."""
    failed: dict[str, str] = {}
    for row in errors:
        if row["sample_id"] not in reported:
            failed[row["sample_id"]] = "; ".join(x for x in (failed.get(row["sample_id"]), row["error"]) if x)
    return failed


def _errors_block(errors: list[dict], failed: dict[str, str]) -> str:
    """The last run's errors (errors.csv), above the archive: which samples are missing from
    this report and why (``failed``, from failed_samples), and which files of reported
    samples were not read."""
    if not errors:
        return ""
    e = html.escape
    missing = sorted(failed)
    head = (f"{len(missing)} sample(s) failed and are not in this report: "
            f"{e(', '.join(missing))}. " if missing else "")
    if any(r["sample_id"] not in failed for r in errors):
        head += ("The other samples named here are in the report, flagged: complete without the files named "
                 "(files_not_read), or with an earlier run's results that the last run could not redo "
                 "(last_run_failed).")
    rows = "".join(
        f"<tr><td class=id>{e(r['sample_id'])}</td><td class=id>{e(r['stage'])}</td>"
        f"<td class=id>{e(r['path'])}</td><td class=id>{e(r['error'])}</td></tr>" for r in errors)
    return (f"<h2 class=flag id=errors>Errors (errors.csv)</h2><p class='flag banner'>{head}</p>"
            "<table><thead><tr><th class=id>sample</th><th class=id>stage</th><th class=id>file</th>"
            f"<th class=id>error</th></tr></thead><tbody>{rows}</tbody></table>")


def render_html(root_attrs: dict, cfg: ReportConfig, sections, card: model_card.ModelCard | None = None,
                errors: list[dict] | None = None, failed: dict[str, str] | None = None) -> str:
    """The report page; ``sections``: [(SampleDifferential, sample attrs, {kind: png bytes})];
    ``errors``: errors.csv's rows (the last run's failures), listed above the archive;
    ``failed``: failed_samples(errors, samples in sections), worked out here when not given."""
    e = html.escape
    head = (
        "<!doctype html><html lang=en><head><meta charset=utf-8>"
        "<meta name=viewport content='width=device-width, initial-scale=1'>"
        # An empty icon: no favicon request, hence no console error from file://.
        "<link rel=icon href='data:,'>"
        f"<title>slideproc report</title><style>{_CSS}</style></head><body>"
    )
    poor = model_poor(card, cfg) if card is not None else ""
    banner = (f"<p class='flag banner'>Model flagged: {e(poor)}. Treat every differential below with caution "
              "and check it by eye.</p>") if poor else ""
    adjusted_any = any(d.adjusted for d, _a, _p in sections)
    missing = next((d.adjustment_missing for d, _a, _p in sections if not d.adjusted), "")
    if adjusted_any:
        about = (
            "<p class=about><b>Adjusted</b> shares (shown first) are estimated from every cell's calibrated "
            "probabilities and the classifier's measured confusions on the labelled crops that characterise it "
            f"({e(cfg.adjustment)}; {e(_record_words(card))}), which removes the systematic over- and under-counting of simply counting "
            "each cell's most likely class; their 95 % intervals cover both the sampling of cells and the "
            "classifier's uncertainty (a bootstrap over the cells and those crops). The adjustment "
            "assumes the cells look like those crops (another class mix, not another stain, scanner "
            "or resolution). <b>Raw</b> shares "
            "count each cell as its most likely class; their 95 % intervals (exact binomial, Clopper-Pearson) "
            "cover the sampling of cells only, as if the classifier never erred.</p>"
        )
    else:
        about = (
            f"<p class=about>Raw shares only ({e(missing or 'no adjusted differential')}). Each cell is counted as "
            "its most likely class; the 95 % intervals (exact binomial, Clopper-Pearson) cover the sampling of "
            "cells only, as if the classifier never erred.</p>"
        )
    meta = (
        f"<p class=meta>run {e(str(root_attrs.get('run_id', 'n/a')))} &middot; "
        f"slideproc {e(str(root_attrs.get('slideproc_version', '')))}</p>"
        + _model_line(root_attrs, card, cfg) + about +
        "<p class=meta>Percentages are of nucleated cells counted: "
        f"{e(', '.join(cfg.non_cell_classes))} are counted but left out of the denominator. "
        f"M:E = ({e(' '.join(cfg.myeloid_classes))}) : ({e(' '.join(cfg.erythroid_classes))}), "
        f"typical adult {cfg.me_ratio_low:g}&ndash;{cfg.me_ratio_high:g}. "
        "Reference ranges are typical adult values, not this laboratory's. "
        f"Cells with confidence below {cfg.review_confidence:g} are listed in needs_review.csv; a sample with "
        f"{cfg.review_flag_percent:g} % or more of them is flagged.</p>"
    )
    rows = []
    for i, (diff, _attrs, _pngs) in enumerate(sections):
        flags = "; ".join(dif.describe_flag(f, diff, cfg) for f in diff.flags if f != dif.FLAG_MODEL_POOR)
        adj = (f"<td><b>{_ci(*diff.adjusted_blast)}</b></td>" if adjusted_any else "")
        me = _ci(diff.adjusted_me[0], diff.adjusted_me[1], diff.adjusted_me[2], 2) if diff.adjusted else \
            _ci(diff.me_ratio, diff.me_low, diff.me_high, 2)
        if diff.erythroid == 0 and diff.n_nucleated:
            me = "<span class=meta>no erythroid cells</span>"
        review = f"{diff.needs_review} ({_fmt(diff.review_percent, 1)} %)"
        rows.append(
            f"<tr class='sample{' flagged' if diff.flags else ''}' data-sample-id='{e(diff.sample_id)}'>"
            f"<td class=id><a href='#sample-{i}'>{e(diff.sample_id)}</a></td>"
            f"<td>{diff.n_cells}</td><td>{diff.n_nucleated}</td>{adj}"
            f"<td>{_ci(diff.blast_percent, diff.blast_low, diff.blast_high)}</td>"
            f"<td>{me}</td><td>{review}</td><td class='id flag'>{e(flags)}</td></tr>"
        )
    adj_head = "<th>blast % adjusted (95 % interval)</th>" if adjusted_any else ""
    errors = list(errors or ())
    if failed is None:
        failed = failed_samples(errors, {d.sample_id for d, _a, _p in sections})
    n_failed = len(failed)
    archive = (
        _errors_block(errors, failed) +
        f"<h2>Archive ({len(sections)} samples"
        + (f"; {n_failed} failed, above" if n_failed else "") + ")</h2>"
        "<table id=archive><thead><tr><th class=id>sample</th><th>cells counted</th><th>nucleated cells</th>"
        f"{adj_head}<th>blast % raw (95 % interval)</th><th>M:E{' adjusted' if adjusted_any else ''} "
        "(95 % interval)</th><th>below review confidence</th><th class=id>flags</th></tr></thead>"
        "<tbody>" + "".join(rows) + "</tbody></table>"
    )
    if not sections:
        archive += "<p>No complete samples in this run yet.</p>"
    blocks = []
    for i, (diff, attrs, pngs) in enumerate(sections):
        not_read = {str(x.get("source")) for x in attrs.get("skipped_sources") or ()}
        sources = ", ".join(str(s) + (" (not read)" if str(s) in not_read else "")
                            for s in attrs.get("sources") or [])
        flags = "".join(f"<p class=flag>{e(dif.describe_flag(f, diff, cfg))}</p>" for f in diff.flags
                        if f != dif.FLAG_MODEL_POOR)
        gallery = (_img(pngs["gallery"], f"example cells of {diff.sample_id}") if "gallery" in pngs
                   else "<p class=meta>No crops saved (run with --save-crops for a gallery).</p>")
        blocks.append(
            f"<section class=sample id='sample-{i}'><h2>{e(diff.sample_id)}</h2>{banner}"
            f"<p class=meta>sources: {e(sources)} &middot; mpp {e(_mpp(attrs.get('mpp')))} &middot; "
            f"{diff.n_cells} cells counted, {diff.n_nucleated} nucleated, {diff.needs_review} "
            f"({_fmt(diff.review_percent, 1)} %) below the review confidence &middot; "
            f"{e(_record_check_words(diff))}</p>"
            f"{flags}{_sample_table(diff, cfg)}{_img(pngs['differential'], f'differential of {diff.sample_id}')}"
            f"{_img(pngs['confidence'], f'confidence of {diff.sample_id}')}{gallery}</section>"
        )
    return (head + "<h1>slideproc differential report</h1>" + banner + meta + archive + "".join(blocks)
            + "</body></html>\n")
