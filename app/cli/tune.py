"""imgclf tune [DATA] -c search [--workers N | --role chief|worker --oracle HOST:PORT] [--then-train]: the search."""

from __future__ import annotations

import argparse

from app.cli.options import add_config, load, scores_line
from pipelines.errors import OptionError

HELP = "search filters, kernels, strides, LR schedule... (KerasTuner); resumes an interrupted search"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config(parser)
    parser.add_argument("--restart", action="store_true", help="start a new search even if an interrupted one of this config exists")
    parser.add_argument("--then-train", action="store_true", help="then train best.yaml as a normal run (and write its submission when data.test is set)")
    parser.add_argument(
        "--workers",
        type=int,
        default=0,
        metavar="N",
        help="run trials in N processes on this machine, each on its share of the cores (KerasTuner's chief/worker mode)",
    )
    parser.add_argument(
        "--role",
        choices=("chief", "worker"),
        help="a search over several machines: the chief holds the oracle at --oracle, workers run trials (docs/machines.md)",
    )
    parser.add_argument("--oracle", metavar="HOST:PORT", help="the chief's address: where it listens (--role chief), or where workers find it (--role worker)")
    parser.add_argument("--worker-id", help="--role worker: this worker's name in the search (default worker-<host>-<pid>)")


def check_roles(args: argparse.Namespace) -> None:
    """The options that go together, before the config is read."""
    if args.role and not args.oracle:
        raise OptionError(f"--role {args.role} needs --oracle HOST:PORT: the address the chief listens on, the same on every machine")
    if args.oracle and not args.role:
        raise OptionError("--oracle needs --role chief (on one machine) or --role worker (on the others)")
    if args.role == "worker" and (args.workers or args.then_train or args.restart):
        raise OptionError("--workers, --then-train and --restart are the chief's options, not a worker's")
    if args.worker_id and args.role != "worker":
        raise OptionError("--worker-id names a worker: use it with --role worker")


def run(args: argparse.Namespace) -> int:
    check_roles(args)
    from tuning import search, train_best
    from tuning.distributed.worker import work

    config = load(args)
    if args.role == "worker":
        work(config, args.oracle, args.worker_id)
        return 0
    result = search(config, restart=args.restart, workers=args.workers, oracle=args.oracle if args.role == "chief" else None)
    print(f"search directory: {result.search_dir}")
    if result.best_score is None:
        print("no trial completed: see trials.csv for the reasons")
        return 1
    print(f"best {result.objective}: {result.best_score:.4f} ({len(result.trials)} trials, {result.rejected} proposals skipped without training)")
    print(f"best config: {result.best_config}")
    if args.then_train:
        trained = train_best(result)
        print(f"run directory: {trained.run_dir}")
        print(f"validation: {scores_line(trained.metrics['val'])}")
        if trained.submission:
            print(f"submission: {trained.submission}")
    return 0
