"""dropout's keep mask on the cpu backend (csrc/random.cpp): the mask's storage, each element
hashed from its logical row-major index (the reference's bits, whatever the layout)."""
from __future__ import annotations

import numpy as np

from ...ops.random import keep_threshold
from ..layout import storage_perm, storage_shape
from ..registry import lowering
from .common import C, Context, Kernel, flat_table


@lowering("dropout_mask", backend="cpu")
def dropout_mask_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    out_t = cs.output
    seed = ctx.storage(node.inputs[0])
    out = ctx.storage(out_t).reshape(-1)
    logical, step = [0] * out_t.ndim, 1
    for d in reversed(range(out_t.ndim)):
        logical[d] = step
        step *= out_t.shape[d]
    perm = storage_perm(out_t)
    shape = list(storage_shape(out_t)) or [1]
    strides = [logical[p] for p in perm] or [0]
    threshold = keep_threshold(node.attrs["p"])
    verts = flat_table(cs)
    return Kernel(node.name, lambda: C.dropout_mask(out, shape, strides, seed, threshold, verts))
