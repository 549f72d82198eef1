"""Pooling on the cpu backend (csrc/pool.cpp), forward and backward, NHWC. Forward vertex dims
(n, c, oh) (max / avg: all output columns), (n, c) global; backward (n, c, ih): boxes of dx,
each written whole by its vertex."""
from __future__ import annotations

from ..registry import lowering
from .common import C, Context, Kernel


def _pool_cpu(ctx: Context, cs, dims, call) -> Kernel:
    node = cs.anchor
    x = ctx.array(node.inputs[0], "input", node)
    out = ctx.array(cs.output, "output", node)
    n, c = node.inputs[0].shape[:2]
    extents = (n, c) + ((cs.output.shape[2],) if len(dims) > 2 else ())
    verts = cs.table(*dims, extents=extents)
    return Kernel(node.name, lambda: call(x, out, verts, node.attrs))


@lowering("max_pool2d", backend="cpu")
def max_pool2d_cpu(ctx, cs) -> Kernel:
    return _pool_cpu(ctx, cs, ("n", "c", "oh"), lambda x, out, v, a: C.max_pool2d_nhwc(
        x, out, v, *a["kernel"], *a["stride"], *a["padding"], *a["dilation"]))


@lowering("avg_pool2d", backend="cpu")
def avg_pool2d_cpu(ctx, cs) -> Kernel:
    return _pool_cpu(ctx, cs, ("n", "c", "oh"), lambda x, out, v, a: C.avg_pool2d_nhwc(
        x, out, v, *a["kernel"], *a["stride"], *a["padding"], a["count_include_pad"]))


@lowering("global_avg_pool", backend="cpu")
def global_avg_pool_cpu(ctx, cs) -> Kernel:
    def call(x, out, v, a):
        C.global_avg_pool_nhwc(x, out.reshape(out.shape[0], out.shape[3]), v)
    return _pool_cpu(ctx, cs, ("n", "c"), call)


def _bwd_verts(cs):
    n, c, h, _ = cs.output.shape
    return cs.table("n", "c", "ih", extents=(n, c, h))


@lowering("max_pool2d_backward", backend="cpu")
def max_pool2d_backward_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    x_t, dy_t = node.inputs
    x, dy = ctx.array(x_t, "x", node), ctx.array(dy_t, "dy", node)
    out = ctx.array(cs.output, "output", node)
    verts = _bwd_verts(cs)
    a = node.attrs
    geom = (*a["kernel"], *a["stride"], *a["padding"], *a["dilation"])
    return Kernel(node.name, lambda: C.max_pool2d_backward_nhwc(x, dy, out, verts, *geom))


@lowering("avg_pool2d_backward", backend="cpu")
def avg_pool2d_backward_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    dy = ctx.array(node.inputs[0], "dy", node)
    out = ctx.array(cs.output, "output", node)
    verts = _bwd_verts(cs)
    a = node.attrs
    geom = (*a["kernel"], *a["stride"], *a["padding"])
    cip = bool(a["count_include_pad"])
    return Kernel(node.name, lambda: C.avg_pool2d_backward_nhwc(dy, out, verts, *geom, cip))
