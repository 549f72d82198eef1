"""Reductions on the triton backend (kernels/reduce.py): sum / mean / amax over any axes (the
same storage-order view as the cpu backend's) and channel_sum."""
from __future__ import annotations

from ..layout import reduce_layout
from ..registry import lowering
from .common import Context, Kernel

KINDS = {"sum": 0, "mean": 1, "amax": 2}


def _reduce_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    x_t, out_t = node.inputs[0], cs.output
    layout = reduce_layout(x_t, out_t, node.attrs["axes"], node.attrs["keepdims"])
    x, out = ctx.storage(x_t).reshape(-1), ctx.storage(out_t).reshape(-1)
    kernel = ctx.kernels.reduce.reduce_axes
    args = (x, out, *layout, KINDS[node.op.name])
    return Kernel(node.name, lambda: kernel(*args))


for _op in KINDS:
    lowering(_op, backend="triton")(_reduce_triton)


@lowering("channel_sum", backend="triton")
def channel_sum_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    x_t = node.inputs[0]
    x, out = ctx.storage(x_t), ctx.storage(cs.output)
    layout = ctx.kernels.reduce.channel_layout(x_t.shape)
    kernel = ctx.kernels.reduce.channel_sum
    return Kernel(node.name, lambda: kernel(x, layout, out))
