"""Data movement: a strided copy (a layout change through up-to-4-D views), the gather behind
every index-mapping op (concat, slice, pad, upsample-nearest, select: per axis an index map,
-1 for the fill value) and a separable resampling along one axis (CSR rows of source indices
and weights: bilinear upsampling and the gradients of reflect padding and nearest upsampling).
Element i of the flat iteration space is decomposed by the (up to 6) axis sizes."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LAUNCH_OPTIONS, check_no_overlap, check_tensor, configs

FLAT_CONFIGS = configs(
    [triton.Config({"BLOCK": 1024}, num_warps=4),
     triton.Config({"BLOCK": 4096}, num_warps=8)],
    triton.Config({"BLOCK": 1024}))

GATHER_AXES = 6


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


@triton.jit
def _axis(rem, n, maps_ptr, mo, mask):
    """(the coordinate along an axis of size n, what remains, its source index: the map's
    entry, or the coordinate itself when mo < 0)."""
    c = rem % n
    use = mo >= 0
    m = tl.load(maps_ptr + tl.where(use, mo + c, 0), mask=mask, other=0)   # (the table is
    return c, rem // n, tl.where(use, m, c)                                  # never empty)


@triton.autotune(configs=FLAT_CONFIGS, restore_value=["out_ptr"], key=["numel", "IS_BOOL"])
@triton.jit
def gather_kernel(src_ptr, out_ptr, maps_ptr, numel, fill, out_base, src_base,
                  n0, n1, n2, n3, n4, n5, os0, os1, os2, os3, os4, os5,
                  ss0, ss1, ss2, ss3, ss4, ss5, mo0, mo1, mo2, mo3, mo4, mo5,
                  IS_BOOL: tl.constexpr, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < numel
    c5, rem, m5 = _axis(i, n5, maps_ptr, mo5, mask)
    c4, rem, m4 = _axis(rem, n4, maps_ptr, mo4, mask)
    c3, rem, m3 = _axis(rem, n3, maps_ptr, mo3, mask)
    c2, rem, m2 = _axis(rem, n2, maps_ptr, mo2, mask)
    c1, rem, m1 = _axis(rem, n1, maps_ptr, mo1, mask)
    c0, rem, m0 = _axis(rem, n0, maps_ptr, mo0, mask)
    out_off = out_base + c0 * os0 + c1 * os1 + c2 * os2 + c3 * os3 + c4 * os4 + c5 * os5
    valid = mask & (m0 >= 0) & (m1 >= 0) & (m2 >= 0) & (m3 >= 0) & (m4 >= 0) & (m5 >= 0)
    src_off = src_base + m0 * ss0 + m1 * ss1 + m2 * ss2 + m3 * ss3 + m4 * ss4 + m5 * ss5
    v = tl.load(src_ptr + tl.where(valid, src_off, 0), mask=valid, other=0)
    y = tl.where(valid, v.to(tl.float32), fill)
    if IS_BOOL:
        tl.store(out_ptr + out_off, y != 0.0, mask=mask)
    else:
        tl.store(out_ptr + out_off, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.autotune(configs=FLAT_CONFIGS, restore_value=["out_ptr"], key=["numel", "MAX_TAPS"])
@triton.jit
def resample_kernel(x_ptr, out_ptr, indptr_ptr, indices_ptr, weights_ptr, numel, n_in, n_out,
                    inner, MAX_TAPS, BLOCK: tl.constexpr):
    """out[o, j, i] = sum_e weights[e] · x[o, indices[e], i] over CSR row j."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    i = offs % inner
    j = (offs // inner) % n_out
    o = offs // (inner * n_out)
    start = tl.load(indptr_ptr + j, mask=mask, other=0)
    end = tl.load(indptr_ptr + j + 1, mask=mask, other=0)
    acc = tl.zeros((BLOCK,), dtype=tl.float32)
    for t in range(0, MAX_TAPS):
        e = start + t
        ok = mask & (e < end)
        idx = tl.load(indices_ptr + e, mask=ok, other=0)
        w = tl.load(weights_ptr + e, mask=ok, other=0.0)
        x = tl.load(x_ptr + (o * n_in + idx) * inner + i, mask=ok, other=0.0).to(tl.float32)
        acc += w * x
    tl.store(out_ptr + offs, acc.to(out_ptr.dtype.element_ty), mask=mask)


# -- host side ---------------------------------------------------------------------------------

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


def prepare_gather(out: torch.Tensor, shape, out_strides, sources, src_strides, src_bases, maps,
                   select_axis: int = -1, select=None, fill: float = 0.0) -> list:
    """The launches of a gather, built once (their index tables uploaded): out[c] =
    sources[k][base_k + sum_d maps[d][c_d] · strides_k[d]] (fill where a map entry is < 0; an
    empty map is the identity), k = select[c_sel] along the select axis (one launch per source,
    over the output window it owns). Strides and bases in elements. run_gather() launches."""
    what = "gather"
    nd = len(shape)
    if nd > GATHER_AXES or len(out_strides) != nd or len(maps) != nd:
        raise ValueError(f"{what}: at most {GATHER_AXES} axes, one stride and map each")
    is_bool = out.dtype == torch.bool
    launches = []
    for k, src in enumerate(sources):
        check_tensor(src, f"{what} source {k}", device=out.device,
                     dtype=src.dtype if not str(src.dtype).startswith("torch.float") else None)
        check_no_overlap(out, what, **{f"source{k}": src})
        window, base = list(shape), 0
        own = [torch.as_tensor(m, dtype=torch.int64) for m in maps]
        if select_axis >= 0:             # this source's window of the select axis (a slab)
            mine = torch.nonzero(torch.as_tensor(select) == k).reshape(-1)
            lo, hi = int(mine.min()), int(mine.max()) + 1
            base = lo * out_strides[select_axis]
            window[select_axis] = hi - lo
            m = own[select_axis]
            own[select_axis] = (m if len(m) else torch.arange(shape[select_axis]))[lo:hi]
        launches.append(_gather_launch(out, window, list(out_strides), src, src_strides[k],
                                       src_bases[k], own, float(fill), is_bool, base))
    return launches


def _gather_launch(out, shape, out_strides, src, src_strides, src_base, maps, fill, is_bool,
                   out_base):
    pad = GATHER_AXES - len(shape)
    shape = [1] * pad + list(shape)
    out_strides = [0] * pad + list(out_strides)
    src_strides = [0] * pad + list(src_strides)
    maps = [torch.zeros(0, dtype=torch.int64)] * pad + list(maps)
    offsets, flat, at = [], [], 0
    for m in maps:
        if len(m):
            offsets.append(at)
            flat.append(m)
            at += len(m)
        else:
            offsets.append(-1)
    table = (torch.cat(flat) if flat else torch.zeros(1, dtype=torch.int64)).to(out.device)
    numel = 1
    for n in shape:
        numel *= n
    return (src, out, table, numel, fill, int(out_base), int(src_base), *shape, *out_strides,
            *src_strides, *offsets, is_bool)


def run_gather(launches) -> None:
    for args in launches:
        numel, is_bool = args[3], args[-1]
        if numel == 0:
            continue

        def grid(meta, numel=numel):
            return (triton.cdiv(numel, meta["BLOCK"]),)
        gather_kernel[grid](*args[:-1], IS_BOOL=is_bool, **LAUNCH_OPTIONS)


def resample(x: torch.Tensor, out: torch.Tensor, outer: int, n_in: int, n_out: int, inner: int,
             indptr: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor,
             max_taps: int) -> torch.Tensor:
    """out [outer, n_out, inner] from x [outer, n_in, inner] through the CSR (indptr, indices,
    weights: device tensors, int64 / int64 / fp32) of a [n_out, n_in] matrix whose rows have
    at most max_taps entries."""
    what = "resample"
    check_tensor(x, f"{what} x")
    check_tensor(out, f"{what} out", dtype=x.dtype, device=x.device)
    if x.numel() != outer * n_in * inner or out.numel() != outer * n_out * inner:
        raise ValueError(f"{what}: x {tuple(x.shape)} / out {tuple(out.shape)} are not "
                         f"[{outer}, {n_in} / {n_out}, {inner}]")
    check_no_overlap(out, what, x=x)
    numel = out.numel()
    if numel == 0:
        return out

    def grid(meta):
        return (triton.cdiv(numel, meta["BLOCK"]),)
    resample_kernel[grid](x, out, indptr, indices, weights, numel, n_in, n_out, inner,
                          int(max_taps), **LAUNCH_OPTIONS)
    return out
