"""A model's anatomy: per layer, its output shape (N, H, W, C and the N·C·H·W order of PyTorch-style texts),
parameters, kernel, stride, padding, receptive field and jump, for the baseline CNN and the nested backbones.

Sizes, receptive fields and jumps come from the shape arithmetic the tuner uses (app/models/geometry.py), walked
over the model's layer graph (nested models included): the tests check them against Keras' own output shapes.
The receptive field follows the convolution and pooling path; a squeeze-and-excitation branch (global pooling, then
a per-channel scale) adds global context that the column does not count.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path

import keras
import numpy as np
import pandas as pd

from app.atomic import write_text
from app.models.geometry import advance, spatial_op

ANATOMY_FILE = "anatomy.md"


@dataclass(frozen=True)
class LayerRow:
    layer: str  # nested layers as "<model>/<layer>"
    type: str
    output_shape: str  # (N, H, W, C) as Keras holds it
    nchw: str  # the same, in the N·C·H·W order
    params: int
    kernel: int | None
    stride: int | None
    padding: str | None
    size: int | None  # H (= W) computed by the shape arithmetic; None once the map is pooled away
    receptive_field: int | None
    jump: int | None


@dataclass
class _Geo:
    size: int | None
    receptive_field: int
    jump: int


def _parents(layer: keras.layers.Layer) -> list[keras.layers.Layer]:
    nodes = getattr(layer, "_inbound_nodes", [])
    return [parent.operation for parent in nodes[0].parent_nodes] if nodes else []


def _is_map(shape: tuple) -> bool:
    return len(shape) == 4


def _shape_text(shape: tuple) -> tuple[str, str]:
    dims = ["N" if d is None else str(d) for d in shape]
    nchw = [dims[0], dims[3], dims[1], dims[2]] if len(dims) == 4 else dims
    return "(" + ", ".join(dims) + ")", "×".join(nchw)


def _walk(model: keras.Model, inbound: _Geo, prefix: str, rows: list[LayerRow]) -> _Geo:
    """Rows for `model`'s layers (recursing into nested models); returns the geometry of its output."""
    geos: dict[int, _Geo] = {}
    for layer in model.operations:  # layers and the plain ops between them (MobileNetV3's hard sigmoid: relu6(x + 3) / 6)
        parents = _parents(layer)
        known = [geos[id(p)] for p in parents if id(p) in geos]
        if not known:  # an input layer (of this model, or of a nested model fed by the outer graph)
            geo = inbound
        else:  # a merge (Add, Concatenate, Multiply): the widest map, the largest field along it
            widest = max((g.size or 0) for g in known)
            along = [g for g in known if (g.size or 0) == widest]
            geo = _Geo(widest or None, max(g.receptive_field for g in along), max(g.jump for g in along))
        if not isinstance(layer, keras.layers.Layer):  # an op: passes the geometry on, and is no row of the table
            geos[id(layer)] = geo
            continue
        if isinstance(layer, keras.Model):
            geo = _walk(layer, geo, f"{prefix}{layer.name}/", rows)
            geos[id(layer)] = geo
            continue
        shape = tuple(layer.output.shape)
        op = spatial_op(layer)
        if op is not None and geo.size is not None:
            step = advance(op, geo.size, geo.receptive_field, geo.jump)
            geo = _Geo(step.output_size, step.receptive_field, step.jump)
        elif type(layer).__name__.startswith("Global") and _is_map(shape):  # global pooling with keepdims (MobileNetV3's SE): 1x1
            geo = _Geo(1, geo.receptive_field, geo.jump)
        elif not _is_map(shape):
            geo = _Geo(None, geo.receptive_field, geo.jump)  # pooled or flattened away
        elif geo.size is None:  # a map again (a squeeze-and-excitation reshape to 1×1)
            geo = _Geo(shape[1], geo.receptive_field, geo.jump)
        geos[id(layer)] = geo
        text, nchw = _shape_text(shape)
        if type(layer).__name__ == "InputLayer" and prefix:
            continue  # a nested model's input repeats the outer layer's output
        rows.append(
            LayerRow(
                f"{prefix}{layer.name}",
                type(layer).__name__,
                text,
                nchw,
                int(layer.count_params()),
                op.kernel if op and op.kind != "pad" else None,
                op.stride if op and op.kind != "pad" else None,
                op.padding if op and op.kind != "pad" else None,
                geo.size if _is_map(shape) else None,
                geo.receptive_field if _is_map(shape) else None,
                geo.jump if _is_map(shape) else None,
            )
        )
    return geo


def anatomy(model: keras.Model) -> pd.DataFrame:
    """One row per layer, input to output (nested backbone layers included), with the LayerRow columns."""
    image_size = model.inputs[0].shape[1]
    rows: list[LayerRow] = []
    _walk(model, _Geo(image_size, 1, 1), "", rows)
    table = pd.DataFrame([asdict(r) for r in rows])
    return table.astype({c: "Int64" for c in ("kernel", "stride", "size", "receptive_field", "jump")})


def anatomy_markdown(table: pd.DataFrame, model: keras.Model | None = None) -> str:
    """The table as Markdown, with the formulas used and the totals."""

    def cell(v: object) -> str:
        if v is None or (not isinstance(v, str) and pd.isna(v)):
            return ""
        return str(int(v)) if isinstance(v, (int, float, np.integer)) else str(v)

    columns = ["layer", "type", "output_shape", "nchw", "params", "kernel", "stride", "padding", "receptive_field", "jump"]
    header = ["layer", "type", "output (N, H, W, C)", "N·C·H·W", "params", "kernel", "stride", "padding", "receptive field", "jump"]
    lines = []
    if model is not None:
        lines += [f"# Anatomy of `{model.name}`", "", f"{len(table)} layers, {int(model.count_params()):,} parameters.", ""]
    lines += [
        "Output size per layer: `ceil(in / stride)` with padding `same`, `floor((in - kernel) / stride) + 1` with `valid`.",
        "Receptive field: input pixels (per side) one output pixel sees, `rf += (kernel - 1) * jump`; jump: input pixels",
        "between neighbouring outputs, `jump *= stride`.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in table[columns].itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) if name != "params" else f"{int(v):,}" for name, v in zip(columns, row)) + " |")
    return "\n".join(lines) + "\n"


def write_anatomy(model: keras.Model, out_dir: str | os.PathLike) -> Path:
    """anatomy.md in `out_dir`; returns its path."""
    path = Path(out_dir) / ANATOMY_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text(path, anatomy_markdown(anatomy(model), model))
    return path
