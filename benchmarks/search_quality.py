"""Does the search pay? At equal total wall time (search + final run), on the same hold-out images: the shipped
search (configs/search.yaml: random, trials of equal compute), the search it replaced (`random_epochs`: 8 epochs
per trial), an asha search (benchmarks/configs/search_asha.yaml) and configs/example.yaml.

    .venv/bin/python benchmarks/search_quality.py                               # 3 sets x 4 arms x 40 min: ~8 hours
    .venv/bin/python benchmarks/search_quality.py --sets flowers --minutes 20   # one set, shorter budgets
    .venv/bin/python benchmarks/search_quality.py --arms shipped,asha --set tune.min_epochs=3   # an asha variant
    .venv/bin/python benchmarks/search_quality.py --sets flowers --minutes 20 --arms final_ema  # EMA in the final run
    .venv/bin/python benchmarks/search_quality.py --sets flowers --minutes 20 --arms shipped,final_mixup
    .venv/bin/python benchmarks/search_quality.py --sets flowers --minutes 20 --arms asha,asha_workers2  # 2 processes
    .venv/bin/python benchmarks/search_quality.py --quick                       # a smoke run on a few images

Per set (flowers and hymenoptera at 64 px, digits at 32 px), in one run:
  1. the hold-out images of benchmarks/quality.py (flowers: a stratified, seeded 15 %; hymenoptera: its val/ folder;
     digits: its test split), which no arm sees;
  2. every arm gets the same M minutes (`--minutes`), held by the toolkit's own hard limits: a search arm searches
     for `--search-share` of M (tune.max_minutes: a trial running then stops at its epoch's end, and none starts
     that would not fit), then its best trains for the rest (tune.final_minutes, the final run's train.max_minutes);
     example.yaml trains with train.max_minutes = M, its epochs planned from a 3-epoch probe (not counted) so that
     its cosine schedule ends near M, early stopping off. Each arm may overrun by one epoch;
  3. scored on the hold-out set (accuracy, log-loss), with each arm's seconds; for the searches, the networks judged
     (distinct configurations trained), per minute of search, and the trials at each rung.
Arms: `shipped` (configs/search.yaml), `random_epochs` (search.yaml as shipped until issue 28's third reading:
`tune.trial_budget: epochs`, 8 epochs per trial), `asha` (benchmarks/configs/search_asha.yaml), `example`, and, not
run by default: `asha_workers2` (the same asha search in 2 worker processes, one core each; the share of time its
workers waited is reported), `median` (search.yaml with the median rule, tune.median_stop), `final_medium`
(search.yaml with the trials' medium augmentation in the final run instead of heavy), and search.yaml with one recipe
key added to the final run (tune.final): `final_ema` (weight EMA 0.99), `final_mixup` (MixUp, alpha 0.2),
`final_cutmix` (CutMix, factor 1), `final_progressive` (progressive resizing from half the set's image size). `--set`
overrides apply to the candidates (every search arm but `shipped`, the reference).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NamedTuple

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402

from app.config import Config, load_config  # noqa: E402
from app.data import load_labeled  # noqa: E402
from app.inference.evaluation import evaluate_images  # noqa: E402
from app.runs import load_run  # noqa: E402
from app.training.callbacks import EpochTimer  # noqa: E402
from app.training.run import train  # noqa: E402
from benchmarks.quality import SIZES, make_set  # noqa: E402
from tuning import search, train_best  # noqa: E402
from tuning.directory import FINISHED_FILE  # noqa: E402
from tuning.hypermodels import HYPERBAND_KEYS  # noqa: E402


class Arm(NamedTuple):
    """A search arm: its config, its overrides, and its worker processes (0: the search runs in this process)."""

    config: str
    overrides: list[str]
    workers: int = 0


ARMS: dict[str, Arm | None] = {  # None: example, which trains example.yaml
    "shipped": Arm("search", []),
    "asha": Arm(str(REPO / "benchmarks" / "configs" / "search_asha.yaml"), []),
    "asha_workers2": Arm(str(REPO / "benchmarks" / "configs" / "search_asha.yaml"), [], workers=2),  # asha in 2 worker processes
    "final_medium": Arm("search", ["tune.final={augment: {train: medium}}"]),  # search.yaml, the trials' medium augmentation in the final run
    "final_ema": Arm("search", ["tune.final={augment: {train: heavy}, train: {ema: 0.99}}"]),  # search.yaml, weight EMA in the final run
    "final_mixup": Arm("search", ["tune.final={augment: {train: heavy}, train: {mixup: 0.2}}"]),  # ... MixUp (alpha 0.2) in the final run
    "final_cutmix": Arm("search", ["tune.final={augment: {train: heavy}, train: {cutmix: 1.0}}"]),  # ... CutMix (factor 1) in the final run
    "final_progressive": Arm("search", ["tune.final={augment: {train: heavy}, train: {progressive_from: {half_size}}}"]),  # ... from half size
    "median": Arm("search", ["tune.median_stop=true"]),  # search.yaml with the median rule
    "random_epochs": Arm("search", ["tune.trial_budget=epochs", "train.epochs=8"]),  # search.yaml before: 8 epochs for every trial
    "example": None,
}
DEFAULT_ARMS = "shipped,random_epochs,asha,example"
SETS = ("flowers", "hymenoptera", "digits")


def holdout_scores(run_dir: Path, holdout: Path) -> dict[str, float]:
    run = load_run(run_dir)
    images = load_labeled(str(holdout), None, run.config.data, class_names=run.class_names)
    metrics, _ = evaluate_images(run, images)
    return {k: metrics[k] for k in ("accuracy", "log_loss", "num_images")}


def run_search(config_name: str, base: list[str], minutes: float, share: float, overrides: list[str], holdout: Path, workers: int = 0) -> dict[str, Any]:
    """One search arm: search for share x minutes (in `workers` processes, if any), then its best for the rest; scored
    on the hold-out images."""
    search_minutes = minutes * share
    limits = [f"tune.max_minutes={search_minutes}", f"tune.final_minutes={minutes - search_minutes}", "tune.final_epochs=null", "tune.max_trials=100000"]
    config = load_config(config_name, [*base, *limits, *overrides])
    started = time.perf_counter()
    result = search(config, progress=lambda line: print(line, flush=True), workers=workers)
    searched = time.perf_counter() - started
    trained = train_best(result)
    seconds = time.perf_counter() - started
    table = result.trials
    networks = distinct_networks(result.search_dir)
    return {
        "config": config_name,
        "overrides": overrides,
        "workers": workers,
        "workers_idle_share": workers_idle_share(result.search_dir) if workers else None,
        "seconds": round(seconds, 1),
        "search_seconds": round(searched, 1),
        "final_run_seconds": round(seconds - searched, 1),
        "trials": len(table),
        "networks_judged": networks,
        "networks_per_search_minute": round(networks / (searched / 60), 2),
        "trials_per_rung": {int(k): int(v) for k, v in table["rung"].value_counts().sort_index().items()} if "rung" in table else None,
        "stopped_trials": {str(k): int(v) for k, v in table["stopped"].value_counts().items()} if "stopped" in table else {},
        "best_trial_val": result.best_score,
        "best_config": _short(load_config(result.best_config)),
        "final_epochs_run": trained.metrics["epochs_run"],
        "final_stopped": trained.metrics["stopped"],
        "val": trained.metrics["val"]["accuracy"],
        "holdout": holdout_scores(trained.run_dir, holdout),
    }


def distinct_networks(search_dir: Path) -> int:
    """Configurations trained at least once (a promotion continues one already counted)."""
    seen = set()
    for path in search_dir.glob("trial_*/trial.json"):
        values = json.loads(path.read_text())["hyperparameters"]["values"]
        if values.get("tuner/round", 0) == 0 and (path.parent / "result.json").is_file():
            seen.add(json.dumps({k: v for k, v in values.items() if k not in HYPERBAND_KEYS}, sort_keys=True))
    return len(seen)


def workers_idle_share(search_dir: Path) -> float | None:
    """The share of the workers' time not spent in a trial (starting, preparing data, waiting), from search.json."""
    return json.loads((search_dir / FINISHED_FILE).read_text()).get("workers_idle_share")


def run_example(base: list[str], minutes: float, holdout: Path) -> dict[str, Any]:
    """example.yaml for `minutes`, its epochs planned from a 3-epoch probe so that its schedule ends near the limit."""
    overrides = [*base, "train.early_stopping_patience=0"]
    timer = EpochTimer()
    probe_started = time.perf_counter()
    train(load_config("example", [*overrides, "train.epochs=3"]), callbacks=[timer])
    pace = float(np.median(timer.seconds[1:]))  # the first epoch also traces the model
    fixed = time.perf_counter() - probe_started - sum(timer.seconds)
    epochs = max(1, round((minutes * 60 - fixed) / pace))
    print(f"example.yaml: {pace:.1f} s per epoch, {fixed:.0f} s fixed: {epochs} epochs within {minutes:g} minutes", flush=True)
    started = time.perf_counter()
    trained = train(load_config("example", [*overrides, f"train.epochs={epochs}", f"train.max_minutes={minutes}"]))
    return {
        "config": "example",
        "seconds": round(time.perf_counter() - started, 1),
        "epochs_planned": epochs,
        "epochs_run": trained.metrics["epochs_run"],
        "stopped": trained.metrics["stopped"],
        "val": trained.metrics["val"]["accuracy"],
        "holdout": holdout_scores(trained.run_dir, holdout),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default=None, help=f"comma-separated, of {', '.join(SETS)} (default: all; --quick: digits)")
    parser.add_argument("--arms", default=DEFAULT_ARMS, help=f"comma-separated, of {', '.join(ARMS)} (default: {DEFAULT_ARMS})")
    parser.add_argument("--minutes", type=float, default=40.0, help="each arm's wall time: search and final run together")
    parser.add_argument("--search-share", type=float, default=0.375, help="the search's share of a search arm's minutes (15 of 40)")
    parser.add_argument("--holdout", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override the candidates' configs (not shipped's)")
    parser.add_argument("--quick", action="store_true", help="120 digits, a 1-minute budget per arm: checks that the script runs")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "search_quality.json"))
    args = parser.parse_args(argv)
    limit, minutes = (120, 1.0) if args.quick else (None, args.minutes)
    sets = (args.sets or ("digits" if args.quick else ",".join(SETS))).split(",")
    for given, known, flag in ((sets, SETS, "--sets"), (args.arms.split(","), tuple(ARMS), "--arms")):
        unknown = [name for name in given if name not in known]
        if unknown:
            parser.error(f"{flag}: unknown {', '.join(unknown)}; choose from {', '.join(known)}")
    report: dict[str, Any] = {"minutes": minutes, "search_share": args.search_share, "seed": args.seed, "overrides": args.overrides, "sets": {}}
    work = Path(tempfile.mkdtemp(prefix="imgclf-search-quality-"))
    try:
        for name in sets:
            train_dir, holdout = make_set(name, work, args.holdout, args.seed, limit)
            size = 32 if args.quick else SIZES[name]
            base = [f"data.train={train_dir}", f"data.image_size={size}", "data.cache=true", "train.verbose=0", f"seed={args.seed}"]
            base.append(f"output.dir={work / name / 'runs'}")
            if args.quick:
                base += ["train.epochs=3"]
            arms: dict[str, Any] = {}
            for arm in args.arms.split(","):
                print(f"== {name}: {arm} ({minutes:g} minutes)", flush=True)
                spec = ARMS[arm]
                if spec is None:
                    arms[arm] = run_example(base, minutes, holdout)
                else:
                    extra = [item.replace("{half_size}", str(size // 2)) for item in [*spec.overrides, *(args.overrides if arm != "shipped" else [])]]
                    arms[arm] = run_search(spec.config, base, minutes, args.search_share, extra, holdout, spec.workers)
                print(f"{name} {arm}: {json.dumps(arms[arm]['holdout'])} in {arms[arm]['seconds']:.0f} s", flush=True)
            report["sets"][name] = arms
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print_table(report)
        print(f"written: {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


def print_table(report: dict[str, Any]) -> None:
    print("| set | arm | hold-out accuracy | hold-out log-loss | seconds | networks judged | per search minute |")
    print("|---|---|---|---|---|---|---|")
    for name, arms in report["sets"].items():
        for arm, row in arms.items():
            judged = row.get("networks_judged", "")
            rate = row.get("networks_per_search_minute", "")
            print(f"| {name} | {arm} | {row['holdout']['accuracy']:.4f} | {row['holdout']['log_loss']:.3f} | {row['seconds']:.0f} | {judged} | {rate} |")


def _short(config: Config) -> dict[str, Any]:
    return {
        "blocks": [f"{b.filters}x{b.kernel_size}/s{b.strides}x{b.repeats}" for b in config.model.blocks],
        "learning_rate": config.train.learning_rate,
        "optimizer": config.train.optimizer,
        "schedule": config.train.schedule.name,
        "augment": config.augment.train,
        "epochs": config.train.epochs,
        "recipe": {k: getattr(config.train, k) for k in ("mixup", "cutmix", "ema", "progressive_from")},
    }


if __name__ == "__main__":
    raise SystemExit(main())
