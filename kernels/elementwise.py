"""Elementwise codelets: relu, add, the per-channel affine of a standalone batch norm, and
softmax over rows.

relu, add and batch norm are one kernel, the fused epilogue applied to a flat tensor:

    y[i] = x[i] · scale[c(i)] + shift[c(i)]    (HAS_AFFINE; c(i) = (i // INNER) % C)
    y[i] = y[i] + residual[i]                   (HAS_RES)
    y[i] = max(y[i], 0)                         (RELU)

so relu is (RELU), add is (HAS_RES), batch norm is (HAS_AFFINE) and any combination is one
pass. The channel of element i is (i // INNER) % C: INNER = 1 when channels are the innermost
dimension (NHWC activations, [N, C] matrices), INNER = L for an [N, C, L] tensor.

softmax works on rows: out[i, :] = exp(x[i, :] − max x[i, :]) / sum exp(x[i, :] − max x[i, :]),
one program per row, any row length (three passes over BLOCK_N columns: max, sum, write).
Everything is computed in fp32 and stored in the output's dtype.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .epilogue import LAUNCH_OPTIONS, check_tensor, configs

ELEMENTWISE_CONFIGS = configs(
    [triton.Config({"BLOCK": 1024}, num_warps=4),
     triton.Config({"BLOCK": 4096}, num_warps=8)],
    triton.Config({"BLOCK": 1024}))

SOFTMAX_CONFIGS = configs(
    [triton.Config({}, num_warps=4),
     triton.Config({}, num_warps=8)],
    triton.Config({}))


@triton.autotune(configs=ELEMENTWISE_CONFIGS, restore_value=["out_ptr"], key=["numel"])
@triton.jit
def elementwise_kernel(x_ptr, scale_ptr, shift_ptr, res_ptr, out_ptr, numel, C, INNER,
                       HAS_AFFINE: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
                       BLOCK: tl.constexpr):
    pid = tl.program_id(0)
    offs = pid.to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    y = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_AFFINE:
        c = (offs // INNER) % C
        scale = tl.load(scale_ptr + c, mask=mask, other=0.0).to(tl.float32)
        shift = tl.load(shift_ptr + c, mask=mask, other=0.0).to(tl.float32)
        y = y * scale + shift
    if HAS_RES:
        y += tl.load(res_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if RELU:
        y = tl.maximum(y, 0.0)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=SOFTMAX_CONFIGS, restore_value=["out_ptr"],
                 key=["n_cols", "BLOCK_N"])
@triton.jit
def softmax_kernel(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    out_row = out_ptr + row * stride_out
    cols = tl.arange(0, BLOCK_N)
    # Pass 1: the row's max (subtracted before exp, so exp never overflows).
    row_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    for c0 in range(0, n_cols, BLOCK_N):
        x = tl.load(x_row + c0 + cols, mask=c0 + cols < n_cols, other=float("-inf"))
        row_max = tl.maximum(row_max, x.to(tl.float32))
    m = tl.max(row_max, axis=0)
    # Pass 2: the normaliser.
    total = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for c0 in range(0, n_cols, BLOCK_N):
        x = tl.load(x_row + c0 + cols, mask=c0 + cols < n_cols, other=float("-inf"))
        total += tl.exp(x.to(tl.float32) - m)
    denominator = tl.sum(total, axis=0)
    # Pass 3: write.
    for c0 in range(0, n_cols, BLOCK_N):
        mask = c0 + cols < n_cols
        x = tl.load(x_row + c0 + cols, mask=mask, other=float("-inf"))
        y = tl.exp(x.to(tl.float32) - m) / denominator
        tl.store(out_row + c0 + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


# -- host side -------------------------------------------------------------------------------

def fused_elementwise(x: torch.Tensor, out: torch.Tensor | None = None, *, scale=None,
                      shift=None, channels: int = 1, inner: int = 1, residual=None,
                      relu: bool = False) -> torch.Tensor:
    """relu?(x · scale[c] + shift[c] + residual) elementwise over contiguous x (see the
    module docstring for c); scale and shift are [channels] (both or neither)."""
    check_tensor(x, "elementwise x")
    if out is None:
        out = torch.empty_like(x)
    check_tensor(out, "elementwise out", shape=tuple(x.shape), dtype=x.dtype, device=x.device)
    if (scale is None) != (shift is None):
        raise ValueError("elementwise: pass both scale and shift, or neither")
    if scale is not None:
        if channels < 1 or inner < 1 or x.numel() % (channels * inner):
            raise ValueError(f"elementwise: {x.numel()} elements are not whole rows of "
                             f"{channels} channels × {inner}")
        check_tensor(scale, "elementwise scale", shape=(channels,), device=x.device)
        check_tensor(shift, "elementwise shift", shape=(channels,), device=x.device)
    if residual is not None:
        check_tensor(residual, "elementwise residual", shape=tuple(x.shape), dtype=x.dtype,
                     device=x.device)
    numel = x.numel()

    def grid(meta):
        return (triton.cdiv(numel, meta["BLOCK"]),)
    elementwise_kernel[grid](x, scale, shift, residual, out, numel, channels, inner,
                             HAS_AFFINE=scale is not None, HAS_RES=residual is not None,
                             RELU=bool(relu), **LAUNCH_OPTIONS)
    return out


def relu(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    return fused_elementwise(x, out, relu=True)


def add(a: torch.Tensor, b: torch.Tensor, out: torch.Tensor | None = None, *,
        relu: bool = False) -> torch.Tensor:
    return fused_elementwise(a, out, residual=b, relu=relu)


def channel_affine(x: torch.Tensor, scale: torch.Tensor, shift: torch.Tensor,
                   out: torch.Tensor | None = None, *, channels: int, inner: int = 1,
                   relu: bool = False) -> torch.Tensor:
    """x · scale[c] + shift[c]: an inference batch norm with scale = γ/√(σ²+ε),
    shift = β − μ·scale."""
    return fused_elementwise(x, out, scale=scale, shift=shift, channels=channels, inner=inner,
                             relu=relu)


def softmax_rows(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax over the last dim of a contiguous x (any rank; rows are all other dims)."""
    check_tensor(x, "softmax x")
    if out is None:
        out = torch.empty_like(x)
    check_tensor(out, "softmax out", shape=tuple(x.shape), dtype=x.dtype, device=x.device)
    n_cols = x.shape[-1] if x.dim() else 1
    n_rows = x.numel() // max(n_cols, 1)
    block_n = min(triton.next_power_of_2(n_cols), 4096)
    softmax_kernel[(n_rows,)](x, out, n_cols, n_cols, n_cols, BLOCK_N=block_n, **LAUNCH_OPTIONS)
    return out
