"""The loss codelets: softmax over rows (three passes over BLOCK_N columns: max, sum, write), its
gradient, and the softmax cross-entropy loss (per-row losses into a workspace, then an ordered
mean) with its gradient. One program per row; everything in fp32, stored in the output's
dtype; a label outside [0, K) gives NaN, never a stray read (and a ValueError on the host)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LAUNCH_OPTIONS, check_no_overlap, check_same, check_scalar, check_tensor, \
    configs, like

ROW_CONFIGS = configs([triton.Config({}, num_warps=4), triton.Config({}, num_warps=8)],
                      triton.Config({}))

SMALL_CONFIGS = configs([triton.Config({"BLOCK": 256}, num_warps=4)],
                        triton.Config({"BLOCK": 256}))

SOFTMAX_CONFIGS = configs(
    [triton.Config({}, num_warps=4),
     triton.Config({}, num_warps=8)],
    triton.Config({}))


@triton.jit
def _row_max_and_sum(x_row, n_cols, BLOCK_N: tl.constexpr):
    """max_k x[k] and sum_k exp(x[k] − max) of one contiguous row, in fp32."""
    cols = tl.arange(0, BLOCK_N)
    row_max = tl.full((BLOCK_N,), float("-inf"), dtype=tl.float32)
    for c0 in range(0, n_cols, BLOCK_N):
        x = tl.load(x_row + c0 + cols, mask=c0 + cols < n_cols, other=float("-inf"))
        row_max = tl.maximum(row_max, x.to(tl.float32))
    m = tl.max(row_max, axis=0)
    total = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for c0 in range(0, n_cols, BLOCK_N):
        x = tl.load(x_row + c0 + cols, mask=c0 + cols < n_cols, other=float("-inf"))
        total += tl.exp(x.to(tl.float32) - m)
    return m, tl.sum(total, axis=0)


@triton.autotune(configs=SOFTMAX_CONFIGS, restore_value=["out_ptr"],
                 key=["n_cols", "BLOCK_N"])
@triton.jit
def softmax_kernel(x_ptr, out_ptr, n_cols, stride_x, stride_out, BLOCK_N: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * stride_x
    out_row = out_ptr + row * stride_out
    cols = tl.arange(0, BLOCK_N)
    # Passes 1 and 2: the row's max (subtracted before exp, so exp never overflows), the
    # normaliser.
    m, denominator = _row_max_and_sum(x_row, n_cols, BLOCK_N)
    # Pass 3: write.
    for c0 in range(0, n_cols, BLOCK_N):
        mask = c0 + cols < n_cols
        x = tl.load(x_row + c0 + cols, mask=mask, other=float("-inf"))
        y = tl.exp(x.to(tl.float32) - m) / denominator
        tl.store(out_row + c0 + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=ROW_CONFIGS, restore_value=["out_ptr"], key=["n_cols", "BLOCK_N"])
@triton.jit
def softmax_backward_kernel(y_ptr, dy_ptr, out_ptr, n_cols, R1, R2, rs0, rs1, rs2, col_stride,
                            BLOCK_N: tl.constexpr):
    """Row rho = (a, b, d) of (_, R1, R2) starts at a·rs0 + b·rs1 + d·rs2; its columns are
    col_stride apart (y, dy and out share the layout). out = y · (dy − sum(dy · y))."""
    row = tl.program_id(0).to(tl.int64)
    base = (row // (R1 * R2)) * rs0 + ((row // R2) % R1) * rs1 + (row % R2) * rs2
    cols = tl.arange(0, BLOCK_N)
    total = tl.zeros((BLOCK_N,), dtype=tl.float32)
    for c0 in range(0, n_cols, BLOCK_N):
        mask = c0 + cols < n_cols
        offs = base + (c0 + cols).to(tl.int64) * col_stride
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        total += y * dy
    dot = tl.sum(total, axis=0)
    for c0 in range(0, n_cols, BLOCK_N):
        mask = c0 + cols < n_cols
        offs = base + (c0 + cols).to(tl.int64) * col_stride
        y = tl.load(y_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        dy = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        tl.store(out_ptr + offs, (y * (dy - dot)).to(out_ptr.dtype.element_ty), mask=mask)




@triton.autotune(configs=ROW_CONFIGS, restore_value=["loss_ptr"], key=["n_cols", "BLOCK_N"])
@triton.jit
def cross_entropy_rows_kernel(x_ptr, labels_ptr, loss_ptr, n_cols, BLOCK_N: tl.constexpr):
    """loss[n] = logsumexp(x[n]) − x[n, label[n]]; NaN (never a stray read) for a label
    outside [0, n_cols)."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * n_cols
    m, total = _row_max_and_sum(x_row, n_cols, BLOCK_N)
    label = tl.load(labels_ptr + row).to(tl.int64)
    ok = (label >= 0) & (label < n_cols)
    picked = tl.load(x_row + tl.where(ok, label, 0)).to(tl.float32)
    loss = m + tl.log(total) - picked
    tl.store(loss_ptr + row, tl.where(ok, loss, float("nan")))


@triton.autotune(configs=SMALL_CONFIGS, restore_value=["out_ptr"], key=["n"])
@triton.jit
def mean_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    """out[0] = mean of the fp32 vector x[0:n] (one program, in a fixed order)."""
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for i0 in range(0, n, BLOCK):
        acc += tl.load(x_ptr + i0 + offs, mask=i0 + offs < n, other=0.0)
    tl.store(out_ptr, (tl.sum(acc, axis=0) / n).to(out_ptr.dtype.element_ty))


@triton.autotune(configs=ROW_CONFIGS, restore_value=["out_ptr"], key=["n_cols", "BLOCK_N"])
@triton.jit
def cross_entropy_backward_kernel(x_ptr, labels_ptr, dloss_ptr, out_ptr, n_cols, inv_n,
                                  BLOCK_N: tl.constexpr):
    """out[n, k] = (softmax(x[n])[k] − [k == label[n]]) · dloss / N."""
    row = tl.program_id(0).to(tl.int64)
    x_row = x_ptr + row * n_cols
    m, total = _row_max_and_sum(x_row, n_cols, BLOCK_N)
    label = tl.load(labels_ptr + row).to(tl.int64)
    ok = (label >= 0) & (label < n_cols)
    scale = tl.load(dloss_ptr).to(tl.float32) * inv_n
    scale = tl.where(ok, scale, float("nan"))
    cols = tl.arange(0, BLOCK_N)
    for c0 in range(0, n_cols, BLOCK_N):
        mask = c0 + cols < n_cols
        x = tl.load(x_row + c0 + cols, mask=mask, other=float("-inf")).to(tl.float32)
        p = tl.exp(x - m) / total
        p = tl.where(c0 + cols == label, p - 1.0, p)
        tl.store(out_ptr + row * n_cols + c0 + cols, (p * scale).to(out_ptr.dtype.element_ty),
                 mask=mask)


# -- host side --------------------------------------------------------------------------------

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


def softmax_backward_rows(y, dy, out, rows_shape, row_strides, n_cols: int, col_stride: int):
    """out = y · (dy − sum(dy · y)) over rows of n_cols elements col_stride apart; rows
    indexed by rows_shape (up to 3 dims, row-major) with element strides row_strides. y, dy and
    out share one layout."""
    what = "softmax_backward"
    check_tensor(y, f"{what} y")
    check_same(dy, y, what, "dy")
    check_same(out, y, what, "out")
    check_no_overlap(out, what, y=y, dy=dy)
    if len(rows_shape) > 3 or len(rows_shape) != len(row_strides):
        raise ValueError(f"{what}: rows {rows_shape} / strides {row_strides}: up to 3 dims")
    rs = [1] * (3 - len(rows_shape)) + list(rows_shape)
    st = [0] * (3 - len(row_strides)) + list(row_strides)
    n_rows = rs[0] * rs[1] * rs[2]
    if n_rows * n_cols != y.numel():
        raise ValueError(f"{what}: {n_rows} rows of {n_cols} are not the {y.numel()} elements")
    if n_rows == 0 or n_cols == 0:
        return out
    block_n = min(triton.next_power_of_2(n_cols), 4096)
    softmax_backward_kernel[(n_rows,)](y, dy, out, n_cols, rs[1], rs[2], *st, col_stride,
                                       BLOCK_N=block_n, **LAUNCH_OPTIONS)
    return out


def _check_labels(logits, labels, what, check_values: bool):
    check_tensor(logits, f"{what} logits")
    if logits.dim() != 2:
        raise ValueError(f"{what}: logits must be [N, K], got {tuple(logits.shape)}")
    n, k = logits.shape
    check_tensor(labels, f"{what} labels", shape=(n,), device=logits.device,
                 dtype=labels.dtype if labels.dtype in (torch.int64, torch.int32) else
                 torch.int64)
    if n == 0 or k == 0:
        raise ValueError(f"{what}: logits {tuple(logits.shape)} has no rows or classes")
    capturing = logits.is_cuda and torch.cuda.is_current_stream_capturing()
    if check_values and not capturing:
        # Glue: two scalars to the host. (Under CUDA graph capture this check cannot run; the
        # kernels then give NaN for a bad label and never read outside the row.)
        lo, hi = int(labels.min()), int(labels.max())
        for bad in (lo, hi):
            if not 0 <= bad < k:
                raise ValueError(f"{what}: label {bad} is outside [0, {k}) (K = {k} classes)")
    return n, k


def cross_entropy(logits, labels, out=None, *, check_labels: bool = True, workspace=None):
    """mean_n (logsumexp(logits[n]) − logits[n, labels[n]]) -> out () fp32 (or out's dtype)."""
    what = "cross_entropy"
    n, k = _check_labels(logits, labels, what, check_labels)
    if out is None:
        out = torch.empty((), dtype=torch.float32, device=logits.device)
    check_tensor(out, f"{what} out", shape=(), device=logits.device)
    if workspace is None:
        workspace = torch.empty((n,), dtype=torch.float32, device=logits.device)
    check_tensor(workspace, f"{what} workspace", shape=(n,), dtype=torch.float32,
                 device=logits.device)
    block_n = min(triton.next_power_of_2(k), 4096)
    cross_entropy_rows_kernel[(n,)](logits, labels, workspace, k, BLOCK_N=block_n,
                                    **LAUNCH_OPTIONS)
    mean_kernel[(1,)](workspace, out, n, **LAUNCH_OPTIONS)
    return out


def cross_entropy_backward(logits, labels, dloss, out=None, *, check_labels: bool = True):
    """(softmax(logits) − onehot(labels)) · dloss / N."""
    what = "cross_entropy_backward"
    n, k = _check_labels(logits, labels, what, check_labels)
    check_scalar(dloss, what, "dloss", logits.device)
    out = like(logits, out, what)
    check_no_overlap(out, what, logits=logits)
    block_n = min(triton.next_power_of_2(k), 4096)
    cross_entropy_backward_kernel[(n,)](logits, labels, dloss, out, k, 1.0 / n,
                                        BLOCK_N=block_n, **LAUNCH_OPTIONS)
    return out
