"""One planned compute set (Step) and the exact evaluation that builds it.

evaluate() takes a fused group, a partition of its op's space, a repeat count (the op serialised
over batch slices when a single pass does not fit) and the tile mappings of the tensors it reads,
and works out, per tile: the vertices it runs and their cycles, the bytes it must receive
(operand slices with halo, weights, minus what the tile already holds), the temporaries it needs,
and, for splits over reduce dims, the reduction step. The result carries the output's tile
mapping for the consumers and the weights' mappings (always-live, created where used).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from . import cost as costmodel
from ..space import broadcast_region
from .fusion import Group
from .partition import Partition, batch_dim
from .regions import Region, TileMapping, owner_mapping


@dataclass
class Step:
    """One compute set: a fused op group, how it is split, and where its vertices run."""
    index: int
    group: Group
    partition: Partition          # the split of one repeat (of the whole op when repeats == 1)
    repeats: int                  # the op serialised over this many batch slices (a Repeat)
    vertices: np.ndarray          # int32 [V, 2*dims]: slice bounds of every vertex, all repeats
    tiles: np.ndarray             # int32 [V]: the tile each vertex runs on
    compute_cycles: float         # summed over repeats: the slowest tile of each
    exchange_cycles: float
    sync_cycles: float
    reduce_cycles: float          # partial-sum reduction: its exchange + compute (+ its sync)
    tile_compute: np.ndarray = field(repr=False)        # [tiles] compute cycles, all repeats
    tile_received: np.ndarray = field(repr=False)       # [tiles] bytes received, all repeats
    tile_temp: np.ndarray = field(repr=False)           # [tiles] temporaries, worst repeat
    out_mapping: TileMapping = field(repr=False, default=None)
    weight_mappings: dict = field(repr=False, default_factory=dict)
    reduce_vertices: np.ndarray | None = None   # int32 [Vr, 2*kept dims]: the (lo, hi) of
                                                # every dim that is not a reduce dim, in the
                                                # space's order: the output boxes to reduce
    reduce_tiles: np.ndarray | None = None      # int32 [Vr]
    work_per_vertex: np.ndarray = field(repr=False, default=None)
    cycles_per_vertex: np.ndarray = field(repr=False, default=None)
    bytes_per_vertex: np.ndarray = field(repr=False, default=None)
    codelet: str = "worker"
    note: str = ""
    tile_live: np.ndarray = field(repr=False, default=None)   # [tiles] bytes at this step
    space: object = field(repr=False, default=None)          # the Space it was planned over

    @property
    def name(self) -> str:
        return self.group.name

    @property
    def op(self) -> str:
        return self.group.describe()

    @property
    def total_cycles(self) -> float:
        return self.compute_cycles + self.exchange_cycles + self.sync_cycles + self.reduce_cycles

    @property
    def tiles_used(self) -> int:
        return int(np.count_nonzero(self.tile_compute))

    @property
    def balance(self) -> float:
        """max / mean compute cycles over the tiles that compute."""
        used = self.tile_compute[self.tile_compute > 0]
        return float(used.max() / used.mean()) if used.size else 1.0

    @property
    def max_tile_bytes(self) -> int:
        """Most bytes live on any tile during this step (weights, code, activations, temps)."""
        return int(self.tile_live.max()) if self.tile_live is not None else 0

    def tile_cycles(self, num_tiles: int | None = None) -> np.ndarray:
        return self.tile_compute

    def tile_bytes(self, num_tiles: int | None = None) -> np.ndarray:
        return self.tile_live


def place(num_vertices: int, tiles: int) -> np.ndarray:
    """Vertex i on tile i·T/V: spread over the chip, neighbours (which share input) together."""
    i = np.arange(num_vertices, dtype=np.int64)
    return ((i * tiles) // max(num_vertices, 1)).astype(np.int64)


def _repeat_table(part: Partition, repeats: int, total: int):
    """The vertex table of every repeat: the chunk's table shifted along the batch dim."""
    table = part.vertex_table().astype(np.int64)
    if repeats == 1:
        return table, np.zeros(len(table), np.int64), np.arange(len(table))
    chunk = part.extents[0]
    tables, reps, rows = [], [], []
    for j in range(repeats):
        t = table.copy()
        t[:, 0] += j * chunk
        t[:, 1] = np.minimum(t[:, 1] + j * chunk, total)
        keep = np.flatnonzero(t[:, 0] < t[:, 1])
        tables.append(t[keep])
        reps.append(np.full(len(keep), j))
        rows.append(keep)
    return np.concatenate(tables), np.concatenate(reps), np.concatenate(rows)


def _uneven(part: Partition) -> str:
    """Which dims' slices differ in size (why a partition can be unbalanced)."""
    out = []
    for d, name in enumerate(part.dims):
        e = np.diff(part.boundaries(d))
        if part.splits[d] > 1 and e.max() != e.min():
            out.append(f"{name} {part.extents[d]} in {part.splits[d]} slices of "
                       f"{e.min()}-{e.max()}")
    return "; ".join(out)


def evaluate(index: int, group: Group, space, part: Partition, repeats: int, target,
             dtype: str, mappings: dict[str, TileMapping], batch: int) -> Step:
    T = target.tiles
    table, rep, chunk_row = _repeat_table(part, repeats, batch)
    chunk_tiles = place(part.num_vertices, T)
    tiles = chunk_tiles[chunk_row]
    slot = rep * T + tiles                               # (repeat, tile) of each vertex
    sizes = table[:, 1::2] - table[:, 0::2]
    work, in_b, w_b, out_b = (np.asarray(a, np.float64) for a in space.slice_cost(sizes))
    cyc = costmodel.vertex_cycles(space, target, dtype, work)
    out_region, ins = space.boxes(table)
    if target.memory_is_cache:
        stream = costmodel.weight_stream(target, ins, slot, w_b)
        # activations beyond L2 spill; weights are streamed (their bytes counted once above)
        cyc = cyc + (np.maximum(in_b + out_b - target.bytes_per_tile, 0) + stream) \
            / target.spill_bytes_per_cycle
    comp = np.bincount(slot, weights=cyc, minlength=repeats * T).reshape(repeats, T)
    if space.codelet == "worker":
        longest = np.zeros(repeats * T)
        np.maximum.at(longest, slot, cyc)
        comp = np.maximum(comp / target.worker_threads, longest.reshape(repeats, T))

    p_cols = [i for i, d in enumerate(part.dims) if d in space.reduce_dims]
    P = int(np.prod([part.splits[i] for i in p_cols])) if p_cols else 1
    chan = Region(out_region.vid, out_region.lo[:, 1:2], out_region.hi[:, 1:2])
    if group.bn is not None:
        ins += [(t, chan) for t in group.bn.inputs[1:]]
    epilogue = group.epilogue_inputs()       # read where the output is produced

    received = np.zeros(repeats * T)
    weight_maps = {}

    def receive(t, region, region_tiles, region_slot):
        if t.kind in ("variable", "constant"):
            mapping = weight_maps.get(t.name) or owner_mapping(region, tiles, t.shape, t.itemsize)
            weight_maps[t.name] = mapping
        else:
            mapping = mappings[t.name]
        need = region.volume() - mapping.resident(region, region_tiles)
        return np.bincount(region_slot, weights=need * t.itemsize, minlength=repeats * T)

    def receive_epilogue(box, box_tiles, box_slot):
        total = np.zeros(repeats * T)
        for t in epilogue:
            region = broadcast_region(box, group.output.shape, t.shape)
            total += receive(t, region, box_tiles[region.vid], box_slot[region.vid])
        return total

    for t, region in ins:
        received += receive(t, region, tiles[region.vid], slot[region.vid])
    item = group.output.itemsize
    temp = received.copy()
    red_received = np.zeros(repeats * T)
    red_comp = np.zeros(repeats * T)
    reduce_vertices = reduce_tiles = None
    if P > 1:
        keep_dims = [i for i in range(len(part.dims)) if i not in p_cols]
        keep_cols = [c for i in keep_dims for c in (2 * i, 2 * i + 1)]
        keys = np.concatenate([rep[:, None], table[:, keep_cols]], axis=1)
        _, first, inverse = np.unique(keys, axis=0, return_index=True, return_inverse=True)
        inverse = inverse.reshape(-1)
        contributors = np.bincount(inverse)
        red_table = table[first][:, keep_cols]
        reduce_tiles = tiles[first]
        red_slot = slot[first]
        elems = np.prod(red_table[:, 1::2] - red_table[:, 0::2], axis=1).astype(np.float64)
        # Each vertex holds its partial slab; the reducing tile receives the others' slabs.
        temp += np.bincount(slot, weights=np.prod(sizes[:, keep_dims], axis=1) * 4.0,
                            minlength=repeats * T)
        slab_bytes = (contributors - 1) * elems * 4.0
        red_received += np.bincount(red_slot, weights=slab_bytes, minlength=repeats * T)
        temp += red_received
        red_comp += np.bincount(red_slot, weights=contributors * elems
                                / target.vector_ops_per_cycle + target.vertex_overhead_cycles,
                                minlength=repeats * T)
        out_region = (space.reduce_region(red_table) if space.reduce_region is not None
                      else Region.boxes(red_table[:, 0::2], red_table[:, 1::2]))
        red_received += receive_epilogue(out_region, reduce_tiles, red_slot)
        reduce_vertices = np.ascontiguousarray(red_table.astype(np.int32))
        out_tiles = reduce_tiles
    else:
        received += receive_epilogue(out_region, tiles, slot)
        out_tiles = tiles
    out_mapping = TileMapping.of(out_region, out_tiles, group.output.shape, item,
                                 key=("step", index))
    if target.memory_is_cache:                       # shared memory: nothing is exchanged
        received[:] = 0
        red_received[:] = 0
    bpc = target.exchange_bytes_per_cycle
    received = received.reshape(repeats, T)
    red_received = red_received.reshape(repeats, T)
    red_comp = red_comp.reshape(repeats, T)
    syncs = 2 if P > 1 else 1
    reduce_cycles = 0.0
    if P > 1:
        reduce_cycles = float((red_received.max(axis=1) / bpc + red_comp.max(axis=1)).sum())
    note = ""
    tile_compute = comp.sum(axis=0)
    used = tile_compute[tile_compute > 0]
    if used.size and used.max() > 1.25 * used.mean():
        why = _uneven(part)
        note = f"unbalanced: {why}" if why else "unbalanced: slices differ in halo or padding"
    return Step(index, group, part, repeats, np.ascontiguousarray(table.astype(np.int32)),
                tiles.astype(np.int32),
                compute_cycles=float(comp.max(axis=1).sum()),
                exchange_cycles=float((received.max(axis=1) / bpc).sum()),
                sync_cycles=float(repeats * syncs * target.sync_cycles),
                reduce_cycles=reduce_cycles,
                tile_compute=tile_compute,
                tile_received=(received + red_received).sum(axis=0),
                tile_temp=temp.reshape(repeats, T).max(axis=0),
                out_mapping=out_mapping, weight_mappings=weight_maps,
                reduce_vertices=reduce_vertices,
                reduce_tiles=None if reduce_tiles is None else reduce_tiles.astype(np.int32),
                work_per_vertex=work, cycles_per_vertex=cyc, bytes_per_vertex=in_b + w_b + out_b,
                codelet=space.codelet, note=note, space=space)


def batch_of(space) -> int:
    d = batch_dim(space)
    return space.dims[d].extent if d is not None else 1
