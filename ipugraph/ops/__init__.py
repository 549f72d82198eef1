"""The op vocabulary. Each family module defines its ops once (shape rule, NumPy reference,
cost, tiling space, gradient); this package re-exports the graph-building functions."""
from .registry import OPS, Cost, Dim, OpDef, Space, defop, get
from .conv import conv2d
from .norm import batch_norm, batch_norm_train
from .elementwise import add, relu
from .pool import avg_pool2d, global_avg_pool, max_pool2d
from .linalg import linear, matmul
from .reduce import channel_sum, select
from .shape import flatten, reshape, transpose
from .softmax import cross_entropy, softmax
from . import optim as _optim  # noqa: F401  (registers the optimizer update ops)

__all__ = ["OPS", "Cost", "Dim", "OpDef", "Space", "defop", "get", "conv2d", "batch_norm",
           "batch_norm_train", "add", "relu", "avg_pool2d", "global_avg_pool", "max_pool2d",
           "linear", "matmul", "channel_sum", "select", "flatten", "reshape", "transpose",
           "cross_entropy", "softmax"]
