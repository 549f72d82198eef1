"""softmax, its gradient and the softmax cross-entropy loss on the triton backend
(kernels/loss.py). Rows along the logical last axis: contiguous, except for a 4-D tensor whose
W axis is strided by C in its NHWC storage (rows (n, c, h) at n·HWC + c + h·WC)."""
from __future__ import annotations

from ..layout import to_logical, to_storage
from ..registry import lowering
from .common import Context, Kernel


def _row_geometry(t):
    if t.ndim == 4:
        n, c, h, w = t.shape
        return (n, c, h), (h * w * c, 1, w * c), w, c
    cols = t.shape[-1] if t.ndim else 1
    return (t.size // max(cols, 1),), (cols,), cols, 1


@lowering("softmax", backend="triton")
def softmax_triton(ctx, cs) -> Kernel:
    """A 4-D tensor's last logical axis (W) is not the innermost of its NHWC storage: softmaxed
    through a logical-layout temporary."""
    node = cs.anchor
    x_t = node.inputs[0]
    x, out = ctx.storage(x_t), ctx.storage(cs.output)
    softmax = ctx.kernels.loss.softmax_rows
    if x_t.ndim != 4:
        return Kernel(node.name, lambda: softmax(x, out))
    tmp_in = ctx.resident(x_t.shape, x.dtype)
    tmp_out = ctx.resident(x_t.shape, x.dtype)

    def run():
        tmp_in.copy_(to_logical(x_t, x))
        softmax(tmp_in, tmp_out)
        out.copy_(to_storage(x_t, tmp_out))
    return Kernel(node.name, run)


@lowering("softmax_backward", backend="triton")
def softmax_backward_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    y, dy = (ctx.storage(t) for t in node.inputs)
    out = ctx.storage(cs.output)
    rows, strides, cols, col_stride = _row_geometry(node.inputs[0])
    kernel = ctx.kernels.loss.softmax_backward_rows
    return Kernel(node.name, lambda: kernel(y, dy, out, rows, strides, cols, col_stride))


@lowering("cross_entropy", backend="triton")
def cross_entropy_triton(ctx: Context, cs) -> Kernel:
    """The labels are checked on the host before the launch (ValueError naming the op, the label
    and K); under CUDA-graph capture, where that cannot run, a bad label gives NaN."""
    node = cs.anchor
    logits_t, labels_t = node.inputs
    logits, labels = ctx.storage(logits_t), ctx.storage(labels_t)
    out = ctx.storage(cs.output)
    workspace = ctx.resident((logits_t.shape[0],))
    kernel = ctx.kernels.loss.cross_entropy
    return Kernel(node.name, lambda: kernel(logits, labels, out, workspace=workspace))


@lowering("cross_entropy_backward", backend="triton")
def cross_entropy_backward_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    logits, labels, dloss = (ctx.storage(t) for t in node.inputs)
    out = ctx.storage(cs.output)
    kernel = ctx.kernels.loss.cross_entropy_backward
    return Kernel(node.name, lambda: kernel(logits, labels, dloss, out=out))
