"""Command-line interface: a thin face over app.training, app.evaluation, app.prediction and app.demo.

    imgclf demo                                   # digits: train, score the hold-out set, write submission.csv
    imgclf train -c configs/example.yaml --set train.epochs=5
    imgclf evaluate runs/<run> [--data labeled.csv]
    imgclf predict runs/<run> --test sample_submission.csv --output submission.csv
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the way

log = logging.getLogger("imgclf")

EPILOG = """examples:
  imgclf demo
  imgclf train -c configs/example.yaml --set data.train=path/to/folder --set train.epochs=10
  imgclf evaluate runs/20260101-120000-baseline_cnn
  imgclf predict runs/20260101-120000-baseline_cnn --test data/sample_submission.csv

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

    def overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=5 (repeatable)")

    demo = sub.add_parser("demo", help="train on the built-in digits dataset and write a submission (a few minutes on a CPU)")
    demo.add_argument("--cache-dir", help="where the digits are exported (default: $IMGCLF_CACHE or ~/.cache/imgclf)")
    overrides(demo)

    train = sub.add_parser("train", help="train a model from a YAML config; writes a new run directory")
    train.add_argument("-c", "--config", help="YAML config file (see configs/example.yaml); defaults apply to anything unset")
    overrides(train)

    evaluate = sub.add_parser("evaluate", help="score a trained run on its validation split or on another labeled set")
    evaluate.add_argument("run", help="run directory printed by train")
    evaluate.add_argument("--data", help="labeled folder or CSV to score (default: the run's own validation split)")
    evaluate.add_argument("--images", help="image folder for a --data CSV")
    evaluate.add_argument("--output", help="where to write the metrics JSON (default: <run>/evaluation.json)")
    evaluate.add_argument("--force", action="store_true", help="overwrite an existing output file")

    predict = sub.add_parser("predict", help="predict a test set and write a Kaggle-style submission CSV")
    predict.add_argument("run", help="run directory printed by train")
    predict.add_argument("--test", help="folder of test images or a sample_submission.csv (default: the run's data.test)")
    predict.add_argument("--images", help="image folder for a sample_submission.csv (default: test/ beside it)")
    predict.add_argument("--output", help="submission file (default: <run>/submission.csv)")
    predict.add_argument("--probabilities", action="store_true", help="without a sample submission: one probability column per class instead of id,label")
    predict.add_argument("--force", action="store_true", help="overwrite an existing output file")
    return parser


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    result = run_demo(args.cache_dir, args.overrides)
    print(f"run directory: {result.run_dir}")
    print(f"accuracy: {result.holdout['accuracy']:.4f} (hold-out test set, {result.holdout['num_images']} images)")
    print(f"submission: {result.submission}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from app.config import load_config
    from app.training import train

    result = train(load_config(args.config, args.overrides))
    print(f"run directory: {result.run_dir}")
    print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics["val"].items() if isinstance(v, float)))
    if result.metrics["skipped_images"]:
        print(f"skipped {len(result.metrics['skipped_images'])} unreadable image(s): see metrics.json")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from app.atomic import write_json
    from app.data import load_labeled, load_train_val
    from app.evaluation import evaluate_images
    from app.runs import load_run

    run = load_run(args.run)
    if args.data:
        images = load_labeled(args.data, args.images, run.config.data, class_names=run.class_names)
    else:
        _, images = load_train_val(run.config.data, run.config.seed)
    metrics, _ = evaluate_images(run.model, images, run.config)
    output = Path(args.output) if args.output else run.path / "evaluation.json"
    write_json(output, {"data": args.data or "validation split", **metrics}, force=args.force)
    print(json.dumps(metrics, indent=2))
    print(f"written: {output}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from app.runs import load_run
    from app.submission import submit

    run = load_run(args.run)
    output = Path(args.output) if args.output else run.path / "submission.csv"
    frame = submit(run, output, test=args.test, images=args.images, probabilities=args.probabilities, force=args.force)
    print(f"submission: {output} ({len(frame)} rows)")
    return 0


def _pipeline_error(exc: BaseException) -> str | None:
    """The user-facing message of a DataError wrapped in a TensorFlow op error, if that is what `exc` is."""
    match = re.search(r"(?:DataError|ImageReadError): (.+)", str(exc))
    return match.group(1).strip() if match and type(exc).__module__.startswith("tensorflow") else None


COMMANDS = {"demo": cmd_demo, "train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict}


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one line (`error: ...`) and return 2 instead of a traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    from app.atomic import OutputExistsError

    try:
        return COMMANDS[args.command](args)
    except (ValueError, OutputExistsError) as exc:
        # DataError and ConfigError are ValueErrors; so are invalid option values from models and schedules,
        # whose messages are written for users. IMGCLF_DEBUG=1 shows the traceback instead.
        if os.environ.get("IMGCLF_DEBUG"):
            raise
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        # A DataError raised inside the tf.data pipeline (say, an image deleted mid-training) reaches us wrapped
        # in a TensorFlow error: show its own message, not TensorFlow's stack.
        message = _pipeline_error(exc)
        if message is None or os.environ.get("IMGCLF_DEBUG"):
            raise
        print(f"error: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
