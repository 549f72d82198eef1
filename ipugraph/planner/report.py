"""Plan reports: the per-op table (Plan.summary) and the whole plan as JSON (Plan.to_json)."""
from __future__ import annotations

import numpy as np


def _split(step) -> str:
    text = step.partition.describe()
    return text + (f" ×{step.repeats} rep" if step.repeats > 1 else "")


def summary(plan) -> str:
    t = plan.target
    head = (f"{'step':>4}  {'op':<30} {'method':<11} {'fused':<18} {'split':<30} {'tiles':>5} "
            f"{'compute':>9} {'exch':>8} {'sync':>6} {'reduce':>7} {'tile KiB':>8} {'bal':>5}")
    lines = [f"plan of '{plan.graph.name}' (batch {plan.batch()}) on {t.describe()}", head,
             "-" * len(head)]
    notes = []
    for s in plan.steps:
        fused = "+".join(n.op.name for n in s.group.epilogue) or "-"
        mark = " *" if s.note else ""
        lines.append(
            f"{s.index:>4}  {s.name[:30]:<30} {s.space.method[:11]:<11} {fused[:18]:<18} "
            f"{_split(s)[:30]:<30} "
            f"{s.tiles_used:>5} {s.compute_cycles:>9.0f} {s.exchange_cycles:>8.0f} "
            f"{s.sync_cycles:>6.0f} {s.reduce_cycles:>7.0f} {s.max_tile_bytes / 1024:>8.1f} "
            f"{s.balance:>5.2f}{mark}")
        if s.note:
            notes.append(f"  * step {s.index} {s.name}: {s.note}")
    secs = plan.estimated_seconds()
    steps = plan.steps
    comp = sum(s.compute_cycles for s in steps)
    exch = sum(s.exchange_cycles for s in steps)
    sync = sum(s.sync_cycles for s in steps)
    red = sum(s.reduce_cycles for s in steps)
    cyc = plan.estimated_cycles()
    mem = plan.memory
    peak_step, peak_tile = np.unravel_index(int(np.argmax(mem.total)), mem.total.shape) \
        if steps else (0, 0)
    lines += ["-" * len(head), *notes,
              f"total: {len(steps)} steps, {cyc:,.0f} cycles (compute {comp / cyc:.0%}, "
              f"exchange {exch / cyc:.0%}, sync {sync / cyc:.0%}, reduction {red / cyc:.0%}) = "
              f"{secs * 1e3:.3f} ms at {t.clock_hz / 1e9:.2f} GHz -> "
              f"{plan.samples_per_second():,.1f} samples/s estimated",
              f"memory: peak {plan.peak_tile_bytes():,} of {t.bytes_per_tile:,} bytes per tile "
              f"(step {peak_step}, tile {peak_tile}); always-live up to "
              f"{int(mem.always_live.max()):,} (weights {int(mem.weights.sum()):,} in all)"]
    return "\n".join(lines)


def _ints(a) -> list:
    return np.asarray(a).astype(np.int64).tolist()


def to_json(plan, vertices: bool = False) -> dict:
    t = plan.target
    mem = plan.memory
    steps = []
    for s in plan.steps:
        row = {
            "index": s.index, "name": s.name, "op": s.group.anchor.op.name,
            "method": s.space.method,
            "fused": [n.op.name for n in s.group.epilogue],
            "nodes": [n.name for n in s.group.nodes], "layer": s.group.anchor.scope,
            "dims": list(s.partition.dims), "splits": list(s.partition.splits),
            "repeats": s.repeats, "vertices": len(s.vertices), "tiles_used": s.tiles_used,
            "compute_cycles": s.compute_cycles, "exchange_cycles": s.exchange_cycles,
            "sync_cycles": s.sync_cycles, "reduce_cycles": s.reduce_cycles,
            "total_cycles": s.total_cycles, "max_tile_bytes": s.max_tile_bytes,
            "balance": s.balance, "note": s.note, "codelet": s.codelet,
            "macs": int(s.group.anchor.cost().macs),
            "received_bytes_max": int(s.tile_received.max()),
            "temp_bytes_max": int(s.tile_temp.max()),
        }
        if vertices:
            row["vertex_table"] = _ints(s.vertices)
            row["vertex_tiles"] = _ints(s.tiles)
            row["tile_compute_cycles"] = _ints(np.round(s.tile_compute))
            row["tile_live_bytes"] = _ints(s.tile_live)
            if s.reduce_vertices is not None:
                row["reduce_table"] = _ints(s.reduce_vertices)
                row["reduce_tiles"] = _ints(s.reduce_tiles)
        steps.append(row)
    return {
        "graph": plan.graph.name,
        "batch": plan.batch(),
        "target": {k: getattr(t, k) for k in t.__dataclass_fields__},
        "estimated_cycles": plan.estimated_cycles(),
        "estimated_seconds": plan.estimated_seconds(),
        "samples_per_second": plan.samples_per_second(),
        "peak_tile_bytes": plan.peak_tile_bytes(),
        "always_live_bytes_max": int(mem.always_live.max()),
        "weight_bytes": int(mem.weights.sum()),
        "steps": steps,
    }
