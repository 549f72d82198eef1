"""batch_norm in its inference form: y = (x - mean) / sqrt(var + eps) * gamma + beta, per channel
(axis 1). Backends may fold it into the preceding conv's weights and bias."""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from .registry import Cost, defop, elementwise_space, expect_float, expect_rank, fail


def _bn_infer(node, inputs, attrs):
    x, gamma, beta, mean, var = inputs
    expect_rank("batch_norm", node, "x", x, (2, 3, 4))
    expect_float("batch_norm", node, x=x, gamma=gamma, beta=beta, mean=mean, var=var)
    c = x.shape[1]
    for role, t in (("gamma", gamma), ("beta", beta), ("running_mean", mean),
                    ("running_var", var)):
        if t.shape != (c,):
            raise fail("batch_norm", node, f"{role} must have shape ({c},) for x's {c} channels",
                       x=x, **{role: t})
    if not attrs["eps"] > 0:
        raise fail("batch_norm", node, f"eps must be > 0, got {attrs['eps']}")
    return [(x.shape, x.dtype)]


def _bn_cost(node) -> Cost:
    x = node.inputs[0]
    return Cost(0, 2 * x.size, sum(t.nbytes for t in node.inputs), node.output.nbytes)


def bn_scale_shift(gamma, beta, mean, var, eps):
    """The per-channel affine form of inference BN: y = x * scale + shift."""
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


@defop("batch_norm", infer=_bn_infer, cost=_bn_cost, space=elementwise_space,
       attrs={"eps": 1e-5}, elementwise=True)
def batch_norm_op(x, gamma, beta, mean, var, *, eps):
    scale, shift = bn_scale_shift(gamma, beta, mean, var, eps)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return x * scale.reshape(shape) + shift.reshape(shape)


def batch_norm(x: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor, var: Tensor,
               eps: float = 1e-5, name: str | None = None) -> Tensor:
    return batch_norm_op(x, gamma, beta, mean, var, eps=float(eps), name=name)
