"""CPU backend: relu_backward, reshape, transpose, softmax_backward, cross_entropy (+ backward),
sgd_direction / sgd_apply and adam_moment / adam_apply (csrc/optim.cpp, backends/cpu_optim.py).

Every op runs through the graph API (plan for the "host" and the "mk2" target: one vertex vs.
hundreds of tiles' vertex tables) and is compared with torch in float64 (autograd for the
gradients, torch.optim.SGD / Adam over 3 steps for the updates) and with the op's NumPy
reference (ipugraph.ops.OPS[name].reference) in float64.

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


# -- relu_backward ----------------------------------------------------------------------------

@pytest.mark.parametrize("target", TARGET_NAMES)
@pytest.mark.parametrize("shape", [(3, 5, 7, 9), (13, 17), (1001,)])
def test_relu_backward(target, shape):
    x = rand(shape, seed=1)
    x.reshape(-1)[::7] = 0.0                       # exact zeros: gradient 0 (torch too)
    y = np.maximum(x, 0)
    dy = rand(shape, seed=2)
    specs = [("y", shape, "float32"), ("dy", shape, "float32")]
    feeds = {"y": y, "dy": dy}
    out = _one_op("relu_backward", specs, feeds=feeds, target=target)
    xt = _t(x).requires_grad_()
    torch.relu(xt).backward(_t(dy))
    np.testing.assert_array_equal(out, xt.grad.numpy().astype(np.float32))
    np.testing.assert_array_equal(out, _reference("relu_backward", feeds, specs))


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


@pytest.mark.parametrize("target", TARGET_NAMES)
@pytest.mark.parametrize("shape", PARAM_SHAPES)
@pytest.mark.parametrize("momentum,weight_decay", [(0.9, 1e-2), (0.0, 0.0), (0.0, 5e-2)])
def test_sgd_matches_torch(target, shape, momentum, weight_decay):
    w0 = rand(shape, seed=11)
    grads = _grads(shape, 3, seed=12)
    lrs = [0.1, 0.05, 0.02]                        # lr is fed: changes every step
    g = ig.Graph()
    gi, wi, lr = g.input("g", shape), g.input("w", shape), g.input("lr", ())
    attrs = {"momentum": momentum, "weight_decay": weight_decay}
    if momentum:
        vi = g.input("v", shape)
        d = OPS["sgd_direction"](gi, wi, vi, **attrs)
    else:
        d = OPS["sgd_direction"](gi, wi, **attrs)
    g.output("d_out", d)
    g.output("w_new", OPS["sgd_apply"](wi, d, lr))
    eng = _engine(g, target)

    p = torch.nn.Parameter(_t(w0))
    opt = torch.optim.SGD([p], lr=lrs[0], momentum=momentum, weight_decay=weight_decay)
    w, v = w0, np.zeros(shape, np.float32)
    for step, (grad, rate) in enumerate(zip(grads, lrs)):
        feeds = {"g": grad, "w": w, "lr": np.array(rate, np.float32)}
        if momentum:
            feeds["v"] = v
        res = eng.run(feeds)
        ref_d = OPS["sgd_direction"].reference(
            *[feeds[k].astype(np.float64) for k in ("g", "w", "v") if k in feeds], **attrs)
        assert_close(res["d_out"], ref_d, reduction=2, what=f"sgd_direction step {step}")
        assert_close(res["w_new"], OPS["sgd_apply"].reference(
            w.astype(np.float64), res["d_out"].astype(np.float64), np.float64(rate)),
            what=f"sgd_apply step {step}")
        for group in opt.param_groups:
            group["lr"] = rate
        p.grad = _t(grad)
        opt.step()
        w, v = res["w_new"], res["d_out"]
        assert_close(w, p.detach().numpy(), reduction=4, what=f"SGD param after step {step + 1}")


@pytest.mark.parametrize("target", TARGET_NAMES)
@pytest.mark.parametrize("shape", PARAM_SHAPES)
def test_adam_matches_torch(target, shape):
    b1, b2, eps = 0.8, 0.95, 1e-6
    w0 = rand(shape, seed=21)
    grads = _grads(shape, 3, seed=22)
    lrs = [1e-2, 2e-2, 5e-3]
    g = ig.Graph()
    gi, wi, mi, vi = (g.input(n, shape) for n in ("g", "w", "m", "v"))
    lr, step = g.input("lr", ()), g.input("step", ())
    m_new = OPS["adam_moment"](mi, gi, beta=b1)
    v_new = OPS["adam_moment"](vi, gi, beta=b2, square=True)
    w_new = OPS["adam_apply"](wi, m_new, v_new, lr, step, beta1=b1, beta2=b2, eps=eps)
    g.output("m_out", m_new)
    g.output("v_out", v_new)
    g.output("w_out", w_new)
    eng = _engine(g, target)

    p = torch.nn.Parameter(_t(w0))
    opt = torch.optim.Adam([p], lr=lrs[0], betas=(b1, b2), eps=eps)
    w, m, v = w0, np.zeros(shape, np.float32), np.zeros(shape, np.float32)
    for t, (grad, rate) in enumerate(zip(grads, lrs), start=1):
        feeds = {"g": grad, "w": w, "m": m, "v": v, "lr": np.array(rate, np.float32),
                 "step": np.array(t, np.float32)}
        res = eng.run(feeds)
        f64 = {k: a.astype(np.float64) for k, a in feeds.items()}
        assert_close(res["m_out"], OPS["adam_moment"].reference(f64["m"], f64["g"], beta=b1,
                                                            square=False), reduction=2)
        assert_close(res["v_out"], OPS["adam_moment"].reference(f64["v"], f64["g"], beta=b2,
                                                            square=True), reduction=2)
        assert_close(res["w_out"], OPS["adam_apply"].reference(
            f64["w"], res["m_out"].astype(np.float64), res["v_out"].astype(np.float64), f64["lr"],
            f64["step"], beta1=b1, beta2=b2, eps=eps), reduction=2, what=f"adam_apply step {t}")
        for group in opt.param_groups:
            group["lr"] = rate
        p.grad = _t(grad)
        opt.step()
        w, m, v = res["w_out"], res["m_out"], res["v_out"]
        state = opt.state[p]
        assert_close(m, state["exp_avg"].numpy(), reduction=4, what=f"Adam m step {t}")
        assert_close(v, state["exp_avg_sq"].numpy(), reduction=4, what=f"Adam v step {t}")
        assert_close(w, p.detach().numpy(), reduction=4, what=f"Adam param after step {t}")


def test_sgd_apply_scalar_direction_broadcasts():
    """The shape rule lets an update operand be a scalar: it is broadcast (read each run)."""
    g = ig.Graph()
    w, d, lr = g.input("w", (3, 4)), g.input("d", ()), g.input("lr", ())
    g.output("out", OPS["sgd_apply"](w, d, lr))
    eng = _engine(g, "host")
    wv = rand((3, 4), seed=30)
    for dv in (0.5, -1.0):
        out = eng.run({"w": wv, "d": np.array(dv, np.float32), "lr": np.array(0.1, np.float32)})
        assert_close(out["out"], wv.astype(np.float64) - 0.1 * dv)


# -- the codelets' argument checks (never a crash) --------------------------------------------

def test_codelets_validate_arguments():
    f = np.zeros(10, np.float32)
    o = np.zeros(10, np.float32)
    one = np.array([[0, 10]], np.int32)
    lr = np.array(0.1, np.float32)
    with pytest.raises(ValueError, match="outside"):
        _C.sgd_apply(f, f, lr, o, np.array([[0, 11]], np.int32))
    with pytest.raises(ValueError, match="vertices"):
        _C.relu_backward(f, f, o, np.zeros((1, 3), np.int32))
    with pytest.raises(ValueError, match="lr must be a scalar"):
        _C.sgd_apply(f, f, np.zeros(2, np.float32), o, one)
    with pytest.raises(ValueError, match="same number of elements"):
        _C.adam_moment(f, np.zeros(9, np.float32), o, 0.9, False, one)
    with pytest.raises(ValueError, match="out must be a float32"):
        _C.sgd_apply(f, f, lr, np.zeros(10), one)
    with pytest.raises(ValueError, match="out must be writeable"):
        ro = np.zeros(10, np.float32)
        ro.flags.writeable = False
        _C.sgd_direction(f, f, None, ro, 0.0, 0.0, one)
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
