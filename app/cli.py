"""Command-line interface: a thin face over app.training.run, app.inference.evaluation, app.inference.prediction and app.demo.

    imgclf demo                                   # digits: train, score the hold-out set, write submission.csv
    imgclf train my_images/ [-c finetune] --set train.epochs=5
    imgclf evaluate runs/<run> [--data labeled.csv]
    imgclf predict runs/<run> --test sample_submission.csv --output submission.csv
    imgclf cv my_images/ --folds 5                   # k-fold CV: a run per fold, oof.csv, cv.json (app/training/crossval.py)
    imgclf predict runs/<cv> [runs/<run> ...] --tta flip   # ensemble of folds / runs with test-time augmentation
    imgclf models [--blocks resnet50]                # registered architectures, or one backbone's blocks
    imgclf config -c config.yaml --set train.epochs=5  # the resolved config, every default included
    imgclf plot-lr -c config.yaml                    # the learning rate per step, before any training
    imgclf find-lr -c config.yaml                    # LR range test: loss vs learning rate, a suggested rate
    imgclf tune my_images/ -c search [--then-train]  # architecture / hyperparameter search (tuning/)
    imgclf explain runs/<run> anatomy|feature-maps IMAGE|gradcam [--mistakes]   # what the model computes (app/explain/)
    imgclf export runs/<run> --format saved_model tflite --check                 # for use elsewhere (app/inference/export.py)
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import os
import re
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # keep TensorFlow's C++ start-up chatter out of the way

from app.config import shipped_configs  # noqa: E402  (YAML only: --help stays fast)

log = logging.getLogger("imgclf")
EXPORT_FORMATS = ("keras", "saved_model", "tflite", "onnx")  # app.inference.export.FORMATS, without importing TensorFlow for --help

EPILOG = """examples:
  imgclf demo
  imgclf train path/to/folder
  imgclf train path/to/folder -c example --set train.epochs=10
  imgclf evaluate runs/20260101-120000-baseline_cnn
  imgclf predict runs/20260101-120000-baseline_cnn --test data/sample_submission.csv
  imgclf cv path/to/folder --folds 5
  imgclf predict runs/20260101-120000-cv-baseline_cnn --tta flip --test data/sample_submission.csv
  imgclf train path/to/folder -c finetune
  imgclf plot-lr -c finetune --steps-per-epoch 100
  imgclf find-lr path/to/folder -c finetune
  imgclf tune path/to/folder -c search --set tune.max_trials=20 --then-train
  imgclf init my_configs/
  imgclf explain runs/20260101-120000-baseline_cnn gradcam --mistakes
  imgclf export runs/20260101-120000-baseline_cnn --format saved_model --check

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
    shipped = ", ".join(shipped_configs())

    def overrides(p: argparse.ArgumentParser) -> None:
        p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE", help="override a config value, e.g. train.epochs=5 (repeatable)")

    def config_args(p: argparse.ArgumentParser, what: str = "the training images") -> None:
        p.add_argument("data", nargs="?", help=f"{what}: a folder of <class>/<image> sub-folders, or a CSV (data.train; default: the config's)")
        p.add_argument("-c", "--config", help=f"a YAML file, or a shipped config: {shipped} (default: the built-in defaults, `imgclf config`)")
        overrides(p)

    demo = sub.add_parser("demo", help="train on the built-in digits dataset and write a submission (a few minutes on a CPU)")
    demo.add_argument("--cache-dir", help="where the digits are exported (default: $IMGCLF_CACHE or ~/.cache/imgclf)")
    overrides(demo)

    train = sub.add_parser("train", help="train a model on a folder or CSV (and a config); writes a new run directory")
    config_args(train)

    def tta(p: argparse.ArgumentParser) -> None:
        p.add_argument("--tta", metavar="SPEC", help="test-time augmentation: none, flip, flip+crops or an albumentations .yaml (default: the run's augment.tta)")
        p.add_argument("--tta-passes", type=int, metavar="N", help="predictions averaged per model, the plain image included (default: the preset's)")

    evaluate = sub.add_parser("evaluate", help="score a trained run (or the average of several) on its validation split or another labeled set")
    evaluate.add_argument("run", nargs="+", help="run directories printed by train, or cross-validation directories (all their folds)")
    evaluate.add_argument("--data", help="labeled folder or CSV to score (default: the run's own validation split; required for several models)")
    evaluate.add_argument("--images", help="image folder for a --data CSV")
    evaluate.add_argument("--output", help="folder for metrics.json, per_class.csv, confusion_matrix.png, mistakes.png (default: <first run or CV directory>/evaluation-<data>)")
    tta(evaluate)
    evaluate.add_argument("--force", action="store_true", help="overwrite an existing output file")

    predict = sub.add_parser("predict", help="predict a test set with a run or an ensemble (folds, runs) and write a Kaggle-style submission CSV")
    predict.add_argument("run", nargs="+", help="run directories printed by train, or cross-validation directories (all their folds)")
    predict.add_argument("--test", help="folder of test images or a sample_submission.csv (default: the run's data.test)")
    predict.add_argument("--images", help="image folder for a sample_submission.csv (default: test/ beside it)")
    predict.add_argument("--output", help="submission file (default: <run>/submission.csv)")
    predict.add_argument("--probabilities", action="store_true", help="without a sample submission: one probability column per class instead of id,label")
    tta(predict)
    predict.add_argument("--weights", nargs="+", type=float, metavar="W", help="one weight per model (a CV directory counts one per fold; default: equal)")
    predict.add_argument("--force", action="store_true", help="overwrite an existing output file")

    cv = sub.add_parser("cv", help="k-fold cross-validation: one run per fold, out-of-fold predictions and score (resumes an interrupted one)")
    config_args(cv)
    cv.add_argument("--folds", type=int, help="number of folds (default: data.folds, else 5)")
    cv.add_argument("--metric", help="the score printed (default: accuracy; multi-label: mean_column_auc); cv.json has them all")
    cv.add_argument("--restart", action="store_true", help="start a new cross-validation even if an interrupted one of this config exists")

    models = sub.add_parser("models", help="list the registered architectures, or the blocks of one backbone")
    models.add_argument("--blocks", metavar="NAME", help="print this backbone's blocks (what finetune.unfreeze_blocks counts)")

    show = sub.add_parser("config", help="print the resolved config: the file, the --set overrides and every default")
    config_args(show)

    init = sub.add_parser("init", help="copy the shipped configs (and the augmentation example) into a folder, to edit")
    init.add_argument("folder", help="where to write them (created if missing)")
    init.add_argument("--force", action="store_true", help="overwrite files of the same name")

    plot_lr = sub.add_parser("plot-lr", help="draw a config's learning rate per step (both stages) before training")
    config_args(plot_lr)
    plot_lr.add_argument("--steps-per-epoch", type=int, help="default: from the size of the configured training set")
    plot_lr.add_argument("--output", default="lr_schedule.png", help="PNG to write (default: lr_schedule.png)")
    plot_lr.add_argument("--force", action="store_true", help="overwrite an existing output file")

    find_lr = sub.add_parser("find-lr", help="LR range test: loss against an exponentially growing rate, and a suggestion")
    config_args(find_lr)
    find_lr.add_argument("--steps", type=int, default=100, help="training steps in the test (default 100)")
    find_lr.add_argument("--start-lr", type=float, default=1e-7)
    find_lr.add_argument("--end-lr", type=float, default=1.0)

    tune = sub.add_parser("tune", help="search filters, kernels, strides, LR schedule... (KerasTuner); resumes an interrupted search")
    config_args(tune)
    tune.add_argument("--restart", action="store_true", help="start a new search even if an interrupted one of this config exists")
    tune.add_argument("--then-train", action="store_true", help="then train best.yaml as a normal run (and write its submission when data.test is set)")
    tune.add_argument("--workers", type=int, default=0, metavar="N", help="run trials in N processes on this machine, each on its share of the cores (KerasTuner's chief/worker mode)")
    tune.add_argument("--role", choices=("chief", "worker"), help="a search over several machines: the chief holds the oracle at --oracle, workers run trials (docs/machines.md)")
    tune.add_argument("--oracle", metavar="HOST:PORT", help="the chief's address: where it listens (--role chief), or where workers find it (--role worker)")
    tune.add_argument("--worker-id", help="--role worker: this worker's name in the search (default worker-<host>-<pid>)")
    # Set by the chief for the workers it starts itself:
    tune.add_argument("--search-dir", help=argparse.SUPPRESS)
    tune.add_argument("--cores", help=argparse.SUPPRESS)
    tune.add_argument("--exit-with-parent", action="store_true", help=argparse.SUPPRESS)

    explain = sub.add_parser("explain", help="feature maps, channel sums, Grad-CAM or the anatomy of a trained run (PNG / Markdown in RUN/explain/)")
    explain.add_argument("run", help="a run directory written by train")
    views = explain.add_subparsers(dest="view", required=True, metavar="VIEW")
    anatomy = views.add_parser("anatomy", help="per layer: output shape (NHWC and NCHW), parameters, kernel, stride, padding, receptive field, jump")
    anatomy.add_argument("--output", help="folder for anatomy.md (default RUN/explain/)")
    maps = views.add_parser("feature-maps", help="one image's activations per layer (a grid of channels) and each layer's channel sum over it")
    maps.add_argument("image", help="an image file")
    maps.add_argument("--layers", nargs="+", help="layer names (default: the last activation of each block; `anatomy` lists them)")
    maps.add_argument("--output", help="folder for the PNGs (default RUN/explain/)")
    cam = views.add_parser("gradcam", help="Grad-CAM heat maps over a grid of labeled images, with true and predicted labels")
    cam.add_argument("--data", help="labeled folder or CSV (default: the run's validation split)")
    cam.add_argument("--images", help="image folder for a CSV given with --data")
    cam.add_argument("--mistakes", action="store_true", help="the most confident mistakes instead of the first images")
    cam.add_argument("--class", dest="class_name", metavar="NAME", help="the heat maps of this class, on images of this class")
    cam.add_argument("--count", type=int, default=16, help="images in the grid (default 16)")
    cam.add_argument("--layer", help="the layer to explain (default: the last spatial activation)")
    cam.add_argument("--output", help="folder for the PNG (default RUN/explain/)")

    export = sub.add_parser("export", help="the run's model for use elsewhere (.keras, SavedModel, LiteRT, ONNX), its class names beside it")
    export.add_argument("run", help="a run directory written by train")
    export.add_argument("--format", nargs="+", default=["keras"], choices=[*EXPORT_FORMATS, "all"], help="one or more formats (default keras)")
    export.add_argument("--output", help="the export's path, for one format (default: RUN/export/model.keras, saved_model/, model.tflite, model.onnx)")
    export.add_argument("--check", action="store_true", help="parity: each export's probabilities on real images against the run's own")
    export.add_argument("--data", help="labeled folder or CSV for --check (default: the run's validation split)")
    export.add_argument("--images", help="image folder for a CSV given with --data")
    export.add_argument("--count", type=int, default=64, help="images --check uses (default 64)")
    export.add_argument("--force", action="store_true", help="replace an existing export")
    return parser


def data_overrides(args: argparse.Namespace) -> list[str]:
    """The --set overrides, after `data.train=` from the DATA argument when given (quoted: a path is a string)."""
    given = [f"data.train={json.dumps(args.data)}"] if getattr(args, "data", None) else []
    return [*given, *args.overrides]


def cmd_init(args: argparse.Namespace) -> int:
    from app.atomic import OutputExistsError, atomic_write, check_output
    from app.config import SHIPPED_CONFIGS

    folder = Path(args.folder)
    if folder.exists() and not folder.is_dir():
        raise OutputExistsError(f"{folder}: is a file. Fix: give a folder to write the configs into")
    copies = {path: folder / path.relative_to(SHIPPED_CONFIGS) for path in sorted(SHIPPED_CONFIGS.rglob("*.yaml"))}
    for target in copies.values():  # every copy checked before any is written: the user's edits are kept
        check_output(target, force=args.force)
    for path, target in copies.items():
        atomic_write(target, lambda tmp, text=path.read_text(): tmp.write_text(text), force=args.force)
        print(f"written: {target}")
    print(f"then: imgclf train my_images/ -c {folder / 'example.yaml'}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from app.demo import run_demo

    result = run_demo(args.cache_dir, args.overrides)
    print(f"run directory: {result.run_dir}")
    print(f"accuracy: {result.holdout['accuracy']:.4f} (hold-out test set, {result.holdout['num_images']} images)")
    print(f"submission: {result.submission}")
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from app.config import load_config
    from app.training.run import train

    result = train(load_config(args.config, data_overrides(args)))
    print(f"run directory: {result.run_dir}")
    print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in result.metrics["val"].items() if isinstance(v, float)))
    print(f"stopped: {result.metrics['stopped']}")
    if result.metrics["skipped_images"]:
        print(f"skipped {len(result.metrics['skipped_images'])} unreadable image(s): see metrics.json")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    from app.data import evaluation_set
    from app.reports import write_evaluation
    from app.runs import load_runs

    members = load_runs(args.run)
    if len(members) > 1 and not args.data:
        raise ValueError(f"{len(members)} models, each with its own validation split. Fix: pass --data with a labeled set none of them trained on")
    first = members[0]
    images = evaluation_set(first.config, first.class_names, args.data, args.images)
    name = Path(args.data).stem if args.data else "val"
    output = Path(args.output) if args.output else Path(args.run[0]) / f"evaluation-{name}"  # a CV directory: beside its folds
    metrics = write_evaluation(output, members, images, source=args.data or "validation split", tta=args.tta, passes=args.tta_passes, force=args.force)
    print(json.dumps(metrics, indent=2))
    print(f"written: {output}/ (metrics.json, per_class.csv, confusion_matrix.png, mistakes.png)")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from app.inference.submission import submit
    from app.runs import CV_FILE, load_runs

    members = load_runs(args.run)
    output = Path(args.output) if args.output else Path(args.run[0]) / "submission.csv"
    frame = submit(members, output, test=args.test, images=args.images, probabilities=args.probabilities, tta=args.tta,
                   passes=args.tta_passes, weights=args.weights, force=args.force)
    models = f", the mean of {len(members)} models" if len(members) > 1 else ""
    print(f"submission: {output} ({len(frame)} rows{models})")
    cv_dirs = [Path(p) for p in args.run if (Path(p) / CV_FILE).is_file()]
    if args.tta and cv_dirs:
        from app.training.crossval import oof_scores

        for cv_dir in cv_dirs:  # what TTA buys, on images no fold model trained on
            plain, with_tta = oof_scores(cv_dir, tta="none"), oof_scores(cv_dir, tta=args.tta, passes=args.tta_passes)
            metric = "mean_column_auc" if "mean_column_auc" in plain else "accuracy"
            print(f"{cv_dir}: out-of-fold {metric} {plain[metric]:.4f} without TTA, {with_tta[metric]:.4f} with {args.tta}; "
                  f"log_loss {plain['log_loss']:.4f} -> {with_tta['log_loss']:.4f}")
    return 0


def cmd_cv(args: argparse.Namespace) -> int:
    from app.config import load_config
    from app.inference.evaluation import SCORE_NAMES
    from app.training.crossval import cross_validate

    if args.folds is not None and args.folds < 2:
        raise ValueError(f"--folds {args.folds}: give at least 2 folds")
    if args.metric is not None and args.metric not in SCORE_NAMES:
        raise ValueError(f"--metric {args.metric}: not a score; use one of {', '.join(SCORE_NAMES)}")
    result = cross_validate(load_config(args.config, data_overrides(args)), folds=args.folds, restart=args.restart, progress=lambda line: print(line, flush=True))
    metric = result.metric(args.metric)
    print(f"cross-validation directory: {result.cv_dir}")
    for fold, scores in enumerate(result.per_fold, start=1):
        print(f"  fold {fold}: {metric} {scores[metric]:.4f}")
    print(f"{metric}: {result.mean[metric]:.4f} ± {result.std[metric]:.4f} over {result.folds} folds; out-of-fold {result.oof[metric]:.4f} "
          f"on {result.oof['num_images']} images")
    print(f"written: {result.cv_dir / 'oof.csv'}, {result.cv_dir / 'cv.json'}")
    return 0


def cmd_models(args: argparse.Namespace) -> int:
    from app.models import list_models
    from app.models.backbones import BACKBONES, backbone_blocks, get_spec, make_backbone

    if args.blocks:
        spec = get_spec(args.blocks)
        blocks = backbone_blocks(make_backbone(spec.name, (spec.native_size, spec.native_size, 3), weights=None))
        print(f"{spec.name}: {len(blocks)} blocks, input to output (finetune.unfreeze_blocks=K unfreezes the last K)")
        for i, (name, layers) in enumerate(blocks, start=1):
            print(f"  {i:3d}  {name:16s} {len(layers):4d} layers")
        return 0
    print(f"{'name':18s} {'family':16s} native size")
    for name in list_models():
        spec = BACKBONES.get(name)
        print(f"{name:18s} {spec.family if spec else 'baseline':16s} {spec.native_size if spec else '-'}")
    return 0


def cmd_config(args: argparse.Namespace) -> int:
    from app.config import dump_config, load_config
    from tuning.space import parse_space

    config = load_config(args.config, data_overrides(args))
    parse_space(config)  # the tune section's names too: the same errors `imgclf tune` gives
    print(dump_config(config), end="")
    return 0


def cmd_plot_lr(args: argparse.Namespace) -> int:
    import math

    from app.atomic import OutputExistsError
    from app.config import load_config
    from app.data import load_train_val
    from app.plots import plot_lr_schedule
    from app.training.fitting import plan_stages

    config = load_config(args.config, data_overrides(args))
    output = Path(args.output)
    if output.exists() and not args.force:
        raise OutputExistsError(f"{output}: already exists. Fix: choose another --output, or pass --force to overwrite it.")
    steps = args.steps_per_epoch
    if steps is None:
        train_set, _ = load_train_val(config.data, config.seed)  # lists the files only; nothing is decoded
        steps = math.ceil(len(train_set) / config.data.batch_size)
    stages = plan_stages(config, steps)
    plot_lr_schedule([(s.name, s.lr, s.epochs) for s in stages], steps, output)
    print(f"learning-rate schedule: {output} ({' + '.join(f'{s.epochs} {s.name} epochs' for s in stages)}, {steps} steps per epoch)")
    return 0


def cmd_find_lr(args: argparse.Namespace) -> int:
    from app.config import load_config
    from app.training.lr_finder import find_lr, write_lr_finder

    config = load_config(args.config, data_overrides(args))
    result = find_lr(config, steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr)
    run_dir = write_lr_finder(config, result, steps=args.steps, start_lr=args.start_lr, end_lr=args.end_lr)
    print(f"suggested learning rate: {result.suggested_lr:.3g} (the longest descent of the loss; the loss is lowest at {result.min_loss_lr:.3g})")
    for note in result.notes:
        print(f"note: {note}")
    print(f"plot: {run_dir / 'lr_finder.png'}")
    return 0


def cmd_tune(args: argparse.Namespace) -> int:
    if args.cores and hasattr(os, "sched_setaffinity"):  # a worker started by a local chief: pinned to its share of the cores before TensorFlow starts
        os.sched_setaffinity(0, [int(core) for core in args.cores.split(",")])
    if args.role and not args.oracle:
        raise ValueError(f"--role {args.role} needs --oracle HOST:PORT: the address the chief listens on, the same on every machine")
    if args.oracle and not args.role:
        raise ValueError("--oracle needs --role chief (on one machine) or --role worker (on the others)")
    if args.role == "worker" and (args.workers or args.then_train or args.restart):
        raise ValueError("--workers, --then-train and --restart are the chief's options, not a worker's")
    if args.worker_id and args.role != "worker":
        raise ValueError("--worker-id names a worker: use it with --role worker")
    from app.config import load_config
    from tuning.search import search, train_best, work

    config = load_config(args.config, data_overrides(args))
    if args.role == "worker":
        work(config, args.oracle, args.worker_id, args.search_dir, exit_with_parent=args.exit_with_parent)
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
        print("validation: " + ", ".join(f"{k}={v:.4f}" for k, v in trained.metrics["val"].items() if isinstance(v, float)))
        if trained.submission:
            print(f"submission: {trained.submission}")
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from app import explain
    from app.runs import load_run

    run = load_run(args.run)
    if args.view == "anatomy":
        path = explain.explain_anatomy(run, args.output)
        print(path.read_text(), end="")
        print(f"written: {path}")
    elif args.view == "feature-maps":
        for path in explain.explain_feature_maps(run, args.image, args.layers, args.output):
            print(f"written: {path}")
    else:
        if args.count < 1:
            raise ValueError(f"--count {args.count}: give at least 1 image")
        result = explain.explain_gradcam(run, args.data, args.images, args.mistakes, args.class_name, args.count, args.layer, args.output)
        print(f"written: {result.path} ({result.shown} images, layer {result.layer})")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from app.data import evaluation_set
    from app.inference.export import check_export, export_run
    from app.runs import load_run

    formats = list(EXPORT_FORMATS) if "all" in args.format else list(dict.fromkeys(args.format))
    if args.output and len(formats) > 1:
        raise ValueError(f"--output names one export, but {len(formats)} formats were asked for. Fix: give one --format, or leave --output out.")
    if args.count < 1:
        raise ValueError(f"--count {args.count}: give at least 1 image")
    run = load_run(args.run)
    images = evaluation_set(run.config, run.class_names, args.data, args.images) if args.check else None
    if images is not None:
        images = images.subset(range(min(args.count, len(images))))
    failed = 0
    for fmt in formats:
        exported = export_run(run, fmt, args.output, force=args.force)
        print(f"{fmt}: {exported.path} ({exported.size_bytes / 1e6:.1f} MB), class names in {exported.metadata_path}")
        if images is not None:
            check = check_export(exported, run, images)
            failed += not check.ok
            print(
                f"  parity on {check.images} images: max |probability difference| {check.max_abs_diff:.1e} "
                f"(tolerance {check.tolerance:.0e}), same top class {check.same_top_class:.0%}: {'ok' if check.ok else 'FAILED'}"
            )
    return 1 if failed else 0


def _pipeline_error(exc: BaseException) -> str | None:
    """The user-facing message of a DataError wrapped in a TensorFlow op error, if that is what `exc` is."""
    match = re.search(r"(?:DataError|ImageReadError): (.+)", str(exc))
    return match.group(1).strip() if match and type(exc).__module__.startswith("tensorflow") else None


COMMANDS = {
    "demo": cmd_demo,
    "train": cmd_train,
    "evaluate": cmd_evaluate,
    "predict": cmd_predict,
    "cv": cmd_cv,
    "models": cmd_models,
    "config": cmd_config,
    "init": cmd_init,
    "plot-lr": cmd_plot_lr,
    "find-lr": cmd_find_lr,
    "tune": cmd_tune,
    "explain": cmd_explain,
    "export": cmd_export,
}


def main(argv: list[str] | None = None) -> int:
    """Run one command; user errors print one line (`error: ...`) and return 2 instead of a traceback."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if importlib.util.find_spec("tensorflow") is None:
        print("error: TensorFlow is not installed. Fix: pip install 'imgclf[cpu]', or 'imgclf[gpu]' on an NVIDIA GPU (README, Install)", file=sys.stderr)
        return 2
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
    except BrokenPipeError:  # `imgclf models | head`: the reader is gone; say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        print("interrupted (a train run or a search continues where it stopped when the same command is started again)", file=sys.stderr)
        return 130
