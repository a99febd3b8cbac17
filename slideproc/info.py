"""`slideproc info`: what each sample's files are, without reading more than a thumbnail."""

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
    info = SourceInfo(ref.name, ref.path)
    try:
        reader = open_source(ref)
    except SlideprocError as err:
        info.error = str(err)
        return info
    try:
        info.format = reader.format
        info.dimensions = reader.dimensions
        info.level_count = reader.level_count
        info.level_downsamples = reader.level_downsamples
        info.objective_power = reader.objective_power
        info.notes = [f"converted {n}" for n in getattr(reader, "conversions", [])]
        if reader.mpp:
            info.mpp, info.mpp_origin = reader.mpp, "file metadata"
        elif ref.mpp:
            info.mpp, info.mpp_origin = ref.mpp, "manifest/--mpp"
        elif cfg.source.fallback_mpp_um:
            info.mpp, info.mpp_origin = cfg.source.fallback_mpp_um, "config fallback"
        try:
            mpp = resolve_mpp(reader, ref, cfg.source.fallback_mpp_um)
        except SlideprocError as err:
            info.notes.append(str(err))
            mpp = None
        if mpp is not None:
            mask, _ = foreground_mask(reader, mpp, cfg.tiling, whole_field=reader.level_count == 1 and ref.reader == "image")
            info.foreground_fraction = float(mask.mean())
    except SlideprocError as err:
        info.error = str(err)
    finally:
        reader.close()
    return info


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
