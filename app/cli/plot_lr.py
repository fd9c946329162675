"""imgclf plot-lr [DATA] [-c CONFIG]: a config's learning rate per step, drawn before any training."""

from __future__ import annotations

import argparse

from app.cli.options import add_config, load

HELP = "draw a config's learning rate per step (both stages) before training"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    parser.add_argument("--steps-per-epoch", type=int, help="default: from the size of the configured training set")
    parser.add_argument("--output", default="lr_schedule.png", help="PNG to write (default: lr_schedule.png)")
    parser.add_argument("--force", action="store_true", help="overwrite an existing output file")


def run(args: argparse.Namespace) -> int:
    from app.training.lr_finder import plot_planned_lr

    stages, steps = plot_planned_lr(load(args), args.output, steps_per_epoch=args.steps_per_epoch, force=args.force)
    print(f"learning-rate schedule: {args.output} ({' + '.join(f'{s.epochs} {s.name} epochs' for s in stages)}, {steps} steps per epoch)")
    return 0
