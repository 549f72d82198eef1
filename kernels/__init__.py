"""Triton codelets of the triton backend, one module per op family (installed as
ipugraph.kernels from the repository's kernels/ directory), mirroring csrc/ and the backends:
conv, conv_grad, matmul, pool, pointwise (generated per fused chain), norm, reduce, loss,
shape, random; common.py holds the fused epilogue, precision, autotuning and the checks.

Every kernel takes torch tensors -- CUDA tensors on a GPU, CPU tensors under TRITON_INTERPRET=1
(Triton's interpreter) -- in the backend's storage layout: 4-D activations NHWC, everything else
row-major. Each host wrapper checks shapes, dtypes and devices and raises ValueError before a
launch.

Import after deciding TRITON_INTERPRET: @triton.jit reads it when these modules load.
"""
from .common import INTERPRET
from .matmul import matmul
from .conv import conv2d_nhwc, pack_weight
from .pool import avg_pool2d_nhwc, global_avg_pool_nhwc, max_pool2d_nhwc
from . import conv_grad, loss, norm, pointwise, random, reduce, shape  # noqa: F401

__all__ = ["INTERPRET", "matmul", "conv2d_nhwc", "pack_weight", "avg_pool2d_nhwc",
           "global_avg_pool_nhwc", "max_pool2d_nhwc", "conv_grad", "loss", "norm", "pointwise",
           "random", "reduce", "shape"]
