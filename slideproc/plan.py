"""What a run would process, without reading pixels (but for ``--mpp auto``
estimates, :mod:`slideproc.mpp_estimate`): ``slideproc plan``.

:func:`plan_inputs` discovers the samples (sources/discover.py), opens each
source from its header only (OpenSlide's properties, an image's header) and
resolves its mpp with :func:`slideproc.sources.resolve_mpp`, the function
``detect``/``run`` use on the workers, so the plan says what the run will do:
samples, their files, each file's resolution and where it came from, the
files left out and why, and the sources that will fail and why.
``run``/``detect`` call it too, to log the resolution notes and the files left
out and to record them in run.json.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass, field, replace

import numpy as np

from .config import RunConfig
from .detect import check_holds_a_cell
from .errors import FieldsDisagreeError, MppEstimateError, SlideprocError
from .mpp_estimate import POOL_DISAGREEMENT, pool_estimates
from .sources import open_source, resolve_mpp
from .sources.discover import Discovery, SampleSpec, discover

log = logging.getLogger("slideproc.plan")


@dataclass
class SourcePlan:
    """One source as a run will see it. ``mpp`` um/px (None when it cannot be
    resolved: ``error`` says why); ``mpp_from``: ResolvedMpp.source; ``notes``:
    one-line remarks (an mpp override, an orientation applied)."""

    name: str
    path: str
    reader: str
    dimensions: tuple[int, int] | None = None
    format: str = ""
    mpp: float | None = None
    mpp_from: str = ""
    # For an estimated mpp: the field's own MppEstimate (its red cells, spread and
    # value: the properties below) and how many fields the sample's value (``mpp``)
    # pools (mpp_estimate.pool_estimates). ``estimate_refused``: why the field alone
    # could not be measured (``error`` says so unless the sample's value covers it).
    field_estimate: object | None = field(default=None, repr=False)
    sample_fields: int = 1
    estimate_refused: str = ""
    notes: list[str] = field(default_factory=list)
    error: str = ""

    @property
    def red_cells(self) -> int | None:
        """Red cells the field's own estimate rests on."""
        return None if self.field_estimate is None else self.field_estimate.n_cells

    @property
    def mpp_iqr(self) -> tuple[float, float] | None:
        """The interquartile range (um/px) of the field's own estimate."""
        e = self.field_estimate
        return None if e is None else (e.low, e.high)

    @property
    def field_mpp(self) -> float | None:
        """The field's own estimate (um/px), before pooling."""
        return None if self.field_estimate is None else self.field_estimate.mpp


@dataclass
class SamplePlan:
    sample_id: str
    origin: str
    sources: list[SourcePlan]

    @property
    def ok(self) -> bool:
        return not any(s.error for s in self.sources)


@dataclass
class Plan:
    samples: list[SamplePlan]
    discovery: Discovery

    @property
    def left_out(self) -> list[tuple[str, str]]:
        return self.discovery.left_out

    @property
    def problems(self) -> list[tuple[str, str]]:
        return self.discovery.problems


def plan_source(ref, cfg: RunConfig) -> SourcePlan:
    """Header, dimensions and resolved mpp of one source (no pixels read, but for
    an mpp estimated from the red cells: ``--mpp auto``)."""
    sp = SourcePlan(ref.name, ref.path, ref.reader)
    try:
        reader = open_source(ref, cfg.source.max_image_pixels)
    except SlideprocError as err:
        sp.error = str(err)
        return sp
    try:
        sp.dimensions = tuple(reader.dimensions)
        sp.format = reader.format
        sp.notes += list(getattr(reader, "conversions", []))
        try:
            res = resolve_mpp(reader, ref, cfg.source)
        except MppEstimateError as err:
            # The sample's other fields may cover it (_share_estimate); the error stands otherwise.
            sp.error, sp.estimate_refused, res = str(err), err.reason or str(err), None
        if res is not None:
            sp.mpp, sp.mpp_from = res.mpp, res.source
            sp.field_estimate = res.estimate
            if res.note:
                sp.notes.append(res.note)
            check_holds_a_cell(ref.path, sp.dimensions, res.mpp, cfg)
        if getattr(reader, "header", None) is not None:
            from .sources.image_reader import check_pixels

            check_pixels(ref.path, sp.dimensions, cfg.source.max_image_pixels)
    except SlideprocError as err:
        sp.error, sp.estimate_refused = str(err), ""
    finally:
        reader.close()
    return sp


def _share_estimate(spec: SampleSpec, sample: SamplePlan, cfg: RunConfig) -> SampleSpec:
    """Give the sources of ``spec`` whose mpp is estimated from red cells one value,
    pooled over them (:func:`slideproc.mpp_estimate.pool_estimates`): updates
    ``sample`` and returns ``spec`` with each such reference carrying it
    (``SourceRef.sample_mpp``), so the workers neither estimate again nor differ.

    A field refused for too few red cells takes the pooled value (a note says so);
    fields that disagree beyond the pooling's bound fail the sample with one line
    naming the field furthest from the others (every reference carries it).
    Without any field estimated, nothing changes.
    """
    own = {s.path: s.field_estimate for s in sample.sources if s.field_estimate is not None}
    if not own:
        return spec
    shared = [s.field_estimate is not None or bool(s.estimate_refused) for s in sample.sources]
    pooled, disagree = None, None
    try:
        pooled = pool_estimates(own)
        carried = {"sample_mpp": pooled}
    except FieldsDisagreeError as err:  # the name is unbound after the block: kept as `disagree`
        disagree, carried = err, {"sample_mpp_error": str(err)}
    for s, pooled_here in zip(sample.sources, shared):
        if not pooled_here:
            continue
        if disagree is not None:  # the sample fails: one line, on the field furthest from the others
            if s.estimate_refused:  # its own refusal is not why the sample fails: the note below is
                s.error = ""
            s.mpp, s.mpp_from, s.estimate_refused = None, "", ""
            if s.path == disagree.path:
                s.error = str(disagree)
            else:  # a note, so that run.json says why its mpp is null
                s.notes.append(f"{s.path}: no resolution: its sample's fields disagree (see {disagree.path})")
            continue
        if s.estimate_refused:
            s.notes.append(f"{s.path}: its red cells cannot be measured alone ({s.estimate_refused}); "
                           "it takes the sample's estimate")
            s.error, s.estimate_refused = "", ""
            try:  # checked at the value the run uses (a measured field was checked at its own)
                check_holds_a_cell(s.path, s.dimensions, pooled.mpp, cfg)
            except SlideprocError as check:
                s.error = str(check)
        s.mpp, s.mpp_from, s.sample_fields = pooled.mpp, "estimated", pooled.fields
    if pooled is not None:
        _check_against_given(sample, pooled.mpp, shared)
    return replace(spec, sources=tuple(replace(r, **carried) if pooled_here else r
                                       for r, pooled_here in zip(spec.sources, shared)))


def _check_against_given(sample: SamplePlan, estimated: float, shared: list[bool]) -> None:
    """A note on the estimated sources when the sample's other sources carry a
    resolution (slide header, manifest, --mpp) more than POOL_DISAGREEMENT times
    from the estimate. Not an error: one film may be scanned with two objectives,
    and each group is used as given; but two resolutions that far apart in one
    sample are more often a wrong manifest row, and the reader should see it."""
    given = [s.mpp for s, pooled_here in zip(sample.sources, shared)
             if not pooled_here and s.mpp is not None]
    if not given:
        return
    reference = float(np.median(given))
    ratio = max(estimated, reference) / min(estimated, reference)
    if ratio <= POOL_DISAGREEMENT:
        return
    for s, pooled_here in zip(sample.sources, shared):
        if pooled_here and not s.error:
            s.notes.append(f"{s.path}: its red cells read {estimated:.4g} um/px, {ratio:.2g}x from the "
                           f"{reference:.4g} um/px its sample's other files carry; check the objective "
                           "(or give this file's mpp)")


def plan_samples(samples: list[SampleSpec], cfg: RunConfig) -> tuple[list[SamplePlan], list[SampleSpec]]:
    """Each sample's plan, and its spec with the sample's pooled red-cell estimate on
    its references (unchanged where no source is estimated)."""
    plans, specs = [], []
    for spec in samples:
        plan = SamplePlan(spec.sample_id, spec.origin, [plan_source(r, cfg) for r in spec.sources])
        plans.append(plan)
        specs.append(_share_estimate(spec, plan, cfg))
    return plans, specs


def plan_inputs(inputs, cfg: RunConfig) -> Plan:
    """Discover ``inputs`` and plan every source. UsageError as :func:`discover`.

    ``Plan.discovery.samples`` are the specs to run: where mpp is estimated from
    red cells, their references carry the sample's pooled estimate.
    """
    found = discover(inputs)
    plans, found.samples = plan_samples(found.samples, cfg)
    return Plan(plans, found)


def _mpp_text(sources: list[SourcePlan]) -> str:
    """"0.25 um/px (manifest)" when the sources agree, else a count per value."""
    pairs = Counter((s.mpp, s.mpp_from) for s in sources if s.mpp is not None)
    if not pairs:
        return "mpp unresolved"
    if len(pairs) == 1:
        (mpp, src), = pairs
        return f"{mpp:.4g} um/px ({src})"
    return "; ".join(f"{n} x {mpp:.4g} um/px ({src})" for (mpp, src), n in sorted(pairs.items()))


def _sample_kind(sample: SamplePlan) -> str:
    n = len(sample.sources)
    if all(s.reader == "image" for s in sample.sources):
        return f"{n} field{'s' if n != 1 else ''}"
    return "slide" if n == 1 else f"{n} slides"


def format_plan(plan: Plan) -> str:
    """The plan as text: a line per sample, a line per file under it, then the
    files left out and the inputs that give no sample."""
    lines = []
    n_files = sum(len(s.sources) for s in plan.samples)
    n_bad = sum(not s.ok for s in plan.samples)
    lines.append(f"{len(plan.samples)} sample(s), {n_files} file(s)"
                 + (f"; {n_bad} sample(s) will fail (below)" if n_bad else "")
                 + (f"; {len(plan.left_out)} file(s) left out" if plan.left_out else ""))
    for sample in plan.samples:
        lines.append(f"{sample.sample_id}  {_sample_kind(sample)}  {_mpp_text(sample.sources)}  ({sample.origin})")
        for s in sample.sources:
            dims = f"{s.dimensions[0]} x {s.dimensions[1]} px" if s.dimensions else ""
            mpp = f"{s.mpp:.4g} um/px ({s.mpp_from})" if s.mpp is not None else ""
            own = (f"{s.red_cells} red cells, IQR {s.mpp_iqr[0]:.4g}-{s.mpp_iqr[1]:.4g}"
                   if s.mpp_iqr is not None else "")
            if s.mpp is not None and s.sample_fields > 1:
                here = f"{s.field_mpp:.4g} from {own}" if s.field_mpp is not None else "not measured alone"
                mpp = (f"{s.mpp:.4g} um/px (estimated: median of the sample's {s.sample_fields} fields; "
                       f"this field {here})")
            elif own and s.mpp is not None:
                mpp = f"{s.mpp:.4g} um/px (estimated from {own})"
            elif own:  # not pooled: the sample's fields disagree (ERROR below)
                mpp = f"its red cells read {s.field_mpp:.4g} um/px ({own})"
            lines.append("  " + "  ".join(x for x in (s.name, s.format, dims, mpp) if x))
            for note in s.notes:
                lines.append(f"    note: {note}")
            if s.error:
                lines.append(f"    ERROR: {s.error}")
    if plan.left_out:
        lines.append("left out (in no sample):")
        lines += [f"  {path}: {why}" for path, why in plan.left_out]
    for path, why in plan.problems:
        lines.append(f"no sample: {path}: {why}")
    return "\n".join(lines)


def plan_record(plan: Plan) -> dict:
    """For run.json: the files left out and each source's resolved mpp."""
    return {
        "left_out": [{"path": p, "reason": why} for p, why in plan.left_out],
        "resolution": {s.sample_id: [{"source": x.name, "mpp": x.mpp, "mpp_from": x.mpp_from,
                                      **({"red_cells": x.red_cells, "mpp_iqr": list(x.mpp_iqr),
                                          "field_mpp": x.field_mpp}
                                         if x.mpp_iqr is not None else {}),
                                      # the sample's value pools this many fields' estimates
                                      **({"sample_fields": x.sample_fields} if x.sample_fields > 1 else {}),
                                      **({"notes": x.notes} if x.notes else {}),
                                      # why the source fails: unreadable, no mpp (mpp null,
                                      # mpp_from ""), too small or too large
                                      **({"error": x.error} if x.error else {})}
                                     for x in s.sources] for s in plan.samples},
    }


def log_plan(plan: Plan) -> None:
    """The files left out, and the notes (mpp overrides, orientation), one line each
    (a note shared by many files of a sample: once, with the count)."""
    for path, why in plan.left_out:
        log.warning("left out: %s: %s", path, why)
    for sample in plan.samples:
        # A note many files share (the path taken out) is said once, with the count.
        first: dict[str, str] = {}
        count: Counter = Counter()
        for s in sample.sources:
            for note in s.notes:
                generic = note.replace(f"{s.path}: ", "")
                first.setdefault(generic, note)
                count[generic] += 1
        for generic, n in count.items():
            if n == 1:
                log.info("%s: %s", sample.sample_id, first[generic])
            else:
                log.info("%s: %d files: %s", sample.sample_id, n, generic)
        estimated = [s for s in sample.sources if s.mpp_from == "estimated"]
        if estimated and estimated[0].sample_fields > 1:
            log.info("%s: %.4g um/px estimated from red cells, the median of %d fields' estimates (%d fields use it)",
                     sample.sample_id, estimated[0].mpp, estimated[0].sample_fields, len(estimated))
        elif estimated:  # one field measured: say on how many red cells the sample's value rests
            measured = next((s for s in estimated if s.field_estimate is not None), estimated[0])
            log.info("%s: %.4g um/px estimated from red cells, %s red cells of one field (%d field(s) use it)",
                     sample.sample_id, measured.mpp, measured.red_cells, len(estimated))


__all__ = ["SourcePlan", "SamplePlan", "Plan", "plan_source", "plan_samples", "plan_inputs", "format_plan",
           "plan_record", "log_plan"]
