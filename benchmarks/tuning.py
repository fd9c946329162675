"""Search benchmark: what a trial of `imgclf tune` costs beyond fitting its model, memory over many trials, and
fits spent on networks that should never be trained.

    .venv/bin/python benchmarks/tuning.py            # about 10 minutes on 2 cores; JSON in benchmarks/results/
    .venv/bin/python benchmarks/tuning.py --quick    # a smoke run

Measured in one run, on the same synthetic images (3 classes, 32 px, cached) and the same small CNN:

  T1  per-trial overhead: a search whose trials all train the same network (only the learning rate is searched),
      each trial paired back to back with fitting that network outside any tuner (build, compile, datasets, `fit`)
      on the same prepared data; T1 is the median of the per-pair ratios (the VMs this was written on change speed
      by up to 1.8x within seconds, so only back-to-back pairs compare). A trial's time covers everything the search
      loop does for it (proposal, shape check, build, fit, result files, TensorBoard, progress line); the first
      trial of each search (tracing warm-up) is left out. For comparison, plain KerasTuner (`RandomSearch` around
      the same build and `fit`, trial time = gap between the ends of two fits) in the same round.
  T2  peak RSS (VmHWM) after 5 and after 20 trials of one search over a wide space.
  T3  fits of networks that fail the shape check, during the T2 search (every `Model.fit` is inspected).
  D1  distributed search throughput (`search(config, workers=N)`, KerasTuner's chief/worker mode) on the T1 trials:
      trials per minute once the workers run (first to last trial end) and for the whole search (start-up
      included), for 2 workers of one core each, 1 worker pinned to one core, 1 worker on both cores, and the
      search in one process on both cores (no workers). Rounds alternate the order; ratios are medians of rounds.
      Also the chief's CPU use (share of one core over the search) and its gRPC requests per trial.
  D2  the Bayesian oracle's seconds per proposal at 20, 50 and 100 completed trials (stub trials, no training):
      what stays central in a distributed search and grows with its length.
  D3  the Bayesian oracle's proposals after its random start that failed the shape check (each replaced by a random
      draw), ours against KerasTuner's own acquisition step, over configs/search.yaml's space with a stub score
      (no training), for several seeds; and the best stub score each found, with random search's for reference.

    .venv/bin/python benchmarks/tuning.py --parts scaling oracle   # D1, D2 and D3 only
    .venv/bin/python benchmarks/tuning.py --parts oracle           # D2 and D3 (no training: 3.7 minutes on 2 cores)
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
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import keras  # noqa: E402
import keras_tuner as kt  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

from app.config import Config, load_config  # noqa: E402
from app.data import make_datasets, prepare_data  # noqa: E402
from app.models.geometry import baseline_geometry, shape_problem  # noqa: E402
from app.training.fitting import build_model, compile_model, plan_stages, seed_everything  # noqa: E402
from tuning import make_hypermodel, parse_space, search  # noqa: E402
from tuning.oracles import BayesianOracle, RandomOracle, ValidProposals, make_oracle  # noqa: E402
from tuning.tuner import SearchTuner  # noqa: E402

COLORS = [(220, 40, 40), (40, 200, 40), (40, 40, 220)]
REPO = Path(__file__).resolve().parents[1]
PARTS = ("overhead", "memory", "scaling", "oracle")


def make_images(root: Path, per_class: int, size: int = 40, seed: int = 0) -> Path:
    """root/<class>/<i>.png: noisy images of one dominant colour per class."""
    rng = np.random.default_rng(seed)
    for c, color in enumerate(COLORS):
        folder = root / f"class{c}"
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            pixels = np.clip(np.array(color) + rng.normal(0, 60, (size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    return root


def peak_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def base_config(data: Path, out: Path, epochs: int) -> Config:
    return load_config(
        overrides=[
            f"data.train={data}",
            "data.image_size=32",
            "data.batch_size=32",
            "data.cache=true",
            "augment.train=none",
            f"train.epochs={epochs}",
            "train.early_stopping_patience=0",
            "train.verbose=0",
            f"output.dir={out}",
        ]
    )


def overhead_config(base: Config, trials: int, seed: int) -> Config:
    """Every hyperparameter fixed but the learning rate: every trial trains the same network for the same epochs."""
    fixed = [
        "tune.space.blocks=3",
        "tune.space.filters=16",
        "tune.space.kernel_size=3",
        "tune.space.strides=1",
        "tune.space.repeats=1",
        "tune.space.dropout=0.2",
        "tune.space.optimizer=adam",
        "tune.space.schedule=constant",
        "tune.space.augment=none",
    ]
    return load_config(overrides=[*fixed, f"tune.max_trials={trials}", f"tune.seed={seed}"], base=base)


def fixed_network(config: Config) -> Config:
    """The config every trial of `overhead_config` trains (the learning rate aside, which does not change the cost)."""
    hp = kt.HyperParameters()
    hp.Fixed("learning_rate", config.train.learning_rate)
    return make_hypermodel(config, parse_space(config), num_classes=3, multilabel=False, train_images=1).config_for(hp)


def plain_fit(config: Config, data: Any) -> float:
    """Seconds to build, compile and fit `config` on the prepared data, outside any tuner."""
    started = time.perf_counter()
    seed_everything(config.seed, config.train.deterministic)
    model = build_model(config, data.num_classes, data.multilabel)
    stage = plan_stages(config, data.steps_per_epoch(config.data.batch_size))[0]
    compile_model(model, config, stage.lr, data.multilabel)
    with make_datasets(config, data) as datasets:
        model.fit(datasets.train, validation_data=datasets.val, epochs=config.train.epochs, verbose=0)
    return time.perf_counter() - started


def paired_trials(config: Config, data: Any) -> tuple[list[float], list[float]]:
    """(trial seconds, plain-fit seconds) in back-to-back pairs: right after each trial ends, the plain fit of the
    same network runs (inside the progress callback) and the next trial's time starts when it is done. A trial's
    time is everything the search loop does from there to that trial's end: proposal, shape check, build, fit,
    result files, TensorBoard, progress line. The first trial (tracing warm-up) is left out."""
    network = fixed_network(config)
    trials: list[float] = []
    plains: list[float] = []
    resumed_at: list[float] = []

    def progress(line: str) -> None:
        if not line.startswith("["):
            return
        if resumed_at:
            trials.append(time.perf_counter() - resumed_at[-1])
            plains.append(plain_fit(network, data))
        resumed_at.append(time.perf_counter())

    search(config, restart=True, progress=progress)
    return trials, plains


def time_keras_tuner(config: Config, data: Any, trials: int, folder: Path) -> list[float]:
    """Plain KerasTuner: RandomSearch over the learning rate around the same build and fit."""

    class Plain(kt.HyperModel):
        def build(self, hp: kt.HyperParameters) -> keras.Model:
            lr = hp.Float("learning_rate", 1e-4, 1e-2, sampling="log")
            model = build_model(config, data.num_classes, data.multilabel)
            compile_model(model, config, lr, data.multilabel)
            return model

    ends: list[float] = []

    class TrialEnds(keras.callbacks.Callback):
        def on_train_end(self, logs: dict | None = None) -> None:
            ends.append(time.perf_counter())

    tuner = kt.RandomSearch(Plain(), objective="val_accuracy", max_trials=trials, seed=1, directory=str(folder), project_name="plain", overwrite=True)
    with make_datasets(config, data) as datasets:
        tuner.search(datasets.train, validation_data=datasets.val, epochs=config.train.epochs, verbose=0, callbacks=[TrialEnds()])
    return list(np.diff(ends))


def measure_overhead(base: Config, trials: int, rounds: int) -> dict[str, Any]:
    data = prepare_data(base)
    per_round = []
    for r in range(rounds):
        tuned, plain = paired_trials(overhead_config(base, trials, seed=100 + r), data)
        keras_tuner = time_keras_tuner(fixed_network(overhead_config(base, trials, seed=0)), data, trials, Path(base.output.dir) / "kt")
        ratios = [t / p for t, p in zip(tuned, plain)]
        per_round.append(
            {
                "search_s": tuned,
                "plain_fit_s": plain,
                "keras_tuner_s": keras_tuner,
                "pair_ratios": ratios,
                "keras_tuner_over_plain": float(np.median(keras_tuner) / np.median(plain)),
            }
        )
        print(
            f"round {r + 1}: trial {np.median(tuned):.2f} s, plain fit {np.median(plain):.2f} s (median pair ratio {np.median(ratios):.3f}), "
            f"KerasTuner trial {np.median(keras_tuner):.2f} s",
            flush=True,
        )
    return {
        "rounds": per_round,
        "T1_search_over_plain": float(np.median([x for r in per_round for x in r["pair_ratios"]])),
        "overhead_seconds_per_trial": float(np.median([t - p for r in per_round for t, p in zip(r["search_s"], r["plain_fit_s"])])),
        "keras_tuner_over_plain": float(np.median([r["keras_tuner_over_plain"] for r in per_round])),
    }


def measure_memory_and_invalid(base: Config, trials: int) -> dict[str, Any]:
    """A wide space (2-5 blocks, strides 1-2, kernels 3-7 at 32 px): many proposals fail the shape check."""
    config = load_config(
        overrides=[
            "tune.space.blocks={min: 2, max: 5}",
            "tune.space.kernel_size=[3, 5, 7]",
            "tune.space.strides=[1, 2]",
            "tune.space.filters=[8, 16, 32]",
            "tune.space.repeats=[1, 2]",
            f"tune.max_trials={trials}",
            "tune.seed=7",
        ],
        base=base,
    )
    fitted: list[str | None] = []
    real_fit = keras.Model.fit

    def inspecting_fit(model: keras.Model, *args: Any, **kwargs: Any) -> Any:
        blocks = [layer for layer in model.layers if layer.name.endswith("_conv1")]
        from app.config import ConvBlock

        specs = []
        for b, layer in enumerate(blocks, start=1):
            repeats = sum(1 for other in model.layers if other.name.startswith(f"block{b}_conv"))
            pool = "none" if not any(other.name == f"block{b}_pool" for other in model.layers) else "max"
            specs.append(ConvBlock(layer.filters, layer.kernel_size[0], layer.strides[0], repeats, pool))
        fitted.append(shape_problem(baseline_geometry(specs, model.input.shape[1]), config.tune.min_feature_size))
        return real_fit(model, *args, **kwargs)

    peaks: dict[int, int] = {}

    def progress(line: str) -> None:
        if line.startswith("["):
            done = int(line[1:].split("/")[0])
            peaks[done] = peak_kib()

    keras.Model.fit = inspecting_fit
    try:
        result = search(config, restart=True, progress=progress)
    finally:
        keras.Model.fit = real_fit
    early = min(5, trials)
    return {
        "trials": len(result.trials),
        "peak_rss_kib": {str(k): v for k, v in sorted(peaks.items())},
        "T2_rss_last_over_5": peaks[max(peaks)] / peaks[early],
        "fits": len(fitted),
        "rejected_proposals": result.rejected,
        "T3_fits_of_invalid_networks": sum(problem is not None for problem in fitted),
    }


def timed_search(config: Config, workers: int, cores: list[int]) -> dict[str, Any]:
    """One search pinned to `cores` (the chief, and its workers on equal shares of them); its trial-end times."""
    ends: list[float] = []
    before = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cores)
    started = time.perf_counter()
    try:
        result = search(config, restart=True, workers=workers, progress=lambda line: ends.append(time.perf_counter()) if line.startswith("[") else None)
    finally:
        os.sched_setaffinity(0, before)
    wall = time.perf_counter() - started
    finished = json.loads((result.search_dir / "search.json").read_text())
    requests = finished.get("oracle_requests", {})
    steady = (len(ends) - 1) / (ends[-1] - ends[0]) * 60 if len(ends) > 1 else float("nan")
    return {
        "trials": len(ends),
        "seconds": round(wall, 2),
        "trials_per_minute": round(len(ends) / wall * 60, 2),
        "steady_trials_per_minute": round(steady, 2),
        "chief_cpu_share": round(finished["chief_cpu_seconds"] / wall, 4) if "chief_cpu_seconds" in finished else None,
        "requests_per_trial": round(sum(v for k, v in requests.items() if k != "heartbeat") / len(ends), 2) if requests else None,
        "heartbeats": requests.get("heartbeat", 0),
    }


def measure_scaling(base: Config, trials: int, rounds: int) -> dict[str, Any]:
    cores = sorted(os.sched_getaffinity(0))[:2]
    if len(cores) < 2:
        return {"skipped": "needs 2 cores"}
    setups = {
        "two_workers_one_core_each": (2, cores),
        "one_worker_one_core": (1, cores[:1]),
        "one_worker_two_cores": (1, cores),
        "one_process_two_cores": (0, cores),
    }
    per_round: list[dict[str, Any]] = []
    for r in range(rounds):
        order = list(setups) if r % 2 == 0 else list(reversed(setups))
        row = {name: timed_search(overhead_config(base, trials, seed=200 + r), *setups[name]) for name in order}
        per_round.append(row)
        print(
            f"round {r + 1}: "
            + ", ".join(f"{name} {row[name]['steady_trials_per_minute']:.1f}/min ({row[name]['trials_per_minute']:.1f} with start-up)" for name in setups),
            flush=True,
        )

    def ratio(a: str, b: str, key: str) -> float:
        return float(np.median([row[a][key] / row[b][key] for row in per_round]))

    return {
        "rounds": per_round,
        "D1_two_one_core_workers_over_one_pinned": ratio("two_workers_one_core_each", "one_worker_one_core", "steady_trials_per_minute"),
        "D1_two_one_core_workers_over_one_pinned_with_startup": ratio("two_workers_one_core_each", "one_worker_one_core", "trials_per_minute"),
        "D1_two_one_core_workers_over_one_two_core_worker": ratio("two_workers_one_core_each", "one_worker_two_cores", "steady_trials_per_minute"),
        "D1_two_one_core_workers_over_one_process": ratio("two_workers_one_core_each", "one_process_two_cores", "steady_trials_per_minute"),
        "D1_two_one_core_workers_over_one_process_with_startup": ratio("two_workers_one_core_each", "one_process_two_cores", "trials_per_minute"),
        "chief_cpu_share": float(np.median([row["two_workers_one_core_each"]["chief_cpu_share"] for row in per_round])),
        "requests_per_trial": float(np.median([row["two_workers_one_core_each"]["requests_per_trial"] for row in per_round])),
    }


def measure_bayesian_oracle(base: Config, marks: tuple[int, ...] = (20, 50, 100), samples: int = 3) -> dict[str, Any]:
    """Seconds per proposal of the Bayesian oracle after `marks` completed stub trials (random scores, no training),
    over the default search space (configs/search.yaml): the chief's work per trial as a search grows."""
    config = load_config("search", overrides=["tune.tuner=bayesian", "tune.initial_points=5", f"tune.max_trials={max(marks) + samples}", "tune.seed=3"])
    config = load_config(overrides=[f"data.train={base.data.train}", "data.image_size=32", f"output.dir={base.output.dir}"], base=config)
    oracle = make_oracle(config.tune, 3, config.train.epochs)
    hypermodel = make_hypermodel(config, parse_space(config), num_classes=3, multilabel=False, train_images=300)
    SearchTuner(oracle, hypermodel, Path(base.output.dir) / "oracle-bench", data_for=None)  # declares the space, as a search does
    rng = np.random.default_rng(0)
    seconds: dict[str, float] = {}
    times: list[tuple[int, float]] = []
    while len(times) < max(marks) + samples:
        started = time.perf_counter()
        trial = oracle.create_trial("stub")
        times.append((len(oracle.end_order), time.perf_counter() - started))
        oracle.update_trial(trial.trial_id, {config.tune.objective: float(rng.uniform(0.3, 0.9))})
        trial.status = "COMPLETED"
        oracle.end_trial(trial)
    for mark in marks:
        seconds[str(mark)] = round(float(np.median([t for done, t in times if mark <= done < mark + samples])), 4)
    rejected = len(getattr(oracle, "rejected", []))
    print("D2 Bayesian proposal seconds at " + ", ".join(f"{k} trials: {v:.3f} s" for k, v in seconds.items()), flush=True)
    return {
        "proposal_seconds_at_completed_trials": seconds,
        "initial_points": oracle.num_initial_points,
        "proposals_rejected": rejected,
        "proposal_seconds": [[done, round(t, 4)] for done, t in times],
    }


class KerasTunerAcquisition(ValidProposals, kt.oracles.BayesianOptimizationOracle):
    """KerasTuner's acquisition step (its best point, checked only afterwards): the reference for D3."""

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        self._init_valid_proposals()


def stub_score(values: dict[str, Any], rng: np.random.Generator) -> float:
    """A smooth score of a proposal with a little noise: wider first blocks, 5x5 kernels, a deeper network, one_cycle
    and a learning rate near 1.5e-3 score better."""
    score = 0.5 + 0.05 * np.log(values.get("filters_1", 32) / 32) - 0.3 * abs(np.log10(values["learning_rate"] / 1.5e-3))
    score += 0.03 * (values.get("kernel_size_1") == 5) + 0.02 * values.get("blocks", 3) + 0.02 * (values.get("schedule") == "one_cycle")
    return float(score + rng.normal(0, 0.01))


def measure_bayesian_validity(base: Config, trials: int = 20, initial: int = 6, seeds: int = 3) -> dict[str, Any]:
    """D3: Gaussian-process proposals that failed the shape check, ours and KerasTuner's, with the same stub scores."""
    config = load_config("search", overrides=["tune.tuner=bayesian", f"tune.max_trials={trials}", f"output.dir={base.output.dir}"])
    hypermodel = make_hypermodel(config, parse_space(config), num_classes=5, multilabel=False, train_images=3000)
    report: dict[str, Any] = {"trials": trials, "initial_points": initial, "seeds": seeds}
    for name, kind in (("ours", BayesianOracle), ("keras_tuner", KerasTunerAcquisition), ("random", RandomOracle)):
        replaced, proposals, best = 0, 0, []
        for seed in range(seeds):
            options = {"objective": kt.Objective(config.tune.objective, "max"), "max_trials": trials, "seed": seed}
            oracle = kind(**options) if kind is RandomOracle else kind(num_initial_points=initial, **options)
            SearchTuner(oracle, hypermodel, Path(base.output.dir) / f"validity-{name}-{seed}", data_for=None)
            rng = np.random.default_rng(seed)
            for index in range(trials):
                before = len(oracle.rejected)
                trial = oracle.create_trial("stub")
                if index >= initial:
                    proposals += 1
                    replaced += len(oracle.rejected) > before
                oracle.update_trial(trial.trial_id, {config.tune.objective: stub_score(trial.hyperparameters.values, rng)})
                trial.status = "COMPLETED"
                oracle.end_trial(trial)
            best.append(round(float(max(t.score for t in oracle.trials.values() if t.status == "COMPLETED")), 4))
        report[name] = {"proposals": proposals, "replaced": replaced, "best_stub_score": best, "median_best_stub_score": float(np.median(best))}
        print(
            f"D3 {name}: {replaced} of {proposals} proposals after the first {initial} failed the shape check; best stub score per seed {best} "
            f"(median {np.median(best):.4f})",
            flush=True,
        )
    return report


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=480, help="images per class")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--trials", type=int, default=6, help="trials per search in T1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--memory-trials", type=int, default=20)
    parser.add_argument("--scaling-trials", type=int, default=12, help="trials per search in D1")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS), help="what to measure (default: all)")
    parser.add_argument("--quick", action="store_true", help="small: checks that the script runs")
    parser.add_argument("--output", default=str(Path(__file__).resolve().parent / "results" / "tuning.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.epochs, args.trials, args.rounds, args.memory_trials, args.scaling_trials = 40, 1, 3, 1, 6, 3
    work = Path(tempfile.mkdtemp(prefix="imgclf-tuning-bench-"))
    try:
        data = make_images(work / "images", args.images)
        base = base_config(data, work / "runs", args.epochs)
        started = time.perf_counter()
        report: dict[str, Any] = {"images": 3 * args.images, "epochs": args.epochs, "cpus": len(os.sched_getaffinity(0))}
        if "overhead" in args.parts:
            report["overhead"] = measure_overhead(base, args.trials, args.rounds)
        if "memory" in args.parts:
            report["memory_and_invalid"] = measure_memory_and_invalid(base, args.memory_trials)
        if "scaling" in args.parts:
            report["scaling"] = measure_scaling(base, args.scaling_trials, max(2, args.rounds) if not args.quick else 1)
        if "oracle" in args.parts:
            report["bayesian_oracle"] = measure_bayesian_oracle(base, marks=(5, 10) if args.quick else (20, 50, 100))
            report["bayesian_validity"] = measure_bayesian_validity(
                base, trials=8 if args.quick else 20, initial=4 if args.quick else 6, seeds=1 if args.quick else 5
            )
        report["seconds"] = round(time.perf_counter() - started, 1)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    if "overhead" in report:
        o = report["overhead"]
        print(
            f"T1 trial time / plain fit: {o['T1_search_over_plain']:.3f} (target <= 1.05), {o['overhead_seconds_per_trial']:.3f} s per trial; "
            f"plain KerasTuner: {o['keras_tuner_over_plain']:.3f}"
        )
    if "memory_and_invalid" in report:
        m = report["memory_and_invalid"]
        print(f"T2 peak RSS after {m['trials']} trials / after 5: {m['T2_rss_last_over_5']:.3f} (target <= 1.1)")
        print(f"T3 fits of invalid networks: {m['T3_fits_of_invalid_networks']} of {m['fits']} fits ({m['rejected_proposals']} proposals skipped)")
    if "scaling" in report and "skipped" not in report["scaling"]:
        d = report["scaling"]
        print(
            f"D1 trials per minute, 2 one-core workers / 1 worker pinned to one core: {d['D1_two_one_core_workers_over_one_pinned']:.2f} (target >= 1.7; "
            f"{d['D1_two_one_core_workers_over_one_pinned_with_startup']:.2f} with start-up); / 1 worker on both cores: "
            f"{d['D1_two_one_core_workers_over_one_two_core_worker']:.2f}; / the search in one process: {d['D1_two_one_core_workers_over_one_process']:.2f} "
            f"({d['D1_two_one_core_workers_over_one_process_with_startup']:.2f} with start-up)"
        )
        print(f"D1 chief: {100 * d['chief_cpu_share']:.1f} % of one core, {d['requests_per_trial']:.1f} gRPC requests per trial (heartbeats aside)")
    print(f"written: {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
