"""lower(plan) -> Program: the plan as BSP steps, and the buffers its tensors live in.

Every plan step becomes Exchange (the operand bytes its busiest tile must receive) · Execute
(the compute set: one vertex per slice, each with its tile) · Sync, and, when the op is split over
input channels / kernel rows / K, Reduce (exchange and add the partial sums) · Sync. A step
serialised over batch slices (step.repeats > 1) runs that sequence once per slice; its vertex
table holds every slice's vertices. Buffers for activations are
assigned here once, by liveness: a buffer is reused by a later tensor of the same byte size
(or the smallest larger one) after its last reader has run. Backends allocate them at compile.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .planner import Plan, Step


@dataclass
class Exchange:
    step: int
    bytes_in: int                   # bytes the busiest tile receives
    cycles: float


@dataclass
class ComputeSet:
    step: Step
    inputs: list                    # external input tensors of the fused group, in node order
    output: object                  # the tensor the group produces

    @property
    def index(self) -> int:
        return self.step.index

    @property
    def group(self):
        return self.step.group

    @property
    def vertices(self) -> np.ndarray:
        return self.step.vertices

    @property
    def name(self) -> str:
        return self.step.name


@dataclass
class Sync:
    step: int
    cycles: float


@dataclass
class Reduce:
    """The partial-sum reduction of a step split over reduce dims (its own compute set on an
    IPU: exchange of the partial slabs, then the adds)."""
    step: int
    vertices: int
    cycles: float


@dataclass
class Program:
    plan: Plan
    bsp: list                                   # Exchange | ComputeSet | Sync, in order
    compute_sets: list[ComputeSet]
    buffer_of: dict[str, int] = field(default_factory=dict)   # tensor name -> buffer id
    buffer_bytes: list[int] = field(default_factory=list)
    last_use: dict[str, int] = field(default_factory=dict)

    @property
    def graph(self):
        return self.plan.graph

    def activation_bytes(self) -> int:
        """Bytes of all activation buffers (after reuse)."""
        return sum(self.buffer_bytes)

    def describe(self) -> str:
        counts = {k: sum(isinstance(s, k) for s in self.bsp) for k in (Exchange, ComputeSet, Sync, Reduce)}
        naive = sum(cs.output.nbytes for cs in self.compute_sets)
        return (f"Program: {counts[ComputeSet]} compute sets, {counts[Exchange]} exchanges, "
                f"{counts[Reduce]} reductions, {counts[Sync]} syncs; {len(self.buffer_bytes)} activation buffers, "
                f"{self.activation_bytes() / 2**20:.1f} MiB (without reuse "
                f"{naive / 2**20:.1f} MiB)")


def _external_inputs(step: Step) -> list:
    inside = {n.output.name for n in step.group.nodes}
    seen, result = set(), []
    for node in step.group.nodes:
        for t in node.inputs:
            if t.name not in inside and t.name not in seen:
                seen.add(t.name)
                result.append(t)
    return result


def lower(plan: Plan) -> Program:
    bsp, sets = [], []
    for step in plan.steps:
        cs = ComputeSet(step, _external_inputs(step), step.group.output)
        syncs = 2 if step.reduce_vertices is not None else 1
        if step.exchange_cycles > 0:
            bsp.append(Exchange(step.index, int(step.tile_received.max()), step.exchange_cycles))
        bsp.append(cs)
        bsp.append(Sync(step.index, step.sync_cycles / syncs))
        if step.reduce_vertices is not None:
            bsp.append(Reduce(step.index, len(step.reduce_vertices), step.reduce_cycles))
            bsp.append(Sync(step.index, step.sync_cycles / syncs))
        sets.append(cs)
    program = Program(plan, bsp, sets)
    _assign_buffers(program)
    return program


def _assign_buffers(program: Program) -> None:
    graph = program.graph
    outputs = graph.kept()
    never = len(program.compute_sets)               # graph outputs stay live to the end
    last: dict[str, int] = {}
    for cs in program.compute_sets:
        for t in cs.inputs:
            if t.kind == "op":
                last[t.name] = cs.index
    for cs in program.compute_sets:
        name = cs.output.name
        last[name] = never if name in outputs else max(last.get(name, cs.index), cs.index)
    program.last_use = last

    free: list[int] = []                            # buffer ids available for reuse
    sizes = program.buffer_bytes
    for cs in program.compute_sets:
        need = cs.output.nbytes
        fits = [b for b in free if sizes[b] >= need]
        if fits:
            buf = min(fits, key=lambda b: sizes[b])
            free.remove(buf)
        else:
            buf = len(sizes)
            sizes.append(need)
        program.buffer_of[cs.output.name] = buf
        dying = {t.name for t in cs.inputs if t.kind == "op" and last[t.name] == cs.index}
        if last[cs.output.name] == cs.index:        # produced and never read (unused result)
            dying.add(cs.output.name)
        free.extend(program.buffer_of[n] for n in dying)
