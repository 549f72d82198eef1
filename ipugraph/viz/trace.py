"""The BSP schedule of a Plan as a Chrome trace (trace.json), for Perfetto or chrome://tracing.

JSON object format: ``{"traceEvents": [...], "displayTimeUnit": "ns", "otherData": {...}}``.
Times (``ts``, ``dur``) are microseconds as floats, converted from cycles at the target's clock
(``cycles / clock_hz * 1e6``). Every ``dur`` is exact. Slices on a track lie end to end, each
start put on the first whole nanosecond at or after its exact time (and not before the previous
slice's end as Perfetto, which keeps integer nanoseconds, rounds it): without that, rounding
``ts`` and ``dur`` separately makes neighbours overlap by 1 ns and Perfetto drops the overlapping
slice. A start is therefore up to about a nanosecond later than the exact cumulative time.

Tracks, all in one process (pid 1, named after the graph and target):

- tid 0, "BSP": one complete ("X") slice per step, lasting the step's total cycles; the
  durations add up to ``plan.estimated_cycles()`` at the clock (to float rounding);
- tid g + 1, "tiles a–b" (g = 0 .. groups-1): the target's tiles split into ``groups`` contiguous
  ranges; per step, one slice per phase in BSP order: exchange → compute → sync → reduce (the
  last only for a step split over reduce dims; it covers the reduction's own exchange and
  compute). A phase lasts the step's cycles for that phase (Step.exchange_cycles, ...; for a
  Repeat already summed over its batch slices), the same on every group: BSP steps are global.

Args of a phase slice: ``step`` (index), ``name``, ``op``, ``phase``, ``cycles`` (the step's
cycles for the phase, exact), ``group_max_tile_compute_cycles`` (the busiest tile of the group's
compute cycles in this step), ``group_tiles_used`` (tiles of the group that compute in this
step), ``group_max_received_bytes`` (most bytes a tile of the group receives in this step) and
``repeats``.
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

PHASES = ("exchange", "compute", "sync", "reduce")
PID = 1
BSP_TID = 0


def tile_groups(tiles: int, groups: int) -> list[tuple[int, int]]:
    """(first, last) tile of each of `groups` contiguous ranges covering 0..tiles-1 (inclusive;
    at most `tiles` groups, sizes differing by at most one)."""
    groups = max(1, min(int(groups), int(tiles)))
    bounds = np.linspace(0, tiles, groups + 1).round().astype(np.int64)
    return [(int(a), int(b) - 1) for a, b in zip(bounds[:-1], bounds[1:])]


def _phases(step) -> list[tuple[str, float]]:
    out = [("exchange", step.exchange_cycles), ("compute", step.compute_cycles),
           ("sync", step.sync_cycles)]
    if step.reduce_vertices is not None or step.reduce_cycles > 0:
        out.append(("reduce", step.reduce_cycles))
    return out


def _starts(ideal_us, durs_us) -> list[float]:
    """Start times (µs) for back-to-back slices of exact durations `durs_us` on one track.

    Perfetto stores times as integer nanoseconds, rounding ts and dur separately; for slices
    laid end to end at arbitrary fractions of a nanosecond that makes a slice end up to 1 ns
    after the next one starts, and a partially overlapping slice is dropped. So each start is
    put on a whole nanosecond: the first at or after its exact time that is not before the
    previous slice's end as Perfetto will see it. Durations stay exact; a start is later than
    its exact time by less than a nanosecond, plus at most half a nanosecond per earlier slice
    in the rare case that rounding pushes it further."""
    out, prev_end = [], 0
    for t, d in zip(np.asarray(ideal_us, np.float64).tolist(), durs_us):
        start = max(math.ceil(round(t * 1000.0, 6)), prev_end)
        out.append(start / 1000.0)
        prev_end = start + math.floor(d * 1000.0 + 0.5)     # Perfetto's llround
    return out


def trace_events(plan, groups: int = 16) -> dict:
    """The trace document of `plan` (see the module docstring)."""
    target = plan.target
    us = 1e6 / target.clock_hz                       # microseconds per cycle
    ranges = tile_groups(target.tiles, groups)
    title = f"{plan.graph.name} on {target.name}"
    events: list[dict] = [
        {"ph": "M", "pid": PID, "tid": BSP_TID, "name": "process_name", "args": {"name": title}},
        {"ph": "M", "pid": PID, "tid": BSP_TID, "name": "thread_name", "args": {"name": "BSP"}},
        {"ph": "M", "pid": PID, "tid": BSP_TID, "name": "thread_sort_index",
         "args": {"sort_index": 0}},
    ]
    for g, (a, b) in enumerate(ranges):
        events.append({"ph": "M", "pid": PID, "tid": g + 1, "name": "thread_name",
                       "args": {"name": f"tiles {a}\u2013{b}"}})
        events.append({"ph": "M", "pid": PID, "tid": g + 1, "name": "thread_sort_index",
                       "args": {"sort_index": g + 1}})

    starts = np.array([r[0] for r in ranges], np.int64)
    steps = plan.steps
    # Exact start (cycles) and duration (µs) of every step and every phase, in BSP order.
    step_start = np.concatenate([[0.0], np.cumsum([s.total_cycles for s in steps])])[:-1]
    step_ts = _starts(step_start * us, [s.total_cycles * us for s in steps])
    phases = [(k, name, cycles) for k, s in enumerate(steps) for name, cycles in _phases(s)]
    phase_cycles = np.array([c for _, _, c in phases], np.float64)
    phase_start = np.concatenate([[0.0], np.cumsum(phase_cycles)])[:-1]
    phase_ts = _starts(phase_start * us, (phase_cycles * us).tolist())
    for k, s in enumerate(steps):
        events.append({
            "ph": "X", "pid": PID, "tid": BSP_TID, "cat": "step", "name": s.name,
            "ts": step_ts[k], "dur": s.total_cycles * us,
            "args": {"step": s.index, "op": s.op, "split": s.partition.describe(),
                     "repeats": s.repeats, "total_cycles": s.total_cycles,
                     "compute_cycles": s.compute_cycles, "exchange_cycles": s.exchange_cycles,
                     "sync_cycles": s.sync_cycles, "reduce_cycles": s.reduce_cycles,
                     "tiles_used": s.tiles_used, "vertices": int(len(s.vertices)),
                     "max_tile_bytes": s.max_tile_bytes}})
    group_stats = []
    for s in steps:
        # Per group: busiest tile's compute, tiles computing, most bytes a tile receives.
        group_stats.append((np.maximum.reduceat(s.tile_compute, starts),
                            np.add.reduceat((s.tile_compute > 0).astype(np.int64), starts),
                            np.maximum.reduceat(s.tile_received, starts)))
    for g in range(len(ranges)):
        for j, (k, phase, cycles) in enumerate(phases):
            s = steps[k]
            comp, used, recv = group_stats[k]
            events.append({
                "ph": "X", "pid": PID, "tid": g + 1, "cat": phase, "name": f"{phase} {s.name}",
                "ts": phase_ts[j], "dur": cycles * us,
                "args": {"step": s.index, "name": s.name, "op": s.op, "phase": phase,
                         "cycles": cycles, "repeats": s.repeats,
                         "group_max_tile_compute_cycles": float(comp[g]),
                         "group_tiles_used": int(used[g]),
                         "group_max_received_bytes": float(recv[g])}})
    return {
        "traceEvents": events,
        "displayTimeUnit": "ns",
        "otherData": {"graph": plan.graph.name, "target": target.name,
                      "clock_hz": target.clock_hz, "tiles": target.tiles,
                      "groups": len(ranges), "estimated_cycles": plan.estimated_cycles(),
                      "estimated_us": plan.estimated_cycles() * us,
                      "time_unit": "microseconds (ts, dur)"},
    }


def write_trace(plan, path, groups: int = 16) -> str:
    """Write the BSP schedule of `plan` as a Chrome trace JSON file. Returns the path."""
    doc = trace_events(plan, groups)
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(doc, f, separators=(",", ":"), ensure_ascii=False)
    return path
