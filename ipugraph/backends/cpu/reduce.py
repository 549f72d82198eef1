"""Reductions on the cpu backend (csrc/reduce.cpp): sum / mean / amax over any axes, and the
per-channel channel_sum (vertex dims (c, n, h), its partial sums added in the kernel)."""
from __future__ import annotations

import numpy as np

from ..layout import storage_perm, storage_strides
from ..registry import lowering
from .common import C, Context, Kernel, check_array, flat_table, what
from .norm import channel_layout, channel_table

KINDS = {"sum": 0, "mean": 1, "amax": 2}


def _reduce_kernel(ctx: Context, cs) -> Kernel:
    """Each output element (the output row-major in its storage order) reduces the input's
    reduced axes, taken in the input's storage order (the innermost the most contiguous)."""
    node = cs.anchor
    x_t, out_t = node.inputs[0], cs.output
    axes, keep = node.attrs["axes"], node.attrs["keepdims"]
    xs = storage_strides(x_t)
    kept = [a for a in range(x_t.ndim) if a not in axes]
    out_axis_to_x = list(range(x_t.ndim)) if keep else kept
    kept_shape, kept_strides = [], []
    for p in storage_perm(out_t):
        a = out_axis_to_x[p]
        kept_shape.append(out_t.shape[p])
        kept_strides.append(0 if a in axes else xs[a])
    red = sorted(axes, key=lambda a: -xs[a])
    x = ctx.flat(x_t, "input", node)
    out = ctx.flat(out_t, "output", node)
    verts = flat_table(cs)
    args = (x, out, kept_shape, kept_strides, [x_t.shape[a] for a in red], [xs[a] for a in red],
            KINDS[node.op.name], verts)
    return Kernel(node.name, lambda: C.reduce_axes(*args))


for _op in KINDS:
    lowering(_op, backend="cpu")(_reduce_kernel)


@lowering("channel_sum", backend="cpu")
def channel_sum_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    (x_t,) = node.inputs
    x = ctx.flat(x_t, "x", node)
    out = check_array(ctx.storage(cs.output), (x_t.shape[1],), what(node, "output"))
    verts = channel_table(cs, x_t, what(node))
    layout = channel_layout(x_t)
    return Kernel(node.name, lambda: C.channel_sum(x, out, *layout, verts))
