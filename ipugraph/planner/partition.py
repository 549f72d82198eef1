"""Partitions of an op's iteration space over tiles, and the first-pass search over them.

A partition gives each dimension of the op's Space a split count; the slices of a dimension are
whole grains, balanced to within one grain, and a vertex owns one slice of every dimension.
`candidates` scores every split in one vectorised pass with cost.estimate and returns the few
best (by total cost, and by compute alone, since the first pass over-counts exchange); the
exact evaluation with tile mappings then picks among them (evaluate.py).
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from ..space import Space
from . import cost as costmodel


class PlanError(ValueError):
    """No plan of an op, or of the whole graph, fits the target."""


@dataclass(frozen=True)
class Partition:
    dims: tuple[str, ...]
    extents: tuple[int, ...]
    grains: tuple[int, ...]
    splits: tuple[int, ...]

    @property
    def num_vertices(self) -> int:
        return int(np.prod(self.splits))

    def boundaries(self, d: int) -> np.ndarray:
        """Slice edges along dim d: splits[d]+1 increasing values from 0 to extent."""
        extent, grain, s = self.extents[d], self.grains[d], self.splits[d]
        grains = -(-extent // grain)
        return np.minimum((np.arange(s + 1) * grains) // s * grain, extent)

    def vertex_table(self) -> np.ndarray:
        """int32 [V, 2*len(dims)]: one row (lo0, hi0, lo1, hi1, ...) per vertex, row-major over
        the dims so that neighbouring vertices share the most input."""
        idx = np.indices(self.splits).reshape(len(self.splits), -1)
        cols = []
        for d in range(len(self.dims)):
            edges = self.boundaries(d)
            cols += [edges[idx[d]], edges[idx[d] + 1]]
        return np.ascontiguousarray(np.stack(cols, axis=1).astype(np.int32))

    def describe(self) -> str:
        parts = [f"{d}/{s}" for d, s in zip(self.dims, self.splits) if s > 1]
        return "×".join(parts) if parts else "whole"


def batch_dim(space: Space) -> int | None:
    """The dim a Repeat serialises over (the batch), if the op has one."""
    return 0 if space.dims and space.dims[0].name in ("n", "m") else None


def chunk_space(space: Space, chunk: int) -> Space:
    """The same op on `chunk` samples of its batch: what one repeat of a serialised op does."""
    d = batch_dim(space)
    if d is None:
        return space
    dims = list(space.dims)
    dims[d] = replace(dims[d], extent=chunk)
    return replace(space, dims=tuple(dims))


def _split_candidates(extent: int, grain: int, limit: int) -> np.ndarray:
    """For each distinct slice size ceil(G/s) the smallest split s achieving it (G grains)."""
    g = -(-extent // grain)
    sizes = {-(-g // s) for s in range(1, min(g, limit) + 1)}
    return np.array(sorted({-(-g // q) for q in sizes if -(-g // q) <= limit}), dtype=np.int64)


def candidates(space: Space, target, dtype: str, keep: int = 8,
               relax: float = 1.0) -> tuple[list[Partition], dict]:
    """The most promising partitions of `space`: the best by first-pass total and by compute
    among those whose first-pass temporaries fit `relax` × the op budget (IPU; the host is never
    refused), and the smallest by temporaries; and, for error messages, the smallest first-pass
    bytes found."""
    names = space.names
    extents = tuple(d.extent for d in space.dims)
    grains = tuple(max(1, min(d.grain, d.extent)) for d in space.dims)
    limit = costmodel.max_vertices(space, target)
    cands = [_split_candidates(e, g, limit) for e, g in zip(extents, grains)]
    grid = np.stack(np.meshgrid(*cands, indexing="ij"), axis=-1).reshape(-1, len(cands))
    grid = grid[np.prod(grid, axis=1) <= limit]
    ext = np.array(extents, dtype=np.int64)
    grn = np.array(grains, dtype=np.int64)
    max_slice = np.minimum(-(-(-(-ext // grn)) // grid) * grn, ext)
    est = costmodel.estimate(space, target, dtype, grid, max_slice)
    budget = min(relax * target.op_bytes_per_tile, target.bytes_per_tile)
    feasible = (np.ones(len(grid), dtype=bool) if target.memory_is_cache
                else est["tile_bytes"] <= budget)
    smallest = int(np.argmin(est["tile_bytes"]))
    info = {"min_bytes": float(est["tile_bytes"][smallest]),
            "min_split": dict(zip(names, grid[smallest].tolist())), "budget": budget}
    nv_all = np.prod(grid, axis=1)
    # The first pass over-counts received bytes (nothing resident), so the smallest-footprint
    # splits go to the exact evaluation too, which decides what fits.
    by_bytes = np.lexsort((nv_all, est["tile_bytes"]))[:keep]
    rows = np.flatnonzero(feasible)
    nv = nv_all[rows]
    # Ties (common when compute dominates) go to fewer vertices.
    by_total = rows[np.lexsort((nv, est["total"][rows]))[:keep]]
    by_compute = rows[np.lexsort((nv, est["compute"][rows] + est["reduce"][rows]))[:keep]]
    chosen = list(dict.fromkeys(by_total.tolist() + by_compute.tolist() + by_bytes.tolist()))
    parts = [Partition(names, extents, grains, tuple(int(s) for s in grid[i])) for i in chosen]
    return parts, info
