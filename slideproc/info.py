"""`slideproc info`: what each sample's files are, without reading more than a thumbnail.

One line per sample by default (a folder of hundreds of fields is one line);
``info -v`` gives a block per file (format, size, levels, mpp and its origin,
objective power, foreground, notes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import RunConfig
from .errors import SlideprocError
from .sources import open_source, resolve_mpp
from .sources.discover import SampleSpec
from .tiling import foreground_mask


@dataclass
class SourceInfo:
    name: str
    path: str
    format: str = ""
    dimensions: tuple[int, int] = (0, 0)
    level_count: int = 0
    level_downsamples: tuple[float, ...] = ()
    mpp: float | None = None
    mpp_origin: str = ""
    objective_power: float | None = None
    foreground_fraction: float | None = None
    notes: list[str] = field(default_factory=list)
    error: str | None = None


def describe_source(ref, cfg: RunConfig) -> SourceInfo:
    """A source's header facts, resolved mpp and foreground share. Image fields
    are never decoded (a field is taken whole: foreground 100 %); a slide's
    foreground comes from a thumbnail at ~tiling.foreground_mpp_um."""
    info = SourceInfo(ref.name, ref.path)
    try:
        reader = open_source(ref, cfg.source.max_image_pixels)
    except SlideprocError as err:
        info.error = str(err)
        return info
    try:
        info.format = reader.format
        info.dimensions = reader.dimensions
        info.level_count = reader.level_count
        info.level_downsamples = reader.level_downsamples
        info.objective_power = reader.objective_power
        info.notes = list(getattr(reader, "conversions", []))
        try:
            res = resolve_mpp(reader, ref, cfg.source)
        except SlideprocError as err:
            info.notes.append(str(err))
            res = None
        if res is not None:
            info.mpp, info.mpp_origin = res.mpp, (res.describe() if res.estimate is not None
                                                  else _ORIGIN[res.source])
            if res.note:
                info.notes.append(res.note)
            mask, _ = foreground_mask(reader, res.mpp, cfg.tiling,
                                      whole_field=reader.level_count == 1 and ref.reader == "image")
            info.foreground_fraction = float(mask.mean())
    except SlideprocError as err:
        info.error = str(err)
    finally:
        reader.close()
    return info


# How `info` names each ResolvedMpp.source.
_ORIGIN = {"user": "--mpp", "manifest": "manifest", "metadata": "file metadata",
           "estimated": "estimated from red cells", "config fallback": "config fallback"}


def format_sample_line(sample: SampleSpec, infos: list[SourceInfo]) -> str:
    """One line: sample_id, what it holds, its size(s), mpp and origin, foreground,
    and how many files have notes or errors (``info -v`` lists them)."""
    ok = [i for i in infos if not i.error]
    parts = [sample.sample_id]
    if len(infos) == 1 and not ok:
        return f"{sample.sample_id}  unreadable (error below)"
    if len(infos) == 1:
        i = ok[0]
        parts.append(f"{i.format}, {i.dimensions[0]} x {i.dimensions[1]} px, {i.level_count} level(s)")
    else:
        formats = sorted({i.format for i in ok})
        dims = sorted({i.dimensions for i in ok})
        size = (f"{dims[0][0]} x {dims[0][1]} px" if len(dims) == 1
                else f"{len(dims)} sizes" if dims else "")
        parts.append(", ".join(x for x in (f"{len(infos)} files", "/".join(formats), size) if x))
    mpps = sorted({(i.mpp, i.mpp_origin) for i in ok if i.mpp})
    if len(mpps) == 1:
        parts.append(f"mpp {mpps[0][0]:.4g} um/px ({mpps[0][1]})")
    elif mpps:
        origins = "/".join(sorted({o for _, o in mpps}))
        parts.append(f"mpp {min(m for m, _ in mpps):.4g}-{max(m for m, _ in mpps):.4g} um/px ({origins})")
    missing = sum(1 for i in ok if not i.mpp)
    if missing:
        parts.append(f"mpp unknown for {missing} file(s)" if len(infos) > 1 else "mpp unknown")
    fgs = [i.foreground_fraction for i in ok if i.foreground_fraction is not None]
    if fgs:
        parts.append(f"foreground {100 * sum(fgs) / len(fgs):.1f} %")
    noted = sum(1 for i in ok if i.notes)
    if noted:
        parts.append(f"notes for {noted} file(s) (-v)")
    bad = len(infos) - len(ok)
    if bad:
        parts.append(f"{bad} file(s) unreadable")
    return "  ".join(parts)


def format_sample(sample: SampleSpec, infos: list[SourceInfo]) -> str:
    lines = [f"{sample.sample_id}  ({sample.origin})"]
    for info in infos:
        indent = "  "
        # Name the file unless the header already does (a slide given by path).
        if len(infos) > 1 or info.name != Path(sample.origin).name:
            lines.append(f"  {info.name}")
            indent = "    "
        if info.error:
            lines.append(f"{indent}ERROR: {info.error}")
            continue
        w, h = info.dimensions
        lines.append(f"{indent}format: {info.format}")
        lines.append(f"{indent}dimensions: {w} x {h} px")
        downs = ", ".join(f"{d:g}" for d in info.level_downsamples)
        lines.append(f"{indent}levels: {info.level_count} (downsamples {downs})")
        if info.mpp:
            lines.append(f"{indent}mpp: {info.mpp:.4g} um/px ({info.mpp_origin}); "
                         f"size {w * info.mpp / 1000:.2f} x {h * info.mpp / 1000:.2f} mm")
        else:
            lines.append(f"{indent}mpp: unknown")
        power = f"{info.objective_power:g}x" if info.objective_power else "unknown"
        lines.append(f"{indent}objective power: {power}")
        fg = f"{100 * info.foreground_fraction:.1f} %" if info.foreground_fraction is not None else "unknown (needs mpp)"
        lines.append(f"{indent}foreground: {fg}")
        for note in info.notes:
            lines.append(f"{indent}note: {note}")
    return "\n".join(lines)
