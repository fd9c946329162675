"""Shape arithmetic of convolutional networks: each layer's output size, receptive field and jump.

One implementation for everything that reasons about shapes: the tuner's check that a proposed network keeps a
usable feature map before any model is built (tuning/), and the anatomy of a built model (app/explain/anatomy.py),
which reads each Keras layer as a `SpatialOp` (`spatial_op`). For a layer with kernel k (dilated: d*(k-1)+1),
stride s:

    output = ceil(input / s)                     padding "same"
    output = floor((input - k) / s) + 1          padding "valid"
    output = input + p                           zero padding of p pixels in all (top + bottom)
    receptive_field += (k - 1) * jump;  jump *= s   (jump: input pixels between neighbouring outputs)
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from app.config import ConvBlock

POOL_SIZE = 2  # the baseline CNN pools 2x2 with stride 2, and only maps of at least this size


@dataclass(frozen=True)
class SpatialOp:
    """A layer that changes the spatial size: a convolution or a pooling window."""

    name: str
    kind: str  # "conv" | "pool" | "pad"
    kernel: int
    stride: int
    padding: str = "same"  # "same" | "valid"
    skip_below: int = 0  # the layer is left out when its input is smaller than this (the baseline's pooling)
    pad: int = 0  # kind "pad": pixels added along one side's axis (top + bottom)


@dataclass(frozen=True)
class LayerGeometry:
    name: str
    kind: str
    kernel: int
    stride: int
    padding: str
    input_size: int
    output_size: int
    receptive_field: int  # input pixels (per side) that one output pixel sees
    jump: int  # input pixels between neighbouring output pixels (the product of strides so far)


def output_size(size: int, kernel: int, stride: int, padding: str = "same") -> int:
    """Spatial size after one layer, as Keras computes it."""
    if padding == "same":
        return math.ceil(size / stride)
    return max((size - kernel) // stride + 1, 0)


def advance(op: SpatialOp, size: int, receptive_field: int, jump: int) -> LayerGeometry:
    """One layer's geometry, from its input's size, receptive field and jump."""
    out = size + op.pad if op.kind == "pad" else output_size(size, op.kernel, op.stride, op.padding)
    return LayerGeometry(op.name, op.kind, op.kernel, op.stride, op.padding, size, out, receptive_field + (op.kernel - 1) * jump, jump * op.stride)


def propagate(size: int, ops: Iterable[SpatialOp]) -> list[LayerGeometry]:
    """Each layer's geometry for a square input of `size` pixels (layers left out by `skip_below` are not listed)."""
    layers, receptive_field, jump = [], 1, 1
    for op in ops:
        if size < op.skip_below:
            continue
        layer = advance(op, size, receptive_field, jump)
        layers.append(layer)
        size, receptive_field, jump = layer.output_size, layer.receptive_field, layer.jump
    return layers


def spatial_op(layer: object) -> SpatialOp | None:
    """The `SpatialOp` a Keras layer performs (convolutions of every kind, pooling windows, zero padding), or None
    for a layer that keeps the spatial size. Square kernels, strides and padding, as in every model here."""
    name = getattr(layer, "name", "?")
    kind = type(layer).__name__
    if kind.endswith("Conv2D") and kind != "Conv2DTranspose":
        dilation = layer.dilation_rate[0]
        return SpatialOp(name, "conv", dilation * (layer.kernel_size[0] - 1) + 1, layer.strides[0], layer.padding)
    if kind in ("MaxPooling2D", "AveragePooling2D"):
        return SpatialOp(name, "pool", layer.pool_size[0], layer.strides[0], layer.padding)
    if kind == "ZeroPadding2D":
        (top, bottom), _ = layer.padding
        return SpatialOp(name, "pad", 1, 1, "valid", pad=top + bottom)
    return None


def baseline_ops(blocks: Sequence[ConvBlock]) -> list[SpatialOp]:
    """The spatial layers of the baseline CNN (app/models/baseline.py), named as its Keras layers are."""
    ops = []
    for b, block in enumerate(blocks, start=1):
        for r in range(1, block.repeats + 1):
            ops.append(SpatialOp(f"block{b}_conv{r}", "conv", block.kernel_size, block.strides if r == 1 else 1))
        if block.pool != "none":
            ops.append(SpatialOp(f"block{b}_pool", "pool", POOL_SIZE, POOL_SIZE, "valid", skip_below=POOL_SIZE))
    return ops


@dataclass(frozen=True)
class NetworkGeometry:
    layers: list[LayerGeometry]
    feature_size: int  # the last feature map's side, before global pooling
    receptive_field: int


def baseline_geometry(blocks: Sequence[ConvBlock], image_size: int) -> NetworkGeometry:
    layers = propagate(image_size, baseline_ops(blocks))
    last = layers[-1] if layers else None
    return NetworkGeometry(layers, last.output_size if last else image_size, last.receptive_field if last else 1)


def shape_problem(geometry: NetworkGeometry, min_feature_size: int) -> str | None:
    """Why a network is not worth training (a kernel larger than its input map, a feature map that shrinks below
    `min_feature_size` before global pooling), or None."""
    for layer in geometry.layers:
        if layer.kind == "conv" and layer.kernel > layer.input_size:
            return f"{layer.name}: kernel {layer.kernel} is larger than its {layer.input_size}x{layer.input_size} input"
    if geometry.feature_size < min_feature_size:
        return f"the last feature map is {geometry.feature_size}x{geometry.feature_size}, below min_feature_size={min_feature_size}"
    return None


def conv_macs(blocks: Sequence[ConvBlock], image_size: int, channels: int = 3) -> int:
    """Multiply-accumulates of the baseline CNN's convolutions for one image (forward pass): the cost model that
    gives each trial of a search the same amount of compute (tuning.hypermodels.compute_epochs)."""
    sizes = {g.name: g.output_size for g in propagate(image_size, baseline_ops(blocks))}
    total, inputs = 0, channels
    for b, block in enumerate(blocks, start=1):
        for r in range(1, block.repeats + 1):
            total += sizes[f"block{b}_conv{r}"] ** 2 * block.kernel_size**2 * inputs * block.filters
            inputs = block.filters
    return total
