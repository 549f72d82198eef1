"""flatten: merge dims start_dim..end of a tensor (torch.flatten), in row-major (NCHW) order."""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from .registry import Cost, defop, elementwise_space, fail


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
