"""Planner invariants, walked over real plans of ResNet-34 and small graphs:
- each op's vertices cover its iteration space exactly once: every output element is written by
  exactly P vertices (P partial slabs when split over input channels / kernel rows / K) and, when
  P > 1, reduced by exactly one reduction vertex;
- every weight element is mapped to exactly one tile; the liveness accounting matches the graph;
- every IPU tile is within its SRAM at every step;
- the CPU backend running IPU plans (with partial-sum splits) matches the reference backend;
- too large a batch is serialised (a Repeat) or refused with the numbers."""
import numpy as np
import pytest

import ipugraph as ig
from ipugraph.planner import CACHE_STATS, PlanError

from helpers import assert_close, rand

TARGETS = ("host", "ipu-mk1", "ipu-mk2")


@pytest.fixture(scope="module")
def small_plans():
    """ResNet-34 at 64x64, batch 2: small enough to check element by element."""
    g = ig.models.resnet34(batch=2, image_size=64)
    plans = {name: ig.plan(g, ig.Target.from_name(name)) for name in TARGETS}
    return g, plans


@pytest.fixture(scope="module")
def big_plans():
    g = ig.models.resnet34(batch=4, image_size=224)
    return g, {name: ig.plan(g, ig.Target.from_name(name)) for name in ("ipu-mk1", "ipu-mk2")}


def _count(shape, region):
    count = np.zeros(shape, dtype=np.int32)
    for lo, hi in zip(region.lo, region.hi):
        count[tuple(slice(a, b) for a, b in zip(lo, hi))] += 1
    return count


def test_iteration_space_covered_once(small_plans):
    _, plans = small_plans
    for name, plan in plans.items():
        for step in plan.steps:
            space = step.space                      # the method's space the step was planned in
            count = np.zeros([d.extent for d in space.dims], dtype=np.int32)
            for row in step.vertices:
                count[tuple(slice(lo, hi) for lo, hi in zip(row[0::2], row[1::2]))] += 1
            assert count.min() == 1 and count.max() == 1, (name, step.name)


def test_outputs_written_p_times_and_reduced_once(small_plans):
    _, plans = small_plans
    reduced = 0
    for name, plan in plans.items():
        for step in plan.steps:
            anchor = step.group.anchor
            space = step.space
            out_region, _ = space.boxes(step.vertices.astype(np.int64))
            p = int(np.prod([s for d, s in zip(step.partition.dims, step.partition.splits)
                             if d in space.reduce_dims] or [1]))
            count = _count(anchor.output.shape, out_region)
            assert (count == p).all(), (name, step.name, p, count.min(), count.max())
            if p > 1:
                reduced += 1
                boxes = step.reduce_vertices
                shape = anchor.output.shape
                red = np.zeros(shape if len(shape) == 4 else (shape[0], shape[1], 1, 1), np.int32)
                for r in boxes:                # the kept dims: (n, k, oh, ow) or (m, n)
                    n0, n1, k0, k1, h0, h1, w0, w1 = (*r, 0, 1, 0, 1)[:8]
                    red[n0:n1, k0:k1, h0:h1, w0:w1] += 1
                assert (red == 1).all(), (name, step.name)
                assert len(step.reduce_tiles) == len(boxes)
    assert reduced > 0, "no plan split an op over input channels, kernel rows or K"


def test_weights_mapped_exactly_once(small_plans):
    g, plans = small_plans
    for name, plan in plans.items():
        mapped = {}
        for step in plan.steps:
            for tname, m in step.weight_mappings.items():
                mapped.setdefault(tname, m)
        for tname, m in mapped.items():
            t = g.tensors[tname]
            count = _count(t.shape, m)
            assert (count == 1).all(), (name, tname)
            assert m.tiles.min() >= 0 and m.tiles.max() < plan.target.tiles
        assert int(plan.memory.weights.sum()) == sum(g.tensors[n].nbytes for n in mapped)


def test_liveness_matches_the_graph(small_plans):
    """Summed over tiles, live activations at each step are the bytes of the tensors produced
    by then and still to be read (graph outputs: to the end), computed here from the graph."""
    g, plans = small_plans
    plan = plans["ipu-mk2"]
    produced = {name: -1 for name in g.inputs}
    last = {}
    for s in plan.steps:
        produced[s.group.output.name] = s.index
        for node in s.group.nodes:
            for t in node.inputs:
                if t.kind in ("input", "op") and t.name in produced \
                        and produced[t.name] < s.index:
                    last[t.name] = s.index
    for t in g.outputs.values():
        last[t.name] = len(plan.steps) - 1
    for s in plan.steps:
        expect = sum(g.tensors[n].nbytes for n, p in produced.items()
                     if max(p, 0) <= s.index <= last.get(n, p))
        assert plan.memory.live[s.index].sum() == pytest.approx(expect), s.name


def _written_bytes_per_tile(step, target) -> np.ndarray:
    """Bytes of the step's output each tile holds, recounted from the vertex boxes: the
    compute vertices' output boxes, or the reduction vertices' when the op is split."""
    out_t = step.group.output
    if step.reduce_vertices is not None:
        red = step.reduce_vertices.astype(np.int64)
        region = (step.space.reduce_region(red) if step.space.reduce_region is not None
                  else ig.space.Region.boxes(red[:, 0::2], red[:, 1::2]))
        tiles = step.reduce_tiles
    else:
        region, _ = step.space.boxes(step.vertices.astype(np.int64))
        tiles = step.tiles
    return np.bincount(tiles[region.vid], weights=region.volume() * out_t.itemsize,
                       minlength=target.tiles)


def test_tile_bytes_recounted_from_vertex_boxes(big_plans):
    """Independently of the memory model: each step's output mapping holds exactly the bytes
    its vertices write, per tile; the live activations per tile at each step are the sum of
    those of the tensors alive then (graph inputs mapped linearly); with the always-live and
    temporary bytes every tile fits its SRAM at every step."""
    g, plans = big_plans
    consumers = g.consumers()
    kept = g.kept()
    for name, plan in plans.items():
        t = plan.target
        writer = {s.group.output.name: s for s in plan.steps}
        step_of = {}
        for s in plan.steps:
            for node in s.group.nodes:
                step_of[node.index] = s.index
        per_tensor = {}
        for s in plan.steps:
            counted = _written_bytes_per_tile(s, t)
            np.testing.assert_array_equal(counted, s.out_mapping.bytes_per_tile(t.tiles),
                                          err_msg=f"{name} {s.name}")
            per_tensor[s.group.output.name] = counted
        for n, m in plan.input_mappings.items():
            per_tensor[n] = m.bytes_per_tile(t.tiles)
        last_step = len(plan.steps) - 1
        for s in plan.steps:
            live = np.zeros(t.tiles)
            for tname, counted in per_tensor.items():
                start = writer[tname].index if tname in writer else 0
                readers = [step_of[u.index] for u in consumers[tname]
                           if step_of[u.index] != (writer[tname].index if tname in writer
                                                   else -1)]
                end = last_step if tname in kept else max(readers + [start])
                if start <= s.index <= end:
                    live += counted
            np.testing.assert_allclose(live, plan.memory.live[s.index],
                                       err_msg=f"{name} step {s.index}")
            total = plan.memory.always_live + live + plan.memory.temp[s.index]
            assert total.max() <= t.bytes_per_tile, (name, s.name, total.max())
        assert plan.peak_tile_bytes() <= t.bytes_per_tile


def test_mk2_batch4_conv_balance(big_plans):
    """Every conv's balance (max/mean tile cycles) is at most 1.25 on Mk2 at batch 4."""
    _, plans = big_plans
    convs = [s for s in plans["ipu-mk2"].steps if s.group.anchor.op.name == "conv2d"]
    assert len(convs) == 36
    worst = max(convs, key=lambda s: s.balance)
    assert worst.balance <= 1.25, (worst.name, worst.balance, worst.partition.describe())


def test_unbalanced_steps_say_why():
    """A supervisor codelet's tile runs its vertices one after the other: 3 equal matmul
    vertices on 2 tiles (2 on one, 1 on the other) are flagged as unbalanced; an even split is
    not flagged."""
    from ipugraph.planner.fusion import group_nodes, group_spaces
    from ipugraph.planner.partition import Partition
    from ipugraph.planner.regions import TileMapping
    from ipugraph.planner.step import evaluate
    two = ig.Target.ipu(tiles=2, bytes_per_tile=1 << 24, name="two-tile-ipu")
    g = ig.Graph(two, name="uneven")
    a = g.input("a", (96, 64))
    b = g.input("b", (64, 64))
    g.output("y", ig.ops.matmul(a, b))
    (group,) = group_nodes(g)
    (space,) = group_spaces(group, two)
    maps = {n: TileMapping.linear(t.shape, 4, two.tiles, two.vector_grain)
            for n, t in g.inputs.items()}
    dims = tuple(d.name for d in space.dims)
    extents = tuple(d.extent for d in space.dims)
    for splits, flagged, why in (((3, 1, 1), True, "unbalanced"), ((2, 1, 1), False, "")):
        part = Partition(dims, extents, (1, 1, 1), splits)
        step = evaluate(0, group, space, part, 1, two, "float32", maps, 96)
        assert (step.balance > 1.25) == flagged, (splits, step.balance)
        assert step.note.startswith("unbalanced") == flagged, step.note
        assert why in step.note, (why, step.note)


def test_resnet34_plan_shape(big_plans):
    """One compute set per conv (BN, residual add and ReLU fused), plus the stem max-pool, the
    global average pool, flatten and fc: 36 + 4 steps, spread over the chip."""
    g, plans = big_plans
    convs = sum(n.op.name == "conv2d" for n in g.nodes)
    assert convs == 36
    mk2 = plans["ipu-mk2"]
    assert len(mk2.steps) == convs + 4
    big = [s for s in mk2.steps if s.group.anchor.op.name == "conv2d"]
    assert min(s.tiles_used for s in big) > 0.5 * mk2.target.tiles
    assert mk2.estimated_cycles() == pytest.approx(sum(s.total_cycles for s in mk2.steps))
    assert mk2.samples_per_second() == pytest.approx(4 / mk2.estimated_seconds())
    text = mk2.summary()
    for word in ("ipu-mk2", "layer4.2.conv2", "samples/s", "exchange", "bal", "peak"):
        assert word in text


def test_cpu_backend_runs_ipu_plans(small_plans):
    """The CPU kernels run every vertex table of an IPU plan, partial sums and reductions
    included, and agree with the float64 reference (rel. error < 1e-4)."""
    g, plans = small_plans
    x = rand((2, 3, 64, 64), seed=3)
    expect = ig.compile(g, backend="reference").run({"x": x})["logits"]
    for name in ("ipu-mk1", "ipu-mk2"):
        out = ig.compile(g, backend="cpu", plan=plans[name]).run({"x": x})["logits"]
        err = np.abs(out - expect).max() / np.abs(expect).max()
        assert err < 1e-4, (name, err)


def test_plan_cache_hits_repeated_layers():
    g = ig.models.resnet34(batch=2, image_size=64)
    before = dict(CACHE_STATS)
    ig.plan(g, ig.Target.ipu_mk2())
    before = dict(CACHE_STATS)
    ig.plan(g, ig.Target.ipu_mk2())
    assert CACHE_STATS["misses"] == before["misses"]        # a second plan is all hits
    assert CACHE_STATS["hits"] - before["hits"] == 40
    g2 = ig.models.resnet34(batch=3, image_size=64)
    before = dict(CACHE_STATS)
    ig.plan(g2, ig.Target.ipu_mk2())
    assert CACHE_STATS["hits"] - before["hits"] >= 10       # identical blocks plan once


def _conv_graph(target, batch, name="conv"):
    g = ig.Graph(target, name="big")
    x = g.input("x", (batch, 64, 16, 16))
    w = g.variable("w", (64, 64, 3, 3), value=rand((64, 64, 3, 3), seed=1) * 0.05)
    g.output("y", ig.ops.relu(ig.ops.conv2d(x, w, padding=1, name=name)))
    return g


def test_large_batch_is_serialised_and_still_correct():
    """8 tiles x 256 KiB: batch 1 plans in one pass; at batch 8 the received weights and input
    slices do not fit beside the live activations, so the conv runs as a Repeat over batch
    slices, and the CPU backend running that plan still matches the reference."""
    small = ig.Target.ipu(tiles=8, bytes_per_tile=256 * 1024, name="small-ipu")
    g = _conv_graph(small, batch=8)
    plan = ig.plan(g)
    step = plan.steps[0]
    assert step.repeats > 1, plan.summary()
    assert f"×{step.repeats} rep" in plan.summary()
    assert plan.peak_tile_bytes() <= small.bytes_per_tile
    assert ig.plan(_conv_graph(small, batch=1)).steps[0].repeats == 1
    x = rand((8, 64, 16, 16), seed=2)
    expect = ig.compile(g, backend="reference").run({"x": x})["y"]
    got = ig.compile(g, backend="cpu", plan=plan).run({"x": x})["y"]
    assert_close(got, expect, reduction=64 * 9, what="serialised conv")


def test_op_that_cannot_fit_names_numbers():
    tiny = ig.Target.ipu(tiles=4, bytes_per_tile=64 * 1024, name="tiny-ipu")
    g = ig.Graph(tiny, name="big")
    x = g.input("x", (8, 64, 56, 56))
    w = g.variable("w", (64, 64, 3, 3), init=ig.init.zeros())
    g.output("y", ig.ops.conv2d(x, w, padding=1, name="conv"))
    with pytest.raises(PlanError) as err:
        ig.plan(g)
    msg = str(err.value)
    for word in ("conv2d 'conv'", "4 tiles", "tiny-ipu", "65,536", "bytes of temporaries",
                 "smaller batch"):
        assert word in msg, (word, msg)


def test_graph_that_cannot_fit_names_step_tile_and_bytes():
    """Each op fits on its own, but the activations do not: refused with the breakdown."""
    tiny = ig.Target.ipu(tiles=4, bytes_per_tile=256 * 1024, name="tiny-ipu")
    g = ig.Graph(tiny, name="wide")
    x = g.input("x", (16, 64, 32, 32))
    g.output("y", ig.ops.relu(ig.ops.relu(x, name="r1"), name="r2"))
    with pytest.raises(PlanError) as err:
        ig.plan(g)
    msg = str(err.value)
    for word in ("relu+relu 'r2'", "on tile", "262,144", "live activations", "smaller batch"):
        assert word in msg, (word, msg)


def test_resnet34_batch_too_large_for_mk1_is_refused():
    g = ig.models.resnet34(batch=32, image_size=224)
    with pytest.raises(PlanError, match=r"ipu-mk1: step \d+ .* needs [\d,]+ bytes on tile \d+, "
                                        r"which has 262,144"):
        ig.plan(g, ig.Target.ipu_mk1())


def test_host_plan_balances_cores():
    g = ig.models.resnet34(batch=8, image_size=224)
    plan = ig.plan(g, ig.Target.host(threads=2))
    for step in plan.steps:
        if step.group.anchor.op.name == "conv2d":
            assert step.balance <= 1.25, (step.name, step.balance, step.partition.describe())


def test_json_has_the_whole_plan(small_plans):
    import json
    g, plans = small_plans
    doc = json.loads(json.dumps(plans["ipu-mk2"].to_json(vertices=True)))
    assert len(doc["steps"]) == 40 and doc["target"]["tiles"] == 1472
    assert sum(s["macs"] for s in doc["steps"]) == g.macs()
    step = doc["steps"][3]
    assert len(step["vertex_table"]) == len(step["vertex_tiles"]) == step["vertices"]
    assert len(step["tile_live_bytes"]) == 1472
    assert doc["samples_per_second"] > 0 and doc["peak_tile_bytes"] <= 624 * 1024
