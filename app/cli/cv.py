"""imgclf cv DATA [--folds K]: k-fold cross-validation, one run per fold, out-of-fold predictions and scores."""

from __future__ import annotations

import argparse

from app.cli.options import add_config, load
from pipelines.errors import OptionError

HELP = "k-fold cross-validation: one run per fold, out-of-fold predictions and score (resumes an interrupted one)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    parser.add_argument("--folds", type=int, help="number of folds (default: data.folds, else 5)")
    parser.add_argument("--metric", help="the score printed (default: accuracy; multi-label: mean_column_auc); cv.json has them all")
    parser.add_argument("--restart", action="store_true", help="start a new cross-validation even if an interrupted one of this config exists")


def run(args: argparse.Namespace) -> int:
    from app.inference.evaluation import SCORE_NAMES
    from app.training.crossval import cross_validate

    if args.folds is not None and args.folds < 2:
        raise OptionError(f"--folds {args.folds}: give at least 2 folds")
    if args.metric is not None and args.metric not in SCORE_NAMES:
        raise OptionError(f"--metric {args.metric}: not a score; use one of {', '.join(SCORE_NAMES)}")
    result = cross_validate(load(args), folds=args.folds, restart=args.restart, progress=lambda line: print(line, flush=True))
    metric = result.metric(args.metric)
    print(f"cross-validation directory: {result.cv_dir}")
    for fold, scores in enumerate(result.per_fold, start=1):
        print(f"  fold {fold}: {metric} {scores[metric]:.4f}")
    print(
        f"{metric}: {result.mean[metric]:.4f} ± {result.std[metric]:.4f} over {result.folds} folds; out-of-fold {result.oof[metric]:.4f} "
        f"on {result.oof['num_images']} images"
    )
    print(f"written: {result.cv_dir / 'oof.csv'}, {result.cv_dir / 'cv.json'}")
    return 0
