"""The C++/OpenMP codelets (ipugraph._C) against NumPy float64 references.

Tolerance: results are float32 with float32 accumulation, so every comparison uses
rtol = 1e-4 and atol = 1e-5 * sqrt(reduction length) * magnitude, where the reduction length is
Cg*R*S for a conv (K for a matmul, the window size for pooling) and magnitude is the RMS of the
float64 reference (at least 1).  Inputs are N(0, 1) and weights N(0, 1/fan_in), so outputs are O(1).

Partial sums (conv2d_nhwc_partial, matmul_partial) use the same rule with the slab's own
reduction length, (c1-c0)*(r1-r0)*S for a conv slab and k1-k0 for a matmul slab; a reduction of
P slabs plus bias and residual (reduce_partials) uses length P + 2; the slabs of a complete
split summed and reduced are compared with the full conv/matmul at its full reduction length.
Boxes outside a vertex's own box and slab are checked bit for bit (NaN sentinels).
"""
import math

import numpy as np
import pytest

import torch

import ipugraph as ig
from ipugraph import _C  # no skip: the extension must build and import

RTOL = 1e-4


def _atol(ref, red):
    mag = max(1.0, float(np.sqrt(np.mean(np.square(ref))))) if ref.size else 1.0
    return 1e-5 * math.sqrt(max(1, red)) * mag


def assert_close(got, ref, red):
    np.testing.assert_allclose(got, ref, rtol=RTOL, atol=_atol(ref, red))


# --------------------------------------------------------------------------- references
def conv_ref(x, w, bias, res, stride, pad, dil, groups, relu):
    N, H, W, C = x.shape
    K, Cg, R, S = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, pad, dil
    OH = (H + 2 * ph - dh * (R - 1) - 1) // sh + 1
    OW = (W + 2 * pw - dw * (S - 1) - 1) // sw + 1
    xp = np.pad(x.astype(np.float64), ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    w64 = w.astype(np.float64)
    out = np.zeros((N, OH, OW, K))
    Kg = K // groups
    for g in range(groups):
        for r in range(R):
            for s in range(S):
                patch = xp[:, r * dh: r * dh + sh * (OH - 1) + 1: sh,
                           s * dw: s * dw + sw * (OW - 1) + 1: sw, g * Cg:(g + 1) * Cg]
                out[..., g * Kg:(g + 1) * Kg] += patch @ w64[g * Kg:(g + 1) * Kg, :, r, s].T
    if bias is not None:
        out += bias
    if res is not None:
        out += res
    return np.maximum(out, 0) if relu else out


def out_hw(H, W, R, S, stride, pad, dil):
    return ((H + 2 * pad[0] - dil[0] * (R - 1) - 1) // stride[0] + 1,
            (W + 2 * pad[1] - dil[1] * (S - 1) - 1) // stride[1] + 1)


def split(n, parts):
    """Uneven split points of range(n) into at most `parts` pieces (first piece smallest)."""
    if n == 0:
        return [0, 0]
    pts = sorted({0, n} | {int(round(n * (i / parts) ** 1.3)) for i in range(1, parts)})
    return pts


def grid_vertices(*axes):
    """Cartesian product of per-axis split-point lists -> int32 [V, 2*len(axes)]."""
    rows = [[]]
    for pts in axes:
        rows = [r + [a, b] for r in rows for a, b in zip(pts[:-1], pts[1:])]
    return np.array(rows, dtype=np.int32).reshape(len(rows), 2 * len(axes))


def run_conv(x, w, bias, res, stride, pad, dil, groups, relu, vertices, out=None):
    N, H, W, C = x.shape
    K, Cg, R, S = w.shape
    OH, OW = out_hw(H, W, R, S, stride, pad, dil)
    wp = _C.pack_conv_weight(w, groups)
    if out is None:
        out = np.full((N, OH, OW, K), np.nan, np.float32)
    _C.conv2d_nhwc(x, wp, bias, res, out, vertices, K, R, S, stride[0], stride[1], pad[0], pad[1],
                   dil[0], dil[1], groups, relu)
    return out


def make_conv(rng, N, H, W, C, K, R, S, groups=1):
    x = rng.standard_normal((N, H, W, C), dtype=np.float32)
    fan = C // groups * R * S
    w = (rng.standard_normal((K, C // groups, R, S)) / math.sqrt(fan)).astype(np.float32)
    return x, w


# --------------------------------------------------------------------------- conv
# (N, H, W, C, K, R, S, stride, pad, dil, groups)
RESNET34 = [
    (1, 224, 224, 3, 64, 7, 7, 2, 3, 1, 1),     # stem
    (1, 56, 56, 64, 64, 3, 3, 1, 1, 1, 1),      # layer1
    (2, 56, 56, 64, 128, 3, 3, 2, 1, 1, 1),     # layer2 first conv
    (2, 56, 56, 64, 128, 1, 1, 2, 0, 1, 1),     # layer2 downsample
    (2, 28, 28, 128, 128, 3, 3, 1, 1, 1, 1),
    (2, 28, 28, 128, 256, 3, 3, 2, 1, 1, 1),
    (2, 28, 28, 128, 256, 1, 1, 2, 0, 1, 1),
    (2, 14, 14, 256, 256, 3, 3, 1, 1, 1, 1),
    (2, 14, 14, 256, 512, 3, 3, 2, 1, 1, 1),
    (2, 14, 14, 256, 512, 1, 1, 2, 0, 1, 1),
    (2, 7, 7, 512, 512, 3, 3, 1, 1, 1, 1),
]

ODD = [
    (1, 13, 11, 17, 33, 3, 3, 2, 1, 1, 1),      # odd everything, stride 2
    (2, 13, 11, 16, 24, 3, 3, 1, 2, 2, 1),      # dilation 2
    (1, 12, 10, 3, 5, 3, 3, 1, 2, 2, 1),        # dilation 2, tiny C: gathered rows
    (2, 9, 10, 32, 48, 3, 3, 1, 1, 1, 2),       # groups 2, Cg 16: one segment per tap
    (1, 9, 7, 16, 20, 3, 3, 2, 1, 1, 2),        # groups 2, Cg 8: gathered rows
    (2, 11, 9, 24, 24, 3, 3, 1, 1, 1, 24),      # depthwise
    (1, 10, 10, 24, 48, 3, 3, 2, 1, 1, 24),     # depthwise, multiplier 2
    (1, 8, 9, 3, 3, 3, 3, 1, 1, 1, 1),          # K = C = 3
    (1, 9, 9, 33, 17, 1, 1, 1, 0, 1, 1),        # 1x1
    (1, 9, 9, 5, 7, 1, 1, 1, 1, 1, 1),          # 1x1 with padding (border pixels all zero)
    (1, 9, 9, 8, 16, 7, 7, 1, 3, 1, 1),         # padding 3, 7x7 on a small input
    (1, 5, 5, 6, 19, 5, 5, 1, 0, 1, 1),         # output 1x1
    (1, 14, 15, 10, 21, 3, 5, (3, 2), (1, 2), 1, 1),  # asymmetric kernel/stride/pad
    (1, 16, 16, 40, 16, 3, 3, 1, 1, (2, 1), 2), # grouped + dilation in h only
]


def _pair(v):
    return (v, v) if isinstance(v, int) else tuple(v)


@pytest.mark.parametrize("case", RESNET34 + ODD, ids=lambda c: "x".join(map(str, c)))
def test_conv_matches_reference(case):
    N, H, W, C, K, R, S, st, pd, dl, groups = case
    stride, pad, dil = _pair(st), _pair(pd), _pair(dl)
    rng = np.random.default_rng(hash(case) % 2**32)
    x, w = make_conv(rng, N, H, W, C, K, R, S, groups)
    OH, OW = out_hw(H, W, R, S, stride, pad, dil)
    bias = rng.standard_normal(K, dtype=np.float32)
    res = rng.standard_normal((N, OH, OW, K), dtype=np.float32)
    # rotate bias/residual/relu through the cases; the dedicated test below covers all 8
    idx = (RESNET34 + ODD).index(case)
    use_b, use_r, relu = idx % 2 == 0, idx % 3 == 0, idx % 4 < 2
    b = bias if use_b else None
    r = res if use_r else None
    verts = grid_vertices(split(N, 2), split(K, 3), split(OH, 3), split(OW, 2))
    got = run_conv(x, w, b, r, stride, pad, dil, groups, relu, verts)
    ref = conv_ref(x, w, b, r, stride, pad, dil, groups, relu)
    assert_close(got, ref, C // groups * R * S)


@pytest.mark.parametrize("use_b", [False, True])
@pytest.mark.parametrize("use_r", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_conv_epilogue_combinations(use_b, use_r, relu):
    rng = np.random.default_rng(7)
    N, H, W, C, K = 2, 9, 8, 19, 37
    x, w = make_conv(rng, N, H, W, C, K, 3, 3)
    b = rng.standard_normal(K, dtype=np.float32) if use_b else None
    r = rng.standard_normal((N, 9, 8, K), dtype=np.float32) if use_r else None
    verts = grid_vertices([0, N], [0, 5, 16, 21, 37], [0, 9], [0, 8])
    got = run_conv(x, w, b, r, (1, 1), (1, 1), (1, 1), 1, relu, verts)
    assert_close(got, conv_ref(x, w, b, r, (1, 1), (1, 1), (1, 1), 1, relu), C * 9)


def test_conv_vertex_writes_exactly_its_slice():
    rng = np.random.default_rng(3)
    N, H, W, C, K = 3, 11, 13, 20, 45
    x, w = make_conv(rng, N, H, W, C, K, 3, 3)
    b = rng.standard_normal(K, dtype=np.float32)
    ref = conv_ref(x, w, b, None, (1, 1), (1, 1), (1, 1), 1, True)
    # k split at non-multiples of 16, uneven row/col splits
    verts = grid_vertices([0, 1, 3], [0, 7, 30, 45], [0, 4, 5, 11], [0, 6, 13])
    wp = _C.pack_conv_weight(w, 1)
    out = np.full((N, H, W, K), np.nan, np.float32)
    for v in verts[[0, 5, 13, len(verts) - 1]]:
        before = out.copy()
        _C.conv2d_nhwc(x, wp, b, None, out, v[None, :], K, 3, 3, 1, 1, 1, 1, 1, 1, 1, True)
        n0, n1, k0, k1, h0, h1, w0, w1 = v
        mask = np.zeros(out.shape, bool)
        mask[n0:n1, h0:h1, w0:w1, k0:k1] = True
        assert_close(out[mask], ref[mask], C * 9)
        np.testing.assert_array_equal(out[~mask], before[~mask])  # NaN == NaN here
    out[:] = np.nan
    _C.conv2d_nhwc(x, wp, b, None, out, verts, K, 3, 3, 1, 1, 1, 1, 1, 1, 1, True)
    assert_close(out, ref, C * 9)
    # an empty table and empty ranges write nothing
    out2 = np.full_like(out, np.nan)
    _C.conv2d_nhwc(x, wp, b, None, out2, np.zeros((0, 8), np.int32), K, 3, 3, 1, 1, 1, 1, 1, 1, 1, True)
    _C.conv2d_nhwc(x, wp, b, None, out2, np.array([[1, 1, 0, K, 0, H, 0, W]], np.int32),
                   K, 3, 3, 1, 1, 1, 1, 1, 1, 1, True)
    assert np.isnan(out2).all()


def test_conv_residual_in_place():
    # residual may be `out` itself (each element is read before it is written)
    rng = np.random.default_rng(5)
    x, w = make_conv(rng, 1, 6, 7, 16, 32, 3, 3)
    res = rng.standard_normal((1, 6, 7, 32), dtype=np.float32)
    ref = conv_ref(x, w, None, res, (1, 1), (1, 1), (1, 1), 1, True)
    out = res.copy()
    run_conv(x, w, None, out, (1, 1), (1, 1), (1, 1), 1, True, grid_vertices([0, 1], [0, 32], [0, 6], [0, 7]), out=out)
    assert_close(out, ref, 16 * 9)


def test_pack_conv_weight_layout():
    rng = np.random.default_rng(0)
    K, Cg, R, S, G = 40, 3, 2, 3, 2
    w = rng.standard_normal((K, Cg, R, S), dtype=np.float32)
    wp = _C.pack_conv_weight(w, G)
    Kg, KB = K // G, -(-(K // G) // 16)
    assert wp.dtype == np.float32 and wp.ndim == 1 and wp.size == G * KB * R * S * Cg * 16
    p = wp.reshape(G, KB, R, S, Cg, 16)
    for g in range(G):
        for kk in range(KB * 16):
            if kk < Kg:
                np.testing.assert_array_equal(p[g, kk // 16, :, :, :, kk % 16],
                                              w[g * Kg + kk].transpose(1, 2, 0))
            else:
                assert not p[g, kk // 16, :, :, :, kk % 16].any()


@pytest.mark.parametrize("name,args", [
    ("pack_conv_weight", lambda w: (w, 2)),
    ("pack_conv_data_weight", lambda w: (w, 2)),
    ("pack_matmul_weight", lambda w: (w.reshape(40, -1), True)),
    ("winograd_weights", lambda w: (w, False, 4)),
])
def test_packers_reuse_a_buffer_given_into(name, args):
    """into= (a trained weight repacked every step) overwrites the earlier result in place,
    equal to a fresh packing; a buffer of the wrong size or one that overlaps the weight is
    refused naming the call."""
    rng = np.random.default_rng(3)
    fn = getattr(_C, name)
    w1, w2 = (rng.standard_normal((40, 5, 3, 3), dtype=np.float32) for _ in range(2))
    buf = fn(*args(w1))
    again = fn(*args(w2), into=buf)
    assert np.shares_memory(again, buf)
    np.testing.assert_array_equal(buf, fn(*args(w2)))
    with pytest.raises(ValueError, match=f"{name}: into has shape"):
        fn(*args(w2), into=buf[:-1].copy())
    # the weight's storage inside the buffer it would be packed into
    wide = np.zeros(buf.size + w2.size, np.float32)
    inside = wide[buf.size - 16:buf.size - 16 + w2.size].reshape(w2.shape)
    with pytest.raises(ValueError, match=f"{name}: out .* overlaps the weight"):
        fn(*args(inside), into=wide[:buf.size])


# --------------------------------------------------------------------------- matmul
@pytest.mark.parametrize("M,K,N,transposed,use_b,relu", [
    (1, 1, 1, False, False, False),
    (7, 13, 5, False, True, True),
    (8, 512, 1000, True, True, False),       # ResNet-34 fc
    (33, 300, 17, True, False, True),
    (13, 4100, 20, False, True, True),       # reduction split in 2048-wide slices
    (6, 0, 3, False, True, False),           # empty reduction: out = bias
])
def test_matmul(M, K, N, transposed, use_b, relu):
    rng = np.random.default_rng(M * 1000 + K + N)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = (rng.standard_normal((K, N)) / math.sqrt(max(K, 1))).astype(np.float32)
    bias = rng.standard_normal(N, dtype=np.float32) if use_b else None
    bp = _C.pack_matmul_weight(np.ascontiguousarray(b.T) if transposed else b, transposed)
    out = np.full((M, N), np.nan, np.float32)
    verts = grid_vertices(split(M, 3), split(N, 3))
    _C.matmul(a, bp, N, bias, out, verts, relu)
    ref = a.astype(np.float64) @ b
    if use_b:
        ref = ref + bias
    if relu:
        ref = np.maximum(ref, 0)
    assert_close(out, ref, K)


def test_matmul_vertex_slice():
    rng = np.random.default_rng(11)
    M, K, N = 10, 20, 50
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = rng.standard_normal((K, N), dtype=np.float32)
    bp = _C.pack_matmul_weight(b, False)
    out = np.full((M, N), np.nan, np.float32)
    _C.matmul(a, bp, N, None, out, np.array([[3, 8, 5, 37]], np.int32), False)
    mask = np.zeros((M, N), bool)
    mask[3:8, 5:37] = True
    assert np.isnan(out[~mask]).all()
    assert_close(out[mask], (a.astype(np.float64) @ b)[mask], K)


# --------------------------------------------------------------------------- pooling
def pool_ref(x, k, s, p, d, kind, count_include_pad=True):
    N, H, W, C = x.shape
    OH = (H + 2 * p[0] - d[0] * (k[0] - 1) - 1) // s[0] + 1
    OW = (W + 2 * p[1] - d[1] * (k[1] - 1) - 1) // s[1] + 1
    fill = -np.inf if kind == "max" else 0.0
    xp = np.pad(x.astype(np.float64), ((0, 0), (p[0], p[0]), (p[1], p[1]), (0, 0)),
                constant_values=fill)
    valid = np.pad(np.ones((H, W)), ((p[0], p[0]), (p[1], p[1])))
    taps, cnt = [], np.zeros((OH, OW))
    for r in range(k[0]):
        for q in range(k[1]):
            sl = (slice(r * d[0], r * d[0] + s[0] * (OH - 1) + 1, s[0]),
                  slice(q * d[1], q * d[1] + s[1] * (OW - 1) + 1, s[1]))
            taps.append(xp[:, sl[0], sl[1], :])
            cnt += valid[sl]
    t = np.stack(taps)
    if kind == "max":
        return t.max(0)
    div = k[0] * k[1] if count_include_pad else cnt[None, :, :, None]
    return t.sum(0) / div


@pytest.mark.parametrize("shape,k,s,p,d", [
    ((2, 112, 112, 64), (3, 3), (2, 2), (1, 1), (1, 1)),  # ResNet max pool
    ((1, 13, 11, 17), (3, 2), (2, 1), (1, 1), (1, 1)),
    ((2, 9, 10, 5), (3, 3), (1, 2), (1, 0), (2, 2)),
    ((1, 8, 8, 70), (2, 2), (2, 2), (0, 0), (1, 1)),
])
def test_max_pool(shape, k, s, p, d):
    rng = np.random.default_rng(1)
    x = rng.standard_normal(shape, dtype=np.float32)
    ref = pool_ref(x, k, s, p, d, "max")
    out = np.full(ref.shape, np.nan, np.float32)
    verts = grid_vertices(split(shape[0], 2), split(shape[3], 3), split(ref.shape[1], 3))
    _C.max_pool2d_nhwc(x, out, verts, *k, *s, *p, *d)
    np.testing.assert_array_equal(out, ref.astype(np.float32))


def test_max_pool_propagates_nan():
    x = np.zeros((1, 4, 4, 3), np.float32)
    x[0, 1, 1, 1] = np.nan
    out = np.zeros((1, 2, 2, 3), np.float32)
    _C.max_pool2d_nhwc(x, out, np.array([[0, 1, 0, 3, 0, 2]], np.int32), 2, 2, 2, 2, 0, 0, 1, 1)
    assert np.isnan(out[0, 0, 0, 1]) and np.isfinite(np.delete(out.ravel(), 1)).all()


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("shape,k,s,p", [
    ((2, 13, 11, 17), (3, 3), (2, 2), (1, 1)),
    ((1, 8, 9, 70), (2, 3), (2, 1), (1, 1)),
    ((1, 7, 7, 8), (7, 7), (1, 1), (0, 0)),
])
def test_avg_pool(shape, k, s, p, count_include_pad):
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape, dtype=np.float32)
    ref = pool_ref(x, k, s, p, (1, 1), "avg", count_include_pad)
    out = np.full(ref.shape, np.nan, np.float32)
    verts = grid_vertices(split(shape[0], 2), split(shape[3], 2), split(ref.shape[1], 3))
    _C.avg_pool2d_nhwc(x, out, verts, *k, *s, *p, count_include_pad)
    assert_close(out, ref, k[0] * k[1])


@pytest.mark.parametrize("shape", [(2, 7, 7, 512), (1, 3, 5, 17), (3, 1, 1, 70)])
def test_global_avg_pool(shape):
    rng = np.random.default_rng(4)
    x = rng.standard_normal(shape, dtype=np.float32)
    out = np.full((shape[0], shape[3]), np.nan, np.float32)
    _C.global_avg_pool_nhwc(x, out, grid_vertices(split(shape[0], 2), split(shape[3], 3)))
    assert_close(out, x.astype(np.float64).mean((1, 2)), shape[1] * shape[2])


# --------------------------------------------------------------------------- elementwise
def flat_vertices(n, parts=5):
    pts = split(n, parts)
    return np.array(list(zip(pts[:-1], pts[1:])), np.int32)


OPC = {name: p.opcode for name, p in ig.ops.PRIMITIVES.items()}


def program(out, shape, operands, strides, code, result, imms=()):
    """A _C.PointwiseProgram from (op, args) rows."""
    rows = np.full((len(code), 4), -1, np.int32)
    for i, (op, args) in enumerate(code):
        rows[i, 0] = OPC[op]
        rows[i, 1:1 + len(args)] = args
    return _C.PointwiseProgram(out, list(shape), list(operands), np.asarray(strides, np.int64),
                               np.asarray(imms, np.float32), rows, result)


def test_pointwise_chain_in_place_and_partial_ranges():
    """relu(a + b) over ranges that cut the blocks, then in place into a (a read element for
    element before it is written); NaN propagates through relu."""
    rng = np.random.default_rng(6)
    a = rng.standard_normal(2 * 5 * 7 * 19, dtype=np.float32)
    b = rng.standard_normal(a.size, dtype=np.float32)
    a[5] = np.nan
    ref = np.maximum(a.astype(np.float64) + b, 0)
    ref[5] = np.nan
    out = np.full_like(a, 7.0)
    p = program(out, [a.size], [a, b], [[1], [1]], [("add", (0, 1)), ("relu", (2,))], 3)
    _C.pointwise(p, np.array([[0, 400], [400, 999], [1100, a.size]], np.int32))
    np.testing.assert_array_equal(out[999:1100], 7.0)           # outside every range: untouched
    keep = np.r_[0:999, 1100:a.size]
    np.testing.assert_allclose(out[keep], ref[keep], rtol=1e-6)
    inplace = program(a, [a.size], [a, b], [[1], [1]], [("add", (0, 1)), ("relu", (2,))], 3)
    _C.pointwise(inplace, flat_vertices(a.size))
    np.testing.assert_allclose(a, ref, rtol=1e-6)


def test_pointwise_broadcast_strides_bool_and_immediates():
    """x·scale[c] + shift[c] over NHWC storage (per-channel operands: stride 1 on the channel
    dim, 0 elsewhere), a scalar immediate, a bool mask operand and a bool output."""
    rng = np.random.default_rng(9)
    C = 37
    x = rng.standard_normal((2, 3, 5, C), dtype=np.float32)
    scale, shift = (rng.standard_normal(C, dtype=np.float32) for _ in range(2))
    mask = rng.random(x.shape) > 0.5
    ref = np.where(mask, x.astype(np.float64) * scale + shift, 0.5)
    out = np.full_like(x, np.nan)
    p = program(out.reshape(-1), [30, C], [x.reshape(-1), scale, shift, mask.reshape(-1)],
                [[C, 1], [0, 1], [0, 1], [C, 1]],
                [("mul", (0, 1)), ("add", (5, 2)), ("where", (3, 6, 4))], 7, imms=(0.5,))
    _C.pointwise(p, flat_vertices(x.size, 7))
    assert_close(out, ref, 1)
    flags = np.zeros(x.shape, bool)
    q = program(flags.reshape(-1), [x.size], [x.reshape(-1)], [[1]],
                [("greater", (0, 1))], 2, imms=(0.25,))
    _C.pointwise(q, flat_vertices(x.size))
    np.testing.assert_array_equal(flags, x > 0.25)


def test_pointwise_program_validation():
    x = np.zeros(12, np.float32)
    out = np.zeros(12, np.float32)
    ok = program(out, [12], [x], [[1]], [("exp", (0,))], 1)
    with pytest.raises(ValueError, match="element"):
        _C.pointwise(ok, np.array([[0, 13]], np.int32))
    with pytest.raises(ValueError, match="past its end"):
        program(out, [12], [x[:11]], [[1]], [("exp", (0,))], 1)
    with pytest.raises(ValueError, match="past its end"):
        program(out, [3, 4], [x], [[5, 1]], [("exp", (0,))], 1)
    with pytest.raises(ValueError, match="not an earlier value"):
        program(out, [12], [x], [[1]], [("add", (0, 2))], 1)
    with pytest.raises(ValueError, match="opcode"):
        _C.PointwiseProgram(out, [12], [x], np.array([[1]], np.int64), np.zeros(0, np.float32),
                            np.array([[999, 0, -1, -1]], np.int32), 1)
    with pytest.raises(ValueError, match="expected -1"):
        program(out, [12], [x], [[1]], [("exp", (0, 0))], 1)
    with pytest.raises(ValueError, match="overlaps out"):
        program(out, [3, 4], [out], [[0, 1]], [("exp", (0,))], 1)   # a broadcast read of out
    with pytest.raises(ValueError, match="float32 or bool"):
        program(out, [12], [np.zeros(12)], [[1]], [("exp", (0,))], 1)
    with pytest.raises(ValueError, match="result"):
        program(out, [12], [x], [[1]], [("exp", (0,))], 5)
    with pytest.raises(ValueError, match="built for another output"):
        w = np.zeros((4, 1, 1, 1), np.float32)
        _C.conv2d_nhwc(np.zeros((1, 1, 1, 1), np.float32), _C.pack_conv_weight(w, 1), None, None,
                       np.zeros((1, 1, 1, 4), np.float32), np.array([[0, 1, 0, 4, 0, 1, 0, 1]],
                                                                      np.int32),
                       4, 1, 1, 1, 1, 0, 0, 1, 1, 1, False, ok)


def test_pointwise_math_accuracy():
    """exp, log, tanh, sigmoid, pow and erf-free primitives against float64 over wide ranges,
    specials included: NaN propagates, infinities and zeros as C99 / torch."""
    rng = np.random.default_rng(3)
    x = np.concatenate([rng.uniform(-90, 90, 4000), rng.uniform(-3, 3, 4000),
                        [0.0, -0.0, np.inf, -np.inf, np.nan, 1e-40, -1e-40, 88.7, -103.0]]
                       ).astype(np.float32)
    with np.errstate(all="ignore"):
        for op, fn, tol in (("exp", np.exp, 4e-7), ("tanh", np.tanh, 4e-7),
                            ("sigmoid", lambda v: 1 / (1 + np.exp(-v)), 4e-7)):
            out = np.zeros_like(x)
            _C.pointwise(program(out, [x.size], [x], [[1]], [(op, (0,))], 1),
                         flat_vertices(x.size))
            ref = fn(x.astype(np.float64)).astype(np.float32)      # (overflow: inf in fp32)
            finite = np.isfinite(ref) & (np.abs(ref) > 1e-37)
            rel = np.abs(out[finite] - ref[finite]) / np.abs(ref[finite].astype(np.float64))
            assert rel.max() < tol, (op, rel.max())
            np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
            np.testing.assert_array_equal(out[np.isinf(ref)], ref[np.isinf(ref)])
        pos = np.concatenate([rng.uniform(1e-30, 1e30, 2000), rng.uniform(0, 5, 2000),
                              [0.0, np.inf, -1.0, np.nan, 1e-40]]).astype(np.float32)
        out = np.zeros_like(pos)
        _C.pointwise(program(out, [pos.size], [pos], [[1]], [("log", (0,))], 1),
                     flat_vertices(pos.size))
        ref = np.log(pos.astype(np.float64))
        fin = np.isfinite(ref) & (np.abs(ref) > 1e-3)
        assert (np.abs(out[fin] - ref[fin]) / np.abs(ref[fin])).max() < 4e-7
        np.testing.assert_array_equal(np.isnan(out), np.isnan(ref))
        np.testing.assert_array_equal(out[np.isinf(ref)], ref[np.isinf(ref)])
        a = np.array([2, -2, -2, -8, 0, 0, 0, -0.0, 1, np.nan, 3, 0.5], np.float32)
        b = np.array([3, 3, 2, 1 / 3, 2, -1, 0, -1, np.nan, 0, 20, -2.5], np.float32)
        out = np.zeros_like(a)
        _C.pointwise(program(out, [a.size], [a, b], [[1], [1]], [("pow", (0, 1))], 2),
                     np.array([[0, a.size]], np.int32))
        ref = torch.pow(torch.from_numpy(a).double(), torch.from_numpy(b).double()).numpy()
        np.testing.assert_allclose(out, ref, rtol=5e-6)


def test_softmax_rows():
    rng = np.random.default_rng(10)
    x = (rng.standard_normal((9, 1000)) * 30).astype(np.float32)
    x[2, 3] = 1e4  # stability: no overflow
    e = np.exp(x.astype(np.float64) - x.max(1, keepdims=True))
    ref = e / e.sum(1, keepdims=True)
    out = np.full_like(x, np.nan)
    _C.softmax_rows(x, out, np.array([[0, 4], [4, 5], [5, 9]], np.int32))
    assert_close(out, ref, 1)


# --------------------------------------------------------------------------- bad inputs
def test_bad_inputs_raise_value_error():
    x = np.zeros((1, 8, 8, 4), np.float32)
    w = np.zeros((8, 4, 3, 3), np.float32)
    wp = _C.pack_conv_weight(w, 1)
    out = np.zeros((1, 8, 8, 8), np.float32)
    v = np.array([[0, 1, 0, 8, 0, 8, 0, 8]], np.int32)
    args = (8, 3, 3, 1, 1, 1, 1, 1, 1, 1, False)
    _C.conv2d_nhwc(x, wp, None, None, out, v, *args)  # the valid call works
    with pytest.raises(ValueError, match="conv2d_nhwc: x must be 4-D"):
        _C.conv2d_nhwc(x[0], wp, None, None, out, v, *args)
    with pytest.raises(ValueError, match="out has shape"):
        _C.conv2d_nhwc(x, wp, None, None, out[:, :7].copy(), v, *args)
    with pytest.raises(ValueError, match="packed weight"):
        _C.conv2d_nhwc(x, wp[:-16], None, None, out, v, *args)
    with pytest.raises(ValueError, match="bias"):
        _C.conv2d_nhwc(x, wp, np.zeros(7, np.float32), None, out, v, *args)
    with pytest.raises(ValueError, match="residual"):
        _C.conv2d_nhwc(x, wp, None, np.zeros((1, 8, 8, 7), np.float32), out, v, *args)
    with pytest.raises(ValueError, match="channel"):
        _C.conv2d_nhwc(x, wp, None, None, out, np.array([[0, 1, 0, 9, 0, 8, 0, 8]], np.int32), *args)
    with pytest.raises(ValueError, match="row"):
        _C.conv2d_nhwc(x, wp, None, None, out, np.array([[0, 1, 0, 8, 5, 4, 0, 8]], np.int32), *args)
    with pytest.raises(ValueError, match="vertices"):
        _C.conv2d_nhwc(x, wp, None, None, out, v[:, :6], *args)
    with pytest.raises(ValueError, match="groups"):
        _C.conv2d_nhwc(x, wp, None, None, out, v, 8, 3, 3, 1, 1, 1, 1, 1, 1, 3, False)
    with pytest.raises(ValueError, match="float32"):
        _C.conv2d_nhwc(x, wp, None, None, out.astype(np.float64), v, *args)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.conv2d_nhwc(x, wp, None, None, np.zeros((1, 8, 8, 16), np.float32)[..., ::2], v, *args)
    with pytest.raises(ValueError, match="groups"):
        _C.pack_conv_weight(w, 3)

    a = np.zeros((4, 5), np.float32)
    bp = _C.pack_matmul_weight(np.zeros((5, 3), np.float32), False)
    with pytest.raises(ValueError, match="matmul: packed weight"):
        _C.matmul(a, bp, 20, None, np.zeros((4, 20), np.float32), np.array([[0, 4, 0, 20]], np.int32), False)
    with pytest.raises(ValueError, match="column"):
        _C.matmul(a, bp, 3, None, np.zeros((4, 3), np.float32), np.array([[0, 4, 0, 4]], np.int32), False)
    with pytest.raises(ValueError, match="a must be 2-D"):
        _C.matmul(a[0], bp, 3, None, np.zeros((4, 3), np.float32), np.array([[0, 4, 0, 3]], np.int32), False)

    with pytest.raises(ValueError, match="max_pool2d_nhwc: out has shape"):
        _C.max_pool2d_nhwc(x, np.zeros((1, 5, 4, 4), np.float32), np.array([[0, 1, 0, 4, 0, 4]], np.int32),
                           3, 3, 2, 2, 1, 1, 1, 1)
    with pytest.raises(ValueError, match="batch"):
        _C.avg_pool2d_nhwc(x, np.zeros((1, 4, 4, 4), np.float32), np.array([[0, 2, 0, 4, 0, 4]], np.int32),
                           3, 3, 2, 2, 1, 1, True)
    with pytest.raises(ValueError, match="global_avg_pool_nhwc"):
        _C.global_avg_pool_nhwc(x, np.zeros((1, 5), np.float32), np.array([[0, 1, 0, 4]], np.int32))
    with pytest.raises(ValueError, match="softmax_rows"):
        _C.softmax_rows(x, np.zeros_like(x), np.array([[0, 1]], np.int32))


# --------------------------------------------------------------------------- partial sums
def partial_table(boxes, cpts, rpts):
    """Vertices (n0,n1,k0,k1,oh0,oh1,ow0,ow1,c0,c1,r0,r1,slab): every output box of `boxes`
    [V, 8] times every (c, r) range of the split points; one slab per (c, r) range."""
    red = [(c0, c1, r0, r1) for c0, c1 in zip(cpts[:-1], cpts[1:])
           for r0, r1 in zip(rpts[:-1], rpts[1:])]
    rows = [list(b) + list(cr) + [slab] for slab, cr in enumerate(red) for b in boxes]
    return np.array(rows, np.int32).reshape(-1, 13), red


def conv_partial_ref(x, w, stride, pad, dil, groups, c0, c1, r0, r1):
    """Sum over input channels [c0, c1) of each group and kernel rows [r0, r1): the full conv
    with the other weights zeroed."""
    wm = np.zeros_like(w)
    wm[:, c0:c1, r0:r1, :] = w[:, c0:c1, r0:r1, :]
    return conv_ref(x, wm, None, None, stride, pad, dil, groups, False)


def run_conv_partial(x, wp, partials, verts, w_shape, stride, pad, dil, groups):
    K, Cg, R, S = w_shape
    _C.conv2d_nhwc_partial(x, wp, partials, verts, K, R, S, stride[0], stride[1], pad[0], pad[1],
                           dil[0], dil[1], groups)


# (N, H, W, C, K, R, S, stride, pad, dil, groups, c splits, r splits)
PARTIAL = [
    (2, 11, 9, 19, 21, 3, 3, 2, 1, 1, 1, 3, 2),        # stride 2, Cg 19: split taps
    (2, 10, 9, 19, 21, 3, 3, 1, 1, 1, 1, 1, 3),        # whole channels: fused rows, rows split
    (1, 20, 18, 3, 16, 7, 7, 2, 3, 1, 1, 1, 3),        # stem-like 7x7/2, rows split
    (1, 12, 10, 6, 8, 3, 3, 1, 2, 2, 2, 1, 3),         # groups 2, Cg 3, dilation 2: gathered, rows split
    (1, 13, 11, 16, 24, 3, 3, 1, 2, 2, 1, 2, 3),       # dilation 2, Cg 16
    (1, 12, 10, 6, 10, 3, 3, 1, 2, 2, 1, 2, 2),        # dilation 2, tiny Cg: gathered rows
    (2, 9, 10, 40, 36, 3, 3, 1, 1, 1, 2, 3, 2),        # groups 2, Cg 20 (not a multiple of 16)
    (1, 9, 7, 16, 20, 3, 3, 2, 1, 1, 2, 2, 3),         # groups 2, Cg 8: gathered rows
    (2, 11, 9, 24, 24, 3, 3, 1, 1, 1, 24, 1, 3),       # depthwise: only kernel rows split
    (1, 10, 10, 24, 48, 3, 3, 2, 1, 1, 24, 1, 2),      # depthwise, multiplier 2
    (1, 9, 9, 8, 16, 7, 7, 1, 3, 1, 1, 3, 4),          # padding 3, 7x7
    (1, 14, 15, 10, 21, 3, 5, (3, 2), (1, 2), 1, 1, 2, 3),   # asymmetric
    (1, 9, 9, 37, 17, 1, 1, 1, 1, 1, 1, 4, 1),         # 1x1 with padding, c split only
    (2, 8, 8, 70, 40, 3, 3, 1, 1, (2, 1), 1, 3, 1),    # c split only, wide Cg (AVX-512 NB > 1)
]


@pytest.mark.parametrize("case", PARTIAL, ids=lambda c: "x".join(map(str, c)))
def test_conv_partial_matches_reference(case):
    N, H, W, C, K, R, S, st, pd, dl, groups, csplit, rsplit = case
    stride, pad, dil = _pair(st), _pair(pd), _pair(dl)
    rng = np.random.default_rng(hash(case) % 2**32)
    x, w = make_conv(rng, N, H, W, C, K, R, S, groups)
    OH, OW = out_hw(H, W, R, S, stride, pad, dil)
    Cg = C // groups
    boxes = grid_vertices(split(N, 2), split(K, 3), split(OH, 2), split(OW, 2))
    verts, red = partial_table(boxes, split(Cg, csplit), split(R, rsplit))
    wp = _C.pack_conv_weight(w, groups)
    partials = np.full((len(red), N, OH, OW, K), np.nan, np.float32)
    run_conv_partial(x, wp, partials, verts, w.shape, stride, pad, dil, groups)
    for slab, (c0, c1, r0, r1) in enumerate(red):
        ref = conv_partial_ref(x, w, stride, pad, dil, groups, c0, c1, r0, r1)
        assert_close(partials[slab], ref, (c1 - c0) * (r1 - r0) * S)
    # the slabs of a complete split add up to the conv; reduce with the whole epilogue
    bias = rng.standard_normal(K, dtype=np.float32)
    res = rng.standard_normal((N, OH, OW, K), dtype=np.float32)
    out = np.full((N, OH, OW, K), np.nan, np.float32)
    _C.reduce_partials(partials, bias, res, out, boxes, True)
    assert_close(out, conv_ref(x, w, bias, res, stride, pad, dil, groups, True), Cg * R * S)
    # a table in any order (slabs interleaved) gives the same slabs
    again = np.full_like(partials, np.nan)
    run_conv_partial(x, wp, again, verts[::-1].copy(), w.shape, stride, pad, dil, groups)
    np.testing.assert_array_equal(again, partials)


def test_conv_partial_full_range_equals_conv2d_nhwc():
    # c = whole group, r = all rows, one slab: bit-identical to the fused kernel without epilogue
    rng = np.random.default_rng(12)
    for case in [(2, 9, 8, 19, 37, 3, 3, 1, 1, 1, 1), (1, 12, 10, 6, 8, 3, 3, 1, 2, 2, 2),
                 (2, 9, 10, 32, 48, 3, 3, 2, 1, 1, 2)]:
        N, H, W, C, K, R, S, st, pd, dl, groups = case
        stride, pad, dil = _pair(st), _pair(pd), _pair(dl)
        x, w = make_conv(rng, N, H, W, C, K, R, S, groups)
        OH, OW = out_hw(H, W, R, S, stride, pad, dil)
        boxes = grid_vertices(split(N, 2), split(K, 3), split(OH, 3), split(OW, 2))
        verts, _ = partial_table(boxes, [0, C // groups], [0, R])
        partials = np.full((1, N, OH, OW, K), np.nan, np.float32)
        run_conv_partial(x, _C.pack_conv_weight(w, groups), partials, verts, w.shape, stride,
                         pad, dil, groups)
        full = run_conv(x, w, None, None, stride, pad, dil, groups, False, boxes)
        np.testing.assert_array_equal(partials[0], full)


def test_conv_partial_vertex_writes_exactly_its_box():
    rng = np.random.default_rng(13)
    N, H, W, C, K, R, S, groups = 3, 11, 13, 40, 46, 3, 3, 2
    x, w = make_conv(rng, N, H, W, C, K, R, S, groups)
    wp = _C.pack_conv_weight(w, groups)
    P = 4
    partials = np.full((P, N, H, W, K), np.nan, np.float32)
    # (box, c range, r range, slab): uneven boxes, k cut inside a 16-block and across the groups
    cases = [((0, 1, 0, 7, 0, 4, 0, 6), (0, 20, 0, 3), 2),
             ((1, 3, 7, 30, 4, 5, 6, 13), (3, 11, 1, 3), 0),
             ((2, 3, 20, 46, 5, 11, 0, 13), (0, 20, 2, 3), 3),
             ((0, 3, 0, 46, 0, 11, 0, 13), (19, 20, 0, 1), 1),
             ((1, 2, 5, 6, 3, 4, 7, 8), (5, 6, 1, 2), 0)]
    for box, (c0, c1, r0, r1), slab in cases:
        before = partials.copy()
        v = np.array([list(box) + [c0, c1, r0, r1, slab]], np.int32)
        run_conv_partial(x, wp, partials, v, w.shape, (1, 1), (1, 1), (1, 1), groups)
        n0, n1, k0, k1, h0, h1, w0, w1 = box
        mask = np.zeros(partials.shape, bool)
        mask[slab, n0:n1, h0:h1, w0:w1, k0:k1] = True
        ref = conv_partial_ref(x, w, (1, 1), (1, 1), (1, 1), groups, c0, c1, r0, r1)
        assert_close(partials[mask], ref[mask[slab]], (c1 - c0) * (r1 - r0) * S)
        np.testing.assert_array_equal(partials[~mask], before[~mask])  # NaN == NaN here
    # empty c or r ranges store zeros over the box; empty boxes and tables write nothing
    partials[:] = np.nan
    run_conv_partial(x, wp, partials, np.array([[0, 1, 0, 16, 0, 2, 0, 3, 4, 4, 0, 3, 1],
                                                [1, 2, 0, 16, 0, 2, 0, 3, 0, 20, 2, 2, 1]],
                                               np.int32), w.shape, (1, 1), (1, 1), (1, 1), groups)
    assert (partials[1, :2, :2, :3, :16] == 0).all()
    assert np.isnan(np.delete(partials.reshape(P, -1), 1, axis=0)).all()
    partials[:] = np.nan
    run_conv_partial(x, wp, partials, np.array([[1, 1, 0, K, 0, H, 0, W, 0, 20, 0, 3, 0],
                                                [0, N, 5, 5, 0, H, 0, W, 0, 20, 0, 3, 0]],
                                               np.int32), w.shape, (1, 1), (1, 1), (1, 1), groups)
    run_conv_partial(x, wp, partials, np.zeros((0, 13), np.int32), w.shape, (1, 1), (1, 1),
                     (1, 1), groups)
    assert np.isnan(partials).all()


def matmul_split_table(boxes, kpts):
    """(m0,m1,n0,n1,k0,k1,slab) rows: every box times every k range, one slab per k range."""
    rows = [list(b) + [k0, k1, slab]
            for slab, (k0, k1) in enumerate(zip(kpts[:-1], kpts[1:])) for b in boxes]
    return np.array(rows, np.int32).reshape(-1, 7)


def as_conv_boxes(boxes):
    """matmul boxes (m0, m1, n0, n1) -> reduce_partials boxes over [M, 1, 1, N]."""
    b = np.asarray(boxes, np.int32).reshape(-1, 4)
    return np.ascontiguousarray(np.concatenate(
        [b, np.tile(np.array([0, 1, 0, 1], np.int32), (len(b), 1))], axis=1))


@pytest.mark.parametrize("M,K,N,transposed,kpts", [
    (7, 37, 33, False, [0, 5, 21, 37]),                 # K not a multiple of 16
    (13, 4100, 20, True, [0, 3, 2600, 4100]),           # a 2597-long slice crosses kKC = 2048
    (10, 5000, 70, False, [0, 4500, 4999, 5000]),       # 4500: three KC slices; a 1-long slice
    (33, 300, 17, True, [0, 300]),                      # one slab, whole K
    (6, 20, 50, False, [0, 0, 20]),                     # an empty range: a slab of zeros
])
def test_matmul_partial(M, K, N, transposed, kpts):
    rng = np.random.default_rng(M * 1000 + K + N)
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = (rng.standard_normal((K, N)) / math.sqrt(max(K, 1))).astype(np.float32)
    bp = _C.pack_matmul_weight(np.ascontiguousarray(b.T) if transposed else b, transposed)
    boxes = grid_vertices(split(M, 3), split(N, 3))
    verts = matmul_split_table(boxes, kpts)
    P = len(kpts) - 1
    partials = np.full((P, M, N), np.nan, np.float32)
    _C.matmul_partial(a, bp, N, partials, verts)
    a64 = a.astype(np.float64)
    for slab, (k0, k1) in enumerate(zip(kpts[:-1], kpts[1:])):
        assert_close(partials[slab], a64[:, k0:k1] @ b[k0:k1], k1 - k0)
    bias = rng.standard_normal(N, dtype=np.float32)
    out = np.full((M, N), np.nan, np.float32)
    _C.reduce_partials(partials.reshape(P, M, 1, 1, N), bias, None, out.reshape(M, 1, 1, N),
                       as_conv_boxes(boxes), True)
    assert_close(out, np.maximum(a64 @ b + bias, 0), K)


def test_matmul_partial_vertex_writes_exactly_its_box():
    rng = np.random.default_rng(14)
    M, K, N = 10, 2100, 50
    a = rng.standard_normal((M, K), dtype=np.float32)
    b = (rng.standard_normal((K, N)) / math.sqrt(K)).astype(np.float32)
    bp = _C.pack_matmul_weight(b, False)
    partials = np.full((3, M, N), np.nan, np.float32)
    for row in ([3, 8, 5, 37, 7, 2090, 1], [0, 10, 0, 50, 2090, 2100, 2], [9, 10, 49, 50, 0, 1, 0]):
        before = partials.copy()
        _C.matmul_partial(a, bp, N, partials, np.array([row], np.int32))
        m0, m1, n0, n1, k0, k1, slab = row
        mask = np.zeros(partials.shape, bool)
        mask[slab, m0:m1, n0:n1] = True
        ref = a.astype(np.float64)[:, k0:k1] @ b[k0:k1]
        assert_close(partials[mask], ref[mask[slab]], k1 - k0)
        np.testing.assert_array_equal(partials[~mask], before[~mask])


@pytest.mark.parametrize("use_b", [False, True])
@pytest.mark.parametrize("use_r", [False, True])
@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("P", [1, 2, 3])
def test_reduce_partials(use_b, use_r, relu, P):
    rng = np.random.default_rng(15 + P)
    N, OH, OW, K = 2, 5, 7, 600  # K > the 512-float chunk inside a run
    partials = rng.standard_normal((P, N, OH, OW, K), dtype=np.float32)
    b = rng.standard_normal(K, dtype=np.float32) if use_b else None
    r = rng.standard_normal((N, OH, OW, K), dtype=np.float32) if use_r else None
    ref = partials.astype(np.float64).sum(0)
    if use_b:
        ref = ref + b
    if use_r:
        ref = ref + r
    if relu:
        ref = np.maximum(ref, 0)
    boxes = grid_vertices(split(N, 2), [0, 5, 16, 300, 599, 600], split(OH, 2), split(OW, 3))
    out = np.full((N, OH, OW, K), np.nan, np.float32)
    _C.reduce_partials(partials, b, r, out, boxes, relu)
    assert_close(out, ref, P + 2)
    # one box writes exactly its box
    out2 = np.full_like(out, np.nan)
    _C.reduce_partials(partials, b, r, out2, np.array([[1, 2, 5, 16, 1, 4, 2, 6]], np.int32), relu)
    mask = np.zeros(out.shape, bool)
    mask[1:2, 1:4, 2:6, 5:16] = True
    np.testing.assert_array_equal(out2[mask], out[mask])
    assert np.isnan(out2[~mask]).all()
    if use_r:  # residual may be out itself
        _C.reduce_partials(partials, b, r, r, boxes, relu)
        np.testing.assert_array_equal(r, out)


def test_reduce_partials_relu_propagates_nan():
    partials = np.zeros((2, 1, 1, 2, 3), np.float32)
    partials[1, 0, 0, 1, 2] = np.nan
    partials[0, 0, 0, 0, 0] = -1.0
    out = np.full((1, 1, 2, 3), 5.0, np.float32)
    _C.reduce_partials(partials, None, None, out, np.array([[0, 1, 0, 3, 0, 1, 0, 2]], np.int32),
                       True)
    assert np.isnan(out[0, 0, 1, 2]) and out[0, 0, 0, 0] == 0.0


def test_partial_bad_inputs_raise_value_error():
    x = np.zeros((1, 8, 8, 20), np.float32)
    w = np.zeros((8, 10, 3, 3), np.float32)
    wp = _C.pack_conv_weight(w, 2)
    partials = np.zeros((2, 1, 8, 8, 8), np.float32)
    box = [0, 1, 0, 8, 0, 8, 0, 8]
    v = np.array([box + [0, 10, 0, 3, 1]], np.int32)
    args = (8, 3, 3, 1, 1, 1, 1, 1, 1, 2)
    _C.conv2d_nhwc_partial(x, wp, partials, v, *args)  # the valid call works
    for row, msg in [([0, 10, 0, 3, 2], r"slab 2 outside \[0, 2\) of partials \(2, 1, 8, 8, 8\)"),
                     ([0, 10, 0, 3, -1], "slab -1"),
                     ([0, 11, 0, 3, 0],
                      r"input channel within the group \(c0, c1\) range \[0, 11\) outside \[0, 10\]"),
                     ([5, 4, 0, 3, 0], "input channel"),
                     ([0, 10, 0, 4, 0], r"kernel row \(r0, r1\) range \[0, 4\) outside \[0, 3\]"),
                     ([0, 10, 2, 1, 0], "kernel row")]:
        with pytest.raises(ValueError, match="conv2d_nhwc_partial: vertex 0 has " + msg):
            _C.conv2d_nhwc_partial(x, wp, partials, np.array([box + row], np.int32), *args)
    with pytest.raises(ValueError, match="channel"):
        _C.conv2d_nhwc_partial(x, wp, partials,
                               np.array([[0, 1, 0, 9, 0, 8, 0, 8, 0, 10, 0, 3, 0]], np.int32), *args)
    with pytest.raises(ValueError,
                       match=r"vertices must be an int32 array of shape \[V, 13\], got shape \(1, 12\)"):
        _C.conv2d_nhwc_partial(x, wp, partials, v[:, :12], *args)
    with pytest.raises(ValueError, match=r"vertices must .* \[V, 13\], got shape \(1, 8\)"):
        _C.conv2d_nhwc_partial(x, wp, partials, v[:, :8], *args)
    with pytest.raises(ValueError,
                       match=r"partials has shape \(2, 1, 8, 7, 8\), expected \(P, 1, 8, 8, 8\)"):
        _C.conv2d_nhwc_partial(x, wp, np.zeros((2, 1, 8, 7, 8), np.float32), v, *args)
    with pytest.raises(ValueError, match="partials must be 5-D"):
        _C.conv2d_nhwc_partial(x, wp, partials[0], v, *args)
    with pytest.raises(ValueError, match="float32"):
        _C.conv2d_nhwc_partial(x, wp, partials.astype(np.float64), v, *args)
    with pytest.raises(ValueError, match="writeable"):
        ro = partials.copy()
        ro.flags.writeable = False
        _C.conv2d_nhwc_partial(x, wp, ro, v, *args)
    with pytest.raises(ValueError, match="conv2d_nhwc_partial: packed weight"):
        _C.conv2d_nhwc_partial(x, wp[:-16], partials, v, *args)
    with pytest.raises(ValueError, match="conv2d_nhwc_partial: groups"):
        _C.conv2d_nhwc_partial(x, wp, partials, v, 8, 3, 3, 1, 1, 1, 1, 1, 1, 3)
    with pytest.raises(ValueError, match="conv2d_nhwc_partial: x must be 4-D"):
        _C.conv2d_nhwc_partial(x[0], wp, partials, v, *args)

    a = np.zeros((4, 5), np.float32)
    bp = _C.pack_matmul_weight(np.zeros((5, 3), np.float32), False)
    mp = np.zeros((2, 4, 3), np.float32)
    _C.matmul_partial(a, bp, 3, mp, np.array([[0, 4, 0, 3, 0, 5, 1]], np.int32))
    with pytest.raises(ValueError, match=r"matmul_partial: vertex 0 has slab 2 outside \[0, 2\)"):
        _C.matmul_partial(a, bp, 3, mp, np.array([[0, 4, 0, 3, 0, 5, 2]], np.int32))
    with pytest.raises(ValueError, match=r"reduction \(k0, k1\) range \[2, 6\) outside \[0, 5\]"):
        _C.matmul_partial(a, bp, 3, mp, np.array([[0, 4, 0, 3, 2, 6, 0]], np.int32))
    with pytest.raises(ValueError, match=r"vertices must be an int32 array of shape \[V, 7\]"):
        _C.matmul_partial(a, bp, 3, mp, np.array([[0, 4, 0, 3, 0, 5]], np.int32))
    with pytest.raises(ValueError, match=r"partials has shape \(2, 4, 4\), expected \(P, 4, 3\)"):
        _C.matmul_partial(a, bp, 3, np.zeros((2, 4, 4), np.float32), np.zeros((0, 7), np.int32))
    with pytest.raises(ValueError, match="matmul_partial: packed weight"):
        _C.matmul_partial(a, bp, 20, np.zeros((2, 4, 20), np.float32), np.zeros((0, 7), np.int32))

    out = np.zeros((1, 8, 8, 8), np.float32)
    with pytest.raises(ValueError, match=r"reduce_partials: partials has shape \(2, 1, 8, 8, 7\)"):
        _C.reduce_partials(np.zeros((2, 1, 8, 8, 7), np.float32), None, None, out, v[:, :8], False)
    with pytest.raises(ValueError, match="partials must be 5-D"):
        _C.reduce_partials(partials[0], None, None, out, v[:, :8], False)
    with pytest.raises(ValueError, match=r"bias has shape \(7,\), expected \(8,\)"):
        _C.reduce_partials(partials, np.zeros(7, np.float32), None, out, v[:, :8], False)
    with pytest.raises(ValueError, match="residual has shape"):
        _C.reduce_partials(partials, None, np.zeros((1, 8, 8, 7), np.float32), out, v[:, :8], False)
    with pytest.raises(ValueError, match=r"vertices must be an int32 array of shape \[V, 8\]"):
        _C.reduce_partials(partials, None, None, out, v, False)
    with pytest.raises(ValueError, match=r"channel \(k0, k1\) range \[0, 9\)"):
        _C.reduce_partials(partials, None, None, out,
                           np.array([[0, 1, 0, 9, 0, 8, 0, 8]], np.int32), False)
    with pytest.raises(ValueError, match=r"reduce_partials: out \(1, 8, 8, 8\) overlaps partials"):
        _C.reduce_partials(partials, None, None, partials[1], v[:, :8], False)
    with pytest.raises(ValueError, match="C-contiguous"):
        _C.reduce_partials(partials, None, None, np.zeros((1, 8, 8, 16), np.float32)[..., ::2],
                           v[:, :8], False)


def test_gather_checks_its_arguments_once_at_construction():
    """_C.Gather: a concat of two sources along the last axis, run twice over split ranges
    (equal to NumPy's); bad arguments are refused when it is built, naming the call."""
    ident = np.zeros(0, np.int64)
    a = np.arange(6, dtype=np.float32).reshape(2, 3)
    b = -np.arange(4, dtype=np.float32).reshape(2, 2)
    out = np.full(10, np.nan, np.float32)
    sel = np.array([0, 0, 0, 1, 1], np.int64)
    col = np.array([0, 1, 2, 0, 1], np.int64)
    g = _C.Gather(out, [2, 5], [5, 1], [a.reshape(-1), b.reshape(-1)], [3, 1, 2, 1], [0, 0],
                  [ident, col], 1, sel, 0.0)
    for verts in ([[0, 10]], [[0, 3], [3, 10]]):
        out[:] = np.nan
        g.run(np.array(verts, np.int32))
        np.testing.assert_array_equal(out.reshape(2, 5), np.concatenate([a, b], axis=1))
    with pytest.raises(ValueError, match="gather: source 0 .* past its end"):
        _C.Gather(out, [2, 5], [5, 1], [a.reshape(-1)[:5]], [3, 1], [0], [ident, col], -1,
                  ident, 0.0)
    with pytest.raises(ValueError, match="gather: source 0 overlaps out"):
        _C.Gather(out, [10], [1], [out], [1], [0], [ident], -1, ident, 0.0)
    with pytest.raises(ValueError, match="gather: itemsize 2 is not supported"):
        half = np.zeros(10, np.float16)
        _C.Gather(half, [10], [1], [np.zeros(10, np.float16)], [1], [0], [ident], -1, ident,
                  0.0)
