"""Fusion, counted: which ops become one compute set (the planner), and how many calls into C++
a compute set makes on the cpu backend (a proxy of ipugraph._C counts them)."""
from __future__ import annotations

import numpy as np
import pytest

import ipugraph as ig
from helpers import assert_close, rand

CPU_FAMILIES = ("conv", "matmul", "pool", "pointwise", "norm", "loss", "shape", "reduce",
                "random")


class Counting:
    """Stands in for ipugraph._C: forwards every attribute, counting the calls by name."""

    def __init__(self, real):
        self.real, self.calls = real, {}

    def __getattr__(self, name):
        attr = getattr(self.real, name)
        if not callable(attr) or isinstance(attr, type):
            return attr

        def counted(*args, **kwargs):
            self.calls[name] = self.calls.get(name, 0) + 1
            return attr(*args, **kwargs)
        return counted


@pytest.fixture
def c_calls(monkeypatch):
    import importlib
    from ipugraph import _C
    counter = Counting(_C)
    for family in CPU_FAMILIES:
        monkeypatch.setattr(importlib.import_module(f"ipugraph.backends.cpu.{family}"), "C",
                            counter)
    return counter.calls


def test_silu_conv_plus_residual_relu_is_one_compute_set_and_one_call(c_calls):
    """relu(silu(conv2d(x, w)) + y): one compute set on the host plan, one C++ call per run
    (the chain runs inside conv2d_nhwc over each chunk of pixels as it is written)."""
    g = ig.Graph()
    x = g.input("x", (2, 5, 9, 7))
    y = g.input("y", (2, 8, 9, 7))
    w = g.variable("w", (8, 5, 3, 3), value=rand((8, 5, 3, 3), 1))
    out = ig.ops.relu(ig.ops.silu(ig.ops.conv2d(x, w, padding=1)) + y)
    g.output("out", out)
    eng = ig.compile(g, backend="cpu")
    assert len(eng.program.compute_sets) == 1
    cs = eng.program.compute_sets[0]
    assert cs.op == "conv2d" and [i.op for i in cs.pointwise.code] == ["sigmoid", "mul", "add",
                                                                     "relu"]
    feeds = {"x": rand((2, 5, 9, 7), 2), "y": rand((2, 8, 9, 7), 3)}
    c_calls.clear()
    got = eng.run(feeds)["out"]
    assert c_calls == {"conv2d_nhwc": 1}, c_calls
    ref = ig.compile(g, backend="reference").run(feeds)["out"]
    assert_close(got, ref, 45)


def test_resnet_block_epilogue_stays_in_registers(c_calls):
    """conv → bn → add → relu: the folded BN, the residual add and the ReLU run in the conv's
    register epilogue: no pointwise program, one call."""
    g = ig.Graph()
    x = g.input("x", (1, 4, 6, 6))
    w = g.variable("w", (4, 4, 3, 3), value=rand((4, 4, 3, 3), 1))
    bn = [g.variable(f"bn{i}", (4,), value=rand((4,), i + 2, 0.5, 1.5)) for i in range(4)]
    g.output("y", ig.ops.relu(ig.ops.add(ig.ops.batch_norm(ig.ops.conv2d(x, w, padding=1), *bn),
                                         x)))
    eng = ig.compile(g, backend="cpu")
    assert [cs.op for cs in eng.program.compute_sets] == ["conv2d"]
    c_calls.clear()
    eng.run({"x": rand((1, 4, 6, 6), 5)})
    assert c_calls == {"conv2d_nhwc": 1}


def test_pointwise_dag_and_reused_operands_fuse(c_calls):
    """A DAG (a value read twice inside the region) is one region; a value read outside it
    (a graph output) ends its region."""
    g = ig.Graph()
    x = g.input("x", (3, 4, 5))
    t = ig.ops.exp(x) - 1.0
    u = t * t + ig.ops.tanh(t)                  # t read twice inside
    g.output("u", ig.ops.sqrt(ig.ops.abs(u)))
    g.output("t2", ig.ops.relu(x) * 2.0)        # another region
    eng = ig.compile(g, backend="cpu")
    assert [cs.op for cs in eng.program.compute_sets] == ["pointwise", "pointwise"]
    c_calls.clear()
    feeds = {"x": rand((3, 4, 5), 1)}
    out = eng.run(feeds)
    assert c_calls == {"pointwise": 2}
    ref = ig.compile(g, backend="reference").run(feeds)
    for name in out:
        assert_close(out[name], ref[name], 1, what=name)


def test_kept_intermediates_and_smaller_producers_are_not_fused():
    g = ig.Graph()
    x = g.input("x", (4, 6))
    s = g.input("s", (6,))
    k = ig.ops.sigmoid(x)
    g.output("k", k)                            # kept: ends a region
    scale = ig.ops.exp(s) + 1.0                 # [6]: smaller than the consumer, its own set
    g.output("y", k * scale + 1.0)
    program = ig.lower(ig.plan(g))
    described = ["+".join(n.op.name for n in cs.nodes) for cs in program.compute_sets]
    assert described == ["sigmoid", "exp+add", "mul+add"]


def test_six_op_chain_is_one_pass_with_a_program_per_chain():
    g = ig.Graph()
    x = g.input("x", (16, 17, 19))
    y = ig.ops.tanh(ig.ops.sigmoid(ig.ops.exp(x * 0.5) + 1.0) * x - 0.25)
    g.output("y", y)
    program = ig.lower(ig.plan(g))
    (cs,) = program.compute_sets
    assert [i.op for i in cs.pointwise.code] == ["mul", "exp", "add", "sigmoid", "mul", "sub",
                                                 "tanh"]
    xv = rand((16, 17, 19), 4)
    for backend in [b for b in ("cpu", "triton") if ig.backends.available(b)]:
        out = ig.compile(g, backend=backend).run({"x": xv})["y"]
        ref = np.tanh(1 / (1 + np.exp(-(np.exp(xv.astype(np.float64) * 0.5) + 1))) * xv - 0.25)
        assert_close(out, ref, 1, what=backend)


def test_training_step_fuses_updates_and_bn_relu():
    """In a training step: every SGD update is two pointwise sets written in place, batch norm
    in training form carries its ReLU, the BN gradient's dx is one fused pass, and every
    ReLU's backward mask (with the residual gradient sum before it) rides on the backward-data
    conv that produces its gradient."""
    g = ig.models.resnet18(batch=2, image_size=32, num_classes=4, training=True)
    ig.training.add_training(g, optimizer="sgd", momentum=0.9)
    program = ig.lower(ig.plan(g))
    ops = ["+".join(n.op.name for n in cs.nodes) for cs in program.compute_sets]
    assert "batch_norm_train+relu" in ops
    assert sum(o == "sub+mul+mul+add+mul+sub+mul" for o in ops) == 20      # BN dx, 20 BNs
    # per block: conv2's dx -> relu1's mask; conv1's dx (+ the identity's gradient) -> the
    # block input's mask (the first block's input gradient comes from the max-pool instead)
    assert sum(o == "conv2d_backward_data+greater+where" for o in ops) == 8
    assert sum(o == "conv2d_backward_data+add+greater+where" for o in ops) == 7
    params = sum(1 for t in g.variables.values() if t.trainable)
    updates = [cs for cs in program.compute_sets if cs.phase == "update"
               and cs.output.name in program.inplace]
    assert len(updates) >= 2 * params
