"""The cost model shared by the planner and bench/: cycles and bytes of vertices on tiles.

Per codelet (Space.codelet / Space.rate):
  a vertex's cycles   = work / rate + vertex overhead, where rate is the tile's FP32 MACs per
                        cycle (AMP / FMA units, rate "macs") or its plain vector ops per cycle
                        (rate "vector"); a "worker" vertex runs on one of the tile's worker
                        threads at 1/workers of that rate (barrel scheduling), a "supervisor"
                        vertex (conv, matmul) spreads over all of them
  a tile's compute    = supervisor: the sum of its vertices' cycles; worker: its vertices packed
                        onto the workers, max(sum / workers, longest vertex)
  exchange            = the bytes the busiest tile must receive (its slices with halo, its
                        weights, less what is already on the tile) / exchange bytes per cycle
  sync                = one BSP sync per step
  reduction           = for splits over reduce dims (input channels, kernel rows, a matmul's K):
                        P partial slabs per output box; the box's reducing tile receives P-1 of
                        them, adds them at the vector rate, and pays one more sync

This module holds the vectorised first-pass estimate over every candidate split (it assumes
nothing is resident, an upper bound on exchange) and the constants of code and vertex state; the
exact per-tile evaluation of the best candidates, with tile mappings, lives in evaluate.py.

On the host a tile is a core, memory is its L2 (a cache, not a limit): a slice that spills L2
pays the excess bytes again at DRAM speed, the weights a vertex reads come from memory (L3 or
DRAM: a network's weights do not stay in a core's L2 from one run to the next) and there is no
exchange phase.
"""
from __future__ import annotations

import numpy as np

# Always-live bytes a compute set leaves on a tile (Poplar keeps code and vertex state resident):
# code per codelet kind used on the tile, and state per vertex (its slice bounds and pointers).
# Model assumptions of the order of Poplar's reported sizes for such codelets.
CODE_BYTES = {"supervisor": 6 * 1024, "worker": 1024, "reduce": 1024}
VERTEX_STATE_BYTES = 64


def tile_rate(space, target, dtype: str) -> float:
    return float(target.macs_per_cycle_for(dtype) if space.rate == "macs"
                 else target.vector_ops_per_cycle)


def vertex_cycles(space, target, dtype: str, work) -> np.ndarray:
    """Cycles of one vertex doing `work`, on one worker (worker codelets) or the whole tile."""
    rate = tile_rate(space, target, dtype)
    if space.codelet == "worker":
        rate /= target.worker_threads
    return np.asarray(work, dtype=np.float64) / rate + target.vertex_overhead_cycles


def tile_compute(space, target, vertex_cyc: np.ndarray, count: np.ndarray) -> np.ndarray:
    """Compute cycles of a tile running `count` vertices of `vertex_cyc` cycles each (arrays
    broadcast: the first-pass estimate, where all of a tile's vertices are the largest slice)."""
    total = count * vertex_cyc
    if space.codelet == "worker":
        return np.maximum(total / target.worker_threads, np.where(count > 0, vertex_cyc, 0.0))
    return total


def max_vertices(space, target) -> int:
    """How many vertices a split may have: one per tile for supervisor codelets, one per worker
    for worker codelets; on the host a few per core, for dynamic load balancing."""
    per_tile = target.worker_threads if space.codelet == "worker" else 1
    return target.tiles * (8 if target.memory_is_cache else per_tile)


def weight_stream(target, ins, slot: np.ndarray, w_bytes: np.ndarray) -> np.ndarray:
    """Host: bytes each vertex streams from memory for the variables (weights) it reads. A
    weight box that fits half the L2 is read once per tile and shared by the tile's vertices
    that read the same box (they run one after another on that core); a larger one is read
    again by every vertex. (The op's own weight bytes w_bytes cap it: a transformed weight
    may be larger than the variable's box.)"""
    out = np.zeros(len(slot))
    for t, region in ins:
        if t.kind not in ("variable", "constant") or not len(region.vid):
            continue
        vol = region.volume().astype(np.float64) * t.itemsize
        keys = np.concatenate([slot[region.vid][:, None], region.lo, region.hi], axis=1)
        _, first, inverse, counts = np.unique(keys, axis=0, return_index=True,
                                              return_inverse=True, return_counts=True)
        share = counts[inverse.reshape(-1)].astype(np.float64)
        per = np.where(vol > target.bytes_per_tile / 2, vol, vol / share)
        out += np.bincount(region.vid, weights=per, minlength=len(slot))
    # scale to the bytes the codelet really streams (Winograd's U is 4x the 3x3 weights)
    total = np.bincount(np.arange(len(slot)), weights=out, minlength=len(slot))
    var = sum(region.per_vertex(region.volume().astype(np.float64) * t.itemsize, len(slot))
              for t, region in ins if t.kind in ("variable", "constant"))
    ratio = np.where(np.asarray(var) > 0, np.asarray(w_bytes) / np.maximum(var, 1.0), 0.0)
    return total * np.maximum(ratio, 1.0)


def first_pass_stream(target, w_bytes, per_tile) -> np.ndarray:
    """weight_stream's estimate without the boxes: small weights once per tile, large ones
    once per vertex."""
    w_bytes = np.asarray(w_bytes, np.float64)
    return np.where(w_bytes > target.bytes_per_tile / 2, per_tile * w_bytes, w_bytes)


def reduce_factor(space, splits: np.ndarray) -> np.ndarray:
    """P: how many partial slabs each output element gets (1: no reduction step)."""
    cols = [i for i, d in enumerate(space.dims) if d.name in space.reduce_dims]
    if not cols:
        return np.ones(len(splits), dtype=np.int64)
    return np.prod(splits[:, cols], axis=1)


def estimate(space, target, dtype: str, splits: np.ndarray, slice_sizes: np.ndarray
             ) -> dict[str, np.ndarray]:
    """First-pass cost of each candidate split (rows of `splits`, largest slices
    `slice_sizes`), vectorised."""
    work, in_bytes, w_bytes, out_bytes = (np.asarray(a, dtype=np.float64)
                                          for a in space.slice_cost(slice_sizes))
    vertices = np.prod(splits, axis=-1)
    per_tile = np.ceil(vertices / target.tiles)
    cyc = vertex_cycles(space, target, dtype, work)
    compute = tile_compute(space, target, cyc, per_tile)
    exchange = per_tile * (in_bytes + w_bytes) / target.exchange_bytes_per_cycle
    p = reduce_factor(space, splits).astype(np.float64)
    partial = np.where(p > 1, out_bytes, 0.0)
    tile_bytes = per_tile * (in_bytes + w_bytes + partial)
    # The reduction: output boxes (vertices / P of them) each reduced on one tile.
    boxes_per_tile = np.ceil(vertices / p / target.tiles)
    item = 4.0
    red_compute = np.where(p > 1, boxes_per_tile * (p * out_bytes / item / (
        target.vector_ops_per_cycle) + target.vertex_overhead_cycles), 0.0)
    red_exchange = np.where(p > 1, boxes_per_tile * (p - 1) * out_bytes
                            / target.exchange_bytes_per_cycle, 0.0)
    red_bytes = np.where(p > 1, boxes_per_tile * (p - 1) * out_bytes, 0.0)
    tile_bytes = tile_bytes + red_bytes
    if target.memory_is_cache:
        # as step.evaluate: a fused epilogue's operands are streamed past the output as it is
        # written, not part of a vertex's working set (counting them shrank the boxes of a
        # Winograd conv, which then streamed its transformed weights more often)
        spill = np.maximum(in_bytes + out_bytes - target.bytes_per_tile, 0)
        compute = compute + (per_tile * spill + first_pass_stream(target, w_bytes, per_tile)) \
            / target.spill_bytes_per_cycle
        exchange = exchange * 0.0          # shared memory: no exchange phase on the host
        red_exchange = red_exchange * 0.0
    sync = np.where(p > 1, 2.0, 1.0) * target.sync_cycles
    return {"compute": compute, "exchange": exchange, "sync": sync,
            "reduce": red_compute + red_exchange,
            "total": compute + exchange + sync + red_compute + red_exchange,
            "tile_bytes": tile_bytes, "vertices": vertices}
