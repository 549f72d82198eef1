"""matmul and linear on the triton backend (kernels/matmul.py): B packed [K, N] (linear's
weight transposed), an inference batch norm folded in, ReLU in the kernel's epilogue and the
rest of a fused chain in one generated kernel after it."""
from __future__ import annotations

from ..registry import lowering
from .common import Context, Kernel, Weights
from .pointwise import anchor_epilogue, program_epilogue, then


def _gemm_triton(ctx: Context, cs, transposed: bool) -> Kernel:
    node = cs.anchor
    a_t, w_t = node.inputs[0], node.inputs[1]
    b_t = node.inputs[2] if len(node.inputs) > 2 else None
    m, n = cs.output.shape
    kred = a_t.shape[1]
    a = ctx.storage(a_t)
    out = ctx.storage(cs.output)
    res, relu, rest = anchor_epilogue(ctx, cs)
    if res is not None:                      # (the gemm kernel takes no residual)
        res, relu, rest = None, False, program_epilogue(ctx, cs)
    weights = Weights(ctx, cs, w_t, b_t, 0 if transposed else 1, (kred, n),
                      (lambda w: w.t()) if transposed else (lambda w: w))
    matmul = ctx.kernels.matmul

    def run():
        matmul(a, weights.packed, weights.bias, None, out, relu=relu, allow_tf32=ctx.allow_tf32)
    return Kernel(node.name, then(run, rest), **weights.kernel_fields())


@lowering("linear", backend="triton")
def linear_triton(ctx, cs) -> Kernel:
    return _gemm_triton(ctx, cs, transposed=True)


@lowering("matmul", backend="triton")
def matmul_triton(ctx, cs) -> Kernel:
    return _gemm_triton(ctx, cs, transposed=False)
