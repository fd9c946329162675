"""imgclf train DATA [-c CONFIG] [--set KEY=VALUE]: one training run in a new (or an interrupted) run directory."""

from __future__ import annotations

import argparse

from app.cli.options import add_config, load, scores_line

HELP = "train a model on a folder or CSV (and a config); writes a new run directory"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config(parser)


def run(args: argparse.Namespace) -> int:
    from app.training.run import train

    result = train(load(args))
    print(f"run directory: {result.run_dir}")
    print(f"validation: {scores_line(result.metrics['val'])}")
    print(f"stopped: {result.metrics['stopped']}")
    if result.metrics["skipped_images"]:
        print(f"skipped {len(result.metrics['skipped_images'])} unreadable image(s): see metrics.json")
    return 0
