"""Normalisation on the triton backend (kernels/norm.py; the standalone inference batch norm
runs as a generated pointwise kernel x·scale[c] + shift[c]). Per-channel ops see their tensor as
(OUTER, C, INNER) (kernels.reduce.channel_layout)."""
from __future__ import annotations

import numpy as np

from ...ops.norm import bn_scale_shift
from ...ops.pointwise import PRIMITIVES
from ..layout import affine_layout
from ..registry import lowering
from .common import Context, Kernel
from .pointwise import program_epilogue, then


@lowering("batch_norm", backend="triton")
def batch_norm_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    x_t = node.inputs[0]
    x, out = ctx.storage(x_t), ctx.storage(cs.output)
    c = x_t.shape[1]
    params = node.inputs[1:]
    scale, shift = ctx.resident((c,)), ctx.resident((c,))
    dynamic = not ctx.is_static(*params)
    static_params = {t.name: ctx.resident((c,)) for t in params if ctx.is_static(t)}
    shape, xs, chan = affine_layout(x_t)
    code = [(PRIMITIVES["mul"].triton, (0, 1)), (PRIMITIVES["add"].triton, (3, 2))]
    affine = ctx.kernels.pointwise.Pointwise(out, shape, [(x, xs), (scale, chan), (shift, chan)],
                                             (), code, 4)

    def prepare():
        if not dynamic:
            gamma, beta, mean, var = (np.asarray(ctx.host_value(t), np.float64) for t in params)
            sc, sh = bn_scale_shift(gamma, beta, mean, var, node.attrs["eps"])
            ctx.upload(scale, sc)
            ctx.upload(shift, sh)
        else:                                  # run() folds on the device from these
            for t in params:
                if t.name in static_params:
                    ctx.upload(static_params[t.name], ctx.host_value(t))

    def refresh():                             # fold run-time parameters on the device
        gamma, beta, mean, var = (static_params[t.name] if t.name in static_params
                                  else ctx.value(t).float() for t in params)
        s = gamma / ctx.torch.sqrt(var + node.attrs["eps"])
        scale.copy_(s)
        shift.copy_(beta - mean * s)
    packs = tuple(t for t in params if ctx.is_static(t))
    return Kernel(node.name, then(affine, program_epilogue(ctx, cs)), prepare=prepare,
                  packs=packs, refresh=refresh if dynamic else None)


@lowering("bn_stats", backend="triton")
def bn_stats_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    x_t = node.inputs[0]
    x, out = ctx.storage(x_t), ctx.storage(cs.output)
    layout = ctx.kernels.reduce.channel_layout(x_t.shape)
    kernel = ctx.kernels.norm.bn_stats
    return Kernel(node.name, lambda: kernel(x, layout, out))


@lowering("batch_norm_train", backend="triton")
def batch_norm_train_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    x_t = node.inputs[0]
    x, gamma, beta, stats = (ctx.storage(t) for t in node.inputs)
    out = ctx.storage(cs.output)
    layout = ctx.kernels.reduce.channel_layout(x_t.shape)
    kernel = ctx.kernels.norm.batch_norm_train
    eps = node.attrs["eps"]
    return Kernel(node.name, then(lambda: kernel(x, gamma, beta, stats, layout, eps, out=out),
                                  program_epilogue(ctx, cs)))


@lowering("bn_grad_stats", backend="triton")
def bn_grad_stats_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    dy_t = node.inputs[0]
    dy, x, stats = (ctx.storage(t) for t in node.inputs)
    out = ctx.storage(cs.output)
    layout = ctx.kernels.reduce.channel_layout(dy_t.shape)
    kernel = ctx.kernels.norm.bn_grad_stats
    eps = node.attrs["eps"]
    return Kernel(node.name, lambda: kernel(dy, x, stats, layout, eps, out))
