"""Every schedule's value at chosen steps against its formula written out independently, and serialization."""

import math

import keras
import numpy as np
import pytest

from app.config import ScheduleConfig
from app.training.schedules import SCHEDULES, lr_values, make_schedule

LR, EPOCHS, SPE = 0.1, 10, 10  # 100 steps
TOTAL = EPOCHS * SPE


def cosine(lr, lo, t, T):
    return lo + (lr - lo) * (1 + math.cos(math.pi * min(t, T) / T)) / 2


# (config, formula(step) -> lr). Each formula is the textbook definition, not a call into app.training.schedules.
CASES = [
    (ScheduleConfig(name="constant"), lambda s: LR),
    (ScheduleConfig(name="plateau"), lambda s: LR),
    (ScheduleConfig(name="step", decay_epochs=3, decay_rate=0.5), lambda s: LR * 0.5 ** (s // 30)),
    (ScheduleConfig(name="step"), lambda s: LR * 0.1 ** math.floor(s / round(10 / 3 * SPE))),
    (ScheduleConfig(name="exponential", decay_epochs=2, decay_rate=0.5), lambda s: LR * 0.5 ** (s / 20)),
    (ScheduleConfig(name="cosine"), lambda s: cosine(LR, 0.0, s, TOTAL)),
    (ScheduleConfig(name="cosine", min_lr=0.01), lambda s: cosine(LR, 0.01, s, TOTAL)),
    (
        ScheduleConfig(name="cosine", warmup_epochs=2, warmup_lr=0.01),
        lambda s: 0.01 + (LR - 0.01) * s / 20 if s < 20 else cosine(LR, 0.0, s - 20, TOTAL - 20),
    ),
    (
        ScheduleConfig(name="step", warmup_epochs=1, decay_epochs=3, decay_rate=0.5),
        lambda s: LR * s / 10 if s < 10 else LR * 0.5 ** ((s - 10) // 30),
    ),
    (
        # SGDR: cycles of 20, 40 steps; peak x0.5 at each restart
        ScheduleConfig(name="cosine_restarts", decay_epochs=2, cycle_mul=2, cycle_decay=0.5),
        lambda s: cosine(LR, 0, s, 20) if s < 20 else cosine(LR * 0.5, 0, s - 20, 40) if s < 60 else cosine(LR * 0.25, 0, s - 60, 80),
    ),
    (
        ScheduleConfig(name="one_cycle", pct_start=0.3, div_factor=25, final_div_factor=1e4),
        lambda s: cosine(LR, LR / 25, 30 - s, 30) if s < 30 else cosine(LR, LR / 25 / 1e4, s - 30, 70),
    ),
    (ScheduleConfig(name="polynomial", power=2.0, min_lr=0.001), lambda s: (LR - 0.001) * (1 - s / TOTAL) ** 2 + 0.001),
    (
        ScheduleConfig(name="ramp_sustain_step", warmup_epochs=3, warmup_lr=0.001, sustain_epochs=2, decay_rate=0.8, min_lr=0.0001),
        lambda s: (lambda e: 0.001 + (LR - 0.001) * e / 3 if e < 3 else LR if e < 5 else (LR - 0.0001) * 0.8 ** (e - 5) + 0.0001)(s // SPE),
    ),
]
STEPS = [0, 1, 5, 9, 10, 19, 20, 21, 29, 30, 31, 45, 59, 60, 61, 75, 99]


@pytest.mark.parametrize("config,formula", CASES, ids=[f"{c.name}-{i}" for i, (c, _) in enumerate(CASES)])
def test_schedule_matches_its_formula(config, formula):
    schedule = make_schedule(config, LR, EPOCHS, SPE)
    values = {s: float(schedule(s)) if callable(schedule) else schedule for s in STEPS}
    for step, value in values.items():
        assert value == pytest.approx(formula(step), rel=1e-5, abs=1e-8), f"{config.name} at step {step}"


def test_every_schedule_is_covered():
    assert {c.name for c, _ in CASES} == set(SCHEDULES)


@pytest.mark.parametrize("config", [c for c, _ in CASES if c.name not in ("constant", "plateau")], ids=lambda c: c.name)
def test_schedule_survives_keras_serialization(config):
    schedule = make_schedule(config, LR, EPOCHS, SPE)
    restored = keras.optimizers.schedules.deserialize(keras.optimizers.schedules.serialize(schedule))
    assert type(restored) is type(schedule)
    np.testing.assert_allclose([float(restored(s)) for s in STEPS], [float(schedule(s)) for s in STEPS], rtol=1e-6)


def test_schedule_reloads_inside_a_keras_file(tmp_path):
    schedule = make_schedule(ScheduleConfig(name="ramp_sustain_step", warmup_epochs=2, sustain_epochs=1), LR, EPOCHS, SPE)
    inputs = keras.Input((2,))
    model = keras.Model(inputs, keras.layers.Dense(1)(inputs))
    model.compile(optimizer=keras.optimizers.Adam(schedule), loss="mse")
    model.fit(np.zeros((4, 2)), np.zeros((4, 1)), verbose=0)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    restored = keras.optimizers.schedules.deserialize(loaded.optimizer.get_config()["learning_rate"])
    assert type(restored).__name__ == "RampSustainStep"
    assert float(restored(35)) == pytest.approx(float(schedule(35)))


@pytest.mark.parametrize(
    "config,message",
    [
        (ScheduleConfig(name="cosine", warmup_epochs=10), "warmup of 10 epochs is not shorter than the 10 epochs"),
        (ScheduleConfig(name="step", warmup_epochs=12), "Fix: lower schedule.warmup_epochs"),
        (ScheduleConfig(name="one_cycle", warmup_epochs=1), "one_cycle has no separate warmup"),
        (ScheduleConfig(name="cosine_annealing"), "unknown schedule 'cosine_annealing'"),
        (ScheduleConfig(name="step", decay_epochs=0), "decay_epochs must be > 0"),
    ],
)
def test_bad_schedule_is_one_clear_error(config, message):
    with pytest.raises(ValueError, match=message):
        make_schedule(config, LR, EPOCHS, SPE)


def test_lr_values_samples_the_schedule():
    steps, values = lr_values(make_schedule(ScheduleConfig(name="cosine"), LR, EPOCHS, SPE), TOTAL, points=11)
    assert steps[0] == 0 and steps[-1] == TOTAL - 1 and len(steps) == 11
    assert values[0] == pytest.approx(LR) and values[-1] < values[0]
