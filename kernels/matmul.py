"""Matrix multiplication with a fused epilogue: out = relu?(a @ b + bias + residual).

    out[m, n] = sum_k a[m, k] · b[k, n]   (+ bias[n])   (+ residual[m, n])   (then ReLU)

This is the Triton tutorial's blocked GEMM: each program computes one [BLOCK_M, BLOCK_N] tile
of ``out``, walking K in steps of BLOCK_K with an fp32 accumulator; programs are launched in
groups of GROUP_M tile-rows so that neighbouring programs reuse the same columns of ``b`` from
L2. ``a`` and ``b`` may have any strides (``linear``'s weight [N, K] is passed as its transposed
view), ``out`` and ``residual`` have contiguous rows.

It serves matmul, linear (weights packed [K, N] and batch norm folded at compile by the
backend) and 1×1 stride-1 convolutions, which on NHWC storage *are* this GEMM:
x[N·H·W, C] @ w[C, K].
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LAUNCH_OPTIONS, check_epilogue, check_no_overlap, check_tensor, \
    configs, dot_in_fp32, input_precision, store_epilogue

MATMUL_CONFIGS = configs(
    [triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8},
                   num_warps=8, num_stages=3),
     triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8},
                   num_warps=4, num_stages=4),
     triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32, "GROUP_M": 8},
                   num_warps=4, num_stages=4),
     triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 8},
                   num_warps=4, num_stages=4)],
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64, "GROUP_M": 4}))


@triton.autotune(configs=MATMUL_CONFIGS, restore_value=["out_ptr"],
                 key=["M", "N", "K", "INPUT_PRECISION"])
@triton.jit
def matmul_kernel(
        a_ptr, b_ptr, bias_ptr, res_ptr, out_ptr,
        M, N, K,
        stride_am, stride_ak, stride_bk, stride_bn, stride_res_m, stride_out_m,
        HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
        INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
        GROUP_M: tl.constexpr):
    # Grouped ordering of the 1-D launch grid over output tiles (better L2 reuse).
    pid = tl.program_id(0)
    num_pid_m = tl.cdiv(M, BLOCK_M)
    num_pid_n = tl.cdiv(N, BLOCK_N)
    pids_in_group = GROUP_M * num_pid_n
    first_m = (pid // pids_in_group) * GROUP_M
    group_rows = min(num_pid_m - first_m, GROUP_M)
    pid_m = first_m + (pid % pids_in_group) % group_rows
    pid_n = (pid % pids_in_group) // group_rows

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < N
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_k[None, :] * stride_ak
    b_ptrs = b_ptr + offs_k[:, None] * stride_bk + offs_n[None, :] * stride_bn

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        k_ok = offs_k < K - k0
        a = tl.load(a_ptrs, mask=mask_m[:, None] & k_ok[None, :], other=0.0)
        b = tl.load(b_ptrs, mask=k_ok[:, None] & mask_n[None, :], other=0.0)
        if DOT_IN_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
        a_ptrs += BLOCK_K * stride_ak
        b_ptrs += BLOCK_K * stride_bk

    store_epilogue(acc, offs_m, offs_n, mask_m, mask_n, bias_ptr, res_ptr, stride_res_m,
                   out_ptr, stride_out_m, HAS_BIAS, HAS_RES, RELU)


def matmul(a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None,
           residual: torch.Tensor | None = None, out: torch.Tensor | None = None, *,
           relu: bool = False, allow_tf32: bool = False) -> torch.Tensor:
    """relu?(a @ b + bias + residual) into `out` ([M, N], a's dtype; allocated if None).

    a: [M, K], b: [K, N] of a's dtype (any strides); bias: [N] (any float dtype, added in
    fp32); residual: [M, N] like out. Accumulates in fp32; fp32 inputs use IEEE fp32 dots
    unless allow_tf32."""
    check_tensor(a, "matmul a", contiguous=False)
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: shapes {tuple(a.shape)} @ {tuple(b.shape)} do not chain")
    check_tensor(b, "matmul b", dtype=a.dtype, device=a.device, contiguous=False)
    m, k = a.shape
    n = b.shape[1]
    if out is None:
        out = torch.empty((m, n), dtype=a.dtype, device=a.device)
    check_tensor(out, "matmul out", shape=(m, n), dtype=a.dtype, device=a.device)
    check_epilogue(out, bias, residual, n, "matmul")
    check_no_overlap(out, "matmul", a=a, b=b)

    def grid(meta):
        return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

    matmul_kernel[grid](
        a, b, bias, residual, out, m, n, k,
        a.stride(0), a.stride(1), b.stride(0), b.stride(1),
        n if residual is None else residual.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, HAS_RES=residual is not None, RELU=bool(relu),
        INPUT_PRECISION=input_precision(allow_tf32), DOT_IN_FP32=dot_in_fp32(a.dtype),
        **LAUNCH_OPTIONS)
    return out
