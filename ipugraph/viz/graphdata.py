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

from dataclasses import dataclass, field

import numpy as np

from ..space import Region, broadcast_region

CODELETS = ("input", "worker", "supervisor", "reduce")


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


def overlaps(a: Region, b: Region, chunk: int = 2048) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs of overlapping boxes (i in a, j in b) with the overlap's element count."""
    ia, jb, vol = [], [], []
    if len(a.lo) == 0 or len(b.lo) == 0:
        z = np.zeros(0, dtype=np.int64)
        return z, z.copy(), z.copy()
    # Sort b by its first coordinate so each chunk of a only meets the b boxes that can overlap.
    order = np.argsort(b.lo[:, 0], kind="stable")
    blo, bhi = b.lo[order], b.hi[order]
    bmax_hi0 = np.maximum.accumulate(bhi[:, 0])
    for start in range(0, len(a.lo), chunk):
        alo, ahi = a.lo[start:start + chunk], a.hi[start:start + chunk]
        # b boxes with lo0 < max(a hi0) and running-max hi0 > min(a lo0) may overlap this chunk.
        stop = np.searchsorted(blo[:, 0], ahi[:, 0].max(), side="left")
        first = np.searchsorted(bmax_hi0, alo[:, 0].min(), side="right")
        if stop <= first:
            continue
        lo = np.maximum(alo[:, None, :], blo[None, first:stop, :])
        hi = np.minimum(ahi[:, None, :], bhi[None, first:stop, :])
        v = np.prod(np.clip(hi - lo, 0, None), axis=2)
        i, j = np.nonzero(v)
        ia.append(i + start)
        jb.append(order[j + first])
        vol.append(v[i, j])
    if not ia:
        z = np.zeros(0, dtype=np.int64)
        return z, z.copy(), z.copy()
    return np.concatenate(ia), np.concatenate(jb), np.concatenate(vol)


def build(plan) -> VizGraph:
    """The vertex graph of `plan` (see the module docstring)."""
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
            edges["src"].append(producer_ids[boxes.vid[j]])
            edges["dst"].append(consumer_ids[need.vid[i]])
            edges["bytes"].append(vol * t.itemsize)
            edges["tensor"].append(np.full(len(i), tensor_index[t.name]))

    for name, mapping in plan.input_mappings.items():
        t = graph.inputs[name]
        vol = np.prod(mapping.hi - mapping.lo, axis=1)
        ids = add_vertices(-1, mapping.tiles, "input", f"input {name}", np.zeros(len(vol)),
                           np.zeros(len(vol)), vol * t.itemsize)
        writers[name] = (Region(np.arange(len(vol)), mapping.lo, mapping.hi), ids)
        tensor_id(t, -1)

    for s in plan.steps:
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
            edges["src"].append(ids[out_region.vid[i]])
            edges["dst"].append(rids[j])
            edges["bytes"].append(vol * 4)                  # fp32 partial sums
            edges["tensor"].append(np.full(len(i), tensor_index[out_t.name]))
            connect_epilogue(rbox, rids)
            writers[out_t.name] = (rbox, rids)
        else:
            connect_epilogue(out_region, ids)
            writers[out_t.name] = (out_region, ids)

    def cat(key, dtype):
        parts = cols[key]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    def ecat(key, dtype):
        parts = edges[key]
        return np.concatenate(parts).astype(dtype) if parts else np.zeros(0, dtype)

    return VizGraph(plan, cat("step", np.int32), cat("tile", np.int32), cat("codelet", np.int8),
                    cat("layer", np.int32), cat("macs", np.float64), cat("cycles", np.float64),
                    cat("bytes", np.float64), layers, [s.op for s in plan.steps],
                    ecat("src", np.int64), ecat("dst", np.int64), ecat("bytes", np.int64),
                    ecat("tensor", np.int32), tensors)
