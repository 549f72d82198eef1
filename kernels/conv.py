"""2-D convolution over NHWC activations as an implicit GEMM, with a fused epilogue.

The convolution of x [N, H, W, C] with weights [K, C/G, R, S] in G groups is, per group g, the
GEMM

    out[m, g·Kg + j] = sum_{(r, s, c)} X[m, (r, s, c)] · Wp[g, (r, s, c), j]

over M = N·OH·OW output pixels (m = (n, oh, ow)), Kg = K/G output channels and a reduction of
R·S·Cg terms, where X is the im2col matrix

    X[m, (r, s, c)] = x[n, oh·sh − ph + r·dh, ow·sw − pw + s·dw, g·Cg + c]   (0 outside x)

"Implicit": X is never materialised. Each program computes a [BLOCK_M, BLOCK_N] tile of out,
loading the X tile it needs straight from x with the padding masked, and the packed weights
Wp [G, R·S·Cg, Kg] (see pack_weight) as a [BLOCK_K, BLOCK_N] tile. NHWC makes the channel the
contiguous dimension, so for each tap (r, s) a program reads BLOCK_K consecutive channels of
BLOCK_M pixels. Three forms, picked by the host wrapper:

* tap loop: for each (r, s), for each block of channels -- contiguous loads; Cg >= 32.
* gathered K: the reduction index runs over (r, s, c) in blocks of BLOCK_K and each element is
  gathered -- for small Cg (a network's first conv has C = 3), where the tap loop would waste
  most of every BLOCK_K.
* depthwise (Cg = 1): no reduction over channels, so no dot; each program accumulates its
  [BLOCK_M, BLOCK_C] tile tap by tap with elementwise FMAs.

1×1 stride-1 unpadded ungrouped convs go to the GEMM kernel (matmul.py): x [N·H·W, C] is
already the im2col matrix.

Epilogue (epilogue.py): + bias (or folded batch norm), + residual, ReLU, then the store: a
ResNet basic block is two launches of this kernel.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LAUNCH_OPTIONS, check_epilogue, check_no_overlap, check_tensor, \
    configs, decode_pixels, dot_in_fp32, input_precision, pair, program_block, store_epilogue
from .matmul import matmul

CONV_CONFIGS = configs(
    [triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32}, num_warps=8, num_stages=3),
     triton.Config({"BLOCK_M": 128, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
     triton.Config({"BLOCK_M": 64, "BLOCK_N": 64, "BLOCK_K": 32}, num_warps=4, num_stages=4),
     triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64}, num_warps=4, num_stages=3)],
    triton.Config({"BLOCK_M": 32, "BLOCK_N": 64, "BLOCK_K": 64}))

DEPTHWISE_CONFIGS = configs(
    [triton.Config({"BLOCK_M": 64, "BLOCK_C": 64}, num_warps=4),
     triton.Config({"BLOCK_M": 32, "BLOCK_C": 128}, num_warps=4),
     triton.Config({"BLOCK_M": 128, "BLOCK_C": 32}, num_warps=4)],
    triton.Config({"BLOCK_M": 32, "BLOCK_C": 32}))

# Below this many input channels per group the reduction is gathered over (r, s, c).
GATHER_BELOW_CHANNELS = 32


@triton.autotune(configs=CONV_CONFIGS, restore_value=["out_ptr"],
                 key=["M", "KG", "CG", "R", "S", "stride_h", "stride_w", "GATHER_K",
                      "INPUT_PRECISION"])
@triton.jit
def conv2d_nhwc_kernel(
        x_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
        H, W, C, OH, OW, K, CG, KG, R, S, M,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
        GATHER_K: tl.constexpr, INPUT_PRECISION: tl.constexpr, DOT_IN_FP32: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    g = tl.program_id(2)

    # This program's output pixels m = (n, oh, ow) and output channels (within group g).
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mask_m = offs_m < M
    mask_n = offs_n < KG
    ih0, iw0, x_pix = decode_pixels(offs_m, H, W, C, OH, OW, stride_h, stride_w, pad_h, pad_w)
    x_pix += g * CG                                     # x[n, 0, 0, g·Cg]
    RSC = R * S * CG
    w_group = w_ptr + g.to(tl.int64) * RSC * KG

    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if GATHER_K:
        # Reduction index t = (r·S + s)·Cg + c, gathered BLOCK_K at a time.
        for t0 in range(0, RSC, BLOCK_K):
            t = t0 + offs_k
            t_ok = t < RSC
            c = t % CG
            r = t // (S * CG)
            s = (t // CG) % S
            ih = ih0[:, None] + r[None, :] * dil_h
            iw = iw0[:, None] + s[None, :] * dil_w
            inside = (ih >= 0) & (ih < H) & (iw >= 0) & (iw < W)
            a = tl.load(x_ptr + x_pix[:, None] + (ih * W + iw) * C + c[None, :],
                        mask=mask_m[:, None] & t_ok[None, :] & inside, other=0.0)
            b = tl.load(w_group + t[:, None] * KG + offs_n[None, :],
                        mask=t_ok[:, None] & mask_n[None, :], other=0.0)
            if DOT_IN_FP32:
                a = a.to(tl.float32)
                b = b.to(tl.float32)
            acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    else:
        # Tap loop: for each (r, s), BLOCK_K contiguous channels of BLOCK_M pixels at a time.
        for r in range(R):
            ih = ih0 + r * dil_h
            row_ok = mask_m & (ih >= 0) & (ih < H)
            for s in range(S):
                iw = iw0 + s * dil_w
                pix_ok = row_ok & (iw >= 0) & (iw < W)
                x_ptrs = x_ptr + (x_pix + (ih * W + iw) * C)[:, None] + offs_k[None, :]
                w_ptrs = w_group + ((r * S + s) * CG + offs_k)[:, None] * KG + offs_n[None, :]
                for c0 in range(0, CG, BLOCK_K):
                    c_ok = offs_k < CG - c0
                    a = tl.load(x_ptrs, mask=pix_ok[:, None] & c_ok[None, :], other=0.0)
                    b = tl.load(w_ptrs, mask=c_ok[:, None] & mask_n[None, :], other=0.0)
                    if DOT_IN_FP32:
                        a = a.to(tl.float32)
                        b = b.to(tl.float32)
                    acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
                    x_ptrs += BLOCK_K
                    w_ptrs += BLOCK_K * KG

    # Output channel g·Kg + j of pixel m sits at out[m·K + g·Kg + j] (NHWC = [M, K]).
    store_epilogue(acc, offs_m, g * KG + offs_n, mask_m, mask_n, bias_ptr, res_ptr, K,
                   out_ptr, K, HAS_BIAS, HAS_RES, RELU)


@triton.autotune(configs=DEPTHWISE_CONFIGS, restore_value=["out_ptr"],
                 key=["M", "K", "R", "S", "stride_h", "stride_w"])
@triton.jit
def conv2d_depthwise_nhwc_kernel(
        x_ptr, w_ptr, bias_ptr, res_ptr, out_ptr,
        H, W, C, OH, OW, K, KG, R, S, M,
        stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
        HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_C: tl.constexpr):
    """One input channel per group (Cg = 1): out[m, k] = sum_{r,s} x[.., k // Kg] · w[k, r, s]."""
    offs_m, offs_k, mask_m, mask_k = program_block(M, K, BLOCK_M, BLOCK_C)
    ih0, iw0, x_pix = decode_pixels(offs_m, H, W, C, OH, OW, stride_h, stride_w, pad_h, pad_w)
    group = offs_k // KG                               # the input channel of output channel k
    # Packed weights [G, R·S, Kg]: w[k, r, s] at group·R·S·Kg + (r·S + s)·Kg + k % Kg.
    w_k = group * (R * S * KG) + offs_k % KG

    acc = tl.zeros((BLOCK_M, BLOCK_C), dtype=tl.float32)
    for r in range(R):
        ih = ih0 + r * dil_h
        row_ok = mask_m & (ih >= 0) & (ih < H)
        for s in range(S):
            iw = iw0 + s * dil_w
            pix_ok = row_ok & (iw >= 0) & (iw < W)
            a = tl.load(x_ptr + (x_pix + (ih * W + iw) * C)[:, None] + group[None, :],
                        mask=pix_ok[:, None] & mask_k[None, :], other=0.0)
            wv = tl.load(w_ptr + w_k + (r * S + s) * KG, mask=mask_k, other=0.0)
            acc += a.to(tl.float32) * wv.to(tl.float32)[None, :]

    store_epilogue(acc, offs_m, offs_k, mask_m, mask_k, bias_ptr, res_ptr, K, out_ptr, K,
                   HAS_BIAS, HAS_RES, RELU)


# -- host side -------------------------------------------------------------------------------

def conv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def pack_weight(w: torch.Tensor, groups: int) -> torch.Tensor:
    """[K, Cg, R, S] (torch layout) -> [G, R·S·Cg, Kg] contiguous: for each group, the GEMM's
    B operand with the reduction (r, s, c) as rows and the group's output channels as columns."""
    k, cg, r, s = w.shape
    if k % groups:
        raise ValueError(f"pack_weight: {k} output channels are not divisible by groups={groups}")
    kg = k // groups
    return (w.reshape(groups, kg, cg, r, s).permute(0, 3, 4, 2, 1)
            .reshape(groups, r * s * cg, kg).contiguous())


def conv2d_nhwc(x: torch.Tensor, w_packed: torch.Tensor, kernel_size, bias=None, residual=None,
                out=None, *, stride=1, padding=0, dilation=1, groups: int = 1,
                relu: bool = False, allow_tf32: bool = False,
                gather_k: bool | None = None) -> torch.Tensor:
    """relu?(conv2d(x, w) + bias + residual) on NHWC tensors.

    x: [N, H, W, C]; w_packed: pack_weight(w [K, C/groups, R, S], groups), x's dtype;
    kernel_size: (R, S); bias: [K]; residual and out: [N, OH, OW, K] of x's dtype (out is
    allocated if None). gather_k forces (True) or forbids (False) the gathered-K form of the
    implicit GEMM; None picks by channels per group."""
    check_tensor(x, "conv2d x")
    if x.dim() != 4:
        raise ValueError(f"conv2d: x must be NHWC [N, H, W, C], got shape {tuple(x.shape)}")
    n, h, wd, c = x.shape
    r, s = pair(kernel_size)
    (sh, sw), (ph, pw), (dh, dw) = pair(stride), pair(padding), pair(dilation)
    if groups < 1 or c % groups:
        raise ValueError(f"conv2d: {c} input channels are not divisible by groups={groups}")
    cg = c // groups
    if w_packed.dim() != 3 or w_packed.shape[0] != groups or w_packed.shape[1] != r * s * cg:
        raise ValueError(f"conv2d: packed weight has shape {tuple(w_packed.shape)}, expected "
                         f"[groups={groups}, R·S·Cg={r * s * cg}, Kg] (see pack_weight)")
    check_tensor(w_packed, "conv2d packed weight", dtype=x.dtype, device=x.device)
    kg = w_packed.shape[2]
    k = kg * groups
    oh, ow = conv_out_size(h, r, sh, ph, dh), conv_out_size(wd, s, sw, pw, dw)
    if oh < 1 or ow < 1 or min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise ValueError(f"conv2d: a {r}x{s} kernel with stride {(sh, sw)}, padding "
                         f"{(ph, pw)}, dilation {(dh, dw)} does not fit a {h}x{wd} input")
    if out is None:
        out = torch.empty((n, oh, ow, k), dtype=x.dtype, device=x.device)
    check_tensor(out, "conv2d out", shape=(n, oh, ow, k), dtype=x.dtype, device=x.device)
    check_epilogue(out, bias, residual, k, "conv2d")
    check_no_overlap(out, "conv2d", x=x, weight=w_packed)
    m = n * oh * ow
    epilogue = dict(HAS_BIAS=bias is not None, HAS_RES=residual is not None, RELU=bool(relu))

    if r == s == 1 and (sh, sw) == (1, 1) and (ph, pw) == (0, 0) and groups == 1:
        matmul(x.view(m, c), w_packed[0], bias, None if residual is None else
               residual.view(m, k), out.view(m, k), relu=relu, allow_tf32=allow_tf32)
        return out
    geometry = (h, wd, c, oh, ow, k)
    conv = (sh, sw, ph, pw, dh, dw)
    if cg == 1:
        def grid(meta):
            return triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(k, meta["BLOCK_C"])
        conv2d_depthwise_nhwc_kernel[grid](x, w_packed, bias, residual, out, *geometry, kg, r, s,
                                           m, *conv, **epilogue, **LAUNCH_OPTIONS)
        return out
    if gather_k is None:
        gather_k = cg < GATHER_BELOW_CHANNELS

    def grid(meta):
        return triton.cdiv(m, meta["BLOCK_M"]), triton.cdiv(kg, meta["BLOCK_N"]), groups
    conv2d_nhwc_kernel[grid](x, w_packed, bias, residual, out, *geometry, cg, kg, r, s, m, *conv,
                             GATHER_K=bool(gather_k),
                             INPUT_PRECISION=input_precision(allow_tf32),
                             DOT_IN_FP32=dot_in_fp32(x.dtype), **epilogue, **LAUNCH_OPTIONS)
    return out
