"""Partition search: enumerate splits of an op's space over tiles and score them.

A partition gives each dimension of the op's Space a split count; the slices of a dimension are
whole grains, balanced to within one grain, and a vertex owns one slice of every dimension.
Candidates are scored in one vectorised pass with the cost model (cost.py): the slowest tile's
compute cycles + the cycles to receive its inputs + one sync; candidates whose per-tile bytes
exceed the target's budget are rejected (IPU), or penalised (host, whose budget is a cache).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from ..ops.registry import Space
from . import cost as costmodel


class PlanError(ValueError):
    """No partition of an op fits the target."""


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
        edges = np.minimum((np.arange(s + 1) * grains) // s * grain, extent)
        return edges

    def vertex_table(self) -> np.ndarray:
        """int32 [V, 2*len(dims)]: one row (lo0, hi0, lo1, hi1, ...) per vertex, row-major over
        the dims so that neighbouring vertices share the most input."""
        per_dim = [self.boundaries(d) for d in range(len(self.dims))]
        ranges = [np.stack([e[:-1], e[1:]], axis=1) for e in per_dim]
        rows = [np.concatenate(combo) for combo in itertools.product(*ranges)]
        return np.ascontiguousarray(np.array(rows, dtype=np.int32).reshape(-1, 2 * len(self.dims)))

    def describe(self) -> str:
        parts = [f"{d}/{s}" for d, s in zip(self.dims, self.splits) if s > 1]
        return "×".join(parts) if parts else "whole"


def _split_candidates(extent: int, grain: int, limit: int) -> np.ndarray:
    """For each distinct slice size ceil(G/s) the smallest split s achieving it (G grains)."""
    g = -(-extent // grain)
    sizes = {-(-g // s) for s in range(1, min(g, limit) + 1)}
    return np.array(sorted({-(-g // q) for q in sizes if -(-g // q) <= limit}), dtype=np.int64)


def search(space: Space, target, dtype: str, extra_bytes_per_out: int = 0,
           op_label: str = "op") -> tuple[Partition, dict]:
    """The cheapest feasible partition of `space` on `target` and its cost breakdown."""
    names = tuple(d.name for d in space.dims)
    extents = tuple(d.extent for d in space.dims)
    grains = tuple(max(1, min(d.grain, d.extent)) for d in space.dims)
    max_vertices = target.tiles * (8 if target.memory_is_cache else 1)
    cands = [_split_candidates(e, g, max_vertices) for e, g in zip(extents, grains)]
    grid = np.stack(np.meshgrid(*cands, indexing="ij"), axis=-1).reshape(-1, len(cands))
    grid = grid[np.prod(grid, axis=1) <= max_vertices]
    ext = np.array(extents, dtype=np.int64)
    grn = np.array(grains, dtype=np.int64)
    grains_per_dim = -(-ext // grn)
    max_slice = np.minimum(-(-grains_per_dim // grid) * grn, ext)
    est = costmodel.estimate(space, target, dtype, grid, max_slice, extra_bytes_per_out)
    budget = target.op_bytes_per_tile
    # A cache is never "full": the host's memory term is the spill cost inside `estimate`.
    feasible = est["tile_bytes"] <= budget if not target.memory_is_cache \
        else np.ones(len(grid), dtype=bool)
    if not feasible.any():
        # PopLibs relaxes the memory bound up to 2× before giving up.
        feasible = est["tile_bytes"] <= min(2 * budget, target.bytes_per_tile)
        if not feasible.any():
            best = int(np.argmin(est["tile_bytes"]))
            raise PlanError(
                f"{op_label}: no partition over {target.tiles} tiles of {target.name} fits: the "
                f"smallest needs {int(est['tile_bytes'][best]):,} bytes on a tile "
                f"(split {dict(zip(names, grid[best].tolist()))}), but a tile has "
                f"{target.bytes_per_tile:,} bytes ({budget:,} at availableMemoryProportion "
                f"{target.available_memory_proportion}). Use a smaller batch.")
    score = np.where(feasible, est["total"], np.inf)
    # Ties (common when compute dominates) go to the partition with fewer vertices.
    order = np.lexsort((np.prod(grid, axis=1), score))
    i = int(order[0])
    part = Partition(names, extents, grains, tuple(int(s) for s in grid[i]))
    return part, {k: v[i] for k, v in est.items()}
