"""What k-fold ensembles and test-time augmentation buy: one model, the K fold models averaged, and that ensemble
with TTA, each scored on the same hold-out images that no model trained on.

    .venv/bin/python benchmarks/ensembles.py                    # flowers, 64 px, 5 folds, 12 epochs per model: ~25 min on 2 cores
    .venv/bin/python benchmarks/ensembles.py --quick            # a smoke run on a few images

In one run, on one photo set (default ../shared/data/flowers, folder per class):
  1. 15 % of the images are set aside (stratified, seeded) as the hold-out set;
  2. one model: configs/example.yaml on the rest (its usual 80/20 split), `--epochs` epochs, early stopping off;
  3. `imgclf cv` with the same config and epochs: K fold models, their out-of-fold score;
  4. the hold-out accuracy and log-loss of the single model, of the fold ensemble, and of the ensemble with `--tta`.
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
sys.path.insert(0, str(REPO / "benchmarks"))

from quality import split_holdout  # noqa: E402

from app.config import load_config  # noqa: E402
from app.data import load_labeled  # noqa: E402
from app.inference.evaluation import evaluate_images  # noqa: E402
from app.runs import load_run, load_runs  # noqa: E402
from app.training.crossval import cross_validate  # noqa: E402
from app.training.run import train  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "flowers"))
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=12, help="epochs of every model (the single one and each fold's)")
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--tta", default="flip")
    parser.add_argument("--holdout", type=float, default=0.15)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="150 images, 16 px, 1 epoch, 2 folds: checks that the script runs")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "ensembles.json"))
    args = parser.parse_args(argv)
    limit = None
    if args.quick:
        limit, args.size, args.epochs, args.folds = 150, 16, 1, 2
    work = Path(tempfile.mkdtemp(prefix="imgclf-ensembles-"))
    try:
        train_dir, holdout_dir = split_holdout(Path(args.data), work, args.holdout, args.seed, limit)
        config = load_config(
            "example",
            [
                f"data.train={train_dir}",
                f"data.image_size={args.size}",
                "data.cache=true",
                f"train.epochs={args.epochs}",
                "train.early_stopping_patience=0",
                "train.verbose=0",
                "output.tensorboard=false",
                f"output.dir={work / 'runs'}",
                f"seed={args.seed}",
            ],
        )
        started = time.perf_counter()
        single = load_run(train(config).run_dir)
        single_seconds = time.perf_counter() - started
        started = time.perf_counter()
        cv = cross_validate(config, folds=args.folds, progress=lambda line: print(line, flush=True))
        cv_seconds = time.perf_counter() - started
        holdout = load_labeled(str(holdout_dir), None, config.data, class_names=single.class_names)
        folds = load_runs([cv.cv_dir])

        def scores(members: Any, tta: str | None = None) -> dict[str, float]:
            metrics, _ = evaluate_images(members, holdout, tta=tta)
            return {k: round(metrics[k], 4) for k in ("accuracy", "log_loss", "macro_f1")}

        report = {
            "data": args.data,
            "image_size": args.size,
            "epochs_per_model": args.epochs,
            "folds": args.folds,
            "tta": args.tta,
            "holdout_images": len(holdout),
            "seed": args.seed,
            "single_model": {**scores(single), "seconds": round(single_seconds, 1)},
            "single_model_tta": scores(single, args.tta),
            "fold_models_mean": {k: round(v, 4) for k, v in cv.mean.items() if k in ("accuracy", "log_loss", "macro_f1")},
            "out_of_fold": {k: round(cv.oof[k], 4) for k in ("accuracy", "log_loss", "macro_f1")},
            "fold_ensemble": {**scores(folds), "seconds": round(cv_seconds, 1)},
            "fold_ensemble_tta": scores(folds, args.tta),
        }
        out = Path(args.output)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(report, indent=2) + "\n")
        print(json.dumps(report, indent=2))
        print(f"written: {out}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
