"""lower(plan) -> Program (ipugraph/program.py): the plan as BSP steps, each compute set with
everything its kernel needs, and the buffers its tensors live in.

Every plan step becomes Exchange (the operand bytes its busiest tile must receive) · ComputeSet
· Sync, and, when the op is split over input channels / kernel rows / K, Reduce (exchange and
add the partial sums) · Sync. A step serialised over batch slices (repeats > 1) runs that
sequence once per slice; its vertex table holds every slice's vertices. Activation buffers are
assigned here once, by liveness: a buffer is reused by a later tensor of the same byte size (or
the smallest larger one) after its last reader has run. Backends allocate them at compile.
"""
from __future__ import annotations

import numpy as np

from .planner import Plan, Step
from .program import (ComputeSet, Exchange, Instr, Operand, PointwiseProgram, Program, Reduce,
                      Sync, pointwise_program)

__all__ = ["lower", "Program", "ComputeSet", "Exchange", "Sync", "Reduce", "PointwiseProgram",
           "Operand", "Instr"]


def _compute_set(step: Step) -> ComputeSet:
    group, space = step.group, step.space
    columns = tuple(step.partition.dims)             # the vertex table's column order
    reduce = None
    if step.reduce_vertices is not None:
        kept = tuple(d for d in columns if d not in space.reduce_dims)
        reduce = Reduce(step.index, kept, np.ascontiguousarray(step.reduce_vertices, np.int32),
                        step.reduce_tiles, step.reduce_cycles)
    if group.is_pointwise:
        anchor, op = None, "pointwise"
        program = pointwise_program(group.pointwise, group.output)
    else:
        anchor, op = group.anchor, group.anchor.op.name
        acc = (group.bn or anchor).output
        program = (pointwise_program(group.pointwise, group.output, acc=acc)
                   if group.pointwise else None)
    return ComputeSet(step.index, step.name, op, anchor, tuple(group.nodes),
                      tuple(group.external_inputs()), group.output, columns,
                      np.ascontiguousarray(step.vertices, np.int32), step.tiles,
                      folded_bn=group.bn, pointwise=program, reduce=reduce,
                      repeats=step.repeats, phase=group.root.phase, method=space.method)


def lower(plan: Plan) -> Program:
    bsp, sets = [], []
    for step in plan.steps:
        cs = _compute_set(step)
        syncs = 2 if cs.reduce is not None else 1
        if step.exchange_cycles > 0:
            bsp.append(Exchange(step.index, int(step.tile_received.max()), step.exchange_cycles))
        bsp.append(cs)
        bsp.append(Sync(step.index, step.sync_cycles / syncs))
        if cs.reduce is not None:
            bsp.append(cs.reduce)
            bsp.append(Sync(step.index, step.sync_cycles / syncs))
        sets.append(cs)
    program = Program(plan.graph, plan, bsp, sets)
    _inplace_updates(program)
    _assign_buffers(program)
    return program


def _inplace_updates(program: Program) -> None:
    """An assigned value is written straight into its variable when that is invisible: every
    other reader of the variable runs before (or is) the value's compute set, that set reads
    the variable, if at all, element for element (a pointwise region reads each element before
    it writes it), and the variable is not also a graph output (read at the end of the run)."""
    graph = program.graph
    producer = {cs.output.name: cs for cs in program.compute_sets}
    outputs = {t.name for t in graph.outputs.values()}
    for var_name, value in graph.updates.items():
        cs = producer.get(value.name)
        if cs is None or var_name in outputs or value.name in program.inplace:
            continue
        reads = [c for c in program.compute_sets if any(t.name == var_name for t in c.inputs)]
        if any(c.index > cs.index for c in reads):
            continue
        if cs.op != "pointwise" and cs in reads:
            continue
        program.inplace[value.name] = var_name


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
        dying = {t.name for t in cs.inputs if t.kind == "op" and last[t.name] == cs.index
                 and t.name in program.buffer_of}
        if cs.output.name not in program.inplace:   # (in place: the variable's storage)
            need = cs.output.nbytes
            fits = [b for b in free if sizes[b] >= need]
            if fits:
                buf = min(fits, key=lambda b: sizes[b])
                free.remove(buf)
            else:
                buf = len(sizes)
                sizes.append(need)
            program.buffer_of[cs.output.name] = buf
            if last[cs.output.name] == cs.index:    # produced and never read (unused result)
                dying.add(cs.output.name)
        free.extend(program.buffer_of[n] for n in dying)
