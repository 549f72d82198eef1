"""What ops and the planner share: an op's iteration space (Dim, Space) and boxes of tensor
elements (Region).

An op describes the work it does as a Space: the dimensions the planner may split over tiles,
what a slice of them costs, and which elements of its output and inputs a vertex (one slice)
writes and reads, as Regions. The planner (ipugraph/planner/) partitions Spaces and turns
Regions into tile mappings and exchange; ops/ never imports the planner.

A Region is a set of axis-aligned boxes in a tensor's logical index space, each tagged with the
vertex it belongs to (a vertex may own several boxes: a flat element range of an elementwise op
is up to 2·rank-1 boxes). Everything is vectorised over boxes.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np


@dataclass(frozen=True)
class Dim:
    """One splittable dimension of an op's iteration space. A split's slices are whole
    multiples of grain elements (the codelet's vector width), except the last."""
    name: str
    extent: int
    grain: int = 1


@dataclass
class Space:
    """What the planner partitions. `dims` are in vertex-table column order: a vertex row is
    (lo0, hi0, lo1, hi1, ...). `slice_cost(sizes)` takes an int64 array [..., len(dims)] of slice
    extents and returns (work, in_bytes, weight_bytes, out_bytes) arrays: what one vertex with
    that slice computes (in MAC-equivalent operations) and must hold on its tile.

    `boxes(table)` says which elements each vertex of a vertex table writes and reads, in the
    tensors' logical coordinates: (output Region, [(input tensor, Region), ...]); the planner
    turns these into tile mappings and exchange. `reduce_dims` are dims whose split makes
    partial sums (conv input channels and kernel rows, a matmul's K): their vertices write
    partials that a reduction step adds up. `codelet` is "supervisor" for codelets that spread
    one vertex over all of a tile's worker threads (conv, matmul, as PopLibs' AMP vertices do) or
    "worker" for one-thread vertices (pooling, elementwise); `rate` is which throughput their work
    runs at: "macs" (the AMP / FMA units) or "vector" (plain vector arithmetic). `reduce_region`
    maps a reduction vertex's kept-dim box to the output elements it writes, when those dims
    are not simply the output's axes (a per-channel reduction into [2, C])."""
    dims: tuple[Dim, ...]
    slice_cost: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]
    boxes: Callable | None = None
    reduce_dims: tuple[str, ...] = ()
    codelet: str = "worker"
    rate: str = "vector"
    reduce_region: Callable | None = None
    method: str = "direct"

    # An op's space function may return several Spaces, one per way of computing it (a conv:
    # "direct", "winograd4x4" or "winograd2x2"); the planner keeps the cheapest. `method` names the codelet the
    # backends run, and plan.summary() shows it, as PopLibs' plans name theirs.

    # reduce_region(kept) -> Region: the output elements each reduction vertex writes, from its
    # (lo, hi) columns of the dims that are not reduce dims; by default those dims are the
    # output's axes in order (conv: n, k, oh, ow; gemm: m, n).

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(d.name for d in self.dims)



@dataclass
class Region:
    vid: np.ndarray          # int64 [B]: the vertex each box belongs to
    lo: np.ndarray           # int64 [B, rank]
    hi: np.ndarray           # int64 [B, rank]

    @staticmethod
    def boxes(lo, hi) -> "Region":
        lo = np.asarray(lo, dtype=np.int64)
        hi = np.asarray(hi, dtype=np.int64)
        return Region(np.arange(len(lo), dtype=np.int64), lo, hi)

    def volume(self) -> np.ndarray:
        return np.prod(np.maximum(self.hi - self.lo, 0), axis=1)

    def per_vertex(self, values: np.ndarray, num_vertices: int) -> np.ndarray:
        return np.bincount(self.vid, weights=values, minlength=num_vertices)


def full_region(shape, num_vertices: int) -> Region:
    """Every vertex needs the whole tensor (small operands such as a bias; a scalar is one
    element, as in flat_region)."""
    shape = tuple(int(s) for s in shape) or (1,)
    rank = len(shape)
    lo = np.zeros((num_vertices, rank), dtype=np.int64)
    hi = np.tile(np.asarray(shape, dtype=np.int64), (num_vertices, 1))
    return Region.boxes(lo, hi)


def flat_region(shape, start: np.ndarray, stop: np.ndarray) -> Region:
    """The boxes of row-major element ranges [start[v], stop[v]) of a tensor of `shape`: per
    range, a head that climbs to ever coarser block boundaries, then a tail that descends to
    the range's end (at most 2·rank - 1 boxes), computed for all ranges at once, level by level.
    Boxes come ordered by vertex, then by address."""
    shape = tuple(int(s) for s in shape) or (1,)
    rank = len(shape)
    dims = np.asarray(shape, np.int64)
    st = np.ones(rank, np.int64)                       # st[k]: elements per step of axis k
    for k in range(rank - 2, -1, -1):
        st[k] = st[k + 1] * dims[k + 1]
    a = np.asarray(start, np.int64).reshape(-1).copy()
    b = np.asarray(stop, np.int64).reshape(-1)
    vid_all = np.arange(len(a), dtype=np.int64)
    vids, los, his, addr = [], [], [], []

    def emit(k, lo_flat, hi_flat):
        m = hi_flat > lo_flat
        if not m.any():
            return
        a0, a1 = lo_flat[m], hi_flat[m]
        coords = (a0[:, None] // st[None, :]) % dims[None, :]
        hi = coords + 1
        hi[:, k] = coords[:, k] + (a1 - a0) // st[k]
        hi[:, k + 1:] = dims[k + 1:]
        vids.append(vid_all[m])
        los.append(coords)
        his.append(hi)
        addr.append(a0)

    for k in range(rank - 1, 0, -1):                   # head: up to the next st[k-1] boundary
        up = st[k - 1]
        nb = np.minimum(-(-a // up) * up, (b // st[k]) * st[k])
        nb = np.maximum(nb, a)
        emit(k, a, nb)
        a = nb
    for k in range(rank):                              # tail: whole blocks, finer and finer
        nb = np.maximum((b // st[k]) * st[k], a)
        emit(k, a, nb)
        a = nb
    if not vids:
        empty = np.zeros((0, rank), dtype=np.int64)
        return Region(np.zeros(0, dtype=np.int64), empty, empty.copy())
    vid, lo, hi, at = (np.concatenate(x) for x in (vids, los, his, addr))
    order = np.lexsort((at, vid))
    return Region(vid[order], lo[order], hi[order])


def broadcast_region(region: Region, out_shape, shape) -> Region:
    """The elements of a tensor of `shape` that NumPy broadcasting reads for the boxes of
    `region` (boxes of a tensor of `out_shape`): trailing axes aligned, size-1 axes read at 0.
    Boxes that collapse onto the same operand box are kept once per vertex."""
    shape, out_shape = tuple(int(d) for d in shape), tuple(int(d) for d in out_shape)
    if shape == out_shape:
        return region
    if not shape:
        one = np.ones((len(region.vid), 1), np.int64)
        lo, hi = one - 1, one
    else:
        k = region.lo.shape[1] - len(shape)
        lo, hi = region.lo[:, k:].copy(), region.hi[:, k:].copy()
        ones = [i for i, d in enumerate(shape) if d == 1]
        lo[:, ones], hi[:, ones] = 0, 1
    if not len(lo):
        return Region(region.vid, lo, hi)
    keys = np.concatenate([region.vid[:, None], lo, hi], axis=1)
    _, first = np.unique(keys, axis=0, return_index=True)
    first.sort()
    return Region(region.vid[first], lo[first], hi[first])
