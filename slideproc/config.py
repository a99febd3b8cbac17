"""Configuration: frozen dataclasses read from YAML and validated on load.

One module serves every command. ``load_run_config`` reads configs/default.yaml
style files (detect/run/report), ``load_train_config`` configs/train.yaml style
files. Unknown keys and bad values raise :class:`ConfigError` naming the dotted
key. CLI flags override through :func:`with_overrides`, which builds a new
config; nothing is ever set on a live object.

Units live in the key names: ``_um`` micrometres, ``_um2`` square micrometres,
``_px`` pixels. Anything physical is in micrometres so one config serves slides
of any resolution.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from .errors import ConfigError

# Default configs ship inside the package so an installed slideproc works from
# any directory; configs/ at the repository root holds the same files for users
# to copy and edit (tests/test_config.py keeps them equal).
PACKAGE_CONFIG_DIR = Path(__file__).parent / "configs"

DEFAULT_NON_CELL = ("ART", "NIF", "KSC")
DEFAULT_MYELOID = ("BLA", "PMO", "MYB", "MMZ", "NGB", "NGS", "EOS", "ABE", "BAS", "MON", "FGC")
DEFAULT_ERYTHROID = ("PEB", "EBO")


# ----------------------------------------------------------------------------
# run / detect / report
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class SourceConfig:
    # Resolution detection works at. 0.5 um/px keeps a 7 um lymphocyte nucleus
    # at ~14 px across, enough to split touching nuclei, at a quarter of the
    # pixels of a 0.25 um/px (40x) level 0.
    working_mpp_um: float = 0.5
    # Resolution used when a file carries none and neither the manifest nor
    # --mpp gives one. null = refuse (never guess).
    fallback_mpp_um: float | None = None


@dataclass(frozen=True)
class TilingConfig:
    # Tile edge at the working resolution. 1024 px at 0.5 um/px = 512 um.
    tile_size_px: int = 1024
    # Overlap on each side, in um: at least the diameter of the largest cell
    # (a 25 um promyelocyte) so every cell lies whole in the tile whose core
    # holds its centroid.
    overlap_um: float = 30.0
    # Resolution of the low-resolution image the foreground mask is computed on.
    foreground_mpp_um: float = 8.0
    # A mask pixel is foreground when its saturation exceeds this (0-1) or its
    # brightness falls below ``foreground_max_brightness``; blank glass is bright
    # and grey.
    foreground_min_saturation: float = 0.06
    foreground_max_brightness: float = 0.85
    # Dilation of the mask in um, so cells at the edge of a smear are not cut off.
    foreground_dilation_um: float = 40.0
    # A tile is processed when at least this fraction of its core is foreground.
    min_foreground_fraction: float = 0.0001


@dataclass(frozen=True)
class SegmentConfig:
    # Nucleus (or nuclear fragment group) area limits. A platelet is 2-3 um
    # across (< 7 um2); the smallest lymphocyte nucleus is ~6 um (~28 um2).
    min_nucleus_area_um2: float = 12.0
    max_nucleus_area_um2: float = 450.0
    # Smallest expected nucleus radius (um): the scale of the split between
    # touching nuclei.
    min_nucleus_radius_um: float = 2.5
    # Nuclear fragments (lobes) whose gap is smaller than this belong to one cell.
    lobe_merge_distance_um: float = 3.0
    # Maximum cell radius, used for cell masks and bounding boxes.
    max_cell_radius_um: float = 12.5


@dataclass(frozen=True)
class CropConfig:
    # Field of view around each centroid. The Matek crops are 250 px; their
    # resolution was estimated from red-cell diameters (see configs/default.yaml).
    field_of_view_um: float = 25.0


@dataclass(frozen=True)
class ClassifyConfig:
    # Fixed batch size: the compiled predict function is traced once, the
    # last batch is padded.
    batch_size: int = 32
    # "auto" = mixed_float16 on GPU, float32 on CPU.
    mixed_precision: str = "auto"


@dataclass(frozen=True)
class EngineConfig:
    # Worker processes for the local cluster; null = one per core.
    workers: int | None = None
    threads_per_worker: int = 1
    # Back-pressure: tiles submitted but not yet finished, per worker.
    tiles_in_flight_per_worker: int = 4
    # Times a task is retried when its worker dies.
    retries: int = 3
    memory_limit: str = "auto"


@dataclass(frozen=True)
class ReportConfig:
    non_cell_classes: tuple[str, ...] = DEFAULT_NON_CELL
    myeloid_classes: tuple[str, ...] = DEFAULT_MYELOID
    erythroid_classes: tuple[str, ...] = DEFAULT_ERYTHROID
    # The usual bone-marrow differential counts 500 nucleated cells.
    min_cells: int = 500
    # Cells whose calibrated confidence is below this are listed "needs review".
    review_confidence: float = 0.5


@dataclass(frozen=True)
class RunConfig:
    source: SourceConfig = field(default_factory=SourceConfig)
    tiling: TilingConfig = field(default_factory=TilingConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    crops: CropConfig = field(default_factory=CropConfig)
    classify: ClassifyConfig = field(default_factory=ClassifyConfig)
    engine: EngineConfig = field(default_factory=EngineConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


# ----------------------------------------------------------------------------
# train
# ----------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelConfig:
    # InceptionResNetV2 needs >= 75 px; 299 is its native size.
    input_size_px: int = 299
    weights: str = "imagenet"  # imagenet | none | PATH
    dropout: float = 0.3


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 32
    epochs: int = 10
    val_fraction: float = 0.2
    min_per_class: int = 1
    seed: int = 0


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


# ----------------------------------------------------------------------------
# loading and validation
# ----------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str) -> Any:
    """Check ``value`` against the annotation ``tp``; return it in canonical form."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"config key '{key}' must not be empty")
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is tuple:
        (item_tp, _ellipsis) = typing.get_args(tp)
        if isinstance(value, str) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key '{key}' must be a list, got {value!r}")
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {value!r}")
        return value
    raise ConfigError(f"config key '{key}' has an unsupported type {_type_name(tp)}")


def _build(cls: type, data: Any, prefix: str = "") -> Any:
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        where = f"'{prefix}'" if prefix else "the top level"
        raise ConfigError(f"config {where} must be a mapping of keys to values, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    for key in data:
        if key not in names:
            dotted = f"{prefix}.{key}" if prefix else str(key)
            raise ConfigError(
                f"unknown config key '{dotted}' (known here: {', '.join(sorted(names))})"
            )
    kwargs = {}
    for name in names:
        if name in data:
            dotted = f"{prefix}.{name}" if prefix else name
            kwargs[name] = _coerce(data[name], hints[name], dotted)
    obj = cls(**kwargs)
    _validate(obj, prefix)
    return obj


def _positive(obj: Any, prefix: str, *names: str, allow_zero: bool = False) -> None:
    for name in names:
        value = getattr(obj, name)
        if value is None:
            continue
        bad = value < 0 if allow_zero else value <= 0
        if bad:
            sign = ">= 0" if allow_zero else "> 0"
            raise ConfigError(f"config key '{prefix}.{name}' must be {sign}, got {value!r}")


def _fraction(obj: Any, prefix: str, *names: str) -> None:
    for name in names:
        value = getattr(obj, name)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"config key '{prefix}.{name}' must be between 0 and 1, got {value!r}")


def _validate(obj: Any, prefix: str) -> None:
    """Range checks per section (types are already checked)."""
    if isinstance(obj, SourceConfig):
        _positive(obj, prefix, "working_mpp_um", "fallback_mpp_um")
    elif isinstance(obj, TilingConfig):
        _positive(obj, prefix, "tile_size_px", "foreground_mpp_um")
        _positive(obj, prefix, "overlap_um", "foreground_dilation_um", allow_zero=True)
        _fraction(obj, prefix, "foreground_min_saturation", "foreground_max_brightness",
                  "min_foreground_fraction")
        if obj.tile_size_px < 64:
            raise ConfigError(f"config key '{prefix}.tile_size_px' must be >= 64, got {obj.tile_size_px}")
    elif isinstance(obj, SegmentConfig):
        _positive(obj, prefix, "min_nucleus_area_um2", "max_nucleus_area_um2",
                  "min_nucleus_radius_um", "max_cell_radius_um")
        _positive(obj, prefix, "lobe_merge_distance_um", allow_zero=True)
        if obj.min_nucleus_area_um2 >= obj.max_nucleus_area_um2:
            raise ConfigError(
                f"config key '{prefix}.min_nucleus_area_um2' must be below "
                f"'{prefix}.max_nucleus_area_um2'"
            )
    elif isinstance(obj, CropConfig):
        _positive(obj, prefix, "field_of_view_um")
    elif isinstance(obj, ClassifyConfig):
        _positive(obj, prefix, "batch_size")
        if obj.mixed_precision not in ("auto", "float32", "mixed_float16", "mixed_bfloat16"):
            raise ConfigError(
                f"config key '{prefix}.mixed_precision' must be auto, float32, mixed_float16 "
                f"or mixed_bfloat16, got {obj.mixed_precision!r}"
            )
    elif isinstance(obj, EngineConfig):
        _positive(obj, prefix, "workers", "threads_per_worker", "tiles_in_flight_per_worker")
        _positive(obj, prefix, "retries", allow_zero=True)
    elif isinstance(obj, ReportConfig):
        _positive(obj, prefix, "min_cells", allow_zero=True)
        _fraction(obj, prefix, "review_confidence")
    elif isinstance(obj, ModelConfig):
        if obj.input_size_px < 75:
            raise ConfigError(
                f"config key '{prefix}.input_size_px' must be >= 75 (InceptionResNetV2's minimum), "
                f"got {obj.input_size_px}"
            )
        _fraction(obj, prefix, "dropout")
    elif isinstance(obj, TrainingConfig):
        _positive(obj, prefix, "batch_size", "epochs", "min_per_class")
        if not 0.0 < obj.val_fraction < 1.0:
            raise ConfigError(f"config key '{prefix}.val_fraction' must be between 0 and 1, got {obj.val_fraction!r}")
    elif isinstance(obj, RunConfig):
        # Overlap must leave a core: a tile all overlap would own no cell.
        overlap_px = obj.tiling.overlap_um / obj.source.working_mpp_um
        if 2 * overlap_px >= obj.tiling.tile_size_px:
            raise ConfigError(
                f"config key 'tiling.overlap_um' ({obj.tiling.overlap_um} um = {overlap_px:.0f} px at "
                f"{obj.source.working_mpp_um} um/px) must be less than half of 'tiling.tile_size_px' "
                f"({obj.tiling.tile_size_px} px)"
            )


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        line = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            line = f" at line {mark.line + 1}"
        raise ConfigError(f"config file {path} is not valid YAML{line}") from None


def config_from_dict(cls: type, data: Any, source: str = "config") -> Any:
    try:
        return _build(cls, data)
    except ConfigError as err:
        if source != "config":
            raise ConfigError(f"{source}: {err}") from None
        raise


def load_run_config(path: str | Path | None = None) -> RunConfig:
    """Read a run/detect config; None reads the packaged configs/default.yaml."""
    path = Path(path) if path is not None else PACKAGE_CONFIG_DIR / "default.yaml"
    return config_from_dict(RunConfig, _read_yaml(path), source=str(path))


def load_train_config(path: str | Path | None = None) -> TrainConfig:
    """Read a train config; None reads the packaged configs/train.yaml."""
    path = Path(path) if path is not None else PACKAGE_CONFIG_DIR / "train.yaml"
    return config_from_dict(TrainConfig, _read_yaml(path), source=str(path))


def with_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
    """A new config with dotted keys replaced, e.g. {"source.fallback_mpp_um": 0.25}.

    None values are ignored (an absent CLI flag). The result is validated again.
    """
    data = to_dict(config)
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = data
        parts = dotted.split(".")
        for part in parts[:-1]:
            node = node[part]
        if parts[-1] not in node:
            raise ConfigError(f"unknown config key '{dotted}'")
        node[parts[-1]] = value
    return config_from_dict(type(config), data)


def to_dict(config: Any) -> dict:
    """Plain nested dict (lists for tuples): for YAML, JSON and Zarr attributes."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple):
            return [plain(x) for x in v]
        return v

    return plain(config)


def dump_yaml(config: Any, path: str | Path) -> None:
    import yaml

    Path(path).write_text(yaml.safe_dump(to_dict(config), sort_keys=False), encoding="utf-8")
