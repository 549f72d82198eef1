"""Every op on the reference and CPU backends, planned for the host and for IPUs, against torch
in float64 (an implementation independent of ipugraph's NumPy references).

Shapes: every distinct conv of ResNet-34 (batch 1, 224×224) plus an odd set (odd H/W, stride 2,
dilation 2, groups 2 and depthwise, batch 1, channels that divide no split, 1×1, padding 0/3,
non-square kernels and strides). Tolerance: see helpers.assert_close (fp32 vs fp64, atol ∝ √K).
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ipugraph as ig
from helpers import assert_close, rand, run

BACKENDS = ["reference", "cpu"]

# (N, C, H, W, K, R, S, stride, padding, dilation, groups, bias)
RESNET34_CONVS = {
    "conv1": (1, 3, 224, 224, 64, 7, 7, 2, 3, 1, 1, False),
    "layer1": (1, 64, 56, 56, 64, 3, 3, 1, 1, 1, 1, False),
    "layer2.0.conv1": (1, 64, 56, 56, 128, 3, 3, 2, 1, 1, 1, False),
    "layer2.0.downsample": (1, 64, 56, 56, 128, 1, 1, 2, 0, 1, 1, False),
    "layer2": (1, 128, 28, 28, 128, 3, 3, 1, 1, 1, 1, False),
    "layer3.0.conv1": (1, 128, 28, 28, 256, 3, 3, 2, 1, 1, 1, False),
    "layer3.0.downsample": (1, 128, 28, 28, 256, 1, 1, 2, 0, 1, 1, False),
    "layer3": (1, 256, 14, 14, 256, 3, 3, 1, 1, 1, 1, False),
    "layer4.0.conv1": (1, 256, 14, 14, 512, 3, 3, 2, 1, 1, 1, False),
    "layer4.0.downsample": (1, 256, 14, 14, 512, 1, 1, 2, 0, 1, 1, False),
    "layer4": (1, 512, 7, 7, 512, 3, 3, 1, 1, 1, 1, False),
}
ODD_CONVS = {
    "odd_hw": (2, 5, 13, 11, 17, 3, 3, 1, 1, 1, 1, True),
    "stride2_odd": (3, 7, 15, 9, 33, 3, 3, 2, 1, 1, 1, False),
    "dilation2": (1, 6, 12, 14, 10, 3, 3, 1, 2, 2, 1, True),
    "groups2": (2, 8, 9, 9, 12, 3, 3, 1, 1, 1, 2, True),
    "depthwise": (1, 24, 10, 7, 24, 3, 3, 2, 1, 1, 24, False),
    "depthwise_mult2": (1, 5, 8, 8, 10, 3, 3, 1, 1, 1, 5, True),
    "pointwise_odd": (1, 19, 5, 6, 37, 1, 1, 1, 0, 1, 1, True),
    "pad3_k7": (1, 3, 20, 17, 9, 7, 7, 2, 3, 1, 1, False),
    "nonsquare": (2, 4, 11, 16, 6, 3, 5, (2, 1), (1, 2), (1, 2), 1, True),
    "batch1_tiny": (1, 1, 1, 1, 1, 1, 1, 1, 0, 1, 1, True),
    "no_padding_big_k": (1, 3, 9, 9, 5, 9, 9, 1, 0, 1, 1, False),
}


def _conv_case(case, seed=0):
    n, c, h, w, k, r, s, stride, padding, dilation, groups, bias = case
    g = ig.Graph(name="conv")
    x = g.input("x", (n, c, h, w))
    wt = g.variable("w", (k, c // groups, r, s), value=rand((k, c // groups, r, s), seed + 1))
    b = g.variable("b", (k,), value=rand((k,), seed + 2)) if bias else None
    y = ig.ops.conv2d(x, wt, b, stride=stride, padding=padding, dilation=dilation, groups=groups)
    g.output("y", y)
    xv = rand((n, c, h, w), seed)
    expect = F.conv2d(torch.from_numpy(xv).double(), torch.from_numpy(wt.value).double(),
                      None if b is None else torch.from_numpy(b.value).double(), stride=stride,
                      padding=padding, dilation=dilation, groups=groups).numpy()
    return g, {"x": xv}, expect, (c // groups) * r * s


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(RESNET34_CONVS) + list(ODD_CONVS))
def test_conv2d(case, backend):
    spec = RESNET34_CONVS.get(case) or ODD_CONVS[case]
    g, feeds, expect, k = _conv_case(spec)
    for target in ("host", "mk2"):
        out = run(g, backend, target, feeds)["y"]
        assert_close(out, expect, k, what=f"conv2d {case} on {backend}/{target}")


@pytest.mark.parametrize("case", ["layer2", "groups2", "stride2_odd"])
def test_conv2d_mk1_plan_on_cpu(case):
    spec = RESNET34_CONVS.get(case) or ODD_CONVS[case]
    g, feeds, expect, k = _conv_case(spec)
    assert_close(run(g, "cpu", "mk1", feeds)["y"], expect, k, what=f"conv2d {case} mk1")


def _bn_params(g, c, prefix, seed):
    gamma = g.variable(f"{prefix}.weight", (c,), value=rand((c,), seed, 0.5, 1.5))
    beta = g.variable(f"{prefix}.bias", (c,), value=rand((c,), seed + 1))
    mean = g.variable(f"{prefix}.running_mean", (c,), value=rand((c,), seed + 2))
    var = g.variable(f"{prefix}.running_var", (c,), value=rand((c,), seed + 3, 0.5, 2.0))
    return gamma, beta, mean, var


def _torch_bn(x, params, eps=1e-5):
    gamma, beta, mean, var = (torch.from_numpy(p.value).double() for p in params)
    return F.batch_norm(x, mean, var, gamma, beta, training=False, eps=eps)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("target", ["host", "mk2"])
def test_fused_conv_bn_add_relu(backend, target):
    """A ResNet basic block's tail: conv → BN → add(residual) → ReLU, fused into one compute
    set on every backend; the residual is produced after the conv in node order."""
    n, c, h, w, k = 2, 16, 9, 11, 24
    g = ig.Graph(name="block")
    x = g.input("x", (n, c, h, w))
    w1 = g.variable("w1", (k, c, 3, 3), value=rand((k, c, 3, 3), 1))
    wd = g.variable("wd", (k, c, 1, 1), value=rand((k, c, 1, 1), 2))
    bn1 = _bn_params(g, k, "bn1", 10)
    bnd = _bn_params(g, k, "bnd", 20)
    main = ig.ops.batch_norm(ig.ops.conv2d(x, w1, padding=1), *bn1)
    short = ig.ops.batch_norm(ig.ops.conv2d(x, wd), *bnd)
    y = ig.ops.relu(ig.ops.add(main, short))
    g.output("y", y)
    plan = ig.plan(g, ig.Target.host())
    assert [s.op for s in plan.steps] == ["conv2d+batch_norm", "conv2d+batch_norm+add+relu"]
    xv = rand((n, c, h, w), 0)
    xt = torch.from_numpy(xv).double()
    ref = F.relu(_torch_bn(F.conv2d(xt, torch.from_numpy(w1.value).double(), padding=1), bn1)
                 + _torch_bn(F.conv2d(xt, torch.from_numpy(wd.value).double()), bnd)).numpy()
    assert_close(run(g, backend, target, {"x": xv})["y"], ref, c * 9, what="fused block")


# (N, C, H, W, kernel, stride, padding, dilation)
POOLS = {
    "resnet_maxpool": (1, 64, 112, 112, 3, 2, 1, 1),
    "odd": (2, 17, 13, 11, 3, 2, 1, 1),
    "k2s2": (3, 5, 10, 7, 2, 2, 0, 1),
    "nonsquare": (1, 9, 9, 12, (3, 2), (1, 2), (1, 1), 1),
    "dilated": (1, 6, 15, 15, 3, 1, 1, 2),
    "batch1_c1": (1, 1, 5, 5, 5, 1, 2, 1),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(POOLS))
def test_max_pool2d(case, backend):
    n, c, h, w, kernel, stride, padding, dilation = POOLS[case]
    g = ig.Graph(name="pool")
    x = g.input("x", (n, c, h, w))
    g.output("y", ig.ops.max_pool2d(x, kernel, stride, padding, dilation))
    xv = rand((n, c, h, w), 3)
    ref = F.max_pool2d(torch.from_numpy(xv).double(), kernel, stride, padding, dilation).numpy()
    for target in ("host", "mk2"):
        np.testing.assert_array_equal(run(g, backend, target, {"x": xv})["y"],
                                      ref.astype(np.float32))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("case", [c for c in POOLS if POOLS[c][7] == 1])
def test_avg_pool2d(case, count_include_pad, backend):
    n, c, h, w, kernel, stride, padding, _ = POOLS[case]
    g = ig.Graph(name="pool")
    x = g.input("x", (n, c, h, w))
    g.output("y", ig.ops.avg_pool2d(x, kernel, stride, padding, count_include_pad))
    xv = rand((n, c, h, w), 4)
    ref = F.avg_pool2d(torch.from_numpy(xv).double(), kernel, stride, padding,
                       count_include_pad=count_include_pad).numpy()
    for target in ("host", "mk2"):
        assert_close(run(g, backend, target, {"x": xv})["y"], ref, 25, what=f"avg_pool {case}")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 512, 7, 7), (3, 17, 5, 3), (1, 1, 1, 1)])
def test_global_avg_pool_flatten(shape, backend):
    g = ig.Graph(name="gap")
    x = g.input("x", shape)
    g.output("y", ig.ops.flatten(ig.ops.global_avg_pool(x)))
    xv = rand(shape, 5)
    ref = torch.from_numpy(xv).double().mean(dim=(2, 3)).numpy()
    for target in ("host", "mk2"):
        assert_close(run(g, backend, target, {"x": xv})["y"], ref, shape[2] * shape[3])


@pytest.mark.parametrize("backend", BACKENDS)
def test_flatten_keeps_nchw_order(backend):
    """The CPU backend stores NHWC; flatten must still produce torch's NCHW element order."""
    g = ig.Graph(name="flat")
    x = g.input("x", (2, 3, 4, 5))
    g.output("y", ig.ops.flatten(ig.ops.relu(x)))
    xv = rand((2, 3, 4, 5), 6)
    np.testing.assert_array_equal(run(g, backend, "host", {"x": xv})["y"],
                                  np.maximum(xv, 0).reshape(2, -1))


# (M, K, N)
GEMMS = [(8, 512, 1000), (1, 1, 1), (7, 33, 19), (13, 64, 16), (65, 3, 129)]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mkn", GEMMS)
def test_matmul_and_linear(mkn, backend):
    m, k, n = mkn
    g = ig.Graph(name="gemm")
    a = g.input("a", (m, k))
    b = g.input("b", (k, n))                      # a run-time right operand: packed per run
    w = g.variable("w", (n, k), value=rand((n, k), 2))
    bias = g.variable("bias", (n,), value=rand((n,), 3))
    g.output("mm", ig.ops.matmul(a, b))
    g.output("lin", ig.ops.linear(a, w, bias))
    g.output("lin_relu", ig.ops.relu(ig.ops.linear(a, w)))
    av, bv = rand((m, k), 0), rand((k, n), 1)
    at, wt = torch.from_numpy(av).double(), torch.from_numpy(w.value).double()
    for target in ("host", "mk2"):
        out = run(g, backend, target, {"a": av, "b": bv})
        assert_close(out["mm"], (at @ torch.from_numpy(bv).double()).numpy(), k, what="matmul")
        assert_close(out["lin"], F.linear(at, wt, torch.from_numpy(bias.value).double()).numpy(),
                     k, what="linear")
        assert_close(out["lin_relu"], F.relu(F.linear(at, wt)).numpy(), k, what="linear+relu")


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(8, 1000), (3, 1), (1, 17), (4, 5, 7), (2, 3, 5, 7)])
def test_softmax(shape, backend):
    g = ig.Graph(name="softmax")
    x = g.input("x", shape)
    g.output("y", ig.ops.softmax(x))
    xv = rand(shape, 7, -30, 30)                  # large logits: needs the max subtraction
    ref = torch.softmax(torch.from_numpy(xv).double(), dim=-1).numpy()
    for target in ("host", "mk2"):
        assert_close(run(g, backend, target, {"x": xv})["y"], ref, shape[-1])


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("shape", [(2, 64, 56, 56), (3, 5, 7, 1), (5, 33), (4, 6, 9)])
def test_elementwise_and_batch_norm(shape, backend):
    """relu, add and a standalone (unfused) batch_norm on 4-D, 3-D and 2-D tensors."""
    g = ig.Graph(name="ew")
    a, b = g.input("a", shape), g.input("b", shape)
    bn = _bn_params(g, shape[1], "bn", 11)
    g.output("relu", ig.ops.relu(a))
    g.output("add", ig.ops.add(a, b))
    g.output("bn", ig.ops.batch_norm(a, *bn, eps=1e-3))
    av, bv = rand(shape, 8), rand(shape, 9)
    at = torch.from_numpy(av).double()
    for target in ("host", "mk2"):
        out = run(g, backend, target, {"a": av, "b": bv})
        np.testing.assert_array_equal(out["relu"], np.maximum(av, 0))
        np.testing.assert_array_equal(out["add"], av + bv)
        assert_close(out["bn"], _torch_bn(at, bn, eps=1e-3).numpy(), 1, what="batch_norm")


def test_every_op_has_a_cpu_lowering():
    """Pointwise ops run as fused chains (the "pointwise" lowering); every other op has its
    own."""
    from ipugraph.backends import LOWERINGS, get_backend
    get_backend("cpu")
    assert "pointwise" in LOWERINGS["cpu"]
    missing = sorted(name for name, op in ig.ops.OPS.items()
                     if op.pointwise is None and name not in LOWERINGS["cpu"])
    assert not missing, f"ops without a cpu lowering: {missing}"
