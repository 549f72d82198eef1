"""Pooling on the triton backend (kernels/pool.py), forward and backward, NHWC."""
from __future__ import annotations

from ..registry import lowering
from .common import Context, Kernel


@lowering("max_pool2d", backend="triton")
def max_pool2d_triton(ctx, cs) -> Kernel:
    node = cs.anchor
    x, out, a = ctx.storage(node.inputs[0]), ctx.storage(cs.output), node.attrs
    pool = ctx.kernels.max_pool2d_nhwc
    return Kernel(node.name, lambda: pool(x, a["kernel"], a["stride"], a["padding"],
                                          a["dilation"], out=out))


@lowering("avg_pool2d", backend="triton")
def avg_pool2d_triton(ctx, cs) -> Kernel:
    node = cs.anchor
    x, out, a = ctx.storage(node.inputs[0]), ctx.storage(cs.output), node.attrs
    pool = ctx.kernels.avg_pool2d_nhwc
    return Kernel(node.name, lambda: pool(x, a["kernel"], a["stride"], a["padding"],
                                          a["count_include_pad"], out=out))


@lowering("global_avg_pool", backend="triton")
def global_avg_pool_triton(ctx, cs) -> Kernel:
    node = cs.anchor
    x, out = ctx.storage(node.inputs[0]), ctx.storage(cs.output)
    flat = out.view(out.shape[0], out.shape[3])                  # [N, 1, 1, C] -> [N, C]
    pool = ctx.kernels.global_avg_pool_nhwc
    return Kernel(node.name, lambda: pool(x, out=flat))


@lowering("max_pool2d_backward", backend="triton")
def max_pool2d_backward_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    x_t, dy_t = node.inputs
    a = node.attrs
    x, dy, out = ctx.storage(x_t), ctx.storage(dy_t), ctx.storage(cs.output)
    argmax = ctx.resident(tuple(dy.shape), ctx.torch.int32)
    kernel = ctx.kernels.pool.max_pool2d_backward_nhwc
    return Kernel(node.name, lambda: kernel(x, dy, a["kernel"], a["stride"], a["padding"],
                                            a["dilation"], out=out, argmax=argmax))


@lowering("avg_pool2d_backward", backend="triton")
def avg_pool2d_backward_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    a = node.attrs
    dy, out = ctx.storage(node.inputs[0]), ctx.storage(cs.output)
    kernel = ctx.kernels.pool.avg_pool2d_backward_nhwc
    size = tuple(a["input_size"])
    return Kernel(node.name, lambda: kernel(dy, size, a["kernel"], a["stride"], a["padding"],
                                            a["count_include_pad"], out=out))
