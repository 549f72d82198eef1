"""Elementwise ops: relu, add and the ReLU gradient. Same-shape operands only (no implicit broadcasting: a shape
mismatch is far more often a bug than an intended broadcast in a static CNN graph)."""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from .registry import Cost, defop, elementwise_space, expect_float, fail, grad_name


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


def _relu_backward_infer(node, inputs, attrs):
    y, dy = inputs
    expect_float("relu_backward", node, y=y, dy=dy)
    if y.shape != dy.shape:
        raise fail("relu_backward", node, "y and dy must have the same shape", y=y, dy=dy)
    return _same_as_first(node, inputs, attrs)


@defop("relu_backward", infer=_relu_backward_infer, cost=_elementwise_cost,
       space=elementwise_space, elementwise=True)
def relu_backward_op(y, dy):
    """dx = dy where the ReLU's output y > 0 (torch's threshold_backward on the output)."""
    return np.where(y > 0, dy, 0).astype(np.result_type(y, dy))


relu_op.grad = lambda node, dy, needs: [
    relu_backward_op(node.output, dy, name=grad_name(node, "grad_x"))]
add_op.grad = lambda node, dy, needs: [dy, dy]
