"""The pointwise vocabulary, as data.

One table entry per primitive holds everything about it: its NumPy reference (the oracle every
backend is tested against), its C++ expression (compiled into ipugraph._C's pointwise evaluator:
setup.py generates the opcode table from this file), its Triton expression (the triton backend
generates one kernel per fused chain from these), its derivative written in the vocabulary
itself, its cost per element and the input range tests draw from. This is how popops' `map`
expressions, Inductor's ops handler and tinygrad's `code_for_op` work: adding a primitive with
its gradient, on every backend, is one `primitive(...)` call below.

Expressions use the placeholders {a}, {b}, {c} for the operands (replaced literally: any other
brace is the expression's own, e.g. a C++ lambda's), evaluated in fp32 (C++ `float`, Triton fp32
tensors). A comparison yields 1.0 or 0.0 inside a chain and a bool tensor
when stored; `where` picks {b} where {a} is not zero. NaN propagates as in torch: relu(nan),
maximum(nan, x) and minimum(x, nan) are nan.

Binary ops broadcast as NumPy does and take a Tensor or a Python scalar on either side (a
scalar takes the tensor's dtype, as torch's "weak" scalars do). Composites (clip, gelu, silu,
hardswish, hardsigmoid, relu6, leaky_relu, elu, softplus) are built from primitives and get
their gradients for free; the planner fuses chains of these ops into one compute set.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..graph import DTYPES, GraphError, Tensor
from ..space import Dim, Space, broadcast_region, flat_region
from .registry import Cost, defop, fail


@dataclass(frozen=True)
class Primitive:
    name: str
    arity: int
    numpy: Callable            # the reference, on NumPy arrays (float64 in the tests)
    cpp: str                   # C++ expression over float {a}, {b}, {c}
    triton: str                # Triton expression over fp32 {a}, {b}, {c}
    grad: Callable | None      # (*inputs, output, dy) -> one zero-argument builder (or None)
                               # per input, each returning that input's gradient
    flops: int                 # floating-point operations per element (the cost model's)
    result: str                # "float": the operands' dtype; "bool": a comparison
    ints: bool                 # also defined on integer tensors (reference backend)
    domain: tuple              # per input, the (low, high) range tests draw values from
    opcode: int                # position in the table: the C++ evaluator's opcode


PRIMITIVES: dict[str, Primitive] = {}
FUNCTIONS: dict[str, Callable] = {}        # name -> the graph-building function (ig.ops.<name>)


def primitive(name: str, arity: int, *, numpy: Callable, cpp: str, triton: str,
              grad: Callable | None = None, flops: int = 1, result: str = "float",
              ints: bool = False, domain=(-2.0, 2.0)):
    """Add a primitive to the table and register it as an op (shape rule: NumPy broadcasting)."""
    if isinstance(domain[0], (int, float)):
        domain = (tuple(domain),) * arity
    prim = Primitive(name, arity, numpy, cpp, triton, grad, flops, result, ints, tuple(domain),
                     len(PRIMITIVES))
    PRIMITIVES[name] = prim

    def reference(*xs):
        with np.errstate(all="ignore"):
            return np.asarray(numpy(*xs))

    op = defop(name, infer=_infer(prim), cost=_cost(prim), space=_op_space(prim),
               grad=_grad(prim), pointwise="primitive")(reference)
    fn = _function(op, arity)
    FUNCTIONS[name] = globals()[name] = fn
    return op


def _function(op, arity: int) -> Callable:
    """ig.ops.<name>(*operands, name=None): Tensors or Python scalars, NumPy broadcasting."""
    def fn(*args, name: str | None = None) -> Tensor:
        if len(args) != arity:
            raise GraphError(f"{op.name} takes {arity} operand{'s' * (arity > 1)}, got "
                             f"{len(args)}")
        # where(cond, a, b): the scalars take the dtype of a and b, not of the condition
        return _call(op, args, name, value_args=args[1:] if op.name == "where" else None)
    fn.__name__ = op.name
    fn.__qualname__ = op.name
    fn.__doc__ = (f"Elementwise {op.name} of {arity} operand{'s' * (arity > 1)} (Tensors or "
                  "Python scalars, NumPy broadcasting).")
    return fn


# -- shape, dtype, cost and tiling rules shared by every pointwise op ---------------------------

def broadcast_shapes(op: str, node: str, inputs) -> tuple[int, ...]:
    try:
        return tuple(int(d) for d in np.broadcast_shapes(*(t.shape for t in inputs)))
    except ValueError:
        raise fail(op, node, "operands do not broadcast (NumPy rules: trailing dimensions "
                   "must be equal or 1)", **{f"input{i}": t for i, t in enumerate(inputs)}) from None


def _value_dtype(op: str, node: str, tensors: dict, ints: bool) -> str:
    """The common dtype of value operands: bool operands count as the other operands' dtype;
    the rest must agree."""
    dtypes = {t.dtype for t in tensors.values()}
    numeric = dtypes - {"bool"}
    if len(numeric) > 1:
        raise fail(op, node, f"operands must share one dtype, got {sorted(dtypes)}", **tensors)
    dtype = numeric.pop() if numeric else "bool"
    if dtype == "bool" or (dtype.startswith("int") and not ints):
        need = "floating-point" if not ints else "numeric"
        raise fail(op, node, f"needs {need} operands, got {sorted(dtypes)}", **tensors)
    return dtype


def _infer(prim: Primitive):
    def infer(node, inputs, attrs):
        shape = broadcast_shapes(prim.name, node, inputs)
        values = inputs[1:] if prim.name == "where" else inputs
        named = {f"input{i}": t for i, t in enumerate(values)}
        if prim.result == "bool":
            dtypes = {t.dtype for t in values}
            if len(dtypes - {"bool"}) > 1:
                raise fail(prim.name, node, f"operands must share one dtype, got "
                           f"{sorted(dtypes)}", **named)
            return [(shape, "bool")]
        if prim.name == "where" and all(t.dtype == "bool" for t in values):
            return [(shape, "bool")]                  # a choice between two masks
        return [(shape, _value_dtype(prim.name, node, named, prim.ints))]
    return infer


def _cost(prim: Primitive):
    def cost(node) -> Cost:
        out = node.output
        return Cost(0, prim.flops * out.size, sum(t.nbytes for t in node.inputs), out.nbytes)
    return cost


def pointwise_space(out: Tensor, operands, target, flops_per_element: int = 1) -> Space:
    """Pointwise work split over the output's flat element range (PopLibs maps elementwise work
    by the output's tile mapping; a flat range is its simplest form). Each operand is read
    where broadcasting maps the vertex's elements: a same-shaped operand over the same range, a
    per-channel one over its channels, a scalar whole."""
    operands = list(operands)
    full = sum(1 for t in operands if t.size == out.size)
    small = sum(t.nbytes for t in operands if t.size != out.size)

    def slice_cost(sizes):
        n = sizes[..., 0]
        b = n * out.itemsize
        return n * flops_per_element, full * b + small, np.zeros_like(n), b

    def boxes(table):
        region = flat_region(out.shape, table[:, 0], table[:, 1])
        return region, [(t, broadcast_region(region, out.shape, t.shape)) for t in operands]
    return Space((Dim("i", out.size, target.vector_grain),), slice_cost, boxes)


def _op_space(prim: Primitive):
    return lambda node, target: pointwise_space(node.output, node.inputs, target, prim.flops)


def reduce_to(g: Tensor, shape: tuple) -> Tensor:
    """The gradient of an operand of `shape` broadcast to g.shape: g summed over the broadcast
    axes."""
    shape = tuple(shape)
    if g.shape == shape:
        return g
    from .reduce import sum as reduce_sum
    from .shape import reshape
    lead = g.ndim - len(shape)
    axes = tuple(range(lead)) + tuple(lead + i for i, d in enumerate(shape)
                                      if d == 1 and g.shape[lead + i] != 1)
    s = reduce_sum(g, axes, keepdims=False) if axes else g
    return s if s.shape == shape else reshape(s, shape)


def _grad(prim: Primitive):
    if prim.grad is None:
        return lambda node, dy, needs: [None] * len(node.inputs)

    def rule(node, dy, needs):
        builders = prim.grad(*node.inputs, node.output, dy)
        return [reduce_to(build(), t.shape) if need and build is not None else None
                for t, need, build in zip(node.inputs, needs, builders)]
    return rule


# -- scalars on either side ------------------------------------------------------------------

def _lift(op: str, args, value_args=None) -> list[Tensor]:
    """Tensors for the operands: a Python (or NumPy) scalar becomes a constant of the dtype of
    the tensor operands (float32 if there are none among the values)."""
    tensors = [a for a in args if isinstance(a, Tensor)]
    if not tensors:
        raise GraphError(f"{op}: at least one operand must be an ipugraph Tensor, got "
                         f"{[type(a).__name__ for a in args]}")
    graph = tensors[0].graph
    values = args if value_args is None else value_args
    dtypes = [a.dtype for a in values if isinstance(a, Tensor)]
    floats = [d for d in dtypes if d.startswith("float")]
    like = floats[0] if floats else next((d for d in dtypes if d != "bool"), None)
    out = []
    for a in args:
        if isinstance(a, Tensor):
            out.append(a)
            continue
        if not isinstance(a, (bool, int, float, np.number, np.bool_)):
            raise GraphError(f"{op}: operands must be Tensors or numbers, got "
                             f"{type(a).__name__} {a!r}")
        if isinstance(a, (bool, np.bool_)):
            dtype = "bool" if like is None else like
        elif like is not None and (like.startswith("float") or isinstance(a, (int, np.integer))):
            dtype = like
        else:
            dtype = "float32" if isinstance(a, (float, np.floating)) else "int64"
        out.append(graph.constant(np.asarray(a, DTYPES[dtype]), dtype=dtype))
    return out


def _call(op, args, name, value_args=None):
    return op(*_lift(op.name, args, value_args), name=name)


# -- the table --------------------------------------------------------------------------------
# Gradients follow torch's conventions at kinks and ties (relu'(0) = 0, abs'(0) = 0, a tie of
# maximum/minimum splits the gradient in half).

neg_op = primitive(
    "neg", 1, numpy=np.negative, cpp="-{a}", triton="-{a}", ints=True,
    grad=lambda x, y, dy: (lambda: -dy,))
abs_op = primitive(
    "abs", 1, numpy=np.abs, cpp="std::fabs({a})", triton="tl.abs({a})", ints=True,
    grad=lambda x, y, dy: (lambda: where(x > 0, dy, where(x < 0, -dy, 0.0)),))
exp_op = primitive(
    "exp", 1, numpy=np.exp, cpp="ipg_exp({a})", triton="tl.exp({a})", flops=8,
    grad=lambda x, y, dy: (lambda: dy * y,))
log_op = primitive(
    "log", 1, numpy=np.log, cpp="ipg_log({a})", triton="tl.log({a})", flops=8,
    domain=(0.1, 3.0), grad=lambda x, y, dy: (lambda: dy / x,))
sqrt_op = primitive(
    "sqrt", 1, numpy=np.sqrt, cpp="std::sqrt({a})", triton="tl.sqrt_rn({a})", flops=4,
    domain=(0.1, 3.0), grad=lambda x, y, dy: (lambda: dy / (y * 2.0),))
rsqrt_op = primitive(
    "rsqrt", 1, numpy=lambda x: 1.0 / np.sqrt(x), cpp="1.0f / std::sqrt({a})",
    triton="1.0 / tl.sqrt_rn({a})", flops=5, domain=(0.1, 3.0),
    grad=lambda x, y, dy: (lambda: dy * (y * y * y) * -0.5,))
reciprocal_op = primitive(
    "reciprocal", 1, numpy=np.reciprocal, cpp="1.0f / {a}", triton="1.0 / {a}", flops=4,
    domain=(0.3, 3.0), grad=lambda x, y, dy: (lambda: -dy * (y * y),))
relu_op = primitive(
    "relu", 1, numpy=lambda x: np.where(x < 0, np.zeros_like(x), x),
    cpp="({a} < 0.0f ? 0.0f : {a})", triton="tl.where({a} < 0.0, 0.0, {a})", ints=True,
    grad=lambda x, y, dy: (lambda: where(y > 0, dy, 0.0),))
sigmoid_op = primitive(
    "sigmoid", 1, numpy=lambda x: 1.0 / (1.0 + np.exp(-x)),
    cpp="1.0f / (1.0f + ipg_exp(-{a}))", triton="1.0 / (1.0 + tl.exp(-{a}))", flops=10,
    domain=(-4.0, 4.0), grad=lambda x, y, dy: (lambda: dy * ((1.0 - y) * y),))
tanh_op = primitive(
    "tanh", 1, numpy=np.tanh, cpp="ipg_tanh({a})", triton="tanh_f32({a})", flops=12,
    domain=(-3.0, 3.0), grad=lambda x, y, dy: (lambda: dy * (1.0 - y * y),))
erf_op = primitive(
    # C++: the rational approximation x·P(x²)/Q(x²) of Eigen's / XLA's float erf on x clamped
    # to [-4, 4] (erf is ±1 to float precision beyond): within 4.2e-7 of erf everywhere.
    "erf", 1, numpy=np.vectorize(math.erf, otypes=[np.float64]),
    cpp="[](float x) { x = x > 4.0f ? 4.0f : (x < -4.0f ? -4.0f : x); const float z = x * x; "
        "float p = -2.72614225801306e-10f; p = p * z + 2.77068142495902e-08f; "
        "p = p * z - 2.10102402082508e-06f; p = p * z - 5.69250639462346e-05f; "
        "p = p * z - 7.34990630326855e-04f; p = p * z - 2.95459980854025e-03f; "
        "p = p * z - 1.60960333262415e-02f; float q = -1.45660718464996e-05f; "
        "q = q * z - 2.13374055278905e-04f; q = q * z - 1.68282697438203e-03f; "
        "q = q * z - 7.37332916720468e-03f; q = q * z - 1.42647390514189e-02f; "
        "return x * p / q; }({a})",
    triton="tl.erf({a})", flops=20, domain=(-3.0, 3.0),
    grad=lambda x, y, dy: (lambda: dy * exp(neg(x * x)) * (2.0 / math.sqrt(math.pi)),))

add_op = primitive(
    "add", 2, numpy=np.add, cpp="{a} + {b}", triton="{a} + {b}", ints=True,
    grad=lambda a, b, y, dy: (lambda: dy, lambda: dy))
sub_op = primitive(
    "sub", 2, numpy=np.subtract, cpp="{a} - {b}", triton="{a} - {b}", ints=True,
    grad=lambda a, b, y, dy: (lambda: dy, lambda: -dy))
mul_op = primitive(
    "mul", 2, numpy=np.multiply, cpp="{a} * {b}", triton="{a} * {b}", ints=True,
    grad=lambda a, b, y, dy: (lambda: dy * b, lambda: dy * a))
div_op = primitive(
    "div", 2, numpy=np.true_divide, cpp="{a} / {b}", triton="{a} / {b}", flops=4,
    domain=((-2.0, 2.0), (0.5, 2.0)),
    grad=lambda a, b, y, dy: (lambda: dy / b, lambda: -dy * a / (b * b)))
maximum_op = primitive(
    "maximum", 2, numpy=np.maximum, ints=True,
    cpp="(({a} > {b}) | ({a} != {a})) ? {a} : {b}",
    triton="tl.where(({a} > {b}) | ({a} != {a}), {a}, {b})",
    grad=lambda a, b, y, dy: (lambda: where(a == b, dy * 0.5, where(a < b, 0.0, dy)),
                              lambda: where(a == b, dy * 0.5, where(a > b, 0.0, dy))))
minimum_op = primitive(
    "minimum", 2, numpy=np.minimum, ints=True,
    cpp="(({a} < {b}) | ({a} != {a})) ? {a} : {b}",
    triton="tl.where(({a} < {b}) | ({a} != {a}), {a}, {b})",
    grad=lambda a, b, y, dy: (lambda: where(a == b, dy * 0.5, where(a > b, 0.0, dy)),
                              lambda: where(a == b, dy * 0.5, where(a < b, 0.0, dy))))
pow_op = primitive(
    "pow", 2, numpy=np.power, cpp="ipg_pow({a}, {b})", triton="pow_f32({a}, {b})", flops=20,
    domain=((0.5, 2.0), (-2.0, 2.0)),
    grad=lambda a, b, y, dy: (
        lambda: where(b == 0, 0.0, dy * b * pow(a, b - 1.0)),
        lambda: where(where(a == 0, b < 0, True), dy * y * log(a), 0.0)))
greater_op = primitive(
    "greater", 2, numpy=np.greater, cpp="({a} > {b} ? 1.0f : 0.0f)",
    triton="tl.where({a} > {b}, 1.0, 0.0)", result="bool", ints=True)
less_op = primitive(
    "less", 2, numpy=np.less, cpp="({a} < {b} ? 1.0f : 0.0f)",
    triton="tl.where({a} < {b}, 1.0, 0.0)", result="bool", ints=True)
equal_op = primitive(
    "equal", 2, numpy=np.equal, cpp="({a} == {b} ? 1.0f : 0.0f)",
    triton="tl.where({a} == {b}, 1.0, 0.0)", result="bool", ints=True)

where_op = primitive(
    "where", 3, numpy=lambda c, a, b: np.where(c != 0, a, b),
    cpp="({a} != 0.0f ? {b} : {c})", triton="tl.where({a} != 0.0, {b}, {c})", ints=True,
    domain=((-1.0, 1.0), (-2.0, 2.0), (-2.0, 2.0)),
    grad=lambda c, a, b, y, dy: (None, lambda: where(c, dy, 0.0), lambda: where(c, 0.0, dy)))


# -- identity-like pointwise ops: broadcast and cast -------------------------------------------

def _expand_infer(node, inputs, attrs):
    (x,) = inputs
    shape = tuple(attrs["shape"])
    try:
        ok = tuple(np.broadcast_shapes(x.shape, shape)) == shape
    except ValueError:
        ok = False
    if not ok or any(d <= 0 for d in shape):
        raise fail("expand", node, f"x {x.shape} does not broadcast to {shape}", x=x)
    return [(shape, x.dtype)]


def _identity_cost(node) -> Cost:
    return Cost(0, 0, node.inputs[0].nbytes, node.output.nbytes)


def _identity_space(node, target):
    return pointwise_space(node.output, node.inputs, target)


@defop("expand", infer=_expand_infer, cost=_identity_cost, space=_identity_space,
       attrs={"shape": (1,)}, pointwise="identity",
       grad=lambda node, dy, needs: [reduce_to(dy, node.inputs[0].shape)])
def expand_op(x, *, shape):
    return np.broadcast_to(x, shape).copy()


def _cast_infer(node, inputs, attrs):
    (x,) = inputs
    if attrs["dtype"] not in DTYPES:
        raise fail("cast", node, f"unknown dtype {attrs['dtype']!r}; choose from "
                   f"{sorted(DTYPES)}", x=x)
    return [(x.shape, attrs["dtype"])]


def _cast_grad(node, dy, needs):
    x = node.inputs[0]
    if not x.dtype.startswith("float"):
        return [None]
    return [cast(dy, x.dtype)]


@defop("cast", infer=_cast_infer, cost=_identity_cost, space=_identity_space,
       attrs={"dtype": "float32"}, pointwise="identity", grad=_cast_grad)
def cast_op(x, *, dtype):
    return np.asarray(x).astype(DTYPES[dtype])


# -- the functions users call (the primitives' are made by primitive()) -------------------

def expand(x: Tensor, shape, name: str | None = None) -> Tensor:
    """x broadcast to `shape` (torch's expand / NumPy's broadcast_to), materialised."""
    return expand_op(x, shape=tuple(int(d) for d in shape), name=name)


def cast(x: Tensor, dtype, name: str | None = None) -> Tensor:
    """x converted to `dtype` (bool: non-zero is true)."""
    from ..graph import canonical_dtype
    return cast_op(x, dtype=canonical_dtype(dtype), name=name)


# -- composites: built from primitives, differentiated through them ----------------------------

def clip(x, lo=None, hi=None, name: str | None = None) -> Tensor:
    """min(max(x, lo), hi) (torch.clamp); lo / hi a scalar, a tensor or None. NaN stays NaN;
    the gradient passes where lo <= x <= hi (torch.clamp's)."""
    if lo is None and hi is None:
        raise GraphError("clip: give lo, hi or both")
    if isinstance(lo, (int, float)) and isinstance(hi, (int, float)) and lo > hi:
        raise GraphError(f"clip: lo {lo} > hi {hi}")
    y = x
    if lo is not None:
        y = where(less(y, lo), lo, y, name=None if hi is not None else name)
    if hi is not None:
        y = where(greater(y, hi), hi, y, name=name)
    return y


def relu6(x, name: str | None = None) -> Tensor:
    return clip(x, 0.0, 6.0, name=name)


def hardsigmoid(x, name: str | None = None) -> Tensor:
    """relu6(x + 3) / 6 (torch.nn.functional.hardsigmoid)."""
    return div(relu6(add(x, 3.0)), 6.0, name=name)


def hardswish(x, name: str | None = None) -> Tensor:
    """x · relu6(x + 3) / 6 (torch.nn.functional.hardswish)."""
    return div(mul(x, relu6(add(x, 3.0))), 6.0, name=name)


def silu(x, name: str | None = None) -> Tensor:
    """x · sigmoid(x)."""
    return mul(x, sigmoid(x), name=name)


def leaky_relu(x, negative_slope: float = 0.01, name: str | None = None) -> Tensor:
    return where(greater(x, 0.0), x, mul(x, float(negative_slope)), name=name)


def elu(x, alpha: float = 1.0, name: str | None = None) -> Tensor:
    """x for x > 0, alpha·(exp(x) - 1) otherwise. exp reads min(x, 0), so the unused branch
    cannot overflow (and its gradient cannot become 0·inf)."""
    pos = greater(x, 0.0)
    neg_part = mul(sub(exp(where(pos, 0.0, x)), 1.0), float(alpha))
    return where(pos, x, neg_part, name=name)


def softplus(x, beta: float = 1.0, threshold: float = 20.0, name: str | None = None) -> Tensor:
    """log(1 + exp(beta·x)) / beta, and x where beta·x > threshold (torch's)."""
    z = mul(x, float(beta))
    big = greater(z, float(threshold))
    soft = div(log(add(exp(where(big, 0.0, z)), 1.0)), float(beta))
    return where(big, x, soft, name=name)


def gelu(x, approximate: str = "none", name: str | None = None) -> Tensor:
    """x · Φ(x): "none" with erf, "tanh" with torch's tanh approximation."""
    if approximate == "tanh":
        inner = mul(add(x, mul(mul(mul(x, x), x), 0.044715)), math.sqrt(2.0 / math.pi))
        return mul(mul(x, 0.5), add(tanh(inner), 1.0), name=name)
    if approximate != "none":
        raise GraphError(f"gelu: approximate must be 'none' or 'tanh', got {approximate!r}")
    return mul(mul(x, 0.5), add(FUNCTIONS["erf"](mul(x, math.sqrt(0.5))), 1.0), name=name)


COMPOSITES = {"clip": clip, "relu6": relu6, "hardsigmoid": hardsigmoid, "hardswish": hardswish,
              "silu": silu, "leaky_relu": leaky_relu, "elu": elu, "softplus": softplus,
              "gelu": gelu}
FUNCTIONS.update(COMPOSITES, expand=expand, cast=cast)
