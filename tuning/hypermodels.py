"""KerasTuner HyperModels over the toolkit's own config, model builder and fit path.

`config_for(hp)` maps a trial's hyperparameters onto a complete `Config` (the one `best.yaml` holds), `build(hp)`
builds and compiles that config's model with `app.training.fitting`, and `fit(hp, model, data)` trains it through the same
stages `imgclf train` runs. `problem(hp)` says, without building anything, why a proposal is not worth training
(its feature map shrinks below `tune.min_feature_size`, a kernel outgrows its input, a schedule that cannot fit the
epochs), so that the oracle proposes another one instead.
"""

from __future__ import annotations

import dataclasses
import math
import statistics
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import keras
import keras_tuner as kt

from app.config import Config, ConfigError, ConvBlock, from_dict, merge_tree, to_dict
from app.data import PreparedData, make_datasets
from app.inference.evaluation import classification_metrics
from app.inference.prediction import predict_probs
from app.models.backbones import size_problem
from app.models.geometry import baseline_geometry, conv_macs, shape_problem
from app.training.callbacks import BestWeights, TimeLimit
from app.training.fitting import build_model, compile_model, fit_stages, plan_stages, set_trainable
from app.training.progressive import stage_sizes
from tuning.space import RECIPE_KEYS, REPORT_OBJECTIVES, Entry, SearchSpace, config_rungs, rung_image_size

HYPERBAND_KEYS = ("tuner/epochs", "tuner/initial_epoch", "tuner/bracket", "tuner/round", "tuner/trial_id")


def _set(tree: dict[str, Any], path: str, value: Any) -> None:
    *sections, last = path.split(".")
    for section in sections:
        tree = tree[section]
    tree[last] = value


def _get(tree: dict[str, Any], path: str) -> Any:
    for section in path.split("."):
        tree = tree[section]
    return tree


def _largest(entry: Entry) -> int:
    return int(max(entry.candidates()))


def _smallest(entry: Entry) -> int:
    return int(min(entry.candidates()))


class ConfigHyperModel(kt.HyperModel):
    """What both HyperModels share: the common hyperparameters, build, fit and the objective."""

    def __init__(self, config: Config, space: SearchSpace, num_classes: int, multilabel: bool, train_images: int):
        super().__init__(name=type(self).__name__)
        self.base = config
        self.space = space
        self.num_classes = num_classes
        self.multilabel = multilabel
        self.train_images = train_images

    # -- hyperparameters -> config ---------------------------------------------------------------------------
    def config_for(self, hp: kt.HyperParameters, for_training: bool = False, final_epochs: int | None = None) -> Config:
        """The complete config of a trial; `for_training`: of the final run (best.yaml), which trains for
        `final_epochs` (from tune.final_minutes), tune.final_epochs, or train.epochs (Hyperband's max_epochs)
        instead of the trial's epochs, with tune.final's settings written over the trial's."""
        tree = self._declared_tree(hp)
        if "tuner/epochs" in hp.values and not for_training:  # asha, hyperband: this rung trains up to its last epoch
            tree["train"]["epochs"] = self._rung_span(hp, tree)[1]
            tree["data"]["image_size"] = rung_image_size(self.base, int(hp.values.get("tuner/round", 0)))  # asha's second fidelity
        elif not for_training:
            tree["train"]["epochs"] = self.trial_epochs(tree)
        if for_training:  # short trials, then the winner trains longer, with the final run's own settings
            tree = merge_tree(tree, self.base.tune.final)
            if final_epochs or self.base.tune.final_epochs:
                tree["train"]["epochs"] = final_epochs or self.base.tune.final_epochs
            if self.base.tune.final_minutes and tree["train"]["max_minutes"] is None:  # sized to fit, and held to it
                tree["train"]["max_minutes"] = self.base.tune.final_minutes
        tree["output"]["name"] = None
        return from_dict(Config, tree)

    def _declared_tree(self, hp: kt.HyperParameters) -> dict[str, Any]:
        """The base config's tree with every hyperparameter of `hp` written in (epochs and rung size not yet)."""
        tree = to_dict(self.base)
        self.declare_model(hp, tree)
        self._declare(hp, tree, "dropout", "model.dropout")
        self._declare(hp, tree, "optimizer", "train.optimizer")
        self._declare(hp, tree, "learning_rate", "train.learning_rate")
        self._declare(hp, tree, "augment", "augment.train")
        self._declare(hp, tree, "label_smoothing", "train.label_smoothing")
        self._declare(hp, tree, "batch_size", "data.batch_size")
        for key, path in RECIPE_KEYS.items():  # the training recipe: 0 means off
            if self._declare(hp, tree, key, path) == 0 and key in ("ema", "progressive_from"):
                _set(tree, path, None)
        self._declare_schedule(hp, tree)
        return tree

    def reference_values(self, space: kt.HyperParameters) -> dict[str, Any] | None:
        """The config's own network and training as values of `space` (each hyperparameter's default is declared
        from the config), or None when the space does not contain them: 5 blocks in model.blocks with
        tune.space.blocks [3, 4], or a learning rate outside its range."""
        hp = kt.HyperParameters()
        for one in space.space:  # as KerasTuner draws values: the active ones only
            hp.merge([one])
            if hp.is_active(one):
                hp.values[one.name] = one.default
        return dict(hp.values) if self._declared_tree(hp) == to_dict(self.base) else None

    def epoch_span(self, hp: kt.HyperParameters) -> tuple[int, int]:
        """The epoch a trial starts from (an asha or hyperband promotion continues its parent's) and the epoch it
        trains up to, in the network's own epochs."""
        tree = self._declared_tree(hp)
        return self._rung_span(hp, tree) if "tuner/epochs" in hp.values else (0, self.trial_epochs(tree))

    def _rung_span(self, hp: kt.HyperParameters, tree: dict[str, Any]) -> tuple[int, int]:
        """asha's rungs are epochs of the reference network: with tune.trial_budget compute, each network trains
        its own epochs in proportion (a cheaper one more), so that a rung compares networks at about equal compute,
        as the final run, held to minutes, will. Hyperband's rounds stay in plain epochs."""
        values, factor = hp.values, self.epoch_factor(tree)
        if self.base.tune.tuner != "asha" or factor == 1.0:
            return int(values.get("tuner/initial_epoch", 0)), int(values["tuner/epochs"])
        own = scaled_rungs(config_rungs(self.base), factor)
        rung = int(values.get("tuner/round", 0))
        return (own[rung - 1] if rung else 0), own[rung]

    def declare_model(self, hp: kt.HyperParameters, tree: dict[str, Any]) -> None:
        """The model's own hyperparameters, written into the config tree (each subclass declares its own)."""
        raise NotImplementedError(f"{type(self).__name__} must declare its model's hyperparameters")

    def trial_epochs(self, tree: dict[str, Any]) -> int:
        """Epochs of a trial: train.epochs, scaled by `epoch_factor`."""
        return max(1, round(int(tree["train"]["epochs"]) * self.epoch_factor(tree)))

    def epoch_factor(self, tree: dict[str, Any]) -> float:
        """How many of this network's epochs cost one of the reference's (subclasses that know a network's cost say)."""
        return 1.0

    def declare_hyperparameters(self, hp: kt.HyperParameters) -> None:
        """Declare the whole space without building a model (KerasTuner calls this before the first trial)."""
        self.config_for(hp)

    def _declare(self, hp: kt.HyperParameters, tree: dict[str, Any], key: str, path: str) -> Any:
        """The hyperparameter `key` (when tune.space searches or fixes it), written into the config at `path`."""
        entry = self.space[key]
        if entry is None:
            return None
        value = entry.declare(hp, key, default=_get(tree, path))
        if value is not None:
            _set(tree, path, value)
        return value

    def _declare_schedule(self, hp: kt.HyperParameters, tree: dict[str, Any]) -> None:
        entry = self.space["schedule"]
        chosen = self._declare(hp, tree, "schedule", "train.schedule.name") if entry else tree["train"]["schedule"]["name"]
        for name, knobs in self.space.schedule_knobs.items():
            if not knobs:
                continue
            scope = hp.conditional_scope("schedule", [name]) if entry is not None else _NoScope()
            with scope:
                for knob, knob_entry in knobs.items():
                    own = self.base.train.schedule
                    value = knob_entry.declare(hp, f"{name}_{knob}", default=getattr(own, knob, None) if own.name == name else None)
                    if value is not None and name == chosen:
                        tree["train"]["schedule"][knob] = value

    # -- checks ------------------------------------------------------------------------------------------
    def steps_per_epoch(self, config: Config) -> int:
        return math.ceil(self.train_images / config.data.batch_size)

    def problem(self, hp: kt.HyperParameters) -> str | None:
        """Why this proposal would be a wasted (or crashing) fit, or None; milliseconds, nothing is built."""
        try:
            config = self.config_for(hp)
            plan_stages(config, self.steps_per_epoch(config))
        except (ConfigError, ValueError) as exc:
            return str(exc)
        return self.model_problem(config)

    def model_problem(self, config: Config) -> str | None:
        return None

    def geometry_facts(self, config: Config) -> dict[str, Any]:
        """Final feature-map side and receptive field, where the arithmetic knows the model."""
        return {"feature_size": None, "receptive_field": None}

    def epoch_cost(self, config: Config) -> float:
        """What an epoch of this config costs on average, in units that the measured seconds per unit make seconds:
        `cost_at` each epoch's image size (progressive resizing trains smaller ones first)."""
        sizes = Counter(stage_sizes(config, config.train.epochs))
        return sum(count * self.cost_at(config, size) for size, count in sizes.items()) / sum(sizes.values())

    def cost_at(self, config: Config, size: int) -> float:
        """What an epoch at `size` pixels costs: the training pixels (subclasses that know the network's
        multiply-accumulates weigh those)."""
        return float(self.train_images * size**2)

    # -- build and fit -------------------------------------------------------------------------------------
    def build(self, hp: kt.HyperParameters) -> keras.Model:
        """The trial's model, compiled for its first stage (as a Keras Tuner user expects from `build`)."""
        config = self.config_for(hp)
        model = build_model(config, self.num_classes, self.multilabel)
        first = plan_stages(config, self.steps_per_epoch(config))[0]
        set_trainable(model, first, config)
        compile_model(model, config, first.lr, self.multilabel)
        return model

    def monitor(self) -> str:
        """What picks a trial's best epoch: the objective when Keras logs it, else train.monitor."""
        objective = self.base.tune.objective
        return self.base.train.monitor if objective in REPORT_OBJECTIVES else objective

    def fit(
        self,
        hp: kt.HyperParameters,
        model: keras.Model,
        data: PreparedData,
        callbacks: Sequence[keras.callbacks.Callback] = (),
        time_limit: TimeLimit | None = None,
        **kwargs: Any,
    ) -> dict[str, float]:
        """Train through the config's stages on `data` (prepared once per search), within `time_limit`; returns the
        best epoch's logs (training ones as train_loss, train_accuracy), the metrics.json scores when the objective
        is one of them, and the epochs run. The model ends with its best weights."""
        config = self.config_for(hp)
        config = dataclasses.replace(config, train=dataclasses.replace(config.train, verbose=0))  # the search prints one line per trial
        stages = plan_stages(config, data.steps_per_epoch(config.data.batch_size))
        best = BestWeights(self.monitor())
        initial_epoch = self.epoch_span(hp)[0]
        if initial_epoch:  # a promotion (asha, hyperband): continue the same schedule from where the last rung stopped
            stages = [dataclasses.replace(stages[0], epochs=stages[0].epochs - initial_epoch)]
            callbacks = [ScheduleFrom(initial_epoch * data.steps_per_epoch(config.data.batch_size)), *callbacks]
        with make_datasets(config, data) as datasets:
            fit_stages(
                model,
                config,
                stages,
                datasets,
                data,
                callbacks=[best, *callbacks],
                restore_best=best.restore,
                initial_epoch=initial_epoch,
                time_limit=time_limit,
            )
        best.restore()
        results = {(k if k.startswith("val_") else f"train_{k}"): v for k, v in best.best_logs.items()}
        if config.tune.objective in REPORT_OBJECTIVES:
            probs = predict_probs(model, data.val, config, cache=data.val_cache, verbose=0)
            results.update({k: float(v) for k, v in classification_metrics(data.val.labels, probs, data.multilabel).items() if k != "num_images"})
            if config.tune.objective not in results:
                raise ConfigError(f"config key tune.objective: {config.tune.objective} is not computed for this label type; choose from {sorted(results)}")
        results["epochs"] = float(initial_epoch + best.epochs_run)
        results["best_epoch"] = float(best.best_epoch or 0)
        return results


MAX_EPOCH_FACTOR = 4  # a cheap network trains at most this many times the reference epochs in a trial
FIXED_COST_SHARE = 0.2  # per-image work that does not shrink with the network (input pipeline, BN, pooling), as a share of the reference's convolutions


def compute_factor(reference_macs: int, macs: int) -> float:
    """Epochs of a network that cost about one epoch of the reference, at most MAX_EPOCH_FACTOR. The cost of an epoch
    is modelled as the network's convolution multiply-accumulates plus a fixed share of the reference's (measured on
    2 cores at 64 px: epochs of 11, 53, 155 and 271 million MACs took 4.5, 6.0, 19.5 and 25.4 s; taking the 155-million
    network as the reference, the model predicts 4.4, 8.8 and 31.7 s for the others: a rough cost model that orders
    networks rightly, not a timer)."""
    fixed = FIXED_COST_SHARE * reference_macs
    return min(float(MAX_EPOCH_FACTOR), (reference_macs + fixed) / (macs + fixed))


def compute_epochs(epochs: int, reference_macs: int, macs: int) -> int:
    """Epochs that cost about what `epochs` of the reference network cost (one at least)."""
    return max(1, round(epochs * compute_factor(reference_macs, macs)))


def scaled_rungs(rungs: Sequence[int], factor: float) -> list[int]:
    """asha's rungs in a network's own epochs: each times `factor`, and at least one epoch past the rung below (a
    promotion always trains)."""
    own: list[int] = []
    for epochs in rungs:
        own.append(max(round(epochs * factor), own[-1] + 1 if own else 1))
    return own


def grown_filters(first: int, growth: float, index: int) -> int:
    """Filters of block `index` (0-based) in a pyramid: `first` times growth**index, rounded to a multiple of 8
    (of 4 below 16), as width multipliers are in MobileNet and EfficientNet."""
    raw = first * growth**index
    if index == 0:
        return int(first)
    step = 8 if raw >= 16 else 4
    return max(step, math.floor(raw / step + 0.5) * step)


def final_run_epochs(
    minutes: float, trial_seconds: float, epoch_seconds: Sequence[float], trial_cost: float = 1.0, final_cost: Callable[[int], float] = float
) -> tuple[int, float]:
    """(epochs, seconds per trial epoch): how many epochs a final run trains in about `minutes`, at the pace a trial
    measured: the median of its epochs after the first (which also traces the model), with the trial's fixed costs
    (building, tracing, evaluation) counted once. `trial_cost` (what one of the trial's epochs costs) and
    `final_cost(n)` (what n epochs of the final run cost) are in the same units (`epoch_cost`): the final run may
    train other image sizes than the trial did (asha's smaller rungs, progressive resizing). By default, the same."""
    if not epoch_seconds:
        raise ValueError("the trial recorded no epoch times")
    pace = statistics.median(epoch_seconds[1:] or epoch_seconds)
    fixed = max(0.0, trial_seconds - pace * len(epoch_seconds))  # build, the first epoch's tracing, evaluation
    budget = (minutes * 60 - fixed) / max(pace, 1e-6) * trial_cost  # in cost units
    low, high = 1, 2  # the most epochs that fit (one at least): final_cost grows with the epochs
    while final_cost(high) <= budget and high < 1 << 20:  # a bound for a pace near zero, not a plan
        low, high = high, high * 2
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if final_cost(middle) <= budget else (low, middle)
    return low, pace


class ScheduleFrom(keras.callbacks.Callback):
    """Start the optimizer's step count (what learning-rate schedules read) at `step` instead of 0."""

    def __init__(self, step: int):
        super().__init__()
        self.step = step

    def on_train_begin(self, logs: dict | None = None) -> None:
        self.model.optimizer.iterations.assign(self.step)


class _NoScope:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: object) -> None:
        return None


class BaselineHyperModel(ConfigHyperModel):
    """The baseline CNN: the number of blocks, and per block its filters, kernel size, strides, convs and pooling."""

    def declare_model(self, hp: kt.HyperParameters, tree: dict[str, Any]) -> None:
        base_blocks = tree["model"]["blocks"]
        count_entry = self.space["blocks"]
        count = count_entry.declare(hp, "blocks", default=len(base_blocks)) if count_entry else len(base_blocks)
        fewest = _smallest(count_entry) if count_entry else count
        most = _largest(count_entry) if count_entry else count
        growth_entry = self.space["filters_growth"]
        own_growth = base_blocks[1]["filters"] / base_blocks[0]["filters"] if len(base_blocks) > 1 else None
        growth = growth_entry.declare(hp, "filters_growth", default=own_growth) if growth_entry is not None else None
        per_block = ("kernel_size", "strides", "repeats", "pool") if growth is not None else ("filters", "kernel_size", "strides", "repeats", "pool")
        width = None
        if growth is not None:  # a pyramid: the first block's filters, then each block `growth` times the last
            entry = self.space["filters"]
            width = entry.declare(hp, "filters_1", default=base_blocks[0]["filters"]) if entry is not None else base_blocks[0]["filters"]
        blocks = []
        for i in range(1, most + 1):
            # block i exists when blocks >= i: its hyperparameters are conditional on that
            scope = hp.conditional_scope("blocks", list(range(i, most + 1))) if i > fewest else _NoScope()
            with scope:
                block = dict(base_blocks[min(i, len(base_blocks)) - 1])
                for key in per_block:
                    entry = self.space[key]
                    value = entry.declare(hp, f"{key}_{i}", default=block[key]) if entry is not None else None
                    if value is not None:
                        block[key] = value
            if width is not None:
                block["filters"] = grown_filters(width, growth, i - 1)
            if i <= count:
                blocks.append(block)
        tree["model"]["blocks"] = blocks

    def model_problem(self, config: Config) -> str | None:
        return shape_problem(baseline_geometry(config.model.blocks, config.data.image_size), config.tune.min_feature_size)

    def epoch_factor(self, tree: dict[str, Any]) -> float:
        """tune.trial_budget compute: a network as costly as the config's own model.blocks trains train.epochs (or
        asha's rung epochs), a cheaper one proportionally more (up to MAX_EPOCH_FACTOR times), a costlier one fewer:
        trials are compared at about the same training time, as the final run will be, instead of cheap networks
        being judged before they have learned. Measured at the trial's full image size (asha's rungs may be smaller)."""
        if self.base.tune.trial_budget != "compute":
            return 1.0
        size = int(tree["data"]["image_size"])
        blocks = [ConvBlock(**b) if isinstance(b, dict) else b for b in tree["model"]["blocks"]]
        return compute_factor(conv_macs(self.base.model.blocks, size), conv_macs(blocks, size))

    def cost_at(self, config: Config, size: int) -> float:
        """Convolution multiply-accumulates per epoch plus the fixed share (`compute_epochs`' cost model)."""
        return float(self.train_images * (conv_macs(config.model.blocks, size) + FIXED_COST_SHARE * conv_macs(self.base.model.blocks, size)))

    def geometry_facts(self, config: Config) -> dict[str, Any]:
        geometry = baseline_geometry(config.model.blocks, config.data.image_size)
        return {"feature_size": geometry.feature_size, "receptive_field": geometry.receptive_field}


class BackboneHyperModel(ConfigHyperModel):
    """A pretrained backbone: which one, how deep stage 2 unfreezes, stage-1 and stage-2 rates, dropout, image size."""

    def declare_model(self, hp: kt.HyperParameters, tree: dict[str, Any]) -> None:
        self._declare(hp, tree, "backbone", "model.name")
        self._declare(hp, tree, "unfreeze_blocks", "finetune.unfreeze_blocks")
        self._declare(hp, tree, "finetune_learning_rate", "finetune.learning_rate")
        self._declare(hp, tree, "image_size", "data.image_size")

    def model_problem(self, config: Config) -> str | None:
        return size_problem(config.model.name, config.data.image_size)  # each backbone's own smallest (Xception: 71)


def make_hypermodel(config: Config, space: SearchSpace, num_classes: int, multilabel: bool, train_images: int) -> ConfigHyperModel:
    """BackboneHyperModel when model.name is a pretrained backbone, else BaselineHyperModel."""
    cls = BackboneHyperModel if space.backbone else BaselineHyperModel
    return cls(config, space, num_classes, multilabel, train_images)
