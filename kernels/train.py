"""Triton codelets of the training ops other than the conv gradients (see conv_grad.py).

Layout. 4-D tensors are stored NHWC, everything else row-major. A per-channel op sees its
tensor as (OUTER, C, INNER) row-major: an NHWC activation or an [N, C] matrix is
(N·H·W or N, C, 1) -- the channel innermost -- and an [N, C, L] tensor is (N, C, L). Element
i's channel is (i // INNER) % C.

Kernels (every one computes in fp32 and stores in its output's dtype):

* pool backward: max_pool2d_backward in two passes -- the first maximum's tap of every window
  (int32 [N, OH, OW, C]), then a gather over each dx pixel's taps (deterministic, no atomics);
  avg_pool2d_backward as one gather.
* per-channel reductions (bn_stats, bn_grad_stats, channel_sum): each program sums a
  [rows, BLOCK_C] tile over a chunk of the rows into an fp32 workspace [SPLIT, 2, C]; a second
  kernel sums the SPLIT partials in order and scales. bn_stats is two such rounds (the mean,
  then the mean of squared deviations from it: no E[x²] − E[x]² cancellation).
* elementwise (one kernel, an OP switch): batch_norm_train, batch_norm_backward,
  running_stat_update, relu_backward, sgd_direction, sgd_apply, adam_moment, adam_apply.
  Scalars (lr, Adam's bias corrections) are read from device tensors, never synchronised.
* strided_copy: a layout change (reshape in logical order, transpose, select) as a gather
  through up-to-4-D (shape, strides) views of the source and destination.
* rows (one program per row, several passes of BLOCK_N columns): softmax_backward (the rows
  may be strided, as the last logical axis of an NHWC tensor is), cross_entropy (per-row losses
  into a workspace, then an ordered mean) and cross_entropy_backward.
"""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from .epilogue import INTERPRET, LAUNCH_OPTIONS, check_no_overlap, check_tensor, configs, \
    decode_pixels, pair

POOL_CONFIGS = configs(
    [triton.Config({"BLOCK_M": 32, "BLOCK_C": 64}, num_warps=4),
     triton.Config({"BLOCK_M": 64, "BLOCK_C": 32}, num_warps=4),
     triton.Config({"BLOCK_M": 16, "BLOCK_C": 128}, num_warps=4)],
    triton.Config({"BLOCK_M": 32, "BLOCK_C": 16}))

REDUCE_CONFIGS = configs(
    [triton.Config({"BLOCK_R": 64, "BLOCK_C": 64}, num_warps=4),
     triton.Config({"BLOCK_R": 32, "BLOCK_C": 128}, num_warps=4),
     triton.Config({"BLOCK_R": 128, "BLOCK_C": 32}, num_warps=4)],
    triton.Config({"BLOCK_R": 32, "BLOCK_C": 16}))

FLAT_CONFIGS = configs(
    [triton.Config({"BLOCK": 1024}, num_warps=4),
     triton.Config({"BLOCK": 4096}, num_warps=8)],
    triton.Config({"BLOCK": 1024}))

SMALL_CONFIGS = configs([triton.Config({"BLOCK": 256}, num_warps=4)],
                        triton.Config({"BLOCK": 256}))

ROW_CONFIGS = configs([triton.Config({}, num_warps=4), triton.Config({}, num_warps=8)],
                      triton.Config({}))


# == pooling backward ===========================================================================

@triton.autotune(configs=POOL_CONFIGS, restore_value=["arg_ptr"],
                 key=["M", "C", "KH", "KW", "stride_h", "stride_w"])
@triton.jit
def max_pool_argmax_kernel(x_ptr, arg_ptr, H, W, C, OH, OW, M, KH, KW,
                           stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                           BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """arg[n, oh, ow, c] = r·KW + s of the window's first maximum in scan order (strictly
    greater replaces; padding never wins; an all -inf window picks its first real tap)."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < M
    mask_c = offs_c < C
    ih0, iw0, x_pix = decode_pixels(offs_m, H, W, C, OH, OW, stride_h, stride_w, pad_h, pad_w)
    best = tl.full((BLOCK_M, BLOCK_C), float("-inf"), dtype=tl.float32)
    arg = tl.full((BLOCK_M, BLOCK_C), -1, dtype=tl.int32)
    for r in range(KH):
        ih = ih0 + r * dil_h
        row_ok = mask_m & (ih >= 0) & (ih < H)
        for s in range(KW):
            iw = iw0 + s * dil_w
            pix_ok = row_ok & (iw >= 0) & (iw < W)
            mask = pix_ok[:, None] & mask_c[None, :]
            v = tl.load(x_ptr + (x_pix + (ih * W + iw) * C)[:, None] + offs_c[None, :],
                        mask=mask, other=float("-inf")).to(tl.float32)
            take = mask & ((v > best) | (arg < 0) | ((v != v) & (best == best)))
            best = tl.where(take, v, best)
            arg = tl.where(take, r * KW + s, arg)
    tl.store(arg_ptr + offs_m.to(tl.int64)[:, None] * C + offs_c[None, :], arg,
             mask=mask_m[:, None] & mask_c[None, :])


@triton.jit
def _window_of(pos, pad, tap, dil, stride, OUT):
    """The output row/column whose window reads `pos` through tap `tap`, and whether it exists."""
    num = pos + pad - tap * dil
    src = num // stride
    ok = (num >= 0) & (num - src * stride == 0) & (src < OUT)
    return src, ok


@triton.autotune(configs=POOL_CONFIGS, restore_value=["dx_ptr"],
                 key=["M", "C", "KH", "KW", "stride_h", "stride_w", "IS_MAX"])
@triton.jit
def pool_backward_kernel(dy_ptr, arg_ptr, dx_ptr, H, W, C, OH, OW, M, KH, KW,
                         stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                         IS_MAX: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx[n, h, w, c] = sum over the windows (oh, ow) that read (h, w) through tap (r, s) of
    dy[n, oh, ow, c] · [arg == r·KW + s] (max) or / count(oh, ow) (average)."""
    pid_m = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_m = offs_m < M
    mask_c = offs_c < C
    w = offs_m % W
    h = (offs_m // W) % H
    img = (offs_m // (W * H)).to(tl.int64) * OH * OW * C
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for r in range(KH):
        oh, oh_ok = _window_of(h, pad_h, r, dil_h, stride_h, OH)
        row_ok = mask_m & oh_ok
        for s in range(KW):
            ow, ow_ok = _window_of(w, pad_w, s, dil_w, stride_w, OW)
            pix_ok = row_ok & ow_ok
            mask = pix_ok[:, None] & mask_c[None, :]
            offs = (img + (oh * OW + ow) * C)[:, None] + offs_c[None, :]
            g = tl.load(dy_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            if IS_MAX:
                a = tl.load(arg_ptr + offs, mask=mask, other=-1)
                acc += tl.where(a == r * KW + s, g, 0.0)
            else:
                if COUNT_INCLUDE_PAD:
                    count = KH * KW + tl.zeros_like(oh)
                else:
                    h0 = oh * stride_h - pad_h
                    w0 = ow * stride_w - pad_w
                    rows = tl.minimum(h0 + KH, H) - tl.maximum(h0, 0)
                    cols = tl.minimum(w0 + KW, W) - tl.maximum(w0, 0)
                    count = tl.maximum(rows * cols, 1)
                acc += g / count.to(tl.float32)[:, None]
    tl.store(dx_ptr + offs_m.to(tl.int64)[:, None] * C + offs_c[None, :],
             acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])


# == per-channel reductions =====================================================================

SUM_X = tl.constexpr(0)            # part0 = sum x
SUM_SQ_DEV = tl.constexpr(1)       # part0 = sum (x - mean)^2          (mean: stats row 0)
SUM_GRAD = tl.constexpr(2)         # part0 = sum dy, part1 = sum dy · xhat


@triton.autotune(configs=REDUCE_CONFIGS, restore_value=["part_ptr"],
                 key=["ROWS", "C", "INNER", "SPLIT", "MODE"])
@triton.jit
def channel_partials_kernel(a_ptr, b_ptr, stats_ptr, part_ptr, ROWS, C, INNER, SPLIT,
                            ROWS_PER_SPLIT, eps, MODE: tl.constexpr,
                            BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    """part[split, j, c] for the rows rho = (o, i) of the split's chunk; element
    (o, c, i) is at (o·C + c)·INNER + i."""
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_c = offs_c < C
    if MODE != SUM_X:
        mean = tl.load(stats_ptr + offs_c, mask=mask_c, other=0.0).to(tl.float32)
    if MODE == SUM_GRAD:
        var = tl.load(stats_ptr + C + offs_c, mask=mask_c, other=0.0).to(tl.float32)
        invstd = 1.0 / tl.sqrt_rn(var + eps)
    r_lo = split * ROWS_PER_SPLIT
    r_hi = tl.minimum(r_lo + ROWS_PER_SPLIT, ROWS)
    acc0 = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    acc1 = tl.zeros((BLOCK_R, BLOCK_C), dtype=tl.float32)
    for r0 in range(r_lo, r_hi, BLOCK_R):
        rows = (r0 + tl.arange(0, BLOCK_R)).to(tl.int64)
        mask = (rows < r_hi)[:, None] & mask_c[None, :]
        offs = ((rows // INNER) * C * INNER + rows % INNER)[:, None] + (offs_c * INNER)[None, :]
        a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if MODE == SUM_X:
            acc0 += a
        elif MODE == SUM_SQ_DEV:
            d = tl.where(mask, a - mean[None, :], 0.0)
            acc0 += d * d
        else:
            b = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            acc0 += a
            acc1 += tl.where(mask, a * ((b - mean[None, :]) * invstd[None, :]), 0.0)
    base = part_ptr + split * 2 * C
    tl.store(base + offs_c, tl.sum(acc0, axis=0), mask=mask_c)
    if MODE == SUM_GRAD:
        tl.store(base + C + offs_c, tl.sum(acc1, axis=0), mask=mask_c)


@triton.autotune(configs=SMALL_CONFIGS, restore_value=["out_ptr"],
                 key=["C", "SPLIT", "NROWS", "HAS_F32"])
@triton.jit
def channel_finalize_kernel(part_ptr, out_ptr, f32_ptr, C, SPLIT, scale, NROWS: tl.constexpr,
                            HAS_F32: tl.constexpr, BLOCK: tl.constexpr):
    """out[j, c] = scale · sum_split part[split, j, c] for j < NROWS (and a float32 copy)."""
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < C
    for j in range(NROWS):
        acc = tl.zeros((BLOCK,), dtype=tl.float32)
        for sp in range(SPLIT):
            acc += tl.load(part_ptr + (sp * 2 + j) * C + offs, mask=mask, other=0.0)
        acc = acc * scale
        tl.store(out_ptr + j * C + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)
        if HAS_F32:
            tl.store(f32_ptr + j * C + offs, acc, mask=mask)


# == elementwise ================================================================================

BN_TRAIN = tl.constexpr(0)         # a=x b=gamma c=beta s=stats
BN_BACKWARD = tl.constexpr(1)      # a=dy b=x c=gamma s=stats t=gstats, f0=eps f1=1/M
RUNNING = tl.constexpr(2)          # a=running s=stats (row f2), f0=momentum f1=row factor
RELU_BACKWARD = tl.constexpr(3)    # a=y b=dy
SGD_DIRECTION = tl.constexpr(4)    # a=g b=w c=v, f0=momentum f1=weight_decay
SGD_APPLY = tl.constexpr(5)        # a=w b=d s=lr
ADAM_MOMENT = tl.constexpr(6)      # a=m b=g, f0=beta, SQUARE
ADAM_APPLY = tl.constexpr(7)       # a=w b=m c=v s=lr t=bias corrections [2] (fp64), f0=eps

OPS = {"batch_norm_train": 0, "batch_norm_backward": 1, "running_stat_update": 2,
       "relu_backward": 3, "sgd_direction": 4, "sgd_apply": 5, "adam_moment": 6,
       "adam_apply": 7}


@triton.autotune(configs=FLAT_CONFIGS, restore_value=["out_ptr"], key=["numel", "OP"])
@triton.jit
def train_elementwise_kernel(a_ptr, b_ptr, c_ptr, s_ptr, t_ptr, out_ptr, numel, C, INNER,
                             f0, f1, f2, OP: tl.constexpr, HAS_C: tl.constexpr,
                             SQUARE: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    a = tl.load(a_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    if OP == BN_TRAIN or OP == BN_BACKWARD:
        ch = (offs // INNER) % C
        mean = tl.load(s_ptr + ch, mask=mask, other=0.0).to(tl.float32)
        var = tl.load(s_ptr + C + ch, mask=mask, other=1.0).to(tl.float32)
        invstd = 1.0 / tl.sqrt_rn(var + f0)
        if OP == BN_TRAIN:
            gamma = tl.load(b_ptr + ch, mask=mask, other=0.0).to(tl.float32)
            beta = tl.load(c_ptr + ch, mask=mask, other=0.0).to(tl.float32)
            y = (a - mean) * invstd * gamma + beta
        else:
            x = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            gamma = tl.load(c_ptr + ch, mask=mask, other=0.0).to(tl.float32)
            dbeta = tl.load(t_ptr + ch, mask=mask, other=0.0).to(tl.float32)
            dgamma = tl.load(t_ptr + C + ch, mask=mask, other=0.0).to(tl.float32)
            xhat = (x - mean) * invstd
            y = gamma * invstd * (a - (dbeta + xhat * dgamma) * f1)
    elif OP == RUNNING:
        stat = tl.load(s_ptr + f2 * numel + offs, mask=mask, other=0.0).to(tl.float32) * f1
        y = (1.0 - f0) * a + f0 * stat
    elif OP == RELU_BACKWARD:
        dy = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = tl.where(a > 0.0, dy, 0.0)
    elif OP == SGD_DIRECTION:
        w = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        y = a + f1 * w
        if HAS_C:
            v = tl.load(c_ptr + offs, mask=mask, other=0.0).to(tl.float32)
            y = y + f0 * v
    elif OP == SGD_APPLY:
        d = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        lr = tl.load(s_ptr).to(tl.float32)
        y = a - lr * d
    elif OP == ADAM_MOMENT:
        g = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        if SQUARE:
            g = g * g
        y = f0 * a + (1.0 - f0) * g
    else:
        m = tl.load(b_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        v = tl.load(c_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        lr = tl.load(s_ptr).to(tl.float32)
        bc1 = tl.load(t_ptr).to(tl.float32)
        bc2 = tl.load(t_ptr + 1).to(tl.float32)
        y = a - lr * (m / bc1) / (tl.sqrt_rn(v / bc2) + f0)
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


# == layout changes =============================================================================

@triton.autotune(configs=FLAT_CONFIGS, restore_value=["dst_ptr"], key=["numel"])
@triton.jit
def strided_copy_kernel(src_ptr, dst_ptr, numel,
                        n1, n2, n3, ss0, ss1, ss2, ss3,
                        m1, m2, m3, ds0, ds1, ds2, ds3, BLOCK: tl.constexpr):
    """Element i of the row-major order: source index i decomposed by the source shape
    (_, n1, n2, n3) through its strides, destination index by (_, m1, m2, m3)."""
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < numel
    src = ((i // (n1 * n2 * n3)) * ss0 + ((i // (n2 * n3)) % n1) * ss1
           + ((i // n3) % n2) * ss2 + (i % n3) * ss3)
    dst = ((i // (m1 * m2 * m3)) * ds0 + ((i // (m2 * m3)) % m1) * ds1
           + ((i // m3) % m2) * ds2 + (i % m3) * ds3)
    v = tl.load(src_ptr + src, mask=mask)
    tl.store(dst_ptr + dst, v.to(dst_ptr.dtype.element_ty), mask=mask)


# == rows: softmax backward, cross entropy ======================================================

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


# == host side ==================================================================================

def _pool_geometry(what, x_hw, dy_shape, kernel, stride, padding, dilation):
    h, w = x_hw
    (kh, kw), (ph, pw), (dh, dw) = (pair(kernel, f"{what} kernel"),
                                    pair(padding, f"{what} padding"),
                                    pair(dilation, f"{what} dilation"))
    sh, sw = pair(kernel if stride is None else stride, f"{what} stride")
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"{what}: window {(kh, kw)}, stride {(sh, sw)}, padding {(ph, pw)}, "
                         f"dilation {(dh, dw)} is invalid")
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if (oh, ow) != tuple(dy_shape):
        raise ValueError(f"{what}: window {(kh, kw)}, stride {(sh, sw)}, padding {(ph, pw)}, "
                         f"dilation {(dh, dw)} maps a {h}x{w} input to {oh}x{ow}, not the "
                         f"gradient's {dy_shape[0]}x{dy_shape[1]}")
    return kh, kw, sh, sw, ph, pw, dh, dw


def max_pool2d_backward_nhwc(x: torch.Tensor, dy: torch.Tensor, kernel, stride=None, padding=0,
                             dilation=1, out=None, argmax=None) -> torch.Tensor:
    """dx [N, H, W, C] of max_pool2d: x [N, H, W, C], dy [N, OH, OW, C]; each window's dy goes
    to its first maximum (torch's rule). argmax: an int32 workspace of dy's shape (allocated
    unless given)."""
    what = "max_pool2d_backward"
    check_tensor(x, f"{what} x")
    if x.dim() != 4 or dy.dim() != 4:
        raise ValueError(f"{what}: x and dy must be NHWC, got shapes {tuple(x.shape)} and "
                         f"{tuple(dy.shape)}")
    check_tensor(dy, f"{what} dy", dtype=x.dtype, device=x.device)
    n, h, w, c = x.shape
    if dy.shape[0] != n or dy.shape[3] != c:
        raise ValueError(f"{what}: dy {tuple(dy.shape)} does not match x {tuple(x.shape)}")
    geo = _pool_geometry(what, (h, w), dy.shape[1:3], kernel, stride, padding, dilation)
    kh, kw = geo[:2]
    oh, ow = dy.shape[1:3]
    if out is None:
        out = torch.empty_like(x)
    check_tensor(out, f"{what} out", shape=tuple(x.shape), dtype=x.dtype, device=x.device)
    if argmax is None:
        argmax = torch.empty(tuple(dy.shape), dtype=torch.int32, device=x.device)
    check_tensor(argmax, f"{what} argmax", shape=tuple(dy.shape), dtype=torch.int32,
                 device=x.device)
    check_no_overlap(out, what, x=x, dy=dy, argmax=argmax)
    m_out, m_in = n * oh * ow, n * h * w
    if m_in == 0 or c == 0:
        return out

    def grid_out(meta):
        return triton.cdiv(m_out, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"])
    max_pool_argmax_kernel[grid_out](x, argmax, h, w, c, oh, ow, m_out, kh, kw, *geo[2:],
                                     **LAUNCH_OPTIONS)

    def grid_in(meta):
        return triton.cdiv(m_in, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"])
    pool_backward_kernel[grid_in](dy, argmax, out, h, w, c, oh, ow, m_in, kh, kw, *geo[2:],
                                  IS_MAX=True, COUNT_INCLUDE_PAD=False, **LAUNCH_OPTIONS)
    return out


def avg_pool2d_backward_nhwc(dy: torch.Tensor, input_size, kernel, stride=None, padding=0,
                             count_include_pad: bool = True, out=None) -> torch.Tensor:
    """dx [N, H, W, C] of avg_pool2d from dy [N, OH, OW, C]; input_size (H, W)."""
    what = "avg_pool2d_backward"
    check_tensor(dy, f"{what} dy")
    if dy.dim() != 4:
        raise ValueError(f"{what}: dy must be NHWC, got shape {tuple(dy.shape)}")
    n, oh, ow, c = dy.shape
    h, w = pair(input_size, f"{what} input_size")
    geo = _pool_geometry(what, (h, w), (oh, ow), kernel, stride, padding, 1)
    kh, kw = geo[:2]
    if out is None:
        out = torch.empty((n, h, w, c), dtype=dy.dtype, device=dy.device)
    check_tensor(out, f"{what} out", shape=(n, h, w, c), dtype=dy.dtype, device=dy.device)
    check_no_overlap(out, what, dy=dy)
    m_in = n * h * w
    if m_in == 0 or c == 0:
        return out

    def grid(meta):
        return triton.cdiv(m_in, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"])
    pool_backward_kernel[grid](dy, None, out, h, w, c, oh, ow, m_in, kh, kw, *geo[2:],
                               IS_MAX=False, COUNT_INCLUDE_PAD=bool(count_include_pad),
                               **LAUNCH_OPTIONS)
    return out


def channel_layout(shape) -> tuple[int, int, int]:
    """(OUTER, C, INNER) of a tensor in storage layout, channel = logical axis 1: NHWC 4-D and
    2-D have the channel innermost; [N, C, L...] has INNER = prod(L...)."""
    shape = tuple(int(d) for d in shape)
    if len(shape) < 2:
        raise ValueError(f"per-channel op: need at least 2 dims [N, C, ...], got {shape}")
    if len(shape) == 4:                                       # logical [N, C, H, W]
        n, c, h, w = shape
        return n * h * w, c, 1
    inner = 1
    for d in shape[2:]:
        inner *= d
    return shape[0], shape[1], inner


def _reduce_splits(rows: int, c: int, split: int | None) -> tuple[int, int]:
    if split is None:
        split = 1 if INTERPRET else max(1, min(triton.cdiv(rows, 1024),
                                               triton.cdiv(512, triton.cdiv(c, 64))))
    split = max(1, min(int(split), max(rows, 1)))
    per = triton.cdiv(max(rows, 1), split)
    return triton.cdiv(max(rows, 1), per), per


def channel_reduce(a, layout, mode: int, out, *, b=None, stats=None, eps: float = 0.0,
                   scale: float = 1.0, f32_out=None, split: int | None = None):
    """The partial sums of a per-channel reduction (see channel_partials_kernel), summed and
    scaled into out (rows j < 2 when mode is SUM_GRAD, else 1). Internal: no argument checks."""
    outer, c, inner = layout
    rows = outer * inner
    nsplit, per = _reduce_splits(rows, c, split)
    part = torch.empty((nsplit, 2, c), dtype=torch.float32, device=a.device)

    def grid(meta):
        return triton.cdiv(c, meta["BLOCK_C"]), nsplit
    channel_partials_kernel[grid](a, b, stats, part, rows, c, inner, nsplit, per, float(eps),
                                  MODE=mode, **LAUNCH_OPTIONS)

    def grid_f(meta):
        return (triton.cdiv(c, meta["BLOCK"]),)
    channel_finalize_kernel[grid_f](part, out, f32_out, c, nsplit, float(scale),
                                    NROWS=2 if mode == 2 else 1, HAS_F32=f32_out is not None,
                                    **LAUNCH_OPTIONS)
    return out


def _per_channel_input(x, layout, what, name="x"):
    check_tensor(x, f"{what} {name}")
    outer, c, inner = layout
    if x.numel() != outer * c * inner:
        raise ValueError(f"{what}: {name} has {x.numel()} elements, the layout {layout} "
                         f"{outer * c * inner}")


def bn_stats(x: torch.Tensor, layout, out=None, *, split: int | None = None) -> torch.Tensor:
    """[2, C]: the batch mean and the biased batch variance per channel of x (storage layout,
    `layout` = channel_layout(logical shape)): two rounds, the second around the fp32 mean."""
    what = "bn_stats"
    _per_channel_input(x, layout, what)
    c = layout[1]
    if out is None:
        out = torch.empty((2, c), dtype=x.dtype, device=x.device)
    check_tensor(out, f"{what} out", shape=(2, c), device=x.device)
    check_no_overlap(out, what, x=x)
    count = layout[0] * layout[2]
    if count == 0:
        raise ValueError(f"{what}: no elements per channel")
    mean = torch.empty((2, c), dtype=torch.float32, device=x.device)
    channel_reduce(x, layout, 0, out[0], scale=1.0 / count, f32_out=mean[0], split=split)
    channel_reduce(x, layout, 1, out[1], stats=mean, scale=1.0 / count, split=split)
    return out


def bn_grad_stats(dy: torch.Tensor, x: torch.Tensor, stats: torch.Tensor, layout, eps: float,
                  out=None, *, split: int | None = None) -> torch.Tensor:
    """[2, C]: sum(dy) and sum(dy · xhat) per channel."""
    what = "bn_grad_stats"
    _per_channel_input(dy, layout, what, "dy")
    check_tensor(x, f"{what} x", shape=tuple(dy.shape), dtype=dy.dtype, device=dy.device)
    c = layout[1]
    check_tensor(stats, f"{what} stats", shape=(2, c), device=dy.device)
    if out is None:
        out = torch.empty((2, c), dtype=dy.dtype, device=dy.device)
    check_tensor(out, f"{what} out", shape=(2, c), device=dy.device)
    check_no_overlap(out, what, dy=dy, x=x, stats=stats)
    channel_reduce(dy, layout, 2, out, b=x, stats=stats, eps=eps, split=split)
    return out


def channel_sum(x: torch.Tensor, layout, out=None, *, split: int | None = None) -> torch.Tensor:
    """[C]: the sum of x over every axis but the channel."""
    what = "channel_sum"
    _per_channel_input(x, layout, what)
    c = layout[1]
    if out is None:
        out = torch.empty((c,), dtype=x.dtype, device=x.device)
    check_tensor(out, f"{what} out", shape=(c,), device=x.device)
    check_no_overlap(out, what, x=x)
    channel_reduce(x, layout, 0, out, split=split)
    return out


def _flat(out, numel, op, a, b=None, c=None, s=None, t=None, *, channels=1, inner=1, f0=0.0,
          f1=0.0, f2=0, square=False):
    if numel == 0:
        return out

    def grid(meta):
        return (triton.cdiv(numel, meta["BLOCK"]),)
    train_elementwise_kernel[grid](a, b, c, s, t, out, numel, channels, inner, float(f0),
                                   float(f1), int(f2), OP=OPS[op], HAS_C=c is not None,
                                   SQUARE=bool(square), **LAUNCH_OPTIONS)
    return out


def _like(ref, out, what, name="out"):
    if out is None:
        out = torch.empty_like(ref, memory_format=torch.contiguous_format)
    check_tensor(out, f"{what} {name}", shape=tuple(ref.shape), dtype=ref.dtype,
                 device=ref.device)
    return out


def _same(t, ref, what, name, dtype=True):
    check_tensor(t, f"{what} {name}", shape=tuple(ref.shape),
                 dtype=ref.dtype if dtype else None, device=ref.device)


def _vector(t, c, what, name, device):
    check_tensor(t, f"{what} {name}", shape=(c,), device=device)


def _scalar(t, what, name, device):
    check_tensor(t, f"{what} {name}", device=device)
    if t.numel() != 1:
        raise ValueError(f"{what}: {name} must be a scalar (one element), got shape "
                         f"{tuple(t.shape)}")


def batch_norm_train(x, gamma, beta, stats, layout, eps: float, out=None) -> torch.Tensor:
    """(x − mean) / sqrt(var + eps) · gamma + beta, stats = [mean; var] per channel."""
    what = "batch_norm_train"
    _per_channel_input(x, layout, what)
    c = layout[1]
    for t, name in ((gamma, "gamma"), (beta, "beta")):
        _vector(t, c, what, name, x.device)
    check_tensor(stats, f"{what} stats", shape=(2, c), device=x.device)
    out = _like(x, out, what)
    return _flat(out, x.numel(), "batch_norm_train", x, gamma, beta, stats, channels=c,
                 inner=layout[2], f0=eps)


def batch_norm_backward(dy, x, gamma, stats, gstats, layout, eps: float, out=None):
    """gamma · invstd · (dy − (gstats[0] + xhat · gstats[1]) / M)."""
    what = "batch_norm_backward"
    _per_channel_input(dy, layout, what, "dy")
    _same(x, dy, what, "x")
    c = layout[1]
    _vector(gamma, c, what, "gamma", dy.device)
    for t, name in ((stats, "stats"), (gstats, "gstats")):
        check_tensor(t, f"{what} {name}", shape=(2, c), device=dy.device)
    out = _like(dy, out, what)
    count = layout[0] * layout[2]
    return _flat(out, dy.numel(), "batch_norm_backward", dy, x, gamma, stats, gstats,
                 channels=c, inner=layout[2], f0=eps, f1=1.0 / count)


def running_stat_update(running, stats, row: int, momentum: float, count: int, out=None):
    """(1 − momentum) · running + momentum · stat; stat = stats[0], or stats[1] · M / (M − 1)
    (torch's unbiased running variance)."""
    what = "running_stat_update"
    check_tensor(running, f"{what} running")
    if running.dim() != 1:
        raise ValueError(f"{what}: running must be [C], got {tuple(running.shape)}")
    c = running.shape[0]
    check_tensor(stats, f"{what} stats", shape=(2, c), device=running.device)
    if row not in (0, 1):
        raise ValueError(f"{what}: row must be 0 or 1, got {row!r}")
    if row == 1 and count < 2:
        raise ValueError(f"{what}: the unbiased variance needs count >= 2, got {count}")
    factor = count / (count - 1) if row == 1 else 1.0
    out = _like(running, out, what)
    return _flat(out, c, "running_stat_update", running, s=stats, f0=momentum, f1=factor,
                 f2=row)


def relu_backward(y, dy, out=None):
    what = "relu_backward"
    check_tensor(y, f"{what} y")
    _same(dy, y, what, "dy")
    out = _like(y, out, what)
    return _flat(out, y.numel(), "relu_backward", y, dy)


def sgd_direction(g, w, v=None, *, momentum: float = 0.0, weight_decay: float = 0.0, out=None):
    what = "sgd_direction"
    check_tensor(g, f"{what} g")
    _same(w, g, what, "w", dtype=False)
    if v is not None:
        _same(v, g, what, "v", dtype=False)
    out = _like(g, out, what)
    return _flat(out, g.numel(), "sgd_direction", g, w, v, f0=momentum, f1=weight_decay)


def sgd_apply(w, d, lr, out=None):
    what = "sgd_apply"
    check_tensor(w, f"{what} w")
    _same(d, w, what, "d", dtype=False)
    _scalar(lr, what, "lr", w.device)
    out = _like(w, out, what)
    return _flat(out, w.numel(), "sgd_apply", w, d, s=lr)


def adam_moment(m, g, *, beta: float, square: bool = False, out=None):
    what = "adam_moment"
    check_tensor(m, f"{what} m")
    _same(g, m, what, "g", dtype=False)
    out = _like(m, out, what)
    return _flat(out, m.numel(), "adam_moment", m, g, f0=beta, square=square)


def adam_bias_corrections(step, beta1: float, beta2: float, out=None):
    """[1 − beta1**step, 1 − beta2**step] = −expm1(step·ln beta) in float64 on the device
    (scalar glue: two values, no host synchronisation and no host-to-device copy, so a CUDA
    graph can capture it; float64 keeps 1 − 0.999**1 exact to fp32)."""
    if not (0.0 < beta1 < 1.0 and 0.0 < beta2 < 1.0):
        raise ValueError(f"adam_apply: betas must be in (0, 1), got {beta1}, {beta2}")
    s = step.reshape(()).to(torch.float64)
    bc = -torch.expm1(torch.stack((s * math.log(beta1), s * math.log(beta2))))
    if out is not None:
        check_tensor(out, "adam_apply corrections", shape=(2,), dtype=torch.float64,
                     device=step.device)
        out.copy_(bc)
        return out
    return bc


def adam_apply(w, m, v, lr, step, *, beta1: float, beta2: float, eps: float, out=None,
               corrections=None):
    """w − lr · (m / (1 − beta1**step)) / (sqrt(v / (1 − beta2**step)) + eps)."""
    what = "adam_apply"
    check_tensor(w, f"{what} w")
    _same(m, w, what, "m", dtype=False)
    _same(v, w, what, "v", dtype=False)
    _scalar(lr, what, "lr", w.device)
    _scalar(step, what, "step", w.device)
    out = _like(w, out, what)
    bc = adam_bias_corrections(step, beta1, beta2, corrections)
    return _flat(out, w.numel(), "adam_apply", w, m, v, lr, bc, f0=eps)


def strided_copy(src: torch.Tensor, dst: torch.Tensor) -> torch.Tensor:
    """dst[idx] = src[idx] for every index of their common shape (row-major order), through
    their strides (views of any layout, rank <= 4, or two shapes of one element count: the
    row-major orders are matched, a reshape)."""
    what = "strided_copy"
    check_tensor(src, f"{what} src", contiguous=False,
                 dtype=None if str(src.dtype).startswith("torch.float") else src.dtype)
    check_tensor(dst, f"{what} dst", contiguous=False, device=src.device,
                 dtype=None if str(dst.dtype).startswith("torch.float") else dst.dtype)
    if src.numel() != dst.numel():
        raise ValueError(f"{what}: {src.numel()} source elements, {dst.numel()} destination")
    if src.dim() > 4 or dst.dim() > 4:
        raise ValueError(f"{what}: rank at most 4, got {src.dim()} and {dst.dim()}")
    check_no_overlap(dst, what, src=src)
    numel = src.numel()
    if numel == 0:
        return dst

    def desc(t):
        shape = [1] * (4 - t.dim()) + list(t.shape)
        strides = [0] * (4 - t.dim()) + list(t.stride())
        return shape[1:] + strides
    # Base pointers of views: triton takes the tensors' data_ptr (offset included).

    def grid(meta):
        return (triton.cdiv(numel, meta["BLOCK"]),)
    strided_copy_kernel[grid](src, dst, numel, *desc(src), *desc(dst), **LAUNCH_OPTIONS)
    return dst


def softmax_backward_rows(y, dy, out, rows_shape, row_strides, n_cols: int, col_stride: int):
    """out = y · (dy − sum(dy · y)) over rows of n_cols elements col_stride apart; rows
    indexed by rows_shape (up to 3 dims, row-major) with element strides row_strides. y, dy and
    out share one layout."""
    what = "softmax_backward"
    check_tensor(y, f"{what} y")
    _same(dy, y, what, "dy")
    _same(out, y, what, "out")
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
    _scalar(dloss, what, "dloss", logits.device)
    out = _like(logits, out, what)
    check_no_overlap(out, what, logits=logits)
    block_n = min(triton.next_power_of_2(k), 4096)
    cross_entropy_backward_kernel[(n,)](logits, labels, dloss, out, k, 1.0 / n,
                                        BLOCK_N=block_n, **LAUNCH_OPTIONS)
    return out
