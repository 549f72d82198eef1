"""softmax over the last axis, computed stably (subtract the row max before exp)."""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from .registry import Cost, Dim, Space, defop, expect_float, fail


def _softmax_infer(node, inputs, attrs):
    (x,) = inputs
    expect_float("softmax", node, x=x)
    if attrs["axis"] not in (-1, x.ndim - 1):
        raise fail("softmax", node, f"only the last axis is supported, got axis={attrs['axis']}",
                   x=x)
    return [(x.shape, x.dtype)]


def _softmax_space(node, target) -> Space:
    x = node.inputs[0]
    cols = x.shape[-1]

    def slice_cost(sizes):
        b = sizes[..., 0] * cols * x.itemsize
        return sizes[..., 0] * cols * 4, b, np.zeros_like(b), b
    def boxes(table):
        from ..planner.regions import flat_region
        region = flat_region(x.shape, table[:, 0] * cols, table[:, 1] * cols)
        return region, [(x, region)]
    return Space((Dim("row", x.size // cols),), slice_cost, boxes)


@defop("softmax", infer=_softmax_infer, space=_softmax_space, attrs={"axis": -1},
       cost=lambda node: Cost(0, 4 * node.output.size, node.inputs[0].nbytes, node.output.nbytes))
def softmax_op(x, *, axis):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax(x: Tensor, axis: int = -1, name: str | None = None) -> Tensor:
    return softmax_op(x, axis=int(axis), name=name)
