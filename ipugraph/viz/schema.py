"""graph.json: the tile-placement graph of a Plan (a VizGraph) as one versioned JSON document.

Layout
------
The document is one JSON object. Every table is COLUMNAR: an object mapping each column name to
a list, all lists of a table of equal length; row ``i`` of a table is the item with id ``i``
(``vertices``, ``tiles``, ``steps`` and ``tensors`` also carry that id as an explicit ``id``
column). Strings that repeat on many rows (op, layer, codelet) are stored once in ``lookups`` and
referenced by integer index. Numbers are JSON numbers: integers where the value is integral,
otherwise floats (cycles of a non-AMP vertex can be fractional).

Units: ``*_bytes`` / ``bytes`` in bytes; ``*_cycles`` / ``cycles`` in cycles of the target's
tile clock (``meta.target.clock_hz``); seconds in seconds; ``macs`` in multiply-accumulates for
conv/matmul vertices and element operations for the others.

Top-level keys (all required)
-----------------------------
``schema``      the string ``"ipugraph.graph"``.
``version``     integer schema version, :data:`SCHEMA_VERSION` (1). A reader rejects any other.
``meta``        object describing the plan:
    ``graph``               graph name (string)
    ``batch``               samples per run (leading dim of the first graph input)
    ``fused``               whether the planner fused epilogues into their anchor op (bool)
    ``target``              object with every field of ``ipugraph.Target``: ``name``, ``kind``
                            ("ipu" / "host"), ``tiles``, ``bytes_per_tile`` [bytes],
                            ``clock_hz`` [Hz], ``macs_per_cycle`` and ``fp16_macs_per_cycle``
                            [MACs per tile per cycle], ``worker_threads``,
                            ``exchange_bytes_per_cycle`` [bytes per tile per cycle],
                            ``sync_cycles`` [cycles per BSP sync], ``vertex_overhead_cycles``
                            [cycles], ``channel_grain`` / ``vector_grain`` [elements],
                            ``available_memory_proportion`` [fraction of a tile],
                            ``memory_is_cache`` (bool), ``spill_bytes_per_cycle``,
                            ``conv_pixel_block``, ``vector_ops_per_cycle`` [FP32 ops per cycle]
    ``estimated_cycles``    BSP total of the plan [cycles]: sum of ``steps.total_cycles``
    ``estimated_seconds``   ``estimated_cycles / target.clock_hz`` [s]
    ``samples_per_second``  ``batch / estimated_seconds`` [samples/s]
    ``peak_tile_bytes``     most bytes live on any tile at any step [bytes]
    ``exchange_bytes``      bytes on edges whose ends are on different tiles [bytes]
    ``ipugraph_version``    version of the package that wrote the file (string)
    ``counts``              rows per table: ``{"tiles", "vertices", "edges", "tensors", "steps"}``
``lookups``     string tables referenced by index:
    ``ops``                 fused op descriptions ("conv2d+batch_norm+relu", ...; "input" for
                            the graph-input vertices)
    ``layers``              layer (op scope) names in execution order ("input x", "conv1", ...)
    ``codelets``            vertex kinds: "input", "worker", "supervisor", "reduce"
``tiles``       one row per tile of the target:
    ``id``                  tile index
    ``vertices``            vertices placed on the tile (all steps, reduce and input included)
    ``weights_bytes``       weights mapped to the tile, always live [bytes]
    ``code_and_state_bytes``  codelet code and vertex state, always live [bytes]
    ``peak_live_bytes``     most live activation bytes over the steps [bytes]
    ``peak_temp_bytes``     largest temporaries of any one step [bytes]
    ``peak_total_bytes``    most bytes live at any step: always-live + activations + temporaries
                            of the same step [bytes] (not the sum of the three peaks)
    ``compute_cycles``      compute cycles of the tile summed over all steps (each step's
                            ``tile_compute``, all repeats) [cycles]
    ``received_bytes``      bytes the tile receives over the exchange, summed over all steps
                            (operands and partial-sum reductions) [bytes]
``vertices``    one row per vertex of the plan (compute vertices of every step, then for a
                step split over reduce dims its reduction vertices; graph-input boxes first):
    ``id``                  vertex id, the row index
    ``step``                step index; -1 for a graph-input box streamed in by the host
    ``op``                  index into ``lookups.ops``
    ``layer``               index into ``lookups.layers``
    ``codelet``             index into ``lookups.codelets``
    ``tile``                tile the vertex runs on (input boxes: the tile it is streamed to)
    ``macs``                work of the vertex [MACs, or element operations]
    ``cycles``              estimated cycles of the vertex [cycles]
    ``bytes``               bytes its slices occupy: inputs + weights + output [bytes]
``tensors``     one row per activation tensor (graph inputs and step outputs):
    ``id``, ``name``        row index and tensor name
    ``shape``               list of dimension sizes
    ``dtype``               element type ("float32", ...)
    ``bytes``               size of the whole tensor [bytes]
    ``producer_step``       step that writes it; -1 for a graph input
``edges``       one row per data dependency between two vertices:
    ``src``, ``dst``        producer and consumer vertex ids
    ``bytes``               size of the overlap the consumer reads from the producer [bytes]
    ``tensor``              index into ``tensors`` of the tensor carried
    ``src_tile``, ``dst_tile``  tiles of the two vertices; they differ when the edge crosses
                            the exchange
``steps``       one row per BSP step (compute set) of the plan:
    ``id``                  step index
    ``name``                name of the fused group (its anchor op's node name)
    ``op``, ``layer``, ``codelet``  indices into ``lookups`` (the step's anchor)
    ``split``               the partition of one repeat, e.g. "k/8×oh/7×ow/12×c/2"
    ``repeats``             batch slices the op is serialised over (1: a single pass)
    ``vertices``            compute vertices (all repeats)
    ``reduce_vertices``     partial-sum reduction vertices (0 when not split over reduce dims)
    ``tiles_used``          tiles with nonzero compute
    ``compute_cycles``      slowest tile's compute, summed over repeats [cycles]
    ``exchange_cycles``     busiest tile's receive time, summed over repeats [cycles]
    ``sync_cycles``         BSP syncs of the step (two per repeat with a reduction) [cycles]
    ``reduce_cycles``       partial-sum reduction: its exchange + compute [cycles]
    ``total_cycles``        the sum of the four above [cycles]
    ``max_tile_bytes``      most bytes live on any tile during the step [bytes]
    ``note``                planner note ("" or e.g. "unbalanced: ...")

Reading: :func:`load_graph_json` checks the schema name and version, the required keys, that the
columns of each table have equal lengths matching ``meta.counts`` and that index columns are in
range, and raises ``ValueError`` naming what is wrong.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .graphdata import CODELETS, VizGraph

SCHEMA_NAME = "ipugraph.graph"
SCHEMA_VERSION = 1

META_KEYS = ("graph", "batch", "fused", "target", "estimated_cycles", "estimated_seconds",
             "samples_per_second", "peak_tile_bytes", "exchange_bytes", "ipugraph_version",
             "counts")
LOOKUPS = ("ops", "layers", "codelets")
TABLES = {
    "tiles": ("id", "vertices", "weights_bytes", "code_and_state_bytes", "peak_live_bytes",
              "peak_temp_bytes", "peak_total_bytes", "compute_cycles", "received_bytes"),
    "vertices": ("id", "step", "op", "layer", "codelet", "tile", "macs", "cycles", "bytes"),
    "tensors": ("id", "name", "shape", "dtype", "bytes", "producer_step"),
    "edges": ("src", "dst", "bytes", "tensor", "src_tile", "dst_tile"),
    "steps": ("id", "name", "op", "layer", "codelet", "split", "repeats", "vertices",
              "reduce_vertices", "tiles_used", "compute_cycles", "exchange_cycles",
              "sync_cycles", "reduce_cycles", "total_cycles", "max_tile_bytes", "note"),
}
# Integer columns that index another table or lookup: (table, column) -> (target, offset).
# A value v must satisfy -offset <= v < len(target) (offset 1 allows the -1 of graph inputs).
REFERENCES = {
    ("vertices", "step"): ("steps", 1), ("vertices", "op"): ("ops", 0),
    ("vertices", "layer"): ("layers", 0), ("vertices", "codelet"): ("codelets", 0),
    ("vertices", "tile"): ("tiles", 0),
    ("edges", "src"): ("vertices", 0), ("edges", "dst"): ("vertices", 0),
    ("edges", "tensor"): ("tensors", 0), ("edges", "src_tile"): ("tiles", 0),
    ("edges", "dst_tile"): ("tiles", 0),
    ("tensors", "producer_step"): ("steps", 1),
    ("steps", "op"): ("ops", 0), ("steps", "layer"): ("layers", 0),
    ("steps", "codelet"): ("codelets", 0),
}


def _num(a) -> list:
    """A numeric column as a list: ints when every value is integral, else floats."""
    a = np.asarray(a)
    if a.dtype.kind in "iub":
        return a.astype(np.int64).tolist()
    a = a.astype(np.float64)
    if a.size and np.all(np.isfinite(a)) and np.all(a == np.round(a)) \
            and np.abs(a).max() < 2.0 ** 53:
        return a.astype(np.int64).tolist()
    return a.tolist()


def op_lookup(vg: VizGraph) -> tuple[list[str], np.ndarray]:
    """The op lookup table ("input", then each distinct step op in first-use order) and the
    index into it of every vertex."""
    ops = ["input"]
    for op in vg.step_ops:
        if op not in ops:
            ops.append(op)
    index = {op: i for i, op in enumerate(ops)}
    step_op = np.array([index[op] for op in vg.step_ops] + [0], dtype=np.int64)
    return ops, step_op[vg.v_step]                 # step -1 reads the trailing "input" entry


def graph_doc(vg: VizGraph) -> dict:
    """The graph.json document of `vg` (see the module docstring), as a dict of plain lists."""
    from .. import __version__

    plan = vg.plan
    target = plan.target
    mem = plan.memory
    T = target.tiles
    steps = plan.steps
    ops, v_op = op_lookup(vg)
    op_index = {op: i for i, op in enumerate(ops)}
    layer_index = {name: i for i, name in enumerate(vg.layers)}
    codelet_index = {c: i for i, c in enumerate(CODELETS)}

    total = mem.total
    if len(steps):
        peak_live, peak_temp, peak_total = mem.live.max(0), mem.temp.max(0), total.max(0)
    else:
        peak_live = peak_temp = np.zeros(T)
        peak_total = mem.always_live
    tile_compute = np.zeros(T)
    tile_received = np.zeros(T)
    for s in steps:
        tile_compute += s.tile_compute
        tile_received += s.tile_received
    tiles = {
        "id": list(range(T)),
        "vertices": _num(np.bincount(vg.v_tile, minlength=T)),
        "weights_bytes": _num(mem.weights),
        "code_and_state_bytes": _num(mem.always_live - mem.weights),
        "peak_live_bytes": _num(peak_live),
        "peak_temp_bytes": _num(peak_temp),
        "peak_total_bytes": _num(peak_total),
        "compute_cycles": _num(tile_compute),
        "received_bytes": _num(tile_received),
    }
    V = vg.num_vertices
    vertices = {
        "id": list(range(V)),
        "step": _num(vg.v_step),
        "op": v_op.tolist(),
        "layer": _num(vg.v_layer),
        "codelet": _num(vg.v_codelet),
        "tile": _num(vg.v_tile),
        "macs": _num(vg.v_macs),
        "cycles": _num(vg.v_cycles),
        "bytes": _num(vg.v_bytes),
    }
    tensors = {
        "id": list(range(len(vg.tensors))),
        "name": [t["name"] for t in vg.tensors],
        "shape": [list(t["shape"]) for t in vg.tensors],
        "dtype": [t["dtype"] for t in vg.tensors],
        "bytes": [int(t["bytes"]) for t in vg.tensors],
        "producer_step": [int(t["producer_step"]) for t in vg.tensors],
    }
    edges = {
        "src": _num(vg.e_src),
        "dst": _num(vg.e_dst),
        "bytes": _num(vg.e_bytes),
        "tensor": _num(vg.e_tensor),
        "src_tile": _num(vg.v_tile[vg.e_src]),
        "dst_tile": _num(vg.v_tile[vg.e_dst]),
    }

    def col(fn):
        return [fn(s) for s in steps]

    def anchor_layer(s):
        a = s.group.anchor
        return layer_index[a.scope or a.name]

    step_table = {
        "id": col(lambda s: s.index),
        "name": col(lambda s: s.name),
        "op": col(lambda s: op_index[s.op]),
        "layer": col(anchor_layer),
        "codelet": col(lambda s: codelet_index[s.codelet]),
        "split": col(lambda s: s.partition.describe()),
        "repeats": col(lambda s: int(s.repeats)),
        "vertices": col(lambda s: int(len(s.vertices))),
        "reduce_vertices": col(lambda s: 0 if s.reduce_vertices is None
                               else int(len(s.reduce_vertices))),
        "tiles_used": col(lambda s: s.tiles_used),
        "compute_cycles": _num(col(lambda s: s.compute_cycles)),
        "exchange_cycles": _num(col(lambda s: s.exchange_cycles)),
        "sync_cycles": _num(col(lambda s: s.sync_cycles)),
        "reduce_cycles": _num(col(lambda s: s.reduce_cycles)),
        "total_cycles": _num(col(lambda s: s.total_cycles)),
        "max_tile_bytes": col(lambda s: s.max_tile_bytes),
        "note": col(lambda s: s.note),
    }
    meta = {
        "graph": plan.graph.name,
        "batch": int(plan.batch()),
        "fused": bool(plan.fuse),
        "target": {k: getattr(target, k) for k in target.__dataclass_fields__},
        "estimated_cycles": plan.estimated_cycles(),
        "estimated_seconds": plan.estimated_seconds(),
        "samples_per_second": plan.samples_per_second(),
        "peak_tile_bytes": int(plan.peak_tile_bytes()),
        "exchange_bytes": vg.exchange_bytes(),
        "ipugraph_version": __version__,
        "counts": {"tiles": T, "vertices": V, "edges": vg.num_edges,
                   "tensors": len(vg.tensors), "steps": len(steps)},
    }
    return {
        "schema": SCHEMA_NAME,
        "version": SCHEMA_VERSION,
        "meta": meta,
        "lookups": {"ops": ops, "layers": list(vg.layers), "codelets": list(CODELETS)},
        "tiles": tiles,
        "vertices": vertices,
        "tensors": tensors,
        "edges": edges,
        "steps": step_table,
    }


def write_graph_json(vg: VizGraph, path) -> str:
    """Write graph.json for `vg`: compact JSON, one top-level key per line. Returns the path."""
    doc = graph_doc(vg)
    compact = (",", ":")
    body = ",\n".join(f"{json.dumps(k)}:{json.dumps(v, separators=compact)}"
                      for k, v in doc.items())
    path = os.fspath(path)
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        f.write(body)
        f.write("\n}\n")
    return path


def _fail(path, what: str):
    raise ValueError(f"{path}: invalid graph.json: {what}")


def validate(doc, path="graph.json") -> dict:
    """Check a loaded graph.json document (see load_graph_json); returns it unchanged."""
    if not isinstance(doc, dict):
        _fail(path, f"the top level is a {type(doc).__name__}, not an object")
    for key in ("schema", "version"):
        if key not in doc:
            _fail(path, f"missing top-level key '{key}'")
    schema = doc["schema"]
    if schema != SCHEMA_NAME:
        _fail(path, f"'schema' is {schema!r}, expected {SCHEMA_NAME!r}")
    version = doc["version"]
    if version != SCHEMA_VERSION or isinstance(version, bool):
        raise ValueError(f"{path}: graph.json schema version {version!r} is not supported "
                         f"(this ipugraph reads version {SCHEMA_VERSION})")
    for key in ("meta", "lookups", *TABLES):
        if key not in doc:
            _fail(path, f"missing top-level key '{key}'")
        if not isinstance(doc[key], dict):
            _fail(path, f"'{key}' is a {type(doc[key]).__name__}, not an object")
    meta = doc["meta"]
    for key in META_KEYS:
        if key not in meta:
            _fail(path, f"missing key 'meta.{key}'")
    counts = meta["counts"]
    if not isinstance(counts, dict):
        _fail(path, "'meta.counts' is not an object")
    for key in LOOKUPS:
        if not isinstance(doc["lookups"].get(key), list):
            _fail(path, f"missing lookup list 'lookups.{key}'")
    lengths = {key: len(doc["lookups"][key]) for key in LOOKUPS}
    for table, columns in TABLES.items():
        cols = doc[table]
        for c in columns:
            if c not in cols:
                _fail(path, f"table '{table}' has no column '{c}'")
            if not isinstance(cols[c], list):
                _fail(path, f"column '{table}.{c}' is a {type(cols[c]).__name__}, not a list")
        n = {c: len(v) for c, v in cols.items() if isinstance(v, list)}
        if len(set(n.values())) > 1:
            _fail(path, f"columns of table '{table}' have unequal lengths: "
                  + ", ".join(f"{c}={k}" for c, k in n.items()))
        rows = next(iter(n.values()), 0)
        if table not in counts:
            _fail(path, f"missing key 'meta.counts.{table}'")
        if counts[table] != rows:
            _fail(path, f"table '{table}' has {rows} rows but meta.counts.{table} is "
                  f"{counts[table]}")
        lengths[table] = rows
    for (table, c), (target, offset) in REFERENCES.items():
        values = doc[table][c]
        if not values:
            continue
        if not all(type(x) is int for x in values):
            _fail(path, f"column '{table}.{c}' must hold integers (indices into '{target}')")
        lo, hi = min(values), max(values)
        if lo < -offset or hi >= lengths[target]:
            _fail(path, f"column '{table}.{c}' holds values {lo!r}..{hi!r}, outside "
                  f"{-offset}..{lengths[target] - 1} (rows of '{target}')")
    return doc


def load_graph_json(path) -> dict:
    """Read and check a graph.json; raises ValueError naming what is wrong."""
    path = os.fspath(path)
    with open(path, encoding="utf-8") as f:
        try:
            doc = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON: {e}") from None
    return validate(doc, path)
