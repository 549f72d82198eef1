"""dropout's keep mask on the cpu backend (csrc/random.cpp): the mask's storage, each element
hashed from its logical row-major index (the reference's bits, whatever the layout)."""
from __future__ import annotations

from ...ops.random import keep_threshold
from ..layout import logical_index_layout
from ..registry import lowering
from .common import C, Context, Kernel, flat_table


@lowering("dropout_mask", backend="cpu")
def dropout_mask_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    out_t = cs.output
    seed = ctx.storage(node.inputs[0])
    out = ctx.storage(out_t).reshape(-1)
    shape, strides = logical_index_layout(out_t)
    threshold = keep_threshold(node.attrs["p"])
    verts = flat_table(cs)
    return Kernel(node.name, lambda: C.dropout_mask(out, shape, strides, seed, threshold, verts))
