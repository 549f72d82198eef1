"""CPU backend: relu's gradient, reshape, transpose, softmax_backward, cross_entropy (+ backward)
(csrc/loss.cpp, csrc/shape.cpp) and the SGD / Adam updates (pointwise chains built by ig.optim).

Every op runs through the graph API (plan for the "host" and the "mk2" target: one vertex vs.
hundreds of tiles' vertex tables) and is compared with torch in float64 (autograd for the
gradients, torch.optim.SGD / Adam over 3 steps for the updates, the parameters held by the
engine between steps) and with the op's NumPy reference (ipugraph.ops.OPS[name].reference).

Tolerances: the kernels compute in float32 (sums in double), so results are compared with
helpers.assert_close: |err| <= 2e-6·sqrt(K)·max|expected| + 1e-5·|expected|, K the reduction
length (the row length for softmax / the loss, 1 for elementwise ops). Data movement (reshape,
transpose) must be exact. The optimizer parameters after 3 steps: same rule with K = 4 (three
chained float32 updates)."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ipugraph as ig
from ipugraph import _C
from ipugraph.ops import OPS

from helpers import TARGETS, assert_close, rand, run

TARGET_NAMES = ("host", "mk2")


def _engine(g, target_name):
    return ig.compile(g, backend="cpu", plan=ig.plan(g, TARGETS[target_name]()))


def _one_op(op, specs, attrs=None, feeds=None, target="host"):
    """Graph: inputs (name, shape, dtype) -> OPS[op](*inputs, **attrs) -> output 'out'."""
    g = ig.Graph()
    ins = [g.input(name, shape, dtype) for name, shape, dtype in specs]
    g.output("out", OPS[op](*ins, **(attrs or {})))
    return run(g, "cpu", target, feeds)["out"]


def _reference(op, feeds, specs, attrs=None):
    args = [feeds[name].astype(np.float64) if dtype == "float32" else feeds[name]
            for name, _, dtype in specs]
    return OPS[op].reference(*args, **{**OPS[op].attrs, **(attrs or {})})


def _t(a):
    return torch.from_numpy(np.asarray(a, np.float64))


# -- relu's gradient -------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGET_NAMES)
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (13, 17), (1001,)])
def test_relu_gradient(target, shape):
    """where(relu(x) > 0, dy, 0): exact, exact zeros of x included (torch's gradient 0)."""
    x = rand(shape, seed=1)
    x.reshape(-1)[::7] = 0.0
    dy = rand(shape, seed=2)
    g = ig.Graph()
    xv = g.variable("x", shape, value=x)
    dyi = g.input("dy", shape)
    g.output("dx", ig.grad(g, ig.ops.sum(ig.ops.relu(xv) * dyi), [xv])["x"])
    out = _engine(g, target).run({"dy": dy})["dx"]
    xt = _t(x).requires_grad_()
    torch.relu(xt).backward(_t(dy))
    np.testing.assert_array_equal(out, xt.grad.numpy().astype(np.float32))


# -- reshape / transpose (exact) --------------------------------------------------------------

@pytest.mark.parametrize("target", TARGET_NAMES)
@pytest.mark.parametrize("src,dst", [((2, 3, 5, 7), (6, 35)), ((6, 35), (2, 3, 5, 7)),
                                     ((2, 3, 5, 7), (3, 2, 7, 5)), ((7, 15), (105,)),
                                     ((3, 1, 1, 11), (3, 11))])
def test_reshape(target, src, dst):
    x = rand(src, seed=3)
    specs = [("x", src, "float32")]
    out = _one_op("reshape", specs, {"shape": dst}, {"x": x}, target)
    np.testing.assert_array_equal(out, x.reshape(dst))
    np.testing.assert_array_equal(out, _reference("reshape", {"x": x}, specs, {"shape": dst}))


@pytest.mark.parametrize("target", TARGET_NAMES)
@pytest.mark.parametrize("shape", [(37, 53), (1, 9), (70, 33)])
def test_transpose(target, shape):
    a = rand(shape, seed=4)
    specs = [("a", shape, "float32")]
    out = _one_op("transpose", specs, feeds={"a": a}, target=target)
    np.testing.assert_array_equal(out, a.T)
    np.testing.assert_array_equal(out, _reference("transpose", {"a": a}, specs))


# -- softmax_backward -------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGET_NAMES)
@pytest.mark.parametrize("shape", [(19, 23), (2, 3, 5, 7), (5, 1)])
def test_softmax_backward(target, shape):
    x = rand(shape, seed=5, low=-4, high=4)
    xt = _t(x).requires_grad_()
    yt = torch.softmax(xt, dim=-1)
    dy = rand(shape, seed=6)
    yt.backward(_t(dy))
    y = yt.detach().numpy().astype(np.float32)
    specs = [("y", shape, "float32"), ("dy", shape, "float32")]
    feeds = {"y": y, "dy": dy}
    out = _one_op("softmax_backward", specs, feeds=feeds, target=target)
    k = shape[-1]
    assert_close(out, xt.grad.numpy(), reduction=k, what="softmax_backward vs torch")
    assert_close(out, _reference("softmax_backward", feeds, specs), reduction=k,
                 what="softmax_backward vs reference")


# -- cross_entropy and its gradient -----------------------------------------------------------

def _ce_data(n, k, seed, extreme=False):
    logits = rand((n, k), seed=seed, low=-6, high=6)
    labels = np.random.default_rng(seed + 1).integers(0, k, n).astype(np.int64)
    if extreme:                                     # ±1e4: a naive exp overflows / underflows
        logits[::2, :] *= 1e4 / 6
        logits[1::3, 0] = 1e4
        logits[2::5, :] = -1e4
    return logits, labels


def _ce_graph(n, k, backward):
    g = ig.Graph()
    logits = g.input("logits", (n, k))
    labels = g.input("labels", (n,), "int64")
    if backward:
        dloss = g.input("dloss", ())
        g.output("out", OPS["cross_entropy_backward"](logits, labels, dloss))
    else:
        g.output("out", OPS["cross_entropy"](logits, labels))
    return g


@pytest.mark.parametrize("target", TARGET_NAMES)
@pytest.mark.parametrize("n,k,extreme", [(29, 13, False), (1, 1000, False), (33, 7, True)])
def test_cross_entropy(target, n, k, extreme):
    logits, labels = _ce_data(n, k, seed=7, extreme=extreme)
    out = _engine(_ce_graph(n, k, False), target).run({"logits": logits, "labels": labels})["out"]
    assert out.shape == () and out.dtype == np.float32
    ref = F.cross_entropy(_t(logits), torch.from_numpy(labels)).item()
    assert np.isfinite(ref)
    assert_close(out, ref, reduction=k, what="cross_entropy vs torch")
    assert_close(out, OPS["cross_entropy"].reference(logits.astype(np.float64), labels),
                 reduction=k, what="cross_entropy vs reference")


@pytest.mark.parametrize("target", TARGET_NAMES)
@pytest.mark.parametrize("n,k,extreme", [(29, 13, False), (3, 1000, False), (33, 7, True)])
def test_cross_entropy_backward(target, n, k, extreme):
    logits, labels = _ce_data(n, k, seed=8, extreme=extreme)
    eng = _engine(_ce_graph(n, k, True), target)
    for dloss in (1.0, -2.5):                      # dloss is read at run time, not compile
        feeds = {"logits": logits, "labels": labels, "dloss": np.array(dloss, np.float32)}
        out = eng.run(feeds)["out"]
        xt = _t(logits).requires_grad_()
        loss = F.cross_entropy(xt, torch.from_numpy(labels))
        loss.backward(torch.tensor(dloss, dtype=torch.float64))
        assert_close(out, xt.grad.numpy(), reduction=k, what="cross_entropy_backward vs torch")
        ref = OPS["cross_entropy_backward"].reference(logits.astype(np.float64), labels,
                                                      np.float64(dloss))
        assert_close(out, ref, reduction=k, what="cross_entropy_backward vs reference")


@pytest.mark.parametrize("backward", [False, True])
@pytest.mark.parametrize("bad", [13, -1, 2**40])
def test_cross_entropy_bad_label_raises(backward, bad):
    n, k = 9, 13
    logits, labels = _ce_data(n, k, seed=9)
    labels[5] = bad
    feeds = {"logits": logits, "labels": labels}
    if backward:
        feeds["dloss"] = np.array(1.0, np.float32)
    eng = _engine(_ce_graph(n, k, backward), "mk2")
    with pytest.raises(ValueError, match=rf"label {bad} of row 5 is outside \[0, 13\)"):
        eng.run(feeds)
    labels[5] = 3                                  # the same engine works with good labels
    assert np.all(np.isfinite(eng.run(feeds)["out"]))


def test_cross_entropy_int32_labels():
    n, k = 11, 5
    logits, labels = _ce_data(n, k, seed=10)
    g = ig.Graph()
    x = g.input("logits", (n, k))
    lab = g.input("labels", (n,), "int32")
    g.output("out", OPS["cross_entropy"](x, lab))
    out = run(g, "cpu", "host", {"logits": logits, "labels": labels.astype(np.int32)})["out"]
    assert_close(out, F.cross_entropy(_t(logits), torch.from_numpy(labels)).item(), reduction=k)


# -- optimizers: 3 steps against torch.optim --------------------------------------------------

PARAM_SHAPES = [(7, 3, 3, 5), (11,), (5, 13)]     # a 4-D conv weight (stored NHWC), bias, fc


def _grads(shape, steps, seed):
    return [rand(shape, seed=seed + s) for s in range(steps)]


def _optim_engine(shape, target, build):
    """A parameter 'w' (a variable) updated by build(g, {"w": grad input}, lr input)."""
    g = ig.Graph()
    w = g.variable("w", shape, value=rand(shape, seed=11))
    gi, lr = g.input("g", shape), g.input("lr", ())
    build(g, {"w": gi}, lr)
    return g, w, _engine(g, target)


@pytest.mark.parametrize("target", TARGET_NAMES)
@pytest.mark.parametrize("shape", PARAM_SHAPES)
@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 1e-2), (0.0, 0.0), (0.0, 5e-2)])
def test_sgd_matches_torch(target, shape, momentum, weight_decay):
    g, w, eng = _optim_engine(shape, target, lambda g, grads, lr: ig.optim.sgd(
        g, grads, lr, momentum=momentum, weight_decay=weight_decay))
    p = torch.nn.Parameter(_t(w.value))
    opt = torch.optim.SGD([p], lr=0.1, momentum=momentum, weight_decay=weight_decay)
    for step, (grad, rate) in enumerate(zip(_grads(shape, 3, seed=12), [0.1, 0.05, 0.02])):
        eng.run({"g": grad, "lr": np.array(rate, np.float32)})     # lr fed: a new one each step
        for group in opt.param_groups:
            group["lr"] = rate
        p.grad = _t(grad)
        opt.step()
        assert_close(w.value, p.detach().numpy(), reduction=4,
                     what=f"SGD param after step {step + 1}")
        if momentum:
            assert_close(eng.variables["w.momentum_buffer"],
                         opt.state[p]["momentum_buffer"].numpy(), reduction=4)


@pytest.mark.parametrize("target", TARGET_NAMES)
@pytest.mark.parametrize("shape", PARAM_SHAPES)
def test_adam_matches_torch(target, shape):
    b1, b2, eps = 0.8, 0.95, 1e-6
    g, w, eng = _optim_engine(shape, target, lambda g, grads, lr: ig.optim.adam(
        g, grads, lr, betas=(b1, b2), eps=eps))
    p = torch.nn.Parameter(_t(w.value))
    opt = torch.optim.Adam([p], lr=1e-2, betas=(b1, b2), eps=eps)
    for t, (grad, rate) in enumerate(zip(_grads(shape, 3, seed=22), [1e-2, 2e-2, 5e-3]), 1):
        eng.run({"g": grad, "lr": np.array(rate, np.float32)})
        for group in opt.param_groups:
            group["lr"] = rate
        p.grad = _t(grad)
        opt.step()
        state = opt.state[p]
        assert_close(eng.variables["w.exp_avg"], state["exp_avg"].numpy(), reduction=4,
                     what=f"Adam m step {t}")
        assert_close(eng.variables["w.exp_avg_sq"], state["exp_avg_sq"].numpy(), reduction=4,
                     what=f"Adam v step {t}")
        assert_close(w.value, p.detach().numpy(), reduction=4, what=f"Adam param step {t}")


def test_updates_run_in_place_and_fuse():
    """Each SGD update is two fused passes written straight into the variables: the momentum
    buffer (buf·μ + g + w·λ), then the weight (w − buf·lr)."""
    g, w, eng = _optim_engine((5, 13), "host", lambda g, grads, lr: ig.optim.sgd(
        g, grads, lr, momentum=0.9, weight_decay=1e-2))
    sets = eng.program.compute_sets
    assert [cs.op for cs in sets] == ["pointwise", "pointwise"]
    assert len(eng.program.inplace) == 2 and not eng.program.buffer_bytes


# -- the codelets' argument checks (never a crash) --------------------------------------------

def test_codelets_validate_arguments():
    x = np.zeros((4, 3), np.float32)
    with pytest.raises(ValueError, match="integer"):
        _C.cross_entropy(x, np.zeros(4, np.float32), np.zeros((), np.float32),
                         np.array([[0, 1]], np.int32))
    with pytest.raises(ValueError, match=r"labels must have shape \(4,\)"):
        _C.cross_entropy(x, np.zeros(3, np.int64), np.zeros((), np.float32),
                         np.array([[0, 1]], np.int32))
    with pytest.raises(ValueError, match="dloss must be a scalar"):
        _C.cross_entropy_backward(x, np.zeros(4, np.int64), np.zeros(2, np.float32),
                                  np.zeros((4, 3), np.float32), np.array([[0, 4]], np.int32))
    with pytest.raises(ValueError, match="transpose"):
        _C.transpose2d(x, np.zeros((4, 3), np.float32), np.array([[0, 3]], np.int32))
    with pytest.raises(ValueError, match="overlap"):
        _C.transpose2d(x.reshape(2, 6), x.reshape(6, 2), np.array([[0, 6]], np.int32))
    with pytest.raises(ValueError, match="row"):
        _C.softmax_backward_rows(x, x, np.zeros((4, 3), np.float32), np.array([[0, 5]], np.int32))
