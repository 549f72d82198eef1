"""The pointwise vocabulary (ipugraph/ops/pointwise.py) on every backend: each primitive and
each composite against torch in float64, with NumPy broadcasting, odd shapes (4-D tensors are
stored NHWC by the cpu and triton backends, so broadcasts cross layouts), Python scalars on
either side and the Tensor operators; every gradient by central differences (reference,
float64) and against torch autograd (cpu, triton). Tolerances: tests/opcheck.py.

The tests iterate over the table, so a new primitive is tested by adding its entry."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import ipugraph as ig
from ipugraph.ops import PRIMITIVES
from opcheck import (as_fed, assert_matches, backends, data, fd_check, grad_matches_torch,
                     run_op)

BACKENDS = backends()
TORCH_NAMES = {"equal": "eq", "greater": "gt", "less": "lt"}

# Shapes, broadcasting included (a 4-D operand against a per-channel or a scalar one).
UNARY_SHAPES = [(7,), (3, 5), (2, 3, 5, 7), ()]
BINARY_SHAPES = [((2, 3, 5, 7), (2, 3, 5, 7)), ((2, 3, 5, 7), (3, 1, 1)),
                 ((1, 3, 1, 7), (2, 1, 5, 1)), ((4, 6), (6,)), ((5,), ()), ((), (2, 3))]
TERNARY_SHAPES = [((2, 3, 5, 7), (2, 3, 5, 7), (2, 3, 5, 7)), ((3, 1, 1), (2, 3, 4, 5), ()),
                  ((4, 6), (6,), (4, 1))]
FD_SHAPES = {1: [((2, 3),)], 2: [((2, 3), (3,))], 3: [((2, 3), (2, 3), (3,))]}


def _torch(name):
    return getattr(torch, TORCH_NAMES.get(name, name))


def _inputs(prim, shapes, seed):
    return [data(s, *("bool", None) if (prim.name == "where" and i == 0) else prim.domain[i],
                 seed + i) for i, s in enumerate(shapes)]


def _shape_cases(prim):
    return {1: [(s,) for s in UNARY_SHAPES], 2: BINARY_SHAPES, 3: TERNARY_SHAPES}[prim.arity]


def _fn(name):
    return getattr(ig.ops, name)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(PRIMITIVES))
def test_primitive_matches_torch(name, backend):
    prim = PRIMITIVES[name]
    for k, shapes in enumerate(_shape_cases(prim)):
        if backend == "triton" and k > 2:          # (interpreted: fewer shapes)
            break
        arrays = _inputs(prim, shapes, seed=10 * k)
        out = run_op(_fn(name), arrays, backend)
        expected = _torch(name)(*[torch.from_numpy(a) for a in as_fed(arrays, backend)]).numpy()
        assert_matches(out, expected, backend, f"{name} {shapes}")


@pytest.mark.parametrize("name", [n for n, p in PRIMITIVES.items() if p.grad is not None])
def test_primitive_gradient_by_central_differences(name):
    prim = PRIMITIVES[name]
    for shapes in FD_SHAPES[prim.arity]:
        fd_check(_fn(name), _inputs(prim, shapes, seed=3), f"{name} {shapes}")


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b != "reference"])
@pytest.mark.parametrize("name", [n for n, p in PRIMITIVES.items() if p.grad is not None])
def test_primitive_gradient_matches_torch(name, backend):
    prim = PRIMITIVES[name]
    shapes = _shape_cases(prim)[1 if prim.arity > 1 else 2]
    grad_matches_torch(_fn(name), _torch(name), _inputs(prim, shapes, seed=5), backend, name)


# -- composites ------------------------------------------------------------------------------

COMPOSITES = {
    # name: (ipugraph builder, torch function, input range)
    "clip": (lambda x: ig.ops.clip(x, -0.5, 0.7), lambda x: torch.clamp(x, -0.5, 0.7), (-2, 2)),
    "clip_tensor": (lambda x, lo: ig.ops.clip(x, lo, 0.9), lambda x, lo: torch.clamp(
        x, lo, torch.tensor(0.9, dtype=torch.float64)), (-2, 2)),
    "relu6": (ig.ops.relu6, F.relu6, (-3, 9)),
    "hardsigmoid": (ig.ops.hardsigmoid, F.hardsigmoid, (-5, 5)),
    "hardswish": (ig.ops.hardswish, F.hardswish, (-5, 5)),
    "silu": (ig.ops.silu, F.silu, (-6, 6)),
    "leaky_relu": (lambda x: ig.ops.leaky_relu(x, 0.2), lambda x: F.leaky_relu(x, 0.2), (-3, 3)),
    "elu": (lambda x: ig.ops.elu(x, 1.5), lambda x: F.elu(x, 1.5), (-4, 3)),
    "softplus": (lambda x: ig.ops.softplus(x, 2.0, 5.0), lambda x: F.softplus(x, 2.0, 5.0),
                 (-6, 6)),
    "gelu_tanh": (lambda x: ig.ops.gelu(x, "tanh"), lambda x: F.gelu(x, approximate="tanh"),
                  (-4, 4)),
}
if "erf" in PRIMITIVES:
    COMPOSITES["gelu"] = (ig.ops.gelu, F.gelu, (-4, 4))


def _composite_inputs(name, shape, seed):
    low, high = COMPOSITES[name][2]
    arrays = [data(shape, low, high, seed)]
    if name == "clip_tensor":
        arrays.append(data(shape[-1:], -1.0, 0.0, seed + 1))
    return arrays


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", list(COMPOSITES))
def test_composite_matches_torch(name, backend):
    build, fn, _ = COMPOSITES[name]
    for shape in ((2, 3, 5, 7), (11,)):
        arrays = _composite_inputs(name, shape, 1)
        out = run_op(build, arrays, backend)
        expected = fn(*[torch.from_numpy(a) for a in as_fed(arrays, backend)]).numpy()
        assert_matches(out, expected, backend, f"{name} {shape}")


@pytest.mark.parametrize("name", list(COMPOSITES))
def test_composite_gradient(name):
    build, fn, _ = COMPOSITES[name]
    arrays = _composite_inputs(name, (3, 4), 2)
    fd_check(build, arrays, name)
    grad_matches_torch(build, fn, arrays, "cpu", name)


def test_composites_are_one_fused_compute_set():
    """gelu, silu, hardswish, ... are chains of primitives: one compute set each (forward),
    one pass over memory."""
    g = ig.Graph()
    x = g.input("x", (4, 8, 3, 3))
    for name in ("silu", "hardswish", "elu", "softplus", "gelu_tanh"):
        g.output(name, COMPOSITES[name][0](x))
    program = ig.lower(ig.plan(g))
    assert [cs.op for cs in program.compute_sets] == ["pointwise"] * 5


# -- scalars, operators, dtypes ----------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_operators_and_python_scalars(backend):
    g = ig.Graph()
    x, y = g.input("x", (2, 3, 4, 5)), g.input("y", (5,))
    outs = {"add": x + 1.0, "radd": 2 + x, "sub": x - y, "rsub": 1.0 - x, "mul": 3 * x,
            "div": x / 4, "rdiv": 1.0 / (x * x + 1.0), "neg": -x, "pow": x ** 2,
            "rpow": 2.0 ** y, "gt": x > 0, "lt": x < y, "eq": (x * 0) == 0.0, "ne": y != y,
            "abs": abs(x), "where": ig.ops.where(x > 0, x, 0.5)}
    for name, t in outs.items():
        g.output(name, t)
    xv, yv = data((2, 3, 4, 5), -2, 2, 0, np.float32), data((5,), -2, 2, 1, np.float32)
    out = ig.compile(g, backend=backend).run({"x": xv, "y": yv})
    xt, yt = torch.from_numpy(xv).double(), torch.from_numpy(yv).double()
    backend = "cpu" if backend == "reference" else backend     # (a float32 graph: fp32 tol)
    expected = {"add": xt + 1, "radd": 2 + xt, "sub": xt - yt, "rsub": 1 - xt, "mul": 3 * xt,
                "div": xt / 4, "rdiv": 1 / (xt * xt + 1), "neg": -xt, "pow": xt ** 2,
                "rpow": 2.0 ** yt, "gt": xt > 0, "lt": xt < yt, "eq": (xt * 0) == 0,
                "ne": yt != yt, "abs": xt.abs(), "where": torch.where(xt > 0, xt, 0.5)}
    for name, e in expected.items():
        assert_matches(out[name], e.numpy(), backend, name)
    assert out["gt"].dtype == np.bool_


def test_scalar_operands_take_the_tensor_dtype_and_bad_operands_are_refused():
    g = ig.Graph()
    h = g.input("h", (3,), "float16")
    assert (h + 1.0).dtype == "float16" and (2 * h).dtype == "float16"
    assert (h > 0).dtype == "bool" and ig.ops.where(h > 0, 1.0, 0.0).dtype == "float32"
    with pytest.raises(ig.GraphError, match="at least one operand must be an ipugraph Tensor"):
        ig.ops.add(1.0, 2.0)
    with pytest.raises(ig.GraphError, match="Tensors or numbers"):
        ig.ops.mul(h, "2")
    with pytest.raises(ig.GraphError, match="do not broadcast"):
        ig.ops.add(g.input("a", (2, 3)), g.input("b", (4,)))
    with pytest.raises(ig.GraphError, match="share one dtype"):
        ig.ops.add(h, g.input("f", (3,)))
    with pytest.raises(ig.GraphError, match="floating-point"):
        ig.ops.exp(g.input("i", (3,), "int64"))
    with pytest.raises(ig.GraphError, match="no truth value"):
        bool(h > 0)
    with pytest.raises(ig.GraphError, match="takes 2 operands"):
        ig.ops.add(h)


def test_nan_propagates_as_in_torch():
    x = np.array([np.nan, -1.0, 2.0, np.nan, 0.0], np.float32)
    y = np.array([1.0, np.nan, 1.0, np.nan, -0.0], np.float32)
    for backend in BACKENDS:
        for name in ("relu", "maximum", "minimum"):
            arrays = [x] if name == "relu" else [x, y]
            out = run_op(getattr(ig.ops, name), arrays, backend)
            expected = _torch(name)(*[torch.from_numpy(a) for a in arrays]).numpy()
            np.testing.assert_array_equal(np.isnan(out), np.isnan(expected), err_msg=name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_expand_and_cast(backend):
    g = ig.Graph()
    x = g.input("x", (3, 1))
    g.output("e", ig.ops.expand(x, (2, 3, 4)))
    g.output("c", ig.ops.cast(x > 0, "float32"))
    xv = data((3, 1), -1, 1, 4, np.float32)
    out = ig.compile(g, backend=backend).run({"x": xv})
    np.testing.assert_array_equal(out["e"], np.broadcast_to(xv, (2, 3, 4)))
    np.testing.assert_array_equal(out["c"], (xv > 0).astype(np.float32))
    fd_check(lambda t: ig.ops.expand(t, (2, 3, 4)), [data((3, 1), -1, 1, 5)], "expand")
