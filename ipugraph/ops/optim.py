"""Optimizer update ops (torch.optim semantics), elementwise over a parameter. Their results are
written back into the variables they update at the end of the run (Graph.assign; see
ipugraph/optim.py, which builds them). Scalars (the learning rate, Adam's step count) are shape
() tensors read at run time, so a fed learning rate can change every step."""
from __future__ import annotations

import numpy as np

from .registry import Cost, defop, elementwise_space, expect_float, fail


def _like_param(op):
    def infer(node, inputs, attrs):
        w = inputs[0]
        expect_float(op, node, **{f"input{i}": t for i, t in enumerate(inputs)})
        for i, t in enumerate(inputs[1:], 1):
            if t.shape != w.shape and t.size != 1:
                raise fail(op, node, f"input {i} must have the parameter's shape {w.shape} or "
                           "be a scalar", param=w, other=t)
        return [(w.shape, w.dtype)]
    return infer


def _cost(node) -> Cost:
    out = node.output
    return Cost(0, 4 * out.size, sum(t.nbytes for t in node.inputs), out.nbytes)


def _scalar(a):
    return np.asarray(a).reshape(())


@defop("sgd_direction", infer=_like_param("sgd_direction"), cost=_cost, space=elementwise_space,
       attrs={"momentum": 0.0, "weight_decay": 0.0}, elementwise=True)
def sgd_direction_op(g, w, v=None, *, momentum, weight_decay):
    """d = g + weight_decay·w (+ momentum·v): torch SGD's step direction, which with momentum
    (dampening 0) is also the new momentum buffer."""
    d = g + weight_decay * w
    return d if v is None else d + momentum * v


@defop("sgd_apply", infer=_like_param("sgd_apply"), cost=_cost, space=elementwise_space,
       elementwise=True)
def sgd_apply_op(w, d, lr):
    return w - _scalar(lr) * d


@defop("adam_moment", infer=_like_param("adam_moment"), cost=_cost, space=elementwise_space,
       attrs={"beta": 0.9, "square": False}, elementwise=True)
def adam_moment_op(m, g, *, beta, square):
    return beta * m + (1 - beta) * (g * g if square else g)


@defop("adam_apply", infer=_like_param("adam_apply"), cost=_cost, space=elementwise_space,
       attrs={"beta1": 0.9, "beta2": 0.999, "eps": 1e-8}, elementwise=True)
def adam_apply_op(w, m, v, lr, step, *, beta1, beta2, eps):
    """torch Adam: w - lr · m̂ / (sqrt(v̂) + eps), m̂ = m / (1 - β1^t), v̂ = v / (1 - β2^t)."""
    t = _scalar(step)
    m_hat = m / (1 - beta1 ** t)
    v_hat = v / (1 - beta2 ** t)
    return w - _scalar(lr) * m_hat / (np.sqrt(v_hat) + eps)
