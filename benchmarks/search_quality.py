"""Does the search pay? `imgclf tune --then-train` against `configs/example.yaml` trained for the same wall time.

    .venv/bin/python benchmarks/search_quality.py                         # flowers, 64 px: about 80 minutes on 2 cores
    .venv/bin/python benchmarks/search_quality.py --quick                 # a smoke run on a few images
    .venv/bin/python benchmarks/search_quality.py --set tune.tuner=hyperband --set train.epochs=9   # another search

In one run, on one photo set (default ../shared/data/flowers, folder per class):
  1. 15 % of the images are set aside (stratified, seeded) as a hold-out test set neither side ever sees: the search
     picks its best on the validation split, so that split's score is optimistic for the search;
  2. search: configs/search.yaml as shipped (data.cache on, 15 minutes of search at most, 8-epoch trials), then its
     best.yaml trained as a normal run (`--then-train`, about 25 minutes); its total wall time W is the budget;
  3. reference: configs/example.yaml with the same data, cache, image size, seed and validation split, its
     train.epochs set so that its run takes W (from its measured seconds per epoch), early stopping off (so that it
     uses the whole budget: the strongest reading of "the same wall time"). These VMs change speed by up to 1.8x,
     so the planned epochs can overrun W (by 21 % in one run): the reference also stops at the end of the epoch
     after which another would pass W (the last epochs of its cosine schedule, where the rate is near zero);
  4. both final models are scored on the validation split (metrics.json) and on the hold-out set.
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
from typing import Any

os.environ.setdefault("NO_ALBUMENTATIONS_UPDATE", "1")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import keras  # noqa: E402
import numpy as np  # noqa: E402
from sklearn.model_selection import train_test_split  # noqa: E402

from app.config import Config, load_config  # noqa: E402
from app.data import load_labeled  # noqa: E402
from app.inference.evaluation import evaluate_images  # noqa: E402
from app.runs import load_run  # noqa: E402
from app.training.run import train  # noqa: E402
from pipelines.sources import from_folder  # noqa: E402
from tuning import search, train_best  # noqa: E402

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


def split_holdout(source: Path, work: Path, fraction: float, seed: int, limit: int | None) -> tuple[Path, Path]:
    """work/train/<class>/ and work/holdout/<class>/ as symbolic links to the images of `source`."""
    images = from_folder(source)
    paths, labels = list(images.paths), list(images.labels)
    if limit:
        paths, _, labels, _ = train_test_split(paths, labels, train_size=limit, stratify=labels, random_state=seed)
    kept, held, kept_labels, held_labels = train_test_split(paths, labels, test_size=fraction, stratify=labels, random_state=seed)
    for name, group, group_labels in (("train", kept, kept_labels), ("holdout", held, held_labels)):
        for path, label in zip(group, group_labels):
            target = work / name / images.class_names[label] / Path(path).name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(Path(path).resolve())
    return work / "train", work / "holdout"


def holdout_scores(run_dir: Path, holdout: Path) -> dict[str, float]:
    run = load_run(run_dir)
    images = load_labeled(str(holdout), None, run.config.data, class_names=run.class_names)
    metrics, _ = evaluate_images(run, images)
    return {k: metrics[k] for k in ("accuracy", "log_loss", "macro_f1", "num_images")}


def common(train_dir: Path, out: Path, size: int) -> list[str]:
    return [f"data.train={train_dir}", f"data.image_size={size}", "data.cache=true", "train.verbose=0", f"output.dir={out}"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "flowers"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--search-minutes", type=float, default=None, help="no trial starts after this (default: the config's tune.max_minutes, 15)")
    parser.add_argument("--trial-epochs", type=int, default=None, help="epochs per trial (default: the config's train.epochs, 8)")
    parser.add_argument("--final-epochs", type=int, default=None, help="epochs of the best configuration's final run, instead of its minutes")
    parser.add_argument("--final-minutes", type=float, default=None, help="the final run trains about this long (default: the config's tune.final_minutes, 25)")
    parser.add_argument("--holdout", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override the search's config (configs/search.yaml), e.g. tune.tuner=hyperband (repeatable)",
    )
    parser.add_argument("--quick", action="store_true", help="300 images, 1-minute search, few epochs: checks that the script runs")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "search_quality.json"))
    args = parser.parse_args(argv)
    limit = None
    if args.quick:
        limit, args.size, args.search_minutes, args.trial_epochs, args.final_epochs, args.final_minutes = 300, 32, 1.0, 1, 2, None
    work = Path(tempfile.mkdtemp(prefix="imgclf-search-quality-"))
    try:
        train_dir, holdout = split_holdout(Path(args.data), work, args.holdout, args.seed, limit)
        base = common(train_dir, work / "runs", args.size)

        started = time.perf_counter()
        lengths = [f"train.epochs={args.trial_epochs}"] if args.trial_epochs else []
        if args.final_epochs:
            lengths += [f"tune.final_epochs={args.final_epochs}", "tune.final_minutes=null"]
        elif args.final_minutes:
            lengths += [f"tune.final_minutes={args.final_minutes}"]
        if args.search_minutes:
            lengths += [f"tune.max_minutes={args.search_minutes}"]
        search_config = load_config("search", [*base, *lengths, "tune.max_trials=1000", f"seed={args.seed}", *args.overrides])
        result = search(search_config, progress=lambda line: print(line, flush=True))
        searched = time.perf_counter() - started
        trained = train_best(result)
        budget = time.perf_counter() - started
        print(f"search {searched:.0f} s + final training {budget - searched:.0f} s = budget {budget:.0f} s", flush=True)

        reference_overrides = [*base, "train.early_stopping_patience=0", f"seed={args.seed}"]
        timer = EpochTimer()
        probe_started = time.perf_counter()
        train(load_config("example", [*reference_overrides, "train.epochs=3"]), callbacks=[timer])
        probe_seconds = time.perf_counter() - probe_started
        epoch_seconds = float(np.median(timer.seconds[1:]))  # the first epoch also traces the model
        fixed = probe_seconds - 3 * epoch_seconds  # start-up, tracing, final report
        epochs = max(1, round((budget - fixed) / epoch_seconds))
        print(f"reference: {epoch_seconds:.1f} s per epoch, {fixed:.0f} s fixed: {epochs} epochs", flush=True)
        reference_started = time.perf_counter()
        clock = WallClockStop(budget - fixed)
        reference = train(load_config("example", [*reference_overrides, f"train.epochs={epochs}"]), callbacks=[clock])
        reference_seconds = time.perf_counter() - reference_started

        report: dict[str, Any] = {
            "data": args.data,
            "image_size": args.size,
            "holdout_fraction": args.holdout,
            "seed": args.seed,
            "search_overrides": args.overrides,
            "search_minutes": search_config.tune.max_minutes,
            "trial_epochs": search_config.train.epochs,
            "final_epochs": search_config.tune.final_epochs,
            "final_minutes": search_config.tune.final_minutes,
            "final_settings": search_config.tune.final,
            "search": {
                "search_dir": str(result.search_dir),
                "trials": len(result.trials),
                "rejected_proposals": result.rejected,
                "best_trial_val": result.best_score,
                "search_seconds": round(searched, 1),
                "final_run_seconds": round(budget - searched, 1),
                "budget_seconds": round(budget, 1),
                "best_config": _short(load_config(result.best_config)),
                "val": trained.metrics["val"],
                "holdout": holdout_scores(trained.run_dir, holdout),
                "trials_table": json.loads(result.trials.drop(columns=["message"], errors="ignore").to_json(orient="records")),
            },
            "reference": {
                "config": "configs/example.yaml",
                "epochs": epochs,
                "epochs_trained": clock.epochs,
                "stopped_at_budget": clock.stopped,
                "seconds": round(reference_seconds, 1),
                "val": reference.metrics["val"],
                "holdout": holdout_scores(reference.run_dir, holdout),
            },
        }
        s, r = report["search"], report["reference"]
        report["search_wins_on_holdout"] = s["holdout"]["accuracy"] > r["holdout"]["accuracy"]
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2, default=str) + "\n")
        print(f"search + final run: {s['budget_seconds']:.0f} s, val accuracy {s['val']['accuracy']:.4f}, hold-out accuracy {s['holdout']['accuracy']:.4f}")
        print(
            f"example.yaml ({clock.epochs} of {epochs} epochs): {r['seconds']:.0f} s, val accuracy {r['val']['accuracy']:.4f}, "
            f"hold-out accuracy {r['holdout']['accuracy']:.4f}"
        )
        print(f"written: {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


class EpochTimer(keras.callbacks.Callback):
    def __init__(self) -> None:
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.seconds.append(time.perf_counter() - self._start)


class WallClockStop(keras.callbacks.Callback):
    """Stop at the end of the epoch after which one more (as long as the median one so far) would pass `seconds`."""

    def __init__(self, seconds: float) -> None:
        super().__init__()
        self.seconds = seconds
        self.epochs = 0
        self.stopped = False
        self._durations: list[float] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self._start = time.perf_counter()

    def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
        self._epoch_start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        now = time.perf_counter()
        self.epochs += 1
        self._durations.append(now - self._epoch_start)
        if now - self._start + float(np.median(self._durations)) > self.seconds and not self.model.stop_training:
            self.model.stop_training = True
            self.stopped = True


def _short(config: Config) -> dict[str, Any]:
    return {
        "blocks": [f"{b.filters}x{b.kernel_size}/s{b.strides}x{b.repeats}" for b in config.model.blocks],
        "learning_rate": config.train.learning_rate,
        "optimizer": config.train.optimizer,
        "schedule": config.train.schedule.name,
        "augment": config.augment.train,
        "dropout": config.model.dropout,
        "label_smoothing": config.train.label_smoothing,
        "epochs": config.train.epochs,
    }


if __name__ == "__main__":
    raise SystemExit(main())
