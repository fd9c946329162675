"""Export benchmark: file size and one-image latency of each `imgclf export` format, on this CPU, in one run.

    .venv/bin/python benchmarks/export.py            # about 3 minutes on 2 cores; JSON in benchmarks/results/
    .venv/bin/python benchmarks/export.py --quick    # a smoke run

Two models of the sizes users export: the baseline CNN of configs/example.yaml at 64 px, and EfficientNetB0 at 224 px
(random weights: size and speed do not depend on their values), 5 classes each. Each is exported in every format
by `export_run`, run in its own engine through `load_exported` (the function `imgclf export --check` uses), and timed
on one image: the median of `--calls` calls after 5 warm-up calls, in rounds that alternate the formats (these VMs
change speed by up to 1.8x within seconds, so the formats are compared within each round and the ratio to the
`.keras` model is the median of the per-round ratios). Parity on 8 random images is reported beside.
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

import numpy as np  # noqa: E402

from app.config import load_config  # noqa: E402
from app.inference.export import FORMATS, export_run, load_exported  # noqa: E402
from app.models import create_model  # noqa: E402
from app.runs import Run  # noqa: E402

CLASSES = ["daisy", "dandelion", "rose", "sunflower", "tulip"]


def make_run(work: Path, model_name: str, size: int) -> Run:
    config = load_config("example", [f"model.name={model_name}", f"data.image_size={size}", "model.weights=null"])
    blocks = config.model.blocks if model_name == "baseline_cnn" else None
    model = create_model(model_name, input_shape=(size, size, 3), num_classes=len(CLASSES), weights=None, dropout=config.model.dropout, blocks=blocks)
    path = work / model_name
    path.mkdir()
    return Run(path, config, model, CLASSES, False)


def median_ms(predict: Any, image: np.ndarray, calls: int) -> float:
    times = []
    for _ in range(calls):
        start = time.perf_counter()
        predict(image)
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def measure(run: Run, size: int, calls: int, rounds: int) -> dict[str, Any]:
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (1, size, size, 3), dtype=np.uint8)
    batch = rng.integers(0, 256, (8, size, size, 3), dtype=np.uint8)
    reference = np.asarray(run.model.predict_on_batch(batch))
    engines, rows = {}, {}
    for fmt in FORMATS:
        exported = export_run(run, fmt)
        started = time.perf_counter()
        engines[fmt] = load_exported(exported)
        load_seconds = time.perf_counter() - started
        for _ in range(5):
            engines[fmt](image)
        rows[fmt] = {
            "path": str(exported.path),
            "size_mb": round(exported.size_bytes / 1e6, 2),
            "load_seconds": round(load_seconds, 2),
            "max_abs_diff": float(np.max(np.abs(engines[fmt](batch) - reference))),
            "ms": [],
        }
    for _ in range(rounds):
        for fmt in FORMATS:
            rows[fmt]["ms"].append(median_ms(engines[fmt], image, calls))
    for fmt in FORMATS:
        ratios = [ms / keras_ms for ms, keras_ms in zip(rows[fmt]["ms"], rows["keras"]["ms"])]
        rows[fmt]["one_image_ms"] = round(float(np.median(rows[fmt]["ms"])), 2)
        rows[fmt]["latency_vs_keras"] = round(float(np.median(ratios)), 3)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=50, help="one-image calls per format and round")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="the baseline only, few calls")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "export.json"))
    args = parser.parse_args(argv)
    models = [("baseline_cnn", 64)] + ([] if args.quick else [("efficientnetb0", 224)])
    if args.quick:
        args.calls, args.rounds = 5, 2
    work = Path(tempfile.mkdtemp(prefix="imgclf-export-bench-"))
    report: dict[str, Any] = {"calls": args.calls, "rounds": args.rounds, "models": {}}
    try:
        for name, size in models:
            rows = measure(make_run(work, name, size), size, args.calls, args.rounds)
            report["models"][f"{name}@{size}"] = rows
            print(f"\n{name} at {size} px: format, size, one-image latency (median), ratio to .keras, load time, max |diff| on 8 images")
            for fmt, row in rows.items():
                print(
                    f"  {fmt:12s} {row['size_mb']:8.2f} MB  {row['one_image_ms']:8.2f} ms  {row['latency_vs_keras']:6.2f}x  "
                    f"{row['load_seconds']:6.2f} s  {row['max_abs_diff']:.1e}"
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
