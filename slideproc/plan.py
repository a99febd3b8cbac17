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
from dataclasses import dataclass, field

from .config import RunConfig
from .errors import SlideprocError
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
    # For an estimated mpp: red cells measured and the interquartile range
    # (um/px) their diameters give.
    red_cells: int | None = None
    mpp_iqr: tuple[float, float] | None = None
    notes: list[str] = field(default_factory=list)
    error: str = ""


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
        res = resolve_mpp(reader, ref, cfg.source)
        sp.mpp, sp.mpp_from = res.mpp, res.source
        if res.estimate is not None:
            sp.red_cells, sp.mpp_iqr = res.estimate.n_cells, (res.estimate.low, res.estimate.high)
        if res.note:
            sp.notes.append(res.note)
        from .detect import check_holds_a_cell

        check_holds_a_cell(ref.path, sp.dimensions, res.mpp, cfg)
        if getattr(reader, "header", None) is not None:
            from .sources.image_reader import check_pixels

            check_pixels(ref.path, sp.dimensions, cfg.source.max_image_pixels)
    except SlideprocError as err:
        sp.error = str(err)
    finally:
        reader.close()
    return sp


def plan_samples(samples: list[SampleSpec], cfg: RunConfig) -> list[SamplePlan]:
    return [SamplePlan(s.sample_id, s.origin, [plan_source(r, cfg) for r in s.sources]) for s in samples]


def plan_inputs(inputs, cfg: RunConfig) -> Plan:
    """Discover ``inputs`` and plan every source. UsageError as :func:`discover`."""
    found = discover(inputs)
    return Plan(plan_samples(found.samples, cfg), found)


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
            if s.mpp_iqr is not None:
                mpp = (f"{s.mpp:.4g} um/px (estimated from {s.red_cells} red cells, "
                       f"IQR {s.mpp_iqr[0]:.4g}-{s.mpp_iqr[1]:.4g})")
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
                                      **({"red_cells": x.red_cells, "mpp_iqr": list(x.mpp_iqr)}
                                         if x.mpp_iqr is not None else {}),
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


__all__ = ["SourcePlan", "SamplePlan", "Plan", "plan_source", "plan_samples", "plan_inputs", "format_plan",
           "plan_record", "log_plan"]
