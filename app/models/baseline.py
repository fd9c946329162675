"""The baseline CNN: blocks of conv -> BN -> ReLU (repeated) then pooling, global average pooling, dropout, dense head.

Each block's `filters`, `kernel_size`, `strides` (and `repeats`, `pool`) are exactly what the tuner searches.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any

import keras
from keras import layers


@dataclass(frozen=True)
class ConvBlock:
    """One block: `repeats` x (conv(filters, kernel_size, strides on the first conv) -> BN -> ReLU), then `pool`."""

    filters: int
    kernel_size: int = 3
    strides: int = 1
    repeats: int = 2
    pool: str = "max"  # max | avg | none

    def __post_init__(self) -> None:
        if self.filters < 1 or self.kernel_size < 1 or self.strides < 1 or self.repeats < 1:
            raise ValueError(f"conv block {self}: filters, kernel_size, strides and repeats must be >= 1")
        if self.pool not in ("max", "avg", "none"):
            raise ValueError(f"conv block {self}: pool must be max, avg or none")

    @classmethod
    def parse(cls, spec: ConvBlock | Mapping[str, Any] | Sequence[int]) -> ConvBlock:
        """From a ConvBlock, a mapping (`{filters: 32, kernel_size: 3}`) or a list `[filters, kernel_size, strides]`."""
        if isinstance(spec, ConvBlock):
            return spec
        if isinstance(spec, Mapping):
            unknown = set(spec) - {f.name for f in fields(cls)}
            if unknown:
                raise ValueError(f"conv block {dict(spec)}: unknown key(s) {sorted(unknown)}; use filters, kernel_size, strides, repeats, pool")
            return cls(**spec)
        if isinstance(spec, Sequence) and 1 <= len(spec) <= 3 and all(isinstance(v, int) for v in spec):
            return cls(*spec)
        raise ValueError(f"conv block {spec!r}: expected {{filters, kernel_size, strides}} or [filters, kernel_size, strides]")


def make_baseline_cnn(
    input_shape: tuple[int, int, int],
    num_classes: int,
    multilabel: bool = False,
    blocks: Sequence[ConvBlock | Mapping[str, Any] | Sequence[int]] = ({"filters": 32}, {"filters": 64}, {"filters": 128}),
    dropout: float = 0.3,
    name: str = "baseline_cnn",
) -> keras.Model:
    """A conv-pool CNN over uint8 images; softmax head, or sigmoid for multi-label."""
    parsed = [ConvBlock.parse(b) for b in blocks]
    if not parsed:
        raise ValueError("the baseline CNN needs at least one conv block")
    inputs = keras.Input(shape=input_shape, dtype="uint8", name="image")
    x = layers.Rescaling(1.0 / 255.0, name="rescale")(inputs)
    for b, block in enumerate(parsed, start=1):
        for r in range(1, block.repeats + 1):
            x = layers.Conv2D(
                block.filters, block.kernel_size, strides=block.strides if r == 1 else 1, padding="same", use_bias=False, name=f"block{b}_conv{r}"
            )(x)
            x = layers.BatchNormalization(momentum=0.9, name=f"block{b}_bn{r}")(x)  # settles within tens of steps: short runs on small sets
            x = layers.ReLU(name=f"block{b}_relu{r}")(x)
        if block.pool != "none" and min(x.shape[1], x.shape[2]) >= 2:
            pool = layers.MaxPooling2D if block.pool == "max" else layers.AveragePooling2D
            x = pool(2, name=f"block{b}_pool")(x)
    x = layers.GlobalAveragePooling2D(name="gap")(x)
    x = layers.Dropout(dropout, name="dropout")(x)
    outputs = layers.Dense(num_classes, activation="sigmoid" if multilabel else "softmax", name="predictions")(x)
    return keras.Model(inputs, outputs, name=name)
