"""imgclf config [DATA] [-c CONFIG] [--set KEY=VALUE]: the resolved config, every default included."""

from __future__ import annotations

import argparse

from app.cli.options import add_config, load

HELP = "print the resolved config: the file, the --set overrides and every default"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config(parser)


def run(args: argparse.Namespace) -> int:
    from app.config import dump_config
    from tuning.space import parse_space

    config = load(args)
    parse_space(config)  # the tune section's names too: the same errors `imgclf tune` gives
    print(dump_config(config), end="")
    return 0
