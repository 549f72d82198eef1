"""Lowering: BSP step structure and buffers reused by liveness without corrupting results."""
import numpy as np

import ipugraph as ig
from ipugraph.lower import ComputeSet, Exchange, Sync


def _chain(length=10, branch=False):
    g = ig.Graph(name="chain")
    x = g.input("x", (2, 8, 5, 5))
    t = x
    for _ in range(length):
        t = ig.ops.relu(ig.ops.add(t, x) if branch else t)
    g.output("y", t)
    return g


def test_chain_reuses_two_buffers():
    program = ig.lower(ig.plan(_chain(), fuse=False))
    assert len(program.compute_sets) == 10
    assert len(program.buffer_bytes) == 2        # ping-pong: each result dies at the next step
    assert "10 compute sets" in program.describe()


def test_fused_chain_is_one_compute_set():
    program = ig.lower(ig.plan(_chain()))
    assert len(program.compute_sets) == 1 and len(program.buffer_bytes) == 1
    cs = program.compute_sets[0]
    assert cs.op == "pointwise" and [i.op for i in cs.pointwise.code] == ["relu"] * 10


def test_live_input_is_not_overwritten():
    """Every add reads x again: x must survive every step while results reuse buffers."""
    g = _chain(6, branch=True)
    xv = np.random.default_rng(0).normal(size=(2, 8, 5, 5)).astype(np.float32)
    expect = xv.copy()
    for _ in range(6):
        expect = np.maximum(expect + xv, 0)
    for backend in ("reference", "cpu"):
        out = ig.compile(g, backend=backend).run({"x": xv})["y"]
        np.testing.assert_allclose(out, expect, rtol=1e-6)


def test_outputs_are_fresh_arrays():
    g = _chain(2)
    eng = ig.compile(g, backend="cpu")
    a = eng.run({"x": np.ones((2, 8, 5, 5), np.float32)})["y"]
    eng.run({"x": -np.ones((2, 8, 5, 5), np.float32)})
    assert (a == 1).all()                         # the first result was not overwritten


def test_2d_outputs_are_fresh_arrays():
    """A 2-D output's storage layout equals its logical one: it must still be copied out."""
    g = ig.Graph(name="fc")
    x = g.input("x", (3, 5))
    w = g.variable("w", (5, 4), value=np.eye(5, 4, dtype=np.float32))
    g.output("y", ig.ops.relu(ig.ops.matmul(x, w)))
    for backend in ("reference", "cpu"):
        eng = ig.compile(g, backend=backend)
        a = eng.run({"x": np.ones((3, 5), np.float32)})["y"]
        eng.run({"x": 2 * np.ones((3, 5), np.float32)})
        assert (a == 1).all(), backend


def test_bsp_steps_on_ipu():
    """Each step is [Exchange] · ComputeSet · Sync; a relu reading the previous relu's output
    on the tiles that hold it exchanges nothing, so only the first step has an Exchange."""
    plan = ig.plan(_chain(3), ig.Target.ipu_mk2(), fuse=False)
    program = ig.lower(plan)
    kinds = [type(s) for s in program.bsp]
    assert kinds == [Exchange, ComputeSet, Sync] + [ComputeSet, Sync] * 2
    assert [s.exchange_cycles for s in plan.steps[1:]] == [0.0, 0.0]


def test_bsp_reduction_steps():
    """A conv split over input channels lowers to Exchange · ComputeSet · Sync · Reduce · Sync."""
    from ipugraph.lower import Reduce
    g = ig.Graph(name="wide-conv")
    x = g.input("x", (1, 512, 4, 4))
    w = g.variable("w", (16, 512, 3, 3), init=ig.init.zeros())
    g.output("y", ig.ops.conv2d(x, w, padding=1))
    plan = ig.plan(g, ig.Target.ipu_mk2())
    assert plan.steps[0].reduce_vertices is not None, plan.summary()
    kinds = [type(s) for s in ig.lower(plan).bsp]
    assert kinds == [Exchange, ComputeSet, Sync, Reduce, Sync]
