"""Memory per tile per BSP step: always-live + live activations + the step's temporaries.

- always-live: every weight's slices where they were mapped (created for their consumer, once per
  tensor), the code of every codelet kind a tile runs, and every vertex's state (Poplar keeps
  all compute sets' code and vertex state resident for the whole program);
- live activations: each tensor's tile mapping from the step that produces it (graph inputs:
  from the start) to the last step that reads it (graph outputs: to the end);
- temporaries: what the step receives over the exchange and its partial sums.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from . import cost as costmodel


@dataclass
class TileMemory:
    always_live: np.ndarray        # [tiles]
    weights: np.ndarray            # [tiles] part of always_live
    live: np.ndarray               # [steps, tiles] live activations
    temp: np.ndarray               # [steps, tiles]

    @property
    def total(self) -> np.ndarray:
        return self.always_live[None, :] + self.live + self.temp

    def breakdown(self, step: int, tile: int) -> dict[str, int]:
        return {"always_live": int(self.always_live[tile]), "weights": int(self.weights[tile]),
                "code_and_vertex_state": int(self.always_live[tile] - self.weights[tile]),
                "live_activations": int(self.live[step, tile]),
                "temporaries": int(self.temp[step, tile]),
                "total": int(self.always_live[tile] + self.live[step, tile]
                             + self.temp[step, tile])}


def tile_memory(plan, input_mappings: dict) -> TileMemory:
    T = plan.target.tiles
    steps = plan.steps
    S = len(steps)
    weights = np.zeros(T)
    seen = set()
    code = {kind: np.zeros(T, dtype=bool) for kind in costmodel.CODE_BYTES}
    state = np.zeros(T)
    for s in steps:
        for name, mapping in s.weight_mappings.items():
            if name not in seen:                 # a tensor is stored once, where first used
                seen.add(name)
                weights += mapping.bytes_per_tile(T)
        # A Repeat runs one compute set once per batch slice: one slice's vertices are stored.
        one = s.tiles[:s.partition.num_vertices]
        code[s.codelet][one] = True
        state += np.bincount(one, minlength=T) * costmodel.VERTEX_STATE_BYTES
        if s.reduce_tiles is not None:
            code["reduce"][s.reduce_tiles] = True
            state += np.bincount(s.reduce_tiles, minlength=T) * costmodel.VERTEX_STATE_BYTES
    always = weights + state + sum(code[k] * costmodel.CODE_BYTES[k] for k in code)

    # Live intervals of activations, as a difference array over steps.
    last: dict[str, int] = {}
    for s in steps:
        inside = {n.output.name for n in s.group.nodes}
        for node in s.group.nodes:
            for t in node.inputs:
                if t.kind in ("input", "op") and t.name not in inside:
                    last[t.name] = s.index
    outputs = plan.graph.kept()
    delta = np.zeros((S + 1, T))
    for name, mapping in input_mappings.items():
        delta[0] += mapping.bytes_per_tile(T)
        delta[last.get(name, 0) + 1] -= mapping.bytes_per_tile(T)
    for s in steps:
        name = s.group.output.name
        end = S - 1 if name in outputs else max(last.get(name, s.index), s.index)
        b = s.out_mapping.bytes_per_tile(T)
        delta[s.index] += b
        delta[end + 1] -= b
    live = np.cumsum(delta, axis=0)[:S]
    temp = np.stack([s.tile_temp for s in steps]) if steps else np.zeros((0, T))
    return TileMemory(always, weights, live, temp)
