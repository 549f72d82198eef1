"""softmax over the last axis, computed stably (subtract the row max before exp), its gradient,
and the softmax cross-entropy loss (stable log-sum-exp) with its gradient."""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from ..space import flat_region
from .registry import (Cost, Dim, Space, defop, expect_float, expect_rank, fail, grad_name,
                       rows_space, scalar_space)


def _softmax_infer(node, inputs, attrs):
    (x,) = inputs
    expect_float("softmax", node, x=x)
    if attrs["axis"] not in (-1, x.ndim - 1):
        raise fail("softmax", node, f"only the last axis is supported, got axis={attrs['axis']}",
                   x=x)
    return [(x.shape, x.dtype)]


def _softmax_space(node, target) -> Space:
    x = node.inputs[0]
    cols = x.shape[-1]

    def slice_cost(sizes):
        b = sizes[..., 0] * cols * x.itemsize
        return sizes[..., 0] * cols * 4, b, np.zeros_like(b), b
    def boxes(table):
        region = flat_region(x.shape, table[:, 0] * cols, table[:, 1] * cols)
        return region, [(x, region)]
    return Space((Dim("row", x.size // cols),), slice_cost, boxes)


@defop("softmax", infer=_softmax_infer, space=_softmax_space, attrs={"axis": -1},
       cost=lambda node: Cost(0, 4 * node.output.size, node.inputs[0].nbytes, node.output.nbytes))
def softmax_op(x, *, axis):
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def softmax(x: Tensor, axis: int = -1, name: str | None = None) -> Tensor:
    return softmax_op(x, axis=int(axis), name=name)


def _rows(node, target):
    y = node.output
    return rows_space(node, target, y.size // y.shape[-1], y.shape[-1])


def _softmax_backward_infer(node, inputs, attrs):
    y, dy = inputs
    expect_float("softmax_backward", node, y=y, dy=dy)
    if y.shape != dy.shape:
        raise fail("softmax_backward", node, "y and dy must have the same shape", y=y, dy=dy)
    return [(y.shape, y.dtype)]


@defop("softmax_backward", infer=_softmax_backward_infer, space=_rows,
       cost=lambda node: Cost(0, 4 * node.output.size, 2 * node.output.nbytes,
                              node.output.nbytes))
def softmax_backward_op(y, dy):
    return y * (dy - (dy * y).sum(axis=-1, keepdims=True))


softmax_op.grad = lambda node, dy, needs: [
    softmax_backward_op(node.output, dy, name=grad_name(node, "grad_x"))]


# -- the loss ---------------------------------------------------------------------------------

def _check_labels(op, node, logits, labels):
    expect_rank(op, node, "logits", logits, (2,))
    expect_float(op, node, logits=logits)
    if labels.dtype not in ("int64", "int32") or labels.shape != (logits.shape[0],):
        raise fail(op, node, f"labels must be int64 (or int32) of shape ({logits.shape[0]},), "
                   "one class index per row of logits", logits=logits, labels=labels)


def _ce_infer(node, inputs, attrs):
    logits, labels = inputs
    _check_labels("cross_entropy", node, logits, labels)
    return [((), logits.dtype)]


def check_label_range(op, labels, k):
    bad = (labels < 0) | (labels >= k)
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{op}: label {int(labels[i])} of row {i} is outside [0, {k}) "
                         f"(logits have {k} classes)")


def _log_softmax(logits):
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


@defop("cross_entropy", infer=_ce_infer, space=scalar_space,
       cost=lambda node: Cost(0, 4 * node.inputs[0].size, node.inputs[0].nbytes, 8))
def cross_entropy_op(logits, labels):
    """mean over rows of logsumexp(logits[n]) - logits[n, labels[n]] (torch's cross_entropy)."""
    check_label_range("cross_entropy", labels, logits.shape[1])
    logp = _log_softmax(logits)
    return np.asarray(-logp[np.arange(len(labels)), labels].mean(), dtype=logits.dtype)


def _ce_backward_infer(node, inputs, attrs):
    logits, labels, dloss = inputs
    _check_labels("cross_entropy_backward", node, logits, labels)
    if dloss.size != 1:
        raise fail("cross_entropy_backward", node, "dloss must be a scalar", dloss=dloss)
    return [(logits.shape, logits.dtype)]


@defop("cross_entropy_backward", infer=_ce_backward_infer, space=_rows,
       cost=lambda node: Cost(0, 5 * node.output.size, node.inputs[0].nbytes,
                              node.output.nbytes))
def cross_entropy_backward_op(logits, labels, dloss):
    """(softmax(logits) - onehot(labels)) * dloss / N."""
    check_label_range("cross_entropy_backward", labels, logits.shape[1])
    p = np.exp(_log_softmax(logits))
    p[np.arange(len(labels)), labels] -= 1
    return p * (np.asarray(dloss).reshape(()) / len(labels))


cross_entropy_op.grad = lambda node, dy, needs: [
    cross_entropy_backward_op(node.inputs[0], node.inputs[1], dy,
                              name=grad_name(node, "grad_logits")), None]


def cross_entropy(logits: Tensor, labels: Tensor, name: str | None = None) -> Tensor:
    """Softmax cross-entropy, mean over the batch (torch.nn.functional.cross_entropy):
    logits [N, K] float, labels [N] int64 class indices -> a scalar."""
    return cross_entropy_op(logits, labels, name=name)
