"""What a search leaves a person to act on: trials.csv, best.yaml, summary.md, plots, TensorBoard HParams logs."""

from __future__ import annotations

import dataclasses
import json
import math
import statistics
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.ticker import MaxNLocator

from app.atomic import atomic_write, write_text
from app.config import Config, dump_config
from app.plots import subplots
from tuning.hypermodels import HYPERBAND_KEYS, final_run_epochs

EpochMeasure = Callable[[Config], "float | None"]  # seconds an epoch of a config takes in this process (app.training.pace)
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.yaml"
SUMMARY_FILE = "summary.md"
SCORES_PLOT = "scores.png"
HYPERPARAMETERS_PLOT = "hyperparameters.png"
TENSORBOARD_DIR = "tensorboard"
FACTS = ("epochs", "best_epoch", "stopped", "seconds", "image_size", "params", "feature_size", "receptive_field", "worker")  # worker: distributed only


def searched_names(oracle: Any) -> list[str]:
    """The hyperparameters of the space that take more than one value, in declaration order."""
    return [hp.name for hp in oracle.get_space().space if type(hp).__name__ != "Fixed"]


def trials_table(oracle: Any, search_dir: Path) -> pd.DataFrame:
    """One row per trial: id, status, the objective, every hyperparameter, the trial's facts and other scores."""
    objective = oracle.objective.name
    names = [hp.name for hp in oracle.get_space().space]
    rows = []
    for trial_id in sorted(oracle.trials):
        trial = oracle.trials[trial_id]
        result_path = search_dir / f"trial_{trial_id}" / "result.json"
        result = json.loads(result_path.read_text()) if result_path.is_file() else {}
        metrics = result.get("metrics", {})
        hp = trial.hyperparameters
        row: dict[str, Any] = {"trial": trial_id, "status": trial.status, objective: trial.score}
        if "tuner/round" in hp.values:  # asha and hyperband: the rung, and the trial whose weights it continues
            row.update({"rung": hp.values["tuner/round"], "continues": hp.values.get("tuner/trial_id") or ""})
        row.update({name: hp.values.get(name) if hp.is_active(name) else None for name in names if name not in HYPERBAND_KEYS})
        row.update({fact: result.get(fact, metrics.get(fact)) for fact in FACTS if fact != "worker" or "worker" in result})
        row.update({k: v for k, v in metrics.items() if k not in row and k not in FACTS})
        row["message"] = (trial.message or "").strip().splitlines()[-1][:300] if trial.message else ""
        rows.append(row)
    if not rows:  # no trial yet (a time budget spent before the first): the columns all the same
        return pd.DataFrame(columns=["trial", "status", objective, *[n for n in names if n not in HYPERBAND_KEYS], *FACTS, "message"])
    return pd.DataFrame(rows)


def best_trial(oracle: Any) -> Any | None:
    best = [t for t in oracle.get_best_trials(1) if t.status == "COMPLETED"]
    return best[0] if best else None


def write_trials(oracle: Any, hypermodel: Any, search_dir: Path, measure: EpochMeasure | None = None) -> pd.DataFrame:
    """trials.csv and best.yaml (the best trial's complete config, for `imgclf train -c best.yaml`), after each trial.
    `measure(config)`: the seconds an epoch of the best config takes here, when the trials' pace does not apply."""
    table = trials_table(oracle, search_dir)
    atomic_write(search_dir / TRIALS_FILE, lambda p: table.to_csv(p, index=False))
    best = best_trial(oracle)
    if best is not None:
        epochs, sizing = _final_epochs(hypermodel, best, search_dir / f"trial_{best.trial_id}" / "result.json", measure)
        config = hypermodel.config_for(best.hyperparameters, for_training=True, final_epochs=epochs)
        final = "".join(f"# {key}={value}: the final run's own setting (tune.final)\n" for key, value in _dotted(hypermodel.base.tune.final))
        header = f"# best trial {best.trial_id} of search {search_dir.name}: {oracle.objective.name} = {best.score:.4f}\n"
        header += f"{sizing}{final}# train it: imgclf train -c {search_dir / BEST_FILE}\n"
        write_text(search_dir / BEST_FILE, header + dump_config(config))
    return table


def _dotted(tree: dict[str, Any], prefix: str = "") -> list[tuple[str, Any]]:
    """A partial config as (section.key, value) pairs."""
    pairs: list[tuple[str, Any]] = []
    for key, value in tree.items():
        pairs += _dotted(value, f"{prefix}{key}.") if isinstance(value, dict) else [(f"{prefix}{key}", value)]
    return pairs


def _final_epochs(hypermodel: Any, best: Any, result_path: Path, measure: EpochMeasure | None = None) -> tuple[int | None, str]:
    """(train.epochs of best.yaml, a header line saying why) when tune.final_minutes sizes the final run: at the best
    trial's measured pace, weighed by what the final run's epochs cost against the trial's (`epoch_cost`: image
    sizes, progressive resizing), and by `measure`'s pace here against the trial's, if given."""
    minutes = hypermodel.base.tune.final_minutes
    if minutes is None or not result_path.is_file():
        return None, ""
    result = json.loads(result_path.read_text())
    times = result.get("epoch_seconds") or []
    if not times:
        return None, ""
    final = hypermodel.config_for(best.hyperparameters, for_training=True)
    trial_cost = float(result.get("epoch_cost") or hypermodel.epoch_cost(hypermodel.config_for(best.hyperparameters)))

    def final_cost(epochs: int) -> float:
        return epochs * hypermodel.epoch_cost(dataclasses.replace(final, train=dataclasses.replace(final.train, epochs=epochs)))

    speed, where = _speed_here(hypermodel, final, times, trial_cost, measure)
    epochs, pace = final_run_epochs(minutes, speed * float(result.get("seconds", 0.0)), [speed * t for t in times], trial_cost, final_cost)
    ratio = final_cost(epochs) / epochs / trial_cost
    weighed = f"; this run's epochs cost {ratio:.2f} of the trial's (image sizes)" if abs(ratio - 1) > 0.01 else ""
    return epochs, f"# train.epochs {epochs}: about tune.final_minutes={minutes:g} at {pace:.1f} s per epoch ({where}{weighed})\n"


def _speed_here(hypermodel: Any, final: Any, times: list[float], trial_cost: float, measure: EpochMeasure | None) -> tuple[float, str]:
    """(seconds here per second of the trial, where the pace comes from): 1 without `measure`, or when it cannot time
    this config; else an epoch timed here against the trial's (median, after its first), per unit of cost."""
    seconds = measure(final) if measure is not None else None
    if seconds is None:
        return 1.0, "measured in that trial" + ("; not timed here (two stages, cached features or several devices)" if measure is not None else "")
    trial_pace = statistics.median(times[1:] or times) / trial_cost
    speed = seconds / hypermodel.cost_at(final, final.data.image_size) / trial_pace
    return speed, f"timed here before the final run: {speed:.2f} of the pace that trial measured"


def importance(table: pd.DataFrame, objective: str, names: list[str]) -> pd.DataFrame:
    """Per searched hyperparameter: the spread of the mean objective between its values (numbers with more than
    four distinct values are cut into three quantile bins). A rough guide from few trials, not a causal estimate."""
    done = table[table["status"] == "COMPLETED"]
    rows = []
    for name in names:
        if name not in done:
            continue
        column = done[[name, objective]].dropna()
        if column[name].nunique() < 2:
            continue
        groups = column[name]
        if pd.api.types.is_numeric_dtype(groups) and groups.nunique() > 4:
            groups = pd.qcut(groups, 3, duplicates="drop").astype(str)
        means = column.groupby(groups)[objective].mean()
        rows.append(
            {
                "hyperparameter": name,
                "spread": float(means.max() - means.min()),
                "best value (mean)": str(means.idxmax() if _maximise(objective) else means.idxmin()),
                "trials": len(column),
            }
        )
    return pd.DataFrame(rows, columns=["hyperparameter", "spread", "best value (mean)", "trials"]).sort_values("spread", ascending=False)


def _maximise(objective: str) -> bool:
    return not ("loss" in objective or "error" in objective)


def plot_scores(table: pd.DataFrame, objective: str, path: Path) -> None:
    """Score per trial, with the running best."""
    done = table[table["status"] == "COMPLETED"]
    fig, ax = subplots(figsize=(7, 4))
    if len(done):
        order = np.arange(1, len(table) + 1)[table["status"].to_numpy() == "COMPLETED"]
        scores = done[objective].to_numpy(dtype=float)
        running = np.maximum.accumulate(scores) if _maximise(objective) else np.minimum.accumulate(scores)
        if "rung" in done:  # asha, hyperband: one colour per rung (its trials had more epochs to score)
            for rung in sorted(done["rung"].dropna().unique()):
                here = done["rung"].to_numpy() == rung
                ax.plot(order[here], scores[here], "o", label=f"rung {int(rung)}")
        else:
            ax.plot(order, scores, "o", label="trial")
        ax.step(order, running, where="post", color="red", label="best so far")
        ax.legend()
    else:
        ax.text(0.5, 0.5, "no completed trial", ha="center", va="center", transform=ax.transAxes)
    ax.set_xlabel("trial")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(objective)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))


def plot_hyperparameters(table: pd.DataFrame, objective: str, names: list[str], path: Path) -> None:
    """The objective against each searched hyperparameter (log axis for rates)."""
    done = table[table["status"] == "COMPLETED"]
    names = [n for n in names if n in done and done[n].notna().any()] or ["trial"]
    cols = min(len(names), 4)
    rows = math.ceil(len(names) / cols)
    fig, axes = subplots(rows, cols, figsize=(3.6 * cols, 3.0 * rows), squeeze=False)
    for ax, name in zip(axes.flat, names):
        column = done[[name, objective]].dropna()
        values = column[name]
        if pd.api.types.is_numeric_dtype(values):
            ax.plot(values.to_numpy(dtype=float), column[objective], "o", alpha=0.7)
            if "learning_rate" in name and (values > 0).all():
                ax.set_xscale("log")
        else:
            labels = sorted(values.astype(str).unique())
            ax.plot([labels.index(v) for v in values.astype(str)], column[objective], "o", alpha=0.7)
            ax.set_xticks(range(len(labels)), labels, rotation=30, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(names) :]:
        ax.axis("off")
    fig.supylabel(objective)
    fig.tight_layout()
    atomic_write(path, lambda p: fig.savefig(p, format="png", dpi=100))


def write_summary(oracle: Any, table: pd.DataFrame, search_dir: Path, facts: dict[str, Any]) -> str:
    """summary.md: the search in numbers, the best trials, the hyperparameters that mattered, skipped proposals."""
    objective = oracle.objective.name
    names = searched_names(oracle)
    done = table[table["status"] == "COMPLETED"]
    best = best_trial(oracle)
    rejected = getattr(oracle, "rejected", [])
    lines = [
        f"# Search {search_dir.name}",
        "",
        f"- tuner: {facts['tuner']}, objective: {objective} ({'max' if _maximise(objective) else 'min'}), seed {facts['seed']}",
        f"- data: {facts['train_images']} training and {facts['val_images']} validation images, {facts['image_size']} px",
        f"- trials: {len(table)} trained ({len(done)} completed, {int((table['status'] == 'FAILED').sum()) if len(table) else 0} failed); "
        f"{len(rejected)} proposals skipped without training (networks not worth training)",
        f"- search time: {facts['seconds']:.0f} s{_budget_text(oracle, table, facts)}",
    ]
    if "rung" in table:
        rungs = ", ".join(f"rung {int(r)}: {n}" for r, n in table["rung"].value_counts().sort_index().items())
        compute = facts.get("trial_budget") == "compute" and facts["tuner"] == "asha"
        scaled = ", each network's own in proportion to its cost: trials.csv epochs" if compute else ""
        epochs = f" (epochs {', '.join(map(str, oracle.rungs))}{scaled})" if hasattr(oracle, "rungs") else ""
        lines.append(f"- trials per rung{epochs}: {rungs}")
    if best is not None:
        lines.append(f"- best: {objective} = {best.score:.4f} (trial {best.trial_id}): `imgclf train -c {search_dir / BEST_FILE}`")
    lines += ["", "## Best trials", ""]
    if len(done):
        shown = done.iloc[[done.index.get_loc(i) for i in _ranked(oracle, done)]].head(5)
        columns = ["trial", *(["rung"] if "rung" in shown else []), objective, *[n for n in names if n in shown], *[f for f in FACTS if f in shown]]
        lines.append(_markdown(shown[columns]))
    else:
        lines.append("No trial completed.")
    lines += ["", "## Hyperparameters that mattered", "", "Spread of the mean objective between the values of each hyperparameter over the completed trials"]
    lines += ["(numbers with more than four values in three bins): a guide from few trials, not a causal estimate.", ""]
    effects = importance(table, objective, names) if len(table) else pd.DataFrame()
    lines.append(_markdown(effects) if len(effects) else "Too few completed trials to compare.")
    lines += ["", "## Proposals skipped without training", ""]
    if rejected:
        for reason, count in Counter(_reason_kind(r["reason"]) for r in rejected).most_common(8):
            lines.append(f"- {count} x {reason}")
    else:
        lines.append("None: every proposal was a network worth training.")
    lines += ["", f"Plots: `{SCORES_PLOT}`, `{HYPERPARAMETERS_PLOT}`. TensorBoard HParams: `tensorboard --logdir {search_dir / TENSORBOARD_DIR}`.", ""]
    text = "\n".join(lines)
    write_text(search_dir / SUMMARY_FILE, text)
    return text


def _ranked(oracle: Any, done: pd.DataFrame) -> list[Any]:
    """The rows of `done` in the oracle's order of best trials (ASHA: highest rung first), the others after."""
    order = {t.trial_id: i for i, t in enumerate(oracle.get_best_trials(len(oracle.trials)))}
    return sorted(done.index, key=lambda i: order.get(done.at[i, "trial"], len(order)))


def _budget_text(oracle: Any, table: pd.DataFrame, facts: dict[str, Any]) -> str:
    """How the time budget was kept: the limit, trials stopped at it or by the median rule, proposals not started."""
    parts = []
    if facts.get("max_minutes"):
        parts.append(f"of {facts['max_minutes'] * 60:.0f} s allowed (tune.max_minutes)")
    stopped = table["stopped"].value_counts() if "stopped" in table else pd.Series(dtype=int)
    parts += [f"{count} trial(s) stopped by the {why}" for why, count in stopped.items() if why]
    skipped = getattr(oracle, "skipped_for_time", 0)
    if skipped:
        parts.append(f"{skipped} proposal(s) not started: too long for the time left")
    return f" ({'; '.join(parts)})" if parts else ""


def _reason_kind(reason: str) -> str:
    """A reason without its block number, so that alike reasons count together."""
    head, _, tail = reason.partition(": ")
    return tail if head.startswith("block") else reason


def _markdown(frame: pd.DataFrame) -> str:
    def cell(v: Any) -> str:
        if isinstance(v, float):
            return "" if math.isnan(v) else f"{v:.4g}"
        return "" if v is None else str(v)

    header = "| " + " | ".join(str(c) for c in frame.columns) + " |"
    rule = "|" + "|".join("---" for _ in frame.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


class HParamsLog:
    """TensorBoard HParams dashboard: the space once, then per trial its hyperparameters and epoch scores."""

    def __init__(self, logdir: Path, names: list[str], metrics: list[str]):
        import tensorflow as tf
        from tensorboard.plugins.hparams import api as hparams_api

        self.tf, self.api, self.logdir = tf, hparams_api, Path(logdir)
        with tf.summary.create_file_writer(str(self.logdir)).as_default():
            hparams_api.hparams_config(hparams=[hparams_api.HParam(n) for n in names], metrics=[hparams_api.Metric(m) for m in metrics])

    def trial(self, trial_id: str, values: dict[str, Any], history: list[dict[str, float]], final: dict[str, float]) -> None:
        writer = self.tf.summary.create_file_writer(str(self.logdir / f"trial_{trial_id}"))
        with writer.as_default():
            self.api.hparams({k: v for k, v in values.items() if isinstance(v, (int, float, str, bool))}, trial_id=trial_id)
            for row in history:
                for key, value in row.items():
                    if key != "epoch":
                        self.tf.summary.scalar(key, value, step=int(row["epoch"]))
            last = int(history[-1]["epoch"]) if history else 0
            for key, value in final.items():
                if not any(key in row for row in history):
                    self.tf.summary.scalar(key, value, step=last)
        writer.close()
