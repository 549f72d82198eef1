"""Data movement on the triton backend (kernels/shape.py): the gather ops (select, concat, slice,
pad, upsample-nearest, slice_backward) with the same storage-order iteration as the cpu backend
(backends/layout.gather_layout), layout changes (reshape, flatten, transpose) as strided copies
between logical views, and the CSR resamplings."""
from __future__ import annotations

import numpy as np

from ...ops.shape import resample_table
from ..layout import around_axis, gather_layout, to_logical
from ..registry import lowering
from .common import Context, Kernel


def _gather_kernel(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    out = ctx.storage(cs.output).reshape(-1)
    sources = [ctx.storage(t).reshape(-1) for t in node.inputs]
    shape, out_strides, maps, src_strides, bases, sel_axis, sel, fill = \
        gather_layout(node, cs.output)
    g = ctx.kernels.shape
    launches = g.prepare_gather(out, shape, out_strides, sources, src_strides, bases,
                                [ctx.torch.from_numpy(m) for m in maps], sel_axis,
                                None if sel is None else ctx.torch.from_numpy(sel), fill)
    return Kernel(node.name, lambda: g.run_gather(launches))


for _op in ("select", "concat", "slice", "slice_backward", "pad", "upsample_nearest"):
    lowering(_op, backend="triton")(_gather_kernel)


def _copy(ctx: Context, node, src, dst) -> Kernel:
    copy = ctx.kernels.shape.strided_copy
    return Kernel(node.name, lambda: copy(src, dst))


def _reshape_triton(ctx: Context, cs) -> Kernel:
    """x.reshape(shape) in logical (NCHW row-major) order: both sides are logical views of
    their storage (NHWC for 4-D) and the kernel matches their row-major orders."""
    node = cs.anchor
    x_t = node.inputs[0]
    src = to_logical(x_t, ctx.storage(x_t))
    dst = to_logical(cs.output, ctx.storage(cs.output))
    return _copy(ctx, node, src, dst)


lowering("reshape", backend="triton")(_reshape_triton)
lowering("flatten", backend="triton")(_reshape_triton)


@lowering("transpose", backend="triton")
def transpose_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    return _copy(ctx, node, ctx.storage(node.inputs[0]).t(), ctx.storage(cs.output))


@lowering("resample", backend="triton")
def resample_triton(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    x_t, out_t = node.inputs[0], cs.output
    axis = node.attrs["axis"]
    outer, _, inner = around_axis(x_t, axis)
    table = resample_table(node.attrs["kind"], node.attrs["params"])
    torch = ctx.torch
    indptr = torch.from_numpy(table.indptr).to(ctx.device)
    indices = torch.from_numpy(table.indices).to(ctx.device)
    weights = torch.from_numpy(table.weights.astype(np.float32)).to(ctx.device)
    taps = int(np.diff(table.indptr).max()) if len(table.indptr) > 1 else 0
    x, out = ctx.storage(x_t).reshape(-1), ctx.storage(out_t).reshape(-1)
    kernel = ctx.kernels.shape.resample
    n_in, n_out = x_t.shape[axis], out_t.shape[axis]
    return Kernel(node.name, lambda: kernel(x, out, outer, n_in, n_out, inner, indptr, indices,
                                            weights, taps))
