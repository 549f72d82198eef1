"""graph.json, GEXF, GraphML, DOT and the Chrome trace of a plan, checked against the plan:

- graph.json and its Parquet tables round-trip through load: their counts, bytes and cycles are the plan's
  (vertex count = vertices of every step + reduction vertices + graph-input boxes; per-tile
  compute = the sum over steps of Step.tile_compute), and a corrupted file is refused naming
  what is wrong;
- GEXF and GraphML load with networkx (and GraphML with igraph) holding exactly the nodes, edges
  and attributes of aggregate(vg, level), at vertex and op-tile level;
- graph.dot has one line per node and per edge and balanced braces (and parses with Graphviz's
  `gc` where it is installed);
- trace.json names every track, and its BSP slices add up to the plan's estimated cycles at the
  target clock to a relative 1e-12 (float rounding of ~100 additions).

Plans: ResNet-18 at 32x32, batch 1, on a 16-tile IPU (small enough to read back at vertex level)
and on a Mk2 (25k vertices, 197k edges: "auto" picks op-tile); a conv serialised over batch
slices (a Repeat) on 8 tiles for the trace."""
import json
import re
import shutil
import subprocess

import networkx as nx
import numpy as np
import pytest

import ipugraph as ig
from ipugraph.viz.exports import aggregate, resolve_level, write_dot, write_gexf, write_graphml
from ipugraph.viz.graphdata import CODELETS, build
from ipugraph.viz.schema import SCHEMA_VERSION, load, write_graph_json
from ipugraph.viz.trace import tile_groups, write_trace

from helpers import rand

SMALL = ig.Target.ipu(tiles=16, bytes_per_tile=4 * 2**20, name="ipu-16")
TREL = 1e-12          # relative tolerance for sums of float cycle/µs values


@pytest.fixture(scope="module")
def plans():
    g = ig.models.resnet18(batch=1, image_size=32)
    out = {}
    for key, target in (("small", SMALL), ("mk2", ig.Target.ipu_mk2())):
        p = ig.plan(g, target)
        out[key] = (p, build(p))
    return out


@pytest.fixture(scope="module")
def repeat_plan():
    small = ig.Target.ipu(tiles=8, bytes_per_tile=256 * 1024, name="small-ipu")
    g = ig.Graph(small, name="serialised")
    x = g.input("x", (8, 64, 16, 16))
    w = g.variable("w", (64, 64, 3, 3), value=rand((64, 64, 3, 3), seed=1) * 0.05)
    g.output("y", ig.ops.relu(ig.ops.conv2d(x, w, padding=1, name="conv")))
    p = ig.plan(g)
    assert p.steps[0].repeats > 1
    return p


# -- graph.json ------------------------------------------------------------------------------
@pytest.mark.parametrize("key", ["small", "mk2"])
def test_graph_json_matches_plan(plans, key, tmp_path):
    plan, vg = plans[key]
    path = write_graph_json(vg, tmp_path / "graph.json")
    doc = load(path)
    assert doc["schema"] == "ipugraph.graph" and doc["version"] == SCHEMA_VERSION
    meta = doc["meta"]
    T = plan.target.tiles
    inputs = sum(len(m.tiles) for m in plan.input_mappings.values())
    expect_v = sum(len(s.vertices) + (0 if s.reduce_vertices is None else len(s.reduce_vertices))
                   for s in plan.steps) + inputs
    assert meta["counts"] == {"tiles": T, "vertices": expect_v, "edges": vg.num_edges,
                              "tensors": len(vg.tensors), "steps": len(plan.steps)}
    assert vg.num_vertices == expect_v
    assert meta["graph"] == "resnet18" and meta["batch"] == 1
    assert meta["target"]["name"] == plan.target.name and meta["target"]["tiles"] == T
    assert meta["estimated_cycles"] == plan.estimated_cycles()
    assert meta["ipugraph_version"] == ig.__version__

    v = {k: np.asarray(c) for k, c in doc["vertices"].items()}
    assert np.array_equal(v["id"], np.arange(expect_v))
    assert np.array_equal(v["step"], vg.v_step) and np.array_equal(v["tile"], vg.v_tile)
    assert np.array_equal(v["macs"], vg.v_macs) and np.array_equal(v["cycles"], vg.v_cycles)
    assert np.array_equal(v["bytes"], vg.v_bytes)
    ops, layers = doc["lookups"]["ops"], doc["lookups"]["layers"]
    assert doc["lookups"]["codelets"] == list(CODELETS)
    names = [ops[i] for i in v["op"].tolist()]
    assert names == ["input" if s < 0 else vg.step_ops[s] for s in vg.v_step.tolist()]
    assert [layers[i] for i in v["layer"].tolist()] == [vg.layers[i] for i in vg.v_layer.tolist()]
    per_step = np.bincount(v["step"] + 1, minlength=len(plan.steps) + 1)
    assert per_step[0] == inputs
    for s in plan.steps:
        reduce = 0 if s.reduce_vertices is None else len(s.reduce_vertices)
        assert per_step[s.index + 1] == len(s.vertices) + reduce

    e = {k: np.asarray(c) for k, c in doc["edges"].items()}
    assert int(e["bytes"].sum()) == int(vg.e_bytes.sum()) > 0
    assert np.array_equal(e["src_tile"], v["tile"][e["src"]])
    assert np.array_equal(e["dst_tile"], v["tile"][e["dst"]])
    cross = e["src_tile"] != e["dst_tile"]
    assert int(e["bytes"][cross].sum()) == meta["exchange_bytes"] == vg.exchange_bytes()
    tensor_names = doc["tensors"]["name"]
    assert tensor_names == [t["name"] for t in vg.tensors]
    assert doc["tensors"]["bytes"] == [t["bytes"] for t in vg.tensors]

    tiles = {k: np.asarray(c, np.float64) for k, c in doc["tiles"].items()}
    tile_compute = np.sum([s.tile_compute for s in plan.steps], axis=0)
    np.testing.assert_allclose(tiles["compute_cycles"], tile_compute, rtol=TREL)
    assert tiles["compute_cycles"].sum() == pytest.approx(
        sum(float(s.tile_compute.sum()) for s in plan.steps), rel=TREL)
    assert np.array_equal(tiles["vertices"], np.bincount(vg.v_tile, minlength=T))
    mem = plan.memory
    np.testing.assert_array_equal(tiles["weights_bytes"], mem.weights)
    np.testing.assert_array_equal(tiles["code_and_state_bytes"], mem.always_live - mem.weights)
    np.testing.assert_array_equal(tiles["peak_total_bytes"], mem.total.max(axis=0))
    assert tiles["peak_total_bytes"].max() == plan.peak_tile_bytes() == meta["peak_tile_bytes"]
    assert (tiles["peak_total_bytes"] <= plan.target.bytes_per_tile).all()

    st = doc["steps"]
    assert st["name"] == [s.name for s in plan.steps]
    assert [ops[i] for i in st["op"]] == [s.op for s in plan.steps]
    for col in ("compute_cycles", "exchange_cycles", "sync_cycles", "reduce_cycles"):
        assert st[col] == [getattr(s, col) for s in plan.steps], col
    assert sum(st["total_cycles"]) == pytest.approx(plan.estimated_cycles(), rel=TREL)
    assert st["repeats"] == [s.repeats for s in plan.steps]


def _copy_dump(tmp_path, name):
    """A copy of the graph files in tmp_path/<name>/ (the manifest and its two Parquet files)."""
    d = tmp_path / name
    d.mkdir()
    for f in ("graph.json", "graph.vertices.parquet", "graph.edges.parquet"):
        shutil.copy(tmp_path / f, d / f)
    return d


def test_graph_files_are_compact_columnar(plans, tmp_path):
    """The big tables are Parquet (a few bytes per edge), the manifest small JSON; load()
    takes the folder or the manifest and gives NumPy columns."""
    _, vg = plans["mk2"]
    write_graph_json(vg, tmp_path / "graph.json")
    manifest = json.loads((tmp_path / "graph.json").read_text())
    assert manifest["files"] == {"vertices": "graph.vertices.parquet",
                                 "edges": "graph.edges.parquet"}
    assert "edges" not in manifest and "vertices" not in manifest
    edges_size = (tmp_path / "graph.edges.parquet").stat().st_size
    assert edges_size < 4 * vg.num_edges            # int32 src+dst+bytes+tensor would be 16
    doc = ig.viz.load(tmp_path)
    assert isinstance(doc["edges"]["src"], np.ndarray)
    assert np.array_equal(doc["edges"]["src"], vg.e_src)
    assert np.array_equal(doc["edges"]["dst"], vg.e_dst)
    assert np.array_equal(doc["edges"]["tensor"], vg.e_tensor)


def test_graph_files_reject_corrupt_input(plans, tmp_path):
    import pyarrow.parquet as pq
    _, vg = plans["small"]
    write_graph_json(vg, tmp_path / "graph.json")
    manifest = json.loads((tmp_path / "graph.json").read_text())

    def with_manifest(name, change):
        d = _copy_dump(tmp_path, name)
        bad = json.loads(json.dumps(manifest))
        change(bad)
        (d / "graph.json").write_text(json.dumps(bad))
        return d / "graph.json"

    def with_table(name, table, change):
        d = _copy_dump(tmp_path, name)
        f = d / f"graph.{table}.parquet"
        pq.write_table(change(pq.read_table(f)), f)
        return d

    def set_version(d):
        d["version"] = SCHEMA_VERSION + 1

    def drop_tile(t):
        return t.drop_columns(["tile"])

    def src_out_of_range(t):
        src = t.column("src").to_numpy().copy()
        src[0] = vg.num_vertices
        return t.set_column(t.column_names.index("src"), "src", __import__("pyarrow").array(src))

    cases = [
        (with_manifest("version", set_version),
         r"schema version 3 is not supported .*reads version 2"),
        (with_manifest("float_version", lambda d: d.update(version=2.0)),
         r"schema version 2.0 is not supported"),
        (with_manifest("schema", lambda d: d.update(schema="something.else")),
         r"'schema' is 'something.else', expected 'ipugraph.graph'"),
        (with_manifest("missing_key", lambda d: d.pop("tiles")), r"missing top-level key 'tiles'"),
        (with_manifest("missing_meta", lambda d: d["meta"].pop("target")),
         r"missing key 'meta.target'"),
        (with_manifest("count", lambda d: d["meta"]["counts"].update(steps=1)),
         r"table 'steps' has \d+ rows but meta.counts.steps is 1"),
        (with_manifest("edge_count", lambda d: d["meta"]["counts"].update(edges=1)),
         r"table 'edges' has \d+ rows but meta.counts.edges is 1"),
        (with_manifest("files", lambda d: d.pop("files")), r"missing the object 'files'"),
        (with_manifest("escape", lambda d: d["files"].update(edges="../x.parquet")),
         r"'files.edges' must name a file beside the manifest"),
        (with_table("missing_column", "vertices", drop_tile),
         r"table 'vertices' has no column 'tile'"),
        (with_table("range", "edges", src_out_of_range),
         r"graph.edges.parquet: .*column 'edges.src' holds values .* outside 0..%d"
         % (vg.num_vertices - 1)),
    ]
    for path, message in cases:
        with pytest.raises(ValueError, match=message):
            load(path)
    gone = _copy_dump(tmp_path, "gone")
    (gone / "graph.edges.parquet").unlink()
    with pytest.raises(ValueError, match=r"cannot read the 'edges' table"):
        load(gone)
    broken = tmp_path / "truncated.json"
    broken.write_text((tmp_path / "graph.json").read_text()[:1000])
    with pytest.raises(ValueError, match=r"truncated.json: not valid JSON"):
        load(broken)
    latin = tmp_path / "latin.json"
    latin.write_bytes(b'{"schema": "\xff"}')
    with pytest.raises(ValueError, match=r"latin.json: not valid JSON: not UTF-8"):
        load(latin)
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100000 + "]" * 100000)
    with pytest.raises(ValueError, match=r"deep.json: not valid JSON"):
        load(deep)
    with pytest.raises(ValueError, match=r"nowhere.json: cannot read the graph manifest"):
        load(tmp_path / "nowhere.json")


# -- aggregation ------------------------------------------------------------------------------
def test_aggregate_levels(plans):
    for key in ("small", "mk2"):
        plan, vg = plans[key]
        vert, tile = aggregate(vg, "vertex"), aggregate(vg, "op-tile")
        assert (vert.num_nodes, vert.num_edges) == (vg.num_vertices, vg.num_edges)
        assert np.array_equal(vert.tile, vg.v_tile) and np.array_equal(vert.step, vg.v_step)
        # op-tile: one node per (step, tile) with vertices (per (input, tile) for inputs).
        pairs = set(zip(vg.v_step.tolist(), vg.v_tile.tolist()))
        assert tile.num_nodes == len(pairs)
        assert set(zip(tile.step.tolist(), tile.tile.tolist())) == pairs
        assert tile.vertices.sum() == vg.num_vertices
        for col in ("macs", "cycles", "bytes"):
            assert tile.__dict__[col].sum() == pytest.approx(getattr(vg, "v_" + col).sum(),
                                                             rel=TREL)
        assert tile.edge_bytes.sum() == vg.e_bytes.sum() and tile.edge_count.sum() == vg.num_edges
        key_pairs = tile.src * tile.num_nodes + tile.dst
        assert len(np.unique(key_pairs)) == tile.num_edges          # summed: no parallel edges
        cross = vg.v_tile[vg.e_src] != vg.v_tile[vg.e_dst]
        assert tile.edge_bytes[tile.crosses_exchange].sum() == vg.e_bytes[cross].sum()
        assert set(tile.codelets) <= {"input", "worker", "supervisor", "reduce",
                                      "supervisor+reduce", "worker+reduce"}
        group = aggregate(vg, "op-tilegroup")
        assert group.vertices.sum() == vg.num_vertices
        assert group.edge_bytes.sum() == vg.e_bytes.sum()
        assert group.num_nodes <= tile.num_nodes and group.num_edges <= tile.num_edges
        assert (group.tile % 32 == 0).all()
    assert resolve_level(plans["small"][1], "auto") == "vertex"
    mk2 = plans["mk2"][1]                                             # 25k vertices > 20k
    expect = "op-tile" if aggregate(mk2, "op-tile").num_nodes <= 20_000 else "op-tilegroup"
    assert resolve_level(mk2, "auto") == expect
    with pytest.raises(ValueError, match="level must be one of"):
        aggregate(plans["small"][1], "tile")


def _check_loaded(G, agg):
    assert isinstance(G, nx.DiGraph) and not G.is_multigraph()
    assert (G.number_of_nodes(), G.number_of_edges()) == (agg.num_nodes, agg.num_edges)
    order = [str(i) for i in range(agg.num_nodes)]
    for name in ("step", "tile", "vertices", "op", "layer", "codelet"):
        got = [G.nodes[n][name] for n in order]
        assert got == agg.node_attr(name), name
    for name in ("macs", "cycles", "bytes"):
        got = np.array([G.nodes[n][name] for n in order])
        np.testing.assert_allclose(got, getattr(agg, name), rtol=1e-15, err_msg=name)
    edges = {(int(u), int(v)): d for u, v, d in G.edges(data=True)}
    cross = agg.crosses_exchange.tolist()
    for i, (u, v, b) in enumerate(zip(agg.src.tolist(), agg.dst.tolist(),
                                      agg.edge_bytes.tolist())):
        d = edges[(u, v)]
        assert d["bytes"] == b and d["crosses_exchange"] is cross[i], (u, v)


@pytest.mark.parametrize("level", ["vertex", "op-tile"])
def test_gexf_and_graphml_load_with_networkx(plans, level, tmp_path):
    _, vg = plans["small"]
    agg = aggregate(vg, level)
    gexf = write_gexf(vg, tmp_path / "graph.gexf", level=level)
    graphml = write_graphml(vg, tmp_path / "graph.graphml", level=level)
    head = open(gexf, encoding="utf-8").read(400)
    assert 'xmlns="http://gexf.net/1.3"' in head and 'version="1.3"' in head
    _check_loaded(nx.read_gexf(gexf), agg)
    _check_loaded(nx.read_graphml(graphml), agg)
    igraph = pytest.importorskip("igraph")
    g = igraph.Graph.Read_GraphML(graphml)
    assert (g.vcount(), g.ecount()) == (agg.num_nodes, agg.num_edges)
    assert g.is_directed() and g.es["bytes"] == agg.edge_bytes.astype(float).tolist()


NODE_LINE = re.compile(r'^\s*"(\d+)" \[label=".*", step=-?\d+, op=".*", layer="(.*)", '
                       r'codelet="[a-z+]+", tile=\d+, macs=\S+, cycles=\S+, bytes=\S+, '
                       r'vertices=\d+\];$')
EDGE_LINE = re.compile(r'^"(\d+)" -> "(\d+)" \[bytes=(\d+), crosses_exchange=(true|false)'
                       r'(, color=red)?\];$')


@pytest.mark.parametrize("key,level", [("small", "vertex"), ("small", "op-tile"),
                                       ("mk2", "auto")])
def test_dot_structure(plans, key, level, tmp_path):
    _, vg = plans[key]
    agg = aggregate(vg, level)
    path = write_dot(vg, tmp_path / "graph.dot", level=level)
    text = open(path, encoding="utf-8").read()
    lines = text.splitlines()
    assert lines[0] == 'digraph "resnet18" {' and lines[-1] == "}"
    unquoted = re.sub(r'"(\\.|[^"\\])*"', '""', text)
    assert unquoted.count("{") == unquoted.count("}")
    depth = 0
    for ch in unquoted:
        depth += (ch == "{") - (ch == "}")
        assert depth >= 0
    nodes = [m for m in map(NODE_LINE.match, lines) if m]
    edges = [m for m in map(EDGE_LINE.match, lines) if m]
    assert len(nodes) == agg.num_nodes and len(edges) == agg.num_edges
    assert sorted(int(m.group(1)) for m in nodes) == list(range(agg.num_nodes))
    assert [m.group(2) for m in nodes] == [agg.layers[i] for i in np.sort(agg.layer)]
    assert sum(int(m.group(3)) for m in edges) == int(agg.edge_bytes.sum())
    assert sum(m.group(4) == "true" for m in edges) == int(agg.crosses_exchange.sum())
    clusters = [ln for ln in lines if ln.startswith('subgraph "cluster_')]
    assert len(clusters) == len(set(agg.layer.tolist()))
    if shutil.which("gc"):                       # Graphviz: parse it and count
        run = subprocess.run(["gc", "-n", "-e", str(path)], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0 and not run.stderr, run.stderr
        n, e = run.stdout.split()[:2]
        assert (int(n), int(e)) == (agg.num_nodes, agg.num_edges)


# -- trace.json -------------------------------------------------------------------------------
def _check_trace(plan, path, groups):
    doc = json.load(open(path, encoding="utf-8"))
    assert set(doc) >= {"traceEvents", "displayTimeUnit"}
    events = doc["traceEvents"]
    ranges = tile_groups(plan.target.tiles, groups)
    assert ranges[0][0] == 0 and ranges[-1][1] == plan.target.tiles - 1
    assert all(b + 1 == c for (_, b), (c, _) in zip(ranges, ranges[1:]))
    names = {e["tid"]: e["args"]["name"] for e in events
             if e["ph"] == "M" and e["name"] == "thread_name"}
    assert names == {0: "BSP", **{g + 1: f"tiles {a}\u2013{b}" for g, (a, b) in
                                  enumerate(ranges)}}
    us = 1e6 / plan.target.clock_hz
    slices = [e for e in events if e["ph"] == "X"]
    bsp = [e for e in slices if e["tid"] == 0]
    assert [e["name"] for e in bsp] == [s.name for s in plan.steps]
    total = sum(e["dur"] for e in bsp)
    assert total == pytest.approx(plan.estimated_cycles() * us, rel=TREL, abs=0)
    for e, s in zip(bsp, plan.steps):
        assert e["dur"] == pytest.approx(s.total_cycles * us, rel=TREL)
        # Within a nanosecond or so of the exact cumulative start (see trace.py).
        start = sum(x.total_cycles for x in plan.steps[:s.index]) * us
        assert start <= e["ts"] + 1e-9 <= start + 0.005
    for g, (a, b) in enumerate(ranges):
        track = [e for e in slices if e["tid"] == g + 1]
        expect = [(s, ph, c) for s in plan.steps
                  for ph, c in (("exchange", s.exchange_cycles), ("compute", s.compute_cycles),
                                ("sync", s.sync_cycles), ("reduce", s.reduce_cycles))
                  if ph != "reduce" or s.reduce_vertices is not None]
        assert len(track) == len(expect)
        for e, (s, phase, cycles) in zip(track, expect):
            args = e["args"]
            assert (e["cat"], args["phase"], args["step"], args["name"], args["op"]) == \
                (phase, phase, s.index, s.name, s.op)
            assert args["cycles"] == cycles and args["repeats"] == s.repeats
            assert e["dur"] == pytest.approx(cycles * us, rel=TREL)
            tc = s.tile_compute[a:b + 1]
            assert args["group_max_tile_compute_cycles"] == float(tc.max())
            assert args["group_tiles_used"] == int(np.count_nonzero(tc))
        assert sum(e["dur"] for e in track) == pytest.approx(total, rel=TREL)
        # Slices on a track never overlap once rounded to Perfetto's integer nanoseconds.
        ns = [(int(np.floor(e["ts"] * 1000 + 0.5)), int(np.floor(e["dur"] * 1000 + 0.5)))
              for e in track]
        assert all(t0 + d0 <= t1 for (t0, d0), (t1, _) in zip(ns, ns[1:]))
    for s in plan.steps:
        used = [e["args"]["group_tiles_used"] for e in slices
                if e["tid"] > 0 and e["args"]["step"] == s.index and e["cat"] == "compute"]
        assert sum(used) == s.tiles_used
    return doc


def test_trace(plans, repeat_plan, tmp_path):
    for key, groups in (("mk2", 16), ("small", 16), ("small", 5)):
        plan, _ = plans[key]
        path = write_trace(plan, tmp_path / f"trace_{key}_{groups}.json", groups=groups)
        _check_trace(plan, path, groups)
    assert any(s.reduce_vertices is not None for s in plans["mk2"][0].steps)
    doc = _check_trace(repeat_plan, write_trace(repeat_plan, tmp_path / "rep.json", groups=3), 3)
    reps = {e["args"]["repeats"] for e in doc["traceEvents"] if e["ph"] == "X"}
    assert reps == {repeat_plan.steps[0].repeats} and max(reps) > 1
    assert tile_groups(16, 64) == [(i, i) for i in range(16)]      # never more groups than tiles
