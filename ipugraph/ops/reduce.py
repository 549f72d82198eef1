"""Per-channel reductions and row selection: channel_sum (a bias gradient, torch's
grad.sum(dims except 1)) and select (one row of a stacked tensor, e.g. a statistics pair)."""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from ..space import Region
from .registry import Cost, Dim, Space, defop, elementwise_space, expect_float, fail


def _channel_sum_infer(node, inputs, attrs):
    (x,) = inputs
    expect_float("channel_sum", node, x=x)
    if x.ndim < 2:
        raise fail("channel_sum", node, f"x must have rank >= 2 (channels on axis 1), got rank "
                   f"{x.ndim}", x=x)
    return [((x.shape[1],), x.dtype)]


def channel_space(node, target) -> Space:
    """A per-channel reduction over every axis but 1 (x [N, C, H, W], [N, C, L] or [N, C]):
    split over channels, and over the batch and rows (reduce dims: each vertex sums its slice
    into partial per-channel sums that a reduction step adds up across tiles, as PopLibs
    reduces batch-norm statistics). A vertex reads its box of every operand shaped like x and
    its channel range of the per-channel ones ([C], [2, C])."""
    big = node.inputs[0]
    n, c = big.shape[:2]
    rows = big.shape[2] if big.ndim > 2 else 1
    inner = big.size // (n * c * rows)
    nbig = sum(t.shape == big.shape for t in node.inputs)

    def slice_cost(sizes):
        sc, sn = sizes[..., 0], sizes[..., 1]
        sh = sizes[..., 2] if big.ndim > 2 else 1
        elems = sc * sn * sh * inner
        return elems * nbig, elems * nbig * big.itemsize, np.zeros_like(elems), sc * 16

    def channel_region(t, c0, c1):
        lo = np.zeros((len(c0), t.ndim), np.int64)
        hi = np.tile(np.asarray(t.shape, np.int64), (len(c0), 1))
        lo[:, -1], hi[:, -1] = c0, c1
        return Region.boxes(lo, hi)

    def boxes(table):
        t = table.astype(np.int64)
        c0, c1, n0, n1 = t[:, 0], t[:, 1], t[:, 2], t[:, 3]
        lo = np.zeros((len(t), big.ndim), np.int64)
        hi = np.tile(np.asarray(big.shape, np.int64), (len(t), 1))
        lo[:, 0], hi[:, 0], lo[:, 1], hi[:, 1] = n0, n1, c0, c1
        if big.ndim > 2:
            lo[:, 2], hi[:, 2] = t[:, 4], t[:, 5]
        slab = Region.boxes(lo, hi)
        ins = [(x, slab if x.shape == big.shape else channel_region(x, c0, c1))
               for x in node.inputs]
        return channel_region(node.output, c0, c1), ins

    def reduce_region(kept):
        return channel_region(node.output, kept[:, 0].astype(np.int64), kept[:, 1].astype(np.int64))

    dims = (Dim("c", c, target.vector_grain), Dim("n", n)) + ((Dim("h", rows),) if big.ndim > 2
                                                              else ())
    return Space(dims, slice_cost, boxes, reduce_dims=("n", "h"), reduce_region=reduce_region)


@defop("channel_sum", infer=_channel_sum_infer, space=channel_space,
       cost=lambda node: Cost(0, node.inputs[0].size, node.inputs[0].nbytes, node.output.nbytes))
def channel_sum_op(x):
    axes = (0,) + tuple(range(2, x.ndim))
    return x.sum(axis=axes)


def _select_infer(node, inputs, attrs):
    (t,) = inputs
    i = attrs["index"]
    if t.ndim < 2 or not isinstance(i, (int, np.integer)) or not 0 <= i < t.shape[0]:
        raise fail("select", node, f"index {i!r} must be an int in [0, {t.shape[0]}) of a "
                   "tensor of rank >= 2", t=t)
    return [(t.shape[1:], t.dtype)]


@defop("select", infer=_select_infer, space=elementwise_space, attrs={"index": 0},
       cost=lambda node: Cost(0, 0, node.output.nbytes, node.output.nbytes))
def select_op(t, *, index):
    return t[index].copy()


def channel_sum(x: Tensor, name: str | None = None) -> Tensor:
    """Sum over every axis but 1: [N, C, ...] -> [C]."""
    return channel_sum_op(x, name=name)


def select(t: Tensor, index: int, name: str | None = None) -> Tensor:
    """t[index] along axis 0."""
    return select_op(t, index=int(index), name=name)
