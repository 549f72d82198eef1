"""The storage layout the cpu and triton backends share: 4-D activations (and 4-D weights) are
stored NHWC, channels contiguous (what the conv microkernels and the pooling loops vectorise
over); every other rank row-major as declared. Feeds are converted on the way in, outputs on the
way out. These helpers take NumPy arrays or torch tensors alike."""
from __future__ import annotations

import numpy as np

NHWC = (0, 2, 3, 1)          # storage axis k holds logical axis NHWC[k]


def storage_perm(t) -> tuple[int, ...]:
    """The logical axis each storage axis of tensor t holds."""
    return NHWC if t.ndim == 4 else tuple(range(t.ndim))


def storage_shape(t) -> tuple[int, ...]:
    return tuple(t.shape[a] for a in storage_perm(t))


def storage_strides(t) -> tuple[int, ...]:
    """Element strides of t's storage, per LOGICAL axis."""
    perm = storage_perm(t)
    shape = storage_shape(t)
    strides = [0] * t.ndim
    step = 1
    for k in reversed(range(t.ndim)):
        strides[perm[k]] = step
        step *= shape[k]
    return tuple(strides)


def logical_index_layout(t) -> tuple[list[int], list[int]]:
    """t's storage walked in storage order: its shape, and per storage axis the step of the
    element's LOGICAL (C-order) flat index, so a kernel that writes storage order can compute
    what the reference computes at each logical index (dropout's counter-based bits)."""
    logical, step = [0] * t.ndim, 1
    for d in reversed(range(t.ndim)):
        logical[d] = step
        step *= t.shape[d]
    shape = list(storage_shape(t)) or [1]
    strides = [logical[p] for p in storage_perm(t)] or [0]
    return shape, strides


def around_axis(t, axis: int) -> tuple[int, int, int]:
    """t's storage seen as [outer, n, inner] around logical `axis` (one storage axis)."""
    sshape = storage_shape(t)
    k = storage_perm(t).index(axis)
    return (int(np.prod(sshape[:k], dtype=np.int64)), t.shape[axis],
            int(np.prod(sshape[k + 1:], dtype=np.int64)))


def reduce_layout(x, out, axes, keepdims: bool):
    """A reduction of x over `axes` into out, over the backends' storage: for each output
    element in out's storage order, its shape and the element strides in x of its kept axes
    (0 where a kept size-1 axis was reduced), then the reduced axes' sizes and strides in x,
    the most contiguous last."""
    xs = storage_strides(x)
    kept = [a for a in range(x.ndim) if a not in axes]
    out_axis_to_x = list(range(x.ndim)) if keepdims else kept
    perm = storage_perm(out)
    kept_shape = [out.shape[p] for p in perm] or [1]
    kept_strides = [0 if out_axis_to_x[p] in axes else xs[out_axis_to_x[p]]
                    for p in perm] or [0]
    red = sorted(axes, key=lambda a: -xs[a])
    return kept_shape, kept_strides, [x.shape[a] for a in red], [xs[a] for a in red]


def _permute(a, perm):
    return a.permute(*perm) if hasattr(a, "permute") else np.transpose(a, perm)


def to_storage(t, a):
    """A logical-layout array of tensor t as a view in its storage layout."""
    return _permute(a, NHWC) if t.ndim == 4 else a


def to_logical(t, a):
    """A storage-layout array of tensor t as a view in its logical layout."""
    return _permute(a, (0, 3, 1, 2)) if t.ndim == 4 else a


def coalesce(shape: list[int], strides: list[list[int]]):
    """Drop size-1 dims and merge neighbours that every array walks contiguously (the output
    itself is row-major over `shape`, so always mergeable)."""
    dims = [d for d in range(len(shape)) if shape[d] != 1] or [len(shape) - 1]
    out_shape, out_strides = [shape[dims[0]]], [[s[dims[0]]] for s in strides]
    for d in dims[1:]:
        if all(s[-1] == st[d] * shape[d] for s, st in zip(out_strides, strides)):
            out_shape[-1] *= shape[d]
            for s, st in zip(out_strides, strides):
                s[-1] = st[d]
        else:
            out_shape.append(shape[d])
            for s, st in zip(out_strides, strides):
                s.append(st[d])
    return out_shape, out_strides


def program_layout(prog, out) -> tuple[list[int], list[list[int]]]:
    """How a pointwise program over output tensor `out` walks memory: the output's storage dims
    (coalesced) and, per operand, its element strides over them (0 where broadcast; operand 0
    of an epilogue, the accumulator, is the output itself)."""
    perm = storage_perm(out) if out.ndim else (0,)
    own = list(storage_strides(out)) or [1]
    strides = []
    for o in prog.operands:
        if o.tensor is None:
            logical, axes = own, tuple(range(max(out.ndim, 1)))
        else:
            logical, axes = list(storage_strides(o.tensor)), (o.axes if out.ndim else ())
        per_axis = [logical[a] if a >= 0 else 0 for a in axes] or [0]
        strides.append([per_axis[p] for p in perm])
    return coalesce(list(storage_shape(out)) or [1], strides)


def affine_layout(x) -> tuple[list[int], list[int], list[int]]:
    """(shape, x's strides, a per-channel [C] vector's strides) over x's storage dims,
    coalesced: what a per-channel affine x·scale[c] + shift[c] walks (channels on axis 1)."""
    perm = storage_perm(x)
    own = storage_strides(x)
    chan = [1 if perm[k] == 1 else 0 for k in range(x.ndim)]
    shape, (xs, cs) = coalesce(list(storage_shape(x)), [[own[p] for p in perm], chan])
    return shape, xs, cs


def gather_layout(node, out):
    """A gather op's GatherSpec over the backends' storage: iterate over the output's elements
    in its storage order (contiguous writes). Returns (shape, out strides, maps per axis,
    per source its strides per axis and its base offset, the select axis or -1, the select map,
    fill); strides and offsets in elements."""
    from ..ops.shape import gather_spec
    spec = gather_spec(node)
    perm = storage_perm(out)
    if not perm:                                    # a scalar result: one dummy axis
        shape, out_strides, maps, axes = [1], [0], [np.zeros(1, np.int64)], [-1]
    else:
        own = storage_strides(out)
        shape = [out.shape[p] for p in perm]
        out_strides = [own[p] for p in perm]
        maps = [np.ascontiguousarray(spec.maps[p], np.int64) for p in perm]
        axes = [spec.axes[p] for p in perm]
    src_strides, src_bases = [], []
    for t in node.inputs:
        st = storage_strides(t)
        src_strides.append([st[a] if a >= 0 else 0 for a in axes])
        src_bases.append(sum(index * st[a] for a, index in spec.fixed))
    sel_axis = perm.index(spec.select_axis) if spec.select_axis >= 0 else -1
    return shape, out_strides, maps, src_strides, src_bases, sel_axis, spec.select, spec.fill
