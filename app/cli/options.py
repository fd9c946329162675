"""Arguments several commands share: the data folder, the config and its overrides, test-time augmentation."""

from __future__ import annotations

import argparse
import json

from app.config import Config, load_config, shipped_configs


def add_overrides(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=5 (repeatable)"
    )


def add_config(parser: argparse.ArgumentParser) -> None:
    """DATA (data.train), -c/--config and --set: how every command that reads a config is told what to do."""
    parser.add_argument("data", nargs="?", help="the training images: a folder of <class>/<image> sub-folders, or a CSV (data.train; default: the config's)")
    parser.add_argument(
        "-c", "--config", help=f"a YAML file, or a shipped config: {', '.join(shipped_configs())} (default: the built-in defaults, `imgclf config`)"
    )
    add_overrides(parser)


def add_tta(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--tta", metavar="SPEC", help="test-time augmentation: none, flip, flip+crops or an albumentations .yaml (default: the run's augment.tta)"
    )
    parser.add_argument("--tta-passes", type=int, metavar="N", help="predictions averaged per model, the plain image included (default: the preset's)")


def add_runs(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run", nargs="+", help="run directories printed by train, or cross-validation directories (all their folds)")


def data_overrides(args: argparse.Namespace) -> list[str]:
    """The --set overrides, after `data.train=` from the DATA argument when given (quoted: a path is a string)."""
    given = [f"data.train={json.dumps(args.data)}"] if getattr(args, "data", None) else []
    return [*given, *args.overrides]


def load(args: argparse.Namespace) -> Config:
    """The config the command's -c, DATA and --set describe, checked at load."""
    return load_config(args.config, data_overrides(args))


def scores_line(values: dict) -> str:
    """`accuracy=0.9123, log_loss=0.2345`: the float entries of a metrics dict."""
    return ", ".join(f"{k}={v:.4f}" for k, v in values.items() if isinstance(v, float))
