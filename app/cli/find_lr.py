"""imgclf find-lr [DATA] [-c CONFIG]: the LR range test and a suggested rate."""

from __future__ import annotations

import argparse

from app.cli.options import add_config, load

HELP = "LR range test: loss against an exponentially growing rate, and a suggestion"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    parser.add_argument("--steps", type=int, default=100, help="training steps in the test (default 100)")
    parser.add_argument("--start-lr", type=float, default=1e-7)
    parser.add_argument("--end-lr", type=float, default=1.0)


def run(args: argparse.Namespace) -> int:
    from app.training.lr_finder import find_lr, write_lr_finder

    config = load(args)
    result = find_lr(config, steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr)
    run_dir = write_lr_finder(config, result, steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr)
    print(f"suggested learning rate: {result.suggested_lr:.3g} (the longest descent of the loss; the loss is lowest at {result.min_loss_lr:.3g})")
    for note in result.notes:
        print(f"note: {note}")
    print(f"plot: {run_dir / 'lr_finder.png'}")
    return 0
