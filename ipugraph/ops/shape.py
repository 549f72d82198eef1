"""Shape ops: flatten (torch.flatten from start_dim), reshape, and the 2-D transpose, all in
logical row-major (NCHW) order."""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from ..space import Region
from .registry import Cost, Dim, Space, defop, elementwise_space, fail, grad_name


def _flatten_infer(node, inputs, attrs):
    (x,) = inputs
    start = attrs["start_dim"]
    if not -x.ndim <= start < x.ndim:
        raise fail("flatten", node, f"start_dim {start} is out of range for rank {x.ndim}", x=x)
    start %= x.ndim
    return [(x.shape[:start] + (int(np.prod(x.shape[start:])),), x.dtype)]


@defop("flatten", infer=_flatten_infer, space=elementwise_space, attrs={"start_dim": 1},
       cost=lambda node: Cost(0, 0, node.inputs[0].nbytes, node.output.nbytes))
def flatten_op(x, *, start_dim):
    start = start_dim % x.ndim
    return x.reshape(x.shape[:start] + (-1,))


def flatten(x: Tensor, start_dim: int = 1, name: str | None = None) -> Tensor:
    return flatten_op(x, start_dim=int(start_dim), name=name)


def _reshape_infer(node, inputs, attrs):
    (x,) = inputs
    shape = tuple(int(d) for d in attrs["shape"])
    if any(d <= 0 for d in shape) or int(np.prod(shape, dtype=np.int64)) != x.size:
        raise fail("reshape", node, f"cannot reshape {x.size} elements to {shape}", x=x)
    return [(shape, x.dtype)]


@defop("reshape", infer=_reshape_infer, space=elementwise_space, attrs={"shape": (1,)},
       cost=lambda node: Cost(0, 0, node.inputs[0].nbytes, node.output.nbytes))
def reshape_op(x, *, shape):
    return x.reshape(shape)


def _transpose_infer(node, inputs, attrs):
    (a,) = inputs
    if a.ndim != 2:
        raise fail("transpose", node, f"a must be 2-D, got rank {a.ndim}", a=a)
    return [((a.shape[1], a.shape[0]), a.dtype)]


def _transpose_space(node, target) -> Space:
    """Split over rows of the output = columns of the input."""
    a = node.inputs[0]
    rows, cols = node.output.shape

    def slice_cost(sizes):
        b = sizes[..., 0] * cols * a.itemsize
        return sizes[..., 0] * cols, b, np.zeros_like(b), b

    def boxes(table):
        r0, r1 = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64)
        zero = np.zeros_like(r0)
        out = Region.boxes(np.stack([r0, zero], 1), np.stack([r1, zero + cols], 1))
        return out, [(a, Region.boxes(np.stack([zero, r0], 1), np.stack([zero + cols, r1], 1)))]
    return Space((Dim("i", rows),), slice_cost, boxes)


@defop("transpose", infer=_transpose_infer, space=_transpose_space,
       cost=lambda node: Cost(0, 0, node.inputs[0].nbytes, node.output.nbytes))
def transpose_op(a):
    return np.ascontiguousarray(a.T)


def _reshape_grad(node, dy, needs):
    return [reshape_op(dy, shape=node.inputs[0].shape, name=grad_name(node, "grad_x"))]


flatten_op.grad = _reshape_grad
reshape_op.grad = _reshape_grad
transpose_op.grad = lambda node, dy, needs: [transpose_op(dy, name=grad_name(node, "grad_x"))]


def reshape(x: Tensor, shape, name: str | None = None) -> Tensor:
    """x.reshape(shape) in logical (NCHW, row-major) order."""
    return reshape_op(x, shape=tuple(int(d) for d in shape), name=name)


def transpose(a: Tensor, name: str | None = None) -> Tensor:
    """The transpose of a 2-D tensor."""
    return transpose_op(a, name=name)
