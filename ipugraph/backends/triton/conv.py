"""Convolutions on the triton backend (kernels/conv.py, kernels/conv_grad.py). One launch per
op over the whole output (the weight gradient's pixel reduction is split across programs inside
the kernel and its partials summed by a second launch). The weight, packed [G, R·S·Cg, Kg] for
the forward conv with a folded inference batch norm, is stored [K, R, S, Cg] (the NHWC rule) for
the gradients, which read that layout directly."""
from __future__ import annotations

from ..registry import lowering
from .common import Context, Kernel, Weights
from .pointwise import anchor_epilogue, program_epilogue, then


@lowering("conv2d", backend="triton")
def conv2d_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    x_t, w_t = node.inputs[0], node.inputs[1]
    b_t = node.inputs[2] if len(node.inputs) > 2 else None
    k, cg, r, s = w_t.shape
    a = node.attrs
    groups = a["groups"]
    x = ctx.storage(x_t)
    out = ctx.storage(cs.output)
    res, relu, rest = anchor_epilogue(ctx, cs)
    weights = Weights(ctx, cs, w_t, b_t, 0, (groups, r * s * cg, k // groups),
                      lambda w: ctx.kernels.pack_weight(w, groups))
    conv = ctx.kernels.conv2d_nhwc
    geometry = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                    groups=groups, relu=relu, allow_tf32=ctx.allow_tf32)

    def run():
        conv(x, weights.packed, (r, s), weights.bias, res, out, **geometry)
    return Kernel(node.name, then(run, rest), **weights.kernel_fields())


@lowering("conv2d_backward_data", backend="triton")
def conv2d_backward_data_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    dy_t, w_t = node.inputs
    a = node.attrs
    dy, w, out = ctx.storage(dy_t), ctx.storage(w_t), ctx.storage(cs.output)
    kernel = ctx.kernels.conv_grad.conv2d_backward_data_nhwc
    geometry = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                    groups=a["groups"], allow_tf32=ctx.allow_tf32)
    size = tuple(a["input_size"])
    return Kernel(node.name, then(lambda: kernel(dy, w, size, out, **geometry),
                                  program_epilogue(ctx, cs)))


@lowering("conv2d_backward_weight", backend="triton")
def conv2d_backward_weight_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    x_t, dy_t = node.inputs
    a = node.attrs
    x, dy, out = ctx.storage(x_t), ctx.storage(dy_t), ctx.storage(cs.output)
    kgrad = ctx.kernels.conv_grad
    k, cg, r, s = cs.output.shape
    n, _, oh, ow = dy_t.shape
    *_, need = kgrad.weight_grad_workspace(n * oh * ow, k, r, s, cg, a["groups"])
    workspace = ctx.resident((max(need, 1),))                  # fp32 partial sums
    geometry = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                    groups=a["groups"], allow_tf32=ctx.allow_tf32, workspace=workspace)
    kernel = kgrad.conv2d_backward_weight_nhwc
    return Kernel(node.name, then(lambda: kernel(x, dy, (r, s), out, **geometry),
                                  program_epilogue(ctx, cs)))
