"""The tile-placement graph of a Plan, as flat NumPy tables every exporter and picture reads.

Vertices are the plan's vertices: one per slice of an op's work in each compute set (codelet
"supervisor" for conv/matmul, "worker" for pooling and elementwise), one per output box of a
partial-sum reduction ("reduce"), and one per tile-box of each graph input as the host streams
it in ("input"). An edge joins a producer vertex to a consumer vertex when the consumer reads
elements the producer wrote; its bytes are the size of that overlap, and it crosses the exchange
when the two vertices sit on different tiles. Weights are not edges: they are always-live on the
tiles of their mapping, and are counted in the tiles' memory.

Everything here is derived from the plan (its vertex tables, their boxes and tiles, the cost model),
so every number in a picture can be traced back to `ipugraph plan`.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..space import Region, broadcast_region

CODELETS = ("input", "worker", "supervisor", "reduce")
PHASES = ("forward", "backward", "update")      # Node.phase: ig.grad's and ig.optim's ops
# Layer name prefixes -> the coarse group a picture names (ResNet's; others keep their first
# dotted component)
STEM = ("conv1", "bn1", "relu", "maxpool", "input")
HEAD = ("avgpool", "flatten", "fc", "logits")
_UNSCOPED = re.compile(r"^[a-z_]+(_\d+)?$")      # a fresh node name: reshape_178, select


@dataclass
class VizGraph:
    plan: object
    # vertices: int arrays of length V, plus names
    v_step: np.ndarray            # step index (-1: graph input)
    v_tile: np.ndarray
    v_codelet: np.ndarray         # index into CODELETS
    v_layer: np.ndarray           # index into `layers`
    v_macs: np.ndarray            # work of the vertex (MACs, or element ops for non-AMP codelets)
    v_cycles: np.ndarray          # estimated cycles of the vertex
    v_bytes: np.ndarray           # bytes the vertex's slices occupy (in + weights + out)
    layers: list[str]             # layer (op scope) names, in execution order
    step_ops: list[str]           # per step: "conv2d+batch_norm+relu" etc.
    # edges: producer vertex -> consumer vertex
    e_src: np.ndarray
    e_dst: np.ndarray
    e_bytes: np.ndarray
    e_tensor: np.ndarray          # index into `tensors`
    tensors: list[dict] = field(default_factory=list)   # name, shape, dtype, bytes, producer step
    # rank of each edge among its consumer's input edges: 0 the heaviest (ties: nearer tiles,
    # then lower edge index; 255 for the 255th and beyond); None when not computed
    e_rank: np.ndarray | None = None
    cache: dict = field(default_factory=dict, repr=False, compare=False)   # derived tables
    step_phases: list[str] = field(default_factory=list)    # per step: one of PHASES

    @property
    def v_phase(self) -> np.ndarray:
        """Index into PHASES of every vertex (graph inputs: forward)."""
        table = np.array([PHASES.index(p) for p in self.step_phases] + [0], np.int8)
        return table[self.v_step] if len(self.step_phases) else np.zeros(len(self.v_step),
                                                                          np.int8)

    @property
    def num_vertices(self) -> int:
        return len(self.v_tile)

    @property
    def num_edges(self) -> int:
        return len(self.e_src)

    def exchange_bytes(self) -> int:
        """Bytes on edges whose ends are on different tiles."""
        cross = self.v_tile[self.e_src] != self.v_tile[self.e_dst]
        return int(self.e_bytes[cross].sum())


def _ranges(counts: np.ndarray) -> np.ndarray:
    """The concatenated aranges of the given lengths: [2, 0, 3] -> [0, 1, 0, 1, 2]."""
    starts = np.cumsum(counts) - counts
    return np.arange(int(counts.sum()), dtype=np.int64) - np.repeat(starts, counts)


def _window(alo, ahi, blo, bhi) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidates of an interval join of a's intervals [alo, ahi) with b's [blo, bhi): with b
    sorted by lo (`order`), those of interval i are one run, from first[i] (running maximum of
    hi past alo[i]) for counts[i] intervals (starting before ahi[i]); exact checks follow."""
    order = np.argsort(blo, kind="stable")
    stop = np.searchsorted(blo[order], ahi, side="left")
    first = np.searchsorted(np.maximum.accumulate(bhi[order]), alo, side="right")
    return order, first, np.maximum(stop - first, 0)


def _join(alo, ahi, blo, bhi, window) -> tuple[np.ndarray, np.ndarray]:
    """All pairs (i, j) of overlapping intervals [alo[i], ahi[i]) and [blo[j], bhi[j]), from
    their `window` (see _window)."""
    order, first, c = window
    i = np.repeat(np.arange(len(alo), dtype=np.int64), c)
    j = order[np.repeat(first, c) + _ranges(c)]
    m = (blo[j] < ahi[i]) & (bhi[j] > alo[i])
    return i[m], j[m]


def _overlaps_by_key(a: Region, b: Region, ids, uniq, budget: int):
    """overlaps() for boxes made of few distinct intervals per axis, or None when it would check
    more than `budget` candidate pairs at some stage. Each b box is a key, its interval index on
    every axis (a tensor split 8 ways over channels has 8 channel intervals). Axis by axis --
    each time the one that adds the fewest pairs --, every a box is paired with the b intervals
    it meets on that axis (an interval join), and a partial key that no b box has is dropped."""
    rank = a.lo.shape[1]
    ai = np.arange(len(a.lo), dtype=np.int64)
    key = np.zeros(len(a.lo), np.int64)
    bkey = np.zeros(len(b.lo), np.int64)
    left = list(range(rank))
    while left:
        windows = [_window(a.lo[ai, d], a.hi[ai, d], uniq[d][:, 0], uniq[d][:, 1]) for d in left]
        cost = [int(w[2].sum()) for w in windows]
        if min(cost) > budget:
            return None
        best = int(np.argmin(cost))
        d = left.pop(best)
        u = uniq[d]
        bkey = bkey * len(u) + ids[d]                   # < len(b.lo) * len(u): renumbered below
        i, j = _join(a.lo[ai, d], a.hi[ai, d], u[:, 0], u[:, 1], windows[best])
        ai, key = ai[i], key[i] * len(u) + j
        prefixes, bkey = np.unique(bkey, return_inverse=True)
        bkey = bkey.reshape(-1)
        pos = np.minimum(np.searchsorted(prefixes, key), len(prefixes) - 1)
        m = prefixes[pos] == key
        ai, key = ai[m], pos[m]
    border = np.argsort(bkey, kind="stable")
    sorted_keys = bkey[border]
    lo = np.searchsorted(sorted_keys, key, side="left")
    c = np.searchsorted(sorted_keys, key, side="right") - lo
    i = np.repeat(ai, c)
    j = border[np.repeat(lo, c) + _ranges(c)]
    v = np.prod(np.minimum(a.hi[i], b.hi[j]) - np.maximum(a.lo[i], b.lo[j]), axis=1)
    m = v > 0
    return i[m], j[m], v[m]


def _overlaps_by_sweep(a: Region, b: Region, d: int, window, max_pairs: int = 1 << 22
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """overlaps() by the interval join on axis d alone (its `window`, see _window), the candidates
    checked axis by axis (dropping the misses after each, so most of the work is on the pairs
    that survive), max_pairs at a time (for boxes of many distinct intervals, e.g. flat element
    ranges)."""
    order, first, counts = window
    cum = np.cumsum(counts)
    rank = a.lo.shape[1]
    axes = [x for x in range(rank) if x != d] + [d]      # d's check is half done already
    alo, ahi = [a.lo[:, x].copy() for x in range(rank)], [a.hi[:, x].copy() for x in range(rank)]
    blo, bhi = [b.lo[:, x].copy() for x in range(rank)], [b.hi[:, x].copy() for x in range(rank)]
    ia, jb, vol = [], [], []
    start = 0
    while start < len(counts):
        base = int(cum[start - 1]) if start else 0
        end = max(int(np.searchsorted(cum, base + max_pairs, side="right")), start + 1)
        c = counts[start:end]
        i = np.repeat(np.arange(start, end, dtype=np.int64), c)
        j = order[np.repeat(first[start:end], c) + _ranges(c)]
        for x in axes:
            ok = (alo[x][i] < bhi[x][j]) & (blo[x][j] < ahi[x][i])
            i, j = i[ok], j[ok]
        v = np.ones(len(i), np.int64)
        for x in range(rank):
            v *= np.minimum(ahi[x][i], bhi[x][j]) - np.maximum(alo[x][i], blo[x][j])
        m = v > 0                                       # (empty boxes pass the checks)
        ia.append(i[m])
        jb.append(j[m])
        vol.append(v[m])
        start = end
    return np.concatenate(ia), np.concatenate(jb), np.concatenate(vol)


def overlaps(a: Region, b: Region) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of overlapping boxes (i in a, j in b) with the overlap's element count, in
    time and memory that follow the pairs found rather than len(a) * len(b): by key unless some
    stage of it would check more candidates than the best single-axis sweep (at batch 1, a
    sweep along the batch axis would compare every pair), else by that sweep."""
    z = np.zeros(0, dtype=np.int64)
    if len(a.lo) == 0 or len(b.lo) == 0:
        return z, z.copy(), z.copy()
    rank = a.lo.shape[1]
    windows = [_window(a.lo[:, d], a.hi[:, d], b.lo[:, d], b.hi[:, d]) for d in range(rank)]
    sweep = [int(w[2].sum()) for w in windows]
    ids, uniq = [], []
    for d in range(rank):
        u, inv = np.unique(np.stack([b.lo[:, d], b.hi[:, d]], 1), axis=0, return_inverse=True)
        ids.append(inv.reshape(-1))
        uniq.append(u)
    found = _overlaps_by_key(a, b, ids, uniq, budget=min(sweep))
    if found is not None:
        return found
    d = int(np.argmin(sweep))
    return _overlaps_by_sweep(a, b, d, windows[d])


def _named_group(first: str) -> str | None:
    """stem, head or loss for a layer name's first dotted component that belongs to one."""
    if first.startswith("input") or first in STEM:
        return "stem"
    if first in HEAD:
        return "head"
    if first in ("loss", "labels") or first.startswith("cross_entropy"):
        return "loss"
    return None


def group_of(layer: str) -> str:
    """The coarse group of a layer name: stem, layer1 ... layerN, head, loss, or the name's first
    dotted component."""
    first = layer.split(".", 1)[0]
    return _named_group(first) or first


def layer_groups(vg: "VizGraph") -> tuple[list[str], np.ndarray]:
    """Group names in order of first use and the group index of every vertex. A layer with no
    scope of its own (an op that ig.grad or a builder added unnamed, e.g. reshape_178) joins the
    group of the layer that ran before it."""
    first = np.full(len(vg.layers), len(vg.v_step), np.int64)
    np.minimum.at(first, vg.v_layer, np.arange(len(vg.v_step)))
    names: list[str] = []
    of_layer = np.zeros(len(vg.layers), np.int64)
    prev = None
    for li in np.argsort(first, kind="stable"):
        name = vg.layers[li]
        head = name.split(".", 1)[0]
        g = _named_group(head)
        if g is None:
            g = prev if _UNSCOPED.match(name) and prev is not None else head
        if g not in names:
            names.append(g)
        of_layer[li] = names.index(g)
        prev = g
    return names, of_layer[vg.v_layer]


def sum_by_key(n: int, keys: Callable[[slice], np.ndarray], weights: np.ndarray,
               chunk: int = 1 << 23) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(unique keys, summed weights, counts) of the int64 keys(slice) of rows 0..n, `chunk`
    rows at a time (-1 keys are left out): the memory of a chunk, not of all 70 M edges of a
    training graph, whatever the number of rows."""
    parts = []
    for a in range(0, n, chunk):
        sl = slice(a, min(n, a + chunk))
        k = keys(sl)
        m = k >= 0
        u, inv = np.unique(k[m], return_inverse=True)
        inv = inv.reshape(-1)
        parts.append((u, np.bincount(inv, weights=np.asarray(weights[sl], np.float64)[m],
                                     minlength=len(u)),
                      np.bincount(inv, minlength=len(u)).astype(np.int64)))
    if not parts:
        z = np.zeros(0, np.int64)
        return z, np.zeros(0), z.copy()
    if len(parts) == 1:
        return parts[0]
    u, inv = np.unique(np.concatenate([p[0] for p in parts]), return_inverse=True)
    inv = inv.reshape(-1)
    return (u, np.bincount(inv, weights=np.concatenate([p[1] for p in parts]), minlength=len(u)),
            np.bincount(inv, weights=np.concatenate([p[2] for p in parts]),
                        minlength=len(u)).round().astype(np.int64))


def rank_inputs(src: np.ndarray, dst: np.ndarray, nbytes: np.ndarray, tile: np.ndarray
                ) -> np.ndarray:
    """Rank of each edge among the input edges of its consumer: 0 for the heaviest; among equal
    bytes the edge between nearer tiles, then the lower index, first. (build ranks one step's
    edges at a time: every input edge of a vertex is made in the vertex's own step.)"""
    if len(src) == 0:
        return np.zeros(0, np.uint8)
    near = np.abs(tile[src].astype(np.int64) - tile[dst])
    order = np.lexsort((near, -nbytes, dst))
    d = dst[order]
    rank = np.empty(len(src), np.uint8)                 # saturates: only the first few matter
    rank[order] = np.minimum(np.arange(len(order)) - np.searchsorted(d, d, side="left"), 255)
    return rank


def heaviest_inputs(vg: "VizGraph", per_vertex: int) -> np.ndarray:
    """Indices of each vertex's `per_vertex` heaviest input edges (ties: nearer tiles, then
    lower index first; vg.e_rank when build computed it)."""
    if vg.num_edges == 0 or per_vertex <= 0:
        return np.zeros(0, np.int64)
    rank = vg.e_rank
    if rank is None:
        rank = rank_inputs(vg.e_src, vg.e_dst, vg.e_bytes, vg.v_tile)
    return np.flatnonzero(rank < per_vertex)


def build(plan, progress: Callable[[str], None] | None = None,
          every: float = 3.0) -> VizGraph:
    """The vertex graph of `plan` (see the module docstring). `progress` gets a line about every
    `every` seconds: the steps done, vertices and edges so far."""
    say = progress or (lambda message: None)
    last = time.perf_counter()
    graph = plan.graph
    target = plan.target
    cols = {k: [] for k in ("step", "tile", "codelet", "layer", "macs", "cycles", "bytes")}
    layers: list[str] = []
    layer_index: dict[str, int] = {}
    writers: dict[str, tuple[Region, np.ndarray]] = {}     # tensor -> (boxes, global vertex ids)
    tensors: list[dict] = []
    tensor_index: dict[str, int] = {}
    edges = {k: [] for k in ("src", "dst", "bytes", "tensor")}
    count = 0
    total = sum(len(m.tiles) for m in plan.input_mappings.values()) + sum(
        len(s.vertices) + (0 if s.reduce_vertices is None else len(s.reduce_vertices))
        for s in plan.steps)
    ids_dtype = np.int32 if total < 2**31 else np.int64   # 70 M edges: 0.6 GB less per column
    tile_of = np.zeros(total, np.int32)       # every vertex's tile (rank_inputs' tie-break)

    def add_vertices(step, tiles, codelet, layer, macs, cycles, nbytes) -> np.ndarray:
        nonlocal count
        n = len(tiles)
        if layer not in layer_index:
            layer_index[layer] = len(layers)
            layers.append(layer)
        cols["step"].append(np.full(n, step))
        cols["tile"].append(np.asarray(tiles, np.int64))
        cols["codelet"].append(np.full(n, CODELETS.index(codelet)))
        cols["layer"].append(np.full(n, layer_index[layer]))
        cols["macs"].append(np.asarray(macs, np.float64))
        cols["cycles"].append(np.asarray(cycles, np.float64))
        cols["bytes"].append(np.asarray(nbytes, np.float64))
        ids = np.arange(count, count + n)
        tile_of[count:count + n] = tiles
        count += n
        return ids

    def tensor_id(t, producer: int) -> int:
        if t.name not in tensor_index:
            tensor_index[t.name] = len(tensors)
            tensors.append({"name": t.name, "shape": list(t.shape), "dtype": t.dtype,
                            "bytes": int(t.nbytes), "producer_step": producer})
        return tensor_index[t.name]

    def connect(t, need: Region, consumer_ids: np.ndarray) -> None:
        if t.name not in writers:
            return
        boxes, producer_ids = writers[t.name]
        i, j, vol = overlaps(need, boxes)
        if len(i):
            edges["src"].append(producer_ids[boxes.vid[j]].astype(ids_dtype))
            edges["dst"].append(consumer_ids[need.vid[i]].astype(ids_dtype))
            edges["bytes"].append(vol * t.itemsize)
            edges["tensor"].append(np.full(len(i), tensor_index[t.name], np.int32))

    for name, mapping in plan.input_mappings.items():
        t = graph.inputs[name]
        vol = np.prod(mapping.hi - mapping.lo, axis=1)
        ids = add_vertices(-1, mapping.tiles, "input", f"input {name}", np.zeros(len(vol)),
                           np.zeros(len(vol)), vol * t.itemsize)
        writers[name] = (Region(np.arange(len(vol)), mapping.lo, mapping.hi), ids)
        tensor_id(t, -1)

    ranks = []                                # e_rank, step by step (see rank_inputs)
    for s in plan.steps:
        first_part = len(edges["src"])
        if time.perf_counter() - last > every:
            last = time.perf_counter()
            say(f"vertex graph: step {s.index}/{len(plan.steps)}, {count:,} vertices, "
                f"{sum(map(len, edges['src'])):,} edges")
        group, anchor = s.group, s.group.anchor
        space = s.space
        table = s.vertices.astype(np.int64)
        layer = anchor.scope or anchor.name
        ids = add_vertices(s.index, s.tiles, s.codelet, layer, s.work_per_vertex,
                           s.cycles_per_vertex, s.bytes_per_vertex)
        out_region, ins = space.boxes(table)
        for t, region in ins:
            if t.kind in ("input", "op"):
                connect(t, region, ids)
        out_t = group.output
        tensor_id(out_t, s.index)

        def connect_epilogue(box, box_ids):
            for t in group.epilogue_inputs():
                if t.kind in ("input", "op"):
                    connect(t, broadcast_region(box, out_t.shape, t.shape), box_ids)
        if s.reduce_vertices is not None:
            red = s.reduce_vertices.astype(np.int64)
            rbox = (space.reduce_region(red) if space.reduce_region is not None
                    else Region.boxes(red[:, 0::2], red[:, 1::2]))
            elems = np.prod(rbox.hi - rbox.lo, axis=1)
            contributors = np.zeros(len(elems))
            i, j, vol = overlaps(out_region, rbox)
            np.add.at(contributors, j, 1)
            rcyc = contributors * elems / target.vector_ops_per_cycle \
                + target.vertex_overhead_cycles
            rids = add_vertices(s.index, s.reduce_tiles, "reduce", layer, contributors * elems,
                                rcyc, elems * 4.0)
            edges["src"].append(ids[out_region.vid[i]].astype(ids_dtype))
            edges["dst"].append(rids[j].astype(ids_dtype))
            edges["bytes"].append(vol * 4)                  # fp32 partial sums
            edges["tensor"].append(np.full(len(i), tensor_index[out_t.name], np.int32))
            connect_epilogue(rbox, rids)
            writers[out_t.name] = (rbox, rids)
        else:
            connect_epilogue(out_region, ids)
            writers[out_t.name] = (out_region, ids)
        ranks.append(rank_inputs(*(np.concatenate(edges[k][first_part:]) if
                                   len(edges[k]) > first_part else np.zeros(0, np.int64)
                                   for k in ("src", "dst", "bytes")), tile_of))

    def cat(key, dtype):
        parts = cols[key]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    top = max((int(b.max()) for b in edges["bytes"] if len(b)), default=0)
    bytes_dtype = np.int32 if top < 2**31 else np.int64

    def ecat(key, dtype):
        parts = edges[key]
        return np.concatenate(parts).astype(dtype, copy=False) if parts else np.zeros(0, dtype)

    return VizGraph(plan, cat("step", np.int32), cat("tile", np.int32), cat("codelet", np.int8),
                    cat("layer", np.int32), cat("macs", np.float64), cat("cycles", np.float64),
                    cat("bytes", np.float64), layers, [s.op for s in plan.steps],
                    ecat("src", ids_dtype), ecat("dst", ids_dtype), ecat("bytes", bytes_dtype),
                    ecat("tensor", np.int32 if len(tensors) >= 2**15 else np.int16), tensors,
                    np.concatenate(ranks) if ranks else np.zeros(0, np.uint8),
                    step_phases=[s.group.anchor.phase for s in plan.steps])
