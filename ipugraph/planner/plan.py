"""plan(graph, target) -> Plan: a partition for every (fused) op, its vertices and their tiles,
the exchange each forces given where its inputs live, and memory per tile at every step.

Per op: enumerate splits (partition.candidates), evaluate the best few exactly against the tile
mappings of the op's inputs (step.evaluate) and keep the cheapest whose temporaries fit the op
budget (availableMemoryProportion); if none fits, serialise the op over batch slices (a Repeat)
with as few repeats as fit; if even one sample does not fit, relax the budget up to the whole
tile, as PopLibs does, and then give up naming the op and the numbers.
Per graph: walk memory per tile per step (memory.py); a step whose tile overflows is serialised
further and the graph re-planned, or the plan fails naming the step, tile and bytes.
"""
from __future__ import annotations

import hashlib

import numpy as np

from ..graph import Graph
from .fusion import Group, group_nodes, group_spaces
from .memory import TileMemory, tile_memory
from .partition import PlanError, candidates, chunk_space
from .regions import TileMapping
from .step import Step, batch_of, evaluate

# (op signature, target, input mappings, min repeats) -> (method index, Partition, repeats): a
# repeated layer (ResNet's identical blocks) plans once.
_CACHE: dict[tuple, tuple] = {}
CACHE_STATS = {"hits": 0, "misses": 0}


def _signature(group: Group, target) -> tuple:
    def attrs(node):
        return tuple(sorted((k, str(v)) for k, v in node.attrs.items()))
    position = {n.output.name: i for i, n in enumerate(group.nodes)}
    ops = tuple((n.op.name, tuple((t.shape, t.dtype, t.kind, position.get(t.name, -1))
                                  for t in n.inputs), attrs(n)) for n in group.nodes)
    return ops, target


def _fingerprint(m: TileMapping) -> tuple:
    h = hashlib.blake2b(digest_size=16)
    for a in (m.tiles, m.lo, m.hi):
        h.update(np.ascontiguousarray(a, dtype=np.int64).tobytes())
    return ("map", m.shape, h.hexdigest())


def _repeat_options(batch: int, least: int) -> list[int]:
    """Repeat counts from `least` up, one per distinct chunk size ceil(batch / r)."""
    seen, out = set(), []
    for r in range(max(1, least), batch + 1):
        chunk = -(-batch // r)
        if chunk not in seen:
            seen.add(chunk)
            out.append(-(-batch // chunk))
    return out or [1]


class Plan:
    def __init__(self, graph: Graph, target, steps: list[Step], fuse: bool,
                 memory: TileMemory, input_mappings: dict[str, TileMapping]):
        self.graph = graph
        self.target = target
        self.steps = steps
        self.fuse = fuse
        self.memory = memory
        self.input_mappings = input_mappings
        totals = memory.total
        for s in steps:
            s.tile_live = totals[s.index]

    # -- totals --------------------------------------------------------------------------
    def estimated_cycles(self) -> float:
        """BSP total: every step's slowest-tile compute + exchange + sync (+ its reduction)."""
        return float(sum(s.total_cycles for s in self.steps))

    def estimated_seconds(self) -> float:
        return self.estimated_cycles() / self.target.clock_hz

    def peak_tile_bytes(self) -> int:
        """Max bytes live on any tile at any step: always-live + activations + temporaries."""
        return max((s.max_tile_bytes for s in self.steps), default=0)

    def batch(self) -> int:
        x = next(iter(self.graph.inputs.values()), None)
        return x.shape[0] if x is not None and x.ndim else 1

    def samples_per_second(self) -> float:
        return self.batch() / self.estimated_seconds()

    # -- reporting -----------------------------------------------------------------------
    def summary(self) -> str:
        from .report import summary
        return summary(self)

    def __str__(self) -> str:
        return self.summary()

    def to_json(self, vertices: bool = False) -> dict:
        from .report import to_json
        return to_json(self, vertices=vertices)


def plan(graph: Graph, target=None, *, fuse: bool = True, methods=None) -> Plan:
    """Partition every op of `graph` over the tiles of `target` (default: the graph's).
    `methods` (e.g. ("direct",)) restricts the ways an op may be computed to those named, where
    it has one of them (a conv's "direct", "winograd4x4", "winograd2x2"); by default the cheapest
    is kept."""
    methods = None if methods is None else tuple(methods)
    target = target or graph.target
    groups = group_nodes(graph, fuse=fuse)
    inputs = {name: TileMapping.linear(t.shape, t.itemsize, target.tiles, target.vector_grain)
              for name, t in graph.inputs.items()}
    least: dict[int, int] = {}
    rounds = 8
    for round_ in range(rounds):
        mappings = dict(inputs)
        steps = []
        for idx, group in enumerate(groups):
            step = _plan_step(idx, group, target, mappings, least.get(idx, 1), methods)
            mappings[group.output.name] = step.out_mapping
            steps.append(step)
        memory = tile_memory(_Partial(graph, target, steps), inputs)
        result = Plan(graph, target, steps, fuse, memory, inputs)
        if target.memory_is_cache:
            return result
        total = memory.total
        over = np.flatnonzero(total.max(axis=1) > target.bytes_per_tile)
        if not len(over):
            return result
        for s_idx in over.tolist():
            tile = int(np.argmax(total[s_idx]))
            step = steps[s_idx]
            batch = batch_of(step.space)
            excess = total[s_idx, tile] - target.bytes_per_tile
            temp = memory.temp[s_idx, tile]
            if temp > excess and step.repeats < batch and round_ < rounds - 1:
                # Temporaries shrink about in proportion to the batch slice: aim for enough
                # repeats at once rather than one more per round.
                want = int(np.ceil(step.repeats * temp / (temp - excess)))
                least[s_idx] = _repeat_options(batch, max(want, step.repeats + 1))[0]
                continue
            b = memory.breakdown(s_idx, tile)
            raise PlanError(
                f"plan of '{graph.name}' on {target.name}: step {s_idx} ({step.op} "
                f"'{step.name}') needs {b['total']:,} bytes on tile {tile}, which has "
                f"{target.bytes_per_tile:,}: always-live {b['always_live']:,} (weights "
                f"{b['weights']:,}, code and vertex state {b['code_and_vertex_state']:,}), live "
                f"activations {b['live_activations']:,}, temporaries {b['temporaries']:,}"
                + (f" (already serialised over {step.repeats} batch slices)"
                   if step.repeats > 1 else "")
                + ". Use a smaller batch or a target with more memory.")


class _Partial:
    """The parts of a Plan that memory accounting reads, before the Plan exists."""

    def __init__(self, graph, target, steps):
        self.graph, self.target, self.steps = graph, target, steps


def _plan_step(idx: int, group: Group, target, mappings: dict, least: int,
               methods: tuple | None = None) -> Step:
    anchor = group.anchor
    spaces = group_spaces(group, target)
    if methods is not None:
        allowed = [s for s in spaces if s.method in methods]
        spaces = allowed or spaces[:1]
    dtype = anchor.output.dtype
    batch = batch_of(spaces[0])
    in_keys = tuple(mappings[t.name].key for n in group.nodes for t in n.inputs
                    if t.name in mappings)
    key = (_signature(group, target), in_keys, least, tuple(s.method for s in spaces))
    hit = _CACHE.get(key)
    if hit is not None:
        CACHE_STATS["hits"] += 1
        method, part, repeats = hit
        step = evaluate(idx, group, spaces[method], part, repeats, target, dtype, mappings,
                        batch)
    else:
        CACHE_STATS["misses"] += 1
        # every method's best partition; the cheapest wins (ties: the first, the direct one)
        found, error = [], None
        for space in spaces:
            try:
                found.append(_search(idx, group, space, target, dtype, mappings, batch, least))
            except PlanError as e:
                error = error or e
        if not found:
            raise error
        step = min(found, key=lambda s: s.total_cycles)
        _CACHE[key] = (spaces.index(step.space), step.partition, step.repeats)
    step.out_mapping.key = _fingerprint(step.out_mapping)
    return step


def _search(idx, group, space, target, dtype, mappings, batch, least) -> Step:
    label = f"{group.anchor.op.name} '{group.anchor.name}'"
    budget = target.op_bytes_per_tile
    info = {}
    for relax in (1.0, 2.0):
        for repeats in _repeat_options(batch, least):
            sub = chunk_space(space, -(-batch // repeats))
            # A serialised op is already the slow path, and a flat elementwise op has few
            # splits that differ: fewer candidates to evaluate exactly.
            flat = len(space.dims) == 1 and space.rate == "vector"
            parts, info = candidates(sub, target, dtype, relax=relax,
                                     keep=8 if repeats == 1 and not flat else 3)
            best = None
            for part in parts:
                step = evaluate(idx, group, space, part, repeats, target, dtype, mappings, batch)
                fits = target.memory_is_cache or step.tile_temp.max() <= relax * budget
                if fits and (best is None or step.total_cycles < best.total_cycles):
                    best = step
            if best is not None:
                if relax > 1:
                    best.note = (best.note + "; " if best.note else "") + \
                        "temporaries above availableMemoryProportion (relaxed up to 2x)"
                return best
    raise PlanError(
        f"{label}: no partition over {target.tiles} tiles of {target.name} fits: the smallest "
        f"needs {int(info.get('min_bytes', 0)):,} bytes of temporaries on a tile (split "
        f"{info.get('min_split')}, one sample per repeat), but a tile has "
        f"{target.bytes_per_tile:,} bytes ({budget:,} at availableMemoryProportion "
        f"{target.available_memory_proportion}). Use a smaller batch or a larger target.")
