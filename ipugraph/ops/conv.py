"""conv2d: shape rule, NumPy reference, cost and tiling space, all in one place.

Layout is NCHW for activations and [K, C/groups, R, S] for weights, as in torch; backends may
store other layouts internally (the CPU backend keeps activations NHWC).
"""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from ..space import Region
from .registry import (Cost, Dim, Space, defop, expect_float, expect_rank, fail, grad_name,
                       pair)


def conv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _conv2d_infer(node, inputs, attrs):
    op = "conv2d"
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    expect_rank(op, node, "x", x, (4,))
    expect_rank(op, node, "weight", w, (4,))
    tensors = {"x": x, "weight": w} | ({"bias": bias} if bias is not None else {})
    dtype = expect_float(op, node, **tensors)
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    groups = attrs["groups"]
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise fail(op, node, f"groups must be a positive int, got {groups!r}")
    if c % groups or k % groups:
        raise fail(op, node, f"in-channels {c} and out-channels {k} must both be divisible by "
                   f"groups={groups}", x=x, weight=w)
    if cg * groups != c:
        raise fail(op, node, f"x has {c} channels but weight expects {cg}×groups({groups}) = "
                   f"{cg * groups}", x=x, weight=w)
    if bias is not None and bias.shape != (k,):
        raise fail(op, node, f"bias must have shape ({k},) to match the weight's out-channels",
                   weight=w, bias=bias)
    sh, sw = attrs["stride"]
    ph, pw = attrs["padding"]
    dh, dw = attrs["dilation"]
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise fail(op, node, f"stride {attrs['stride']} and dilation {attrs['dilation']} must be "
                   f">= 1 and padding {attrs['padding']} >= 0")
    oh, ow = conv_out_size(h, r, sh, ph, dh), conv_out_size(wd, s, sw, pw, dw)
    if oh < 1 or ow < 1:
        raise fail(op, node, f"the (dilated) {r}x{s} kernel does not fit the padded "
                   f"{h + 2 * ph}x{wd + 2 * pw} input (output would be {oh}x{ow})", x=x, weight=w)
    return [((n, k, oh, ow), dtype)]


def _conv2d_cost(node) -> Cost:
    w = node.inputs[1]
    n, k, oh, ow = node.output.shape
    macs = n * k * oh * ow * w.shape[1] * w.shape[2] * w.shape[3]
    extra = n * k * oh * ow if len(node.inputs) > 2 else 0
    return Cost(macs, 2 * macs + extra, sum(t.nbytes for t in node.inputs), node.output.nbytes)


def _conv2d_space(node, target) -> Space:
    """Split over batch, output channels, output rows and columns (the field), and, as PopLibs'
    conv planner also does, over input channels (within a group) and kernel rows: those two make
    partial sums that a reduction step adds up."""
    x, w = node.inputs[0], node.inputs[1]
    _, c, h, wd = x.shape
    k_total, cg, r, s = w.shape
    kg = k_total // node.attrs["groups"]
    sh, sw = node.attrs["stride"]
    dh, dw = node.attrs["dilation"]
    ph, pw = node.attrs["padding"]
    item = x.itemsize
    n, k, oh, ow = node.output.shape
    block = target.conv_pixel_block

    def slice_cost(sizes):
        sn, sk, soh, sow, sc, skh = (sizes[..., i] for i in range(6))
        # The codelet computes `block` output pixels of a row at a time: a ragged row pays for
        # the whole last block.
        macs = sn * sk * soh * (-(-sow // block) * block) * (sc * skh * s) \
            / target.block_efficiency(sk)
        rows_in = np.minimum((soh - 1) * sh + (skh - 1) * dh + 1, h + 2 * ph)
        cols_in = np.minimum((sow - 1) * sw + (s - 1) * dw + 1, wd + 2 * pw)
        groups_spanned = np.minimum(-(-sk // kg) + (kg % 16 != 0), c // cg)
        x_bytes = sn * np.minimum(c, groups_spanned * sc) * rows_in * cols_in * item
        w_bytes = sk * (sc * skh * s + 1) * item
        return macs, x_bytes, w_bytes, sn * sk * soh * sow * item

    def boxes(table):
        n0, n1, k0, k1, oh0, oh1, ow0, ow1, c0, c1, r0, r1 = table.T.astype(np.int64)
        out = Region.boxes(np.stack([n0, k0, oh0, ow0], 1), np.stack([n1, k1, oh1, ow1], 1))
        g0, g1 = k0 // kg, (k1 - 1) // kg
        ih0 = np.clip(oh0 * sh - ph + r0 * dh, 0, h)
        ih1 = np.clip((oh1 - 1) * sh - ph + (r1 - 1) * dh + 1, 0, h)
        iw0 = np.clip(ow0 * sw - pw, 0, wd)
        iw1 = np.clip((ow1 - 1) * sw - pw + (s - 1) * dw + 1, 0, wd)
        xin = Region.boxes(np.stack([n0, g0 * cg + c0, ih0, iw0], 1),
                           np.stack([n1, g1 * cg + c1, ih1, iw1], 1))
        zero, full_s = np.zeros_like(k0), np.full_like(k0, s)
        win = Region.boxes(np.stack([k0, c0, r0, zero], 1), np.stack([k1, c1, r1, full_s], 1))
        ins = [(x, xin), (w, win)]
        if len(node.inputs) > 2:
            ins.append((node.inputs[2], Region.boxes(k0[:, None], k1[:, None])))
        return out, ins

    return Space((Dim("n", n), Dim("k", k, target.channel_grain), Dim("oh", oh), Dim("ow", ow),
                  Dim("c", cg, target.channel_grain), Dim("kh", r)), slice_cost, boxes,
                 reduce_dims=("c", "kh"), codelet="supervisor", rate="macs")


# Winograd F(m x m, 3x3), m = 4 or 2, on the host (csrc/winograd.cpp). Per tile size: the
# positions a^2 (a = m + 2) and the transform costs in MAC-equivalents per tile -- the input
# transform per 16 input channels, the inverse transform and epilogue per 16 output channels --
# fitted to the codelet's times on 2 threads of this project's AVX-512 machine (tiles x C x K
# swept from 16 to 128 channels: ~470 and ~280 cycles for F(4x4)).
WINOGRAD = {  # method: (m, positions, input transform, output transform)
    "winograd4x4": (4, 36, 15000, 9000),
    "winograd2x2": (2, 16, 6000, 3500),
}
WINO_V_BUDGET = 1 << 20          # bytes of V a tile block keeps in L2 (csrc/winograd.cpp)


def _winograd_geometry(a, kernel, *operands) -> bool:
    """3x3, stride 1, no dilation, one group, pads <= 2, float32 operands."""
    return (tuple(kernel) == (3, 3) and a["stride"] == (1, 1) and a["dilation"] == (1, 1)
            and a["groups"] == 1 and max(a["padding"]) <= 2
            and all(t.dtype == "float32" for t in operands))


def _whole_boxes(direct: Space, whole):
    """boxes() of a Winograd space: its table rows completed with `whole` (the direct space's
    remaining dims, taken whole) for the direct space's boxes."""
    def boxes(table):
        rest = np.tile(np.asarray(whole, table.dtype), (len(table), 1))
        return direct.boxes(np.concatenate([table, rest], axis=1))
    return boxes


def winograd_applies(node) -> bool:
    """F(m x m, 3x3) computes this conv (or this backward-data: inputs dy, w)."""
    return _winograd_geometry(node.attrs, node.inputs[1].shape[2:], *node.inputs[:2])


def winograd_traffic(tiles, kv, c: int, positions: int = 36, item: int = 4):
    """Bytes a Winograd vertex of `tiles` tiles and `kv` output channels streams beyond one
    pass over its transformed weights U, as the codelet's tile blocking does (csrc/winograd.cpp,
    tile_block): none while U or all the tiles fit a block in L2; else U once more per extra
    block of tiles, or, taking every tile at once, V re-read per 64 output channels."""
    cp = -(-c // 16) * 16
    v_tile = positions * cp * item                       # V bytes per tile
    tiles = np.asarray(tiles, np.float64)
    small = float(np.clip(WINO_V_BUDGET // v_tile, 6, 48))
    u = positions * c * (-(-np.asarray(kv) // 16) * 16) * item
    every = np.maximum(6.0, np.minimum(tiles, float((16 << 20) // v_tile)))
    cost_small = np.ceil(tiles / small) * u
    cost_all = np.ceil(tiles / every) * u + np.ceil(np.asarray(kv) / 64) * v_tile * tiles
    extra = np.minimum(cost_small, cost_all) - u
    return np.where((tiles <= small) | (u <= WINO_V_BUDGET), 0.0, extra)


# Transforming the weights inside the vertex (csrc/winograd.cpp, weights other than 'U') instead
# of reading a precomputed U: the vertex reads the 9 taps (U is a^2 / 9 of that: 1.8x for
# F(2x2), 4x for F(4x4)) and spends these MAC-equivalents per (input channel, 16 output
# channels) on G g G^T and on writing and re-reading its block of U in L2 -- measured with warm
# caches on ResNet-34's layers 3 and 4 at batch 1, 2 threads (~220 and ~70 cycles).
# Only for a vertex of at most 48 tiles: with more, the partial sums of the channel blocks (M)
# and V outgrow L2 and it measured slower (ResNet-34's layer 3 at batch 8: 128 tiles a vertex).
WINO_WEIGHT_MACS = {"winograd4x4": 7000, "winograd2x2": 2300}


def winograd_fused_gain(method: str, tiles, kv, c: int, macs_per_byte: float, item: int = 4,
                        weight_passes: float = 0.0, sharing=1):
    """MAC-equivalents a Winograd vertex of `tiles` tiles and `kv` output channels saves by
    transforming its weights itself rather than reading U (> 0: transform in the vertex; -inf
    for a vertex of more than 48 tiles, or whose output channels `sharing` > 1 vertices share:
    each would repeat the transform, where U is read once from memory and then from cache --
    batch 8 inference measured 5 % slower). weight_passes: how often per run U would be
    rewritten besides (1 for a weight the step trains: its prepare writes U each step, where
    packing the taps writes 9 / a^2 of it)."""
    _, positions, _, _ = WINOGRAD[method]
    tiles = np.asarray(tiles, np.float64)
    kb = -(-np.asarray(kv, np.float64) // 16)
    small = 48.0                    # the codelet's largest L2 block of tiles (tile_block)
    u = positions * c * kb * 16 * item
    taps = 9 * c * kb * 16 * item
    unfused = (u + weight_passes * (u - taps)) * macs_per_byte
    fused = taps * macs_per_byte + kb * c * WINO_WEIGHT_MACS[method]
    return np.where((tiles <= small) & (np.asarray(sharing) <= 1), unfused - fused, -np.inf)


def _winograd_space(target, direct: Space, method: str, x, out_shape, whole) -> Space:
    """A 3x3 stride-1 conv of x [N, C, H, W] into out_shape [N, K, OH, OW] by F(m x m, 3x3):
    split over batch, output channels and whole m x m output tiles (no partial sums: each tile
    needs every input channel). `whole` completes a table row for the direct space's boxes
    (its reduction dims, taken whole)."""
    m, positions, in_macs, out_macs = WINOGRAD[method]
    _, c, h, wd = x.shape
    item = x.itemsize
    n, k, oh, ow = out_shape
    cp = -(-c // 16) * 16
    macs_per_byte = target.macs_per_cycle / target.spill_bytes_per_cycle

    def slice_cost(sizes):
        sn, sk, soh, sow = (sizes[..., i] for i in range(4))
        tiles = sn * -(-soh // m) * -(-sow // m)
        kb = -(-sk // 16)
        gemm = -(-tiles // 6) * 6 * positions * c * kb * 16 / target.block_efficiency(sk)
        transforms = tiles * (cp // 16 * in_macs + kb * out_macs)
        stream = winograd_traffic(tiles, sk, c, positions, item) * macs_per_byte
        x_bytes = sn * np.minimum(soh + 2, h) * np.minimum(sow + 2, wd) * c * item
        u_bytes = positions * c * kb * 16 * item
        # the vertex transforming its own weights where that is cheaper: it streams the taps
        sharing = -(-n // sn) * -(-oh // soh) * -(-ow // sow)
        gain = winograd_fused_gain(method, tiles, sk, c, macs_per_byte, item, sharing=sharing)
        fused = gain > 0
        work = gemm + transforms + np.where(fused, stream + u_bytes * macs_per_byte - gain -
                                            9 / positions * u_bytes * macs_per_byte, stream)
        w_bytes = np.where(fused, 9 / positions * u_bytes, u_bytes)
        return work, x_bytes, w_bytes, sn * sk * soh * sow * item

    return Space((Dim("n", n), Dim(direct.dims[1].name, k, target.channel_grain),
                  Dim(direct.dims[2].name, oh, m), Dim(direct.dims[3].name, ow, m)),
                 slice_cost, _whole_boxes(direct, whole), codelet="supervisor", rate="macs",
                 method=method)


def _conv2d_spaces(node, target):
    """Direct convolution everywhere; on the host also Winograd where it applies (PopLibs'
    IPU planner has no Winograd method, so IPU plans stay comparable with Graphcore's)."""
    direct = _conv2d_space(node, target)
    if target.memory_is_cache and winograd_applies(node):
        x, w = node.inputs[0], node.inputs[1]
        whole = (0, w.shape[1], 0, w.shape[2])           # all of c and kh
        return [direct] + [_winograd_space(target, direct, m, x, node.output.shape, whole)
                           for m in WINOGRAD]
    return [direct]


@defop("conv2d", infer=_conv2d_infer, cost=_conv2d_cost, space=_conv2d_spaces,
       attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1})
def conv2d_op(x, w, bias=None, *, stride, padding, dilation, groups):
    """out[n,k,i,j] = bias[k] + sum_{c,r,s} xpad[n, g*Cg+c, i*sh+r*dh, j*sw+s*dw] * w[k,c,r,s]."""
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = conv_out_size(h, r, sh, ph, dh), conv_out_size(wd, s, sw, pw, dw)
    kg = k // groups
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    xg = xp.reshape(n, groups, cg, h + 2 * ph, wd + 2 * pw)
    wg = w.reshape(groups, kg, cg, r, s)
    out = np.zeros((groups, n * oh * ow, kg), dtype=np.result_type(x, w))
    for i in range(r):
        for j in range(s):
            patch = xg[:, :, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                       j * dw: j * dw + sw * (ow - 1) + 1: sw]          # n, g, cg, oh, ow
            cols = patch.transpose(1, 0, 3, 4, 2).reshape(groups, n * oh * ow, cg)
            out += cols @ wg[:, :, :, i, j].transpose(0, 2, 1)         # g, n*oh*ow, kg
    out = out.reshape(groups, n, oh, ow, kg).transpose(1, 0, 4, 2, 3).reshape(n, k, oh, ow)
    if bias is not None:
        out = out + bias.reshape(1, k, 1, 1)
    return out


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1, name: str | None = None) -> Tensor:
    """2-D convolution (cross-correlation, as torch.nn.functional.conv2d), NCHW."""
    node = name or "conv2d"
    attrs = dict(stride=pair(stride, "stride", "conv2d", node),
                 padding=pair(padding, "padding", "conv2d", node),
                 dilation=pair(dilation, "dilation", "conv2d", node), groups=groups)
    inputs = (x, weight) if bias is None else (x, weight, bias)
    return conv2d_op(*inputs, name=name, **attrs)


# -- backward ---------------------------------------------------------------------------------

def _conv_geometry(attrs):
    return attrs["stride"], attrs["padding"], attrs["dilation"], attrs["groups"]


def _bwd_data_infer(node, inputs, attrs):
    op = "conv2d_backward_data"
    dy, w = inputs
    expect_rank(op, node, "dy", dy, (4,))
    expect_rank(op, node, "weight", w, (4,))
    dtype = expect_float(op, node, dy=dy, weight=w)
    (sh, sw), (ph, pw), (dh, dw), groups = _conv_geometry(attrs)
    h, wd = attrs["input_size"]
    k, cg, r, s = w.shape
    if dy.shape[1] != k or k % groups:
        raise fail(op, node, f"dy has {dy.shape[1]} channels, the weight has {k} out-channels "
                   f"(groups={groups})", dy=dy, weight=w)
    if (conv_out_size(h, r, sh, ph, dh), conv_out_size(wd, s, sw, pw, dw)) != dy.shape[2:]:
        raise fail(op, node, f"input_size {(h, wd)} does not give dy's {dy.shape[2:]} output "
                   "under this stride/padding/dilation", dy=dy, weight=w)
    return [((dy.shape[0], cg * groups, h, wd), dtype)]


def _bwd_weight_infer(node, inputs, attrs):
    op = "conv2d_backward_weight"
    x, dy = inputs
    expect_rank(op, node, "x", x, (4,))
    expect_rank(op, node, "dy", dy, (4,))
    dtype = expect_float(op, node, x=x, dy=dy)
    (sh, sw), (ph, pw), (dh, dw), groups = _conv_geometry(attrs)
    r, s = attrs["kernel"]
    n, c, h, wd = x.shape
    if dy.shape[0] != n or c % groups or dy.shape[1] % groups:
        raise fail(op, node, f"x and dy must share the batch and have channels divisible by "
                   f"groups={groups}", x=x, dy=dy)
    if (conv_out_size(h, r, sh, ph, dh), conv_out_size(wd, s, sw, pw, dw)) != dy.shape[2:]:
        raise fail(op, node, f"a {r}x{s} kernel over x's {h}x{wd} does not give dy's "
                   f"{dy.shape[2:]} output", x=x, dy=dy)
    return [((dy.shape[1], c // groups, r, s), dtype)]


def _bwd_cost(node) -> Cost:
    dy = node.inputs[0] if node.op.name == "conv2d_backward_data" else node.inputs[1]
    kernel = (node.inputs[1].shape if node.op.name == "conv2d_backward_data"
              else node.output.shape)
    macs = dy.size * kernel[1] * kernel[2] * kernel[3]
    return Cost(macs, 2 * macs, sum(t.nbytes for t in node.inputs), node.output.nbytes)


def _bwd_data_space(node, target) -> Space:
    """Split over the batch, input channels and input rows/columns of dx (what a tile writes)
    and over the output channels k of a group (partial sums reduced afterwards), as PopLibs
    plans the backward pass: a convolution of dy with the flipped, transposed weights."""
    dy, w = node.inputs
    (sh, sw), (ph, pw), (dh, dw), groups = _conv_geometry(node.attrs)
    k_total, cg, r, s = w.shape
    kg = k_total // groups
    n, c, h, wd = node.output.shape
    oh, ow = dy.shape[2:]
    item = dy.itemsize

    def dy_range(lo, hi, stride, pad, dil, kern, limit):
        # dy rows whose windows touch dx rows [lo, hi)
        a = np.clip(-(-(lo + pad - (kern - 1) * dil) // stride), 0, limit)
        b = np.clip((hi - 1 + pad) // stride + 1, 0, limit)
        return a, np.maximum(a, b)

    def slice_cost(sizes):
        sn, sc, sih, siw, sk = (sizes[..., i] for i in range(5))
        # each dx pixel receives about (R/sh)*(S/sw) taps
        taps = max(1.0, r / sh) * max(1.0, s / sw)
        macs = sn * sc * sih * siw * sk * taps
        rows = np.minimum(-(-sih // sh) + r, oh)
        cols = np.minimum(-(-siw // sw) + s, ow)
        spanned = np.minimum(-(-sc // cg) + (cg % 16 != 0), groups)
        dy_b = sn * np.minimum(k_total, spanned * sk) * rows * cols * item
        w_b = sc * sk * r * s * item
        return macs.astype(np.float64), dy_b, w_b, sn * sc * sih * siw * item

    def boxes(table):
        n0, n1, c0, c1, h0, h1, w0, w1, k0, k1 = table.T.astype(np.int64)
        out = Region.boxes(np.stack([n0, c0, h0, w0], 1), np.stack([n1, c1, h1, w1], 1))
        g0, g1 = c0 // cg, (c1 - 1) // cg
        oh0, oh1 = dy_range(h0, h1, sh, ph, dh, r, oh)
        ow0, ow1 = dy_range(w0, w1, sw, pw, dw, s, ow)
        dyr = Region.boxes(np.stack([n0, g0 * kg + k0, oh0, ow0], 1),
                           np.stack([n1, g1 * kg + k1, oh1, ow1], 1))
        one_group = g0 == g1
        wc0 = np.where(one_group, c0 - g0 * cg, 0)
        wc1 = np.where(one_group, c1 - g0 * cg, cg)
        zero = np.zeros_like(k0)
        wr = Region.boxes(np.stack([g0 * kg + k0, wc0, zero, zero], 1),
                          np.stack([g1 * kg + k1, wc1, zero + r, zero + s], 1))
        return out, [(dy, dyr), (w, wr)]

    return Space((Dim("n", n), Dim("c", c, target.channel_grain), Dim("ih", h), Dim("iw", wd),
                  Dim("k", kg, target.channel_grain)), slice_cost, boxes, reduce_dims=("k",),
                 codelet="supervisor", rate="macs")


def _bwd_weight_space(node, target) -> Space:
    """Split over the weight gradient's out-channels, in-channels and kernel rows (what a tile
    writes) and over the batch and output rows (the reduction: partial weight gradients that a
    reduction step adds up across tiles, PopLibs' weight-update pass)."""
    x, dy = node.inputs
    (sh, sw), (ph, pw), (dh, dw), groups = _conv_geometry(node.attrs)
    k_total, cg, r, s = node.output.shape
    kg = k_total // groups
    n, c, h, wd = x.shape
    oh, ow = dy.shape[2:]
    item = x.itemsize

    def slice_cost(sizes):
        sk, sc, skh, sn, soh = (sizes[..., i] for i in range(5))
        macs = sk * sc * skh * s * sn * soh * ow
        rows_in = np.minimum((soh - 1) * sh + (skh - 1) * dh + 1, h + 2 * ph)
        spanned = np.minimum(-(-sk // kg) + (kg % 16 != 0), groups)
        x_b = sn * np.minimum(c, spanned * sc) * rows_in * (wd + 2 * pw) * item
        dy_b = sn * sk * soh * ow * item
        return macs.astype(np.float64), x_b + dy_b, np.zeros_like(x_b), sk * sc * skh * s * item

    def boxes(table):
        k0, k1, c0, c1, r0, r1, n0, n1, oh0, oh1 = table.T.astype(np.int64)
        zero = np.zeros_like(k0)
        out = Region.boxes(np.stack([k0, c0, r0, zero], 1), np.stack([k1, c1, r1, zero + s], 1))
        g0, g1 = k0 // kg, (k1 - 1) // kg
        ih0 = np.clip(oh0 * sh - ph + r0 * dh, 0, h)
        ih1 = np.clip((oh1 - 1) * sh - ph + (r1 - 1) * dh + 1, 0, h)
        xr = Region.boxes(np.stack([n0, g0 * cg + c0, ih0, zero], 1),
                          np.stack([n1, g1 * cg + c1, np.maximum(ih0, ih1), zero + wd], 1))
        dyr = Region.boxes(np.stack([n0, k0, oh0, zero], 1), np.stack([n1, k1, oh1, zero + ow], 1))
        return out, [(x, xr), (dy, dyr)]

    def reduce_region(kept):             # (k, c, kh) boxes -> [K, Cg, R, S] with all of S
        k0, k1, c0, c1, r0, r1 = kept.T.astype(np.int64)
        zero = np.zeros_like(k0)
        return Region.boxes(np.stack([k0, c0, r0, zero], 1), np.stack([k1, c1, r1, zero + s], 1))

    return Space((Dim("k", k_total, target.channel_grain), Dim("c", cg, target.channel_grain),
                  Dim("kh", r), Dim("n", n), Dim("oh", oh)), slice_cost, boxes,
                 reduce_dims=("n", "oh"), codelet="supervisor", rate="macs",
                 reduce_region=reduce_region)


def _bwd_data_spaces(node, target):
    """dx of a 3x3 stride-1 conv is again one (of dy, with the flipped, transposed weights, pads
    2 - p): on the host the Winograd methods apply to it as to the forward conv."""
    direct = _bwd_data_space(node, target)
    if target.memory_is_cache and winograd_applies(node):
        whole = (0, node.inputs[1].shape[0])             # all of k
        return [direct] + [_winograd_space(target, direct, m, node.inputs[0], node.output.shape,
                                           whole) for m in WINOGRAD]
    return [direct]


@defop("conv2d_backward_data", infer=_bwd_data_infer, cost=_bwd_cost, space=_bwd_data_spaces,
       attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1,
              "input_size": (1, 1)})
def conv2d_backward_data_op(dy, w, *, stride, padding, dilation, groups, input_size):
    """dx[n, g*Cg+c, h, w] = sum over taps of dy[n, k, oh, ow] * w[k, c, r, s] where
    h = oh*sh - ph + r*dh, w = ow*sw - pw + s*dw (the transposed convolution)."""
    n, k, oh, ow = dy.shape
    _, cg, r, s = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    h, wd = input_size
    kg = k // groups
    dxp = np.zeros((n, groups, cg, h + 2 * ph + sh, wd + 2 * pw + sw), np.result_type(dy, w))
    dyg = dy.reshape(n, groups, kg, oh, ow)
    wg = w.reshape(groups, kg, cg, r, s)
    for i in range(r):
        for j in range(s):
            # [n, g, cg, oh, ow] contribution of tap (i, j)
            contrib = np.einsum("ngkpq,gkc->ngcpq", dyg, wg[:, :, :, i, j])
            dxp[:, :, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                j * dw: j * dw + sw * (ow - 1) + 1: sw] += contrib
    return dxp[:, :, :, ph:ph + h, pw:pw + wd].reshape(n, groups * cg, h, wd)


# The weight gradient by Winograd over 2x2 tiles of dy (csrc/winograd_grad.cpp), costed in the
# direct space's units (MACs) from times on 2 threads of this project's AVX-512 machine: the
# transforms ~2500 MAC-equivalents per tile per 16 channels of x or dy, and the 16 x K x C
# accumulators, where they exceed L2, re-read and re-written once per block of tiles.
WINO_GRAD_TRANSFORM = 2500
WINO_GRAD_BLOCK = 8 << 20         # bytes of transformed x and dy per block (the codelet's)


def winograd_grad_applies(node) -> bool:
    """The weight gradient of a conv F(2x2, 3x3) applies to (winograd_applies)."""
    return _winograd_geometry(node.attrs, node.attrs["kernel"], *node.inputs)


def _bwd_weight_winograd_space(node, target, direct: Space) -> Space:
    """Split over the gradient's out- and in-channels only: each vertex takes every tile (its
    16 GEMMs reduce over all of them), so there are no partial sums."""
    x, dy = node.inputs
    n, _, oh, ow = dy.shape
    tiles = n * -(-oh // 2) * -(-ow // 2)
    item = x.itemsize
    macs_per_byte = target.macs_per_cycle / target.spill_bytes_per_cycle

    def slice_cost(sizes):
        sk, sc = sizes[..., 0], sizes[..., 1]
        scp = -(-sc // 16) * 16
        gemm = 16.0 * tiles * sk * scp
        transforms = WINO_GRAD_TRANSFORM * tiles * (-(-sc // 16) + -(-sk // 16))
        m_bytes = 16.0 * sk * scp * item
        blocks = np.ceil(16.0 * tiles * (scp + sk) * item / WINO_GRAD_BLOCK)
        traffic = np.where(m_bytes > WINO_V_BUDGET, m_bytes * (2 * blocks + 2), 0.0)
        x_b = n * sc * x.shape[2] * x.shape[3] * item
        dy_b = n * sk * oh * ow * item
        return gemm + transforms + traffic * macs_per_byte, x_b + dy_b, np.zeros_like(x_b), \
            sk * sc * 9 * item

    return Space((Dim("k", node.output.shape[0], target.channel_grain),
                  Dim("c", node.output.shape[1], target.channel_grain)), slice_cost,
                 _whole_boxes(direct, (0, 3, 0, n, 0, oh)), codelet="supervisor", rate="macs",
                 method="winograd2x2")


def _bwd_weight_spaces(node, target):
    direct = _bwd_weight_space(node, target)
    if target.memory_is_cache and winograd_grad_applies(node):
        return [direct, _bwd_weight_winograd_space(node, target, direct)]
    return [direct]


@defop("conv2d_backward_weight", infer=_bwd_weight_infer, cost=_bwd_cost,
       space=_bwd_weight_spaces,
       attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1,
              "kernel": (1, 1)})
def conv2d_backward_weight_op(x, dy, *, stride, padding, dilation, groups, kernel):
    """dw[k, c, r, s] = sum_{n, oh, ow} dy[n, k, oh, ow] * xpad[n, g*Cg+c, oh*sh+r*dh, ow*sw+s*dw]."""
    n, c, h, wd = x.shape
    _, k, oh, ow = dy.shape
    r, s = kernel
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    cg, kg = c // groups, k // groups
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw))).reshape(n, groups, cg, h + 2 * ph,
                                                                   wd + 2 * pw)
    dyg = dy.reshape(n, groups, kg, oh, ow)
    dw_ = np.zeros((groups, kg, cg, r, s), np.result_type(x, dy))
    for i in range(r):
        for j in range(s):
            patch = xp[:, :, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                       j * dw: j * dw + sw * (ow - 1) + 1: sw]            # n, g, cg, oh, ow
            dw_[:, :, :, i, j] = np.einsum("ngkpq,ngcpq->gkc", dyg, patch)
    return dw_.reshape(k, cg, r, s)


def _conv2d_grad(node, dy, needs):
    """dx: the transposed conv of dy; dw: dy correlated with x; db: dy summed per channel."""
    from .reduce import channel_sum
    x, w = node.inputs[0], node.inputs[1]
    a = node.attrs
    geom = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                groups=a["groups"])
    dx = (conv2d_backward_data_op(dy, w, input_size=x.shape[2:], name=grad_name(node, "grad_x"),
                                  **geom) if needs[0] else None)
    dw = (conv2d_backward_weight_op(x, dy, kernel=w.shape[2:], name=grad_name(node, "grad_w"),
                                    **geom) if needs[1] else None)
    grads = [dx, dw]
    if len(node.inputs) > 2:
        grads.append(channel_sum(dy, name=grad_name(node, "grad_b")) if needs[2] else None)
    return grads


conv2d_op.grad = _conv2d_grad
