"""graph.json + two Parquet files: the tile-placement graph of a Plan (a VizGraph), versioned.

Layout
------
``graph.json`` is a small JSON manifest: the plan's meta data, the lookups and the small tables
(tiles, tensors, steps). The two big tables are Apache Parquet files beside it (zstd, the
vertex and edge ids delta-encoded), named in ``files``: ``graph.vertices.parquet`` and
``graph.edges.parquet``. ResNet-18's training step on a Mk2 at batch 1 (755 k vertices, 38 M
edges) makes a 5 MB edge file that pyarrow reads in 0.3 s, where version 1's all-JSON
document was 1.3 GB. :func:`load` reads all three back into one dict of columns (NumPy arrays
for the Parquet tables, lists for the JSON ones); ``ig.viz.load`` is the same function.

Every table is COLUMNAR: a mapping of each column name to its values, all columns of a table of
equal length; row ``i`` of a table is the item with id ``i`` (``tiles``, ``steps`` and
``tensors`` carry that id as an explicit ``id`` column; for ``vertices`` :func:`load` adds it,
and the edges' ``src_tile`` / ``dst_tile``, from the other columns). Strings that repeat on many rows (op, layer, codelet) are stored once in ``lookups`` and
referenced by integer index. Numbers are JSON numbers: integers where the value is integral,
otherwise floats (cycles of a non-AMP vertex can be fractional).

Units: ``*_bytes`` / ``bytes`` in bytes; ``*_cycles`` / ``cycles`` in cycles of the target's
tile clock (``meta.target.clock_hz``); seconds in seconds; ``macs`` in multiply-accumulates for
conv/matmul vertices and element operations for the others.

Top-level keys (all required)
-----------------------------
``schema``      the string ``"ipugraph.graph"``.
``version``     integer schema version, :data:`SCHEMA_VERSION` (2; version 1 held every table
                in the JSON document). A reader rejects any other.
``files``       ``{"vertices": ..., "edges": ...}``: the Parquet files' names, relative to the
                manifest's folder.
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
``vertices``    (Parquet) one row per vertex of the plan (compute vertices of every step, then for a
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
``edges``       (Parquet) one row per data dependency between two vertices, grouped by step,
                then by consumer:
    ``src``, ``dst``        producer and consumer vertex ids
    ``bytes``               size of the overlap the consumer reads from the producer [bytes]
    ``tensor``              index into ``tensors`` of the tensor carried
    ``src_tile``, ``dst_tile``  tiles of the two vertices (not stored: :func:`load` adds
                            them); they differ when the edge crosses the exchange
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

Reading: :func:`load` checks the schema name and version, the required keys and files, that the
columns of each table have equal lengths matching ``meta.counts`` and that index columns are
integers in range, and raises ``ValueError`` naming the file and what is wrong.
"""
from __future__ import annotations

import json
import os

import numpy as np

from .graphdata import CODELETS, VizGraph

SCHEMA_NAME = "ipugraph.graph"
SCHEMA_VERSION = 2
ROW_GROUP = 1 << 22                       # rows per Parquet row group
PARQUET = ("vertices", "edges")            # the tables stored as Parquet files

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
    vertices = {                                      # NumPy columns: the Parquet tables
        "step": vg.v_step.astype(np.int32),
        "op": v_op.astype(np.int32),
        "layer": vg.v_layer.astype(np.int32),
        "codelet": vg.v_codelet.astype(np.int8),
        "tile": vg.v_tile.astype(np.int32),
        "macs": vg.v_macs.astype(np.float64),
        "cycles": vg.v_cycles.astype(np.float64),
        "bytes": vg.v_bytes.astype(np.float64),
    }
    tensors = {
        "id": list(range(len(vg.tensors))),
        "name": [t["name"] for t in vg.tensors],
        "shape": [list(t["shape"]) for t in vg.tensors],
        "dtype": [t["dtype"] for t in vg.tensors],
        "bytes": [int(t["bytes"]) for t in vg.tensors],
        "producer_step": [int(t["producer_step"]) for t in vg.tensors],
    }
    ids = np.int32 if V < 2**31 else np.int64
    edges = {                                         # views where the dtypes already fit
        "src": vg.e_src.astype(ids, copy=False),
        "dst": vg.e_dst.astype(ids, copy=False),
        "bytes": vg.e_bytes.astype(np.int64 if vg.e_bytes.dtype == np.int64 else np.int32,
                                   copy=False),
        "tensor": vg.e_tensor.astype(np.int32, copy=False),
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
        "files": {t: f"graph.{t}.parquet" for t in PARQUET},
        "meta": meta,
        "lookups": {"ops": ops, "layers": list(vg.layers), "codelets": list(CODELETS)},
        "tiles": tiles,
        "vertices": vertices,
        "tensors": tensors,
        "edges": edges,
        "steps": step_table,
    }


def _parquet():
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError as e:                        # pragma: no cover - viz extra not installed
        raise ImportError("the graph files need pyarrow: pip install 'ipugraph[viz]' "
                          "(or pip install pyarrow)") from e
    return pyarrow, pyarrow.parquet


def write_graph_json(vg: VizGraph, path) -> str:
    """Write the graph files of `vg`: the manifest at `path` (graph.json, compact JSON, one
    top-level key per line) and the vertex and edge tables as Parquet files beside it, named
    after it (graph.vertices.parquet, graph.edges.parquet). Returns the manifest's path."""
    pa, pq = _parquet()
    doc = graph_doc(vg)
    path = os.fspath(path)
    folder, stem = os.path.dirname(path), os.path.splitext(os.path.basename(path))[0]
    for table in PARQUET:
        name = f"{stem}.{table}.parquet"
        doc["files"][table] = name
        cols = doc.pop(table)
        ints = [c for c, a in cols.items() if a.dtype.kind in "iu"]
        # Ids and steps rise slowly down the rows: delta encoding makes them ~1 bit each.
        delta = {c: "DELTA_BINARY_PACKED" for c in ("src", "dst", "step") if c in cols}
        rows = len(next(iter(cols.values())))
        first = pa.table({c: a[:1] for c, a in cols.items()})
        with pq.ParquetWriter(os.path.join(folder, name), first.schema, compression="zstd",
                              use_dictionary=[c for c in ints if c not in delta],
                              column_encoding=delta) as w:
            for a in range(0, max(rows, 1), ROW_GROUP):   # a row group at a time: bounded memory
                w.write_table(pa.table({c: v[a:a + ROW_GROUP] for c, v in cols.items()},
                                       schema=first.schema))
    compact = (",", ":")
    body = ",\n".join(f"{json.dumps(k)}:{json.dumps(v, separators=compact)}"
                      for k, v in doc.items())
    with open(path, "w", encoding="utf-8") as f:
        f.write("{\n")
        f.write(body)
        f.write("\n}\n")
    return path


def _fail(path, what: str):
    raise ValueError(f"{path}: invalid graph files: {what}")


def _is_int_column(values) -> bool:
    if isinstance(values, np.ndarray):
        return values.dtype.kind in "iu"
    return all(type(x) is int for x in values)


def validate(doc, path="graph.json") -> dict:
    """Check a loaded graph document (see load); returns it unchanged."""
    if not isinstance(doc, dict):
        _fail(path, f"the top level is a {type(doc).__name__}, not an object")
    for key in ("schema", "version"):
        if key not in doc:
            _fail(path, f"missing top-level key '{key}'")
    schema = doc["schema"]
    if schema != SCHEMA_NAME:
        _fail(path, f"'schema' is {schema!r}, expected {SCHEMA_NAME!r}")
    version = doc["version"]
    if type(version) is not int or version != SCHEMA_VERSION:
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
            if not isinstance(cols[c], (list, np.ndarray)):
                _fail(path, f"column '{table}.{c}' is a {type(cols[c]).__name__}, not a list")
        n = {c: len(v) for c, v in cols.items() if isinstance(v, (list, np.ndarray))}
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
        _check_reference(path, table, c, doc[table][c], target, offset, lengths[target])
    return doc


def _check_reference(path, table: str, c: str, values, target: str, offset: int, rows: int):
    """Column table.c (a list or array) holds integers in -offset .. rows - 1 (rows of target)."""
    if not len(values):
        return
    if not _is_int_column(values):
        _fail(path, f"column '{table}.{c}' must hold integers (indices into '{target}')")
    lo, hi = int(np.min(values)), int(np.max(values))
    if lo < -offset or hi >= rows:
        _fail(path, f"column '{table}.{c}' holds values {lo!r}..{hi!r}, outside "
              f"{-offset}..{rows - 1} (rows of '{target}')")


def _read_json(path):
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ValueError(f"{path}: cannot read the graph manifest: {e.strerror or e}") from None
    try:
        return json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not valid JSON: not UTF-8 ({e.reason} at byte {e.start})") \
            from None
    except (json.JSONDecodeError, RecursionError, ValueError) as e:
        what = "nested too deeply" if isinstance(e, RecursionError) else e
        raise ValueError(f"{path}: not valid JSON: {what}") from None


def load(path) -> dict:
    """Read a dump's graph files: `path` is the graph.json manifest or the dump's folder.
    Returns one dict (the manifest's keys, with the vertex and edge tables as NumPy columns
    and their derived columns added) after the checks of the module docstring; raises
    ValueError naming the file and what is wrong."""
    path = os.fspath(path)
    if os.path.isdir(path):
        path = os.path.join(path, "graph.json")
    doc = _read_json(path)
    if isinstance(doc, dict) and doc.get("schema") == SCHEMA_NAME \
            and doc.get("version") == SCHEMA_VERSION and type(doc.get("version")) is int:
        files = doc.get("files")
        if not isinstance(files, dict):
            _fail(path, "missing the object 'files' naming the Parquet tables")
        _, pq = _parquet()
        folder = os.path.dirname(path)
        for table in PARQUET:
            name = files.get(table)
            if not isinstance(name, str) or os.path.basename(name) != name:
                _fail(path, f"'files.{table}' must name a file beside the manifest, got {name!r}")
            fpath = os.path.join(folder, name)
            try:
                t = pq.read_table(fpath)
            except OSError as e:
                raise ValueError(f"{fpath}: cannot read the '{table}' table of {path}: {e}") \
                    from None
            doc[table] = {c: t.column(c).to_numpy() for c in t.column_names}
        v, e = doc["vertices"], doc["edges"]
        n = len(next(iter(v.values()))) if v else 0
        v["id"] = np.arange(n)
        if "tile" in v and "src" in e and "dst" in e:
            epath = os.path.join(folder, files["edges"])
            for c in ("src", "dst"):            # in range first: the derived columns index by them
                _check_reference(epath, "edges", c, e[c], "vertices", 0, n)
            e["src_tile"], e["dst_tile"] = v["tile"][e["src"]], v["tile"][e["dst"]]
    return validate(doc, path)
