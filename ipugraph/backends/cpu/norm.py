"""Normalisation on the cpu backend (csrc/norm.cpp; the standalone inference batch norm runs on
the pointwise evaluator).

Per-channel ops see their big operand's storage as a contiguous [outer, C, inner] array:
inner = 1 for NHWC 4-D and [N, C] (channels contiguous), inner = prod(shape[2:]) for the other
ranks (stored row-major as declared, e.g. [N, C, L]). Per-channel sums have vertex dims
(c, n, h): n and h are reduce dims whose partial sums the C++ kernel adds per channel itself
(the Program's Reduce entry has nothing left to do)."""
from __future__ import annotations

import math

import numpy as np

from ...graph import Tensor
from ...ops.norm import bn_scale_shift
from ...ops.pointwise import PRIMITIVES
from ..layout import affine_layout
from ..registry import lowering
from .common import C, Context, Kernel, check_array, flat_table, packing, what
from .partials import cover, first_bad
from .pointwise import program_epilogue, then_epilogue


def channel_inner(t: Tensor) -> int:
    """Elements between consecutive channels of t's storage (channels on logical axis 1)."""
    return 1 if t.ndim in (2, 4) else int(math.prod(t.shape[2:]))


def channel_layout(t: Tensor) -> tuple[int, int, bool]:
    """(rows, cols, channels_last) of the C++ per-channel view of t's storage: [N, rows, cols,
    C] for NHWC 4-D and [N, C]; [N, C, rows, cols] for the other ranks ([N, C, L]: rows = L)."""
    if t.ndim == 4:
        return t.shape[2], t.shape[3], True
    if t.ndim == 2:
        return 1, 1, True
    return t.shape[2], int(math.prod(t.shape[3:])), False


def channel_table(cs, t: Tensor, label: str) -> np.ndarray:
    """Vertex rows (c0, c1, n0, n1, h0, h1), checked to tile every channel's (n, h) plane
    exactly once (the C++ side re-checks only the area per channel)."""
    n, c = t.shape[:2]
    rows = t.shape[2] if t.ndim > 2 else 1
    cols = cs.table("c", "n", "h", extents=(c, n, rows))
    if len(cols) and n * rows * c:
        bad = ((cols[:, 0::2] < 0) | (cols[:, 1::2] < cols[:, 0::2])
               | (cols[:, 1::2] > np.array([c, n, rows]))).any()
        if bad:
            raise ValueError(f"cpu backend: {label}: a vertex box lies outside (c, n, h) = "
                             f"{(c, n, rows)} or has lo > hi")
        boxes = np.concatenate([cols[:, [2, 3, 0, 1, 4, 5]],
                                np.tile(np.array([0, 1], np.int32), (len(cols), 1))], axis=1)
        count, edges = cover(boxes, np.ones(len(cols), np.int64),
                             np.zeros(len(cols), np.int64), 1, (n, rows, 1, c))
        if (count != 1).any():
            at = first_bad(count[0] != 1, edges)
            raise ValueError(f"cpu backend: {label}: element (n, h, c) = {(at[0], at[1], at[3])} "
                             f"is summed by {int(count[0][count[0] != 1][0])} vertices (must be "
                             "exactly 1)")
    return cols


def _small(ctx: Context, t: Tensor, shape: tuple, label: str) -> np.ndarray:
    """A per-channel operand ([C] or [2, C]): stored row-major as declared."""
    return check_array(ctx.storage(t), shape, label)


@lowering("batch_norm", backend="cpu")
def batch_norm_cpu(ctx: Context, cs) -> Kernel:
    """A standalone inference batch norm: out = x·scale[c] + shift[c] on the pointwise
    evaluator, scale and shift folded from the parameters at compile (and when they change)."""
    node = cs.anchor
    x_t = node.inputs[0]
    x = ctx.flat(x_t, "input", node)
    out = ctx.flat(cs.output, "output", node)
    c = x_t.shape[1]
    scale, shift = np.zeros(c, np.float32), np.zeros(c, np.float32)

    def prepare():
        gamma, beta, mean, var = (np.asarray(ctx.value(t), np.float64) for t in node.inputs[1:])
        sc, sh = bn_scale_shift(gamma, beta, mean, var, node.attrs["eps"])
        scale[:], shift[:] = sc, sh

    shape, xs, chan = affine_layout(x_t)
    strides = [xs, chan, chan]
    # out = mul(x, scale) then add(that, shift): values x, scale, shift, then the two results
    code = np.array([[PRIMITIVES["mul"].opcode, 0, 1, -1],
                     [PRIMITIVES["add"].opcode, 3, 2, -1]], np.int32)
    prog = C.PointwiseProgram(out, shape, [x, scale, shift], np.asarray(strides, np.int64),
                              np.zeros(0, np.float32), code, 4)
    verts = flat_table(cs)
    run = then_epilogue(lambda: C.pointwise(prog, verts), program_epilogue(ctx, cs), out)
    return Kernel(node.name, run, **packing(prepare, node.inputs[1:],
                                            not ctx.is_static(*node.inputs[1:])))


@lowering("bn_stats", backend="cpu")
def bn_stats_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    (x_t,) = node.inputs
    c = x_t.shape[1]
    x = ctx.flat(x_t, "x", node)
    out = _small(ctx, cs.output, (2, c), what(node, "output"))
    verts = channel_table(cs, x_t, what(node))
    layout = channel_layout(x_t)
    return Kernel(node.name, lambda: C.bn_stats(x, out, *layout, verts))


@lowering("bn_grad_stats", backend="cpu")
def bn_grad_stats_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    dy_t, x_t, stats_t = node.inputs
    c = x_t.shape[1]
    dy, x = ctx.flat(dy_t, "dy", node), ctx.flat(x_t, "x", node)
    stats = _small(ctx, stats_t, (2, c), what(node, "stats"))
    out = _small(ctx, cs.output, (2, c), what(node, "output"))
    verts = channel_table(cs, x_t, what(node))
    layout, eps = channel_layout(x_t), float(node.attrs["eps"])
    return Kernel(node.name, lambda: C.bn_grad_stats(dy, x, stats, out, *layout, eps, verts))


@lowering("batch_norm_train", backend="cpu")
def batch_norm_train_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    x_t, gamma_t, beta_t, stats_t = node.inputs
    c = x_t.shape[1]
    x = ctx.flat(x_t, "x", node)
    gamma = _small(ctx, gamma_t, (c,), what(node, "gamma"))
    beta = _small(ctx, beta_t, (c,), what(node, "beta"))
    stats = _small(ctx, stats_t, (2, c), what(node, "stats"))
    out = ctx.flat(cs.output, "output", node)
    epi = program_epilogue(ctx, cs)
    verts = flat_table(cs)
    inner, eps = channel_inner(x_t), float(node.attrs["eps"])
    return Kernel(node.name, lambda: C.batch_norm_train(x, gamma, beta, stats, out, inner, eps,
                                                        verts, epi))
