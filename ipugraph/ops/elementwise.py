"""Elementwise ops: relu and add. Same-shape operands only (no implicit broadcasting: a shape
mismatch is far more often a bug than an intended broadcast in a static CNN graph)."""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from .registry import Cost, defop, elementwise_space, expect_float, fail


def _same_as_first(node, inputs, attrs):
    return [(inputs[0].shape, inputs[0].dtype)]


def _relu_infer(node, inputs, attrs):
    expect_float("relu", node, x=inputs[0])
    return _same_as_first(node, inputs, attrs)


def _add_infer(node, inputs, attrs):
    a, b = inputs
    expect_float("add", node, a=a, b=b)
    if a.shape != b.shape:
        raise fail("add", node, "operands must have the same shape (no broadcasting)", a=a, b=b)
    return _same_as_first(node, inputs, attrs)


def _elementwise_cost(node) -> Cost:
    out = node.output
    return Cost(0, out.size, sum(t.nbytes for t in node.inputs), out.nbytes)


@defop("relu", infer=_relu_infer, cost=_elementwise_cost, space=elementwise_space,
       elementwise=True)
def relu_op(x):
    return np.maximum(x, 0)


@defop("add", infer=_add_infer, cost=_elementwise_cost, space=elementwise_space,
       elementwise=True)
def add_op(a, b):
    return a + b


def relu(x: Tensor, name: str | None = None) -> Tensor:
    return relu_op(x, name=name)


def add(a: Tensor, b: Tensor, name: str | None = None) -> Tensor:
    return add_op(a, b, name=name)
