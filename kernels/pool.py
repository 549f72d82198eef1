"""Pooling over NHWC activations: max and average over a window, and the global average.

    max:  out[n, oh, ow, c] = max_{r,s} x[n, oh·sh − ph + r·dh, ow·sw − pw + s·dw, c]
    avg:  out[n, oh, ow, c] = sum_{r,s} x[...] / divisor
          divisor = KH·KW with count_include_pad (padding counts as zeros), else the number of
          window taps that fall inside x
    global average: out[n, c] = mean_{h,w} x[n, h, w, c]

torch semantics with ceil_mode=False (every window starts inside the padded input, and with
padding at most half the kernel every window holds at least one real element).

Each program owns a [BLOCK_M pixels, BLOCK_C channels] tile of the output and walks the window
tap by tap; NHWC makes the BLOCK_C channels of a tap one contiguous load. Values are combined in
fp32 and stored in the output's dtype. No fused epilogue: the planner fuses elementwise ops only
into conv / matmul anchors.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LAUNCH_OPTIONS, check_no_overlap, check_tensor, configs, decode_field, \
    decode_pixels, pair, program_block, tap_source

POOL_CONFIGS = configs(
    [triton.Config({"BLOCK_M": 32, "BLOCK_C": 64}, num_warps=4),
     triton.Config({"BLOCK_M": 64, "BLOCK_C": 32}, num_warps=4),
     triton.Config({"BLOCK_M": 16, "BLOCK_C": 128}, num_warps=4)],
    triton.Config({"BLOCK_M": 32, "BLOCK_C": 32}))

GLOBAL_POOL_CONFIGS = configs(
    [triton.Config({"BLOCK_HW": 32, "BLOCK_C": 64}, num_warps=4),
     triton.Config({"BLOCK_HW": 64, "BLOCK_C": 128}, num_warps=8)],
    triton.Config({"BLOCK_HW": 32, "BLOCK_C": 32}))


@triton.autotune(configs=POOL_CONFIGS, restore_value=["out_ptr"],
                 key=["M", "C", "KH", "KW", "stride_h", "stride_w"])
@triton.jit
def pool2d_nhwc_kernel(
        x_ptr, out_ptr, H, W, C, OH, OW, M, KH, KW,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        IS_MAX: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    offs_m, offs_c, mask_m, mask_c = program_block(M, C, BLOCK_M, BLOCK_C)
    ih0, iw0, x_pix = decode_pixels(offs_m, H, W, C, OH, OW, stride_h, stride_w, pad_h, pad_w)

    if IS_MAX:
        acc = tl.full((BLOCK_M, BLOCK_C), float("-inf"), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    count = tl.zeros((BLOCK_M,), dtype=tl.float32)
    for r in range(KH):
        ih = ih0 + r * dil_h
        row_ok = mask_m & (ih >= 0) & (ih < H)
        for s in range(KW):
            iw = iw0 + s * dil_w
            pix_ok = row_ok & (iw >= 0) & (iw < W)
            ptrs = x_ptr + (x_pix + (ih * W + iw) * C)[:, None] + offs_c[None, :]
            mask = pix_ok[:, None] & mask_c[None, :]
            if IS_MAX:
                v = tl.load(ptrs, mask=mask, other=float("-inf"))
                acc = tl.maximum(acc, v.to(tl.float32))
            else:
                v = tl.load(ptrs, mask=mask, other=0.0)
                acc += v.to(tl.float32)
                count += pix_ok.to(tl.float32)

    if not IS_MAX:
        if COUNT_INCLUDE_PAD:
            acc = acc / (KH * KW)
        else:
            acc = acc / tl.maximum(count, 1.0)[:, None]
    out_ptrs = out_ptr + offs_m.to(tl.int64)[:, None] * C + offs_c[None, :]
    tl.store(out_ptrs, acc.to(out_ptr.dtype.element_ty),
             mask=mask_m[:, None] & mask_c[None, :])


@triton.autotune(configs=GLOBAL_POOL_CONFIGS, restore_value=["out_ptr"], key=["HW", "C"])
@triton.jit
def global_avg_pool_nhwc_kernel(x_ptr, out_ptr, HW, C,
                                BLOCK_HW: tl.constexpr, BLOCK_C: tl.constexpr):
    """out[n, c] = mean over the HW pixels of image n; one program per (n, channel block)."""
    n = tl.program_id(0)
    pid_c = tl.program_id(1)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    offs_p = tl.arange(0, BLOCK_HW)
    mask_c = offs_c < C
    base = x_ptr + n.to(tl.int64) * HW * C
    acc = tl.zeros((BLOCK_HW, BLOCK_C), dtype=tl.float32)
    for p0 in range(0, HW, BLOCK_HW):
        p = p0 + offs_p
        v = tl.load(base + p[:, None] * C + offs_c[None, :],
                    mask=(p < HW)[:, None] & mask_c[None, :], other=0.0)
        acc += v.to(tl.float32)
    mean = tl.sum(acc, axis=0) / HW
    tl.store(out_ptr + n * C + offs_c, mean.to(out_ptr.dtype.element_ty), mask=mask_c)


# -- host side -------------------------------------------------------------------------------

def _pool2d(x, out, kernel, stride, padding, dilation, is_max, count_include_pad, what):
    check_tensor(x, f"{what} x")
    if x.dim() != 4:
        raise ValueError(f"{what}: x must be NHWC [N, H, W, C], got shape {tuple(x.shape)}")
    n, h, w, c = x.shape
    (kh, kw), (sh, sw) = pair(kernel), pair(stride)
    (ph, pw), (dh, dw) = pair(padding), pair(dilation)
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0 or 2 * ph > kh or 2 * pw > kw \
            or oh < 1 or ow < 1:
        raise ValueError(f"{what}: window {(kh, kw)}, stride {(sh, sw)}, padding {(ph, pw)}, "
                         f"dilation {(dh, dw)} is invalid for a {h}x{w} input")
    if out is None:
        out = torch.empty((n, oh, ow, c), dtype=x.dtype, device=x.device)
    check_tensor(out, f"{what} out", shape=(n, oh, ow, c), dtype=x.dtype, device=x.device)
    check_no_overlap(out, what, x=x)
    m = n * oh * ow

    def grid(meta):
        return triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(c, meta["BLOCK_C"])
    pool2d_nhwc_kernel[grid](x, out, h, w, c, oh, ow, m, kh, kw, sh, sw, ph, pw, dh, dw,
                             IS_MAX=is_max, COUNT_INCLUDE_PAD=bool(count_include_pad),
                             **LAUNCH_OPTIONS)
    return out


def max_pool2d_nhwc(x: torch.Tensor, kernel, stride=None, padding=0, dilation=1,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.max_pool2d on x [N, H, W, C]; stride defaults to the kernel."""
    return _pool2d(x, out, kernel, kernel if stride is None else stride, padding, dilation,
                   True, False, "max_pool2d")


def avg_pool2d_nhwc(x: torch.Tensor, kernel, stride=None, padding=0,
                    count_include_pad: bool = True,
                    out: torch.Tensor | None = None) -> torch.Tensor:
    """torch.nn.functional.avg_pool2d on x [N, H, W, C]; stride defaults to the kernel."""
    return _pool2d(x, out, kernel, kernel if stride is None else stride, padding, 1, False,
                   count_include_pad, "avg_pool2d")


def global_avg_pool_nhwc(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over H and W of x [N, H, W, C] -> out [N, C]."""
    check_tensor(x, "global_avg_pool x")
    if x.dim() != 4:
        raise ValueError(f"global_avg_pool: x must be NHWC [N, H, W, C], got {tuple(x.shape)}")
    n, h, w, c = x.shape
    if out is None:
        out = torch.empty((n, c), dtype=x.dtype, device=x.device)
    check_tensor(out, "global_avg_pool out", shape=(n, c), dtype=x.dtype, device=x.device)
    check_no_overlap(out, "global_avg_pool", x=x)

    def grid(meta):
        return n, triton.cdiv(c, meta["BLOCK_C"])
    global_avg_pool_nhwc_kernel[grid](x, out, h * w, c, **LAUNCH_OPTIONS)
    return out


# -- backward ----------------------------------------------------------------------------------

@triton.autotune(configs=POOL_CONFIGS, restore_value=["arg_ptr"],
                 key=["M", "C", "KH", "KW", "stride_h", "stride_w"])
@triton.jit
def max_pool_argmax_kernel(x_ptr, arg_ptr, H, W, C, OH, OW, M, KH, KW,
                           stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                           BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """arg[n, oh, ow, c] = r·KW + s of the window's first maximum in scan order (strictly
    greater replaces; padding never wins; an all -inf window picks its first real tap)."""
    offs_m, offs_c, mask_m, mask_c = program_block(M, C, BLOCK_M, BLOCK_C)
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


@triton.autotune(configs=POOL_CONFIGS, restore_value=["dx_ptr"],
                 key=["M", "C", "KH", "KW", "stride_h", "stride_w", "IS_MAX"])
@triton.jit
def pool_backward_kernel(dy_ptr, arg_ptr, dx_ptr, H, W, C, OH, OW, M, KH, KW,
                         stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                         IS_MAX: tl.constexpr, COUNT_INCLUDE_PAD: tl.constexpr,
                         BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """dx[n, h, w, c] = sum over the windows (oh, ow) that read (h, w) through tap (r, s) of
    dy[n, oh, ow, c] · [arg == r·KW + s] (max) or / count(oh, ow) (average)."""
    offs_m, offs_c, mask_m, mask_c = program_block(M, C, BLOCK_M, BLOCK_C)
    n, h, w = decode_field(offs_m, H, W)
    img = n.to(tl.int64) * OH * OW * C
    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for r in range(KH):
        oh, oh_ok = tap_source(h, pad_h, r, dil_h, stride_h, OH)
        row_ok = mask_m & oh_ok
        for s in range(KW):
            ow, ow_ok = tap_source(w, pad_w, s, dil_w, stride_w, OW)
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
