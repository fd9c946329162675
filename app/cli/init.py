"""imgclf init FOLDER [--force]: copies of the shipped configs to edit."""

from __future__ import annotations

import argparse
from pathlib import Path

HELP = "copy the shipped configs (and the augmentation example) into a folder, to edit"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("folder", help="where to write them (created if missing)")
    parser.add_argument("--force", action="store_true", help="overwrite files of the same name")


def run(args: argparse.Namespace) -> int:
    from app.config import copy_shipped_configs

    written = copy_shipped_configs(args.folder, force=args.force)
    for path in written:
        print(f"written: {path}")
    print(f"then: imgclf train my_images/ -c {Path(args.folder) / 'example.yaml'}")
    return 0
