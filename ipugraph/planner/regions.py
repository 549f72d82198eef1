"""Boxes of tensor elements, and tile mappings built from them.

A Region is a set of axis-aligned boxes in a tensor's logical index space, each tagged with the
vertex it belongs to (a vertex may own several boxes: a flat element range of an elementwise op
is up to 2·rank-1 boxes). A TileMapping is the same with a tile per box: which tile holds which
elements of a tensor, as Poplar's tile mappings say. Everything is vectorised over boxes; the only
join is "boxes on the same tile", done by sorting on the tile id.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


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
    """The boxes of row-major element ranges [start[v], stop[v]) of a tensor of `shape`."""
    shape = tuple(int(s) for s in shape) or (1,)
    vids, los, his = [], [], []
    for v, (a, b) in enumerate(zip(np.asarray(start).tolist(), np.asarray(stop).tolist())):
        for lo, hi in _decompose(shape, a, b):
            vids.append(v)
            los.append(lo)
            his.append(hi)
    rank = len(shape)
    if not vids:
        empty = np.zeros((0, rank), dtype=np.int64)
        return Region(np.zeros(0, dtype=np.int64), empty, empty.copy())
    return Region(np.array(vids, dtype=np.int64), np.array(los, dtype=np.int64),
                  np.array(his, dtype=np.int64))


def _decompose(shape, a: int, b: int, prefix=()):
    """Yield (lo, hi) boxes covering flat range [a, b) of `shape` (a C-order decomposition)."""
    if a >= b:
        return
    if len(shape) == 1:
        yield (*prefix, a), tuple(p + 1 for p in prefix) + (b,)
        return
    inner = int(np.prod(shape[1:]))
    rest = len(shape) - 1
    i0, i1 = a // inner, b // inner
    if i0 == i1:
        yield from _decompose(shape[1:], a % inner, b % inner, prefix + (i0,))
        return
    if a % inner:
        yield from _decompose(shape[1:], a % inner, inner, prefix + (i0,))
        i0 += 1
    if i1 > i0:
        yield ((*prefix, i0) + (0,) * rest,
               tuple(p + 1 for p in prefix) + (i1,) + tuple(shape[1:]))
    if b % inner:
        yield from _decompose(shape[1:], 0, b % inner, prefix + (i1,))


@dataclass
class TileMapping:
    """Which tile holds which elements of a tensor. `key` identifies how the mapping was made
    (the producing step's plan), so plans that depend on it can be cached."""
    shape: tuple
    itemsize: int
    tiles: np.ndarray        # int64 [B]
    lo: np.ndarray           # int64 [B, rank]
    hi: np.ndarray
    key: tuple = ()

    @staticmethod
    def of(region: Region, vertex_tiles: np.ndarray, shape, itemsize: int,
           key: tuple = ()) -> "TileMapping":
        return TileMapping(tuple(shape) or (1,), itemsize, np.asarray(vertex_tiles, np.int64)[region.vid],
                           region.lo, region.hi, key)

    @staticmethod
    def linear(shape, itemsize: int, tiles: int, grain: int = 1) -> "TileMapping":
        """Spread the flat elements evenly over the tiles in whole grains (mapTensorLinearly)."""
        size = int(np.prod(shape))
        grains = -(-size // grain)
        used = max(1, min(tiles, grains))
        edges = np.minimum((np.arange(used + 1) * grains) // used * grain, size)
        region = flat_region(shape, edges[:-1], edges[1:])
        return TileMapping.of(region, np.arange(used), shape, itemsize,
                              key=("linear", tuple(shape), tiles, grain))

    def bytes_per_tile(self, num_tiles: int) -> np.ndarray:
        vol = np.prod(np.maximum(self.hi - self.lo, 0), axis=1)
        return np.bincount(self.tiles, weights=vol * self.itemsize, minlength=num_tiles)

    def resident(self, need: Region, need_tiles: np.ndarray) -> np.ndarray:
        """Elements of each box of `need` (box b wanted on tile need_tiles[b]) that this mapping
        already holds on that tile."""
        order = np.argsort(self.tiles, kind="stable")
        sorted_tiles = self.tiles[order]
        start = np.searchsorted(sorted_tiles, need_tiles, side="left")
        stop = np.searchsorted(sorted_tiles, need_tiles, side="right")
        counts = stop - start
        total = int(counts.sum())
        if total == 0:
            return np.zeros(len(need_tiles))
        ni = np.repeat(np.arange(len(need_tiles)), counts)
        offsets = np.cumsum(counts) - counts
        pj = order[start[ni] + (np.arange(total) - offsets[ni])]
        lo = np.maximum(need.lo[ni], self.lo[pj])
        hi = np.minimum(need.hi[ni], self.hi[pj])
        inter = np.prod(np.maximum(hi - lo, 0), axis=1)
        return np.bincount(ni, weights=inter, minlength=len(need_tiles))


def box_groups(lo: np.ndarray, hi: np.ndarray, shape) -> tuple[np.ndarray, np.ndarray]:
    """Group identical boxes: (group id of each box, size of each group). Boxes are packed into
    one int64 per row (mixed radix over the tensor's extents) so the grouping is a 1-D sort."""
    radix = np.concatenate([np.asarray(shape, np.int64) + 1] * 2)
    rows = np.concatenate([lo, hi], axis=1)
    if float(np.prod(radix.astype(np.float64))) < 2.0 ** 62:
        keys = np.zeros(len(rows), dtype=np.int64)
        for d in range(rows.shape[1]):
            keys = keys * radix[d] + rows[:, d]
        _, group, counts = np.unique(keys, return_inverse=True, return_counts=True)
    else:
        _, group, counts = np.unique(rows, axis=0, return_inverse=True, return_counts=True)
    return group.reshape(-1), counts


def owner_mapping(region: Region, vertex_tiles: np.ndarray, shape, itemsize: int) -> TileMapping:
    """A mapping for a tensor created for its consumer (weights: PopLibs' createWeights): each
    distinct box is spread over the tiles of the vertices that read it, cut along its longest
    dim, so that each reader holds a piece and receives the rest (a broadcast exchange)."""
    shape = tuple(shape) or (1,)                  # a scalar is one element, as in flat_region
    tiles = np.asarray(vertex_tiles, np.int64)[region.vid]
    if len(tiles) == 0:
        return TileMapping.of(region, vertex_tiles, shape, itemsize, key=("owner",))
    group, counts = box_groups(region.lo, region.hi, shape)
    order = np.argsort(group, kind="stable")
    starts = np.cumsum(counts) - counts
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - starts[group[order]]
    users = counts[group]
    extent = region.hi - region.lo
    dim = np.argmax(extent, axis=1)
    ext = extent[np.arange(len(dim)), dim]
    lo, hi = region.lo.copy(), region.hi.copy()
    base = region.lo[np.arange(len(dim)), dim]
    lo[np.arange(len(dim)), dim] = base + (ext * rank) // users
    hi[np.arange(len(dim)), dim] = base + (ext * (rank + 1)) // users
    keep = np.flatnonzero(hi[np.arange(len(dim)), dim] > lo[np.arange(len(dim)), dim])
    return TileMapping(tuple(shape), itemsize, tiles[keep], lo[keep], hi[keep], ("owner",))
