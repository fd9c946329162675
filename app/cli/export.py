"""imgclf export RUN --format F... [--check]: the run's model for use elsewhere, with a parity check."""

from __future__ import annotations

import argparse

from pipelines.errors import OptionError

FORMATS = ("keras", "saved_model", "tflite", "onnx")  # app.inference.export.FORMATS, without importing TensorFlow for --help
HELP = "the run's model for use elsewhere (.keras, SavedModel, LiteRT, ONNX), its class names beside it"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", help="a run directory written by train")
    parser.add_argument("--format", nargs="+", default=["keras"], choices=[*FORMATS, "all"], help="one or more formats (default keras)")
    parser.add_argument("--output", help="the export's path, for one format (default: RUN/export/model.keras, saved_model/, model.tflite, model.onnx)")
    parser.add_argument("--check", action="store_true", help="parity: each export's probabilities on real images against the run's own")
    parser.add_argument("--data", help="labeled folder or CSV for --check (default: the run's validation split)")
    parser.add_argument("--images", help="image folder for a CSV given with --data")
    parser.add_argument("--count", type=int, default=64, help="images --check uses (default 64)")
    parser.add_argument("--force", action="store_true", help="replace an existing export")


def run(args: argparse.Namespace) -> int:
    from app.inference.export import export_formats
    from app.runs import load_run

    formats = list(FORMATS) if "all" in args.format else list(dict.fromkeys(args.format))
    if args.output and len(formats) > 1:
        raise OptionError(f"--output names one export, but {len(formats)} formats were asked for. Fix: give one --format, or leave --output out.")
    if args.count < 1:
        raise OptionError(f"--count {args.count}: give at least 1 image")
    failed = 0
    for exported, check in export_formats(
        load_run(args.run), formats, args.output, force=args.force, check=args.check, data=args.data, images=args.images, count=args.count
    ):
        print(f"{exported.format}: {exported.path} ({exported.size_bytes / 1e6:.1f} MB), class names in {exported.metadata_path}")
        if check is not None:
            failed += not check.ok
            print(
                f"  parity on {check.images} images: max |probability difference| {check.max_abs_diff:.1e} "
                f"(tolerance {check.tolerance:.0e}), same top class {check.same_top_class:.0%}: {'ok' if check.ok else 'FAILED'}"
            )
    return 1 if failed else 0
