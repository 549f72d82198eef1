"""The triton backend and its kernels (kernels/, installed as ipugraph.kernels) against the
reference backend's NumPy semantics in float64.

Without a CUDA device the kernels run in Triton's interpreter on the CPU: TRITON_INTERPRET=1 is
set below, before anything imports triton (ipugraph does not; the backend reads the variable at
its first use). The interpreter runs every program with NumPy, so shapes are tiny -- but they
cover odd H/W, stride 2, dilation 2, groups 2 and depthwise, batch 1, channels that are not a
multiple of any block, and more than one block along M, N and the reduction. Tests that need a
GPU are marked `gpu` and skipped without one.

Tolerances: float32 as helpers.assert_close (atol 2e-6·√K·max|expected|, rtol 1e-5). float16
and bfloat16 inputs are compared with the float64 reference of the *same rounded inputs*, so
the error is the output's rounding plus fp32 accumulation: rtol 2^-10 (float16) or 2^-7
(bfloat16), atol 1e-5·√K·max|expected|. A float16 network compounds one rounding per layer:
atol 1e-2·max|expected|.
"""
import os

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"          # before the first `import triton`

import ast  # noqa: E402
import importlib  # noqa: E402
import pathlib  # noqa: E402
import re  # noqa: E402
import sys  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import ipugraph as ig  # noqa: E402
from ipugraph.ops import OPS  # noqa: E402
from helpers import assert_close, rand  # noqa: E402

import ipugraph.kernels as K  # noqa: E402  (after TRITON_INTERPRET is decided)
# the kernel modules (ipugraph.kernels.matmul the attribute is the function of that name)
kconv, kloss, kmm, kpool, kpw = (importlib.import_module(f"ipugraph.kernels.{m}")
                                 for m in ("conv", "loss", "matmul", "pool", "pointwise"))

ROOT = pathlib.Path(__file__).resolve().parents[1]
DEVICE = torch.device("cuda" if CUDA else "cpu")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
LOW_RTOL = {torch.float16: 2.0 ** -10, torch.bfloat16: 2.0 ** -7}
DTYPES = [torch.float32, torch.float16, torch.bfloat16]


# -- helpers -----------------------------------------------------------------------------------

def dev(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(a)).to(DEVICE, dtype)


def nhwc(a: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    """A logical NCHW array as an NHWC tensor on the device."""
    return dev(a.transpose(0, 2, 3, 1), dtype)


def to_nchw(t: torch.Tensor) -> np.ndarray:
    return t.permute(0, 3, 1, 2).double().cpu().numpy()


def rounded(a: np.ndarray, dtype) -> np.ndarray:
    """The float64 values of `a` after rounding to `dtype` (what the kernel really reads)."""
    return torch.from_numpy(np.asarray(a, np.float64)).to(dtype).double().numpy()


def check(actual, expected, dtype=torch.float32, reduction=1, what=""):
    if isinstance(actual, torch.Tensor):
        actual = actual.double().cpu().numpy()
    if dtype == torch.float32:
        assert_close(actual, expected, reduction, what=what)
        return
    expected = np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values"
    atol = 1e-5 * np.sqrt(reduction) * max(float(np.abs(expected).max()), 1e-12)
    err = np.abs(actual - expected)
    bad = err > atol + LOW_RTOL[dtype] * np.abs(expected)
    assert not bad.any(), (f"{what} {dtype}: {int(bad.sum())} of {bad.size} off; max abs err "
                           f"{err.max():.3e} (atol {atol:.3e})")


def ref(op: str, *args, **attrs):
    """The reference backend's semantics of `op` in float64."""
    return OPS[op].reference(*(None if a is None else np.asarray(a, np.float64) for a in args),
                             **attrs)


def compare(graph, feeds, reduction=1, targets=("host",), **options):
    """Run `graph` on triton and on the reference backend; check every output."""
    expected = ig.compile(graph, backend="reference").run(feeds)
    for target in targets:
        plan = ig.plan(graph, {"host": ig.Target.host, "mk2": ig.Target.ipu_mk2}[target]())
        out = ig.compile(graph, backend="triton", plan=plan, **options).run(feeds)
        assert set(out) == set(expected)
        for name, e in expected.items():
            assert isinstance(out[name], np.ndarray) and out[name].dtype == e.dtype, name
            check(out[name], e, reduction=reduction, what=f"{graph.name}:{name}@{target}")
    return out


def bn_params(g, c, prefix, seed):
    return (g.variable(f"{prefix}.weight", (c,), value=rand((c,), seed, 0.5, 1.5)),
            g.variable(f"{prefix}.bias", (c,), value=rand((c,), seed + 1)),
            g.variable(f"{prefix}.mean", (c,), value=rand((c,), seed + 2)),
            g.variable(f"{prefix}.var", (c,), value=rand((c,), seed + 3, 0.5, 2.0)))


# -- conv kernel -------------------------------------------------------------------------------

# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CONVS = {
    "odd_hw": (2, 5, 13, 11, 17, 3, 3, 1, 1, 1, 1),
    "stride2_odd": (3, 7, 15, 9, 33, 3, 3, 2, 1, 1, 1),
    "dilation2": (1, 6, 12, 14, 10, 3, 3, 1, 2, 2, 1),
    "groups2": (2, 8, 9, 9, 12, 3, 3, 1, 1, 1, 2),
    "depthwise": (1, 24, 10, 7, 24, 3, 3, 2, 1, 1, 24),
    "depthwise_mult2": (1, 5, 8, 8, 10, 3, 3, 1, 1, 1, 5),
    "depthwise_2_blocks": (2, 40, 5, 4, 40, 3, 3, 1, 1, 2, 40),
    "pointwise_gemm": (1, 19, 5, 6, 37, 1, 1, 1, 0, 1, 1),
    "pointwise_stride2": (2, 9, 7, 7, 11, 1, 1, 2, 0, 1, 1),
    "pad3_k7_stride2": (1, 3, 20, 17, 9, 7, 7, 2, 3, 1, 1),
    "nonsquare": (2, 4, 11, 16, 6, 3, 5, (2, 1), (1, 2), (1, 2), 1),
    "batch1_tiny": (1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1),
    "gather_3_chunks": (1, 16, 5, 5, 20, 3, 3, 1, 1, 1, 1),     # R·S·Cg = 144
    "tap_loop_2_blocks": (1, 70, 4, 5, 70, 3, 3, 1, 1, 1, 1),   # Cg, K over two blocks
    "tap_loop_groups2": (2, 80, 5, 3, 6, 3, 3, 1, 1, 1, 2),     # Cg = 40
}


def conv_case(case, dtype=torch.float32, bias=True, residual=True, relu=True, seed=0):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = case
    xv = rounded(rand((n, c, h, w), seed), dtype)
    wv = rounded(rand((k, c // groups, r, s), seed + 1), dtype)
    bv = rand((k,), seed + 2) if bias else None
    attrs = dict(stride=ig.ops.registry.pair(stride, "", "", ""),
                 padding=ig.ops.registry.pair(padding, "", "", ""),
                 dilation=ig.ops.registry.pair(dilation, "", "", ""), groups=groups)
    expected = ref("conv2d", xv, wv, bv, **attrs)
    rv = rounded(rand(expected.shape, seed + 3), dtype) if residual else None
    if residual:
        expected = expected + rv
    if relu:
        expected = np.maximum(expected, 0)
    args = dict(x=nhwc(xv, dtype), w_packed=K.pack_weight(dev(wv, dtype), groups),
                kernel_size=(r, s), bias=None if bv is None else dev(bv),
                residual=None if rv is None else nhwc(rv, dtype), stride=stride,
                padding=padding, dilation=dilation, groups=groups, relu=relu)
    return args, expected, (c // groups) * r * s


@pytest.mark.parametrize("case", list(CONVS))
def test_conv2d_kernel(case):
    args, expected, red = conv_case(CONVS[case], bias=case != "groups2", relu=case != "odd_hw")
    check(to_nchw(K.conv2d_nhwc(**args)), expected, reduction=red, what=case)


@pytest.mark.parametrize("gather_k", [True, False])
@pytest.mark.parametrize("case", ["odd_hw", "stride2_odd", "dilation2", "groups2",
                                  "pad3_k7_stride2"])
def test_conv2d_both_reduction_forms(case, gather_k):
    """The gathered-(r, s, c) and the tap-loop forms of the implicit GEMM agree everywhere."""
    args, expected, red = conv_case(CONVS[case], seed=1)
    check(to_nchw(K.conv2d_nhwc(**args, gather_k=gather_k)), expected, reduction=red,
          what=f"{case} gather_k={gather_k}")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_conv2d_epilogue_combinations(bias, residual, relu):
    args, expected, red = conv_case(CONVS["stride2_odd"], bias=bias, residual=residual,
                                    relu=relu, seed=2)
    check(to_nchw(K.conv2d_nhwc(**args)), expected, reduction=red)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("case", ["odd_hw", "tap_loop_groups2", "depthwise_mult2",
                                  "pointwise_gemm"])
def test_conv2d_low_precision(case, dtype):
    args, expected, red = conv_case(CONVS[case], dtype=dtype, seed=3)
    out = K.conv2d_nhwc(**args)
    assert out.dtype == dtype
    check(to_nchw(out), expected, dtype, red, what=case)


def test_conv2d_writes_into_out_and_checks_arguments():
    args, expected, red = conv_case(CONVS["odd_hw"])
    out = torch.full((2, 13, 11, 17), float("nan"), device=DEVICE)
    assert K.conv2d_nhwc(**args, out=out) is out
    check(to_nchw(out), expected, reduction=red)
    with pytest.raises(ValueError, match="packed weight"):
        K.conv2d_nhwc(**{**args, "kernel_size": (5, 5)})
    with pytest.raises(ValueError, match="out: shape"):
        K.conv2d_nhwc(**args, out=torch.empty(2, 13, 11, 16, device=DEVICE))
    with pytest.raises(ValueError, match="residual"):
        K.conv2d_nhwc(**{**args, "residual": args["residual"].half()})
    with pytest.raises(ValueError, match="contiguous"):
        K.conv2d_nhwc(**{**args, "x": args["x"].transpose(1, 2)})


# -- matmul kernel ----------------------------------------------------------------------------

# (M, K, N): one element, odd, and over two blocks along each of M, K and N
GEMMS = [(1, 1, 1), (7, 33, 45), (65, 70, 130)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("mkn", GEMMS)
def test_matmul_kernel(mkn, dtype):
    m, k, n = mkn
    av, bv = rounded(rand((m, k), 0), dtype), rounded(rand((n, k), 1), dtype)
    bias, res = rand((n,), 2), rounded(rand((m, n), 3), dtype)
    # b is passed as a transposed view ([N, K] storage), as linear's weight could be
    out = K.matmul(dev(av, dtype), dev(bv, dtype).t(), dev(bias), dev(res, dtype), relu=True)
    assert out.dtype == dtype and out.shape == (m, n)
    check(out, np.maximum(ref("linear", av, bv, bias) + res, 0), dtype, k, what=f"{mkn}")


@pytest.mark.parametrize("bias", [False, True])
@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("relu", [False, True])
def test_matmul_epilogue_combinations(bias, residual, relu):
    m, k, n = 9, 20, 14
    av, bv, biasv, resv = rand((m, k), 4), rand((k, n), 5), rand((n,), 6), rand((m, n), 7)
    expected = ref("matmul", av, bv) + (biasv if bias else 0) + (resv if residual else 0)
    expected = np.maximum(expected, 0) if relu else expected
    out = K.matmul(dev(av), dev(bv), dev(biasv) if bias else None,
                   dev(resv) if residual else None, relu=relu)
    check(out, expected, reduction=k)


def test_matmul_checks_arguments():
    a, b = dev(rand((3, 4))), dev(rand((5, 6)))
    with pytest.raises(ValueError, match="do not chain"):
        K.matmul(a, b)
    with pytest.raises(ValueError, match="dtype"):
        K.matmul(a, dev(rand((4, 6))).half())
    with pytest.raises(ValueError, match="bias"):
        K.matmul(a, dev(rand((4, 6))), bias=dev(rand((5,))))
    square = dev(rand((4, 4)))
    with pytest.raises(ValueError, match="overlaps a"):
        K.matmul(square, dev(rand((4, 4))), out=square)
    residual = dev(rand((3, 6)))                      # in place over the residual is fine
    expected = a.cpu().numpy() @ rand((4, 6), 1) + residual.cpu().numpy()
    check(K.matmul(a, dev(rand((4, 6), 1)), residual=residual, out=residual), expected, reduction=4)


# -- pooling kernels --------------------------------------------------------------------------

# (N, C, H, W, kernel, stride, padding, dilation)
POOLS = {
    "odd": (2, 17, 13, 11, 3, 2, 1, 1),
    "k2s2": (3, 5, 10, 7, 2, 2, 0, 1),
    "nonsquare": (1, 9, 9, 12, (3, 2), (1, 2), (1, 1), 1),
    "dilated": (1, 6, 15, 15, 3, 1, 1, 2),
    "batch1_c1": (1, 1, 5, 5, 5, 1, 2, 1),
    "channels_2_blocks": (1, 70, 6, 5, 3, 2, 1, 1),
}


def _window_attrs(kernel, stride, padding):
    pair = ig.ops.registry.pair
    return dict(kernel=pair(kernel, "", "", ""), stride=pair(stride, "", "", ""),
                padding=pair(padding, "", "", ""))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", list(POOLS))
def test_max_pool2d_kernel(case, dtype):
    n, c, h, w, kernel, stride, padding, dilation = POOLS[case]
    xv = rounded(rand((n, c, h, w), 3), dtype)
    expected = ref("max_pool2d", xv, **_window_attrs(kernel, stride, padding),
                   dilation=ig.ops.registry.pair(dilation, "", "", ""))
    out = K.max_pool2d_nhwc(nhwc(xv, dtype), kernel, stride, padding, dilation)
    np.testing.assert_array_equal(to_nchw(out), expected)     # a max of exact values


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", [c for c in POOLS if POOLS[c][7] == 1])
def test_avg_pool2d_kernel(case, count_include_pad):
    n, c, h, w, kernel, stride, padding, _ = POOLS[case]
    xv = rand((n, c, h, w), 4)
    expected = ref("avg_pool2d", xv, **_window_attrs(kernel, stride, padding),
                   count_include_pad=count_include_pad)
    out = K.avg_pool2d_nhwc(nhwc(xv), kernel, stride, padding, count_include_pad)
    check(to_nchw(out), expected, reduction=25, what=case)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_avg_pool2d_kernel_low_precision(dtype):
    xv = rounded(rand((2, 17, 13, 11), 5), dtype)
    expected = ref("avg_pool2d", xv, **_window_attrs(3, 2, 1), count_include_pad=False)
    check(to_nchw(K.avg_pool2d_nhwc(nhwc(xv, dtype), 3, 2, 1, False)), expected, dtype, 9)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(2, 70, 7, 5), (1, 1, 1, 1), (3, 17, 9, 8)])
def test_global_avg_pool_kernel(shape, dtype):
    xv = rounded(rand(shape, 6), dtype)
    out = K.global_avg_pool_nhwc(nhwc(xv, dtype))
    check(out, ref("global_avg_pool", xv)[:, :, 0, 0], dtype, shape[2] * shape[3])


def test_pool_checks_arguments():
    x = nhwc(rand((1, 3, 5, 5)))
    with pytest.raises(ValueError, match="invalid"):
        K.max_pool2d_nhwc(x, 3, 1, 2)                  # padding over half the kernel
    with pytest.raises(ValueError, match="NHWC"):
        K.global_avg_pool_nhwc(x[0])


# -- generated pointwise kernels --------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
def test_generated_pointwise_kernel_broadcasts_and_casts(dtype):
    """One generated kernel: relu(x · scale[c] + shift[c] + residual) over NHWC storage, the
    per-channel operands broadcast through strides, in the output's dtype."""
    shape = (2, 5, 7, 9)                              # NHWC: channels (9) innermost
    xv, rv = rounded(rand(shape, 7), dtype), rounded(rand(shape, 8), dtype)
    scale, shift = rand((9,), 9), rand((9,), 10)
    expected = np.maximum(xv * scale + shift + rv, 0)
    out = torch.empty(shape, dtype=dtype, device=DEVICE)
    # values: x, residual, shift, a scalar 0, scale; then x·scale, + shift, + residual, relu
    operands = [(dev(xv, dtype), [9, 1]), (dev(rv, dtype), [9, 1]), (dev(shift), [0, 1]),
                (dev(np.zeros(1)), [0, 0]), (dev(scale), [0, 1])]
    code = [("{a} * {b}", (0, 4)), ("{a} + {b}", (5, 2)), ("{a} + {b}", (6, 1)),
            ("tl.where({a} < 0.0, 0.0, {a})", (7,))]
    kpw.Pointwise(out, [2 * 5 * 7, 9], operands, (), code, 8)()
    check(out, expected, dtype, 2)


def test_generated_pointwise_bool_output_and_in_place():
    xv = rand((3, 5), 1)
    x = dev(xv).clone()
    mask = torch.empty((3, 5), dtype=torch.bool, device=DEVICE)
    kpw.Pointwise(mask, [15], [(x, [1])], (0.25,), [("tl.where({a} > {b}, 1.0, 0.0)", (0, 1))],
                  2)()
    np.testing.assert_array_equal(mask.cpu().numpy(), xv > 0.25)
    kpw.Pointwise(x, [15], [(x, [1])], (2.0,), [("{a} * {b}", (0, 1))], 2)()   # in place
    np.testing.assert_array_equal(x.cpu().numpy(), xv * 2)
    with pytest.raises(ValueError, match="element for element"):
        kpw.Pointwise(x, [3, 5], [(x, [0, 1])], (), [("{a} + {b}", (0, 0))], 1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(3, 1), (1, 17), (4, 5, 7), (2, 1000), (2, 5000)])
def test_softmax_kernel(shape, dtype):
    xv = rounded(rand(shape, 16, -30, 30), dtype)      # large logits: needs the max subtraction
    check(kloss.softmax_rows(dev(xv, dtype)), ref("softmax", xv, axis=-1), dtype, shape[-1],
          what=f"softmax {shape}")


# -- the backend: ops and fused groups through ig.compile --------------------------------------

@pytest.mark.parametrize("case", ["stride2_odd", "groups2", "depthwise", "pointwise_gemm"])
def test_conv2d_op(case):
    n, c, h, w, k, r, s, stride, padding, dilation, groups = CONVS[case]
    g = ig.Graph(name=f"conv_{case}")
    x = g.input("x", (n, c, h, w))
    wt = g.variable("w", (k, c // groups, r, s), value=rand((k, c // groups, r, s), 1))
    b = g.variable("b", (k,), value=rand((k,), 2))
    g.output("y", ig.ops.conv2d(x, wt, b, stride=stride, padding=padding, dilation=dilation,
                                groups=groups))
    compare(g, {"x": rand((n, c, h, w), 0)}, (c // groups) * r * s, targets=("host", "mk2"))


def _block_graph(fuse_residual_first=False, dtype="float32", name="block"):
    """A ResNet basic block with a projection shortcut: conv-BN-ReLU, conv-BN, + (conv1x1-BN),
    ReLU; then max pool, global average pool, flatten, linear-BN-ReLU, softmax."""
    n, c, h, w, k = 2, 6, 9, 7, 10
    g = ig.Graph(name=name)
    x = g.input("x", (n, c, h, w), dtype=dtype)

    def var(vname, shape, seed, low=-1.0, high=1.0):
        return g.variable(vname, shape, dtype=dtype, value=rand(shape, seed, low, high))

    def bn(prefix, ch, seed):
        return (var(f"{prefix}.weight", (ch,), seed, 0.5, 1.5), var(f"{prefix}.bias", (ch,),
                seed + 1), var(f"{prefix}.mean", (ch,), seed + 2),
                var(f"{prefix}.var", (ch,), seed + 3, 0.5, 2.0))

    short = ig.ops.batch_norm(ig.ops.conv2d(x, var("wd", (k, c, 1, 1), 1), stride=2),
                              *bn("bnd", k, 10))
    y = ig.ops.relu(ig.ops.batch_norm(ig.ops.conv2d(x, var("w1", (k, c, 3, 3), 2), stride=2,
                                                    padding=1), *bn("bn1", k, 20)))
    y = ig.ops.batch_norm(ig.ops.conv2d(y, var("w2", (k, k, 3, 3), 3), padding=1),
                          *bn("bn2", k, 30))
    y = ig.ops.relu(ig.ops.add(short, y) if fuse_residual_first else ig.ops.add(y, short))
    g.output("block", y)
    p = ig.ops.flatten(ig.ops.global_avg_pool(ig.ops.max_pool2d(y, 2, 1)))
    z = ig.ops.relu(ig.ops.batch_norm(ig.ops.linear(p, var("fc", (5, k), 4), var("fcb", (5,), 5)),
                                      *bn("bnf", 5, 40)))
    g.output("probs", ig.ops.softmax(z))
    return g, {"x": rand((n, c, h, w), 0).astype(dtype)}


@pytest.mark.parametrize("residual_first", [False, True])
def test_fused_block_and_head(residual_first):
    g, feeds = _block_graph(residual_first)
    plan = ig.plan(g)
    assert sorted(s.op for s in plan.steps[:3]) == ["conv2d+batch_norm",
                                                    "conv2d+batch_norm+add+relu",
                                                    "conv2d+batch_norm+relu"]
    assert "linear+batch_norm+relu" in [s.op for s in plan.steps]
    compare(g, feeds, 90, targets=("host", "mk2"))


def test_unfused_graph_runs_every_op_standalone():
    """fuse=False: batch_norm, add and relu each run as their own elementwise kernel."""
    g, feeds = _block_graph()
    expected = ig.compile(g, backend="reference").run(feeds)
    eng = ig.compile(g, backend="triton", fuse=False)
    assert len(eng.program.compute_sets) == len(g.nodes)
    out = eng.run(feeds)
    for name in expected:
        check(out[name], expected[name], reduction=90, what=name)


def test_float16_network():
    g, feeds = _block_graph(dtype="float16", name="block16")
    expected = ig.compile(g, backend="reference").run(feeds)
    out = ig.compile(g, backend="triton").run(feeds)
    for name, e in expected.items():
        assert out[name].dtype == np.float16
        e = e.astype(np.float64)
        np.testing.assert_allclose(out[name].astype(np.float64), e, rtol=0,
                                   atol=1e-2 * np.abs(e).max(), err_msg=name)


def test_matmul_linear_softmax_batch_norm_ranks():
    """matmul with a run-time right operand, linear with a bias, softmax of a 4-D tensor (its
    last logical axis is not the NHWC innermost), batch norm on [N, C] and [N, C, L]."""
    g = ig.Graph(name="misc")
    a, b = g.input("a", (5, 7)), g.input("b", (7, 3))
    w, bias = g.variable("w", (4, 7), value=rand((4, 7), 2)), g.variable("bias", (4,),
                                                                         value=rand((4,), 3))
    x4, x3 = g.input("x4", (2, 3, 4, 5)), g.input("x3", (2, 3, 6))
    g.output("mm_relu", ig.ops.relu(ig.ops.matmul(a, b)))
    g.output("lin", ig.ops.linear(a, w, bias))
    g.output("sm4", ig.ops.softmax(x4))
    g.output("bn2", ig.ops.batch_norm(ig.ops.relu(a), *bn_params(g, 7, "bn2", 10)))
    g.output("bn3", ig.ops.batch_norm(x3, *bn_params(g, 3, "bn3", 20), eps=1e-3))
    feeds = {"a": rand((5, 7), 0), "b": rand((7, 3), 1), "x4": rand((2, 3, 4, 5), 4, -5, 5),
             "x3": rand((2, 3, 6), 5)}
    compare(g, feeds, 7)


def test_computed_weights_are_folded_on_the_device():
    """A weight that is an input (or computed) is packed -- and BN folded -- every run."""
    g = ig.Graph(name="dynamic")
    x, w = g.input("x", (1, 4, 6, 6)), g.input("w", (5, 4, 3, 3))
    a, lw = g.input("a", (3, 8)), g.input("lw", (6, 8))
    y = ig.ops.batch_norm(ig.ops.conv2d(x, ig.ops.relu(w), padding=1), *bn_params(g, 5, "b", 1))
    g.output("conv", ig.ops.relu(y))
    g.output("lin", ig.ops.batch_norm(ig.ops.linear(a, lw), *bn_params(g, 6, "l", 5)))
    eng = ig.compile(g, backend="triton")
    assert sum(k.dynamic for k in eng._exe.kernels) == 2
    ref_eng = ig.compile(g, backend="reference")
    for seed in (0, 10):                              # new weights each run
        feeds = {"x": rand((1, 4, 6, 6), seed), "w": rand((5, 4, 3, 3), seed + 1),
                 "a": rand((3, 8), seed + 2), "lw": rand((6, 8), seed + 3)}
        out, expected = eng.run(feeds), ref_eng.run(feeds)
        for name in expected:
            check(out[name], expected[name], reduction=36, what=f"{name} seed {seed}")


def test_new_variable_values_are_repacked_and_outputs_are_fresh():
    g = ig.Graph(name="values")
    x = g.input("x", (1, 3, 5, 5))
    w = g.variable("w", (4, 3, 3, 3), value=rand((4, 3, 3, 3), 1))
    shift = g.variable("shift", (1, 4, 5, 5), value=rand((1, 4, 5, 5), 2))   # an activation
    bn = bn_params(g, 4, "bn", 3)
    g.output("y", ig.ops.add(ig.ops.batch_norm(ig.ops.conv2d(x, w, padding=1), *bn), shift))
    eng = ig.compile(g, backend="triton")
    feeds = {"x": rand((1, 3, 5, 5), 0)}
    first = eng.run(feeds)["y"]
    kept = first.copy()
    w.value = rand((4, 3, 3, 3), 7)
    bn[2].value = rand((4,), 8)
    shift.value = rand((1, 4, 5, 5), 9)
    second = eng.run(feeds)["y"]
    np.testing.assert_array_equal(first, kept)        # the first result was not overwritten
    check(second, ig.compile(g, backend="reference").run(feeds)["y"], reduction=27)


def test_torch_feeds():
    """Engine.run takes torch tensors (and returns NumPy); the executable itself returns torch
    tensors on the device for torch feeds."""
    g, feeds = _block_graph(name="torch_feeds")
    expected = ig.compile(g, backend="reference").run(feeds)
    eng = ig.compile(g, backend="triton")
    out = eng.run({"x": torch.from_numpy(feeds["x"])})
    check(out["probs"], expected["probs"], reduction=90)
    direct = eng._exe.run({"x": torch.from_numpy(feeds["x"]).to(DEVICE)})
    assert isinstance(direct["block"], torch.Tensor) and direct["block"].device.type == \
        DEVICE.type and direct["block"].is_contiguous()
    check(direct["block"].cpu().numpy(), expected["block"], reduction=90)
    with pytest.raises(ig.FeedError, match="shape"):
        eng._exe.run({"x": torch.zeros(1, 6, 9, 7)})
    with pytest.raises(ig.FeedError, match="dtype"):
        eng._exe.run({"x": torch.zeros(2, 6, 9, 7, dtype=torch.float64)})


def test_resnet18_end_to_end_two_conv_kernels_per_block(monkeypatch):
    """ResNet-18 (32×32, batch 1) against the reference, counting the Triton launches of one
    run: one per compute set -- every conv with its BN, residual add and ReLU is one implicit-
    GEMM launch (a basic block is two, three with its projection), no elementwise launch."""
    net = ig.models.resnet18(batch=1, image_size=32)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    expected = ig.compile(net, backend="reference").run(feeds)["logits"]
    eng = ig.compile(net, backend="triton")
    assert len(eng._exe.kernels) == len(eng.program.compute_sets) == 24

    launches = {}

    class Counted:
        def __init__(self, name, kernel):
            self.name, self.kernel = name, kernel

        def __getitem__(self, grid):
            launches[self.name] = launches.get(self.name, 0) + 1
            return self.kernel[grid]

    for module, name in [(kconv, "conv2d_nhwc_kernel"), (kconv, "conv2d_depthwise_nhwc_kernel"),
                         (kmm, "matmul_kernel"), (kpool, "pool2d_nhwc_kernel"),
                         (kpool, "global_avg_pool_nhwc_kernel"), (kloss, "softmax_kernel")]:
        monkeypatch.setattr(module, name, Counted(name, getattr(module, name)))
    out = eng.run(feeds)["logits"]
    assert launches == {"conv2d_nhwc_kernel": 20, "matmul_kernel": 1, "pool2d_nhwc_kernel": 1,
                        "global_avg_pool_nhwc_kernel": 1}
    assert_close(out, expected, 4608, what="resnet18 logits")
    blocks = ["+".join(n.op.name for n in cs.nodes) for cs in eng.program.compute_sets
              if cs.name.startswith("layer1.0.")]
    assert blocks == ["conv2d+batch_norm+relu", "conv2d+batch_norm+add+relu"]


# -- availability, options, registration, packaging -------------------------------------------

def _tiny_graph():
    g = ig.Graph(name="tiny")
    g.output("y", ig.ops.relu(g.input("x", (2, 3))))
    return g


def test_no_gpu_and_no_interpreter_is_a_clear_error(monkeypatch):
    from ipugraph.backends import BACKENDS, get_backend
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(RuntimeError, match="no CUDA device.*TRITON_INTERPRET=1"):
        ig.compile(_tiny_graph(), backend="triton")
    # The same from a fresh import of the backend module: get_backend says so too.
    monkeypatch.delitem(BACKENDS, "triton", raising=False)
    monkeypatch.delitem(sys.modules, "ipugraph.backends.triton", raising=False)
    with pytest.raises(RuntimeError, match="backend 'triton' is not available.*no CUDA device"):
        get_backend("triton")
    assert not ig.backends.available("triton")


def test_options():
    with pytest.raises(TypeError, match="unknown options"):
        ig.compile(_tiny_graph(), backend="triton", tile_size=3)
    if not CUDA:
        with pytest.raises(RuntimeError, match="cuda_graph=True needs a CUDA device"):
            ig.compile(_tiny_graph(), backend="triton", cuda_graph=True)
    g = ig.Graph(name="f64")
    g.output("y", ig.ops.relu(g.input("x", (2, 3), dtype="float64")))
    with pytest.raises(ig.GraphError, match="float64"):
        ig.compile(g, backend="triton")


def test_every_op_has_a_triton_lowering():
    """Pointwise ops run as generated chains (the "pointwise" lowering); every other op has
    its own."""
    from ipugraph.backends import LOWERINGS, get_backend
    get_backend("triton")
    assert "pointwise" in LOWERINGS["triton"]
    missing = sorted(name for name, op in OPS.items()
                     if op.pointwise is None and name not in LOWERINGS["triton"])
    assert not missing, f"ops without a triton lowering: {missing}"


def test_kernels_package_and_autotune_configs():
    """kernels/ installs as ipugraph.kernels; pyproject lists every subpackage (the list is
    explicit because of that mapping). Autotuning: 2-4 configs on a GPU, one interpreted."""
    assert pathlib.Path(K.__file__).resolve().parent == ROOT / "kernels"
    text = (ROOT / "pyproject.toml").read_text()
    assert 'package-dir = {"ipugraph.kernels" = "kernels"}' in text
    packages = ast.literal_eval(re.search(r"^packages = (\[.*?\])", text, re.M | re.S)[1])
    subpackages = {"ipugraph." + ".".join(p.parent.relative_to(ROOT / "ipugraph").parts)
                   for p in (ROOT / "ipugraph").glob("**/__init__.py")
                   if p.parent != ROOT / "ipugraph"}
    assert subpackages | {"ipugraph", "ipugraph.kernels"} == set(packages)
    tuned = [kconv.conv2d_nhwc_kernel, kconv.conv2d_depthwise_nhwc_kernel, kmm.matmul_kernel,
             kpool.pool2d_nhwc_kernel, kpool.global_avg_pool_nhwc_kernel, kloss.softmax_kernel]
    for kernel in tuned:
        assert (len(kernel.configs) == 1) if K.INTERPRET else (2 <= len(kernel.configs) <= 4)
    assert K.INTERPRET == (not CUDA)


# -- GPU only ----------------------------------------------------------------------------------

@gpu
@needs_cuda
def test_cuda_graph_replay_matches_eager():
    g, _ = _block_graph(name="graphed")
    eng = ig.compile(g, backend="triton", cuda_graph=True)
    for seed in (0, 1):
        feeds = {"x": rand((2, 6, 9, 7), seed)}
        eager = ig.compile(g, backend="triton").run(feeds)
        out = eng.run(feeds)
        for name in eager:
            np.testing.assert_array_equal(out[name], eager[name])
    assert eng._exe._graph is not None


@gpu
@needs_cuda
def test_cuda_feeds_stay_on_the_device():
    g, feeds = _block_graph(name="cuda_feeds")
    eng = ig.compile(g, backend="triton", cuda_graph=True)
    out = eng._exe.run({"x": torch.from_numpy(feeds["x"]).cuda()})
    assert all(t.is_cuda for t in out.values())
    expected = ig.compile(g, backend="reference").run(feeds)
    check(out["block"].cpu().numpy(), expected["block"], reduction=90)


@gpu
@needs_cuda
def test_tf32_is_opt_in():
    args, expected, red = conv_case(CONVS["tap_loop_2_blocks"])
    out = K.conv2d_nhwc(**args, allow_tf32=True)
    err = np.abs(to_nchw(out) - expected).max() / np.abs(expected).max()
    assert err < 1e-2
    check(to_nchw(K.conv2d_nhwc(**args)), expected, reduction=red)


@gpu
@needs_cuda
def test_resnet18_gpu_batch8():
    net = ig.models.resnet18(batch=8, image_size=64)
    feeds = {"x": np.random.default_rng(1).standard_normal((8, 3, 64, 64)).astype(np.float32)}
    expected = ig.compile(net, backend="reference").run(feeds)["logits"]
    for options in ({}, {"cuda_graph": True}):
        out = ig.compile(net, backend="triton", **options).run(feeds)["logits"]
        assert_close(out, expected, 4608, what=f"resnet18 {options}")
