"""Tile mappings: which tile holds which elements of a tensor (built from Regions, ipugraph/space.py).

A Region is a set of axis-aligned boxes in a tensor's logical index space, each tagged with the
vertex it belongs to (a vertex may own several boxes: a flat element range of an elementwise op
is up to 2·rank-1 boxes). A TileMapping is the same with a tile per box: which tile holds which
elements of a tensor, as Poplar's tile mappings say. Everything is vectorised over boxes; the only
join is "boxes on the same tile", done by sorting on the tile id.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..space import Region, flat_region, full_region  # noqa: F401  (re-exported)


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
        if (len(need_tiles) == len(self.tiles) and np.array_equal(need_tiles, self.tiles)
                and np.array_equal(need.lo, self.lo) and np.array_equal(need.hi, self.hi)):
            return need.volume()             # read where it was written (elementwise chains)
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
