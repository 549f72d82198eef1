"""CPU lowerings of the convolution backward ops (csrc/conv_grad.cpp).

conv2d_backward_data: the transposed conv of dy (NHWC [N, OH, OW, K]) into dx (NHWC
[N, H, W, C]). The weight is packed transposed ([G][ceil(Cg/16)][R][S][Kg][16]) in prepare(),
at compile and whenever its value changes; a weight computed at run time, or a variable that a
training step updates, makes the Kernel dynamic (repacked before every run: cheap next to the
conv). Space dims (n, c, ih, iw, k); a plan that splits k (the reduction) runs the partial
codelet into one slab per k range and sums the slabs with reduce_partials over the planner's
reduce_vertices, as conv2d's split path does.

conv2d_backward_weight: dw, stored [K, R, S, Cg] (the NHWC rule for a 4-D tensor), from x and
dy. Space dims (k, c, kh, n, oh); n and oh are the reduction: a split plan writes one slab per
(n, oh) range start, reduced over the kept (k, c, kh) boxes, which as conv-order boxes of the
[K, R, S, Cg] array are (k0, k1, c0, c1, kh0, kh1, 0, S).
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from .cpu import (Kernel, _C, _columns, _nonempty, _SplitReduction, check_array,
                  storage_shape)
from .registry import lowering

DATA_DIMS = ("n", "c", "ih", "iw", "k")          # k: output channels within a group (reduced)
WEIGHT_DIMS = ("k", "c", "kh", "n", "oh")        # n, oh: reduced


def _geom(a) -> tuple:
    (sh, sw), (ph, pw), (dh, dw) = a["stride"], a["padding"], a["dilation"]
    return sh, sw, ph, pw, dh, dw, a["groups"]


@lowering("conv2d_backward_data", backend="cpu")
def conv2d_backward_data_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    dy_t, w_t = node.inputs[0], node.inputs[1]
    k, cg, r, s = w_t.shape
    a = node.attrs
    groups = a["groups"]
    kg = k // groups
    what = f"conv2d_backward_data '{node.name}'"
    dy = check_array(ctx.storage(dy_t), storage_shape(dy_t), f"{what} dy")
    out = check_array(ctx.storage(node.output), storage_shape(node.output), f"{what} output")
    n, h, wd, c = out.shape
    cols = _nonempty(_columns(cs, DATA_DIMS, (n, c, h, wd, kg), what), 8, (kg,))
    split = not ((cols[:, 8] == 0) & (cols[:, 9] == kg)).all()
    geom = (cg, r, s, *_geom(a))
    packed = {}

    def prepare():
        w = np.ascontiguousarray(ctx.value(w_t), dtype=np.float32)
        packed["w"] = _C.pack_conv_data_weight(w, groups)

    partials = None
    if not split:
        verts = np.ascontiguousarray(cols[:, :10])

        def run():
            _C.conv2d_backward_data_nhwc(dy, packed["w"], out, verts, *geom)
    else:
        sr = _SplitReduction(cs, cols[:, :8], cols[:, 8:10], out.shape, kg, what)
        table, rverts = sr.table(), sr.reduce_vertices
        partials = np.zeros((sr.num_slabs, *out.shape), np.float32)

        def run():
            _C.conv2d_backward_data_nhwc_partial(dy, packed["w"], partials, table, *geom)
            _C.reduce_partials(partials, None, None, out, rverts, False)

    return Kernel(node.name, run, prepare, dynamic=not ctx.is_static(w_t), partials=partials)


@lowering("conv2d_backward_weight", backend="cpu")
def conv2d_backward_weight_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    x_t, dy_t = node.inputs[0], node.inputs[1]
    kk, cg, r, s = node.output.shape
    a = node.attrs
    what = f"conv2d_backward_weight '{node.name}'"
    x = check_array(ctx.storage(x_t), storage_shape(x_t), f"{what} x")
    dy = check_array(ctx.storage(dy_t), storage_shape(dy_t), f"{what} dy")
    out = check_array(ctx.storage(node.output), (kk, r, s, cg), f"{what} output")
    n, oh = dy.shape[0], dy.shape[1]
    cols = _nonempty(_columns(cs, WEIGHT_DIMS, (kk, cg, r, n, oh), what), 6, (n, oh))
    red = cols[:, 6:10]
    split = not ((red[:, 0] == 0) & (red[:, 1] == n) & (red[:, 2] == 0) & (red[:, 3] == oh)).all()
    geom = (r, s, *_geom(a))
    partials = None
    if not split:
        verts = np.ascontiguousarray(cols[:, :10])

        def run():
            _C.conv2d_backward_weight_nhwc(x, dy, out, verts, *geom)
    else:
        # Conv-order boxes of the [K, R, S, Cg] array: (k0, k1, c0, c1, kh0, kh1, 0, S).
        full_s = np.tile(np.array([0, s], np.int32), (len(cols), 1))
        boxes = np.concatenate([cols[:, :6], full_s], axis=1)
        rv = getattr(getattr(cs, "step", None), "reduce_vertices", None)
        if rv is not None:
            rv = np.asarray(rv, np.int32)
            if rv.ndim == 2 and rv.shape[1] == 6:         # the kept dims (k, c, kh)
                rv = np.concatenate([rv, np.tile(np.array([0, s], np.int32), (len(rv), 1))],
                                    axis=1)
        shim = SimpleNamespace(step=SimpleNamespace(reduce_vertices=rv))
        sr = _SplitReduction(shim, boxes, red, out.shape, n * oh, what)
        t = sr.table()                                     # box (8), n0, n1, oh0, oh1, slab
        table = np.ascontiguousarray(t[:, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12]])
        rverts = sr.reduce_vertices
        partials = np.zeros((sr.num_slabs, *out.shape), np.float32)

        def run():
            _C.conv2d_backward_weight_nhwc_partial(x, dy, partials, table, *geom)
            _C.reduce_partials(partials, None, None, out, rverts, False)

    return Kernel(node.name, run, partials=partials)
