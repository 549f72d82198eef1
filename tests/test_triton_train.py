"""The training ops on the triton backend (kernels/conv_grad.py, kernels/train.py and their
lowerings) against the ops' NumPy references.

Without a CUDA device the kernels run in Triton's interpreter (TRITON_INTERPRET=1 is set below,
before anything imports triton), so shapes are tiny and odd: stride 2, padding, dilation 2,
groups 2, depthwise, batch 1, channel counts that are no multiple of any block, ties in max
pooling (all-zero windows after a ReLU, repeated values), rank 2, 3 and 4 per-channel ops.

Through the graph API every op is compiled on the triton backend and compared with the
reference backend (NumPy in float64, outputs in the declared dtype). Tolerances: float32 as
helpers.assert_close (atol 2e-6·√K·max|expected| for a reduction of length K, rtol 1e-5).
float16 kernels are compared with the float64 reference of the same rounded inputs: rtol 2^-10
plus atol 1e-5·√K·max|expected| (the output's rounding and fp32 accumulation). Tests that need
a GPU are marked `gpu` and skipped without one.
"""
import os

import torch

CUDA = torch.cuda.is_available()
if not CUDA:
    os.environ["TRITON_INTERPRET"] = "1"          # before the first `import triton`

import importlib  # noqa: E402

import numpy as np  # noqa: E402
import pytest  # noqa: E402

import ipugraph as ig  # noqa: E402
from ipugraph.ops import OPS  # noqa: E402
from helpers import assert_close, rand  # noqa: E402

import ipugraph.kernels  # noqa: E402,F401  (after TRITON_INTERPRET is decided)
KG = importlib.import_module("ipugraph.kernels.conv_grad")
KP, KN, KR, KL = (importlib.import_module(f"ipugraph.kernels.{m}")
                  for m in ("pool", "norm", "reduce", "loss"))

DEVICE = torch.device("cuda" if CUDA else "cpu")
gpu = pytest.mark.gpu
needs_cuda = pytest.mark.skipif(not CUDA, reason="needs a CUDA device")


# -- helpers -----------------------------------------------------------------------------------

def op(name, *inputs, **attrs):
    return OPS[name](*inputs, **attrs)


def compare(g, feeds, reduction=1, what=""):
    """Run g on the triton and the reference backends; check every output (float32)."""
    expected = ig.compile(g, backend="reference").run(feeds)
    out = ig.compile(g, backend="triton").run(feeds)
    assert set(out) == set(expected)
    for name, e in expected.items():
        assert isinstance(out[name], np.ndarray) and out[name].dtype == e.dtype, name
        assert_close(out[name], e, reduction, what=f"{what or g.name}:{name}")
    return out


def dev(a, dtype=torch.float32):
    return torch.from_numpy(np.ascontiguousarray(a)).to(DEVICE, dtype)


def nhwc(a, dtype=torch.float32):
    return dev(np.asarray(a).transpose(0, 2, 3, 1), dtype)


def to_nchw(t):
    return t.permute(0, 3, 1, 2).double().cpu().numpy()


def rounded(a, dtype):
    return torch.from_numpy(np.asarray(a, np.float64)).to(dtype).double().numpy()


def check_low(actual, expected, reduction=1, what=""):
    """float16 results against a float64 oracle of the same rounded inputs."""
    expected = np.asarray(expected, np.float64)
    actual = np.asarray(actual, np.float64)
    assert actual.shape == expected.shape, what
    atol = 1e-5 * np.sqrt(reduction) * max(float(np.abs(expected).max()), 1e-12)
    np.testing.assert_allclose(actual, expected, rtol=2.0 ** -10, atol=atol, err_msg=what)


# -- conv gradients ----------------------------------------------------------------------------

# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CONVS = {
    "stride2_pad": (2, 3, 7, 6, 5, 3, 3, 2, 1, 1, 1),
    "groups2_dil2": (1, 4, 7, 8, 6, 3, 2, 1, 2, 2, 2),
    "depthwise": (2, 3, 5, 6, 3, 3, 3, 2, 1, 1, 3),
    "depthwise_mult2": (1, 3, 5, 5, 6, 3, 3, 1, 1, 1, 3),
    "taploop_k32": (1, 2, 4, 5, 32, 3, 3, 2, 1, 1, 1),    # Kg >= 32: dgrad's tap loop
}


def _conv_case(case, seed=0):
    n, c, h, w, k, r, s, st, pd, dl, groups = CONVS[case]
    oh = (h + 2 * pd - dl * (r - 1) - 1) // st + 1
    ow = (w + 2 * pd - dl * (s - 1) - 1) // st + 1
    attrs = dict(stride=(st, st), padding=(pd, pd), dilation=(dl, dl), groups=groups)
    return (n, c, h, w, k, r, s, oh, ow, groups), attrs


@pytest.mark.parametrize("case", list(CONVS))
def test_conv2d_backward_data_op(case):
    (n, c, h, w, k, r, s, oh, ow, groups), attrs = _conv_case(case)
    g = ig.Graph(name=f"dgrad_{case}")
    dy = g.input("dy", (n, k, oh, ow))
    wt = g.variable("w", (k, c // groups, r, s), value=rand((k, c // groups, r, s), 1))
    g.output("dx", op("conv2d_backward_data", dy, wt, input_size=(h, w), **attrs))
    compare(g, {"dy": rand((n, k, oh, ow), 2)}, (k // groups) * r * s)


@pytest.mark.parametrize("case", [c for c in CONVS if c != "taploop_k32"])
def test_conv2d_backward_weight_op(case):
    (n, c, h, w, k, r, s, oh, ow, groups), attrs = _conv_case(case)
    g = ig.Graph(name=f"wgrad_{case}")
    x = g.input("x", (n, c, h, w))
    dy = g.input("dy", (n, k, oh, ow))
    g.output("dw", op("conv2d_backward_weight", x, dy, kernel=(r, s), **attrs))
    compare(g, {"x": rand((n, c, h, w), 3), "dy": rand((n, k, oh, ow), 4)}, n * oh * ow)


@pytest.mark.parametrize("gather_k", [True, False])
def test_conv2d_backward_data_both_forms(gather_k):
    (n, c, h, w, k, r, s, oh, ow, groups), attrs = _conv_case("groups2_dil2")
    dyv, wv = rand((n, k, oh, ow), 5), rand((k, c // groups, r, s), 6)
    ref = OPS["conv2d_backward_data"].reference(dyv.astype(np.float64), wv.astype(np.float64),
                                                input_size=(h, w), **attrs)
    dx = KG.conv2d_backward_data_nhwc(nhwc(dyv), nhwc(wv), (h, w), gather_k=gather_k, **attrs)
    assert_close(to_nchw(dx), ref, (k // groups) * r * s, what=f"gather_k={gather_k}")


@pytest.mark.parametrize("case", ["stride2_pad", "groups2_dil2", "depthwise_mult2"])
def test_conv2d_backward_weight_split(case):
    """The pixel reduction split 3 ways into the workspace, then summed in order."""
    (n, c, h, w, k, r, s, oh, ow, groups), attrs = _conv_case(case)
    xv, dyv = rand((n, c, h, w), 7), rand((n, k, oh, ow), 8)
    ref = OPS["conv2d_backward_weight"].reference(xv.astype(np.float64), dyv.astype(np.float64),
                                                  kernel=(r, s), **attrs)
    dw = KG.conv2d_backward_weight_nhwc(nhwc(xv), nhwc(dyv), (r, s), split=3, **attrs)
    assert_close(to_nchw(dw), ref, n * oh * ow, what=case)


@pytest.mark.parametrize("case", ["stride2_pad", "depthwise"])
def test_conv_grads_float16(case):
    (n, c, h, w, k, r, s, oh, ow, groups), attrs = _conv_case(case)
    xv, wv, dyv = (rounded(rand(shape, seed), torch.float16) for shape, seed in
                   (((n, c, h, w), 9), ((k, c // groups, r, s), 10), ((n, k, oh, ow), 11)))
    dx = KG.conv2d_backward_data_nhwc(nhwc(dyv, torch.float16), nhwc(wv, torch.float16), (h, w),
                                      **attrs)
    dw = KG.conv2d_backward_weight_nhwc(nhwc(xv, torch.float16), nhwc(dyv, torch.float16),
                                        (r, s), **attrs)
    assert dx.dtype == dw.dtype == torch.float16
    check_low(to_nchw(dx), OPS["conv2d_backward_data"].reference(dyv, wv, input_size=(h, w),
                                                                 **attrs),
              (k // groups) * r * s, "dx f16")
    check_low(to_nchw(dw), OPS["conv2d_backward_weight"].reference(xv, dyv, kernel=(r, s),
                                                                   **attrs),
              n * oh * ow, "dw f16")


def test_conv_grads_check_arguments():
    dy = torch.zeros((1, 3, 3, 4), device=DEVICE)
    w = torch.zeros((4, 3, 3, 2), device=DEVICE)
    geo = dict(stride=2, padding=1)
    KG.conv2d_backward_data_nhwc(dy, w, (5, 5), **geo)                  # fits
    with pytest.raises(ValueError, match="groups"):
        KG.conv2d_backward_data_nhwc(dy, w, (5, 5), groups=3, **geo)
    with pytest.raises(ValueError, match="not the gradient"):
        KG.conv2d_backward_data_nhwc(dy, w, (9, 9), **geo)
    with pytest.raises(ValueError, match="dtype"):
        KG.conv2d_backward_data_nhwc(dy, w.half(), (5, 5), **geo)
    x = torch.zeros((1, 5, 5, 2), device=DEVICE)
    KG.conv2d_backward_weight_nhwc(x, dy, (3, 3), **geo)                # fits
    with pytest.raises(ValueError, match="shape"):
        KG.conv2d_backward_weight_nhwc(x, dy, (3, 3), out=torch.zeros((4, 3, 3, 3),
                                                                      device=DEVICE), **geo)
    with pytest.raises(ValueError, match="batch"):
        KG.conv2d_backward_weight_nhwc(torch.zeros((2, 5, 5, 2), device=DEVICE), dy, (3, 3),
                                       **geo)
    with pytest.raises(ValueError, match="workspace"):
        KG.conv2d_backward_weight_nhwc(x, dy, (3, 3), workspace=torch.zeros(3, device=DEVICE),
                                       **geo)


# -- pooling gradients -------------------------------------------------------------------------

def _tied_input(shape, seed):
    """ReLU'd values rounded to a coarse grid: all-zero windows and repeated maxima."""
    x = np.maximum(np.round(rand(shape, seed) * 2) / 2, 0).astype(np.float32)
    return x


# (kernel, stride, padding, dilation)
MAX_POOLS = {"k3s2p1": ((3, 3), (2, 2), (1, 1), (1, 1)),
             "k2s2": ((2, 2), (2, 2), (0, 0), (1, 1)),
             "k3s1p1_dil2": ((3, 3), (1, 1), (1, 1), (2, 2)),
             "k3x2s1": ((3, 2), (1, 2), (1, 0), (1, 1))}


@pytest.mark.parametrize("case", list(MAX_POOLS))
def test_max_pool2d_backward_op_ties(case):
    kernel, stride, padding, dilation = MAX_POOLS[case]
    n, c, h, w = 2, 3, 7, 6
    g = ig.Graph(name=f"maxpool_bwd_{case}")
    x = g.input("x", (n, c, h, w))
    y = ig.ops.max_pool2d(x, kernel, stride, padding, dilation)
    dy = g.input("dy", y.shape)
    g.output("dx", op("max_pool2d_backward", x, dy, kernel=kernel, stride=stride,
                      padding=padding, dilation=dilation))
    xv = _tied_input((n, c, h, w), 12)
    xv[0, 0] = 0.0                                             # a whole plane of ties
    compare(g, {"x": xv, "dy": rand(y.shape, 13)}, kernel[0] * kernel[1])


def test_max_pool2d_backward_matches_torch_ties():
    """torch's own first-max choice, ties and overlapping windows included."""
    xv = _tied_input((1, 2, 6, 7), 14)
    xt = torch.from_numpy(xv).double().requires_grad_(True)
    y = torch.nn.functional.max_pool2d(xt, 3, 2, 1)
    dyv = rand(tuple(y.shape), 15)
    y.backward(torch.from_numpy(dyv).double())
    dx = KP.max_pool2d_backward_nhwc(nhwc(xv), nhwc(dyv), 3, 2, 1)
    assert_close(to_nchw(dx), xt.grad.numpy(), 9)


@pytest.mark.parametrize("count_include_pad", [True, False])
@pytest.mark.parametrize("kernel,stride,padding", [((3, 3), (2, 2), (1, 1)),
                                                   ((2, 3), (1, 2), (1, 1))])
def test_avg_pool2d_backward_op(kernel, stride, padding, count_include_pad):
    n, c, h, w = 2, 3, 7, 6
    g = ig.Graph(name="avgpool_bwd")
    x = g.input("x", (n, c, h, w))
    y = ig.ops.avg_pool2d(x, kernel, stride, padding, count_include_pad)
    dy = g.input("dy", y.shape)
    g.output("dx", op("avg_pool2d_backward", dy, kernel=kernel, stride=stride, padding=padding,
                      count_include_pad=count_include_pad, input_size=(h, w)))
    compare(g, {"x": rand((n, c, h, w), 16), "dy": rand(y.shape, 17)}, 6)


def test_global_avg_pool_backward_op():
    n, c, h, w = 2, 5, 3, 4
    g = ig.Graph(name="gap_bwd")
    dy = g.input("dy", (n, c, 1, 1))
    g.output("dx", op("avg_pool2d_backward", dy, kernel=(h, w), stride=(h, w), padding=(0, 0),
                      count_include_pad=True, input_size=(h, w)))
    compare(g, {"dy": rand((n, c, 1, 1), 18)})


def test_pool_backward_float16_and_checks():
    xv = rounded(_tied_input((1, 3, 5, 5), 19), torch.float16)
    dyv = rounded(rand((1, 3, 3, 3), 20), torch.float16)
    dx = KP.max_pool2d_backward_nhwc(nhwc(xv, torch.float16), nhwc(dyv, torch.float16), 3, 2, 1)
    ref = OPS["max_pool2d_backward"].reference(xv, dyv, kernel=(3, 3), stride=(2, 2),
                                               padding=(1, 1), dilation=(1, 1))
    check_low(to_nchw(dx), ref, 9, "max pool f16")
    with pytest.raises(ValueError, match="not the gradient"):
        KP.max_pool2d_backward_nhwc(nhwc(xv), nhwc(rand((1, 3, 2, 2), 0)), 3, 2, 1)
    with pytest.raises(ValueError, match="dtype"):
        KP.max_pool2d_backward_nhwc(nhwc(xv), nhwc(dyv, torch.float16), 3, 2, 1)


# -- batch norm (training) and per-channel reductions -----------------------------------------

BN_SHAPES = [(3, 5, 4, 3), (7, 5), (2, 5, 6)]


@pytest.mark.parametrize("shape", BN_SHAPES)
def test_batch_norm_training_ops(shape):
    """bn_stats, batch_norm_train, bn_grad_stats, channel_sum, select, the backward chain (dx
    through ig.grad) and both running-statistics updates (assigned) in one graph."""
    c = shape[1]
    g = ig.Graph(name=f"bn_train_{len(shape)}d")
    x = g.variable("x", shape, value=rand(shape, 5, -2.0, 3.0))
    dy = g.input("dy", shape)
    gamma = g.variable("gamma", (c,), value=rand((c,), 1, 0.5, 1.5))
    beta = g.variable("beta", (c,), value=rand((c,), 2))
    rmean = g.variable("rmean", (c,), value=rand((c,), 3), trainable=False)
    rvar = g.variable("rvar", (c,), value=rand((c,), 4, 0.5, 2.0), trainable=False)
    y, stats = ig.ops.batch_norm_train(x, gamma, beta, eps=1e-3, running_mean=rmean,
                                       running_var=rvar, momentum=0.25)
    loss = ig.ops.sum(ig.ops.mul(y, dy))
    grads = ig.grad(g, loss, [x, gamma, beta])
    g.output("stats", stats)
    g.output("y", y)
    g.output("gstats", op("bn_grad_stats", dy, x, stats, eps=1e-3))
    for name, t in grads.items():
        g.output(f"d{name}", t)
    g.output("csum", op("channel_sum", dy))
    feeds = {"dy": rand(shape, 6)}
    m = int(np.prod(shape)) // c
    compare(g, feeds, m)
    after = {}                         # the running statistics after one run from the start
    for backend in ("reference", "triton"):
        rmean.value, rvar.value = rand((c,), 3), rand((c,), 4, 0.5, 2.0)
        eng = ig.compile(g, backend=backend)
        eng.run(feeds)
        after[backend] = {n: eng.variables[n] for n in ("rmean", "rvar")}
    for n in ("rmean", "rvar"):
        assert_close(after["triton"][n], after["reference"][n], m, what=n)


def test_bn_reductions_split_and_float16():
    """The per-channel reductions split 3 ways (the GPU path), and float16 inputs."""
    shape = (2, 6, 5, 3)
    layout = KR.channel_layout(shape)
    xv, dyv = rand(shape, 7, -1.0, 2.0), rand(shape, 8)
    ref_stats = OPS["bn_stats"].reference(xv.astype(np.float64))
    stats = KN.bn_stats(nhwc(xv), layout, split=3)
    assert_close(stats.double().cpu().numpy(), ref_stats, 30)
    gs = KN.bn_grad_stats(nhwc(dyv), nhwc(xv), stats, layout, 1e-5, split=3)
    ref_gs = OPS["bn_grad_stats"].reference(dyv.astype(np.float64), xv.astype(np.float64),
                                            stats.double().cpu().numpy(), eps=1e-5)
    assert_close(gs.double().cpu().numpy(), ref_gs, 30)
    cs = KR.channel_sum(nhwc(dyv), layout, split=3)
    assert_close(cs.double().cpu().numpy(), dyv.astype(np.float64).sum(axis=(0, 2, 3)), 30)
    x16 = rounded(xv, torch.float16)
    s16 = KN.bn_stats(nhwc(x16, torch.float16), layout)
    assert s16.dtype == torch.float16
    check_low(s16.double().cpu().numpy(), OPS["bn_stats"].reference(x16), 30, "bn_stats f16")


def test_bn_checks_arguments():
    x = torch.zeros((4, 3), device=DEVICE)
    with pytest.raises(ValueError, match="shape"):
        KN.batch_norm_train(x, torch.ones(4, device=DEVICE), torch.zeros(3, device=DEVICE),
                            torch.zeros((2, 3), device=DEVICE), (4, 3, 1), 1e-5)
    with pytest.raises(ValueError, match="elements"):
        KN.bn_stats(x, (5, 3, 1))


# -- elementwise, shape, softmax ---------------------------------------------------------------

def test_relu_gradient_chain():
    """relu's gradient is where(y > 0, dy, 0): one generated kernel."""
    g = ig.Graph(name="relu_bwd")
    x = g.variable("x", (2, 3, 5, 4), value=rand((2, 3, 5, 4), 1))
    dy = g.input("dy", (2, 3, 5, 4))
    g.output("dx", ig.grad(g, ig.ops.sum(ig.ops.relu(x) * dy), [x])["x"])
    compare(g, {"dy": rand((2, 3, 5, 4), 2)})


@pytest.mark.parametrize("src,dst", [((2, 3, 4, 5), (6, 20)), ((6, 20), (2, 3, 4, 5)),
                                     ((2, 3, 4, 5), (3, 2, 5, 4)), ((4, 6), (3, 8))])
def test_reshape_op(src, dst):
    g = ig.Graph(name="reshape")
    x = g.input("x", src)
    g.output("y", op("reshape", x, shape=dst))
    compare(g, {"x": rand(src, 3)})


def test_transpose_and_select_ops():
    g = ig.Graph(name="transpose_select")
    a = g.input("a", (5, 7))
    t = g.input("t", (3, 4, 5, 2))
    g.output("at", op("transpose", a))
    g.output("t1", op("select", t, index=1))                  # a 4-D input: NHWC storage
    g.output("a4", op("select", a, index=4))
    compare(g, {"a": rand((5, 7), 4), "t": rand((3, 4, 5, 2), 5)})


@pytest.mark.parametrize("shape", [(4, 9), (2, 3, 4, 5), (3, 2, 6)])
def test_softmax_backward_op(shape):
    g = ig.Graph(name="softmax_bwd")
    x = g.input("x", shape)
    dy = g.input("dy", shape)
    g.output("dx", op("softmax_backward", ig.ops.softmax(x), dy))
    compare(g, {"x": rand(shape, 6, -2.0, 2.0), "dy": rand(shape, 7)}, shape[-1])


# -- the loss ----------------------------------------------------------------------------------

def _ce_graph():
    g = ig.Graph(name="ce")
    logits = g.input("logits", (5, 11))
    labels = g.input("labels", (5,), dtype="int64")
    dloss = g.input("dloss", ())
    g.output("loss", op("cross_entropy", logits, labels))
    g.output("dlogits", op("cross_entropy_backward", logits, labels, dloss))
    return g




def test_cross_entropy_ops():
    g = _ce_graph()
    feeds = {"logits": rand((5, 11), 8, -3.0, 3.0), "labels": np.array([0, 10, 3, 3, 7]),
             "dloss": np.array(2.5, np.float32)}
    expected = ig.compile(g, backend="reference").run(feeds)
    out = ig.compile(g, backend="triton").run(feeds)
    for name, e in expected.items():
        assert out[name].shape == e.shape and out[name].dtype == e.dtype, name
        assert_close(out[name], e, 11, what=name)


def test_cross_entropy_rejects_bad_labels():
    eng = ig.compile(_ce_graph(), backend="triton")
    for bad in (11, -1):
        feeds = {"logits": rand((5, 11), 8), "labels": np.array([0, bad, 3, 3, 7]),
                 "dloss": np.array(1.0, np.float32)}
        with pytest.raises(ValueError, match=f"cross_entropy.*label {bad}.*11"):
            eng.run(feeds)


def test_cross_entropy_kernels():
    """The kernels directly: int32 and int64 labels, the stable logsumexp of large logits, the
    host-side label check naming the op, the label and K."""
    lv = rand((6, 9), 9, -3.0, 3.0).astype(np.float64)
    lv[1] += 80.0                                       # exp would overflow unshifted in fp32
    labels = np.array([0, 8, 3, 3, 7, 1])
    loss_ref = OPS["cross_entropy"].reference(lv, labels)
    grad_ref = OPS["cross_entropy_backward"].reference(lv, labels, np.array(0.5))
    for ldtype in (torch.int64, torch.int32):
        lab = torch.from_numpy(labels).to(DEVICE, ldtype)
        loss = KL.cross_entropy(dev(lv), lab)
        assert_close(loss.double().cpu().numpy(), loss_ref, 9)
        grad = KL.cross_entropy_backward(dev(lv), lab, dev(np.array(0.5)))
        assert_close(grad.double().cpu().numpy(), grad_ref, 9)
    with pytest.raises(ValueError, match=r"cross_entropy: label 9 .*\[0, 9\)"):
        KL.cross_entropy(dev(lv), dev(np.array([0, 9, 3, 3, 7, 1]), torch.int64))
    with pytest.raises(ValueError, match=r"cross_entropy_backward: label -2"):
        KL.cross_entropy_backward(dev(lv), dev(np.array([0, -2, 3, 3, 7, 1]), torch.int64),
                                  dev(np.array(1.0)))


# -- optimizer updates -------------------------------------------------------------------------



@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_optimizer_chains(optimizer):
    """SGD (momentum, weight decay, a fed learning rate) and Adam as fused pointwise chains:
    two steps on the triton and the reference backends give the same variables."""
    shape = (4, 3, 3, 2)
    engines = {}
    for backend in ("reference", "triton"):
        g = ig.Graph(name=optimizer)
        w = g.variable("w", shape, value=rand(shape, 1))
        grad = g.input("g", shape)
        lr = g.input("lr", ())
        if optimizer == "sgd":
            ig.optim.sgd(g, {"w": grad}, lr, momentum=0.9, weight_decay=1e-2)
        else:
            ig.optim.adam(g, {"w": grad}, lr, weight_decay=1e-2)
        engines[backend] = (g, ig.compile(g, backend=backend))
    for step in range(2):
        feeds = {"g": rand(shape, 3 + step), "lr": np.array(0.05, np.float32)}
        for g, eng in engines.values():
            eng.run(feeds)
    (gr, _), (gt, _) = engines["reference"], engines["triton"]
    for name in gr.variables:
        assert_close(gt.variables[name].value, gr.variables[name].value, 4, what=name)


# -- float16 graphs ----------------------------------------------------------------------------

def test_float16_graph():
    """Each op reads graph inputs only (no fp16 intermediates), so the reference's float64
    result of the same fp16 inputs, rounded once to fp16, is the oracle: rtol 2^-9 (both
    roundings) plus atol 1e-5·√K·max|expected|."""
    n, c, h, w, k = 2, 4, 6, 5, 6
    f16 = "float16"
    g = ig.Graph(name="train16")
    x = g.input("x", (n, c, h, w), dtype=f16)
    dy = g.input("dy", (n, k, 3, 3), dtype=f16)
    dyc = g.input("dyc", (n, c, h, w), dtype=f16)
    dyp = g.input("dyp", (n, c, 3, 3), dtype=f16)
    stats = g.input("stats", (2, c), dtype=f16)
    wt = g.variable("w", (k, c // 2, 3, 3), dtype=f16, value=rand((k, c // 2, 3, 3), 1))
    gamma = g.variable("gamma", (c,), dtype=f16, value=rand((c,), 2, 0.5, 1.5))
    beta = g.variable("beta", (c,), dtype=f16, value=rand((c,), 3))
    conv = dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=2)
    outs = {
        "dx": (op("conv2d_backward_data", dy, wt, input_size=(h, w), **conv), 27),
        "dw": (op("conv2d_backward_weight", x, dy, kernel=(3, 3), **conv), 18),
        "dxp": (op("max_pool2d_backward", x, dyp, kernel=(3, 3), stride=(2, 2),
                   padding=(1, 1), dilation=(1, 1)), 9),
        "stats_out": (op("bn_stats", x), 60),
        "y": (op("batch_norm_train", x, gamma, beta, stats), 1),
        "gs": (op("bn_grad_stats", dyc, x, stats), 60),
        "dr": (ig.ops.where(x > 0, dyc, 0.0), 1),
    }
    for name, (t, _) in outs.items():
        g.output(name, t)
    statv = np.stack([rand((c,), 4), rand((c,), 5, 0.5, 2.0)])
    feeds = {"x": _tied_input((n, c, h, w), 6) - 0.25, "dy": rand((n, k, 3, 3), 7),
             "dyc": rand((n, c, h, w), 8), "dyp": rand((n, c, 3, 3), 9), "stats": statv}
    feeds = {name: a.astype(np.float16) for name, a in feeds.items()}
    expected = ig.compile(g, backend="reference").run(feeds)
    out = ig.compile(g, backend="triton").run(feeds)
    for name, (_, red) in outs.items():
        assert out[name].dtype == np.float16, name
        e = expected[name].astype(np.float64)
        atol = 1e-5 * np.sqrt(red) * max(float(np.abs(e).max()), 1e-12)
        np.testing.assert_allclose(out[name].astype(np.float64), e, rtol=2.0 ** -9, atol=atol,
                                   err_msg=name)


# -- a training step ---------------------------------------------------------------------------

def _tiny_training_graph(optimizer):
    """conv-BN(train)-ReLU, grouped conv, max/avg/global pools, linear, softmax, then the loss,
    ig.grad's backward pass and the optimizer update (ipugraph.training.add_training)."""
    g = ig.Graph(name=f"tiny_{optimizer}")
    x = g.input("x", (2, 3, 7, 7))

    def var(name, shape, seed, low=-1.0, high=1.0):
        return g.variable(name, shape, value=rand(shape, seed, low, high))
    y = ig.ops.conv2d(x, var("w1", (4, 3, 3, 3), 1), stride=2, padding=1)
    y, _ = ig.ops.batch_norm_train(y, var("gamma", (4,), 2, 0.5, 1.5), var("beta", (4,), 3))
    y = ig.ops.conv2d(ig.ops.relu(y), var("w2", (4, 2, 3, 3), 4), padding=1, groups=2)
    y = ig.ops.avg_pool2d(ig.ops.max_pool2d(y, 3, 2, 1), 2, 1, 0)
    y = ig.ops.flatten(ig.ops.global_avg_pool(y))
    z = ig.ops.softmax(ig.ops.linear(y, var("fc", (5, 4), 5), var("fcb", (5,), 6)))
    g.output("logits", ig.ops.reshape(ig.ops.transpose(ig.ops.transpose(z)), (2, 5)))
    ig.training.add_training(g, optimizer=optimizer, weight_decay=1e-3, output_grads=True)
    return g


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_training_steps(optimizer):
    """Three steps (variables updated in place between them) on both backends: every output
    -- the loss, the logits and every gradient -- agrees at each step."""
    feeds = {"x": rand((2, 3, 7, 7), 7), "labels": np.array([1, 4]),
             "lr": np.array(0.1, np.float32)}
    ref = ig.compile(_tiny_training_graph(optimizer), backend="reference")
    eng = ig.compile(_tiny_training_graph(optimizer), backend="triton")
    for step in range(3):
        expected = ref.run(feeds)
        out = eng.run(feeds)
        for name, e in expected.items():
            assert_close(out[name], e, 100, what=f"step {step} {name}")


# -- GPU ---------------------------------------------------------------------------------------

@gpu
@needs_cuda
def test_training_kernels_larger_on_gpu():
    """Sizes the interpreter cannot afford: autotuned configs, split reductions by size,
    a tap-loop dgrad with many channels, TF32 off."""
    (n, c, h, w, k, r, s) = (8, 64, 28, 28, 96, 3, 3)
    attrs = dict(stride=(2, 2), padding=(1, 1), dilation=(1, 1), groups=2)
    oh = ow = 14
    xv, wv, dyv = rand((n, c, h, w), 1), rand((k, c // 2, r, s), 2), rand((n, k, oh, ow), 3)
    dx = KG.conv2d_backward_data_nhwc(nhwc(dyv), nhwc(wv), (h, w), **attrs)
    dw = KG.conv2d_backward_weight_nhwc(nhwc(xv), nhwc(dyv), (r, s), **attrs)
    assert_close(to_nchw(dx), OPS["conv2d_backward_data"].reference(
        dyv.astype(np.float64), wv.astype(np.float64), input_size=(h, w), **attrs),
        (k // 2) * r * s)
    assert_close(to_nchw(dw), OPS["conv2d_backward_weight"].reference(
        xv.astype(np.float64), dyv.astype(np.float64), kernel=(r, s), **attrs), n * oh * ow)
    shape = (32, 64, 14, 14)
    layout = KR.channel_layout(shape)
    xb = rand(shape, 4, -1.0, 3.0)
    stats = KN.bn_stats(nhwc(xb), layout)
    assert_close(stats.double().cpu().numpy(), OPS["bn_stats"].reference(xb.astype(np.float64)),
                 shape[0] * shape[2] * shape[3])
