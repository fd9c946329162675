"""imgclf demo: the built-in digits, trained, scored on their hold-out set, with a submission."""

from __future__ import annotations

import argparse

from app.cli.options import add_overrides

HELP = "train on the built-in digits dataset and write a submission (a few minutes on a CPU)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache-dir", help="where the digits are exported (default: $IMGCLF_CACHE or ~/.cache/imgclf)")
    add_overrides(parser)


def run(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    result = run_demo(args.cache_dir, args.overrides)
    print(f"run directory: {result.run_dir}")
    print(f"accuracy: {result.holdout['accuracy']:.4f} (hold-out test set, {result.holdout['num_images']} images)")
    print(f"submission: {result.submission}")
    return 0
