"""Reductions: sum / mean / amax over any axes (torch.sum, torch.mean, torch.amax), and the
per-channel channel_sum (a bias gradient, torch's grad.sum(dims except 1)) whose planner split
also cuts the batch and rows into partial sums."""
from __future__ import annotations

import builtins

import numpy as np

from ..graph import GraphError, Tensor
from ..space import Region, flat_region
from .registry import Cost, Dim, Space, defop, expect_float, fail


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
    nbig = builtins.sum(t.shape == big.shape for t in node.inputs)

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


def channel_sum(x: Tensor, name: str | None = None) -> Tensor:
    """Sum over every axis but 1: [N, C, ...] -> [C]."""
    return channel_sum_op(x, name=name)


# -- sum, mean, amax over any axes ------------------------------------------------------------

def normalize_axes(op: str, node: str, x: Tensor, axis) -> tuple[int, ...]:
    """axis: None (all), an int or a sequence of ints (negative from the end), as torch."""
    if axis is None:
        return tuple(range(x.ndim))
    items = (axis,) if isinstance(axis, (int, np.integer)) else tuple(axis)
    out = []
    for a in items:
        if not isinstance(a, (int, np.integer)) or isinstance(a, bool) or \
                not -x.ndim <= a < max(x.ndim, 1):
            raise fail(op, node, f"axis {a!r} is not an int in [{-x.ndim}, {x.ndim})", x=x)
        out.append(int(a) % max(x.ndim, 1))
    if len(set(out)) != len(out):
        raise fail(op, node, f"axis {axis!r} names an axis twice", x=x)
    return tuple(sorted(out))


def kept_shape(shape, axes) -> tuple[int, ...]:
    """The reduced shape with keepdims: each reduced axis of size 1."""
    return tuple(1 if i in axes else d for i, d in enumerate(shape))


def _reduce_infer(op: str, floats_only: bool):
    def infer(node, inputs, attrs):
        (x,) = inputs
        axes = normalize_axes(op, node, x, attrs["axes"])
        if floats_only:
            expect_float(op, node, x=x)
        elif x.dtype == "bool":
            raise fail(op, node, "needs a numeric tensor, got bool (cast it first)", x=x)
        if attrs["axes"] != axes:
            raise fail(op, node, f"axes must be normalised (sorted, non-negative), got "
                       f"{attrs['axes']!r}", x=x)
        shape = kept_shape(x.shape, axes) if attrs["keepdims"] else \
            tuple(d for i, d in enumerate(x.shape) if i not in axes)
        return [(shape, x.dtype)]
    return infer


def reduce_space(node, target) -> Space:
    """Split over the output's flat element range; a vertex reads, for each of its output
    boxes, the input box with every reduced axis whole."""
    x, out = node.inputs[0], node.output
    axes = node.attrs["axes"]
    kept = [i for i in range(x.ndim) if i not in axes]
    per_out = max(1, x.size // max(out.size, 1))

    def slice_cost(sizes):
        n = sizes[..., 0]
        return n * per_out, n * per_out * x.itemsize, np.zeros_like(n), n * out.itemsize

    def boxes(table):
        region = flat_region(out.shape, table[:, 0], table[:, 1])
        lo = np.zeros((len(region.vid), max(x.ndim, 1)), np.int64)
        hi = np.tile(np.asarray(x.shape or (1,), np.int64), (len(region.vid), 1))
        if kept:           # the output's columns of the kept axes (all its axes, or the same)
            src = kept if node.attrs["keepdims"] else list(range(len(kept)))
            lo[:, kept], hi[:, kept] = region.lo[:, src], region.hi[:, src]
        return region, [(x, Region(region.vid, lo, hi))]
    return Space((Dim("i", out.size, target.vector_grain),), slice_cost, boxes)


def _reduce_cost(node) -> Cost:
    x = node.inputs[0]
    return Cost(0, x.size, x.nbytes, node.output.nbytes)


def _keep(node, t: Tensor) -> Tensor:
    """t (shaped like the op's output) reshaped to the keepdims shape, to broadcast over x."""
    from .shape import reshape
    shape = kept_shape(node.inputs[0].shape, node.attrs["axes"])
    return t if t.shape == shape else reshape(t, shape)


def _sum_grad(node, dy, needs):
    from .pointwise import expand
    return [expand(_keep(node, dy), node.inputs[0].shape)]


def _mean_grad(node, dy, needs):
    from .pointwise import div, expand
    x = node.inputs[0]
    count = x.size // max(node.output.size, 1)
    return [div(expand(_keep(node, dy), x.shape), float(count))]


def _amax_grad(node, dy, needs):
    """torch's amax gradient: split evenly between the elements that equal the maximum."""
    from .pointwise import cast, div, equal, where
    x = node.inputs[0]
    hit = equal(x, _keep(node, node.output))
    count = sum(cast(hit, x.dtype), node.attrs["axes"], keepdims=True)
    return [where(hit, div(_keep(node, dy), count), 0.0)]


@defop("sum", infer=_reduce_infer("sum", False), cost=_reduce_cost, space=reduce_space,
       attrs={"axes": (0,), "keepdims": False}, grad=_sum_grad)
def sum_op(x, *, axes, keepdims):
    return np.sum(x, axis=axes, keepdims=keepdims)


@defop("mean", infer=_reduce_infer("mean", True), cost=_reduce_cost, space=reduce_space,
       attrs={"axes": (0,), "keepdims": False}, grad=_mean_grad)
def mean_op(x, *, axes, keepdims):
    return np.mean(x, axis=axes, keepdims=keepdims)


@defop("amax", infer=_reduce_infer("amax", False), cost=_reduce_cost, space=reduce_space,
       attrs={"axes": (0,), "keepdims": False}, grad=_amax_grad)
def amax_op(x, *, axes, keepdims):
    return np.max(x, axis=axes, keepdims=keepdims)


def _reduce(op, x, axis, keepdims, name):
    if not isinstance(x, Tensor):
        raise GraphError(f"{op.name}: x must be an ipugraph Tensor, got {type(x).__name__}")
    axes = normalize_axes(op.name, name or op.name, x, axis)
    return op(x, axes=axes, keepdims=bool(keepdims), name=name)


def sum(x: Tensor, axis=None, keepdims: bool = False, name: str | None = None) -> Tensor:  # noqa: A001
    """Sum over `axis` (None: all; an int or a tuple), as torch.sum(x, dim, keepdim)."""
    return _reduce(sum_op, x, axis, keepdims, name)


def mean(x: Tensor, axis=None, keepdims: bool = False, name: str | None = None) -> Tensor:
    """Mean over `axis` (None: all; an int or a tuple), as torch.mean(x, dim, keepdim)."""
    return _reduce(mean_op, x, axis, keepdims, name)


def amax(x: Tensor, axis=None, keepdims: bool = False, name: str | None = None) -> Tensor:
    """Maximum over `axis` (None: all), as torch.amax; NaN propagates."""
    return _reduce(amax_op, x, axis, keepdims, name)
