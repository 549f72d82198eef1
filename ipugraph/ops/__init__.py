"""The op vocabulary. Each family module defines its ops once (shape rule, NumPy reference,
cost, tiling space, gradient); this package re-exports the graph-building functions.

Pointwise (ops/pointwise.py, a table: NumPy broadcasting, Tensors or Python scalars):
  unary    neg abs exp log sqrt rsqrt reciprocal sigmoid tanh relu (+ erf)
  binary   add sub mul div maximum minimum pow greater less equal
  where(cond, a, b), expand(x, shape), cast(x, dtype)
  composites  clip gelu silu hardswish hardsigmoid relu6 leaky_relu elu softplus
Structural: concat split slice pad upsample select flatten reshape transpose;
  sum mean amax channel_sum; layer_norm batch_norm batch_norm_train; dropout
Networks: conv2d matmul linear max_pool2d avg_pool2d global_avg_pool softmax cross_entropy
"""
from .registry import OPS, Cost, Dim, OpDef, Space, defop, get
from . import pointwise
from .pointwise import (FUNCTIONS as _POINTWISE, PRIMITIVES, cast, clip, elu, expand, gelu,
                        hardsigmoid, hardswish, leaky_relu, relu6, silu, softplus)
from .conv import conv2d
from .norm import batch_norm, batch_norm_train, layer_norm
from .pool import avg_pool2d, global_avg_pool, max_pool2d
from .linalg import linear, matmul
from .reduce import amax, channel_sum, mean, sum  # noqa: A004
from .shape import (concat, flatten, pad, reshape, select, slice, split,  # noqa: A004
                    transpose, upsample)
from .softmax import cross_entropy, softmax
from .random import dropout

# The primitives' functions (neg, add, where, ...), one per table entry.
globals().update({name: fn for name, fn in _POINTWISE.items() if name in PRIMITIVES})

__all__ = ["OPS", "Cost", "Dim", "OpDef", "Space", "defop", "get", "PRIMITIVES", "conv2d",
           "batch_norm", "batch_norm_train", "layer_norm", "avg_pool2d", "global_avg_pool",
           "max_pool2d", "linear", "matmul", "amax", "channel_sum", "mean", "sum", "concat",
           "flatten", "pad", "reshape", "select", "slice", "split", "transpose", "upsample",
           "cross_entropy", "softmax", "dropout", "cast", "clip", "elu", "expand", "gelu",
           "hardsigmoid", "hardswish", "leaky_relu", "relu6", "silu", "softplus",
           *PRIMITIVES]
