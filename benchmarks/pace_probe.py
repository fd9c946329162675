"""Does the pace probe time a final run's epochs right? A search sizes its final run (tune.final_minutes) at the pace
`app.training.pace.measure_epoch_seconds` times before it starts; a pace too slow leaves minutes unused, too fast
cuts the run's schedule at its time limit. Per set, in one process:

    .venv/bin/python benchmarks/pace_probe.py                 # flowers, hymenoptera and digits: ~8 minutes
    .venv/bin/python benchmarks/pace_probe.py --quick         # 120 digits, a few epochs: checks that the script runs

  1. the network the shipped search picked on the set (benchmarks/README.md, "Search"), with search.yaml's final
     settings (heavy augmentation), at the set's image size, its images decoded once;
  2. the probe, `--rounds` times (its own fits, as a search's end runs it);
  3. a run of that config through `imgclf train`'s path (`app.training.run.train`) for `--epochs` epochs, each
     epoch's wall time from the first epoch's start to the end of its last callback;
  4. the ratio of each probe to the run's mean epoch after its first (1.0: planned right).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
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

from app.config import load_config  # noqa: E402
from app.data import prepare_data  # noqa: E402
from app.training.pace import measure_epoch_seconds  # noqa: E402
from app.training.run import train  # noqa: E402
from benchmarks.quality import SIZES, make_set  # noqa: E402

# The best network of the shipped search on each set (issue 28, sixth reading): (filters, kernel, stride, convs) per block
NETWORKS = {
    "flowers": ([(48, 3, 2, 1), (72, 3, 1, 2), (112, 3, 2, 2)], "adamw", "cosine"),
    "hymenoptera": ([(32, 3, 1, 1), (48, 3, 1, 2), (72, 5, 1, 1)], "adamw", "one_cycle"),
    "digits": ([(48, 5, 2, 2), (96, 5, 1, 2), (192, 3, 1, 1)], "adam", "one_cycle"),
}


class EpochEnds(keras.callbacks.Callback):
    """The instants at which each epoch ends, after every other callback (placed last)."""

    def __init__(self) -> None:
        super().__init__()
        self.began = 0.0
        self.ends: list[float] = []

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.began = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
        self.ends.append(time.perf_counter())


def measure(name: str, work: Path, epochs: int, rounds: int, seed: int, limit: int | None) -> dict[str, Any]:
    train_dir, _ = make_set(name, work, 0.15, seed, limit)
    blocks, optimizer, schedule = NETWORKS[name]
    written = ", ".join(f"{{filters: {f}, kernel_size: {k}, strides: {s}, repeats: {r}}}" for f, k, s, r in blocks)
    settings = [f"data.train={train_dir}", f"data.image_size={SIZES[name]}", "data.cache=true", "augment.train=heavy", f"model.blocks=[{written}]"]
    settings += [f"train.optimizer={optimizer}", f"train.schedule={schedule}", f"train.epochs={epochs}", "train.early_stopping_patience=0"]
    config = load_config("search", [*settings, "train.verbose=0", f"seed={seed}", f"output.dir={work / name / 'runs'}"])
    data = prepare_data(config)
    probes = [measure_epoch_seconds(config, data) for _ in range(rounds)]
    ends = EpochEnds()
    train(config, callbacks=[ends], data=data)
    epoch_seconds = [later - earlier for earlier, later in zip([ends.began, *ends.ends], ends.ends)]
    run = statistics.mean(epoch_seconds[1:])
    return {
        "batches_per_epoch": data.steps_per_epoch(config.data.batch_size),
        "probes": [round(p, 3) for p in probes],
        "run_epoch_seconds": round(run, 3),
        "run_first_epoch_seconds": round(epoch_seconds[0], 3),
        "probe_over_run": [round(p / run, 3) for p in probes],
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="flowers,hymenoptera,digits")
    parser.add_argument("--epochs", type=int, default=30, help="epochs of the run the probes are compared with")
    parser.add_argument("--rounds", type=int, default=3, help="probes per set")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--quick", action="store_true", help="120 digits, 4 epochs, 1 probe: checks that the script runs")
    parser.add_argument("--output", default=str(REPO / "benchmarks" / "results" / "pace_probe.json"))
    args = parser.parse_args(argv)
    sets = ["digits"] if args.quick else args.sets.split(",")
    unknown = [name for name in sets if name not in NETWORKS]
    if unknown:
        parser.error(f"--sets: unknown {', '.join(unknown)}; choose from {', '.join(NETWORKS)}")
    epochs, rounds, limit = (4, 1, 120) if args.quick else (args.epochs, args.rounds, None)
    with tempfile.TemporaryDirectory(prefix="imgclf-pace-probe-") as work:
        report = {"epochs": epochs, "rounds": rounds, "sets": {name: measure(name, Path(work), epochs, rounds, args.seed, limit) for name in sets}}
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print("| set | batches an epoch | run: s an epoch | probes: s an epoch | probe / run |")
    print("|---|---|---|---|---|")
    for name, row in report["sets"].items():
        probes, ratios = ", ".join(map(str, row["probes"])), ", ".join(map(str, row["probe_over_run"]))
        print(f"| {name} | {row['batches_per_epoch']} | {row['run_epoch_seconds']} | {probes} | {ratios} |")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
