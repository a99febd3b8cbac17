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
import logging
import math
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
log = logging.getLogger("slideproc.config")

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
    # Level-0 resolution of every input, over the manifest's mpp column and the
    # files' own metadata: what --mpp sets. null = not given. (Precedence in
    # slideproc.sources.mpp.resolve_mpp.)
    mpp_um: float | None = None
    # Resolution used when a file carries none and neither --mpp nor the
    # manifest gives one. null = refuse (never guess).
    fallback_mpp_um: float | None = None
    # A file with no resolution of its own (and none from --mpp or the
    # manifest): "none" = fallback_mpp_um or refuse; "red_cells" = estimated
    # from its red cells, 7.5 um across (slideproc.mpp_estimate; --mpp auto).
    estimate_mpp: str = "none"
    # Largest plain image (jpg, png, striped tif, ...) decoded, in pixels
    # (width x height). Stitched microscope fields reach hundreds of megapixels;
    # 500 MP is 1.5 GB decoded (RGB), which a worker holds while it reads the
    # field. Pillow's own guard (179 MP) is replaced by this one; a header
    # claiming more (a decompression bomb) is refused before decoding.
    max_image_pixels: int = 500_000_000


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
    # Gaussian blur before thresholding (um): evens out JPEG noise and
    # cytoplasmic granules (~0.5 um) without merging nuclei.
    smoothing_um: float = 0.4
    # A pixel is stained (not glass) when its largest channel optical density
    # exceeds this; glass is ~0, pale cytoplasm ~0.05-0.1.
    stained_min_od: float = 0.04
    # Nuclear channel = weights . (OD_R, OD_G, OD_B), here OD_G - OD_B: chromatin
    # absorbs green far more than blue, while red cells of any tint (pink or
    # grey-violet) absorb blue about as much as green (haemoglobin's Soret
    # band), so they read ~0-0.1 against nuclei at 0.3-0.8 (BENCHMARKS.md,
    # TXL-PBC: four microscopes, cameras and stains).
    nuclear_weights: tuple[float, ...] = (0.0, 1.0, -1.0)
    # A second channel, same form, a nucleus must stand out on as well (empty:
    # none): the nuclear channel is then the pixelwise minimum of the two.
    # 5 (OD_R - 0.5 OD_B): eosin (H&E, eosinophil granules) and stacked pink
    # red cells also absorb green more than blue but hardly absorb red light,
    # so they read ~0 here; nuclei read 1.7-3.8x higher on OD_G - OD_B than on
    # OD_R - 0.5 OD_B, so the factor 5 leaves them on OD_G - OD_B.
    # configs/od-red-channel.yaml is the single channel OD_R - 0.5 OD_B (the
    # default before issue 15; better on H&E sections).
    also_weights: tuple[float, ...] = (5.0, 0.0, -2.5)
    # Bounds on the per-source Otsu threshold of the nuclear channel.
    # Red cells read <= ~0.1 and nuclei 0.2-0.8 whatever the stain: the lower
    # bound stops a nucleus-free tile adapting down into plasma and the pale
    # edges of red cells (those of grey-violet films that reach it are kept out
    # by min_nuclear_contrast and the nucleus-area floor; 0.12-0.15 here lost
    # BCD's pale white cells), the upper one keeps pale nuclei when a tile is
    # full of dark ones. The upper bound, the contrast and the pale level are
    # about twice those used on OD_R - 0.5 OD_B (0.3, 0.04, 0.2 there), as
    # nuclei read; the lower bound stayed.
    nuclear_threshold_min: float = 0.08
    nuclear_threshold_max: float = 0.4
    # A nucleus peaks at least this far (OD) above the threshold; granule
    # specks and pale cytoplasm that barely cross it are dropped.
    min_nuclear_contrast: float = 0.08
    # Holes in a nucleus up to this area are filled (um2): pale nucleoli and
    # chromatin gaps (1-4 um); larger enclosed spaces are glass ringed by cells.
    max_hole_um2: float = 20.0
    # Nuclear pieces smaller than this are ignored before grouping (um2):
    # granules, stain precipitate.
    min_fragment_area_um2: float = 2.0
    # Nucleus (all lobes of one cell) area limits (um2). A lone platelet is
    # 2-3 um across (< 7 um2), a clump of a few 8-14: their granules read as
    # high as chromatin on OD_G - OD_B, so the floor is 14 um2 (at 10, a drawn
    # smear's detections were 5 % platelet clumps, seed 4242). A nucleus
    # under ~4.2 um across is dropped with them: the smallest pyknotic
    # normoblasts (~4 um) may be. The thresholded lobes of a neutrophil
    # (3-4 x 3-6 um2) count together. 800 um2 (~32 um across) admits a blast
    # whose deep-blue cytoplasm crosses the threshold.
    min_nucleus_area_um2: float = 14.0
    max_nucleus_area_um2: float = 800.0
    # A nucleus smaller than small_nucleus_um2 must average at least
    # small_nucleus_min_od (OD) on the nuclear channel; small_nucleus_min_od 0
    # (or small_nucleus_um2 <= min_nucleus_area_um2) = no such rule. It can
    # only act where the threshold lies below small_nucleus_min_od (a nucleus's
    # pixels all exceed the threshold): smears, not the pale-level pass (0.3).
    # Small nuclei (lymphocytes, normoblasts) hold the densest chromatin of
    # all (0.25-0.6 on drawn smears), while a platelet clump's granulomere,
    # which reads like chromatin on OD_G - OD_B, averages ~0.15-0.25 over its
    # 14-30 um2: without the rule, 2-4 % of a drawn smear's detections were
    # platelet clumps (tuning seeds 101, 202; the nucleus-area floor alone
    # cannot go higher without losing small nuclei).
    small_nucleus_um2: float = 24.0
    small_nucleus_min_od: float = 0.25
    # A blob above this (um2; a 16 um round nucleus is 200 um2) is nucleus
    # plus deep-blue cytoplasm, or several cells: it is thresholded again on
    # its own pixels (Otsu) when its two levels differ by at least
    # ``min_refine_contrast`` (OD) and the darker part lies deeper inside the
    # blob than the rest (a darker rim is deep-blue cytoplasm around a paler
    # nucleus: that blob stays whole).
    max_single_nucleus_area_um2: float = 200.0
    min_refine_contrast: float = 0.1
    # ... and only when the darker part keeps at least this fraction of it.
    min_refine_fraction: float = 0.3
    # Smallest inscribed radius (um) of a nucleus that may be split from a
    # touching one; lobes (~1.5 um) never seed a split.
    min_nucleus_radius_um: float = 2.5
    # Nuclear fragments (lobes) whose gap is at most this (um), with stained
    # cytoplasm in between, belong to one cell ...
    lobe_merge_distance_um: float = 3.0
    # ... as long as the group spans no more than this (um): a segmented
    # neutrophil's lobes span ~8-11 um, two neighbouring nuclei more.
    max_lobed_extent_um: float = 12.0
    # A fragment smaller than this (um2) within the merge distance joins its
    # neighbour whatever the span: granule clumps and platelets lying on a
    # cell are part of that cell, not cells of their own.
    satellite_area_um2: float = 10.0
    # A field dense with dark nuclei sets its Otsu threshold high (up to
    # nuclear_threshold_max), above the open chromatin of a blast or monocyte
    # (~0.3-0.4). Above this level (OD) segmentation runs again at it on the
    # blobs holding no nucleus found so far and adds the cells found there
    # that touch none. Smear thresholds (0.1-0.3) lie at or below it, so there it
    # never runs; 0 turns it off.
    pale_nucleus_threshold: float = 0.3
    # Cytoplasm kept around the nucleus for the cell mask, box and area (um):
    # pixels within this distance of the nucleus whose nuclear channel exceeds
    # ``cytoplasm_min_od`` (bluish-lilac cytoplasm; red cells read ~0-0.1).
    cytoplasm_um: float = 4.0
    cytoplasm_min_od: float = 0.02
    # Reported centre: "cell" (centroid of the cell mask) or "nucleus".
    centroid: str = "cell"


@dataclass(frozen=True)
class CropConfig:
    # Field of view around each centroid (um), resampled to the model input.
    # Matches the Matek crops: 250 px at ~0.095 um/px, estimated from
    # red-cell diameters (~80 px = 7.5 um; see configs/default.yaml).
    field_of_view_um: float = 24.0


@dataclass(frozen=True)
class ClassifyConfig:
    # Fixed batch size: the compiled predict function is traced once, the
    # last batch is padded.
    batch_size: int = 32
    # "auto" = mixed_float16 on GPU, float32 on CPU.
    mixed_precision: str = "auto"
    # Test-time augmentation: probabilities averaged over 1, 2, 4 or 8 turned
    # and mirrored views of each crop (classify/tta.py), then calibrated for
    # that many views. Each view costs one forward pass.
    tta_views: int = 1


@dataclass(frozen=True)
class EngineConfig:
    # Worker processes for the local cluster; null = one per core.
    workers: int | None = None
    threads_per_worker: int = 1
    # Back-pressure: tiles submitted but not yet finished, per worker.
    tiles_in_flight_per_worker: int = 4
    # Image fields (folder samples) planned, detected and cropped per task.
    fields_per_task: int = 16
    # Times a task is retried when its worker dies.
    retries: int = 3
    memory_limit: str = "auto"
    # Seconds to reach a --scheduler and hear it answer as a Dask scheduler,
    # and to wait for its first worker; past this the run stops with exit 2.
    connect_timeout_s: float = 30.0
    # Seconds a run waits with no worker at all before it fails the samples it
    # has not finished (a nanny restarts a killed worker in a few seconds).
    no_worker_timeout_s: float = 60.0


@dataclass(frozen=True)
class ReferenceRange:
    """A typical adult range, in percent of nucleated cells, for one class or a group."""

    name: str = ""
    # Classes summed for the range (PEB + EBO for the erythroid precursors).
    classes: tuple[str, ...] = ()
    low_percent: float = 0.0
    high_percent: float = 100.0


# Typical adult marrow, composite teaching ranges (REFERENCE_RANGES.md gives the
# published cohorts to check them against, and where they disagree); textbooks and
# labs differ, so they are configurable and shown as "typical adult" only.
DEFAULT_REFERENCE_RANGES = (
    ReferenceRange("blasts", ("BLA",), 0.0, 3.0),
    ReferenceRange("promyelocytes", ("PMO",), 2.0, 8.0),
    ReferenceRange("myelocytes", ("MYB",), 10.0, 15.0),
    ReferenceRange("metamyelocytes", ("MMZ",), 10.0, 15.0),
    ReferenceRange("band neutrophils", ("NGB",), 10.0, 15.0),
    ReferenceRange("segmented neutrophils", ("NGS",), 7.0, 30.0),
    ReferenceRange("eosinophils", ("EOS",), 1.0, 4.0),
    ReferenceRange("basophils", ("BAS",), 0.0, 1.0),
    ReferenceRange("monocytes", ("MON",), 0.0, 2.0),
    ReferenceRange("lymphocytes", ("LYT",), 5.0, 15.0),
    ReferenceRange("plasma cells", ("PLM",), 0.0, 2.0),
    ReferenceRange("erythroid precursors", ("PEB", "EBO"), 15.0, 25.0),
)


# quantify.METHODS (kept here so loading a config imports no numerics), or none.
ADJUSTMENT_CHOICES = ("emq-bcts", "emq", "pacc", "acc", "pcc", "cc", "none")


@dataclass(frozen=True)
class ReportConfig:
    non_cell_classes: tuple[str, ...] = DEFAULT_NON_CELL
    myeloid_classes: tuple[str, ...] = DEFAULT_MYELOID
    erythroid_classes: tuple[str, ...] = DEFAULT_ERYTHROID
    # The class whose share is the blast percent.
    blast_class: str = "BLA"
    # The usual bone-marrow differential counts 500 nucleated cells.
    min_cells: int = 500
    # Cells whose calibrated confidence is below this are listed "needs review".
    review_confidence: float = 0.5
    # Blast percent at or above this is flagged (>= 20 % defines acute leukaemia, WHO).
    blast_flag_percent: float = 20.0
    # Typical adult ranges (percent of nucleated cells), shaded on the charts.
    reference_ranges: tuple[ReferenceRange, ...] = DEFAULT_REFERENCE_RANGES
    # Typical adult M:E ratio, about 2:1 to 4:1.
    me_ratio_low: float = 2.0
    me_ratio_high: float = 4.0
    # Example crops per class in the report's gallery (when crops were saved).
    gallery_per_class: int = 8
    # How the adjusted differential estimates class shares from the cells' calibrated
    # probabilities and the model's record (quantify.py), or none (raw only). pacc: it
    # assumes only that the class mix changed; EM methods also need the calibrated scores
    # to be true posteriors, and miss blasts in blast-rich marrows even with a perfect
    # record (BENCHMARKS.md, "The differential").
    adjustment: str = "pacc"
    # Bootstrap replicates of the adjusted intervals (validation set and cells resampled).
    adjustment_bootstrap: int = 200
    # A sample with at least this percent of its cells below review_confidence is flagged.
    review_flag_percent: float = 25.0
    # A model whose validation balanced accuracy or blast recall is below these is flagged.
    model_min_balanced_accuracy: float = 0.7
    model_min_blast_recall: float = 0.7


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
WEIGHTS_CHOICES = ("imagenet", "none")  # or a path: notop .h5, or a slideproc MODEL_DIR
BALANCE_CHOICES = ("class_weight", "sampling", "none")
OPTIMIZER_CHOICES = ("adamw", "adam", "sgd")
SCHEDULE_CHOICES = ("cosine", "constant")
PRECISION_CHOICES = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
CALIBRATION_CHOICES = ("temperature", "vector")
NEAR_CHANCE_CHOICES = ("fail", "warn")
VIEW_CHOICES = (1, 2, 4, 8)


@dataclass(frozen=True)
class ModelConfig:
    # InceptionResNetV2 needs >= 75 px; 299 is its native size.
    input_size_px: int = 299
    weights: str = "imagenet"  # imagenet | none | PATH (notop .h5 or a slideproc MODEL_DIR)
    dropout: float = 0.3
    # Batch-norm momentum of the backbone. Keras' 0.99 averages over ~100
    # steps: too slow for a network trained from scratch on a few hundred
    # steps, whose validation then swings between chance and fair. null keeps
    # the Keras value (right for pretrained weights).
    bn_momentum: float | None = None


@dataclass(frozen=True)
class AugmentConfig:
    # Random horizontal/vertical flips and 90-degree rotations: a smear has no
    # up or left, so all 8 orientations of a cell are the same cell.
    flips: bool = True
    rotate90: bool = True
    # Scale jitter: zoom factor drawn from [1 - scale, 1 + scale] (<= 0.3).
    scale: float = 0.1
    # Shift of the crop centre, as a fraction of the crop edge (<= 0.1).
    shift: float = 0.05
    # Brightness: +- this fraction of 255. Contrast: factor in [1 - c, 1 + c].
    brightness: float = 0.1
    contrast: float = 0.15
    # Stain-colour jitter in optical density: per channel, OD * (1 +- stain)
    # + (+- stain / 2). Smears from other labs differ mostly here.
    stain: float = 0.1


@dataclass(frozen=True)
class TrainingConfig:
    batch_size: int = 32
    # Epochs of the main phase (the whole network). From pretrained weights a
    # head phase of ``head_epochs`` on a frozen backbone comes first.
    epochs: int = 10
    head_epochs: int = 2
    val_fraction: float = 0.2
    # Classes with fewer images are left out (named in the log and metrics.json):
    # below 20 a class gives at most 4 validation images (one is 25 points of
    # its recall) and too few to learn from.
    min_per_class: int = 20
    seed: int = 0
    # Imbalance: class_weight (loss weight n / (C * n_c), at most
    # ``max_class_weight``), sampling (each batch drawn class-balanced) or none.
    balance: str = "class_weight"
    # Upper bound of a class weight: unbounded, a class of 1 image among
    # thousands weighs hundreds of times an average one and its few images
    # dominate the gradient.
    max_class_weight: float = 10.0
    optimizer: str = "adamw"
    # Peak learning rate of the main phase; head phase uses ``head_learning_rate``.
    # 10x below the head's, so fine-tuning adjusts ImageNet features, not overwrites them.
    learning_rate: float = 1e-4
    head_learning_rate: float = 1e-3
    # Decoupled weight decay (AdamW), or L2-free SGD momentum decay.
    weight_decay: float = 1e-4
    # Linear warm-up, in epochs, then ``schedule`` down to 0 at the last epoch.
    warmup_epochs: float = 1.0
    schedule: str = "cosine"
    label_smoothing: float = 0.1
    # Stop when validation macro-F1 has not improved for this many epochs (0 = never).
    early_stopping_patience: int = 5
    # Before each validation, recompute batch-norm statistics as the exact mean
    # over this many training batches (0 = use the running averages).
    bn_recompute_batches: int = 0
    # Training batches per epoch; null = one pass over the training split.
    steps_per_epoch: int | None = None
    # Threads decoding and augmenting images in parallel with training.
    workers: int = 4
    # Wall-clock budget (minutes, whole run). When epochs run slower than the
    # budget allows, the learning-rate schedule follows time instead, and
    # training stops when the next epoch would not fit. null = no limit.
    max_minutes: float | None = None
    # auto = mixed_float16 on a GPU, float32 on CPU.
    mixed_precision: str = "auto"
    # XLA-compile the training step: true, false, or null (Keras decides: on
    # for TensorFlow and JAX). XLA costs a one-off compile of ~2 min for this
    # network on a 2-core CPU.
    jit_compile: bool | None = None
    # Run training steps eagerly (no graph): starts minutes sooner, each step
    # is several times slower. For tests and tiny data sets only.
    run_eagerly: bool = False
    # Test-time views (1, 2, 4, 8) of the validation each epoch, which chooses
    # the kept epoch. Calibrations for every view count are fitted at the end.
    tta_views: int = 1
    # temperature | vector (classify/calibration.py): how probabilities are calibrated.
    calibration: str = "temperature"
    # A kept model whose validation balanced accuracy is near chance (below
    # chance + 25 % of the way to 1) fails training (exit 1; the model is still
    # written, metrics.json says why) or only warns.
    near_chance: str = "fail"
    augment: AugmentConfig = field(default_factory=AugmentConfig)


@dataclass(frozen=True)
class TrainConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    training: TrainingConfig = field(default_factory=TrainingConfig)


# ----------------------------------------------------------------------------
# loading and validation
# ----------------------------------------------------------------------------
def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


_MAX_INT = 10**18 - 1


def _show(value: Any) -> str:
    """repr for an error message, cut short (a stray YAML block can be huge)."""
    try:
        text = repr(value)
    except ValueError:  # int too long to print
        return "a number too long to print"
    return text if len(text) <= 80 else text[:77] + "..."


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
            raise ConfigError(f"config key '{key}' must be a list, got {_show(value)}")
        return tuple(_coerce(v, item_tp, f"{key}[{i}]") for i, v in enumerate(value))
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"config key '{key}' must be true or false, got {_show(value)}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"config key '{key}' must be an integer, got {_show(value)}")
        # Bounded so every later message can print it (Python refuses to print
        # ints of more than 4300 digits) and no size overflows an array shape.
        if abs(value) > _MAX_INT:
            raise ConfigError(f"config key '{key}' is out of range (more than 18 digits)")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"config key '{key}' must be a number, got {_show(value)}")
        try:
            number = float(value)
        except OverflowError:  # an int beyond 1e308
            number = math.inf
        # YAML reads .nan and .inf as floats; NaN passes every "> 0" check.
        if not math.isfinite(number):
            raise ConfigError(f"config key '{key}' must be a finite number, got {_show(value)}")
        return number
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"config key '{key}' must be a string, got {_show(value)}")
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


def _views(obj: Any, prefix: str) -> None:
    if obj.tta_views not in VIEW_CHOICES:
        raise ConfigError(f"config key '{prefix}.tta_views' must be 1, 2, 4 or 8, got {obj.tta_views!r}")


def _validate(obj: Any, prefix: str) -> None:
    """Range checks per section (types are already checked)."""
    if isinstance(obj, SourceConfig) and obj.estimate_mpp not in ("none", "red_cells"):
        raise ConfigError(f"config key '{prefix}.estimate_mpp' must be none or red_cells, got {obj.estimate_mpp!r}")
    if isinstance(obj, SourceConfig):
        _positive(obj, prefix, "working_mpp_um", "fallback_mpp_um", "mpp_um", "max_image_pixels")
        from .sources.mpp import MPP_RANGE_UM

        lo, hi = MPP_RANGE_UM
        for name in ("mpp_um", "fallback_mpp_um"):
            value = getattr(obj, name)
            if value is not None and not lo <= value <= hi:
                raise ConfigError(f"config key '{prefix}.{name}' must be between {lo} and {hi} um per pixel "
                                  f"(what brightfield microscopes produce), got {value!r}")
    elif isinstance(obj, TilingConfig):
        _positive(obj, prefix, "tile_size_px", "foreground_mpp_um")
        _positive(obj, prefix, "overlap_um", "foreground_dilation_um", allow_zero=True)
        _fraction(obj, prefix, "foreground_min_saturation", "foreground_max_brightness",
                  "min_foreground_fraction")
        if obj.tile_size_px < 64:
            raise ConfigError(f"config key '{prefix}.tile_size_px' must be >= 64, got {obj.tile_size_px}")
    elif isinstance(obj, SegmentConfig):
        _positive(obj, prefix, "min_nucleus_area_um2", "max_nucleus_area_um2",
                  "min_nucleus_radius_um", "max_lobed_extent_um", "nuclear_threshold_max", "max_hole_um2",
                  "max_single_nucleus_area_um2")
        _positive(obj, prefix, "lobe_merge_distance_um", "smoothing_um", "stained_min_od",
                  "nuclear_threshold_min", "min_nuclear_contrast", "min_fragment_area_um2",
                  "cytoplasm_um", "min_refine_contrast", "cytoplasm_min_od",
                  "satellite_area_um2", "pale_nucleus_threshold", "small_nucleus_um2",
                  "small_nucleus_min_od", allow_zero=True)
        _fraction(obj, prefix, "min_refine_fraction")
        for key in ("nuclear_weights", "also_weights"):
            w = getattr(obj, key)
            if key == "also_weights" and not w:
                continue
            if len(w) != 3 or not all(math.isfinite(v) for v in w) or not any(w):
                raise ConfigError(f"config key '{prefix}.{key}' must be 3 finite numbers (weights of "
                                  f"OD_R, OD_G, OD_B), not all 0; got {list(w)!r}")
        if obj.centroid not in ("cell", "nucleus"):
            raise ConfigError(f"config key '{prefix}.centroid' must be cell or nucleus, got {obj.centroid!r}")
        if obj.nuclear_threshold_min > obj.nuclear_threshold_max:
            raise ConfigError(
                f"config key '{prefix}.nuclear_threshold_min' must not exceed "
                f"'{prefix}.nuclear_threshold_max'"
            )
        if obj.min_nucleus_area_um2 >= obj.max_nucleus_area_um2:
            raise ConfigError(
                f"config key '{prefix}.min_nucleus_area_um2' must be below "
                f"'{prefix}.max_nucleus_area_um2'"
            )
    elif isinstance(obj, CropConfig):
        _positive(obj, prefix, "field_of_view_um")
    elif isinstance(obj, ClassifyConfig):
        _positive(obj, prefix, "batch_size")
        _views(obj, prefix)
        if obj.mixed_precision not in ("auto", "float32", "mixed_float16", "mixed_bfloat16"):
            raise ConfigError(
                f"config key '{prefix}.mixed_precision' must be auto, float32, mixed_float16 "
                f"or mixed_bfloat16, got {obj.mixed_precision!r}"
            )
    elif isinstance(obj, EngineConfig):
        _positive(obj, prefix, "workers", "threads_per_worker", "tiles_in_flight_per_worker", "fields_per_task")
        _positive(obj, prefix, "retries", allow_zero=True)
        _positive(obj, prefix, "connect_timeout_s", "no_worker_timeout_s")
    elif isinstance(obj, ReportConfig):
        _positive(obj, prefix, "min_cells", "gallery_per_class", allow_zero=True)
        _positive(obj, prefix, "me_ratio_low", "me_ratio_high", allow_zero=True)
        _fraction(obj, prefix, "review_confidence", "model_min_balanced_accuracy", "model_min_blast_recall")
        _positive(obj, prefix, "adjustment_bootstrap")
        if obj.adjustment not in ADJUSTMENT_CHOICES:
            raise ConfigError(
                f"config key '{prefix}.adjustment' must be one of {', '.join(ADJUSTMENT_CHOICES)}, "
                f"got {obj.adjustment!r}"
            )
        if not 0.0 <= obj.review_flag_percent <= 100.0:
            raise ConfigError(
                f"config key '{prefix}.review_flag_percent' must be between 0 and 100, got {obj.review_flag_percent!r}"
            )
        if not 0.0 <= obj.blast_flag_percent <= 100.0:
            raise ConfigError(
                f"config key '{prefix}.blast_flag_percent' must be between 0 and 100, got {obj.blast_flag_percent!r}"
            )
        if obj.me_ratio_low > obj.me_ratio_high:
            raise ConfigError(f"config key '{prefix}.me_ratio_low' must not exceed '{prefix}.me_ratio_high'")
    elif isinstance(obj, ReferenceRange):
        if not obj.classes:
            raise ConfigError(f"config key '{prefix}.classes' must list at least one class")
        if not 0.0 <= obj.low_percent <= obj.high_percent <= 100.0:
            raise ConfigError(
                f"config keys '{prefix}.low_percent' and '{prefix}.high_percent' must satisfy "
                f"0 <= low <= high <= 100, got {obj.low_percent!r} and {obj.high_percent!r}"
            )
    elif isinstance(obj, ModelConfig):
        if obj.input_size_px < 75:
            raise ConfigError(
                f"config key '{prefix}.input_size_px' must be >= 75 (InceptionResNetV2's minimum), "
                f"got {obj.input_size_px}"
            )
        _fraction(obj, prefix, "dropout")
        if not obj.weights.strip():
            raise ConfigError(f"config key '{prefix}.weights' must be imagenet, none or a path")
        if obj.bn_momentum is not None and not 0.0 <= obj.bn_momentum < 1.0:
            raise ConfigError(
                f"config key '{prefix}.bn_momentum' must be in [0, 1) or null, got {obj.bn_momentum!r}"
            )
    elif isinstance(obj, AugmentConfig):
        _fraction(obj, prefix, "scale", "shift", "brightness", "contrast", "stain")
        # Beyond these the sampling box leaves the reflect padding (augment.py).
        if obj.scale > 0.3:
            raise ConfigError(f"config key '{prefix}.scale' must be <= 0.3, got {obj.scale!r}")
        if obj.shift > 0.1:
            raise ConfigError(f"config key '{prefix}.shift' must be <= 0.1, got {obj.shift!r}")
    elif isinstance(obj, TrainingConfig):
        _positive(obj, prefix, "batch_size", "epochs", "min_per_class", "learning_rate",
                  "head_learning_rate", "workers", "steps_per_epoch", "max_minutes", "max_class_weight")
        _views(obj, prefix)
        _positive(obj, prefix, "head_epochs", "weight_decay", "warmup_epochs",
                  "early_stopping_patience", "bn_recompute_batches", allow_zero=True)
        _fraction(obj, prefix, "label_smoothing")
        if not 0.0 < obj.val_fraction < 1.0:
            raise ConfigError(f"config key '{prefix}.val_fraction' must be between 0 and 1, got {obj.val_fraction!r}")
        for name, choices in (("balance", BALANCE_CHOICES), ("optimizer", OPTIMIZER_CHOICES),
                              ("schedule", SCHEDULE_CHOICES), ("mixed_precision", PRECISION_CHOICES),
                              ("calibration", CALIBRATION_CHOICES), ("near_chance", NEAR_CHANCE_CHOICES)):
            value = getattr(obj, name)
            if value not in choices:
                raise ConfigError(
                    f"config key '{prefix}.{name}' must be one of {', '.join(choices)}, got {value!r}"
                )
    elif isinstance(obj, RunConfig):
        # Overlap must leave a core: a tile all overlap would own no cell.
        # Tiling rounds the overlap up to whole pixels (tiling.overlap_px).
        overlap_px = obj.tiling.overlap_um / obj.source.working_mpp_um
        if not 2 * overlap_px < obj.tiling.tile_size_px or (
            2 * math.ceil(overlap_px - 1e-3) >= obj.tiling.tile_size_px
        ):
            raise ConfigError(
                f"config key 'tiling.overlap_um' ({obj.tiling.overlap_um} um = {overlap_px:.0f} px at "
                f"{obj.source.working_mpp_um} um/px) must be less than half of 'tiling.tile_size_px' "
                f"({obj.tiling.tile_size_px} px)"
            )


def check_report_classes(report: ReportConfig, labels, model: str = "the model") -> list[str]:
    """Refuse report keys that name classes ``labels`` lacks; returns notes for the defaults.

    A key the user changed from its default must name only the model's classes
    (a typo would blank the blast percent or count non-cells as nucleated):
    ConfigError naming the key. The defaults describe the 21 Matek classes; a
    model trained on fewer simply lacks some of them, which is no error (the
    note returned says when the blast class itself is missing).
    """
    have = [str(x) for x in labels]
    known = set(have)
    default = ReportConfig()

    def refuse(key: str, missing) -> None:
        raise ConfigError(
            f"config key 'report.{key}' names {', '.join(repr(m) for m in missing)}, which {model} does not "
            f"classify (its classes: {', '.join(have)}); use the model's class names"
        )

    for key in ("non_cell_classes", "myeloid_classes", "erythroid_classes"):
        value = getattr(report, key)
        missing = [c for c in value if c not in known]
        if missing and tuple(value) != tuple(getattr(default, key)):
            refuse(key, missing)
    if report.blast_class not in known and report.blast_class != default.blast_class:
        refuse("blast_class", [report.blast_class])
    for i, r in enumerate(report.reference_ranges):
        missing = [c for c in r.classes if c not in known]
        if missing and r not in default.reference_ranges:
            refuse(f"reference_ranges[{i}].classes", missing)
    notes = []
    if report.blast_class not in known:
        notes.append(f"{model} has no class {report.blast_class!r} (report.blast_class): the blast percent stays empty")
    return notes


def _read_yaml(path: Path) -> Any:
    import yaml

    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        shipped = ", ".join(sorted(f.name for f in PACKAGE_CONFIG_DIR.glob("*.yaml")))
        raise ConfigError(f"config file not found: {path} (shipped with slideproc, usable by name from "
                          f"anywhere: {shipped})") from None
    except OSError as err:
        raise ConfigError(f"cannot read config file {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"config file {path} is not UTF-8 text (is it a YAML file?)") from None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as err:
        line = ""
        mark = getattr(err, "problem_mark", None)
        if mark is not None:
            line = f" at line {mark.line + 1}"
        raise ConfigError(f"config file {path} is not valid YAML{line}") from None
    except (ValueError, RecursionError) as err:
        # e.g. an integer of more than 4300 digits, or nesting too deep to parse
        raise ConfigError(f"config file {path} cannot be read as YAML: {str(err)[:100]}") from None


def config_from_dict(cls: type, data: Any, source: str = "config") -> Any:
    try:
        return _build(cls, data)
    except ConfigError as err:
        if source != "config":
            raise ConfigError(f"{source}: {err}") from None
        raise


def config_path(path: str | Path | None, default_name: str) -> Path:
    """The config file ``path`` names: None is the packaged ``default_name``; a path
    that does not exist but names a shipped config (``od-red-channel.yaml`` or
    ``configs/od-red-channel.yaml``, as the README writes them) is the packaged
    one, so the README's commands work outside the repository. A file that
    exists always wins (run.json records the config's values either way)."""
    if path is None:
        return PACKAGE_CONFIG_DIR / default_name
    p = Path(path)
    shipped = PACKAGE_CONFIG_DIR / p.name
    if not p.exists() and shipped.is_file() and (len(p.parts) == 1 or p.parent.as_posix() == "configs"):
        log.info("config %s: using the shipped %s", path, shipped)
        return shipped
    return p


def load_run_config(path: str | Path | None = None) -> RunConfig:
    """Read a run/detect config; None reads the packaged configs/default.yaml
    (other shipped configs by name: :func:`config_path`)."""
    path = config_path(path, "default.yaml")
    return config_from_dict(RunConfig, _read_yaml(path), source=str(path))


def load_train_config(path: str | Path | None = None) -> TrainConfig:
    """Read a train config; None reads the packaged configs/train.yaml
    (other shipped configs by name: :func:`config_path`)."""
    path = config_path(path, "train.yaml")
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
            node = node.get(part) if isinstance(node, dict) else None
        if not isinstance(node, dict) or parts[-1] not in node:
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
