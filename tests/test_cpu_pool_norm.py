"""CPU kernels of the pooling gradients and of batch norm in training form (csrc/pool.cpp,
csrc/norm.cpp, csrc/reduce.cpp; backends/cpu/pool.py, norm.py): max_pool2d_backward,
avg_pool2d_backward, bn_stats, batch_norm_train, bn_grad_stats, channel_sum, select, and the
rest of the batch-norm gradient and the running statistics (vocabulary chains, checked here
end to end against torch).

Every op runs through the graph API on the CPU backend, planned for "host" (few vertices) and
"mk2" (split into many vertices: rows, channels, flat ranges), and is compared with torch
autograd in float64 and with the op's NumPy reference (float64). Direct _C calls cover vertex
splits the planner may not make (every row / channel boundary) and bad arguments.

Tolerances (float32 kernels vs float64 oracles, inputs exactly representable in float32):
  * pooling gradients: a dx element is a sum of at most kh*kw*... float32 terms, so
    |err| <= 1e-6 * max|dx| + 1e-6 * |dx|; max-pool routing must be EXACT (same argmax: a wrong
    tie choice moves a whole dy value and fails by far more than the tolerance).
  * per-channel sums (bn_stats, bn_grad_stats, channel_sum) accumulate in double, so the only
    error is the final rounding to float32: |err| <= 1e-6 * (|e| + mean|terms|).
  * elementwise BN outputs (batch_norm_train, the dx chain, the running statistics):
    a few float32 roundings of O(max|e|) terms: |err| <= 1e-5 * max|e| + 1e-5 * |e|.
  * accuracy of batch statistics over M = 102400 values per channel with |mean| / std = 1e4
    (where a float32 E[x^2] - E[x]^2 loses every digit): mean to 1e-7 and variance to 1e-5
    relative to float64 on the same float32 data.
"""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ipugraph as ig
from ipugraph import _C
from helpers import TARGETS as PLAN_TARGETS, rand, run

OPS = ig.ops.OPS
TARGETS = ["host", "mk2"]


def close(actual, expected, atol_rel, rtol, what, atol_abs=0.0):
    actual = np.asarray(actual, np.float64)
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    scale = float(np.abs(expected).max()) if expected.size else 0.0
    err = np.abs(actual - expected)
    bad = err > atol_rel * scale + atol_abs + rtol * np.abs(expected)
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} off, max err {err.max():.3e} "
                           f"at {np.unravel_index(err.argmax(), err.shape)} (scale {scale:.3e})")


def t64(a, grad=False):
    return torch.tensor(np.asarray(a, np.float64), requires_grad=grad)


def one_op(opname, arrays, target, **attrs):
    """Runs OPS[opname] on fed inputs through the graph API on the CPU backend."""
    g = ig.Graph(name=opname)
    ins = [g.input(f"in{i}", a.shape) for i, a in enumerate(arrays)]
    g.output("y", OPS[opname](*ins, **attrs))
    return run(g, "cpu", target, {f"in{i}": a for i, a in enumerate(arrays)})["y"]


def reference(opname, arrays, **attrs):
    return OPS[opname].reference(*[np.asarray(a, np.float64) for a in arrays], **attrs)


# -- pooling ----------------------------------------------------------------------------------

# (N, C, H, W, kernel, stride, padding, dilation)
POOL_CASES = {
    "resnet_3x3s2p1": (2, 5, 17, 15, (3, 3), (2, 2), (1, 1), (1, 1)),
    "batch1_odd_c": (1, 13, 9, 7, (3, 3), (2, 2), (1, 1), (1, 1)),
    "overlap_s1": (2, 3, 8, 11, (3, 3), (1, 1), (1, 1), (1, 1)),
    "k2s2_nopad_odd": (1, 7, 9, 7, (2, 2), (2, 2), (0, 0), (1, 1)),
    "nonsquare": (1, 6, 10, 9, (2, 3), (1, 2), (1, 1), (1, 1)),
    "dilation2": (1, 4, 12, 10, (3, 3), (1, 2), (1, 1), (2, 2)),
    "wide_c": (1, 70, 6, 5, (3, 3), (2, 2), (1, 1), (1, 1)),   # more than one 64-channel block
}


def relu_ties(shape, seed):
    """ReLU of values on a 1/4 grid: most windows hold several equal maxima (often all 0)."""
    return np.maximum(np.round(rand(shape, seed) * 4) / 4, 0).astype(np.float32)


def torch_max_pool_grad(x, dy, k, s, p, d):
    xt = t64(x, True)
    y = F.max_pool2d(xt, k, s, p, d)
    y.backward(t64(dy))
    return xt.grad.numpy()


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", list(POOL_CASES))
def test_max_pool2d_backward(case, target):
    n, c, h, w, k, s, p, d = POOL_CASES[case]
    x = relu_ties((n, c, h, w), 1)
    oh = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    dy = rand((n, c, oh, ow), 2)
    attrs = dict(kernel=k, stride=s, padding=p, dilation=d)
    got = one_op("max_pool2d_backward", [x, dy], target, **attrs)
    expect = torch_max_pool_grad(x, dy, k, s, p, d)
    close(got, expect, 1e-6, 1e-6, f"{case} vs torch")
    close(got, reference("max_pool2d_backward", [x, dy], **attrs), 1e-6, 1e-6,
          f"{case} vs reference")


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("cip", [True, False])
@pytest.mark.parametrize("case", ["resnet_3x3s2p1", "batch1_odd_c", "overlap_s1",
                                  "k2s2_nopad_odd", "nonsquare", "wide_c", "global"])
def test_avg_pool2d_backward(case, cip, target):
    if case == "global":
        n, c, h, w = 2, 11, 7, 5
        k, s, p = (h, w), (h, w), (0, 0)
    else:
        n, c, h, w, k, s, p, _ = POOL_CASES[case]
    oh = (h + 2 * p[0] - k[0]) // s[0] + 1
    ow = (w + 2 * p[1] - k[1]) // s[1] + 1
    dy = rand((n, c, oh, ow), 3)
    attrs = dict(kernel=k, stride=s, padding=p, count_include_pad=cip, input_size=(h, w))
    got = one_op("avg_pool2d_backward", [dy], target, **attrs)
    xt = t64(np.zeros((n, c, h, w)), True)
    F.avg_pool2d(xt, k, s, p, count_include_pad=cip).backward(t64(dy))
    close(got, xt.grad.numpy(), 1e-6, 1e-6, f"{case} cip={cip} vs torch")
    close(got, reference("avg_pool2d_backward", [dy], **attrs), 1e-6, 1e-6,
          f"{case} cip={cip} vs reference")


def _nhwc(a):
    return np.ascontiguousarray(np.asarray(a, np.float32).transpose(0, 2, 3, 1))


def _boxes(n, c, h, rng):
    """Vertex rows (n0,n1,c0,c1,ih0,ih1) tiling [0,n) x [0,c) x [0,h) at random cut points
    (row boxes of 1..3 rows, channel boxes of 1..5 channels)."""
    def cuts(extent, most):
        edges = [0]
        while edges[-1] < extent:
            edges.append(min(extent, edges[-1] + int(rng.integers(1, most + 1))))
        return list(zip(edges[:-1], edges[1:]))
    rows = [(a, b, c0, c1, r0, r1) for a in range(n) for b in [a + 1]
            for c0, c1 in cuts(c, 5) for r0, r1 in cuts(h, 3)]
    order = rng.permutation(len(rows))
    return np.array([rows[i] for i in order], np.int32)


@pytest.mark.parametrize("case", ["resnet_3x3s2p1", "overlap_s1", "dilation2", "wide_c"])
def test_pool_backward_any_vertex_split(case):
    """Every row / channel split (windows straddling vertex boundaries, overlapping windows)
    gives bitwise the result of one vertex, which equals torch."""
    n, c, h, w, k, s, p, d = POOL_CASES[case]
    rng = np.random.default_rng(7)
    x = relu_ties((n, c, h, w), 4)
    oh = (h + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    ow = (w + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    dy = rand((n, c, oh, ow), 5)
    whole = np.array([[0, n, 0, c, 0, h]], np.int32)
    split = _boxes(n, c, h, rng)
    outs = []
    for verts in (whole, split):
        out = np.full((n, h, w, c), np.nan, np.float32)
        _C.max_pool2d_backward_nhwc(_nhwc(x), _nhwc(dy), out, verts, *k, *s, *p, *d)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    close(outs[1].transpose(0, 3, 1, 2), torch_max_pool_grad(x, dy, k, s, p, d), 1e-6, 1e-6,
          f"{case} split vs torch")
    if d == (1, 1):
        for cip in (True, False):
            avg = []
            for verts in (whole, split):
                out = np.full((n, h, w, c), np.nan, np.float32)
                _C.avg_pool2d_backward_nhwc(_nhwc(dy), out, verts, *k, *s, *p, cip)
                avg.append(out)
            np.testing.assert_array_equal(avg[0], avg[1])
            assert np.isfinite(avg[1]).all()


def test_max_pool2d_backward_torch_edge_rules():
    """torch's routing where the first strict maximum is not enough: a NaN replaces the max
    (the LAST NaN of a window wins), and an all -inf window routes to its first in-bounds tap
    (padding never wins). (The NumPy reference gives the FIRST NaN and drops -inf windows,
    so these are checked against torch only.)"""
    x = np.array([[[[1.0, np.nan, np.nan, 0.0, -np.inf, -np.inf, -np.inf]]]], np.float32)
    x = np.repeat(np.repeat(x, 2, axis=1), 3, axis=2)           # [1, 2, 3, 7]
    for k, s, p in (((1, 4), (1, 1), (0, 1)), ((3, 3), (1, 2), (1, 1)), ((1, 3), (1, 1), (0, 1))):
        oh = (3 + 2 * p[0] - k[0]) // s[0] + 1
        ow = (7 + 2 * p[1] - k[1]) // s[1] + 1
        dy = rand((1, 2, oh, ow), 6)
        out = np.empty((1, 3, 7, 2), np.float32)
        _C.max_pool2d_backward_nhwc(_nhwc(x), _nhwc(dy), out,
                                    np.array([[0, 1, 0, 2, 0, 3]], np.int32), *k, *s, *p)
        close(out.transpose(0, 3, 1, 2), torch_max_pool_grad(x, dy, k, s, p, (1, 1)), 1e-6,
              1e-6, f"edge rules k={k} s={s} p={p}")


# -- batch norm -------------------------------------------------------------------------------

BN_SHAPES = {
    "4d_odd": (3, 13, 9, 7),
    "4d_batch1": (1, 5, 17, 19),
    "4d_wide": (2, 67, 5, 3),      # more than one 64-channel block
    "2d": (37, 13),
    "3d": (4, 6, 11),
}


def _bn_graph(shape, eps, momentum, feeds):
    """x, gamma, beta and the running statistics as variables (the gradients and updates flow
    to them); dy fed: the loss is sum(y · dy)."""
    c = shape[1]
    g = ig.Graph(name="bn_train")
    x, gamma, beta = (g.variable(n, feeds[n].shape, value=feeds[n]) for n in ("x", "gamma", "beta"))
    rm = g.variable("rm", (c,), value=feeds["rm"], trainable=False)
    rv = g.variable("rv", (c,), value=feeds["rv"], trainable=False)
    dy = g.input("dy", shape)
    y, stats = ig.ops.batch_norm_train(x, gamma, beta, eps=eps, running_mean=rm, running_var=rv,
                                       momentum=momentum)
    grads = ig.grad(g, ig.ops.sum(y * dy), [x, gamma, beta])
    outs = {"stats": stats, "y": y, "gs": OPS["bn_grad_stats"](dy, x, stats, eps=eps),
            "dx": grads["x"], "dgamma": grads["gamma"], "dbeta": grads["beta"],
            "csum": OPS["channel_sum"](dy)}
    for name, t in outs.items():
        g.output(name, t)
    return g


@pytest.mark.parametrize("target", TARGETS)
@pytest.mark.parametrize("case", list(BN_SHAPES))
def test_batch_norm_training_chain(case, target):
    shape = BN_SHAPES[case]
    c = shape[1]
    eps, momentum = 1e-5, 0.1
    shift = rand((1, c) + (1,) * (len(shape) - 2), 9, -3, 3)
    feeds = {"x": (rand(shape, 10) * 2 + shift).astype(np.float32), "dy": rand(shape, 11),
             "gamma": rand((c,), 12, 0.5, 1.5), "beta": rand((c,), 13), "rm": rand((c,), 14),
             "rv": rand((c,), 15, 0.5, 2.0)}
    g = _bn_graph(shape, eps, momentum, feeds)
    eng = ig.compile(g, backend="cpu", plan=ig.plan(g, PLAN_TARGETS[target]()))
    got = eng.run({"dy": feeds["dy"]})
    got["rm_new"], got["rv_new"] = eng.variables["rm"], eng.variables["rv"]

    # torch, float64 autograd
    x, gamma, beta = t64(feeds["x"], True), t64(feeds["gamma"], True), t64(feeds["beta"], True)
    rm, rv = t64(feeds["rm"]), t64(feeds["rv"])
    y = F.batch_norm(x, rm, rv, gamma, beta, training=True, momentum=momentum, eps=eps)
    y.backward(t64(feeds["dy"]))
    axes = (0,) + tuple(range(2, len(shape)))
    xd = feeds["x"].astype(np.float64)
    torch_out = {"y": y.detach().numpy(), "dx": x.grad.numpy(), "dgamma": gamma.grad.numpy(),
                 "dbeta": beta.grad.numpy(), "rm_new": rm.numpy(), "rv_new": rv.numpy(),
                 "stats": np.stack([xd.mean(axis=axes), xd.var(axis=axes)]),
                 "csum": feeds["dy"].astype(np.float64).sum(axis=axes)}
    # the ops' NumPy references, chained in float64
    r = {"stats": reference("bn_stats", [feeds["x"]])}
    r["y"] = reference("batch_norm_train", [feeds["x"], feeds["gamma"], feeds["beta"],
                                             r["stats"]], eps=eps)
    r["gs"] = reference("bn_grad_stats", [feeds["dy"], feeds["x"], r["stats"]], eps=eps)
    r["dgamma"] = reference("select", [r["gs"]], index=1)
    r["dbeta"] = reference("select", [r["gs"]], index=0)
    r["csum"] = reference("channel_sum", [feeds["dy"]])

    sums = {"stats": np.abs(xd).mean(), "dgamma": 3 * np.abs(feeds["dy"]).sum(axis=axes).max(),
            "dbeta": np.abs(feeds["dy"]).sum(axis=axes).max(),
            "csum": np.abs(feeds["dy"]).sum(axis=axes).max()}
    for oracle, name in ((torch_out, "torch"), (r, "reference")):
        for key, expect in oracle.items():
            if key in sums:          # sums in double: one float32 rounding of the result
                close(got[key], expect, 0, 1e-6, f"{case} {key} vs {name}",
                      atol_abs=1e-6 * sums[key])
            else:
                close(got[key], expect, 1e-5, 1e-5, f"{case} {key} vs {name}")


def test_bn_stats_accuracy_large_m():
    """M = 102400 values per channel, mean ~1e2 and std ~1e-2: a float32 single-pass
    E[x^2] - E[x]^2 would return noise; double sums of shifted values are exact to float32
    rounding. Also checks that one vertex split into row chunks equals a per-channel split."""
    rng = np.random.default_rng(20)
    n, c, h, w = 64, 3, 40, 40
    x = (100 + 0.01 * rng.standard_normal((n, h, w, c))).astype(np.float32)   # NHWC
    xd = x.astype(np.float64).reshape(-1, c)
    mean, var = xd.mean(axis=0), xd.var(axis=0)
    for verts in (np.array([[0, c]], np.int32), np.array([[2, 3], [0, 1], [1, 2]], np.int32),
                  np.array([[0, 3, 0, 1, 0, h], [0, 3, 1, n, 0, 13], [0, 3, 1, n, 13, h]],
                           np.int32)):
        out = np.full((2, c), np.nan, np.float32)
        _C.bn_stats(x, out, h, w, True, verts)
        assert np.all(np.abs(out[0] - mean) <= 1e-7 * np.abs(mean)), (out[0], mean)
        assert np.all(np.abs(out[1] - var) <= 1e-5 * var), (out[1], var)
    # channel_sum and bn_grad_stats over the same size, against float64
    cs = np.empty(c, np.float32)
    _C.channel_sum(x, cs, h, w, True, np.array([[0, c]], np.int32))
    assert np.all(np.abs(cs - xd.sum(axis=0)) <= 1e-7 * np.abs(xd.sum(axis=0)))
    dy = rng.standard_normal(x.shape).astype(np.float32)
    stats = np.stack([mean, var]).astype(np.float32)
    gs = np.empty((2, c), np.float32)
    _C.bn_grad_stats(dy, x, stats, gs, h, w, True, 1e-5,
                      np.array([[0, 2, 0, n, 0, h], [2, 3, 0, 5, 0, h], [2, 3, 5, n, 0, 7],
                                [2, 3, 5, n, 7, h]], np.int32))
    dyd = dy.astype(np.float64).reshape(-1, c)
    xhat = (xd - stats[0].astype(np.float64)) / np.sqrt(stats[1].astype(np.float64) + 1e-5)
    for row, expect, terms in ((0, dyd.sum(0), np.abs(dyd).sum(0)),
                               (1, (dyd * xhat).sum(0), np.abs(dyd * xhat).sum(0))):
        assert np.all(np.abs(gs[row] - expect) <= 1e-6 * np.abs(expect) + 1e-7 * terms), row


def test_flat_bn_ops_any_split_3d():
    """[N, C, L] storage (channel = (i // L) % C) with vertex ranges cutting channel runs at
    random places equals one vertex; select over a 4-D and a 5-D tensor (layout change)."""
    rng = np.random.default_rng(30)
    n, c, l = 3, 5, 7
    x = rand((n, c, l), 31)
    gamma, beta = rand((c,), 33, 0.5, 1.5), rand((c,), 34)
    stats = np.stack([rand((c,), 35), rand((c,), 36, 0.5, 1.5)])
    size = x.size
    edges = np.unique(np.concatenate([[0, size], rng.integers(0, size, 12)]))
    split = np.stack([edges[:-1], edges[1:]], 1).astype(np.int32)[::-1].copy()
    whole = np.array([[0, size]], np.int32)
    outs = []
    for verts in (whole, split):
        out = np.full(size, np.nan, np.float32)
        _C.batch_norm_train(x, gamma, beta, stats, out, l, 1e-5, verts)
        outs.append(out)
    np.testing.assert_array_equal(outs[0], outs[1])
    close(outs[0].reshape(x.shape), reference("batch_norm_train", [x, gamma, beta, stats],
                                              eps=1e-5), 1e-5, 1e-5, "3-D batch_norm_train")
    for shape in ((2, 3, 4, 5), (3, 2, 3, 4, 5), (4, 9)):
        t = rand(shape, 40)
        for target in TARGETS:
            got = one_op("select", [t], target, index=shape[0] - 1)
            np.testing.assert_array_equal(got, t[shape[0] - 1])


# -- bad arguments ----------------------------------------------------------------------------

def _v(*rows):
    return np.array(rows, np.int32)


def test_bad_arguments_raise():
    x = np.zeros((1, 5, 5, 3), np.float32)       # NHWC
    dy = np.zeros((1, 3, 3, 3), np.float32)      # 3x3 s2 p1 of 5x5
    dx = np.zeros_like(x)
    geom = (3, 3, 2, 2, 1, 1)
    ok = _v([0, 1, 0, 3, 0, 5])
    _C.max_pool2d_backward_nhwc(x, dy, dx, ok, *geom)          # sanity: this one is fine
    bad_calls = [
        (lambda: _C.max_pool2d_backward_nhwc(x, dy[:, :2], dx, ok, *geom), "dy has shape"),
        (lambda: _C.max_pool2d_backward_nhwc(x[:, :4], dy, dx, ok, *geom), "x has shape"),
        (lambda: _C.max_pool2d_backward_nhwc(x, dy, dx, _v([0, 1, 0, 3, 0, 6]), *geom),
         "input row"),
        (lambda: _C.max_pool2d_backward_nhwc(x, dy, dx, _v([0, 1, 2, 1, 0, 5]), *geom),
         "channel"),
        (lambda: _C.max_pool2d_backward_nhwc(x, dy, dx, _v([0, 2, 0, 3, 0, 5]), *geom), "batch"),
        (lambda: _C.max_pool2d_backward_nhwc(x, dy, dx, _v([0, 1, 0, 3]), *geom), "vertices"),
        (lambda: _C.max_pool2d_backward_nhwc(x, dy, dx.astype(np.float64), ok, *geom),
         "float32"),
        (lambda: _C.max_pool2d_backward_nhwc(x, dy, np.zeros((1, 3, 5, 5), np.float32)
                                             .transpose(0, 2, 3, 1), ok, *geom), "contiguous"),
        (lambda: _C.max_pool2d_backward_nhwc(x, dy, x, ok, *geom), "overlaps"),
        (lambda: _C.max_pool2d_backward_nhwc(x, dy, dx, ok, 3, 3, 0, 2, 1, 1), "stride"),
        (lambda: _C.max_pool2d_backward_nhwc(x, dy, dx, ok, 2, 2, 2, 2, 2, 2), "padding"),
        (lambda: _C.max_pool2d_backward_nhwc(x[0], dy, dx, ok, *geom), "4-D"),
        (lambda: _C.avg_pool2d_backward_nhwc(dy[:, :, :2], dx, ok, *geom, True), "dy has shape"),
        (lambda: _C.avg_pool2d_backward_nhwc(dy, dx, _v([0, 1, 0, 4, 0, 5]), *geom, True),
         "channel"),
        (lambda: _C.avg_pool2d_backward_nhwc(dy, dx, ok, 9, 9, 1, 1, 0, 0, True), "window"),
    ]
    xf = np.zeros(24, np.float32)                # [N=2, 2, 2, C=3] or [N=2, C=3, L=4]
    st = np.zeros((2, 3), np.float32)
    g3 = np.ones(3, np.float32)
    cv = _v([0, 3])
    fv = _v([0, 24])
    bad_calls += [
        (lambda: _C.bn_stats(xf, np.zeros((3, 3), np.float32), 2, 2, True, cv),
         "expected \\(2, C\\)"),
        (lambda: _C.bn_stats(xf, np.zeros((2, 5), np.float32), 1, 1, True, _v([0, 5])), "blocks"),
        (lambda: _C.bn_stats(xf, st, 0, 1, True, cv), "rows"),
        (lambda: _C.bn_stats(xf, st, 2, 2, True, _v([0, 4])), "channel \\(c0, c1\\)"),
        (lambda: _C.bn_stats(xf, st, 2, 2, True, _v([0, 1, 2])), "vertices"),
        (lambda: _C.bn_stats(xf, st, 2, 2, True, _v([0, 3, 0, 3, 0, 2])), "batch"),
        (lambda: _C.bn_stats(xf, st, 2, 2, False, _v([0, 3, 0, 2, 0, 3])), "row"),
        (lambda: _C.bn_stats(xf, st, 2, 2, True, _v([0, 3, 0, 1, 0, 2])), "not a complete"),
        (lambda: _C.bn_stats(xf, st, 2, 2, True, _v([0, 3, 0, 2, 0, 2], [1, 2, 0, 1, 0, 1])),
         "not a complete"),
        (lambda: _C.channel_sum(xf, st, 2, 2, True, cv), "1-D"),
        (lambda: _C.bn_grad_stats(xf[:12], xf, st, np.zeros((2, 3), np.float32), 2, 2, True,
                                  1e-5, cv), "same number"),
        (lambda: _C.bn_grad_stats(xf, xf, st[:, :2], np.zeros((2, 3), np.float32), 2, 2, True,
                                  1e-5, cv), "stats has shape"),
        (lambda: _C.bn_grad_stats(xf, xf, st, np.zeros((2, 3), np.float32), 2, 2, True, -1.0,
                                  cv), "eps"),
        (lambda: _C.batch_norm_train(xf, g3[:2], g3[:2], st[:, :2], np.zeros(24, np.float32), 5,
                                     1e-5, fv), "channel blocks"),
        (lambda: _C.batch_norm_train(xf, g3, g3[:2], st, np.zeros(24, np.float32), 1, 1e-5, fv),
         "beta"),
        (lambda: _C.batch_norm_train(xf, g3, g3, st, np.zeros(24, np.float32), 1, 1e-5,
                                     _v([0, 25])), "element"),
        (lambda: _C.batch_norm_train(xf, g3, g3, st, np.zeros(23, np.float32), 1, 1e-5, fv),
         "same number"),
    ]
    for i, (call, match) in enumerate(bad_calls):
        try:
            call()
        except ValueError as e:
            assert re.search(match, str(e)), f"bad call #{i}: {e!r} does not match {match!r}"
        else:
            pytest.fail(f"bad call #{i} (expects {match!r}) did not raise")
    assert not np.isnan(dx).any()



@pytest.mark.parametrize("shape", [(9, 13), (4, 6, 11), (3, 5, 6, 7)])
def test_channel_reductions_box_split(shape):
    """bn_stats / bn_grad_stats / channel_sum with the batch and rows split too (reduce dims:
    boxes (c0, c1, n0, n1, h0, h1) whose sums are added per channel), for [N, C] and NHWC
    (channels last) and [N, C, L] (channel-major) storage, against the NumPy references."""
    rng = np.random.default_rng(50)
    n, c = shape[:2]
    rows = shape[2] if len(shape) > 2 else 1
    x, dy = rand(shape, 51) + 2, rand(shape, 52)
    if len(shape) == 4:
        layout, to_store = (shape[2], shape[3], True), _nhwc
    elif len(shape) == 2:
        layout, to_store = (1, 1, True), np.ascontiguousarray
    else:
        layout, to_store = (shape[2], 1, False), np.ascontiguousarray

    def cuts(extent):
        edges = np.unique(np.concatenate([[0, extent], rng.integers(0, extent, 2)]))
        return list(zip(edges[:-1], edges[1:]))
    verts = np.array([(c0, c1, n0, n1, h0, h1) for c0, c1 in cuts(c) for n0, n1 in cuts(n)
                      for h0, h1 in cuts(rows)], np.int32)
    xs, dys = to_store(x), to_store(dy)
    stats = np.empty((2, c), np.float32)
    _C.bn_stats(xs, stats, *layout, verts)
    close(stats, reference("bn_stats", [x]), 0, 1e-6, f"{shape} bn_stats",
          atol_abs=1e-6 * np.abs(x).mean())
    gs = np.empty((2, c), np.float32)
    _C.bn_grad_stats(dys, xs, stats, gs, *layout, 1e-5, verts)
    close(gs, reference("bn_grad_stats", [dy, x, stats], eps=1e-5), 0, 1e-6,
          f"{shape} bn_grad_stats", atol_abs=1e-6 * 3 * np.abs(dy).sum() / c)
    cs = np.empty(c, np.float32)
    _C.channel_sum(dys, cs, *layout, verts)
    close(cs, reference("channel_sum", [dy]), 0, 1e-6, f"{shape} channel_sum",
          atol_abs=1e-6 * np.abs(dy).sum() / c)
