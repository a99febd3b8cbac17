"""Command line: ``slideproc <command> ...``.

``main(argv) -> int`` is callable in-process (the tests do). Each command is a
thin function that parses nothing itself and calls library code; heavy imports
(TensorFlow, Dask, Zarr) happen inside the command bodies so ``--help``,
``info`` and ``synth`` start fast.

Exit status: 0 all good, 1 some sample/file failed, 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from . import __version__
from .errors import SlideprocError, UsageError

log = logging.getLogger("slideproc")


def _size(text: str) -> tuple[int, int]:
    """Parse ``W`` or ``WxH`` (pixels)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must be W or WxH in pixels, got {text!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) <= 0:
        raise argparse.ArgumentTypeError(f"size must be W or WxH in pixels, got {text!r}")
    return parts[0], parts[1]


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _mpp(text: str) -> float | str:
    """--mpp for detect/run/info/plan: a plausible level-0 resolution in um/px, or ``auto``."""
    from .sources.mpp import MPP_RANGE_UM

    if text.strip().lower() == "auto":
        return "auto"
    value = _positive_float(text)
    lo, hi = MPP_RANGE_UM
    if not lo <= value <= hi:
        raise argparse.ArgumentTypeError(
            f"expected the level-0 resolution in um per pixel, between {lo:g} and {hi:g} "
            f"(what brightfield microscopes produce), got {text!r}; or 'auto' to estimate it from the red cells")
    return value


_CONFIG_HELP = ("YAML config (default: the packaged configs/default.yaml; a shipped one by name from any "
                "folder, e.g. od-red-channel.yaml for H&E sections); an unknown key or a bad value is exit 2 "
                "naming the key")
_TRAIN_CONFIG_HELP = "YAML training config (default: the packaged configs/train.yaml; configs/train-cpu.yaml for CPUs)"
_WORKERS_HELP = "local Dask worker processes (default: engine.workers, null = one per CPU core)"
_OUT_HELP = "output folder (created; an existing one is resumed, see run --no-resume)"
_INPUTS_HELP = "slide files, image folders (walked to any depth) or manifest.csv files"
_SCHEDULER_HELP = ("address of an existing Dask scheduler, e.g. tcp://host:8786 (default: a local cluster; "
                   "engine.connect_timeout_s bounds the wait)")

_MPP_HELP = ("level-0 resolution of every input, um per pixel (0.02-2); overrides a manifest's mpp "
             "column and the files' own metadata (the log notes where they differ). 'auto': files "
             "without a resolution (in their metadata or the manifest) get one estimated from their "
             "red cells (7.5 um across), one value per sample: the median of its fields' estimates")


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so main() owns the exit status."""

    def error(self, message: str):  # noqa: D401
        raise UsageError(f"{self.prog}: {message}")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="slideproc", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"slideproc {__version__}")
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)

    s = sub.add_parser("synth", help="write a synthetic archive with ground truth")
    s.add_argument("out_dir", type=Path, help="folder to write slides/, folders/, crops/, truth.csv, manifest.csv")
    s.add_argument("--samples", type=_positive_int, default=3, help="samples per kind (default 3)")
    s.add_argument("--cells", type=_positive_int, default=300,
                   help="nucleated cells per sample (default 300); with --kind crops, crops in all, balanced over classes")
    s.add_argument("--kind", choices=["slide", "folder", "crops", "both"], default="both",
                   help="slides, image folders, single-cell crops, or slides and folders (default)")
    s.add_argument("--seed", type=int, default=0, help="random seed (default 0): the same seed writes the same archive")
    s.add_argument("--size", type=_size, default=None, help="slide size W[xH] in level-0 pixels (default 4096x4096)")
    s.add_argument("--mpp", type=_positive_float, default=0.25, help="level-0 resolution, um/px (default 0.25)")
    s.add_argument("--cells-from", type=Path, default=None,
                   help="cut cells from real single-cell crops in this class-folder directory")
    s.set_defaults(func=_cmd_synth)

    s = sub.add_parser("info", help="describe slides and image folders: one line per sample (-v: per file)")
    s.add_argument("paths", nargs="+", type=Path, help=_INPUTS_HELP)
    s.add_argument("--config", type=Path, default=None, help=_CONFIG_HELP)
    s.add_argument("--mpp", type=_mpp, default=None, metavar="UM|auto", help=_MPP_HELP)
    s.add_argument("-v", "--verbose", dest="details", action="count", default=0,
                   help="every file's format, levels, mpp, objective power and foreground")
    s.set_defaults(func=_cmd_info)

    s = sub.add_parser("plan", help="samples, files, resolved mpp and files left out, without reading pixels")
    s.add_argument("inputs", nargs="+", type=Path, help=_INPUTS_HELP)
    s.add_argument("--config", type=Path, default=None, help=_CONFIG_HELP)
    s.add_argument("--mpp", type=_mpp, default=None, metavar="UM|auto", help=_MPP_HELP)
    s.set_defaults(func=_cmd_plan)

    s = sub.add_parser("detect", help="find nucleated cells, without a model")
    s.add_argument("inputs", nargs="+", type=Path, help=_INPUTS_HELP)
    s.add_argument("--out", type=Path, required=True, help=_OUT_HELP)
    s.add_argument("--config", type=Path, default=None, help=_CONFIG_HELP)
    s.add_argument("--mpp", type=_mpp, default=None, metavar="UM|auto", help=_MPP_HELP)
    s.add_argument("--workers", type=_positive_int, default=None, help=_WORKERS_HELP)
    s.add_argument("--scheduler", default=None, help=_SCHEDULER_HELP)
    s.set_defaults(func=_cmd_detect)

    s = sub.add_parser("score-detection", help="score detections against a truth.csv (recall, precision, F1)")
    s.add_argument("out_dir", type=Path, help="a detect/run --out folder (holds cells/<sample_id>.csv)")
    s.add_argument("truth_csv", type=Path, help="truth.csv (sample_id,source,x,y[,class]) as synth writes it")
    s.add_argument("--max-distance-um", type=_positive_float, default=4.0,
                   help="largest centroid distance of a match, um (default 4)")
    s.add_argument("--mpp", type=_positive_float, default=None,
                   help="level-0 um/px for sources whose file carries none")
    s.add_argument("--csv", type=Path, default=None, help="also write the scores to this CSV")
    s.set_defaults(func=_cmd_score_detection)

    s = sub.add_parser("train", help="train the InceptionResNetV2 classifier on class folders")
    s.add_argument("data_dir", type=Path, help="class folders: DATA_DIR/<CLASS>/*.jpg|png|tif")
    s.add_argument("--out", type=Path, required=True, help="MODEL_DIR to write (model.keras, labels.json, ...)")
    s.add_argument("--config", type=Path, default=None, help=_TRAIN_CONFIG_HELP)
    s.add_argument("--epochs", type=_positive_int, default=None, help="training epochs (overrides training.epochs)")
    s.add_argument("--batch-size", type=_positive_int, default=None,
                   help="crops per training step (overrides training.batch_size; 32 in Meem & Hasan 2023)")
    s.add_argument("--input-size", type=_positive_int, default=None,
                   help="network input, px per side (overrides model.input_size_px; 299 for InceptionResNetV2)")
    s.add_argument("--weights", default=None,
                   help="imagenet (from the Keras cache; no download here) | none (random initialisation) | "
                        "PATH: an InceptionResNetV2 notop .h5 weights file, or a MODEL_DIR to start from")
    s.add_argument("--val-fraction", type=float, default=None,
                   help="share of each class held out for validation, 0-1 (default training.val_fraction, 0.2)")
    s.add_argument("--val-dir", type=Path, default=None, help="class-folder validation set (no split)")
    s.add_argument("--min-per-class", type=_positive_int, default=None,
                   help="leave out classes with fewer images (default 20, training.min_per_class; "
                        "the classes left out are named in the log and metrics.json)")
    s.add_argument("--seed", type=int, default=None,
                   help="seed of the validation split, augmentation and initialisation (default training.seed, 0)")
    s.set_defaults(func=_cmd_train)

    s = sub.add_parser("evaluate", help="score a model on a class-folder data set (metrics.json, predictions.csv, "
                                        "differential.csv with true_percent)")
    s.add_argument("model_dir", type=Path, help="MODEL_DIR written by slideproc train (or its model.keras)")
    s.add_argument("data_dir", type=Path, help="class folders of crops the model did not train on")
    s.add_argument("--out", type=Path, default=None, help="EVAL_DIR (default MODEL_DIR/eval)")
    s.add_argument("--batch-size", type=_positive_int, default=32, help="crops per forward pass (default 32)")
    s.add_argument("--config", type=Path, default=None,
                   help="run config whose classify.tta_views to use (default: the packaged configs/default.yaml)")
    s.add_argument("--tta-views", type=int, choices=(1, 2, 4, 8), default=None,
                   help="test-time views averaged per crop (overrides the config's classify.tta_views)")
    s.add_argument("--characterise", action="store_true",
                   help="then make DATA_DIR's crops the model's record of its errors for the adjusted differential "
                        "(MODEL_DIR/validation_predictions.csv, model_card.json and feature_record.npz; training's kept as *.train.*): "
                        "labelled crops from your own slides, every class, that the model did not train on")
    s.set_defaults(func=_cmd_evaluate)

    s = sub.add_parser("run", help="detect and classify every cell of an archive on Dask")
    s.add_argument("inputs", nargs="+", type=Path, help=_INPUTS_HELP)
    s.add_argument("--model", type=Path, required=True,
                   help="MODEL_DIR written by slideproc train (or its model.keras)")
    s.add_argument("--out", type=Path, required=True, help=_OUT_HELP)
    s.add_argument("--config", type=Path, default=None, help=_CONFIG_HELP)
    s.add_argument("--mpp", type=_mpp, default=None, metavar="UM|auto", help=_MPP_HELP)
    s.add_argument("--scheduler", default=None, help=_SCHEDULER_HELP)
    s.add_argument("--workers", type=_positive_int, default=None, help=_WORKERS_HELP)
    s.add_argument("--no-resume", action="store_true",
                   help="redo this run's samples even where complete and unchanged (other samples in OUT_DIR "
                        "are kept; each is replaced once its new results are complete)")
    s.add_argument("--save-crops", action="store_true", help="store every cell crop, as the classifier saw it, in results.zarr")
    s.set_defaults(func=_cmd_run)

    s = sub.add_parser("report", help="differential counts, plots and GeoJSON from a run's output")
    s.add_argument("out_dir", type=Path, help="the --out folder of a run (holds results.zarr)")
    s.add_argument("--config", type=Path, default=None,
                   help="report settings (the report: section); default: those stored with the run")
    s.set_defaults(func=_cmd_report)

    s = sub.add_parser("demo", help="synthesize, train, run and report on a small archive")
    s.add_argument("--out", type=Path, default=Path("demo-out"), help="output folder (default demo-out)")
    s.set_defaults(func=_cmd_demo)
    return p


# ----------------------------------------------------------------------------
# commands (each owns its imports)
# ----------------------------------------------------------------------------
def _cmd_synth(args) -> int:
    from .synthetic import write_archive

    if args.cells_from is not None and not Path(args.cells_from).is_dir():
        raise UsageError(f"--cells-from {args.cells_from}: not a folder; give a class-folder directory "
                         "of single-cell crops (e.g. ../shared/data/real/matek_bm)")
    s = write_archive(args.out_dir, samples=args.samples, cells=args.cells, kind=args.kind, seed=args.seed,
                      size=args.size, mpp=args.mpp, cells_from=args.cells_from)
    parts = []
    if s["slides"]:
        parts.append(f"{len(s['slides'])} slide(s) in {Path(s['out_dir']) / 'slides'}")
    if s["folders"]:
        parts.append(f"{len(s['folders'])} image folder(s) in {Path(s['out_dir']) / 'folders'} (manifest.csv)")
    if s["crops"]:
        parts.append(f"{s['crops']} crop(s) in {Path(s['out_dir']) / 'crops'}")
    print(f"synth: {'; '.join(parts)}; {s['n_cells']} cells in {s['truth']} ({s['seconds']:.1f} s)")
    return 0


def _load_run_config(args):
    from .config import load_run_config, with_overrides

    cfg = load_run_config(getattr(args, "config", None))
    mpp = getattr(args, "mpp", None)
    if mpp == "auto":
        return with_overrides(cfg, {"source.mpp_um": None, "source.estimate_mpp": "red_cells"})
    return with_overrides(cfg, {"source.mpp_um": mpp})


def _cmd_info(args) -> int:
    from .info import describe_source, format_sample, format_sample_line
    from .sources.discover import discover

    cfg = _load_run_config(args)
    found = discover(args.paths)
    samples = found.samples
    if cfg.source.estimate_mpp == "red_cells" or any(r.estimate_mpp for s in samples for r in s.sources):
        from .plan import plan_samples

        # the value a run uses: a sample's fields share their pooled red-cell estimate
        _, samples = plan_samples(samples, cfg)
    detailed = bool(args.details or args.verbose)
    failed = 0
    blocks = []
    for sample in samples:
        infos = [describe_source(ref, cfg) for ref in sample.sources]
        blocks.append(format_sample(sample, infos) if detailed else format_sample_line(sample, infos))
        for info in infos:
            if info.error:
                failed += 1
                print(f"slideproc: error: {info.error}", file=sys.stderr)
    print(("\n\n" if detailed else "\n").join(blocks))
    if found.left_out:
        print(f"{len(found.left_out)} file(s) left out (in no sample); `slideproc plan` lists them")
    for path, reason in found.problems:
        failed += 1
        print(f"slideproc: error: {path}: {reason}", file=sys.stderr)
    return 1 if failed else 0


def _cmd_plan(args) -> int:
    from .plan import format_plan, plan_inputs

    cfg = _load_run_config(args)
    plan = plan_inputs(args.inputs, cfg)
    print(format_plan(plan))
    failed = [s for s in plan.samples if not s.ok]
    for path, reason in plan.problems:
        print(f"slideproc: error: {path}: {reason}", file=sys.stderr)
    for sample in failed:
        for src in sample.sources:
            if src.error:
                print(f"slideproc: error: {sample.sample_id}: {src.error}", file=sys.stderr)
    return 1 if failed or plan.problems else 0


def _cmd_detect(args) -> int:
    from .runner import run_archive

    cfg = _load_run_config(args)
    return run_archive(args.inputs, args.out, cfg, None, scheduler=args.scheduler,
                       workers=args.workers, progress=not args.quiet)


def _cmd_score_detection(args) -> int:
    from .detection_eval import score_output

    table = score_output(args.out_dir, args.truth_csv, args.max_distance_um, args.mpp)
    if args.csv:
        table.to_csv(args.csv, index=False)
    with_floats = table.to_string(index=False, float_format=lambda v: f"{v:.4f}")
    print(f"detection scores (match <= {args.max_distance_um:g} um):")
    print(with_floats)
    return 0


def _cmd_train(args) -> int:
    from .config import load_train_config, with_overrides

    cfg = with_overrides(load_train_config(args.config), {
        "model.input_size_px": args.input_size,
        "model.weights": args.weights,
        "training.epochs": args.epochs,
        "training.batch_size": args.batch_size,
        "training.val_fraction": args.val_fraction,
        "training.min_per_class": args.min_per_class,
        "training.seed": args.seed,
    })
    from .cluster import check_backend

    check_backend()  # a backend that is not installed: one line, exit 2
    from .backend_noise import import_keras

    import_keras()  # TensorFlow/Keras load here, not at start-up, without their import noise
    from .train import train

    train(args.data_dir, args.out, cfg, val_dir=args.val_dir, verbose=0 if args.quiet else 1)
    return 0


def _cmd_evaluate(args) -> int:
    from .config import load_run_config

    views = args.tta_views if args.tta_views is not None else load_run_config(args.config).classify.tta_views
    from .backend_noise import import_keras
    from .cluster import check_backend

    check_backend()
    import_keras()  # TensorFlow/Keras load here, not at start-up, without their import noise
    from .evaluate import evaluate

    out = args.out if args.out is not None else args.model_dir / "eval"
    evaluate(args.model_dir, args.data_dir, out, batch_size=args.batch_size, tta_views=views,
             characterise=args.characterise)
    return 0


def _cmd_run(args) -> int:
    from .runner import run_archive

    cfg = _load_run_config(args)
    return run_archive(args.inputs, args.out, cfg, args.model, scheduler=args.scheduler,
                       workers=args.workers, resume=not args.no_resume, save_crops=args.save_crops,
                       progress=not args.quiet)


def _cmd_report(args) -> int:
    from .config import load_run_config
    from .report import write_report
    from .store.zarr_store import STORE_NAME

    store = Path(args.out_dir) / STORE_NAME
    if not (store / "zarr.json").is_file():
        raise UsageError(
            f"no {STORE_NAME} in {args.out_dir}: give the --out folder of a `slideproc run`, "
            f"or run `slideproc run INPUT... --model MODEL_DIR --out {args.out_dir}` first"
        )
    # Without --config the report uses the settings stored with the run.
    config = load_run_config(args.config) if args.config is not None else None
    if config is not None:
        from .config import check_report_classes
        from .store.zarr_store import read_root_attrs

        labels = read_root_attrs(args.out_dir).get("class_names") or []
        for note in check_report_classes(config.report, labels, f"the model of {store}"):
            log.warning("%s", note)
    from .outlock import exclusive_out_dir

    # The same lock as run/detect: a report never writes (or cleans temporaries)
    # beside a run that is writing into the same folder.
    with exclusive_out_dir(Path(args.out_dir)):
        index = write_report(args.out_dir, config)
    print(f"report: {index}")
    return 0


def _cmd_demo(args) -> int:
    from .demo import run_demo

    return run_demo(args.out)


# ----------------------------------------------------------------------------
class _StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is at the time: main() runs many times in
    one process (tests, notebooks), and each caller may have swapped stderr."""

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def _setup_logging(verbose: int, quiet: bool) -> None:
    level = logging.WARNING if quiet else (logging.DEBUG if verbose > 1 else logging.INFO)
    root = logging.getLogger("slideproc")
    root.setLevel(level)
    if not any(getattr(h, "_slideproc", False) for h in root.handlers):
        handler = _StderrHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%H:%M:%S"))
        handler._slideproc = True  # type: ignore[attr-defined]
        root.addHandler(handler)
    root.propagate = False


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        if args.command is None:
            build_parser().print_help()
            return 2
        _setup_logging(args.verbose, args.quiet)
        return int(args.func(args) or 0)
    except SlideprocError as err:
        if debug:
            raise
        print(f"slideproc: error: {err}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:
        print("slideproc: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
