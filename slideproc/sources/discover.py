"""Turn the command line's INPUT paths into samples.

- a slide file: one sample, named after the file's stem;
- a folder of images: one sample, named after the folder;
- a folder of folders: one sample per sub-folder holding images;
- slides inside a folder: one sample each (DICOM files of one folder are one slide);
- ``manifest.csv`` (``sample_id,path[,mpp]``): several files per sample and an
  mpp for files that carry none; paths relative to the manifest.

Discovery only lists files (and reads TIFF headers to tell slides from plain
images); opening and reading happen later, per sample, so one bad file fails
one sample, not the run.
"""

from __future__ import annotations

import csv
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, UsageError
from .base import SourceRef
from .openslide_reader import detect_format
from . import reader_kind_for

# sample_id becomes a file name and a Zarr group name: keep it to a safe alphabet.
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


@dataclass(frozen=True)
class SampleSpec:
    sample_id: str
    sources: tuple[SourceRef, ...]
    # Where the sample came from (the INPUT path or manifest row), for errors.csv.
    origin: str = ""


@dataclass
class Discovery:
    samples: list[SampleSpec] = field(default_factory=list)
    # (path, reason) for inputs that yield no sample at all; each becomes a failed
    # "sample" in errors.csv so nothing is silently dropped.
    problems: list[tuple[str, str]] = field(default_factory=list)


def check_sample_id(sample_id: str, where: str) -> str:
    if not _SAFE_ID.fullmatch(sample_id or "") or sample_id in (".", ".."):
        raise UsageError(
            f"{where}: sample_id {sample_id!r} is not allowed; use letters, digits, '.', '_' "
            "and '-' only, starting with a letter or digit (no path separators)"
        )
    return sample_id


def _sanitize(name: str) -> str:
    """A safe sample_id from a file or folder name (spaces etc. become '_')."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip("._-") or "sample"
    return cleaned[:128]


def _files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))


def _classify_files(folder: Path) -> tuple[list[Path], list[Path], list[Path]]:
    """(image fields, slide files, dicom files) directly inside ``folder``."""
    images, slides, dicoms = [], [], []
    for p in _files(folder):
        if p.suffix.lower() == ".dcm":
            dicoms.append(p)
            continue
        kind = reader_kind_for(p)
        if kind == "image":
            images.append(p)
        elif kind == "openslide":
            slides.append(p)
    return images, slides, dicoms


def _folder_samples(folder: Path, out: Discovery, recurse: bool = True) -> int:
    images, slides, dicoms = _classify_files(folder)
    found = 0
    if images:
        refs = tuple(SourceRef(str(p.resolve()), p.name, "image") for p in images)
        # resolve(): "." or ".." given on the command line still names the folder.
        out.samples.append(SampleSpec(_sanitize(folder.resolve().name), refs, str(folder)))
        found += 1
    for p in slides:
        out.samples.append(SampleSpec(_sanitize(p.stem), (SourceRef(str(p.resolve()), p.name, "openslide"),), str(p)))
        found += 1
    if dicoms:
        # A DICOM-WSI is a set of files (one per level); OpenSlide opens the set
        # from any one of them.
        first = dicoms[0]
        name = folder.resolve().name if not (images or slides) else first.stem
        out.samples.append(SampleSpec(_sanitize(name), (SourceRef(str(first.resolve()), first.name, "openslide"),), str(folder)))
        found += 1
    if recurse:
        for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
            found += _folder_samples(sub, out, recurse=False)
    return found


def _parse_manifest(path: Path) -> list[tuple[int, dict[str, str]]]:
    """(line number, row) for each data row; UsageError for anything malformed."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise UsageError(f"{path}: manifest is not UTF-8 text; save it as UTF-8 CSV") from None
    except OSError as err:
        raise InputError(f"{path}: cannot read manifest: {err.strerror or err}") from None
    try:
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        header = next(reader, [])
        while header == []:  # leading blank lines
            header = next(reader, None)
            if header is None:
                header = []
                break
        header = [h.strip() for h in header]
        missing = {"sample_id", "path"} - set(header)
        if missing:
            raise UsageError(
                f"{path}: manifest needs the columns sample_id,path[,mpp]; missing {', '.join(sorted(missing))}"
            )
        unknown = set(header) - {"sample_id", "path", "mpp"}
        if unknown:
            shown = ", ".join(sorted(repr(u)[:40] for u in unknown))
            raise UsageError(f"{path}: unknown manifest column(s) {shown}; allowed: sample_id,path,mpp")
        if len(set(header)) != len(header):
            raise UsageError(f"{path}: a manifest column appears twice in the header")
        rows = []
        for values in reader:
            lineno = reader.line_num
            if not any(v.strip() for v in values):
                continue  # blank line
            if len(values) > len(header):
                raise UsageError(
                    f"{path} line {lineno}: {len(values)} fields but the header has {len(header)}; "
                    "quote paths that hold a comma"
                )
            rows.append((lineno, dict(zip(header, values))))
    except csv.Error as err:
        raise UsageError(f"{path}: manifest is not valid CSV: {err}") from None
    return rows


def _manifest_kind(file: Path) -> str:
    try:
        if file.is_file():
            return reader_kind_for(file) or "openslide"
    except (OSError, ValueError):
        pass
    # A missing file still makes a sample: opening it later names it in errors.csv.
    return "openslide" if file.suffix.lower() in (".svs", ".ndpi", ".mrxs", ".scn", ".dcm") else "image"


def read_manifest(path: Path, out: Discovery) -> None:
    rows = _parse_manifest(path)
    by_sample: dict[str, list[SourceRef]] = {}
    seen: set[tuple[str, str]] = set()
    base = path.parent
    for lineno, row in rows:
        where = f"{path} line {lineno}"
        sample_id = (row.get("sample_id") or "").strip()
        rel = (row.get("path") or "").strip()
        check_sample_id(sample_id, where)
        if not rel:
            raise UsageError(f"{where}: empty path for sample {sample_id!r}")
        if "\0" in rel:
            raise UsageError(f"{where}: path {rel[:60]!r} holds a NUL character")
        mpp_text = (row.get("mpp") or "").strip()
        mpp = None
        if mpp_text:
            try:
                mpp = float(mpp_text)
            except ValueError:
                mpp = -1.0
            if not (math.isfinite(mpp) and mpp > 0):
                raise UsageError(f"{where}: mpp must be a positive number of um per pixel, got {mpp_text[:40]!r}")
        if (sample_id, rel) in seen:
            raise UsageError(f"{where}: sample {sample_id!r} lists {rel[:200]!r} twice; remove the duplicate row")
        seen.add((sample_id, rel))
        file = Path(rel) if os.path.isabs(rel) else base / rel
        if file.is_dir():
            # A folder row stands for the image fields inside it; they are named
            # relative to that folder, as when the folder is given as an INPUT.
            images, _slides, _dicoms = _classify_files(file)
            if not images:
                raise UsageError(f"{where}: folder {rel!r} holds no images (jpg, png, tif); list files instead")
            for img in images:
                by_sample.setdefault(sample_id, []).append(
                    SourceRef(os.path.abspath(img), img.name, "image", mpp))
            continue
        kind = _manifest_kind(file)
        by_sample.setdefault(sample_id, []).append(SourceRef(os.path.abspath(file), rel, kind, mpp))
    if not by_sample:
        raise UsageError(f"{path}: manifest lists no samples")
    for sample_id, refs in by_sample.items():
        out.samples.append(SampleSpec(sample_id, tuple(refs), str(path)))


def discover(inputs: list[str | Path]) -> Discovery:
    """Samples for the given INPUT paths, in a stable order. Raises UsageError for
    a bad manifest or colliding sample_ids; a missing input is a problem, not fatal."""
    out = Discovery()
    for raw in inputs:
        path = Path(raw)
        if not path.exists():
            out.problems.append((str(path), "input not found; check the path"))
            continue
        if path.is_file() and path.suffix.lower() == ".csv":
            read_manifest(path, out)
        elif path.is_file():
            kind = reader_kind_for(path)
            # A file given by name is a sample even when unrecognised: opening it
            # later gives the precise reason in errors.csv.
            out.samples.append(SampleSpec(_sanitize(path.stem), (SourceRef(str(path.resolve()), path.name, kind or "openslide"),), str(path)))
        elif path.is_dir():
            if _folder_samples(path, out) == 0:
                out.problems.append((str(path), "folder holds no slides or images (jpg, png, tif, svs, ...)"))
        else:
            out.problems.append((str(path), "not a file or folder"))
    seen: dict[str, str] = {}
    for sample in out.samples:
        if sample.sample_id in seen:
            raise UsageError(
                f"two inputs give the same sample_id {sample.sample_id!r} ({seen[sample.sample_id]} and "
                f"{sample.origin}); rename one or list them in a manifest.csv with distinct sample_ids"
            )
        seen[sample.sample_id] = sample.origin
    return out
