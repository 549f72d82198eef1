"""The CPU backend's convolution backward (csrc/conv_grad.cpp, backends/cpu_conv_grad.py).

Oracles: torch.nn.grad.conv2d_input / conv2d_weight in float64 (independent of ipugraph) and the
ops' NumPy references. Shapes: odd H/W, stride 2 and 3, dilation 2, groups 2, depthwise (and a
channel multiplier), padding 0/1/3 (padding larger than the kernel reach), batch 1, the 7x7
stride-2 stem, channels that are no multiple of 8/16, non-square kernels/strides, an input size
with rows no window reaches (stride > 1).

Paths: the graph API with plans for the host (unsplit) and for IPU Mk2 / Mk1 (the reduction split
across many tiles: partial slabs + reduce_partials), and _C directly with hand-made vertex tables
(channel / row / column splits, k-split partials for backward-data, n/oh-split partials for
backward-weight), plus argument validation.

Tolerance: helpers.assert_close, |a - e| <= 2e-6 * sqrt(reduction) * max|e| + 1e-5 * |e|
(float32 accumulation against float64), reduction = Kg*R*S (dx) resp. N*OH*OW (dw).
"""
import numpy as np
import pytest
import torch

import ipugraph as ig
from helpers import assert_close, rand, run
from ipugraph import _C

# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CASES = {
    "odd_hw": (2, 5, 13, 11, 17, 3, 3, 1, 1, 1, 1),
    "stride2_odd": (3, 7, 15, 9, 33, 3, 3, 2, 1, 1, 1),
    "dilation2": (1, 6, 12, 14, 10, 3, 3, 1, 2, 2, 1),
    "groups2": (2, 8, 9, 9, 12, 3, 3, 1, 1, 1, 2),
    "groups2_s2_d2": (2, 40, 11, 10, 36, 3, 3, 2, 1, 2, 2),
    "depthwise": (1, 24, 10, 7, 24, 3, 3, 2, 1, 1, 24),
    "depthwise_mult2": (1, 5, 8, 8, 10, 3, 3, 1, 1, 1, 5),
    "pointwise_s2": (2, 19, 9, 6, 37, 1, 1, 2, 0, 1, 1),
    "stem_7x7_s2": (1, 3, 23, 20, 20, 7, 7, 2, 3, 1, 1),
    "pad3_3x3": (2, 4, 7, 6, 4, 3, 3, 1, 3, 1, 1),
    "nonsquare": (2, 4, 11, 16, 6, 3, 5, (2, 1), (1, 2), (1, 2), 1),
    "wide_c": (1, 70, 6, 5, 100, 3, 3, 1, 1, 1, 1),
    "stride3_pad0": (1, 3, 10, 11, 5, 2, 2, 3, 0, 1, 1),
    # pixel strides of 128 floats: x and dy rows restrided in the weight gradient's buffers
    "c128_k256": (2, 128, 7, 6, 256, 3, 3, 1, 1, 1, 1),
    "c128_dilation2": (1, 128, 9, 8, 128, 3, 3, 1, 2, 2, 1),
    # few (s, c) lanes, many output channels: the weight gradient puts k on the lanes (a k
    # tail of 6; groups; one tap per segment under dilation; dy restrided at K = 128)
    "stem_k70": (2, 3, 23, 21, 70, 7, 7, 2, 3, 1, 1),
    "narrow_groups2": (2, 4, 9, 9, 64, 5, 5, 2, 2, 1, 2),
    "narrow_dilation2": (1, 3, 12, 12, 48, 3, 3, 1, 2, 2, 1),
    "stem_k128": (1, 3, 15, 15, 128, 7, 7, 2, 3, 1, 1),
}


def _pair(v):
    return tuple(v) if isinstance(v, tuple) else (v, v)


def _data(case, seed=0):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    (sh, sw), (ph, pw), (dh, dw) = _pair(stride), _pair(padding), _pair(dilation)
    oh = (h + 2 * ph - dh * (r - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (s - 1) - 1) // sw + 1
    x = rand((n, c, h, w), seed)
    wt = rand((k, c // groups, r, s), seed + 1)
    dy = rand((n, k, oh, ow), seed + 2)
    geom = dict(stride=(sh, sw), padding=(ph, pw), dilation=(dh, dw), groups=groups)
    return x, wt, dy, geom


def _torch_grads(x, wt, dy, geom):
    t = lambda a: torch.from_numpy(a).double()  # noqa: E731
    dx = torch.nn.grad.conv2d_input(x.shape, t(wt), t(dy), **geom).numpy()
    dwt = torch.nn.grad.conv2d_weight(t(x), wt.shape, t(dy), **geom).numpy()
    return dx, dwt


def _reductions(x, wt, dy, geom):
    k, cg, r, s = wt.shape
    return k // geom["groups"] * r * s, dy.shape[0] * dy.shape[2] * dy.shape[3]


def _graph(x, wt, dy, geom, w_kind="variable"):
    g = ig.Graph(name="conv_grad")
    dy_t = g.input("dy", dy.shape)
    x_t = g.input("x", x.shape)
    if w_kind == "variable":
        w_t = g.variable("w", wt.shape, value=wt)
    else:
        w_t = g.input("w", wt.shape)
    dx = ig.ops.OPS["conv2d_backward_data"](dy_t, w_t, input_size=x.shape[2:], **geom)
    dw_ = ig.ops.OPS["conv2d_backward_weight"](x_t, dy_t, kernel=wt.shape[2:], **geom)
    g.output("dx", dx)
    g.output("dw", dw_)
    feeds = {"dy": dy, "x": x} | ({"w": wt} if w_kind != "variable" else {})
    return g, feeds


@pytest.mark.parametrize("target", ["host", "mk2", "mk1"])
@pytest.mark.parametrize("case", list(CASES))
def test_graph_vs_torch(case, target):
    x, wt, dy, geom = _data(CASES[case])
    g, feeds = _graph(x, wt, dy, geom)
    out = run(g, "cpu", target, feeds)
    rdx, rdw = _torch_grads(x, wt, dy, geom)
    red_x, red_w = _reductions(x, wt, dy, geom)
    assert_close(out["dx"], rdx, red_x, what=f"dx {case} {target}")
    assert_close(out["dw"], rdw, red_w, what=f"dw {case} {target}")


def test_mk2_plan_splits_the_reductions():
    """The IPU plans exercise the partial path: k split for dx, n/oh split for dw."""
    x, wt, dy, geom = _data((2, 64, 16, 16, 64, 3, 3, 1, 1, 1, 1))
    g, feeds = _graph(x, wt, dy, geom)
    plan = ig.plan(g, ig.Target.ipu_mk2())
    assert all(s.reduce_vertices is not None for s in plan.steps)
    eng = ig.compile(g, backend="cpu", plan=plan)
    assert all(k.partials is not None for k in eng._exe.kernels)
    out = eng.run(feeds)
    rdx, rdw = _torch_grads(x, wt, dy, geom)
    assert_close(out["dx"], rdx, 64 * 9, what="dx mk2 split")
    assert_close(out["dw"], rdw, 2 * 256, what="dw mk2 split")


@pytest.mark.parametrize("case", ["stride2_odd", "groups2_s2_d2", "depthwise_mult2", "nonsquare"])
def test_graph_vs_numpy_reference(case):
    x, wt, dy, geom = _data(CASES[case], seed=5)
    g, feeds = _graph(x, wt, dy, geom)
    out = run(g, "cpu", "mk1", feeds)
    ref_dx = ig.ops.OPS["conv2d_backward_data"].reference(
        dy.astype(np.float64), wt.astype(np.float64), input_size=x.shape[2:], **geom)
    ref_dw = ig.ops.OPS["conv2d_backward_weight"].reference(
        x.astype(np.float64), dy.astype(np.float64), kernel=wt.shape[2:], **geom)
    red_x, red_w = _reductions(x, wt, dy, geom)
    assert_close(out["dx"], ref_dx, red_x, what=f"dx {case} vs reference")
    assert_close(out["dw"], ref_dw, red_w, what=f"dw {case} vs reference")


def test_weight_changes_between_runs_and_fed_weight():
    """A variable weight updated between runs is repacked; a fed weight (computed at run time
    in a real graph) makes the backward-data Kernel dynamic."""
    x, wt, dy, geom = _data(CASES["stride2_odd"])
    g, feeds = _graph(x, wt, dy, geom)
    eng = ig.compile(g, backend="cpu", plan=ig.plan(g, ig.Target.host()))
    eng.run(feeds)
    w2 = rand(wt.shape, 42)
    g.variables["w"].value = w2
    out = eng.run(feeds)
    rdx, _ = _torch_grads(x, w2, dy, geom)
    assert_close(out["dx"], rdx, 33 * 9, what="dx after a weight update")

    g2, feeds2 = _graph(x, wt, dy, geom, w_kind="input")
    eng2 = ig.compile(g2, backend="cpu", plan=ig.plan(g2, ig.Target.host()))
    dxk = [k for k in eng2._exe.kernels if k.dynamic]       # repacked before every run
    assert dxk and all(k.refresh is not None and k.prepare is None for k in dxk)
    for wv in (wt, w2):
        out = eng2.run(feeds2 | {"w": wv})
        rdx, _ = _torch_grads(x, wv, dy, geom)
        assert_close(out["dx"], rdx, 33 * 9, what="dx with a fed weight")


# -- _C directly, hand-made vertex tables ---------------------------------------------------

def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1), dtype=np.float32)


def _geom_args(geom):
    (sh, sw), (ph, pw), (dh, dw) = geom["stride"], geom["padding"], geom["dilation"]
    return sh, sw, ph, pw, dh, dw, geom["groups"]


def _splits(extent, parts):
    b = np.linspace(0, extent, parts + 1).round().astype(int)
    return list(zip(b[:-1], b[1:]))


@pytest.mark.parametrize("case", ["odd_hw", "groups2_s2_d2", "depthwise", "stem_7x7_s2",
                                  "nonsquare", "wide_c"])
def test_direct_backward_data_splits(case):
    x, wt, dy, geom = _data(CASES[case], seed=3)
    n, c, h, w = x.shape
    k, cg, r, s = wt.shape
    kg = k // geom["groups"]
    rdx, _ = _torch_grads(x, wt, dy, geom)
    wp = _C.pack_conv_data_weight(wt, geom["groups"])
    args = (cg, r, s, *_geom_args(geom))
    dyn = _nhwc(dy)
    # Unsplit output boxes: channel x row x column splits, one vertex each.
    rows = [[n0, n1, c0, c1, h0, h1, w0, w1, 0, kg]
            for n0, n1 in _splits(n, min(n, 2)) for c0, c1 in _splits(c, min(c, 3))
            for h0, h1 in _splits(h, 3) for w0, w1 in _splits(w, 2)]
    out = np.full((n, h, w, c), np.nan, np.float32)
    _C.conv2d_backward_data_nhwc(dyn, wp, out, np.array(rows, np.int32), *args)
    assert_close(out.transpose(0, 3, 1, 2), rdx, kg * r * s, what=f"dx {case} unsplit")
    # k split into slabs (partials), reduced over two boxes per image half.
    ks = _splits(kg, min(kg, 3))
    rows = [[0, n, c0, c1, 0, h, 0, w, k0, k1, i]
            for i, (k0, k1) in enumerate(ks) for c0, c1 in _splits(c, min(c, 2))]
    partials = np.zeros((len(ks), n, h, w, c), np.float32)
    _C.conv2d_backward_data_nhwc_partial(dyn, wp, partials, np.array(rows, np.int32), *args)
    red = np.array([[0, n, 0, c, h0, h1, 0, w] for h0, h1 in _splits(h, 2)], np.int32)
    out = np.full((n, h, w, c), np.nan, np.float32)
    _C.reduce_partials(partials, None, None, out, red, False)
    assert_close(out.transpose(0, 3, 1, 2), rdx, kg * r * s, what=f"dx {case} k-split")


@pytest.mark.parametrize("case", ["odd_hw", "groups2_s2_d2", "depthwise", "depthwise_mult2",
                                  "stem_7x7_s2", "nonsquare", "wide_c", "pad3_3x3", "c128_k256",
                                  "c128_dilation2", "stem_k70", "narrow_groups2",
                                  "narrow_dilation2", "stem_k128"])
def test_direct_backward_weight_splits(case):
    x, wt, dy, geom = _data(CASES[case], seed=4)
    n, c, h, w = x.shape
    k, cg, r, s = wt.shape
    _, rdw = _torch_grads(x, wt, dy, geom)
    ref = rdw.transpose(0, 2, 3, 1)                            # stored [K, R, S, Cg]
    oh = dy.shape[2]
    args = (r, s, *_geom_args(geom))
    xn, dyn = _nhwc(x), _nhwc(dy)
    red_len = n * oh * dy.shape[3]
    # One vertex: every channel.
    out = np.full((k, r, s, cg), np.nan, np.float32)
    _C.conv2d_backward_weight_nhwc(xn, dyn, out, np.array([[0, k, 0, cg, 0, r, 0, n, 0, oh]],
                                                          np.int32), *args)
    assert_close(out, ref, red_len, what=f"dw {case} one vertex")
    # Unsplit reduction: k x c x kh boxes.
    rows = [[k0, k1, c0, c1, r0, r1, 0, n, 0, oh]
            for k0, k1 in _splits(k, min(k, 3)) for c0, c1 in _splits(cg, min(cg, 2))
            for r0, r1 in _splits(r, min(r, 2))]
    out = np.full((k, r, s, cg), np.nan, np.float32)
    _C.conv2d_backward_weight_nhwc(xn, dyn, out, np.array(rows, np.int32), *args)
    assert_close(out, ref, red_len, what=f"dw {case} unsplit")
    # Reduction split over n and oh: one slab per (n0, oh0).
    red_boxes = [(k0, k1, c0, c1) for k0, k1 in _splits(k, min(k, 2))
                 for c0, c1 in _splits(cg, min(cg, 2))]
    slabs = [(n0, n1, o0, o1) for n0, n1 in _splits(n, min(n, 2))
             for o0, o1 in _splits(oh, min(oh, 3))]
    rows = [[k0, k1, c0, c1, 0, r, n0, n1, o0, o1, i]
            for i, (n0, n1, o0, o1) in enumerate(slabs) for k0, k1, c0, c1 in red_boxes]
    partials = np.full((len(slabs), k, r, s, cg), np.nan, np.float32)
    _C.conv2d_backward_weight_nhwc_partial(xn, dyn, partials, np.array(rows, np.int32), *args)
    red = np.array([[k0, k1, c0, c1, 0, r, 0, s] for k0, k1, c0, c1 in red_boxes], np.int32)
    out = np.full((k, r, s, cg), np.nan, np.float32)
    _C.reduce_partials(partials, None, None, out, red, False)
    assert_close(out, ref, red_len, what=f"dw {case} n/oh split")


def test_weight_gradient_row_buffer_holds_a_restrided_vertex():
    """A vertex of 128 of 130 channels is restrided to 144 floats a pixel, more than the
    whole row's 130: the chunk buffer must hold one such row of a wide map (it overflowed)."""
    x, wt, dy, geom = _data((1, 130, 3, 700, 16, 3, 3, 1, (0, 1), 1, 1), seed=6)
    _, rdw = _torch_grads(x, wt, dy, geom)
    ref = rdw.transpose(0, 2, 3, 1)
    args = (3, 3, *_geom_args(geom))
    out = np.full((16, 3, 3, 130), np.nan, np.float32)
    rows = [[0, 8, 0, 128, 0, 3, 0, 1, 0, 1], [8, 16, 0, 128, 0, 3, 0, 1, 0, 1],
            [0, 16, 128, 130, 0, 3, 0, 1, 0, 1]]
    _C.conv2d_backward_weight_nhwc(_nhwc(x), _nhwc(dy), out, np.array(rows, np.int32), *args)
    assert_close(out, ref, dy.shape[2] * dy.shape[3], what="dw c=128 of 130, W=700")


def test_direct_validation_errors():
    x, wt, dy, geom = _data(CASES["stride2_odd"])
    n, c, h, w = x.shape
    k, cg, r, s = wt.shape
    oh, ow = dy.shape[2:]
    wp = _C.pack_conv_data_weight(wt, 1)
    args = (cg, r, s, *_geom_args(geom))
    dyn, xn = _nhwc(dy), _nhwc(x)
    good = np.array([[0, n, 0, c, 0, h, 0, w, 0, k]], np.int32)
    out = np.zeros((n, h, w, c), np.float32)
    with pytest.raises(ValueError, match="conv2d_backward_data_nhwc: vertex 0 has row"):
        _C.conv2d_backward_data_nhwc(dyn, wp, out, np.array([[0, n, 0, c, 0, h + 1, 0, w, 0, k]],
                                                            np.int32), *args)
    with pytest.raises(ValueError, match="vertices must be an int32 array of shape"):
        _C.conv2d_backward_data_nhwc(dyn, wp, out, good[:, :8], *args)
    with pytest.raises(ValueError, match="packed weight"):
        _C.conv2d_backward_data_nhwc(dyn, wp[:-1], out, good, *args)
    with pytest.raises(ValueError, match="does not match dy"):
        _C.conv2d_backward_data_nhwc(dyn, wp, np.zeros((n, h + 5, w, c), np.float32), good,
                                     *args)
    with pytest.raises(ValueError, match="out must be a float32"):
        _C.conv2d_backward_data_nhwc(dyn, wp, out.astype(np.float64), good, *args)
    with pytest.raises(ValueError, match="strides, dilations"):
        _C.conv2d_backward_data_nhwc(dyn, wp, out, good, cg, r, s, 0, 2, 1, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="slab"):
        _C.conv2d_backward_data_nhwc_partial(
            dyn, wp, np.zeros((1, n, h, w, c), np.float32),
            np.array([[0, n, 0, c, 0, h, 0, w, 0, k, 1]], np.int32), *args)
    wargs = (r, s, *_geom_args(geom))
    dw_out = np.zeros((k, r, s, cg), np.float32)
    wgood = np.array([[0, k, 0, cg, 0, r, 0, n, 0, oh]], np.int32)
    with pytest.raises(ValueError, match="is not the conv output of x"):
        _C.conv2d_backward_weight_nhwc(xn[:, :-2], dyn, dw_out, wgood, *wargs)
    with pytest.raises(ValueError, match=r"expected \(33, 3, 3, 7\)"):
        _C.conv2d_backward_weight_nhwc(xn, dyn, np.zeros((k, cg, r, s), np.float32), wgood,
                                       *wargs)
    with pytest.raises(ValueError, match="output row"):
        _C.conv2d_backward_weight_nhwc(xn, dyn, dw_out, np.array(
            [[0, k, 0, cg, 0, r, 0, n, 0, oh + 1]], np.int32), *wargs)
    with pytest.raises(ValueError, match="groups=2 must divide"):
        _C.conv2d_backward_weight_nhwc(xn, dyn, dw_out, wgood, r, s, 2, 2, 1, 1, 1, 1, 2)
    with pytest.raises(ValueError, match="pack_conv_data_weight: groups=5"):
        _C.pack_conv_data_weight(wt, 5)
