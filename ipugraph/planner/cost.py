"""The cost model shared by the planner and bench/: cycles and bytes of a vertex slice on a tile.

For a candidate partition with V vertices on T tiles (ceil(V/T) vertices on the busiest tile),
using the op Space's per-slice (work, input bytes, weight bytes, output bytes):

  compute  = vertices_per_tile × (work / MACs-per-cycle-per-tile + vertex overhead)
  exchange = vertices_per_tile × (input + weight bytes) / exchange bytes-per-cycle
             (v1 assumes every operand slice is received; residency comes with graph mappings)
  sync     = one BSP sync per step
  bytes    = vertices_per_tile × (input + weight + output (+ fused residual) bytes)

On the host the per-tile bytes are a cache, not a limit: a slice that spills L2 pays its excess
bytes again at DRAM speed, which steers vertices toward cache-sized working sets.
"""
from __future__ import annotations

import numpy as np


def estimate(space, target, dtype: str, splits: np.ndarray, slice_sizes: np.ndarray,
             extra_bytes_per_out: int = 0) -> dict[str, np.ndarray]:
    work, in_bytes, w_bytes, out_bytes = (np.asarray(a, dtype=np.float64)
                                          for a in space.slice_cost(slice_sizes))
    out_bytes = out_bytes * (1 + extra_bytes_per_out)
    vertices = np.prod(splits, axis=-1)
    per_tile = np.ceil(vertices / target.tiles)
    macs = target.macs_per_cycle_for(dtype)
    compute = per_tile * (work / macs + target.vertex_overhead_cycles)
    exchange = per_tile * (in_bytes + w_bytes) / target.exchange_bytes_per_cycle
    tile_bytes = per_tile * (in_bytes + w_bytes + out_bytes)
    if target.memory_is_cache:
        spill = np.maximum(in_bytes + w_bytes + out_bytes - target.bytes_per_tile, 0)
        compute = compute + per_tile * spill / target.spill_bytes_per_cycle
        exchange = exchange * 0.0          # shared memory: no exchange phase on the host
    sync = np.full_like(compute, float(target.sync_cycles))
    return {"compute": compute, "exchange": exchange, "sync": sync,
            "total": compute + exchange + sync, "tile_bytes": tile_bytes,
            "vertices": vertices, "work_per_vertex": work}


def vertex_costs(space, target, dtype: str, table: np.ndarray) -> dict[str, np.ndarray]:
    """Per-vertex work (MAC-equivalents), cycles and bytes for an actual vertex table."""
    sizes = (table[:, 1::2] - table[:, 0::2]).astype(np.int64)
    work, in_bytes, w_bytes, out_bytes = (np.asarray(a, dtype=np.float64)
                                          for a in space.slice_cost(sizes))
    cycles = work / target.macs_per_cycle_for(dtype) + target.vertex_overhead_cycles
    return {"work": work, "cycles": cycles, "bytes": in_bytes + w_bytes + out_bytes}
