"""dropout's keep mask on the triton backend (kernels/random.py): the reference's bits."""
from __future__ import annotations

from ...ops.random import keep_threshold
from ..layout import logical_index_layout
from ..registry import lowering
from .common import Context, Kernel


@lowering("dropout_mask", backend="triton")
def dropout_mask_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    out_t = cs.output
    seed = ctx.storage(node.inputs[0])
    out = ctx.storage(out_t).reshape(-1)
    shape, strides = logical_index_layout(out_t)
    threshold = keep_threshold(node.attrs["p"])
    kernel = ctx.kernels.random.dropout_mask
    return Kernel(node.name, lambda: kernel(out, shape, strides, seed, threshold))
