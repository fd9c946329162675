"""imgclf evaluate RUN... [--data LABELED]: score a run, or the mean of several, on labeled images."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from app.cli.options import add_runs, add_tta
from pipelines.errors import OptionError

HELP = "score a trained run (or the average of several) on its validation split or another labeled set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runs(parser)
    parser.add_argument("--data", help="labeled folder or CSV to score (default: the run's own validation split; required for several models)")
    parser.add_argument("--images", help="image folder for a --data CSV")
    parser.add_argument(
        "--output", help="folder for metrics.json, per_class.csv, confusion_matrix.png, mistakes.png (default: <first run or CV directory>/evaluation-<data>)"
    )
    add_tta(parser)
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def run(args: argparse.Namespace) -> int:
    from app.data import evaluation_set
    from app.reports import write_evaluation
    from app.runs import load_runs

    members = load_runs(args.run)
    if len(members) > 1 and not args.data:
        raise OptionError(f"{len(members)} models, each with its own validation split. Fix: pass --data with a labeled set none of them trained on")
    first = members[0]
    images = evaluation_set(first.config, first.class_names, args.data, args.images)
    name = Path(args.data).stem if args.data else "val"
    output = Path(args.output) if args.output else Path(args.run[0]) / f"evaluation-{name}"  # a CV directory: beside its folds
    metrics = write_evaluation(output, members, images, source=args.data or "validation split", tta=args.tta, passes=args.tta_passes, force=args.force)
    print(json.dumps(metrics, indent=2))
    print(f"written: {output}/ (metrics.json, per_class.csv, confusion_matrix.png, mistakes.png)")
    return 0
