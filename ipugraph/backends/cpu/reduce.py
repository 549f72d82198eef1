"""Reductions on the cpu backend (csrc/reduce.cpp): sum / mean / amax over any axes, and the
per-channel channel_sum (vertex dims (c, n, h), its partial sums added in the kernel)."""
from __future__ import annotations

from ..layout import reduce_layout
from ..registry import lowering
from .common import C, Context, Kernel, check_array, flat_table, what
from .norm import channel_layout, channel_table

KINDS = {"sum": 0, "mean": 1, "amax": 2}


def _reduce_kernel(ctx: Context, cs) -> Kernel:
    """Each output element (the output row-major in its storage order) reduces the input's
    reduced axes, taken in the input's storage order (the innermost the most contiguous)."""
    node = cs.anchor
    x_t, out_t = node.inputs[0], cs.output
    layout = reduce_layout(x_t, out_t, node.attrs["axes"], node.attrs["keepdims"])
    x = ctx.flat(x_t, "input", node)
    out = ctx.flat(out_t, "output", node)
    args = (x, out, *layout, KINDS[node.op.name], flat_table(cs))
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
