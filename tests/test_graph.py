"""The IR: naming, values, counts, and build-time errors that name the op, tensors and shapes."""
import numpy as np
import pytest

import ipugraph as ig
from ipugraph import GraphError


def _graph():
    g = ig.Graph(ig.Target.host(), name="t")
    x = g.input("x", (2, 3, 8, 8))
    return g, x


def test_build_and_query():
    g, x = _graph()
    w = g.variable("conv.weight", (4, 3, 3, 3), init=ig.init.kaiming_normal(seed=0))
    with g.scope("block"):
        y = ig.ops.relu(ig.ops.conv2d(x, w, padding=1))
    g.output("y", y)
    assert y.shape == (2, 4, 8, 8) and y.dtype == "float32"
    assert y.name == "block.relu" and y.node.scope == "block"
    assert g["y"] is y and g["conv.weight"] is w
    assert g.num_params() == 4 * 3 * 9
    assert g.macs() == 2 * 4 * 8 * 8 * 3 * 9
    # kaiming fan_out: std = sqrt(2 / (K*R*S))
    assert abs(w.value.std() - np.sqrt(2 / 36)) < 0.1


def test_buffers_are_not_parameters():
    g, _ = _graph()
    g.variable("bn.weight", (3,), init=ig.init.ones())
    g.variable("bn.running_mean", (3,), init=ig.init.zeros(), trainable=False)
    assert g.num_params() == 3


@pytest.mark.parametrize("build, words", [
    (lambda g, x: ig.ops.conv2d(x, g.variable("w", (4, 5, 3, 3), init=ig.init.zeros())),
     ["conv2d", "'x' (2, 3, 8, 8)", "'w' (4, 5, 3, 3)", "3 channels"]),
    (lambda g, x: ig.ops.conv2d(x, g.variable("w", (4, 3, 9, 9), init=ig.init.zeros())),
     ["conv2d", "9x9", "does not fit"]),
    (lambda g, x: ig.ops.conv2d(x, g.variable("w", (4, 3, 3, 3), init=ig.init.zeros()),
                                g.variable("b", (5,), init=ig.init.zeros())),
     ["conv2d", "bias", "(4,)", "'b' (5,)"]),
    (lambda g, x: ig.ops.conv2d(x, g.variable("w", (4, 1, 3, 3), init=ig.init.zeros()),
                                groups=2), ["groups=2", "divisible"]),
    (lambda g, x: ig.ops.add(x, g.input("z", (2, 3, 8, 9))),
     ["add", "'x' (2, 3, 8, 8)", "'z' (2, 3, 8, 9)", "do not broadcast"]),
    (lambda g, x: ig.ops.matmul(g.input("a", (3, 4)), g.input("b", (5, 6))),
     ["matmul", "inner dimensions", "'a' (3, 4)", "'b' (5, 6)"]),
    (lambda g, x: ig.ops.linear(g.input("a", (3, 4)), g.variable("fc", (6, 5), init=ig.init.zeros())),
     ["linear", "4 features", "'fc' (6, 5)"]),
    (lambda g, x: ig.ops.max_pool2d(x, 3, 1, padding=2), ["max_pool2d", "at most half"]),
    (lambda g, x: ig.ops.max_pool2d(x, 9), ["max_pool2d", "does not fit"]),
    (lambda g, x: ig.ops.batch_norm(x, *[g.variable(f"p{i}", (4,), init=ig.init.ones())
                                        for i in range(4)]),
     ["batch_norm", "gamma", "(3,)", "'p0' (4,)"]),
    (lambda g, x: ig.ops.exp(g.input("i", (3,), dtype="int32")), ["exp", "floating"]),
    (lambda g, x: ig.ops.add(x, g.input("h", (2, 3, 8, 8), dtype="float16")),
     ["add", "share one dtype", "float16", "float32"]),
    (lambda g, x: ig.ops.softmax(x, axis=1), ["softmax", "last axis"]),
    (lambda g, x: ig.ops.conv2d(x, np.zeros((4, 3, 3, 3))), ["conv2d", "ipugraph Tensor"]),
    (lambda g, x: ig.ops.flatten(x, start_dim=4), ["flatten", "out of range"]),
])
def test_shape_errors_name_op_tensors_and_shapes(build, words):
    g, x = _graph()
    with pytest.raises(GraphError) as err:
        build(g, x)
    for word in words:
        assert word in str(err.value), f"{word!r} not in: {err.value}"


def test_graph_misuse_errors():
    g, x = _graph()
    with pytest.raises(GraphError, match="already exists"):
        g.input("x", (1,))
    with pytest.raises(GraphError, match="positive"):
        g.input("bad", (2, 0))
    with pytest.raises(GraphError, match="exactly one of init= or value="):
        g.variable("v", (2,))
    with pytest.raises(GraphError, match=r"shape \(3,\), the tensor is \(2,\)"):
        g.variable("v2", (2,), value=np.zeros(3))
    with pytest.raises(GraphError, match="unsupported dtype"):
        g.input("q", (2,), dtype="complex64")
    other = ig.Graph(name="other")
    ig.ops.relu(other.input("y", (2, 3, 8, 8)))           # fine in its own graph
    with pytest.raises(GraphError, match="tensor 'y' belongs to graph 'other', not 't'"):
        ig.ops.add(x, other["y"])
    assert "v2" not in g                                  # a failed build leaves no trace
    with pytest.raises(GraphError, match="no outputs"):
        ig.compile(g, backend="reference")


def test_feed_errors():
    g, x = _graph()
    g.output("y", ig.ops.relu(x))
    eng = ig.compile(g, backend="reference")
    good = np.zeros((2, 3, 8, 8), np.float32)
    with pytest.raises(ig.FeedError, match=r"missing 'x' \(2, 3, 8, 8\)"):
        eng.run({})
    with pytest.raises(ig.FeedError, match="unknown 'z'"):
        eng.run({"x": good, "z": good})
    with pytest.raises(ig.FeedError, match=r"shape \(2, 3, 8, 7\), the graph input is \(2, 3, 8, 8\)"):
        eng.run({"x": np.zeros((2, 3, 8, 7), np.float32)})
    with pytest.raises(ig.FeedError, match="dtype float64, the graph input is float32"):
        eng.run({"x": good.astype(np.float64)})
    assert eng.run({"x": good})["y"].shape == (2, 3, 8, 8)


def test_engine_sees_new_variable_values():
    """Weights are packed at compile; changing a variable's value repacks before the next run."""
    g = ig.Graph(name="v")
    x = g.input("x", (1, 2, 3, 3))
    w = g.variable("w", (2, 2, 1, 1), value=np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1))
    g.output("y", ig.ops.conv2d(x, w))
    xv = np.random.default_rng(0).random((1, 2, 3, 3), dtype=np.float32)
    for backend in ("reference", "cpu"):
        w.value = np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1)
        eng = ig.compile(g, backend=backend)
        np.testing.assert_allclose(eng.run({"x": xv})["y"], xv, rtol=1e-6)
        w.value = 2 * np.eye(2, dtype=np.float32).reshape(2, 2, 1, 1)
        np.testing.assert_allclose(eng.run({"x": xv})["y"], 2 * xv, rtol=1e-6)


def test_unknown_backend_and_target():
    g, x = _graph()
    g.output("y", ig.ops.relu(x))
    with pytest.raises(ValueError, match="unknown backend 'tpu'"):
        ig.compile(g, backend="tpu")
    with pytest.raises(ValueError, match="unknown target 'ipu-mk9'"):
        ig.Target.from_name("ipu-mk9")


def test_variable_value_is_a_private_copy():
    """Editing the caller's array after assignment must not change the graph behind its back."""
    g = ig.Graph(name="copy")
    src = np.ones((2, 3), np.float32)
    w = g.variable("w", (2, 3), value=src)
    src[:] = 7
    assert (w.value == 1).all()
    w.value = src
    src[:] = 9
    assert (w.value == 7).all()
