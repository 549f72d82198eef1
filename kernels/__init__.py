"""Triton codelets of the triton backend, one module per op family (installed as
ipugraph.kernels from the repository's kernels/ directory).

Every kernel takes torch tensors -- CUDA tensors on a GPU, CPU tensors under TRITON_INTERPRET=1
(Triton's interpreter) -- in the backend's storage layout: 4-D activations NHWC, everything else
row-major. Each host wrapper checks shapes, dtypes and devices and raises ValueError before a
launch. See epilogue.py for the fused epilogue, precision (TF32 is opt-in) and autotuning.

Import after deciding TRITON_INTERPRET: @triton.jit reads it when these modules load.
"""
from .epilogue import INTERPRET
from .matmul import matmul
from .conv import conv2d_nhwc, pack_weight
from .pool import avg_pool2d_nhwc, global_avg_pool_nhwc, max_pool2d_nhwc
from .elementwise import add, channel_affine, fused_elementwise, relu, softmax_rows

__all__ = ["INTERPRET", "matmul", "conv2d_nhwc", "pack_weight", "avg_pool2d_nhwc",
           "global_avg_pool_nhwc", "max_pool2d_nhwc", "add", "channel_affine",
           "fused_elementwise", "relu", "softmax_rows"]
from . import conv_grad, train  # noqa: E402,F401  (training codelets: kernels.conv_grad.*, kernels.train.*)
