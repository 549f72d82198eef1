"""The op registry: every op is defined once, here-by-decorator, in its family's module.

An OpDef holds
  infer      the shape rule: (node name, input tensors, attrs) -> [(shape, dtype), ...];
             raises GraphError naming the op, the tensors and their shapes
  reference  the NumPy semantics, the oracle every backend is tested against
  cost       (node) -> Cost: MACs, FLOPs, bytes read and written
  space      (node) -> Space: the dimensions the planner may split over tiles and the
             per-slice cost (MACs, bytes a tile must hold) as vectorised functions
  grad       the gradient rule: (node, dy, needs) -> one gradient Tensor (or None) per input,
             built from registered ops; `needs[i]` says whether input i wants one. None as the
             rule means the op is not differentiable (autodiff says so if a gradient must flow
             through it)

Backends register lowerings against the op's name (backends/registry.py), so adding an op
touches its own module and one function per backend, never a shared if/elif chain.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..graph import GraphError, Tensor
from ..space import Dim, Space, flat_region, full_region

OPS: dict[str, "OpDef"] = {}


@dataclass(frozen=True)
class Cost:
    macs: int = 0            # multiply-accumulates
    flops: int = 0           # all floating-point operations (2 per MAC plus the rest)
    bytes_in: int = 0        # activations and weights read
    bytes_out: int = 0       # results written


@dataclass
class OpDef:
    name: str
    infer: Callable
    reference: Callable
    cost: Callable
    space: Callable
    attrs: dict = field(default_factory=dict)    # attribute defaults
    grad: Callable | None = None
    # "primitive": an entry of the pointwise table (ops/pointwise.py); "identity": the output
    # is its first input broadcast (and cast) to the output's shape. Either way output element
    # i depends only on the operands' elements broadcast to i, so the planner may fuse it.
    pointwise: str | None = None

    def __call__(self, *inputs: Tensor, name: str | None = None, **attrs):
        """Append this op to the inputs' graph; returns its (first) output tensor."""
        if not inputs or not isinstance(inputs[0], Tensor):
            raise GraphError(f"{self.name}: the first argument must be an ipugraph Tensor, got "
                             f"{type(inputs[0]).__name__ if inputs else 'nothing'}")
        unknown = set(attrs) - set(self.attrs)
        if unknown:
            raise GraphError(f"{self.name}: unknown attribute(s) {sorted(unknown)}; "
                             f"it takes {sorted(self.attrs)}")
        full = {**self.attrs, **attrs}
        outs = inputs[0].graph.add_node(self, tuple(inputs), full, name=name)
        return outs[0] if len(outs) == 1 else outs


def defop(name: str, *, infer, cost, space, attrs: dict | None = None, grad=None,
          pointwise: str | None = None):
    """Register the decorated NumPy function as the reference semantics of op `name`."""
    def register(reference: Callable) -> OpDef:
        if name in OPS:
            raise RuntimeError(f"op '{name}' is defined twice")
        op = OpDef(name, infer, reference, cost, space, dict(attrs or {}), grad, pointwise)
        OPS[name] = op
        return op
    return register


def get(name: str) -> OpDef:
    try:
        return OPS[name]
    except KeyError:
        raise KeyError(f"no op named '{name}'; registered: {sorted(OPS)}") from None


# -- helpers shared by the shape rules ------------------------------------------------------

def fail(op: str, node: str, message: str, **tensors: Tensor) -> GraphError:
    """A GraphError naming the op, the node and every tensor involved with its shape."""
    described = ", ".join(f"{role} '{t.name}' {t.shape} {t.dtype}" for role, t in tensors.items())
    return GraphError(f"{op} '{node}': {message}" + (f" [{described}]" if described else ""))


def expect_rank(op: str, node: str, role: str, t: Tensor, ranks: Sequence[int]) -> None:
    if t.ndim not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise fail(op, node, f"{role} must have rank {want}, got rank {t.ndim}", **{role: t})


def expect_float(op: str, node: str, **tensors: Tensor) -> str:
    """All tensors share one floating dtype; returns it."""
    dtypes = {t.dtype for t in tensors.values()}
    if len(dtypes) != 1:
        raise fail(op, node, f"inputs must share one dtype, got {sorted(dtypes)}", **tensors)
    dtype = dtypes.pop()
    if not dtype.startswith("float"):
        raise fail(op, node, f"needs floating-point inputs, got {dtype}", **tensors)
    return dtype


def pair(value, what: str, op: str, node: str) -> tuple[int, int]:
    """An int or a pair of ints, as torch accepts for stride/padding/dilation/kernel."""
    if isinstance(value, (int, np.integer)):
        return int(value), int(value)
    try:
        a, b = value
        return int(a), int(b)
    except (TypeError, ValueError):
        raise GraphError(f"{op} '{node}': {what} must be an int or a pair of ints, "
                         f"got {value!r}") from None


def elementwise_space(node, target) -> Space:
    """Elementwise work is split over the output's flat element range (PopLibs maps it by the
    output tensor's tile mapping; a flat range is that mapping's simplest form). An operand of
    the output's size is read over the same range; a smaller one (batch-norm's per-channel
    parameters) is read whole."""
    out = node.output
    nin = len(node.inputs)

    def slice_cost(sizes):
        n = sizes[..., 0]
        b = n * out.itemsize
        return n, nin * b, np.zeros_like(n), b

    def boxes(table):
        start, stop = table[:, 0], table[:, 1]
        ins = [(t, flat_region(t.shape, start, stop) if t.size == out.size
                else full_region(t.shape, len(table))) for t in node.inputs]
        return flat_region(out.shape, start, stop), ins
    return Space((Dim("i", out.size, target.vector_grain),), slice_cost, boxes)


def grad_name(node, what: str) -> str:
    """A fresh name for a gradient op of `node`: '<node>.<what>' (suffixed if taken)."""
    return node.output.graph.fresh_name(f"{node.name}.{what}")


def scalar_space(node, target) -> Space:
    """One vertex for the whole op (a scalar result, e.g. a loss): nothing to split."""
    out = node.output
    total = sum(t.nbytes for t in node.inputs)

    def slice_cost(sizes):
        one = np.ones(sizes.shape[:-1], np.int64)
        return (one * sum(t.size for t in node.inputs), one * total, one * 0,
                one * out.nbytes)

    def boxes(table):
        return (full_region(out.shape, len(table)),
                [(t, full_region(t.shape, len(table))) for t in node.inputs])
    return Space((Dim("all", 1),), slice_cost, boxes)


def rows_space(node, target, rows: int, cols: int) -> Space:
    """Split over the rows of a row-wise op whose output and same-sized inputs are [rows, cols]
    (row-major); smaller operands (labels, scalars) are read whole."""
    out = node.output

    def slice_cost(sizes):
        b = sizes[..., 0] * cols * out.itemsize
        return sizes[..., 0] * cols * 4, b * len(node.inputs), np.zeros_like(b), b

    def boxes(table):
        region = flat_region(out.shape, table[:, 0] * cols, table[:, 1] * cols)
        ins = [(t, flat_region(t.shape, table[:, 0] * cols, table[:, 1] * cols)
                if t.size == rows * cols else full_region(t.shape, len(table)))
               for t in node.inputs]
        return region, ins
    return Space((Dim("row", rows),), slice_cost, boxes)


def nbytes_of(*tensors: Tensor) -> int:
    return sum(t.nbytes for t in tensors)
