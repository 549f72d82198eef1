"""Planner invariants: every output element owned by exactly one vertex; every IPU tile within
its SRAM; repeated layers hit the plan cache; a plan that cannot fit says so with numbers."""
import numpy as np
import pytest

import ipugraph as ig
from ipugraph.planner import CACHE_STATS, PlanError


def _coverage(step) -> np.ndarray:
    """How many vertices write each element of the step's iteration space."""
    part = step.partition
    count = np.zeros(part.extents, dtype=np.int32)
    for row in step.vertices:
        count[tuple(slice(lo, hi) for lo, hi in zip(row[0::2], row[1::2]))] += 1
    return count


@pytest.fixture(scope="module")
def resnet34_plans():
    g = ig.models.resnet34(batch=1, image_size=224)
    return g, {name: ig.plan(g, ig.Target.from_name(name)) for name in ("host", "ipu-mk1", "ipu-mk2")}


def test_every_output_element_owned_once(resnet34_plans):
    g, plans = resnet34_plans
    for name, plan in plans.items():
        for step in plan.steps:
            count = _coverage(step)
            assert count.min() == 1 and count.max() == 1, \
                f"{name} step {step.index} ({step.name}): elements covered {count.min()}..{count.max()} times"
            assert step.partition.extents[0] == step.group.output.shape[0] or \
                step.partition.dims == ("i",) or step.partition.dims == ("row",)


def test_ipu_tiles_within_sram(resnet34_plans):
    _, plans = resnet34_plans
    for name in ("ipu-mk1", "ipu-mk2"):
        plan = plans[name]
        t = plan.target
        for step in plan.steps:
            per_tile = step.tile_bytes(t.tiles)
            assert per_tile.max() <= t.bytes_per_tile, (name, step.name, per_tile.max())
            assert step.tiles.max() < t.tiles and step.tiles.min() >= 0
        assert plan.peak_tile_bytes() <= t.bytes_per_tile


def test_resnet34_plan_shape(resnet34_plans):
    """Fusion leaves one compute set per conv (BN, residual add and ReLU fused), plus the stem
    max-pool, global average pool, flatten and fc: 36 + 4 steps."""
    g, plans = resnet34_plans
    convs = sum(n.op.name == "conv2d" for n in g.nodes)
    assert convs == 36
    for plan in plans.values():
        assert len(plan.steps) == convs + 4
        assert plan.estimated_cycles() > 0
    mk2 = plans["ipu-mk2"]
    big = [s for s in mk2.steps if s.group.anchor.op.name == "conv2d"]
    assert min(s.tiles_used for s in big) > 0.5 * mk2.target.tiles   # convs spread over the chip
    text = mk2.summary()
    assert "ipu-mk2" in text and "layer4.2.conv2" in text and "samples/s" in text


def test_plan_cache_hits_repeated_layers():
    g = ig.models.resnet34(batch=2, image_size=64)
    before = dict(CACHE_STATS)
    ig.plan(g, ig.Target.ipu_mk2())
    hits = CACHE_STATS["hits"] - before["hits"]
    assert hits >= 20, f"only {hits} cache hits planning ResNet-34 (its blocks repeat)"
    before = dict(CACHE_STATS)
    ig.plan(g, ig.Target.ipu_mk2())
    assert CACHE_STATS["misses"] == before["misses"]        # a second plan is all hits


def test_plan_that_cannot_fit_names_numbers():
    tiny = ig.Target.ipu(tiles=4, bytes_per_tile=64 * 1024, name="tiny-ipu")
    g = ig.Graph(tiny, name="big")
    x = g.input("x", (8, 64, 56, 56))
    w = g.variable("w", (64, 64, 3, 3), init=ig.init.zeros())
    g.output("y", ig.ops.conv2d(x, w, padding=1, name="conv"))
    with pytest.raises(PlanError) as err:
        ig.plan(g)
    msg = str(err.value)
    for word in ("conv2d 'conv'", "4 tiles", "tiny-ipu", "65,536", "bytes on a tile", "smaller batch"):
        assert word in msg, (word, msg)


def test_host_plan_balances_cores():
    g = ig.models.resnet34(batch=8, image_size=224)
    plan = ig.plan(g, ig.Target.host(threads=2))
    for step in plan.steps:
        if step.group.anchor.op.name == "conv2d":
            assert step.balance <= 1.25, (step.name, step.balance, step.partition.describe())


def test_json_round_trip(resnet34_plans):
    import json
    _, plans = resnet34_plans
    doc = json.loads(json.dumps(plans["ipu-mk2"].to_json(), default=float))
    assert len(doc["steps"]) == 40 and doc["target"]["tiles"] == 1472
    assert sum(s["macs"] for s in doc["steps"]) == ig.models.resnet34(batch=1).macs()
