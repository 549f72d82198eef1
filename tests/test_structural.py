"""The structural ops users reach for first, on every backend against torch in float64, with
their gradients (central differences on the reference backend in float64, torch autograd on
the kernels): concat, split / slice, pad (constant, reflect, replicate, negative pads crop),
sum / mean / amax over any axes, layer_norm, dropout, upsample (nearest, bilinear), and the
running-statistics update of batch_norm_train. Each op is also planned over an IPU's tiles
(mk2) and run from that plan on the cpu backend. Tolerances: tests/opcheck.py."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ipugraph as ig
from opcheck import (as_fed, assert_matches, backends, data, fd_check, grad_matches_torch,
                     run_op)
from helpers import TARGETS

BACKENDS = backends()

# name: (ipugraph builder over inputs, torch function, input shapes)
CASES = {
    "concat_axis1": (lambda a, b, c: ig.ops.concat([a, b, c], 1),
                     lambda a, b, c: torch.cat([a, b, c], 1), [(2, 3, 4, 5), (2, 1, 4, 5),
                                                                (2, 2, 4, 5)]),
    "concat_last": (lambda a, b: ig.ops.concat([a, b], -1), lambda a, b: torch.cat([a, b], -1),
                    [(3, 5), (3, 2)]),
    "split": (lambda x: ig.ops.split(x, [2, 3, 1], 2)[1], lambda x: torch.split(x, [2, 3, 1], 2)[1],
              [(2, 3, 6, 4)]),
    "slice_steps": (lambda x: ig.ops.slice(x, (1, 6, 0), (4, 0, 9), (1, 2, 3), (1, -2, 3)),
                    lambda x: x.flip(2)[:, 1:4, 0:6:2, 0:9:3], [(2, 5, 7, 9)]),   # 6:0:-2
    "pad_constant": (lambda x: ig.ops.pad(x, (1, 2, 0, 3), value=0.5),
                     lambda x: F.pad(x, (1, 2, 0, 3), value=0.5), [(2, 3, 4, 5)]),
    "pad_crop": (lambda x: ig.ops.pad(x, (-1, 2, 1, -2)), lambda x: F.pad(x, (-1, 2, 1, -2)),
                 [(2, 3, 6, 5)]),
    "pad_reflect": (lambda x: ig.ops.pad(x, (2, 1, 1, 3), "reflect"),
                    lambda x: F.pad(x, (2, 1, 1, 3), "reflect"), [(1, 2, 5, 4)]),
    "pad_replicate": (lambda x: ig.ops.pad(x, (2, 1, 1, 3), "replicate"),
                      lambda x: F.pad(x, (2, 1, 1, 3), "replicate"), [(1, 2, 5, 4)]),
    "sum_axes": (lambda x: ig.ops.sum(x, (0, 2)), lambda x: x.sum((0, 2)), [(3, 4, 5, 6)]),
    "sum_all": (lambda x: ig.ops.sum(x), lambda x: x.sum(), [(3, 4, 5)]),
    "mean_keep": (lambda x: ig.ops.mean(x, (2, 3), keepdims=True),
                  lambda x: x.mean((2, 3), keepdim=True), [(2, 3, 4, 5)]),
    "mean_last": (lambda x: ig.ops.mean(x, -1), lambda x: x.mean(-1), [(7, 9)]),
    "amax": (lambda x: ig.ops.amax(x, 1), lambda x: x.amax(1), [(2, 5, 3, 4)]),
    "layer_norm": (lambda x, w, b: ig.ops.layer_norm(x, (4, 5), w, b),
                   lambda x, w, b: F.layer_norm(x, (4, 5), w, b), [(2, 3, 4, 5), (4, 5), (4, 5)]),
    "layer_norm_plain": (lambda x: ig.ops.layer_norm(x, 6, eps=1e-3),
                         lambda x: F.layer_norm(x, (6,), eps=1e-3), [(5, 6)]),
    "upsample_nearest": (lambda x: ig.ops.upsample(x, 2), lambda x: F.interpolate(x, scale_factor=2),
                         [(1, 2, 3, 4)]),
    "upsample_nearest_odd": (lambda x: ig.ops.upsample(x, (1.5, 3)),
                             lambda x: F.interpolate(x, scale_factor=(1.5, 3)), [(2, 2, 4, 3)]),
    "upsample_bilinear": (lambda x: ig.ops.upsample(x, 2, "bilinear"),
                          lambda x: F.interpolate(x, scale_factor=2, mode="bilinear"),
                          [(1, 3, 4, 5)]),
    "upsample_bilinear_corners": (
        lambda x: ig.ops.upsample(x, (2, 1.5), "bilinear", align_corners=True),
        lambda x: F.interpolate(x, scale_factor=(2, 1.5), mode="bilinear", align_corners=True),
        [(2, 1, 3, 4)]),
}
# reductions through a max: the gradient is taken away from ties (random data has none)


def _arrays(name, seed=0):
    return [data(s, -2.0, 2.0, seed + i) for i, s in enumerate(CASES[name][2])]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(CASES))
def test_matches_torch(name, backend):
    build, fn, _ = CASES[name]
    arrays = _arrays(name)
    out = run_op(build, arrays, backend)
    expected = fn(*[torch.from_numpy(a) for a in as_fed(arrays, backend)]).numpy()
    assert_matches(out, expected, backend, name)


@pytest.mark.parametrize("name", list(CASES))
def test_gradient(name):
    build, fn, _ = CASES[name]
    arrays = _arrays(name, seed=3)
    fd_check(build, arrays, name)
    for backend in BACKENDS[1:]:
        grad_matches_torch(build, fn, arrays, backend, name)


@pytest.mark.parametrize("name", ["concat_axis1", "slice_steps", "pad_reflect", "sum_axes",
                                  "amax", "upsample_bilinear", "layer_norm"])
def test_ipu_plan_runs_on_the_cpu(name):
    """Planned over 1472 tiles (many vertices per op), run from that plan's vertex tables."""
    build, fn, _ = CASES[name]
    arrays = _arrays(name, seed=5)
    g = ig.Graph(name=name)
    ins = [g.input(f"in{i}", a.shape) for i, a in enumerate(arrays)]
    g.output("y", build(*ins))
    plan = ig.plan(g, TARGETS["mk2"]())
    assert max(len(s.vertices) for s in plan.steps) > 1
    out = ig.compile(g, backend="cpu", plan=plan).run(
        {f"in{i}": a.astype(np.float32) for i, a in enumerate(arrays)})["y"]
    assert_matches(out, fn(*[torch.from_numpy(a) for a in as_fed(arrays, "cpu")]).numpy(),
                   "cpu", name)


def test_shape_errors_name_the_op_and_shapes():
    g = ig.Graph()
    x = g.input("x", (2, 3, 4, 5))
    for call, words in [
        (lambda: ig.ops.concat([x, g.input("y", (2, 3, 5, 5))], 1), ["concat", "axis 1"]),
        (lambda: ig.ops.concat([x, g.input("h", (2, 3, 4, 5), "float16")], 0), ["dtype"]),
        (lambda: ig.ops.split(x, [2, 2], 1), ["sum to 3"]),
        (lambda: ig.ops.slice(x, (3,), (1,), (1,)), ["empty"]),
        (lambda: ig.ops.pad(x, (1, 2, 3)), ["even number"]),
        (lambda: ig.ops.pad(x, (5, 0), "reflect"), ["reflect", "< its size 5"]),
        (lambda: ig.ops.mean(x, 4), ["axis 4"]),
        (lambda: ig.ops.sum(x, (1, 1)), ["twice"]),
        (lambda: ig.ops.layer_norm(x, (4,)), ["trailing axes"]),
        (lambda: ig.ops.upsample(g.input("v", (2, 3)), 2), ["4-D"]),
        (lambda: ig.ops.upsample(x, 2, "cubic"), ["mode"]),
        (lambda: ig.ops.dropout(x, 1.5), ["p must be in [0, 1]"]),
    ]:
        with pytest.raises(ig.GraphError) as err:
            call()
        for word in words:
            assert word in str(err.value), (word, str(err.value))


# -- dropout ---------------------------------------------------------------------------------

def _dropout_graph(p, seed):
    g = ig.Graph(name="dropout")
    x = g.variable("x", (4, 8, 6, 5), value=data((4, 8, 6, 5), 0.5, 1.5, 1, np.float32))
    s = g.input("seed", (), "int64") if seed is None else seed
    y = ig.ops.dropout(x, p, training=True, seed=s)
    g.output("y", y)
    g.output("dx", ig.grad(g, ig.ops.sum(y * 2.0), [x])["x"])
    return g, x


def test_dropout_same_mask_on_every_backend_and_fresh_per_seed():
    g, x = _dropout_graph(0.3, None)
    outs = {b: ig.compile(g, backend=b).run({"seed": np.int64(7)}) for b in BACKENDS}
    ref = outs["reference"]
    for b, out in outs.items():
        np.testing.assert_array_equal(out["y"] != 0, ref["y"] != 0, err_msg=b)   # the bits
        assert_matches(out["y"], ref["y"], "cpu", f"dropout {b}")
        assert_matches(out["dx"], ref["dx"], "cpu", f"dropout grad {b}")
    kept = ref["y"] != 0
    assert abs(kept.mean() - 0.7) < 0.05                    # P(keep) = 1 - p over 960 values
    np.testing.assert_allclose(ref["y"][kept], x.value[kept] / 0.7, rtol=1e-6)
    np.testing.assert_allclose(ref["dx"], np.where(kept, 2 / 0.7, 0), rtol=1e-6)
    other = ig.compile(g, backend="cpu").run({"seed": np.int64(8)})["y"] != 0
    assert (other != kept).mean() > 0.2                     # another seed, another mask


def test_dropout_off_and_edge_probabilities():
    g = ig.Graph()
    x = g.input("x", (3, 4))
    assert ig.ops.dropout(x, 0.5, training=False) is x
    assert ig.ops.dropout(x, 0.0) is x
    g.output("zero", ig.ops.dropout(x, 1.0))
    out = ig.compile(g, backend="cpu").run({"x": np.ones((3, 4), np.float32)})
    assert (out["zero"] == 0).all()


# -- running statistics ----------------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_batch_norm_train_keeps_running_statistics(backend):
    """A hand-built network keeps torch's running statistics: momentum 0.2, unbiased var."""
    shape = (4, 3, 5, 2)
    g = ig.Graph()
    x = g.input("x", shape)
    gamma = g.variable("gamma", (3,), value=np.ones(3, np.float32))
    beta = g.variable("beta", (3,), value=np.zeros(3, np.float32))
    rm = g.variable("rm", (3,), value=data((3,), 0, 1, 1, np.float32), trainable=False)
    rv = g.variable("rv", (3,), value=data((3,), 1, 2, 2, np.float32), trainable=False)
    y, _ = ig.ops.batch_norm_train(x, gamma, beta, running_mean=rm, running_var=rv,
                                   momentum=0.2)
    g.output("y", y)
    eng = ig.compile(g, backend=backend)
    trm, trv = torch.from_numpy(rm.value).double(), torch.from_numpy(rv.value).double()
    for step in range(3):
        xv = data(shape, -1, 3, 10 + step, np.float32)
        eng.run({"x": xv})
        F.batch_norm(torch.from_numpy(xv).double(), trm, trv, training=True, momentum=0.2)
        assert_matches(rm.value, trm.numpy(), "cpu", f"running mean step {step}")
        assert_matches(rv.value, trv.numpy(), "cpu", f"running var step {step}")
