"""Turn the command line's INPUT paths into samples.

The rule (README "Inputs"), applied to every folder under an INPUT folder, at
any depth:

- a slide file (anything OpenSlide opens) is one sample, named after the file's
  stem; the DICOM files of one folder are one slide;
- a folder that directly holds image fields (any file Pillow or tifffile reads,
  decided by content) is one sample named after that folder; each page of a
  multi-page TIFF is a field (``file.tif#2``: page 2);
- a ``manifest.csv`` (``sample_id,path[,mpp]``, given as an INPUT or found in a
  walked folder) defines the samples of the files it lists, with their mpp
  (a number in um/px, or ``auto``: estimated from the red cells);
  paths relative to the manifest. Files a manifest lists are not also taken by
  the folder rule; the rest of the folder is walked as usual;
- two samples with the same sample_id are an error naming both paths.

Every other file is either ignored silently (hidden files and folders, side-car
text such as .txt/.csv/.xml/.json, a .mrxs slide's data folder, slideproc's own
output folders) or named in :attr:`Discovery.left_out` with the reason; the
run logs it and lists it in run.json.

Discovery reads headers only (TIFF tags, image headers); opening and reading
happen later, per sample, so one bad file fails one sample, not the run.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..errors import InputError, SourceError, UsageError
from .base import SourceRef
from .image_header import page_name, read_header
from .mpp import MPP_RANGE_UM
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
    # (path, reason) for files under an input that are in no sample (not an
    # image or slide, a TIFF's preview page, ...): logged and listed in run.json.
    left_out: list[tuple[str, str]] = field(default_factory=list)


# Side-car files that sit beside slides and fields (notes, exports, metadata):
# never a sample, not worth a line each.
SIDECAR_SUFFIXES = frozenset({".txt", ".csv", ".tsv", ".xml", ".json", ".yaml", ".yml", ".md", ".log", ".ini"})
MANIFEST_NAME = "manifest.csv"


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


def _visible(names) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def _auto(refs: list[SourceRef], auto: bool) -> list[SourceRef]:
    """``refs`` marked to have their resolution estimated (manifest mpp ``auto``)."""
    return [dataclasses.replace(r, estimate_mpp=True) for r in refs] if auto else refs


def image_refs(path: Path, name: str, mpp: float | None, out: Discovery) -> list[SourceRef]:
    """The field(s) of one image file: one SourceRef per page that is a field
    (``name#N`` when the file has several); preview pages go to ``out.left_out``.
    A file whose header cannot be read is one ref: opening it names the fault."""
    resolved = os.path.abspath(path)
    try:
        header = read_header(resolved)
    except SourceError:
        return [SourceRef(resolved, name, "image", mpp)]
    for page, why in header.previews:
        out.left_out.append((f"{resolved}#{page + 1}", f"page {page + 1} is {why}, not a field"))
    if len(header.pages) == 1:
        # One field (perhaps beside previews): named after the file alone.
        page = header.pages[0]
        return [SourceRef(resolved, name, "image", mpp, page or None)]
    return [SourceRef(resolved, page_name(name, page), "image", mpp, page) for page in header.pages]


def _classify_folder(folder: Path, names: list[str], out: Discovery
                     ) -> tuple[list[Path], list[Path], list[Path]]:
    """(image fields, slide files, dicom files) among ``names`` in ``folder``;
    anything else that is not a side-car goes to ``out.left_out``."""
    images, slides, dicoms = [], [], []
    for name in names:
        p = folder / name
        if not p.is_file():
            continue
        suffix = p.suffix.lower()
        if suffix == ".dcm":
            dicoms.append(p)
            continue
        if suffix in SIDECAR_SUFFIXES:
            continue
        try:
            kind = reader_kind_for(p)
        except OSError as err:
            out.left_out.append((str(p), f"cannot be read: {err.strerror or err}"))
            continue
        if kind == "image":
            images.append(p)
        elif kind == "openslide":
            (dicoms if detect_format(str(p)) == "dicom" else slides).append(p)
        else:
            out.left_out.append((str(p), "not a slide or image slideproc can read (OpenSlide, Pillow and "
                                         "tifffile do not recognise it)"))
    return images, slides, dicoms


def _folder_samples(folder: Path, names: list[str], out: Discovery) -> int:
    """The samples that the files ``names`` directly inside ``folder`` make."""
    images, slides, dicoms = _classify_folder(folder, names, out)
    found = 0
    if images:
        refs = tuple(r for p in images for r in image_refs(p, p.name, None, out))
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
    return found


def _is_output_folder(names: list[str]) -> bool:
    """A slideproc OUT_DIR (run.json beside errors.csv): results, not inputs."""
    return "run.json" in names and "errors.csv" in names


def _walk(root: Path, out: Discovery) -> int:
    """Samples from every folder under ``root`` (any depth); returns how many."""
    folders: list[tuple[Path, list[str]]] = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        names = _visible(filenames)
        if real in seen or _is_output_folder(names):
            if real not in seen and dirpath != str(root):
                out.left_out.append((dirpath, "a slideproc output folder (run.json, errors.csv), not an input"))
            dirnames[:] = []  # a symlink loop, or results: not walked
            continue
        seen.add(real)
        stems = {os.path.splitext(n)[0] for n in names if n.lower().endswith(".mrxs")}
        # Hidden folders, a .mrxs slide's data folder (its own files), Zarr stores.
        dirnames[:] = [d for d in _visible(dirnames) if d not in stems and not d.lower().endswith(".zarr")]
        folders.append((Path(dirpath), names))
    # Manifests first, wherever they are: the files they list are theirs.
    claimed: set[str] = set()
    found = 0
    for folder, names in folders:
        for name in names:
            if name.lower() == MANIFEST_NAME:
                before = len(out.samples)
                claimed |= read_manifest(folder / name, out)
                found += len(out.samples) - before
    for folder, names in folders:
        free = [n for n in names if os.path.abspath(folder / n) not in claimed and n.lower() != MANIFEST_NAME]
        found += _folder_samples(folder, free, out)
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


def read_manifest(path: Path, out: Discovery) -> set[str]:
    """Add the manifest's samples to ``out``; returns the absolute paths of the
    files it lists (for a folder row, the files inside that folder)."""
    rows = _parse_manifest(path)
    claimed: set[str] = set()
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
        auto = mpp_text.lower() == "auto"  # estimate from the red cells
        if mpp_text and not auto:
            try:
                mpp = float(mpp_text)
            except ValueError:
                mpp = -1.0
            if not (math.isfinite(mpp) and mpp > 0):
                raise UsageError(f"{where}: mpp must be a positive number of um per pixel, got {mpp_text[:40]!r}")
            lo, hi = MPP_RANGE_UM
            if not lo <= mpp <= hi:
                raise UsageError(f"{where}: mpp {mpp_text[:40]} um per pixel is outside what brightfield "
                                 f"microscopes produce ({lo:g}-{hi:g}); give the level-0 resolution in um per pixel")
        if (sample_id, rel) in seen:
            raise UsageError(f"{where}: sample {sample_id!r} lists {rel[:200]!r} twice; remove the duplicate row")
        seen.add((sample_id, rel))
        file = Path(rel) if os.path.isabs(rel) else base / rel
        if file.is_dir():
            # A folder row stands for the image fields inside it; they are named
            # relative to that folder, as when the folder is given as an INPUT.
            names = _visible(os.listdir(file))
            images, slides, dicoms = _classify_folder(file, names, out)
            if not images:
                raise UsageError(f"{where}: folder {rel!r} holds no images (jpg, png, tif, ...); list files instead")
            for other in slides + dicoms:
                out.left_out.append((str(other), f"a slide inside image folder {rel!r} of {where}; "
                                                 "list it on its own row to process it"))
            claimed |= {os.path.abspath(file / n) for n in names}
            for img in images:
                by_sample.setdefault(sample_id, []).extend(_auto(image_refs(img, img.name, mpp, out), auto))
            continue
        kind = _manifest_kind(file)
        claimed.add(os.path.abspath(file))
        if kind == "image" and file.is_file():
            by_sample.setdefault(sample_id, []).extend(_auto(image_refs(file, rel, mpp, out), auto))
        else:
            by_sample.setdefault(sample_id, []).extend(_auto([SourceRef(os.path.abspath(file), rel, kind, mpp)], auto))
    if not by_sample:
        raise UsageError(f"{path}: manifest lists no samples")
    for sample_id, refs in by_sample.items():
        out.samples.append(SampleSpec(sample_id, tuple(refs), str(path)))
    return claimed


def discover(inputs: list[str | Path]) -> Discovery:
    """Samples for the given INPUT paths, in a stable order (module docstring).

    Raises UsageError for a bad manifest, two samples with the same
    sample_id, or one file in two samples; a missing input or a folder with nothing to process is a
    problem (a failed row in errors.csv), not fatal.
    """
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
            refs = (image_refs(path, path.name, None, out) if kind == "image"
                    else [SourceRef(str(path.resolve()), path.name, kind or "openslide")])
            out.samples.append(SampleSpec(_sanitize(path.stem), tuple(refs), str(path)))
        elif path.is_dir():
            left = len(out.left_out)
            if _walk(path, out) == 0:
                listed = "" if len(out.left_out) == left else f" ({len(out.left_out) - left} other file(s), named in the log)"
                out.problems.append((str(path), f"folder holds no slides or images (jpg, png, tif, svs, ...){listed}"))
        else:
            out.problems.append((str(path), "not a file or folder"))
    seen: dict[str, str] = {}
    for sample in out.samples:
        if sample.sample_id in seen:
            raise UsageError(
                f"two inputs give the same sample_id {sample.sample_id!r} ({seen[sample.sample_id]} and "
                f"{sample.origin}); rename one of them, or list them in a manifest.csv with distinct sample_ids"
            )
        seen[sample.sample_id] = sample.origin
    # One file (page) belongs to one sample: counted in two, the same cells would enter
    # two patients' differentials.
    owner: dict[tuple[str, int | None], str] = {}
    for sample in out.samples:
        for ref in sample.sources:
            key = (os.path.realpath(ref.path), ref.page)  # a link to a file is that file
            other = owner.setdefault(key, sample.sample_id)
            if other != sample.sample_id:
                raise UsageError(
                    f"{ref.path}{'' if ref.page is None else f' (page {ref.page + 1})'} is in two samples, "
                    f"{other!r} and {sample.sample_id!r}; a file belongs to one sample (one patient): "
                    "remove it from one of them")
    return out
