"""Convolutions on the cpu backend (csrc/conv.cpp, csrc/conv_grad.cpp).

conv2d: NHWC implicit GEMM over a packed weight ([G][ceil(Kg/16)][R][S][Cg][16], packed at
compile and whenever the weight changes), with an inference batch norm folded into the weight
and bias and the fused epilogue: a residual add and a ReLU in registers, any other pointwise
chain right after each chunk of pixels is written (still in cache). Vertex table dims
(n, k, oh, ow, c, kh); a plan that splits c or kh runs the partial codelet, then reduce_partials
with the epilogue at the Reduce entry.

conv2d_backward_data: the transposed conv of dy (NHWC [N, OH, OW, K]) into dx (NHWC [N, H, W,
C]), the weight packed transposed ([G][ceil(Cg/16)][R][S][Kg][16]). Dims (n, c, ih, iw, k); a
split k is reduced as conv2d's split is.

conv2d_backward_weight: dw, stored [K, R, S, Cg] (the NHWC rule for a 4-D tensor), from x and
dy. Dims (k, c, kh, n, oh); n and oh are the reduction: a split plan writes one slab per
(n, oh) range start, reduced over the kept (k, c, kh) boxes, which as conv-order boxes of the
[K, R, S, Cg] array are (k0, k1, c0, c1, kh0, kh1, 0, S).
"""
from __future__ import annotations

import numpy as np

from ...ops.conv import WINOGRAD, winograd_fused_gain
from ...ops.norm import bn_scale_shift
from ...target import Target
from ..layout import storage_shape
from ..registry import lowering
from .common import C, Context, Kernel, check_array, packing
from .partials import SplitReduction, nonempty, split_kernel
from .pointwise import anchor_epilogue, program_epilogue, then_epilogue

CONV_DIMS = ("n", "k", "oh", "ow", "c", "kh")   # c: input channels within a group; kh: rows
DATA_DIMS = ("n", "c", "ih", "iw", "k")          # k: output channels within a group (reduced)
WEIGHT_DIMS = ("k", "c", "kh", "n", "oh")        # n, oh: reduced


def folded_weight_bias(ctx: Context, cs, w_t, b_t, out_axis: int):
    """The anchor's weight and bias with an inference batch_norm folded in:
    w' = w·scale (per output channel), b' = b·scale + shift."""
    w = np.asarray(ctx.value(w_t), dtype=np.float32)
    bn = cs.folded_bn
    if bn is None:                  # nothing to fold: the weight and bias as they are
        b = None if b_t is None else np.ascontiguousarray(ctx.value(b_t), dtype=np.float32)
        return np.ascontiguousarray(w), b
    w = w.astype(np.float64)
    k = w.shape[out_axis]
    b = np.zeros(k) if b_t is None else np.asarray(ctx.value(b_t), dtype=np.float64)
    gamma, beta, mean, var = (np.asarray(ctx.value(t), np.float64) for t in bn.inputs[1:])
    scale, shift = bn_scale_shift(gamma, beta, mean, var, bn.attrs["eps"])
    shape = [1] * w.ndim
    shape[out_axis] = k
    w = w * scale.reshape(shape)
    b = b * scale + shift
    return np.ascontiguousarray(w, np.float32), np.ascontiguousarray(b, np.float32)


def conv_weight(ctx: Context, w_t) -> tuple[np.ndarray, bool]:
    """A conv weight to pack and whether it is channels last: this executable's own storage
    ([K, R, S, Cg]) when it holds the current value (a trained weight), so packing reads it in
    place instead of first transposing a copy; else the logical value."""
    if ctx.exe.holds(w_t):
        return check_array(ctx.storage(w_t), storage_shape(w_t), "conv weight"), True
    return np.ascontiguousarray(ctx.value(w_t), dtype=np.float32), False


def weight_operands(cs, w_t, b_t) -> tuple:
    """The tensors a gemm / conv kernel packs: weight, bias, folded batch-norm parameters."""
    bn = tuple(cs.folded_bn.inputs[1:]) if cs.folded_bn is not None else ()
    return tuple(t for t in (w_t, b_t, *bn) if t is not None)


def reduce_boxes(cs, pad: int = 0, extra=None) -> np.ndarray | None:
    """The Reduce entry's boxes in conv order (None without one)."""
    if cs.reduce is None:
        return None
    boxes = np.asarray(cs.reduce.vertices, np.int32)
    if extra is not None:
        boxes = np.concatenate([boxes, np.tile(np.asarray(extra, np.int32), (len(boxes), 1))],
                               axis=1)
    elif pad:
        boxes = np.concatenate([boxes, np.tile(np.array([0, 1] * pad, np.int32),
                                               (len(boxes), 1))], axis=1)
    return np.ascontiguousarray(boxes)


@lowering("conv2d", backend="cpu")
def conv2d_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    x_t, w_t = node.inputs[0], node.inputs[1]
    b_t = node.inputs[2] if len(node.inputs) > 2 else None
    k, cg, r, s = w_t.shape
    a = node.attrs
    groups = a["groups"]
    what = f"conv2d '{node.name}'"
    x = ctx.array(x_t, f"{what} input")
    out = ctx.array(cs.output, f"{what} output")
    res, relu, epi = anchor_epilogue(ctx, cs, out)
    if res is not None:
        res = check_array(res, out.shape, f"{what} residual")
    n, oh, ow, _ = out.shape
    if cs.method in WINOGRAD:
        return _winograd(ctx, cs, x, out, res, relu, epi, WINOGRAD[cs.method][0])
    cols = nonempty(cs.table(*CONV_DIMS, extents=(n, k, oh, ow, cg, r)), 8, (cg, r))
    red = cols[:, 8:12]
    split = not ((red[:, 0] == 0) & (red[:, 1] == cg) & (red[:, 2] == 0) & (red[:, 3] == r)).all()
    packed = {}

    def prepare():
        if cs.folded_bn is None and b_t is None:
            w, channels_last = conv_weight(ctx, w_t)
            packed["w"] = C.pack_conv_weight(w, groups, channels_last, into=packed.get("w"))
            packed["b"] = None
            return
        w, b = folded_weight_bias(ctx, cs, w_t, b_t, out_axis=0)
        packed["w"] = C.pack_conv_weight(w, groups, into=packed.get("w"))
        packed["b"] = b

    (sh, sw), (ph, pw), (dh, dw) = a["stride"], a["padding"], a["dilation"]
    geom = (k, r, s, sh, sw, ph, pw, dh, dw, groups)
    packs = weight_operands(cs, w_t, b_t)
    dynamic = not ctx.is_static(*packs)
    if not split:
        verts = np.ascontiguousarray(cols[:, :8])

        def run():
            C.conv2d_nhwc(x, packed["w"], packed["b"], res, out, verts, *geom, relu, epi)
        return Kernel(node.name, run, **packing(prepare, packs, dynamic))
    sr = SplitReduction(reduce_boxes(cs), cols[:, :8], red, out.shape, cg * r, what)
    table, rverts = sr.table(), sr.reduce_vertices
    partials = np.zeros((sr.num_slabs, *out.shape), np.float32)
    return split_kernel(cs, lambda: C.conv2d_nhwc_partial(x, packed["w"], partials, table, *geom),
                        lambda: C.reduce_partials(partials, packed["b"], res, out, rverts, relu,
                                                  epi),
                        **packing(prepare, packs, dynamic), partials=partials)


def winograd_in_vertex(method: str, verts: np.ndarray, c: int, trained: bool) -> bool:
    """Whether the Winograd conv with these vertex boxes (n, k, oh, ow column pairs) transforms
    its weights inside each vertex (csrc/winograd.cpp, weights other than 'U') rather than
    reading a precomputed U: ops/conv.py's winograd_fused_gain summed over the vertices, with
    a trained weight's pass that rewrites U each step; c: the reduction channels."""
    m = WINOGRAD[method][0]
    v = np.asarray(verts, np.int64)
    tiles = (v[:, 1] - v[:, 0]) * (-(-v[:, 5] // m) - v[:, 4] // m) * (-(-v[:, 7] // m) - v[:, 6] // m)
    host = Target.host()
    mpb = host.macs_per_cycle / host.spill_bytes_per_cycle
    _, which, count = np.unique(v[:, 2:4], axis=0, return_inverse=True, return_counts=True)
    gain = winograd_fused_gain(method, tiles, v[:, 3] - v[:, 2], c, mpb,
                               weight_passes=float(trained), sharing=count[which.reshape(-1)])
    return bool(np.isfinite(gain).all() and gain.sum() > 0)


def _winograd(ctx: Context, cs, x, out, res, relu, epi, tile: int) -> Kernel:
    """conv2d by F(tile x tile, 3x3) (csrc/winograd.cpp): the weights transformed at compile
    (and again whenever they change) -- or, where each vertex transforms them cheaper than it
    would read U (winograd_in_vertex), their taps: a trained weight's own storage, else packed
    --, the vertex boxes as the planner split them."""
    node = cs.anchor
    w_t = node.inputs[1]
    b_t = node.inputs[2] if len(node.inputs) > 2 else None
    k = w_t.shape[0]
    ph, pw = node.attrs["padding"]
    verts = cs.table("n", "k", "oh", "ow")
    packs = weight_operands(cs, w_t, b_t)
    dynamic = not ctx.is_static(*packs)
    in_vertex = winograd_in_vertex(cs.method, verts, x.shape[3], dynamic)
    packed = {"form": "U"}

    def prepare():
        if cs.folded_bn is None and b_t is None:
            (w, channels_last), b = conv_weight(ctx, w_t), None
        else:
            (w, b), channels_last = folded_weight_bias(ctx, cs, w_t, b_t, out_axis=0), False
        if in_vertex and channels_last:         # a trained weight: its own storage, as it is
            packed["u"], packed["form"] = w, "storage"
        elif in_vertex:
            packed["u"], packed["form"] = C.pack_conv_weight(w, 1, into=packed.get("u")), "taps"
        else:
            packed["u"] = C.winograd_weights(w, channels_last, tile, into=packed.get("u"))
        packed["b"] = b

    def run():
        C.conv2d_winograd(x, packed["u"], packed["b"], res, out, verts, k, ph, pw, relu, epi,
                          tile, packed["form"])
    return Kernel(node.name, run, **packing(prepare, packs, dynamic))


def _geom(a) -> tuple:
    (sh, sw), (ph, pw), (dh, dw) = a["stride"], a["padding"], a["dilation"]
    return sh, sw, ph, pw, dh, dw, a["groups"]


@lowering("conv2d_backward_data", backend="cpu")
def conv2d_backward_data_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    dy_t, w_t = node.inputs[0], node.inputs[1]
    k, cg, r, s = w_t.shape
    a = node.attrs
    groups = a["groups"]
    kg = k // groups
    what = f"conv2d_backward_data '{node.name}'"
    dy = ctx.array(dy_t, f"{what} dy")
    out = ctx.array(cs.output, f"{what} output")
    epi = program_epilogue(ctx, cs)
    n, h, wd, c = out.shape
    cols = nonempty(cs.table(*DATA_DIMS, extents=(n, c, h, wd, kg)), 8, (kg,))
    split = not ((cols[:, 8] == 0) & (cols[:, 9] == kg)).all()
    geom = (cg, r, s, *_geom(a))
    packed = {}
    dynamic = not ctx.is_static(w_t)
    if cs.method in WINOGRAD:
        # dx = conv(dy, w flipped and transposed) with pads 2 - p (ops/conv.py _bwd_data_spaces)
        tile = WINOGRAD[cs.method][0]
        ph, pw = a["padding"]
        verts = cs.table("n", "c", "ih", "iw")

        in_vertex = winograd_in_vertex(cs.method, verts, dy.shape[3], dynamic)

        packed["form"] = "U"

        def prepare_u():
            w, channels_last = conv_weight(ctx, w_t)
            if in_vertex and channels_last:     # a trained weight: its own storage, as it is
                packed["u"], packed["form"] = w, "storage_flipped"
            elif in_vertex:
                packed["u"], packed["form"] = C.pack_conv_data_weight(
                    w, 1, False, into=packed.get("u")), "taps_flipped"
            else:
                packed["u"] = C.winograd_weights(w, channels_last, tile, transposed=True,
                                                 into=packed.get("u"))

        return Kernel(node.name,
                      lambda: C.conv2d_winograd(dy, packed["u"], None, None, out, verts, c,
                                                2 - ph, 2 - pw, False, epi, tile,
                                                packed["form"]),
                      **packing(prepare_u, (w_t,), dynamic))

    def prepare():
        w, channels_last = conv_weight(ctx, w_t)
        packed["w"] = C.pack_conv_data_weight(w, groups, channels_last, into=packed.get("w"))

    if not split:
        verts = np.ascontiguousarray(cols[:, :10])
        run = then_epilogue(
            lambda: C.conv2d_backward_data_nhwc(dy, packed["w"], out, verts, *geom), epi, out)
        return Kernel(node.name, run, **packing(prepare, (w_t,), dynamic))
    sr = SplitReduction(reduce_boxes(cs), cols[:, :8], cols[:, 8:10], out.shape, kg, what)
    table, rverts = sr.table(), sr.reduce_vertices
    partials = np.zeros((sr.num_slabs, *out.shape), np.float32)
    return split_kernel(cs, lambda: C.conv2d_backward_data_nhwc_partial(dy, packed["w"], partials,
                                                                        table, *geom),
                        lambda: C.reduce_partials(partials, None, None, out, rverts, False, epi),
                        **packing(prepare, (w_t,), dynamic), partials=partials)


@lowering("conv2d_backward_weight", backend="cpu")
def conv2d_backward_weight_cpu(ctx: Context, cs) -> Kernel:
    node = cs.anchor
    x_t, dy_t = node.inputs[0], node.inputs[1]
    kk, cg, r, s = cs.output.shape
    a = node.attrs
    what = f"conv2d_backward_weight '{node.name}'"
    x = ctx.array(x_t, f"{what} x")
    dy = ctx.array(dy_t, f"{what} dy")
    out = check_array(ctx.storage(cs.output), storage_shape(cs.output), f"{what} output")
    epi = program_epilogue(ctx, cs)
    n, oh = dy.shape[0], dy.shape[1]
    if cs.method == "winograd2x2":      # csrc/winograd_grad.cpp: every tile per vertex
        verts = cs.table("k", "c")
        ph, pw = a["padding"]
        return Kernel(node.name, then_epilogue(
            lambda: C.conv2d_backward_weight_winograd(x, dy, out, verts, ph, pw), epi, out))
    cols = nonempty(cs.table(*WEIGHT_DIMS, extents=(kk, cg, r, n, oh)), 6, (n, oh))
    red = cols[:, 6:10]
    split = not ((red[:, 0] == 0) & (red[:, 1] == n) & (red[:, 2] == 0) & (red[:, 3] == oh)).all()
    geom = (r, s, *_geom(a))
    if not split:
        verts = np.ascontiguousarray(cols[:, :10])
        return Kernel(node.name, then_epilogue(
            lambda: C.conv2d_backward_weight_nhwc(x, dy, out, verts, *geom), epi, out))
    # Conv-order boxes of the [K, R, S, Cg] array: (k0, k1, c0, c1, kh0, kh1, 0, S).
    full_s = np.tile(np.array([0, s], np.int32), (len(cols), 1))
    boxes = np.concatenate([cols[:, :6], full_s], axis=1)
    sr = SplitReduction(reduce_boxes(cs, extra=(0, s)), boxes, red, out.shape, n * oh, what)
    t = sr.table()                                     # box (8), n0, n1, oh0, oh1, slab
    table = np.ascontiguousarray(t[:, [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12]])
    rverts = sr.reduce_vertices
    partials = np.zeros((sr.num_slabs, *out.shape), np.float32)
    return split_kernel(cs, lambda: C.conv2d_backward_weight_nhwc_partial(x, dy, partials, table,
                                                                          *geom),
                        lambda: C.reduce_partials(partials, None, None, out, rverts, False, epi),
                        partials=partials)
