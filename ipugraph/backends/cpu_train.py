"""CPU lowerings of the training ops of pooling and batch norm (csrc/train.cpp):
max_pool2d_backward, avg_pool2d_backward, bn_stats, batch_norm_train, bn_grad_stats,
batch_norm_backward, running_stat_update, select and channel_sum.

Per-channel ops see their big operand's storage as a contiguous [outer, C, inner] array:
inner = 1 for NHWC 4-D and [N, C] (channels contiguous), inner = prod(shape[2:]) for the other
ranks (stored row-major as declared, e.g. [N, C, L]); the channel of flat storage element i is
(i / inner) % C. Vertex tables are read by dim name (_columns): pooling backward
(n, c, ih) boxes of dx; per-channel sums (c, n, h) boxes, n and h being reduce dims whose
partial sums the C++ kernel adds per channel itself (no separate reduction step); flat ops (i)
ranges of the output's storage.
"""
from __future__ import annotations

import math

import numpy as np

from ..graph import Tensor
from .cpu import (Kernel, _C, _columns, _cover, _first_bad, _flat, check_array, storage_shape,
                  to_logical, to_storage)
from .registry import lowering


def _inner(t: Tensor) -> int:
    """Elements between consecutive channels of t's storage (channels on logical axis 1)."""
    if t.ndim in (2, 4):
        return 1
    return int(math.prod(t.shape[2:]))


def _what(node) -> str:
    return f"{node.op.name} '{node.name}'"


def _small(ctx, t: Tensor, shape: tuple, what: str) -> np.ndarray:
    """A per-channel operand ([C] or [2, C]): stored row-major as declared."""
    return check_array(ctx.storage(t), shape, what)


# -- pooling ----------------------------------------------------------------------------------

def _pool_bwd_verts(cs, dx_t: Tensor, what: str) -> np.ndarray:
    n, c, h, _ = dx_t.shape
    return _columns(cs, ("n", "c", "ih"), (n, c, h), what)


@lowering("max_pool2d_backward", backend="cpu")
def max_pool2d_backward_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    what = _what(node)
    x_t, dy_t = node.inputs
    x = check_array(ctx.storage(x_t), storage_shape(x_t), f"{what} x")
    dy = check_array(ctx.storage(dy_t), storage_shape(dy_t), f"{what} dy")
    out = check_array(ctx.storage(node.output), storage_shape(node.output), f"{what} output")
    verts = _pool_bwd_verts(cs, node.output, what)
    a = node.attrs
    geom = (*a["kernel"], *a["stride"], *a["padding"], *a["dilation"])
    return Kernel(node.name, lambda: _C.max_pool2d_backward_nhwc(x, dy, out, verts, *geom))


@lowering("avg_pool2d_backward", backend="cpu")
def avg_pool2d_backward_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    what = _what(node)
    (dy_t,) = node.inputs
    dy = check_array(ctx.storage(dy_t), storage_shape(dy_t), f"{what} dy")
    out = check_array(ctx.storage(node.output), storage_shape(node.output), f"{what} output")
    verts = _pool_bwd_verts(cs, node.output, what)
    a = node.attrs
    geom = (*a["kernel"], *a["stride"], *a["padding"])
    cip = bool(a["count_include_pad"])
    return Kernel(node.name, lambda: _C.avg_pool2d_backward_nhwc(dy, out, verts, *geom, cip))


# -- per-channel sums -------------------------------------------------------------------------

def _red_layout(t: Tensor) -> tuple[int, int, bool]:
    """(rows, cols, channels_last) of the C++ per-channel view of t's storage: [N, rows, cols,
    C] for NHWC 4-D and [N, C]; [N, C, rows, cols] for the other ranks ([N, C, L]: rows = L)."""
    if t.ndim == 4:
        return t.shape[2], t.shape[3], True
    if t.ndim == 2:
        return 1, 1, True
    return t.shape[2], int(math.prod(t.shape[3:])), False


def _chan_verts(cs, t: Tensor, what: str) -> np.ndarray:
    """Vertex rows (c0, c1, n0, n1, h0, h1): the planner may split channels and, as reduce
    dims, the batch and rows (h over axis 2). Checked here, once, to tile every channel's
    (n, h) plane exactly once (the C++ side re-checks only the area per channel)."""
    n, c = t.shape[:2]
    rows = t.shape[2] if t.ndim > 2 else 1
    cols = _columns(cs, ("c", "n", "h"), (c, n, rows), what)
    if len(cols) and n * rows * c:
        bad = ((cols[:, 0::2] < 0) | (cols[:, 1::2] < cols[:, 0::2])
               | (cols[:, 1::2] > np.array([c, n, rows]))).any()
        if bad:
            raise ValueError(f"cpu backend: {what}: a vertex box lies outside (c, n, h) = "
                             f"{(c, n, rows)} or has lo > hi")
        boxes = np.concatenate([cols[:, [2, 3, 0, 1, 4, 5]],
                                np.tile(np.array([0, 1], np.int32), (len(cols), 1))], axis=1)
        count, edges = _cover(boxes, np.ones(len(cols), np.int64),
                              np.zeros(len(cols), np.int64), 1, (n, rows, 1, c))
        if (count != 1).any():
            at = _first_bad(count[0] != 1, edges)
            raise ValueError(f"cpu backend: {what}: element (n, h, c) = {(at[0], at[1], at[3])} "
                             f"is summed by {int(count[0][count[0] != 1][0])} vertices (must be "
                             "exactly 1)")
    return cols


@lowering("bn_stats", backend="cpu")
def bn_stats_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    what = _what(node)
    (x_t,) = node.inputs
    c = x_t.shape[1]
    x = _flat(ctx, x_t, f"{what} x")
    out = _small(ctx, node.output, (2, c), f"{what} output")
    verts = _chan_verts(cs, x_t, what)
    layout = _red_layout(x_t)
    return Kernel(node.name, lambda: _C.bn_stats(x, out, *layout, verts))


@lowering("bn_grad_stats", backend="cpu")
def bn_grad_stats_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    what = _what(node)
    dy_t, x_t, stats_t = node.inputs
    c = x_t.shape[1]
    dy = _flat(ctx, dy_t, f"{what} dy")
    x = _flat(ctx, x_t, f"{what} x")
    stats = _small(ctx, stats_t, (2, c), f"{what} stats")
    out = _small(ctx, node.output, (2, c), f"{what} output")
    verts = _chan_verts(cs, x_t, what)
    layout, eps = _red_layout(x_t), float(node.attrs["eps"])
    return Kernel(node.name, lambda: _C.bn_grad_stats(dy, x, stats, out, *layout, eps, verts))


@lowering("channel_sum", backend="cpu")
def channel_sum_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    what = _what(node)
    (x_t,) = node.inputs
    c = x_t.shape[1]
    x = _flat(ctx, x_t, f"{what} x")
    out = _small(ctx, node.output, (c,), f"{what} output")
    verts = _chan_verts(cs, x_t, what)
    layout = _red_layout(x_t)
    return Kernel(node.name, lambda: _C.channel_sum(x, out, *layout, verts))


# -- flat ops ---------------------------------------------------------------------------------

def _flat_verts(cs, out_t: Tensor, what: str) -> np.ndarray:
    return _columns(cs, ("i",), (out_t.size,), what)


@lowering("batch_norm_train", backend="cpu")
def batch_norm_train_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    what = _what(node)
    x_t, gamma_t, beta_t, stats_t = node.inputs
    c = x_t.shape[1]
    x = _flat(ctx, x_t, f"{what} x")
    gamma = _small(ctx, gamma_t, (c,), f"{what} gamma")
    beta = _small(ctx, beta_t, (c,), f"{what} beta")
    stats = _small(ctx, stats_t, (2, c), f"{what} stats")
    out = _flat(ctx, node.output, f"{what} output")
    verts = _flat_verts(cs, node.output, what)
    inner, eps = _inner(x_t), float(node.attrs["eps"])
    return Kernel(node.name, lambda: _C.batch_norm_train(x, gamma, beta, stats, out, inner, eps,
                                                         verts))


@lowering("batch_norm_backward", backend="cpu")
def batch_norm_backward_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    what = _what(node)
    dy_t, x_t, gamma_t, stats_t, gstats_t = node.inputs
    c = x_t.shape[1]
    dy = _flat(ctx, dy_t, f"{what} dy")
    x = _flat(ctx, x_t, f"{what} x")
    gamma = _small(ctx, gamma_t, (c,), f"{what} gamma")
    stats = _small(ctx, stats_t, (2, c), f"{what} stats")
    gstats = _small(ctx, gstats_t, (2, c), f"{what} gstats")
    out = _flat(ctx, node.output, f"{what} output")
    verts = _flat_verts(cs, node.output, what)
    inner, eps = _inner(x_t), float(node.attrs["eps"])
    return Kernel(node.name, lambda: _C.batch_norm_backward(dy, x, gamma, stats, gstats, out,
                                                            inner, eps, verts))


@lowering("running_stat_update", backend="cpu")
def running_stat_update_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    what = _what(node)
    run_t, stats_t = node.inputs
    (c,) = run_t.shape
    running = _small(ctx, run_t, (c,), f"{what} running")
    stats = _small(ctx, stats_t, (2, c), f"{what} stats")
    out = _small(ctx, node.output, (c,), f"{what} output")
    verts = _flat_verts(cs, node.output, what)
    a = node.attrs
    row, momentum, count = int(a["row"]), float(a["momentum"]), int(a["count"])
    return Kernel(node.name, lambda: _C.running_stat_update(running, stats, out, row, momentum,
                                                            count, verts))


@lowering("select", backend="cpu")
def select_cpu(ctx, cs) -> Kernel:
    """t[index]. When t and t[index] are stored alike (neither is 4-D) the row is one
    contiguous run of t's storage: a vertex copies its range of it. A 4-D t (NHWC) or a 4-D
    result (of a 5-D row-major t) changes layout: a whole-tensor copy through the logical
    view (like flatten), not split."""
    node = cs.group.anchor
    what = _what(node)
    (t_t,) = node.inputs
    out_t = node.output
    index = int(node.attrs["index"])
    if not 0 <= index < t_t.shape[0]:
        raise ValueError(f"cpu backend: {what}: index {index} outside [0, {t_t.shape[0]}) of "
                         f"'{t_t.name}' {t_t.shape}")
    t = check_array(ctx.storage(t_t), storage_shape(t_t), f"{what} input")
    out = check_array(ctx.storage(out_t), storage_shape(out_t), f"{what} output")
    if t_t.ndim != 4 and out_t.ndim != 4:
        verts = _flat_verts(cs, out_t, what)
        flat_out = out.reshape(-1)
        return Kernel(node.name, lambda: _C.select_rows(t, flat_out, index, verts))

    def run():
        row = to_logical(t_t, t)[index]
        np.copyto(out, to_storage(out_t, row))

    return Kernel(node.name, run)
