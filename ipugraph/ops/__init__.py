"""The op vocabulary. Each family module defines its ops once (shape rule, NumPy reference,
cost, tiling space); this package re-exports the graph-building functions."""
from .registry import OPS, Cost, Dim, OpDef, Space, defop, get
from .conv import conv2d
from .norm import batch_norm
from .elementwise import add, relu
from .pool import avg_pool2d, global_avg_pool, max_pool2d
from .linalg import linear, matmul
from .shape import flatten
from .softmax import softmax

__all__ = ["OPS", "Cost", "Dim", "OpDef", "Space", "defop", "get", "conv2d", "batch_norm",
           "add", "relu", "avg_pool2d", "global_avg_pool", "max_pool2d", "linear", "matmul",
           "flatten", "softmax"]
