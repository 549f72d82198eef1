"""The tile-placement graph as files for graph tools: GEXF 1.3 (Gephi), GraphML (yEd, Cytoscape,
networkx, igraph) and Graphviz DOT.

Levels of detail (`aggregate`):

- ``"vertex"``: one node per vertex of the VizGraph, one edge per data dependency;
- ``"op-tile"``: one node per (step, tile) pair holding the vertices of that step on that tile
  (a step's compute and reduction vertices on one tile share a node; graph-input boxes make one
  node per (input, tile)); edges between two such nodes are summed into one, bytes added.
  Edges between vertices of the same node (a partial slab reduced on its own tile) become a
  self-loop carrying their bytes, so edge bytes always add up to the VizGraph's;
- ``"op-tilegroup"``: the same with tiles grouped in contiguous runs of `TILE_GROUP` (a node's
  ``tile`` is its group's first tile; ``crosses_exchange`` then means "between groups"): at
  ResNet-34/Mk2 scale op-tile is barely smaller than vertex level (most steps run one vertex per
  tile), this level is what Gephi and yEd open comfortably;
- ``"auto"``: the finest of vertex, op-tile and op-tilegroup with at most 20,000 nodes and
  200,000 edges (op-tilegroup otherwise).

Node attributes: ``step`` (-1 for graph inputs), ``op``, ``layer``, ``codelet`` (for a node holding
several kinds, joined with "+", e.g. "supervisor+reduce"), ``tile``, ``macs``, ``cycles``, ``bytes``
(sums over the node's vertices; cycles are summed work, not elapsed time) and ``vertices`` (how
many vertices the node holds; 1 at vertex level). Edge attributes: ``bytes`` and
``crosses_exchange`` (the two ends are on different tiles). Node ids are 0..N-1 in the order of
`Aggregate`; vertex-level ids are the VizGraph vertex ids.

The XML and DOT text is built in chunks of formatted strings and streamed to the file; the files
load with ``networkx.read_gexf`` / ``networkx.read_graphml`` and are valid GEXF 1.3 / GraphML
with every attribute declared with its type.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from xml.sax.saxutils import escape

import numpy as np

from .graphdata import CODELETS, VizGraph, sum_by_key
from .schema import op_lookup

LEVELS = ("vertex", "op-tile", "op-tilegroup", "auto")
TILE_GROUP = 32                     # tiles per node at level op-tilegroup
AUTO_MAX_VERTICES = 20_000
AUTO_MAX_EDGES = 200_000
CHUNK = 100_000                     # rows formatted per write

# name, GEXF type, GraphML type
NODE_ATTRS = (("step", "integer", "int"), ("op", "string", "string"),
              ("layer", "string", "string"), ("codelet", "string", "string"),
              ("tile", "integer", "int"), ("macs", "double", "double"),
              ("cycles", "double", "double"), ("bytes", "double", "double"),
              ("vertices", "integer", "int"))
EDGE_ATTRS = (("bytes", "long", "long"), ("crosses_exchange", "boolean", "boolean"))


@dataclass
class Aggregate:
    """Nodes and edges of one level of detail, as flat arrays (see the module docstring)."""
    level: str                      # "vertex", "op-tile" or "op-tilegroup"
    graph: str                      # graph name
    ops: list[str]                  # lookup tables for the index columns below
    layers: list[str]
    codelets: list[str]
    step: np.ndarray                # [N] int
    tile: np.ndarray                # [N] int
    op: np.ndarray                  # [N] index into ops
    layer: np.ndarray               # [N] index into layers
    codelet: np.ndarray             # [N] index into codelets
    macs: np.ndarray                # [N] float, summed
    cycles: np.ndarray              # [N] float, summed
    bytes: np.ndarray               # [N] float, summed
    vertices: np.ndarray            # [N] int, vertices per node
    src: np.ndarray                 # [E] node ids
    dst: np.ndarray
    edge_bytes: np.ndarray          # [E] int, summed
    edge_count: np.ndarray          # [E] int, vertex edges per edge

    @property
    def num_nodes(self) -> int:
        return len(self.step)

    @property
    def num_edges(self) -> int:
        return len(self.src)

    @property
    def crosses_exchange(self) -> np.ndarray:
        return self.tile[self.src] != self.tile[self.dst]

    def labels(self) -> list[str]:
        layers = self.layers
        if self.level == "vertex":
            return [f"{layers[l]} v{i} @{t}" for i, (l, t) in
                    enumerate(zip(self.layer.tolist(), self.tile.tolist()))]
        return [f"{layers[l]} @{t}" for l, t in zip(self.layer.tolist(), self.tile.tolist())]

    def node_attr(self, name: str) -> list:
        """Python values of one node attribute, as the files hold them."""
        if name in ("op", "layer", "codelet"):
            table = getattr(self, name + "s")
            return [table[i] for i in getattr(self, name).tolist()]
        return getattr(self, name).tolist()


def resolve_level(vg: VizGraph, level: str) -> str:
    if level not in LEVELS:
        raise ValueError(f"level must be one of {', '.join(LEVELS)}; got {level!r}")
    if level == "auto":
        if vg.num_vertices <= AUTO_MAX_VERTICES and vg.num_edges <= AUTO_MAX_EDGES:
            return "vertex"
        agg = aggregate(vg, "op-tile")
        small = agg.num_nodes <= AUTO_MAX_VERTICES and agg.num_edges <= AUTO_MAX_EDGES
        return "op-tile" if small else "op-tilegroup"
    return level


def aggregate(vg: VizGraph, level: str = "auto") -> Aggregate:
    """Nodes and edges of `vg` at `level` ("vertex", "op-tile", "op-tilegroup" or "auto"),
    computed once per level (the three writers of a dump share it)."""
    level = resolve_level(vg, level)
    key = ("aggregate", level)
    if key not in vg.cache:
        vg.cache[key] = _aggregate(vg, level)
    return vg.cache[key]


def _aggregate(vg: VizGraph, level: str) -> Aggregate:
    ops, v_op = op_lookup(vg)
    name = vg.plan.graph.name
    if level == "vertex":
        return Aggregate(level, name, ops, list(vg.layers), list(CODELETS),
                         vg.v_step.astype(np.int64), vg.v_tile.astype(np.int64), v_op,
                         vg.v_layer.astype(np.int64), vg.v_codelet.astype(np.int64),
                         vg.v_macs, vg.v_cycles, vg.v_bytes,
                         np.ones(vg.num_vertices, np.int64), vg.e_src.astype(np.int64),
                         vg.e_dst.astype(np.int64), vg.e_bytes.astype(np.int64),
                         np.ones(vg.num_edges, np.int64))

    gsize = TILE_GROUP if level == "op-tilegroup" else 1
    T = -(-int(vg.plan.target.tiles) // gsize)
    tile = vg.v_tile.astype(np.int64) // gsize
    step = vg.v_step.astype(np.int64)
    # Group: each graph input (by its layer) first, then the steps in order; one node per
    # (group, tile), numbered in that order.
    is_input = step < 0
    in_layers = np.unique(vg.v_layer[is_input])
    group = np.where(is_input, np.searchsorted(in_layers, vg.v_layer), len(in_layers) + step)
    key = group * T + tile
    uniq, first, inv = np.unique(key, return_index=True, return_inverse=True)
    inv = inv.reshape(-1)
    N = len(uniq)
    kinds = np.zeros(N, np.int64)
    np.bitwise_or.at(kinds, inv, np.left_shift(1, vg.v_codelet.astype(np.int64)))
    masks, kind_index = np.unique(kinds, return_inverse=True)
    codelets = ["+".join(c for b, c in enumerate(CODELETS) if m >> b & 1) for m in masks.tolist()]

    eu, ebytes, ecount = sum_by_key(
        vg.num_edges, lambda sl: inv[vg.e_src[sl]].astype(np.int64) * N + inv[vg.e_dst[sl]],
        vg.e_bytes)
    return Aggregate(
        level, name, ops, list(vg.layers), codelets,
        step[first], tile[first] * gsize, v_op[first],
        vg.v_layer[first].astype(np.int64), kind_index.reshape(-1).astype(np.int64),
        np.bincount(inv, weights=vg.v_macs, minlength=N),
        np.bincount(inv, weights=vg.v_cycles, minlength=N),
        np.bincount(inv, weights=vg.v_bytes, minlength=N),
        np.bincount(inv, minlength=N).astype(np.int64),
        eu // N, eu % N,
        ebytes.round().astype(np.int64), ecount)


# -- value formatting ------------------------------------------------------------------------
def _numbers(a) -> list:
    """Values whose str() is a compact number: ints where integral, else floats."""
    a = np.asarray(a)
    if a.dtype.kind in "iub":
        return a.astype(np.int64).tolist()
    if a.size and np.all(np.isfinite(a)) and np.all(a == np.round(a)) \
            and np.abs(a).max() < 2.0 ** 53:
        return a.astype(np.int64).tolist()
    return a.astype(np.float64).tolist()


def _column_text(agg: Aggregate, name: str, quote) -> list[str]:
    """One node attribute as text per node, strings passed through `quote`."""
    if name in ("op", "layer", "codelet"):
        table = [quote(s) for s in getattr(agg, name + "s")]
        return [table[i] for i in getattr(agg, name).tolist()]
    return [str(v) for v in _numbers(getattr(agg, name))]


def _attr(s: str) -> str:
    """Escaped for an XML attribute value in double quotes (without the quotes)."""
    return escape(s, {'"': "&quot;", "\n": "&#10;", "\t": "&#9;"})


def _edge_rows(agg: Aggregate) -> list[tuple[int, int, int, int]]:
    """(source, target, bytes, crosses exchange 0/1) per edge, as Python ints for formatting."""
    return list(zip(agg.src.tolist(), agg.dst.tolist(), agg.edge_bytes.tolist(),
                    agg.crosses_exchange.astype(np.int64).tolist()))


def _write_rows(f, rows_fn, n: int) -> None:
    for start in range(0, n, CHUNK):
        f.write("".join(rows_fn(start, min(n, start + CHUNK))))


def _description(agg: Aggregate, vg: VizGraph) -> str:
    t = vg.plan.target
    return (f"{agg.graph} on {t.name} ({t.tiles} tiles): {agg.level}-level tile-placement "
            f"graph, {agg.num_nodes} nodes, {agg.num_edges} edges; edge bytes are data moved "
            f"between vertices")


# -- GEXF ----------------------------------------------------------------------------------
def write_gexf(vg: VizGraph, path, level: str = "auto") -> str:
    """GEXF 1.3 of `vg` at `level` (read it with ``networkx.read_gexf``). Returns the path."""
    agg = aggregate(vg, level)
    path = os.fspath(path)
    names = [a[0] for a in NODE_ATTRS]
    cols = [_column_text(agg, n, _attr) for n in names]
    labels = [_attr(s) for s in agg.labels()]
    edge_rows = _edge_rows(agg)
    tf = ("false", "true")

    def nodes(a, b):
        out = []
        for i in range(a, b):
            vals = "".join(f'<attvalue for="{k}" value="{c[i]}"/>' for k, c in enumerate(cols))
            out.append(f'<node id="{i}" label="{labels[i]}"><attvalues>{vals}'
                       f'</attvalues></node>\n')
        return out

    def edges(a, b):
        # Edge ids are optional in GEXF 1.3; leaving them out keeps the file smaller.
        return [f'<edge source="{s}" target="{d}"><attvalues><attvalue for="0" value="{w}"/>'
                f'<attvalue for="1" value="{tf[x]}"/></attvalues></edge>\n'
                for s, d, w, x in edge_rows[a:b]]

    with open(path, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<gexf xmlns="http://gexf.net/1.3" '
                'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                'xsi:schemaLocation="http://gexf.net/1.3 http://gexf.net/1.3/gexf.xsd" '
                'version="1.3">\n'
                f'<meta><creator>ipugraph</creator><keywords>{escape(agg.graph)}</keywords>'
                f'<description>{escape(_description(agg, vg))}</description></meta>\n'
                '<graph defaultedgetype="directed" idtype="integer" mode="static">\n'
                '<attributes class="node">\n')
        for k, (name, gtype, _) in enumerate(NODE_ATTRS):
            f.write(f'<attribute id="{k}" title="{name}" type="{gtype}"/>\n')
        f.write('</attributes>\n<attributes class="edge">\n')
        for k, (name, gtype, _) in enumerate(EDGE_ATTRS):
            f.write(f'<attribute id="{k}" title="{name}" type="{gtype}"/>\n')
        f.write(f'</attributes>\n<nodes count="{agg.num_nodes}">\n')
        _write_rows(f, nodes, agg.num_nodes)
        f.write(f'</nodes>\n<edges count="{agg.num_edges}">\n')
        _write_rows(f, edges, agg.num_edges)
        f.write('</edges>\n</graph>\n</gexf>\n')
    return path


# -- GraphML -------------------------------------------------------------------------------
def write_graphml(vg: VizGraph, path, level: str = "auto") -> str:
    """GraphML of `vg` at `level` (read it with ``networkx.read_graphml``). Returns the path."""
    agg = aggregate(vg, level)
    path = os.fspath(path)
    names = [a[0] for a in NODE_ATTRS]
    cols = [_column_text(agg, n, escape) for n in names]
    labels = [escape(s) for s in agg.labels()]
    edge_rows = _edge_rows(agg)
    tf = ("false", "true")

    def nodes(a, b):
        out = []
        for i in range(a, b):
            vals = "".join(f'<data key="n{k}">{c[i]}</data>' for k, c in enumerate(cols))
            out.append(f'<node id="{i}"><data key="label">{labels[i]}</data>{vals}</node>\n')
        return out

    def edges(a, b):
        return [f'<edge source="{s}" target="{d}"><data key="e0">{w}</data>'
                f'<data key="e1">{tf[x]}</data></edge>\n'
                for s, d, w, x in edge_rows[a:b]]

    with open(path, "w", encoding="utf-8") as f:
        f.write('<?xml version="1.0" encoding="UTF-8"?>\n'
                '<graphml xmlns="http://graphml.graphdrawing.org/xmlns" '
                'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance" '
                'xsi:schemaLocation="http://graphml.graphdrawing.org/xmlns '
                'http://graphml.graphdrawing.org/xmlns/1.0/graphml.xsd">\n'
                f'<desc>{escape(_description(agg, vg))}</desc>\n'
                '<key id="label" for="node" attr.name="label" attr.type="string"/>\n')
        for k, (name, _, mtype) in enumerate(NODE_ATTRS):
            f.write(f'<key id="n{k}" for="node" attr.name="{name}" attr.type="{mtype}"/>\n')
        for k, (name, _, mtype) in enumerate(EDGE_ATTRS):
            f.write(f'<key id="e{k}" for="edge" attr.name="{name}" attr.type="{mtype}"/>\n')
        f.write('<graph id="G" edgedefault="directed">\n')
        _write_rows(f, nodes, agg.num_nodes)
        _write_rows(f, edges, agg.num_edges)
        f.write('</graph>\n</graphml>\n')
    return path


# -- DOT -----------------------------------------------------------------------------------
def _dot_str(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def write_dot(vg: VizGraph, path, level: str = "auto") -> str:
    """Graphviz DOT of `vg` at `level`: one cluster per layer, one line per node and per edge.

    Node lines look like ``"12" [label="conv1 @5", step=0, op="...", layer="conv1", ...];`` and
    edge lines like ``"12" -> "40" [bytes=128, crosses_exchange=true];``; exchange-crossing
    edges are drawn red. Returns the path."""
    agg = aggregate(vg, level)
    path = os.fspath(path)
    names = [a[0] for a in NODE_ATTRS]

    def quote_numbers(text: list[str]) -> list[str]:
        # DOT numerals have no exponent: quote a column holding any float text.
        if any(("e" in v or "n" in v) for v in text):
            return [f'"{v}"' for v in text]
        return text

    cols = [_column_text(agg, n, _dot_str) if n in ("op", "layer", "codelet")
            else quote_numbers(_column_text(agg, n, _dot_str)) for n in names]
    labels = [_dot_str(s) for s in agg.labels()]
    edge_rows = _edge_rows(agg)
    tails = (" [bytes={}, crosses_exchange=false];\n", " [bytes={}, crosses_exchange=true, "
             "color=red];\n")
    order = np.argsort(agg.layer, kind="stable")
    by_layer = np.split(order, np.flatnonzero(np.diff(agg.layer[order])) + 1) \
        if len(order) else []

    def node_line(i: int) -> str:
        attrs = ", ".join(f"{n}={c[i]}" for n, c in zip(names, cols))
        return f'  "{i}" [label={labels[i]}, {attrs}];\n'

    def edges(a, b):
        return [f'"{s}" -> "{d}"' + tails[x].format(w)
                for s, d, w, x in edge_rows[a:b]]

    with open(path, "w", encoding="utf-8") as f:
        f.write(f"digraph {_dot_str(agg.graph)} {{\n"
                f"graph [label={_dot_str(_description(agg, vg))}, rankdir=TB];\n"
                "node [shape=box, fontsize=8];\n"
                "edge [arrowsize=0.4];\n")
        for members in by_layer:
            layer = int(agg.layer[members[0]])
            f.write(f'subgraph "cluster_{layer}" {{\n'
                    f"  label={_dot_str(agg.layers[layer])};\n")
            for start in range(0, len(members), CHUNK):
                f.write("".join(node_line(i) for i in members[start:start + CHUNK].tolist()))
            f.write("}\n")
        _write_rows(f, edges, agg.num_edges)
        f.write("}\n")
    return path
