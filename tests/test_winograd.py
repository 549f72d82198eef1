"""Winograd F(4x4, 3x3) and F(2x2, 3x3) (csrc/winograd.cpp) against torch in float64, on every
ISA build this CPU runs (ipugraph._C.load: AVX-512 and AVX2 on an AVX-512 machine), and their
place in the planner.

Tolerance: F(4x4, 3x3) in float32 loses ~3 bits to its transforms; the test bound is 1e-4 of
the reference's largest magnitude (max |ours - ref| / max |ref|), the issue's bound for F(4x4),
measured 0.3-2e-5 on these shapes; F(2x2) (exact transforms but for rounding) is held to 1e-5. Odd shapes throughout: channels that are not a multiple of
16, maps that are not a multiple of the 4x4 tile, batch 1 and 3, pads 0-2, vertex boxes that
cut tiles and 16-channel blocks.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ipugraph as ig
import ipugraph._C as ext
from ipugraph.ops.conv import winograd_applies, winograd_traffic

TOL = {4: 1e-4, 2: 1e-5}
ISAS = ext.available()
TILES = (4, 2)
METHOD = {4: "winograd4x4", 2: "winograd2x2"}


def _rel(a, b) -> float:
    return float(np.abs(np.asarray(a, np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def _case(rng, n, c, k, h, w, pad):
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    wt = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * c)).astype(np.float32)
    ref = F.conv2d(torch.from_numpy(x).double(), torch.from_numpy(wt).double(),
                   padding=pad).numpy()
    return x, wt, ref


SHAPES = [  # n, c, k, h, w, pad
    (1, 64, 64, 12, 12, 1),
    (3, 20, 37, 11, 9, 1),
    (1, 3, 5, 5, 6, 0),
    (2, 17, 16, 4, 4, 2),
    (1, 130, 70, 7, 13, 1),
    (3, 16, 48, 1, 1, 1),       # a 1x1 map: every tap but the centre is padding
    (1, 203, 21, 6, 7, 1),      # more input channels than a block of U made in the vertex
]
# winograd_weights' U, or the taps transformed in the vertex: packed, or the weight's own
# channels-last storage
FORMS = ("U", "taps", "storage")


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n,c,k,h,w,pad", SHAPES)
def test_kernel_matches_float64(isa, tile, form, n, c, k, h, w, pad):
    C = ext.load(isa)
    rng = np.random.default_rng(n * 1000 + c * 10 + k)
    x, wt, ref = _case(rng, n, c, k, h, w, pad)
    xn = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    u = {"U": lambda: C.winograd_weights(wt, False, tile), "taps": lambda: C.pack_conv_weight(wt, 1),
         "storage": lambda: np.ascontiguousarray(wt.transpose(0, 2, 3, 1))}[form]()
    oh, ow = h + 2 * pad - 2, w + 2 * pad - 2
    out = np.full((n, oh, ow, k), np.nan, np.float32)
    # boxes that cut tiles (rows at 3, columns at 5) and blocks (channels at 20)
    cuts = lambda e, at: [(0, min(at, e)), (min(at, e), e)]
    verts = np.array([[b, b + 1, k0, k1, r0, r1, c0, c1]
                      for b in range(n) for k0, k1 in cuts(k, 20) for r0, r1 in cuts(oh, 3)
                      for c0, c1 in cuts(ow, 5) if k1 > k0 and r1 > r0 and c1 > c0], np.int32)
    C.conv2d_winograd(xn, u, None, None, out, verts, k, pad, pad, False, None, tile, form)
    assert not np.isnan(out).any(), "a pixel of the output was never written"
    assert _rel(out.transpose(0, 3, 1, 2), ref) < TOL[tile]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("tile", TILES)
def test_bias_residual_relu(isa, tile):
    C = ext.load(isa)
    rng = np.random.default_rng(7)
    n, c, k, h, w = 2, 24, 33, 9, 10
    x, wt, ref = _case(rng, n, c, k, h, w, 1)
    bias = rng.standard_normal(k).astype(np.float32)
    res = rng.standard_normal((n, h, w, k)).astype(np.float32)
    want = np.maximum(ref.transpose(0, 2, 3, 1) + bias + res, 0)
    out = np.empty((n, h, w, k), np.float32)
    verts = np.array([[0, n, 0, k, 0, h, 0, w]], np.int32)
    u = C.winograd_weights(wt, False, tile)
    C.conv2d_winograd(np.ascontiguousarray(x.transpose(0, 2, 3, 1)), u, bias, res, out, verts,
                      k, 1, 1, True, None, tile)
    assert _rel(out, want) < TOL[tile]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("tile", TILES)
@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("n,c,k,h,w,pad", SHAPES)
def test_backward_data_matches_float64(isa, tile, form, n, c, k, h, w, pad):
    """dx of conv2d(x, w, padding=pad) as conv2d_winograd of dy with the transposed U, or
    with the taps flipped in the vertex: pack_conv_data_weight's, or the weight's storage."""
    C = ext.load(isa)
    rng = np.random.default_rng(n * 999 + c + k)
    wt = (rng.standard_normal((k, c, 3, 3)) / np.sqrt(9 * k)).astype(np.float32)
    oh, ow = h + 2 * pad - 2, w + 2 * pad - 2
    dy = rng.standard_normal((n, k, oh, ow)).astype(np.float32)
    ref = torch.nn.grad.conv2d_input((n, c, h, w), torch.from_numpy(wt).double(),
                                     torch.from_numpy(dy).double(), padding=pad).numpy()
    dyn = np.ascontiguousarray(dy.transpose(0, 2, 3, 1))
    for channels_last, wv in ((False, wt), (True, np.ascontiguousarray(wt.transpose(0, 2, 3, 1)))):
        if form == "storage" and not channels_last:
            continue
        u = {"U": lambda: C.winograd_weights(wv, channels_last, tile, transposed=True),
             "taps": lambda: C.pack_conv_data_weight(wv, 1, channels_last),
             "storage": lambda: wv}[form]()
        out = np.full((n, h, w, c), np.nan, np.float32)
        verts = np.array([[b, b + 1, 0, c, 0, h, 0, w] for b in range(n)], np.int32)
        C.conv2d_winograd(dyn, u, None, None, out, verts, c, 2 - pad, 2 - pad, False, None, tile,
                          form if form == "U" else form + "_flipped")
        assert not np.isnan(out).any()
        assert _rel(out.transpose(0, 3, 1, 2), ref) < TOL[tile]


@pytest.mark.parametrize("isa", ISAS)
@pytest.mark.parametrize("n,c,k,h,w,pad", SHAPES)
def test_backward_weight_matches_float64(isa, n, c, k, h, w, pad):
    """dw of conv2d(x, w, padding=pad) by Winograd over 2x2 tiles of dy, on vertex boxes that
    cut the channels (k at 20, c at 17) and on one whole box. Bound 1e-5 of max |dw|: the
    transforms use 0, +-1 and 1/2 only, so this is the direct sum's rounding."""
    C = ext.load(isa)
    rng = np.random.default_rng(n * 77 + c + k + pad)
    x = rng.standard_normal((n, c, h, w)).astype(np.float32)
    oh, ow = h + 2 * pad - 2, w + 2 * pad - 2
    dy = rng.standard_normal((n, k, oh, ow)).astype(np.float32)
    ref = torch.nn.grad.conv2d_weight(torch.from_numpy(x).double(), (k, c, 3, 3),
                                      torch.from_numpy(dy).double(), padding=pad).numpy()
    xn = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    dyn = np.ascontiguousarray(dy.transpose(0, 2, 3, 1))
    cut = lambda e, at: [(0, min(at, e)), (min(at, e), e)]
    boxes = [[k0, k1, c0, c1] for k0, k1 in cut(k, 20) for c0, c1 in cut(c, 17)
             if k1 > k0 and c1 > c0]
    for verts in (boxes, [[0, k, 0, c]]):
        out = np.full((k, 3, 3, c), np.nan, np.float32)
        C.conv2d_backward_weight_winograd(xn, dyn, out, np.array(verts, np.int32), pad, pad)
        assert not np.isnan(out).any(), "an element of dw was never written"
        assert _rel(out.transpose(0, 3, 1, 2), ref) < 1e-5


def test_backward_weight_many_tile_blocks():
    """More tiles than one block holds (the accumulators carried across blocks) and channels
    at 128 (restrided rows)."""
    rng = np.random.default_rng(11)
    n, c, k, h = 2, 128, 144, 40
    x = rng.standard_normal((n, c, h, h)).astype(np.float32)
    dy = rng.standard_normal((n, k, h, h)).astype(np.float32)
    ref = torch.nn.grad.conv2d_weight(torch.from_numpy(x).double(), (k, c, 3, 3),
                                      torch.from_numpy(dy).double(), padding=1).numpy()
    out = np.empty((k, 3, 3, c), np.float32)
    ext.conv2d_backward_weight_winograd(np.ascontiguousarray(x.transpose(0, 2, 3, 1)),
                                        np.ascontiguousarray(dy.transpose(0, 2, 3, 1)), out,
                                        np.array([[0, 64, 0, c], [64, k, 0, c]], np.int32), 1, 1)
    assert _rel(out.transpose(0, 3, 1, 2), ref) < 1e-5


def test_backward_weight_refuses_bad_arguments():
    C = ext
    x = np.zeros((1, 6, 6, 8), np.float32)
    dy = np.zeros((1, 6, 6, 4), np.float32)
    out = np.zeros((4, 3, 3, 8), np.float32)
    v = np.array([[0, 4, 0, 8]], np.int32)
    with pytest.raises(ValueError, match="not the 3x3 stride-1 conv output"):
        C.conv2d_backward_weight_winograd(x, dy[:, :5], out, v, 1, 1)
    with pytest.raises(ValueError, match=r"out has shape \(4, 3, 3, 7\)"):
        C.conv2d_backward_weight_winograd(x, dy, out[..., :7].copy(), v, 1, 1)
    with pytest.raises(ValueError, match="pads must be in"):
        C.conv2d_backward_weight_winograd(x, dy, out, v, 3, 3)
    with pytest.raises(ValueError, match="input channel"):
        C.conv2d_backward_weight_winograd(x, dy, out, np.array([[0, 4, 0, 9]], np.int32), 1, 1)


def test_transformed_weights_from_channels_last_storage():
    rng = np.random.default_rng(1)
    w = rng.standard_normal((37, 19, 3, 3)).astype(np.float32)
    for isa in ISAS:
        C = ext.load(isa)
        for tile in TILES:
            a = C.winograd_weights(w, False, tile)
            b = C.winograd_weights(np.ascontiguousarray(w.transpose(0, 2, 3, 1)), True, tile)
            assert np.array_equal(a, b)
            assert a.shape == ((tile + 2) ** 2 * 3 * 19 * 16,)


def test_bad_arguments_are_refused_naming_the_call():
    C = ext
    x = np.zeros((1, 6, 6, 8), np.float32)
    u = C.winograd_weights(np.zeros((4, 8, 3, 3), np.float32), False)
    out = np.zeros((1, 6, 6, 4), np.float32)
    verts = np.array([[0, 1, 0, 4, 0, 6, 0, 6]], np.int32)
    with pytest.raises(ValueError, match="conv2d_winograd: transformed weight U"):
        C.conv2d_winograd(x, u[:-1], None, None, out, verts, 4, 1, 1, False)
    with pytest.raises(ValueError, match="conv2d_winograd: out has shape"):
        C.conv2d_winograd(x, u, None, None, out[:, :5], verts, 4, 1, 1, False)
    with pytest.raises(ValueError, match="pads in"):
        C.conv2d_winograd(x, u, None, None, out, verts, 4, 3, 3, False)
    with pytest.raises(ValueError, match="vertex 0 has channel"):
        C.conv2d_winograd(x, u, None, None, out, np.array([[0, 1, 0, 5, 0, 6, 0, 6]],
                                                          np.int32), 4, 1, 1, False)
    with pytest.raises(ValueError, match="needs a 3x3 kernel"):
        C.winograd_weights(np.zeros((4, 8, 5, 5), np.float32), False)
    with pytest.raises(ValueError, match="tile must be 2"):
        C.winograd_weights(np.zeros((4, 8, 3, 3), np.float32), False, 3)
    with pytest.raises(ValueError, match="use winograd_weights with the same tile"):
        C.conv2d_winograd(x, u, None, None, out, verts, 4, 1, 1, False, None, 2)
    taps = C.pack_conv_weight(np.zeros((4, 8, 3, 3), np.float32), 1)
    with pytest.raises(ValueError, match="conv2d_winograd: packed weight has shape .* for a 3x3 "
                                         "kernel, K=4 C=8 .use pack_conv_weight"):
        C.conv2d_winograd(x, taps[:-16], None, None, out, verts, 4, 1, 1, False, None, 4, "taps")
    with pytest.raises(ValueError, match="conv2d_winograd: transformed weight U"):
        C.conv2d_winograd(x, taps, None, None, out, verts, 4, 1, 1, False, None, 4)
    with pytest.raises(ValueError, match="weights must be 'U', 'taps'.* got 'packed'"):
        C.conv2d_winograd(x, taps, None, None, out, verts, 4, 1, 1, False, None, 4, "packed")
    storage = np.zeros((4, 3, 3, 8), np.float32)
    with pytest.raises(ValueError, match=r"weight storage has shape \(8, 3, 3, 4\), expected "
                                         r"\(4, 3, 3, 8\) \[K, R, S, C\] for x with 8 channels"):
        C.conv2d_winograd(x, storage.reshape(8, 3, 3, 4), None, None, out, verts, 4, 1, 1, False,
                          None, 4, "storage")
    with pytest.raises(ValueError, match="for the backward-data conv of dy with 8 channels"):
        C.conv2d_winograd(x, storage, None, None, out, verts, 4, 1, 1, False, None, 4,
                          "storage_flipped")
    alias = np.zeros((1, 6, 6, 8), np.float32)
    with pytest.raises(ValueError, match="overlaps x"):
        C.conv2d_winograd(alias, C.winograd_weights(np.zeros((8, 8, 3, 3), np.float32), False),
                          None, None, alias, np.array([[0, 1, 0, 8, 0, 6, 0, 6]], np.int32), 8,
                          1, 1, False)


def _resnet_block(n, c, size, seed=0):
    """conv-bn-relu-conv-bn + residual, relu: the ResNet basic block both methods run."""
    g = ig.Graph(ig.Target.host(), name="block")
    x = g.input("x", (n, c, size, size))
    init = ig.init.kaiming_normal(seed=seed)
    y = x
    for i in (1, 2):
        w = g.variable(f"w{i}", (c, c, 3, 3), init=init)
        gamma = g.variable(f"g{i}", (c,), value=np.linspace(0.5, 1.5, c, dtype=np.float32))
        beta = g.variable(f"b{i}", (c,), value=np.linspace(-0.2, 0.2, c, dtype=np.float32))
        mean = g.variable(f"m{i}", (c,), value=np.linspace(-0.1, 0.1, c, dtype=np.float32))
        var = g.variable(f"v{i}", (c,), value=np.linspace(0.8, 1.2, c, dtype=np.float32))
        y = ig.ops.batch_norm(ig.ops.conv2d(y, w, padding=1), gamma, beta, mean, var)
        if i == 1:
            y = ig.ops.relu(y)
    g.output("y", ig.ops.relu(y + x))
    return g


@pytest.mark.parametrize("tile", TILES)
def test_resnet_block_by_winograd_matches_float64_reference(tile):
    g = _resnet_block(3, 40, 10)
    eng = ig.compile(g, methods=(METHOD[tile],))
    assert [cs.method for cs in eng.program.compute_sets if cs.op == "conv2d"] == \
        [METHOD[tile]] * 2
    x = np.random.default_rng(3).standard_normal((3, 40, 10, 10)).astype(np.float32)
    want = ig.compile(g, backend="reference").run({"x": x})["y"]   # computed in float64
    assert _rel(eng.run({"x": x})["y"], want) < TOL[tile]


def test_planner_chooses_per_layer_and_says_so():
    host = ig.Target.host()
    g = ig.models.resnet34(batch=8, image_size=224, target=host)
    plan = ig.plan(g, host)
    convs = [s for s in plan.steps if s.group.anchor.op.name == "conv2d"]
    for s in convs:
        if s.space.method != "direct":
            assert winograd_applies(s.group.anchor)
    # at batch 8 the 3x3 stride-1 layers amortise their transformed weights
    assert sum(s.space.method == "winograd4x4" for s in convs) >= 20
    assert "winograd4x4" in plan.summary() and "direct" in plan.summary()
    only = ig.plan(g, host, methods=("direct",))
    assert {s.space.method for s in only.steps} == {"direct"}
    assert only.estimated_seconds() > plan.estimated_seconds()
    # IPU plans stay PopLibs-like: no Winograd
    mk2 = ig.plan(ig.models.resnet18(batch=1, image_size=64, target=ig.Target.ipu_mk2()))
    assert {s.space.method for s in mk2.steps} == {"direct"}


@pytest.mark.parametrize("tile", TILES)
def test_training_step_by_winograd_matches_direct(tile):
    """Forward, backward-data and backward-weight by Winograd: the gradients of a conv stack
    match the float64 reference (the bound is Winograd's)."""
    def build():
        g = ig.Graph(ig.Target.host(), name="wino_train")
        x = g.input("x", (3, 20, 9, 11))
        y = x
        for i, (cin, cout) in enumerate(((20, 24), (24, 17))):
            w = g.variable(f"w{i}", (cout, cin, 3, 3), init=ig.init.kaiming_normal(seed=i))
            y = ig.ops.relu(ig.ops.conv2d(y, w, padding=1))
        loss = ig.ops.sum(y * y)
        g.output("loss", loss)
        for name, t in ig.grad(g, loss).items():   # dw0 needs dx of the second conv
            g.output(f"d_{name}", t)
        return g
    x = np.random.default_rng(5).standard_normal((3, 20, 9, 11)).astype(np.float32)
    g = build()
    eng = ig.compile(g, methods=(METHOD[tile],))
    methods = {cs.op: cs.method for cs in eng.program.compute_sets
               if cs.op.startswith("conv2d_backward")}
    assert methods["conv2d_backward_data"] == METHOD[tile]
    if tile == 2:   # the weight gradient's Winograd method is over 2x2 tiles of dy
        assert methods["conv2d_backward_weight"] == "winograd2x2"
    got = eng.run({"x": x})
    want = ig.compile(build(), backend="reference").run({"x": x})
    for name in ("loss", "d_w0", "d_w1"):
        assert _rel(got[name], want[name]) < 10 * TOL[tile], name


def test_strided_dilated_grouped_convs_are_not_winograd():
    g = ig.Graph(ig.Target.host())
    x = g.input("x", (1, 16, 12, 12))
    for name, kw in (("s2", dict(stride=2, padding=1)), ("d2", dict(dilation=2, padding=2)),
                     ("g2", dict(groups=2, padding=1))):
        cin = 16 // kw.get("groups", 1)
        w = g.variable(name, (16, cin, 3, 3), init=ig.init.kaiming_normal(seed=0))
        g.output(f"y_{name}", ig.ops.conv2d(x, w, **kw))
    plan = ig.plan(g, ig.Target.host())
    assert {s.space.method for s in plan.steps} == {"direct"}
    for s in plan.steps:
        assert not winograd_applies(s.group.anchor)


def test_traffic_model_follows_the_codelet_blocking():
    # few tiles or a small U: U is streamed once
    assert winograd_traffic(16, 256, 256) == 0
    assert winograd_traffic(48, 256, 256, positions=16) == 0
    assert winograd_traffic(1568, 64, 64) == 0
    # many tiles and a U beyond L2: extra passes over U, or V re-read per 64 channels
    extra = winograd_traffic(128, 256, 512)
    assert extra > 0
    u = 36 * 512 * 256 * 4
    assert extra <= (np.ceil(128 / 14) - 1) * u


def test_weights_transformed_in_the_vertex_where_the_model_says_so():
    """winograd_in_vertex (the cpu lowering's choice, from ops/conv.py winograd_fused_gain): a
    batch-1 deep layer -- few tiles, a large U -- transforms its taps in the vertex; a vertex of
    many tiles or vertices sharing output channels (each would repeat the transform) read U; a
    trained weight counts the per-step pass over U too. The planned network computes the same
    either way (float64 reference)."""
    from ipugraph.backends.cpu.conv import winograd_in_vertex
    k_split = np.array([[0, 1, 0, 256, 0, 7, 0, 7], [0, 1, 256, 512, 0, 7, 0, 7]], np.int32)
    assert winograd_in_vertex("winograd2x2", k_split, 512, trained=False)
    many = np.array([[0, 8, 0, 64, 0, 56, 0, 56]], np.int32)      # 196 F(4x4) tiles
    assert not winograd_in_vertex("winograd4x4", many, 64, trained=True)
    shared = np.array([[0, 1, 0, 512, 0, 4, 0, 7], [0, 1, 0, 512, 4, 7, 0, 7]], np.int32)
    assert not winograd_in_vertex("winograd2x2", shared, 512, trained=False)
    over = np.array([[0, 1, 0, 64, 0, 14, 0, 14]], np.int32)      # 49 F(2x2) tiles: one too many
    assert not winograd_in_vertex("winograd2x2", over, 256, trained=False)
    fits = np.array([[0, 1, 0, 64, 0, 14, 0, 12]], np.int32)      # 7 x 6 = 42 tiles
    assert winograd_in_vertex("winograd2x2", fits, 256, trained=False)

    g = ig.Graph(ig.Target.host(), name="deep")
    x = g.input("x", (1, 256, 7, 7))
    w = g.variable("w", (320, 256, 3, 3), init=ig.init.kaiming_normal(seed=3))
    g.output("y", ig.ops.relu(ig.ops.conv2d(x, w, padding=1)))
    plan = ig.plan(g, ig.Target.host(2), methods=("winograd2x2",))
    step = next(s for s in plan.steps if s.space.method == "winograd2x2")
    assert winograd_in_vertex("winograd2x2", np.asarray(step.vertices), 256, False)
    xv = np.random.default_rng(5).standard_normal((1, 256, 7, 7)).astype(np.float32)
    y = ig.compile(g, backend="cpu", plan=plan).run({"x": xv})["y"]
    ref = F.relu(F.conv2d(torch.from_numpy(xv).double(),
                          torch.from_numpy(np.array(w.value)).double(), padding=1)).numpy()
    assert _rel(y, ref) < TOL[2]
