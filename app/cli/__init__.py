"""Command-line interface: a thin face over `app` and `tuning`. Each command is one module here with its HELP, its
arguments (`add_arguments`) and `run(args)`, which parses nothing and prints the result of one call into the packages.

    imgclf demo                                   # digits: train, score the hold-out set, write submission.csv
    imgclf train my_images/ [-c finetune] --set train.epochs=5
    imgclf evaluate runs/<run> [--data labeled.csv]
    imgclf predict runs/<run> --test sample_submission.csv --output submission.csv
    imgclf cv my_images/ --folds 5                   # k-fold CV: a run per fold, oof.csv, cv.json (app/training/crossval.py)
    imgclf predict runs/<cv> [runs/<run> ...] --tta flip   # ensemble of folds / runs with test-time augmentation
    imgclf models [--blocks resnet50]                # registered architectures, or one backbone's blocks
    imgclf config -c config.yaml --set train.epochs=5  # the resolved config, every default included
    imgclf plot-lr -c config.yaml                    # the learning rate per step, before any training
    imgclf find-lr -c config.yaml                    # LR range test: loss vs learning rate, a suggested rate
    imgclf tune my_images/ -c search [--then-train]  # architecture / hyperparameter search (tuning/)
    imgclf explain runs/<run> anatomy|feature-maps IMAGE|gradcam [--mistakes]   # what the model computes (app/explain/)
    imgclf export runs/<run> --format saved_model tflite --check                 # for use elsewhere (app/inference/export.py)
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import sys
from types import ModuleType

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the way

from app.cli import config, cv, demo, evaluate, explain, export, find_lr, init, models, plot_lr, predict, train, tune  # noqa: E402
from pipelines.errors import UserError  # noqa: E402

COMMANDS: dict[str, ModuleType] = {
    "demo": demo,
    "train": train,
    "evaluate": evaluate,
    "predict": predict,
    "cv": cv,
    "models": models,
    "config": config,
    "init": init,
    "plot-lr": plot_lr,
    "find-lr": find_lr,
    "tune": tune,
    "explain": explain,
    "export": export,
}

EPILOG = """examples:
  imgclf demo
  imgclf train path/to/folder
  imgclf train path/to/folder -c example --set train.epochs=10
  imgclf evaluate runs/20260101-120000-baseline_cnn
  imgclf predict runs/20260101-120000-baseline_cnn --test data/sample_submission.csv
  imgclf cv path/to/folder --folds 5
  imgclf predict runs/20260101-120000-cv-baseline_cnn --tta flip --test data/sample_submission.csv
  imgclf train path/to/folder -c finetune
  imgclf plot-lr -c finetune --steps-per-epoch 100
  imgclf find-lr path/to/folder -c finetune
  imgclf tune path/to/folder -c search --set tune.max_trials=20 --then-train
  imgclf init my_configs/
  imgclf explain runs/20260101-120000-baseline_cnn gradcam --mistakes
  imgclf export runs/20260101-120000-baseline_cnn --format saved_model --check

Config values can be overridden with --set section.key=value (values are YAML: 5, 0.1, true, null, [1, 2]).
Every run writes its resolved config.yaml next to model.keras, history.csv, metrics.json and curves.png."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="imgclf",
        description="Train, evaluate and submit image classifiers on your own folder of images or Kaggle CSV.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module in COMMANDS.items():
        command = sub.add_parser(name, help=module.HELP)
        module.add_arguments(command)
        command.set_defaults(handler=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command. What the user can fix (a UserError) prints one line, `error: ...`, and returns 2; anything
    else is a programming error and keeps its traceback (IMGCLF_DEBUG=1 shows the traceback of user errors too).
    A DataError raised inside tf.data (an image damaged mid-training) arrives as itself: the pipeline re-raises it."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if importlib.util.find_spec("tensorflow") is None:
        print("error: TensorFlow is not installed. Fix: pip install 'imgclf[cpu]', or 'imgclf[gpu]' on an NVIDIA GPU (README, Install)", file=sys.stderr)
        return 2
    try:
        return args.handler(args)
    except BrokenPipeError:  # `imgclf models | head`: the reader is gone; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except UserError as exc:
        if os.environ.get("IMGCLF_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted (a train run or a search continues where it stopped when the same command is started again)", file=sys.stderr)
        return 130
