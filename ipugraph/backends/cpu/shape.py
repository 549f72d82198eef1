"""Data movement on the cpu backend (csrc/shape.cpp): one gather codelet serves every op with a
GatherSpec (select, concat, slice, pad, upsample-nearest, slice_backward) and the layout
changes of flatten / reshape; resample runs the separable CSR resamplings; transpose the 2-D
blocked transpose.

A gather (a _C.Gather, its arguments checked once at compile) iterates over the output's
elements in its storage order (so writes are contiguous): iteration axis k is logical axis
storage_perm(out)[k], its map the op's map for that axis, and each source is read through its
own storage strides. The plan's flat vertex ranges are ranges of that iteration order (every
element is still written exactly once)."""
from __future__ import annotations

import numpy as np

from ...graph import GraphError
from ...ops.shape import resample_table
from ..layout import around_axis, gather_layout, storage_perm, storage_strides
from ..registry import lowering
from .common import C, Context, Kernel, flat_table

IDENTITY = np.zeros(0, np.int64)


def _rowmajor(shape) -> list[int]:
    out, step = [0] * len(shape), 1
    for d in reversed(range(len(shape))):
        out[d] = step
        step *= shape[d]
    return out


def _gather_kernel(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    out = ctx.storage(cs.output)
    sources = [ctx.storage(t) for t in node.inputs]
    for t, a in zip(node.inputs, sources):
        if a.dtype != out.dtype:
            raise GraphError(f"cpu backend: {node.op.name} '{node.name}' reads '{t.name}' stored "
                             f"as {a.dtype} into {out.dtype}")
    shape, out_strides, maps, src_strides, bases, sel_axis, sel, fill = \
        gather_layout(node, cs.output)
    gather = C.Gather(out.reshape(-1), shape, out_strides, [a.reshape(-1) for a in sources],
                      [s for st in src_strides for s in st], bases, maps, sel_axis,
                      IDENTITY if sel is None else sel, float(fill))
    verts = flat_table(cs)
    return Kernel(node.name, lambda: gather.run(verts))


for _op in ("select", "concat", "slice", "slice_backward", "pad", "upsample_nearest"):
    lowering(_op, backend="cpu")(_gather_kernel)


def flat_copy(ctx: Context, x_t, y_t, verts: np.ndarray):
    """y = x in logical row-major order, whatever their storage layouts (a 4-D tensor is NHWC):
    a gather over the logical shape of the 4-D side. Returns the call."""
    x, y = ctx.storage(x_t).reshape(-1), ctx.storage(y_t).reshape(-1)
    if x_t.ndim == 4 and y_t.ndim == 4 and x_t.shape != y_t.shape:
        scratch = np.empty(x_t.size, x.dtype)          # through row-major x
        everything = np.array([[0, x_t.size]], np.int32)
        first = _flat_gather(x, scratch, x_t.shape, storage_strides(x_t), _rowmajor(x_t.shape),
                             everything)
        second = _flat_gather(scratch, y, y_t.shape, _rowmajor(y_t.shape),
                              storage_strides(y_t), everything, perm=storage_perm(y_t))
        return lambda: (first(), second())
    if y_t.ndim == 4:                                  # iterate in y's storage order
        src = storage_strides(x_t) if x_t.ndim == 4 else _rowmajor(y_t.shape)
        return _flat_gather(x, y, y_t.shape, src, storage_strides(y_t), verts,
                            perm=storage_perm(y_t))
    shape = x_t.shape if x_t.ndim == 4 else y_t.shape
    src = storage_strides(x_t) if x_t.ndim == 4 else _rowmajor(shape)
    return _flat_gather(x, y, shape, src, _rowmajor(shape), verts)


def _flat_gather(x, y, shape, src_strides, dst_strides, verts, perm=None):
    perm = list(perm) if perm is not None else list(range(len(shape)))
    if not perm:
        shape, src_strides, dst_strides, perm = (1,), (0,), (0,), [0]
    it = [shape[p] for p in perm]
    gather = C.Gather(y, it, [dst_strides[p] for p in perm], [x], [src_strides[p] for p in perm],
                      [0], [IDENTITY] * len(it), -1, IDENTITY, 0.0)
    return lambda: gather.run(verts)


def _reshape_kernel(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    return Kernel(node.name, flat_copy(ctx, node.inputs[0], cs.output, flat_table(cs)))


lowering("reshape", backend="cpu")(_reshape_kernel)
lowering("flatten", backend="cpu")(_reshape_kernel)


@lowering("transpose", backend="cpu")
def transpose_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    a = ctx.array(node.inputs[0], "input", node)
    out = ctx.array(cs.output, "output", node)
    verts = cs.table("i", extents=(cs.output.shape[0],))
    return Kernel(node.name, lambda: C.transpose2d(a, out, verts))


@lowering("resample", backend="cpu")
def resample_cpu(ctx: Context, cs) -> Kernel:
    """The resampled logical axis is one storage axis: the storage seen as [outer, n, inner]."""
    node = cs.anchor
    x_t, out_t = node.inputs[0], cs.output
    axis = node.attrs["axis"]
    outer, _, inner = around_axis(x_t, axis)
    table = resample_table(node.attrs["kind"], node.attrs["params"])
    x = ctx.flat(x_t, "input", node)
    out = ctx.flat(out_t, "output", node)
    verts = flat_table(cs)
    args = (x, out, outer, x_t.shape[axis], out_t.shape[axis], inner, table.indptr,
            table.indices, table.weights.astype(np.float32), verts)
    return Kernel(node.name, lambda: C.resample(*args))
