"""Reductions: per-channel sums (channel_sum, and the sums bn_stats and bn_grad_stats are made of)
and sums / means / maxima over any axes (reduce_axes).

Per-channel: a tensor in storage layout seen as (OUTER, C, INNER) row-major -- an NHWC
activation or an [N, C] matrix is (N·H·W or N, C, 1), an [N, C, L] tensor (N, C, L); element
i's channel is (i // INNER) % C. Each program sums a [rows, BLOCK_C] tile over a chunk of the
rows into an fp32 workspace [SPLIT, 2, C]; a second kernel sums the SPLIT partials in order
and scales (deterministic, no atomics).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import INTERPRET, LAUNCH_OPTIONS, check_no_overlap, check_tensor, configs, offset6

REDUCE_CONFIGS = configs(
    [triton.Config({"BLOCK_R": 64, "BLOCK_C": 64}, num_warps=4),
     triton.Config({"BLOCK_R": 32, "BLOCK_C": 128}, num_warps=4),
     triton.Config({"BLOCK_R": 128, "BLOCK_C": 32}, num_warps=4)],
    triton.Config({"BLOCK_R": 32, "BLOCK_C": 16}))

SMALL_CONFIGS = configs([triton.Config({"BLOCK": 256}, num_warps=4)],
                        triton.Config({"BLOCK": 256}))

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


def per_channel_input(x, layout, what, name="x"):
    check_tensor(x, f"{what} {name}")
    outer, c, inner = layout
    if x.numel() != outer * c * inner:
        raise ValueError(f"{what}: {name} has {x.numel()} elements, the layout {layout} "
                         f"{outer * c * inner}")


def channel_sum(x: torch.Tensor, layout, out=None, *, split: int | None = None) -> torch.Tensor:
    """[C]: the sum of x over every axis but the channel."""
    what = "channel_sum"
    per_channel_input(x, layout, what)
    c = layout[1]
    if out is None:
        out = torch.empty((c,), dtype=x.dtype, device=x.device)
    check_tensor(out, f"{what} out", shape=(c,), device=x.device)
    check_no_overlap(out, what, x=x)
    channel_reduce(x, layout, 0, out, split=split)
    return out


# -- sum / mean / max over any axes ------------------------------------------------------------

AXES_CONFIGS = configs(
    [triton.Config({"BLOCK_O": 32, "BLOCK_R": 64}, num_warps=4),
     triton.Config({"BLOCK_O": 8, "BLOCK_R": 256}, num_warps=4)],
    triton.Config({"BLOCK_O": 16, "BLOCK_R": 64}))
RED_AXES = 6
KIND_SUM, KIND_MEAN, KIND_MAX = 0, 1, 2


@triton.autotune(configs=AXES_CONFIGS, restore_value=["out_ptr"], key=["n_out", "R", "KIND"])
@triton.jit
def reduce_axes_kernel(x_ptr, out_ptr, n_out, R, k0, k1, k2, k3, k4, k5, ks0, ks1, ks2, ks3,
                       ks4, ks5, r0, r1, r2, r3, r4, r5, rs0, rs1, rs2, rs3, rs4, rs5,
                       KIND: tl.constexpr, BLOCK_O: tl.constexpr, BLOCK_R: tl.constexpr):
    o = tl.program_id(0).to(tl.int64) * BLOCK_O + tl.arange(0, BLOCK_O)
    mo = o < n_out
    koff = offset6(o, k0, k1, k2, k3, k4, k5, ks0, ks1, ks2, ks3, ks4, ks5)
    if KIND == 2:
        acc = tl.full((BLOCK_O, BLOCK_R), float("-inf"), dtype=tl.float32)
    else:
        acc = tl.zeros((BLOCK_O, BLOCK_R), dtype=tl.float32)
    for start in range(0, R, BLOCK_R):
        r = start + tl.arange(0, BLOCK_R).to(tl.int64)
        mr = r < R
        roff = offset6(r, r0, r1, r2, r3, r4, r5, rs0, rs1, rs2, rs3, rs4, rs5)
        m = mo[:, None] & mr[None, :]
        v = tl.load(x_ptr + koff[:, None] + roff[None, :], mask=m,
                    other=float("-inf") if KIND == 2 else 0.0).to(tl.float32)
        if KIND == 2:
            acc = tl.where((v > acc) | (v != v), v, acc)
        else:
            acc += v
    if KIND == 2:
        nan = tl.max(tl.where(acc != acc, 1, 0), axis=1)        # NaN propagates (torch.amax)
        res = tl.where(nan > 0, float("nan"), tl.max(acc, axis=1))
    else:
        res = tl.sum(acc, axis=1)
        if KIND == 1:
            res = res / R
    tl.store(out_ptr + o, res.to(out_ptr.dtype.element_ty), mask=mo)


def reduce_axes(x: torch.Tensor, out: torch.Tensor, kept_shape, kept_strides, red_shape,
                red_strides, kind: int) -> torch.Tensor:
    """out[o] = sum (kind 0), mean (1) or max (2) over the reduced dims of x, output o (out
    row-major over kept_shape) at offset sum c_d · kept_strides[d]; strides in elements."""
    what = "reduce_axes"
    check_tensor(x, f"{what} x")
    check_tensor(out, f"{what} out", device=x.device)
    if len(kept_shape) > RED_AXES or len(red_shape) > RED_AXES:
        raise ValueError(f"{what}: at most {RED_AXES} kept and {RED_AXES} reduced dims")
    check_no_overlap(out, what, x=x)
    n_out, R = 1, 1
    for d in kept_shape:
        n_out *= d
    for d in red_shape:
        R *= d
    if out.numel() != n_out:
        raise ValueError(f"{what}: out has {out.numel()} elements, the kept dims {n_out}")

    def pad(v, fill):
        return [fill] * (RED_AXES - len(v)) + list(v)

    def grid(meta):
        return (triton.cdiv(n_out, meta["BLOCK_O"]),)
    reduce_axes_kernel[grid](x, out, n_out, R, *pad(kept_shape, 1), *pad(kept_strides, 0),
                             *pad(red_shape, 1), *pad(red_strides, 0), KIND=int(kind),
                             **LAUNCH_OPTIONS)
    return out
