"""imgclf predict RUN... [--test FOLDER|CSV]: a Kaggle-style submission from a run or an ensemble."""

from __future__ import annotations

import argparse
from pathlib import Path

from app.cli.options import add_runs, add_tta

HELP = "predict a test set with a run or an ensemble (folds, runs) and write a Kaggle-style submission CSV"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_runs(parser)
    parser.add_argument("--test", help="folder of test images or a sample_submission.csv (default: the run's data.test)")
    parser.add_argument("--images", help="image folder for a sample_submission.csv (default: test/ beside it)")
    parser.add_argument("--output", help="submission file (default: <run>/submission.csv)")
    parser.add_argument("--probabilities", action="store_true", help="without a sample submission: one probability column per class instead of id,label")
    add_tta(parser)
    parser.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight per model (a CV directory counts one per fold; default: equal)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def run(args: argparse.Namespace) -> int:
    from app.inference.submission import submit
    from app.runs import CV_FILE, load_runs

    members = load_runs(args.run)
    output = Path(args.output) if args.output else Path(args.run[0]) / "submission.csv"
    frame = submit(
        members,
        output,
        test=args.test,
        images=args.images,
        probabilities=args.probabilities,
        tta=args.tta,
        passes=args.tta_passes,
        weights=args.weights,
        force=args.force,
    )
    models = f", the mean of {len(members)} models" if len(members) > 1 else ""
    print(f"submission: {output} ({len(frame)} rows{models})")
    cv_dirs = [Path(p) for p in args.run if (Path(p) / CV_FILE).is_file()]
    if args.tta and cv_dirs:
        from app.training.crossval import tta_gain

        for cv_dir in cv_dirs:  # what TTA buys, on images no fold model trained on
            metric, plain, with_tta = tta_gain(cv_dir, args.tta, args.tta_passes)
            print(
                f"{cv_dir}: out-of-fold {metric} {plain[metric]:.4f} without TTA, {with_tta[metric]:.4f} with {args.tta}; "
                f"log_loss {plain['log_loss']:.4f} -> {with_tta['log_loss']:.4f}"
            )
    return 0
