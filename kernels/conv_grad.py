"""The two gradients of a 2-D convolution over NHWC tensors, as implicit GEMMs.

Storage: activations NHWC; a 4-D weight [K, Cg, R, S] is stored by the backends like any 4-D
tensor, NHWC-wise, as [K, R, S, Cg] (row-major); the kernels read and write that layout
directly, so nothing is packed.

Backward data (the transposed convolution, gather form). For dx pixel m = (n, h, w) and group g:

    dx[m, g·Cg + c] = sum_{(r, s, kk)} DY[m, (r, s, kk)] · w[g·Kg + kk, r, s, c]

    DY[m, (r, s, kk)] = dy[n, oh, ow, g·Kg + kk]   where oh = (h + ph − r·dh) / sh and
                        ow = (w + pw − s·dw) / sw are whole numbers inside [0, OH) × [0, OW)
                        (otherwise 0: the tap (r, s) of no window lands on (h, w))

a GEMM over M = N·H·W pixels, Cg columns and a reduction of R·S·Kg, with the B operand
w[g·Kg + kk, r, s, :] contiguous along c. Two forms, as in conv.py: a tap loop (for each (r, s)
BLOCK_K contiguous channels of dy) for Kg >= 32, a gathered reduction over (r, s, kk) below.
One input channel per group (Cg = 1, depthwise) has no dot: FMAs over a [pixels, channels] tile.

Backward weight. Per group g the GEMM

    dw[g·Kg + kk, (r, s, c)] = sum_m dy[m, g·Kg + kk] · X[m, (r, s, c)]

over the M = N·OH·OW output pixels, with X conv.py's im2col matrix (gathered, never built).
The reduction is long and the output small, so it is split (split-K over the pixels, the GPU
analogue of the planner's tile split over n and oh): each of SPLIT programs along the third grid
axis sums its chunk of pixels into an fp32 workspace [SPLIT, K, R·S·Cg], and a second kernel
sums the SPLIT partials in a fixed order (deterministic, no atomics) and stores dw in its dtype.
Depthwise weights (Cg = 1) get an FMA kernel that reduces a [pixels, channels] tile per tap.

Every accumulation is fp32; float32 dots are IEEE unless allow_tf32 (epilogue.py).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .conv import GATHER_BELOW_CHANNELS, conv_out_size
from .common import INTERPRET, LAUNCH_OPTIONS, check_no_overlap, check_tensor, configs, \
    decode_field, decode_pixels, dot_in_fp32, input_precision, pair, program_block, tap_source

DGRAD_CONFIGS = configs(
    [triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=3),
     triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
     triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3)],
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 16, "BLOCK_K": 16}))

WGRAD_CONFIGS = configs(
    [triton.Config({"BLOCK_K": 64, "BLOCK_N": 64, "BLOCK_M": 32}, num_warps=4, num_stages=3),
     triton.Config({"BLOCK_K": 64, "BLOCK_N": 128, "BLOCK_M": 32}, num_warps=4, num_stages=3),
     triton.Config({"BLOCK_K": 128, "BLOCK_N": 64, "BLOCK_M": 32}, num_warps=8, num_stages=3)],
    triton.Config({"BLOCK_K": 16, "BLOCK_N": 16, "BLOCK_M": 16}))

DEPTHWISE_CONFIGS = configs(
    [triton.Config({"BLOCK_M": 64, "BLOCK_C": 64}, num_warps=4),
     triton.Config({"BLOCK_M": 32, "BLOCK_C": 128}, num_warps=4)],
    triton.Config({"BLOCK_M": 16, "BLOCK_C": 16}))

SUM_CONFIGS = configs([triton.Config({"BLOCK": 1024}, num_warps=4)],
                      triton.Config({"BLOCK": 256}))


# -- backward data -----------------------------------------------------------------------------

@triton.autotune(configs=DGRAD_CONFIGS, restore_value=["dx_ptr"],
                 key=["M", "CG", "KG", "R", "S", "stride_h", "stride_w", "GATHER_K",
                      "INPUT_PRECISION"])
@triton.jit
def conv2d_backward_data_kernel(
        dy_ptr, w_ptr, dx_ptr,
        H, W, C, OH, OW, K, CG, KG, R, S, M,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        GATHER_K: tl.constexpr, INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)        # input channel c within group g
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < CG
    n, h, w = decode_field(offs_m, H, W)
    dy_img = n.to(tl.int64) * OH * OW * K + g * KG           # dy[n, 0, 0, g·Kg]
    RSC = R * S * CG
    # w[g·Kg + kk, r, s, c] at (g·Kg + kk)·R·S·Cg + (r·S + s)·Cg + c
    w_group = w_ptr + g.to(tl.int64) * KG * RSC

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if GATHER_K:
        RSK = R * S * KG
        for t0 in range(0, RSK, BLOCK_K):
            t = t0 + offs_k                                  # t = (r·S + s)·Kg + kk
            t_ok = t < RSK
            kk = t % KG
            s = (t // KG) % S
            r = t // (S * KG)
            oh, oh_ok = tap_source(h[:, None], pad_h, r[None, :], dil_h, stride_h, OH)
            ow, ow_ok = tap_source(w[:, None], pad_w, s[None, :], dil_w, stride_w, OW)
            a = tl.load(dy_ptr + dy_img[:, None] + (oh * OW + ow) * K + kk[None, :],
                        mask=mask_m[:, None] & t_ok[None, :] & oh_ok & ow_ok, other=0.0)
            b = tl.load(w_group + (kk * RSC + (r * S + s) * CG)[:, None] + offs_n[None, :],
                        mask=t_ok[:, None] & mask_n[None, :], other=0.0)
            if DOT_IN_FP32:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    else:
        for r in range(R):
            oh, oh_ok = tap_source(h, pad_h, r, dil_h, stride_h, OH)
            row_ok = mask_m & oh_ok
            for s in range(S):
                ow, ow_ok = tap_source(w, pad_w, s, dil_w, stride_w, OW)
                pix_ok = row_ok & ow_ok
                a_ptrs = dy_ptr + (dy_img + (oh * OW + ow) * K)[:, None] + offs_k[None, :]
                b_ptrs = (w_group + (offs_k * RSC + (r * S + s) * CG)[:, None]
                          + offs_n[None, :])
                for k0 in range(0, KG, BLOCK_K):
                    k_ok = offs_k < KG - k0
                    a = tl.load(a_ptrs, mask=pix_ok[:, None] & k_ok[None, :], other=0.0)
                    b = tl.load(b_ptrs, mask=k_ok[:, None] & mask_n[None, :], other=0.0)
                    if DOT_IN_FP32:
                        a = a.to(tl.float32)
                        b = b.to(tl.float32)
                    acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
                    a_ptrs += BLOCK_K
                    b_ptrs += BLOCK_K * RSC

    out = dx_ptr + offs_m.to(tl.int64)[:, None] * C + (g * CG + offs_n)[None, :]
    tl.store(out, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_n[None, :])


@triton.autotune(configs=DEPTHWISE_CONFIGS, restore_value=["dx_ptr"],
                 key=["M", "C", "KG", "R", "S", "stride_h", "stride_w"])
@triton.jit
def conv2d_backward_data_depthwise_kernel(
        dy_ptr, w_ptr, dx_ptr,
        H, W, C, OH, OW, K, KG, R, S, M,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Cg = 1: dx[m, c] = sum_{r, s, kk} DY[m, (r, s), c·Kg + kk] · w[c·Kg + kk, r, s]."""
    offs_m, offs_c, mask_m, mask_c = program_block(M, C, BLOCK_M, BLOCK_C)
    n, h, w = decode_field(offs_m, H, W)
    dy_img = n.to(tl.int64) * OH * OW * K
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for r in range(R):
        oh, oh_ok = tap_source(h, pad_h, r, dil_h, stride_h, OH)
        row_ok = mask_m & oh_ok
        for s in range(S):
            ow, ow_ok = tap_source(w, pad_w, s, dil_w, stride_w, OW)
            pix_ok = row_ok & ow_ok
            for kk in range(KG):
                k = offs_c * KG + kk
                a = tl.load(dy_ptr + (dy_img + (oh * OW + ow) * K)[:, None] + k[None, :],
                            mask=pix_ok[:, None] & mask_c[None, :], other=0.0)
                wv = tl.load(w_ptr + k * (R * S) + r * S + s, mask=mask_c, other=0.0)
                acc += a.to(tl.float32) * wv.to(tl.float32)[None, :]
    out = dx_ptr + offs_m.to(tl.int64)[:, None] * C + offs_c[None, :]
    tl.store(out, acc.to(dx_ptr.dtype.element_ty), mask=mask_m[:, None] & mask_c[None, :])


# -- backward weight ---------------------------------------------------------------------------

@triton.autotune(configs=WGRAD_CONFIGS, restore_value=["ws_ptr"],
                 key=["M", "KG", "CG", "R", "S", "stride_h", "stride_w", "SPLIT",
                      "INPUT_PRECISION"])
@triton.jit
def conv2d_backward_weight_kernel(
        x_ptr, dy_ptr, ws_ptr,
        H, W, C, OH, OW, K, CG, KG, R, S, M, G, SPLIT, PIX_PER_SPLIT,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
        BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_M: tl.constexpr):
    """ws[split, g·Kg + kk, t] = sum over the split's pixels m of dy[m, g·Kg + kk] · X[m, t],
    t = (r·S + s)·Cg + c."""
    pid_k = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_z = tl.program_id(2)
    g = pid_z % G
    split = pid_z // G
    offs_k = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)        # kk within group g
    offs_t = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    mask_k = offs_k < KG
    RSC = R * S * CG
    mask_t = offs_t < RSC
    c = offs_t % CG
    s = (offs_t // CG) % S
    r = offs_t // (S * CG)
    m_lo = split * PIX_PER_SPLIT
    m_hi = tl.minimum(m_lo + PIX_PER_SPLIT, M)

    acc = tl.zeros((BLOCK_K, BLOCK_N), dtype=tl.float32)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        offs_m = m0 + tl.arange(0, BLOCK_M)
        mask_m = offs_m < m_hi
        ih0, iw0, x_pix = decode_pixels(offs_m, H, W, C, OH, OW, stride_h, stride_w,
                                        pad_h, pad_w)
        # dy^T tile [BLOCK_K, BLOCK_M]: dy[m, g·Kg + kk] at m·K + g·Kg + kk
        a = tl.load(dy_ptr + offs_m.to(tl.int64)[None, :] * K + (g * KG + offs_k)[:, None],
                    mask=mask_k[:, None] & mask_m[None, :], other=0.0)
        ih = ih0[:, None] + r[None, :] * dil_h
        iw = iw0[:, None] + s[None, :] * dil_w
        inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
        b = tl.load(x_ptr + x_pix[:, None] + (ih * W + iw) * C + (g * CG + c)[None, :],
                    mask=mask_m[:, None] & mask_t[None, :] & inside, other=0.0)
        if DOT_IN_FP32:
            a = a.to(tl.float32)
            b = b.to(tl.float32)
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)

    rows = (split * K + g * KG + offs_k).to(tl.int64)
    tl.store(ws_ptr + rows[:, None] * RSC + offs_t[None, :], acc,
             mask=mask_k[:, None] & mask_t[None, :])


@triton.autotune(configs=DEPTHWISE_CONFIGS, restore_value=["ws_ptr"],
                 key=["M", "K", "R", "S", "stride_h", "stride_w", "SPLIT"])
@triton.jit
def conv2d_backward_weight_depthwise_kernel(
        x_ptr, dy_ptr, ws_ptr,
        H, W, C, OH, OW, K, KG, R, S, M, SPLIT, PIX_PER_SPLIT,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """Cg = 1: ws[split, k, r·S + s] = sum over the split's pixels m of
    dy[m, k] · X[m, (r, s, k / Kg)]."""
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    offs_k = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    mask_k = offs_k < K
    x_ch = offs_k // KG
    m_lo = split * PIX_PER_SPLIT
    m_hi = tl.minimum(m_lo + PIX_PER_SPLIT, M)
    ws_row = ws_ptr + (split * K + offs_k).to(tl.int64) * (R * S)
    for r in range(R):
        for s in range(S):
            acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
            for m0 in range(m_lo, m_hi, BLOCK_M):
                offs_m = m0 + tl.arange(0, BLOCK_M)
                mask_m = offs_m < m_hi
                ih0, iw0, x_pix = decode_pixels(offs_m, H, W, C, OH, OW, stride_h, stride_w,
                                                pad_h, pad_w)
                ih = ih0 + r * dil_h
                iw = iw0 + s * dil_w
                ok = mask_m & (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
                mask = ok[:, None] & mask_k[None, :]
                xv = tl.load(x_ptr + (x_pix + (ih * W + iw) * C)[:, None] + x_ch[None, :],
                             mask=mask, other=0.0)
                dyv = tl.load(dy_ptr + offs_m.to(tl.int64)[:, None] * K + offs_k[None, :],
                              mask=mask, other=0.0)
                acc += xv.to(tl.float32) * dyv.to(tl.float32)
            tl.store(ws_row + r * S + s, tl.sum(acc, axis=0), mask=mask_k)


@triton.autotune(configs=SUM_CONFIGS, restore_value=["out_ptr"], key=["numel", "SPLIT"])
@triton.jit
def sum_splits_kernel(ws_ptr, out_ptr, numel, SPLIT, BLOCK: tl.constexpr):
    """out[i] = sum_{j < SPLIT} ws[j, i] (fp32, in order j = 0, 1, ...), stored in out's dtype."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    ptrs = ws_ptr + offs
    for _ in range(SPLIT):
        acc += tl.load(ptrs, mask=mask, other=0.0)
        ptrs += numel                                   # pointer arithmetic: no int32 product
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# -- host side -------------------------------------------------------------------------------

def _geometry(what, stride, padding, dilation):
    (sh, sw), (ph, pw), (dh, dw) = (pair(stride, f"{what} stride"),
                                    pair(padding, f"{what} padding"),
                                    pair(dilation, f"{what} dilation"))
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"{what}: stride {(sh, sw)} and dilation {(dh, dw)} must be >= 1, "
                         f"padding {(ph, pw)} >= 0")
    return sh, sw, ph, pw, dh, dw


def _check_fit(what, h, w, r, s, geo, oh, ow):
    sh, sw, ph, pw, dh, dw = geo
    if (conv_out_size(h, r, sh, ph, dh), conv_out_size(w, s, sw, pw, dw)) != (oh, ow) \
            or oh < 1 or ow < 1:
        raise ValueError(f"{what}: a {r}x{s} kernel with stride {(sh, sw)}, padding {(ph, pw)}, "
                         f"dilation {(dh, dw)} maps a {h}x{w} input to "
                         f"{conv_out_size(h, r, sh, ph, dh)}x{conv_out_size(w, s, sw, pw, dw)}, "
                         f"not the gradient's {oh}x{ow}")


def conv2d_backward_data_nhwc(dy: torch.Tensor, w: torch.Tensor, input_size, out=None, *,
                              stride=1, padding=0, dilation=1, groups: int = 1,
                              allow_tf32: bool = False,
                              gather_k: bool | None = None) -> torch.Tensor:
    """dx [N, H, W, C] of conv2d, from dy [N, OH, OW, K] and the weight w stored [K, R, S, Cg]
    (the NHWC storage of a torch [K, Cg, R, S] weight), both of one dtype; input_size (H, W).
    gather_k forces (True) or forbids (False) the gathered reduction (None: by Kg)."""
    what = "conv2d_backward_data"
    check_tensor(dy, f"{what} dy")
    if dy.dim() != 4 or w.dim() != 4:
        raise ValueError(f"{what}: dy must be [N, OH, OW, K] and w [K, R, S, Cg], got shapes "
                         f"{tuple(dy.shape)} and {tuple(w.shape)}")
    check_tensor(w, f"{what} w", dtype=dy.dtype, device=dy.device)
    n, oh, ow, k = dy.shape
    kw_, r, s, cg = w.shape
    if kw_ != k:
        raise ValueError(f"{what}: w has {kw_} output channels, dy has {k}")
    if not isinstance(groups, int) or groups < 1 or k % groups:
        raise ValueError(f"{what}: {k} output channels are not divisible by groups={groups}")
    h, wd = pair(input_size, f"{what} input_size")
    geo = _geometry(what, stride, padding, dilation)
    _check_fit(what, h, wd, r, s, geo, oh, ow)
    kg, c = k // groups, cg * groups
    if out is None:
        out = torch.empty((n, h, wd, c), dtype=dy.dtype, device=dy.device)
    check_tensor(out, f"{what} out", shape=(n, h, wd, c), dtype=dy.dtype, device=dy.device)
    check_no_overlap(out, what, dy=dy, w=w)
    m = n * h * wd
    if m == 0 or c == 0:
        return out
    args = (dy, w, out, h, wd, c, oh, ow, k)
    if cg == 1:
        def grid(meta):
            return triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"])
        conv2d_backward_data_depthwise_kernel[grid](*args, kg, r, s, m, *geo, **LAUNCH_OPTIONS)
        return out
    if gather_k is None:
        gather_k = kg < GATHER_BELOW_CHANNELS

    def grid(meta):
        return triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(cg, meta["BLOCK_N"]), groups
    conv2d_backward_data_kernel[grid](*args, cg, kg, r, s, m, *geo, GATHER_K=bool(gather_k),
                                      INPUT_PRECISION=input_precision(allow_tf32),
                                      DOT_IN_FP32=dot_in_fp32(dy.dtype), **LAUNCH_OPTIONS)
    return out


def _splits(m: int, tiles: int, split: int | None) -> tuple[int, int]:
    """(SPLIT, pixels per split): enough programs to fill a GPU (about 512 with the output
    tiles), at least 512 pixels each; `split` forces the number (tests)."""
    if split is None:
        split = 1 if INTERPRET else max(1, min(triton.cdiv(512, max(tiles, 1)),
                                               triton.cdiv(m, 512)))
    split = max(1, min(int(split), m))
    per = triton.cdiv(m, split)
    return triton.cdiv(m, per), per


def weight_grad_workspace(m: int, k: int, r: int, s: int, cg: int, groups: int,
                          split: int | None = None) -> tuple[int, int, int]:
    """(SPLIT, pixels per split, fp32 workspace elements) of conv2d_backward_weight_nhwc over
    m = N·OH·OW output pixels, for a weight gradient [K, R, S, Cg] in `groups` groups."""
    if cg == 1:
        tiles = triton.cdiv(k, 64)
    else:
        tiles = triton.cdiv(k // groups, 64) * triton.cdiv(r * s * cg, 64) * groups
    nsplit, per = _splits(max(m, 1), tiles, split)
    return nsplit, per, nsplit * k * r * s * cg


def conv2d_backward_weight_nhwc(x: torch.Tensor, dy: torch.Tensor, kernel_size, out=None, *,
                                stride=1, padding=0, dilation=1, groups: int = 1,
                                allow_tf32: bool = False, split: int | None = None,
                                workspace: torch.Tensor | None = None) -> torch.Tensor:
    """dw of conv2d stored [K, R, S, Cg] (the NHWC storage of [K, Cg, R, S]) from x
    [N, H, W, C] and dy [N, OH, OW, K] of one dtype; kernel_size (R, S). The pixel reduction is
    split `split` ways (None: by size) into an fp32 workspace (allocated unless given, at least
    SPLIT·K·R·S·Cg elements), then summed in order."""
    what = "conv2d_backward_weight"
    check_tensor(x, f"{what} x")
    if x.dim() != 4 or dy.dim() != 4:
        raise ValueError(f"{what}: x must be [N, H, W, C] and dy [N, OH, OW, K], got shapes "
                         f"{tuple(x.shape)} and {tuple(dy.shape)}")
    check_tensor(dy, f"{what} dy", dtype=x.dtype, device=x.device)
    n, h, wd, c = x.shape
    n2, oh, ow, k = dy.shape
    if n2 != n:
        raise ValueError(f"{what}: x has batch {n}, dy has {n2}")
    r, s = pair(kernel_size, f"{what} kernel")
    if not isinstance(groups, int) or groups < 1 or c % groups or k % groups:
        raise ValueError(f"{what}: channels {c} -> {k} are not divisible by groups={groups}")
    geo = _geometry(what, stride, padding, dilation)
    _check_fit(what, h, wd, r, s, geo, oh, ow)
    cg, kg = c // groups, k // groups
    if out is None:
        out = torch.empty((k, r, s, cg), dtype=x.dtype, device=x.device)
    check_tensor(out, f"{what} out", shape=(k, r, s, cg), dtype=x.dtype, device=x.device)
    check_no_overlap(out, what, x=x, dy=dy)
    m = n * oh * ow
    rsc = r * s * cg
    if m == 0:
        out.zero_()
        return out
    nsplit, per, need = weight_grad_workspace(m, k, r, s, cg, groups, split)
    if workspace is None:
        workspace = torch.empty(need, dtype=torch.float32, device=x.device)
    check_tensor(workspace, f"{what} workspace", dtype=torch.float32, device=x.device)
    if workspace.numel() < need:
        raise ValueError(f"{what}: workspace has {workspace.numel()} elements, needs {need}")
    check_no_overlap(workspace, what, x=x, dy=dy, dw=out)
    args = (x, dy, workspace, h, wd, c, oh, ow, k)
    if cg == 1:
        def grid(meta):
            return triton.cdiv(k, meta["BLOCK_C"]), nsplit
        conv2d_backward_weight_depthwise_kernel[grid](*args, kg, r, s, m, nsplit, per, *geo,
                                                      **LAUNCH_OPTIONS)
    else:
        def grid(meta):
            return (triton.cdiv(kg, meta["BLOCK_K"]), triton.cdiv(rsc, meta["BLOCK_N"]),
                    groups * nsplit)
        conv2d_backward_weight_kernel[grid](*args, cg, kg, r, s, m, groups, nsplit, per, *geo,
                                            INPUT_PRECISION=input_precision(allow_tf32),
                                            DOT_IN_FP32=dot_in_fp32(x.dtype), **LAUNCH_OPTIONS)
    sum_splits(workspace[:need].view(nsplit, k * rsc), out.view(-1))
    return out


def sum_splits(partials: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """out[i] = sum_j partials[j, i]: partials fp32 [SPLIT, numel] contiguous, out [numel]."""
    check_tensor(partials, "sum_splits partials", dtype=torch.float32)
    if partials.dim() != 2:
        raise ValueError(f"sum_splits: partials must be [SPLIT, numel], got "
                         f"{tuple(partials.shape)}")
    nsplit, numel = partials.shape
    check_tensor(out, "sum_splits out", shape=(numel,), device=partials.device)
    if numel == 0:
        return out

    def grid(meta):
        return (triton.cdiv(numel, meta["BLOCK"]),)
    sum_splits_kernel[grid](partials, out, numel, nsplit, **LAUNCH_OPTIONS)
    return out
