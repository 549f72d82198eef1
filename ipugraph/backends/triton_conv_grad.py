"""Triton lowerings of the convolution gradients (kernels/conv_grad.py).

Like every triton lowering they ignore the plan's vertex tables: one launch covers the op (the
weight gradient's pixel reduction is split across programs inside the kernel, and its partials
summed by a second launch, instead of the planner's n/oh reduce split). The weight, 4-D, is
stored [K, R, S, Cg] (the backends' NHWC rule) and the kernels read and write that layout
directly; dy, x and dx are NHWC activations."""
from __future__ import annotations

from .registry import lowering
from .triton import Context, Kernel


@lowering("conv2d_backward_data", backend="triton")
def conv2d_backward_data_triton(ctx: Context, cs) -> Kernel:
    node = cs.group.anchor
    dy_t, w_t = node.inputs
    a = node.attrs
    dy, w, out = ctx.storage(dy_t), ctx.storage(w_t), ctx.storage(node.output)
    kernel = ctx.kernels.conv_grad.conv2d_backward_data_nhwc
    geometry = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                    groups=a["groups"], allow_tf32=ctx.allow_tf32)
    size = tuple(a["input_size"])
    return Kernel(node.name, lambda: kernel(dy, w, size, out, **geometry))


@lowering("conv2d_backward_weight", backend="triton")
def conv2d_backward_weight_triton(ctx: Context, cs) -> Kernel:
    node = cs.group.anchor
    x_t, dy_t = node.inputs
    a = node.attrs
    x, dy, out = ctx.storage(x_t), ctx.storage(dy_t), ctx.storage(node.output)
    kgrad = ctx.kernels.conv_grad
    k, cg, r, s = node.output.shape
    n, _, oh, ow = dy_t.shape
    *_, need = kgrad.weight_grad_workspace(n * oh * ow, k, r, s, cg, a["groups"])
    workspace = ctx.resident((max(need, 1),))                  # fp32 partial sums
    geometry = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                    groups=a["groups"], allow_tf32=ctx.allow_tf32, workspace=workspace)
    kernel = kgrad.conv2d_backward_weight_nhwc
    return Kernel(node.name, lambda: kernel(x, dy, (r, s), out, **geometry))
