"""softmax, its gradient and the softmax cross-entropy loss on the cpu backend (csrc/loss.cpp).
Rows are the logical last axis; a 4-D tensor (stored NHWC, its last logical axis strided) is
gathered into a logical-order scratch buffer and the result scattered back. Labels are integer
arrays (int64, or int32), read as stored (a fed input) or from the tensor's current value."""
from __future__ import annotations

import numpy as np

from ..layout import to_logical, to_storage
from ..registry import lowering
from .common import C, Context, Kernel, check_array, what


def _rows(cs) -> np.ndarray:
    cols = cs.output.shape[-1] if cs.output.ndim else 1
    return cs.table("row", extents=(cs.output.size // max(cols, 1),))


def _row_kernel(ctx: Context, cs, tensors, call) -> Kernel:
    """call(row arrays of the inputs, rows of the output, vertices), through logical scratch
    buffers when the tensors are 4-D."""
    node = cs.anchor
    out_t = cs.output
    cols = out_t.shape[-1]
    verts = _rows(cs)
    if out_t.ndim != 4:
        ins = [ctx.flat(t, f"input {i}", node).reshape(-1, cols) for i, t in enumerate(tensors)]
        out = ctx.flat(out_t, "output", node).reshape(-1, cols)
        return Kernel(node.name, lambda: call(ins, out, verts))
    stored = [ctx.array(t, f"input {i}", node) for i, t in enumerate(tensors)]
    out = ctx.array(out_t, "output", node)
    rows_in = [np.empty(t.shape, np.float32) for t in tensors]
    rows_out = np.empty(out_t.shape, np.float32)

    def run():
        for t, src, dst in zip(tensors, stored, rows_in):
            np.copyto(dst, to_logical(t, src))
        call([r.reshape(-1, cols) for r in rows_in], rows_out.reshape(-1, cols), verts)
        np.copyto(out, to_storage(out_t, rows_out))
    return Kernel(node.name, run)


@lowering("softmax", backend="cpu")
def softmax_cpu(ctx, cs) -> Kernel:
    return _row_kernel(ctx, cs, cs.anchor.inputs,
                       lambda ins, out, v: C.softmax_rows(ins[0], out, v))


@lowering("softmax_backward", backend="cpu")
def softmax_backward_cpu(ctx, cs) -> Kernel:
    return _row_kernel(ctx, cs, cs.anchor.inputs,
                       lambda ins, out, v: C.softmax_backward_rows(ins[0], ins[1], out, v))


def _labels(ctx: Context, node, t):
    """labels as an integer array, current at run time."""
    if t.kind in ("variable", "constant"):
        return lambda: np.ascontiguousarray(t.value)
    arr = ctx.storage(t)
    if arr.dtype.kind not in "iu" or arr.shape != t.shape:
        raise ValueError(f"cpu backend: {what(node, 'labels')} '{t.name}' must be stored as an "
                         f"integer (int64) array of shape {t.shape}, got {arr.dtype} {arr.shape}")
    return lambda: arr


def _named(node, call):
    """Run call(); a ValueError from C++ (e.g. a bad label) gets the node's name."""
    try:
        call()
    except ValueError as e:
        msg = str(e).removeprefix(f"{node.op.name}: ")
        raise ValueError(f"{node.op.name} '{node.name}': {msg}") from None


@lowering("cross_entropy", backend="cpu")
def cross_entropy_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    logits_t, labels_t = node.inputs
    logits = check_array(ctx.storage(logits_t), logits_t.shape, what(node, "logits"))
    out = check_array(ctx.storage(cs.output), (), what(node, "output"))
    labels = _labels(ctx, node, labels_t)
    verts = cs.table("all", extents=(1,))
    return Kernel(node.name,
                  lambda: _named(node, lambda: C.cross_entropy(logits, labels(), out, verts)))


@lowering("cross_entropy_backward", backend="cpu")
def cross_entropy_backward_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    logits_t, labels_t, dloss_t = node.inputs
    logits = check_array(ctx.storage(logits_t), logits_t.shape, what(node, "logits"))
    out = check_array(ctx.storage(cs.output), cs.output.shape, what(node, "output"))
    labels = _labels(ctx, node, labels_t)
    if dloss_t.size != 1:
        raise ValueError(f"cpu backend: {what(node, 'dloss')} '{dloss_t.name}' must be a scalar")
    dloss = check_array(ctx.storage(dloss_t), dloss_t.shape, what(node, "dloss"))
    verts = cs.table("row", extents=(logits_t.shape[0],))
    return Kernel(node.name, lambda: _named(
        node, lambda: C.cross_entropy_backward(logits, labels(), dloss, out, verts)))
