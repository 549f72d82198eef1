"""The CPU backend's lowering of convs and gemms split over their reduction (a conv's input
channels "c" and kernel rows "kh", a gemm's "k"): partial sums into slabs, then reduce_partials
with the fused epilogue, against the reference backend.

The plans are made by the planner and then the step's vertex table is replaced by hand with one
that splits the reduction (a Partition over all the op's dims), so the lowering is tested
whatever the planner chooses. Tolerance: helpers.assert_close (fp32 vs fp64, atol ∝ √K with K
the full reduction length: Cg·R·S for a conv, K for a gemm).
"""
import numpy as np
import pytest

import ipugraph as ig
from ipugraph.planner.partition import Partition
from helpers import assert_close, rand

CONV_DIMS = ("n", "k", "oh", "ow", "c", "kh")
GEMM_DIMS = ("m", "n", "k")


def _bn(g, c, prefix, seed):
    return (g.variable(f"{prefix}.weight", (c,), value=rand((c,), seed, 0.5, 1.5)),
            g.variable(f"{prefix}.bias", (c,), value=rand((c,), seed + 1)),
            g.variable(f"{prefix}.running_mean", (c,), value=rand((c,), seed + 2)),
            g.variable(f"{prefix}.running_var", (c,), value=rand((c,), seed + 3, 0.5, 2.0)))


# (N, C, H, W, K, R, S, stride, padding, dilation, groups)
CONVS = {
    "groups2_dil2_stride2": (2, 12, 13, 11, 20, 3, 3, 2, 2, 2, 2),
    "dense_cg19": (2, 19, 9, 10, 21, 3, 3, 1, 1, 1, 1),
    "depthwise": (1, 24, 10, 9, 24, 3, 3, 1, 1, 1, 24),
    "k7_stride2_pad3": (1, 3, 20, 18, 16, 7, 7, 2, 3, 1, 1),
}


def conv_block(case, seed=0):
    """conv → batch_norm → add(residual) → relu, fused into one compute set; the residual is
    a strided 1×1 conv of the same input (same output size: every case has
    padding = dilation·(R-1)/2)."""
    n, c, h, w, k, r, s, stride, pad, dil, groups = case
    g = ig.Graph(name="block")
    x = g.input("x", (n, c, h, w))
    w1 = g.variable("w1", (k, c // groups, r, s), value=rand((k, c // groups, r, s), seed + 1))
    main = ig.ops.batch_norm(ig.ops.conv2d(x, w1, stride=stride, padding=pad, dilation=dil,
                                           groups=groups), *_bn(g, k, "bn1", seed + 10))
    wd = g.variable("wd", (k, c, 1, 1), value=rand((k, c, 1, 1), seed + 2))
    short = ig.ops.conv2d(x, wd, stride=stride)
    assert short.shape == main.shape
    g.output("y", ig.ops.relu(ig.ops.add(main, short)))
    return g, {"x": rand((n, c, h, w), seed)}, (c // groups) * r * s


def find_step(plan, op):
    return next(s for s in plan.steps if s.op == op)


def set_table(step, dims, extents, splits, reduce_vertices=None):
    """Replace the step's partition and vertex table by hand (all tiles 0)."""
    part = Partition(tuple(dims), tuple(extents), (1,) * len(dims), tuple(splits))
    step.partition = part
    step.vertices = part.vertex_table()
    step.tiles = np.zeros(len(step.vertices), np.int32)
    if hasattr(step, "repeats"):
        step.repeats = 1
    step.reduce_vertices = reduce_vertices
    return part


def conv_extents(step):
    node = step.group.anchor
    k, cg, r, _ = node.inputs[1].shape
    n, _, oh, ow = step.group.output.shape
    return (n, k, oh, ow, cg, r)


def kernel_of(engine, name):
    return next(k for k in engine._exe.kernels if k.name == name)


def extents_of(step):
    """Extent of every dim name the conv / gemm lowering knows, for this step."""
    node = step.group.anchor
    if node.op.name == "conv2d":
        return dict(zip(CONV_DIMS, conv_extents(step)))
    m, n = step.group.output.shape
    return dict(zip(GEMM_DIMS, (m, n, node.inputs[0].shape[1])))


def compile_split(g, op, dims, splits, reduce_vertices=None):
    """Plan for an IPU, replace the op's table by a partition over `dims`, compile on cpu."""
    plan = ig.plan(g, ig.Target.ipu_mk2())
    step = find_step(plan, op)
    ext = extents_of(step)
    set_table(step, dims, [ext[d] for d in dims], splits, reduce_vertices)
    return ig.compile(g, backend="cpu", plan=plan), step


@pytest.mark.parametrize("case", list(CONVS))
@pytest.mark.parametrize("splits", [(2, 3, 2, 1, 3, 2),      # c and kh split, uneven
                                    (1, 1, 1, 1, 1, 3),      # kh only: fused kernel rows
                                    (1, 2, 1, 2, 4, 1)])     # c only
def test_conv_block_split_reduction(case, splits):
    g, feeds, red = conv_block(CONVS[case])
    engine, step = compile_split(g, "conv2d+batch_norm+add+relu", CONV_DIMS, splits)
    cg, r = conv_extents(step)[4:]
    slabs = min(splits[4], cg) * min(splits[5], r)   # a split beyond the extent: empty slices
    kernel = kernel_of(engine, step.group.anchor.name)
    if slabs == 1:
        assert kernel.partials is None           # nothing split: the fused kernel
    else:
        assert kernel.partials is not None and kernel.partials.shape[0] == slabs
    ref = ig.compile(g, backend="reference").run(feeds)["y"]
    assert_close(engine.run(feeds)["y"], ref, red, what=f"{case} split {splits}")
    # a second run with other data: the slab buffer is reused, nothing stale leaks through
    feeds2 = {"x": rand(feeds["x"].shape, 99)}
    ref2 = ig.compile(g, backend="reference").run(feeds2)["y"]
    assert_close(engine.run(feeds2)["y"], ref2, red, what=f"{case} split {splits}, run 2")


def test_conv_planned_reduce_vertices_are_used():
    """The planner's reduce_vertices (here a coarser grid than the partial table's boxes, and
    in another order) drive the reduction; the result is the same."""
    g, feeds, red = conv_block(CONVS["groups2_dil2_stride2"])
    plan = ig.plan(g, ig.Target.ipu_mk2())
    step = find_step(plan, "conv2d+batch_norm+add+relu")
    n, k, oh, ow, cg, r = conv_extents(step)
    coarse = Partition(("n", "k", "oh", "ow"), (n, k, oh, ow), (1,) * 4, (1, 2, 1, 3))
    rv = coarse.vertex_table()[::-1].copy()            # (n0,n1,k0,k1,oh0,oh1,ow0,ow1)
    set_table(step, CONV_DIMS, (n, k, oh, ow, cg, r), (2, 3, 2, 2, 2, 3), reduce_vertices=rv)
    engine = ig.compile(g, backend="cpu", plan=plan)
    ref = ig.compile(g, backend="reference").run(feeds)["y"]
    assert_close(engine.run(feeds)["y"], ref, red)
    # reduce vertices that miss part of the output are rejected at compile
    set_table(step, CONV_DIMS, (n, k, oh, ow, cg, r), (2, 3, 2, 2, 2, 3), reduce_vertices=rv[1:])
    with pytest.raises(ValueError, match="in 0 reduction boxes"):
        ig.compile(g, backend="cpu", plan=plan)


def test_conv_legacy_four_dim_table_runs_fused():
    """A table over (n, k, oh, ow) only (no c / kh columns) is an unsplit reduction."""
    g, feeds, red = conv_block(CONVS["dense_cg19"])
    plan = ig.plan(g, ig.Target.ipu_mk2())
    step = find_step(plan, "conv2d+batch_norm+add+relu")
    set_table(step, ("n", "k", "oh", "ow"), conv_extents(step)[:4], (2, 2, 3, 1))
    engine = ig.compile(g, backend="cpu", plan=plan)
    assert kernel_of(engine, step.group.anchor.name).partials is None
    ref = ig.compile(g, backend="reference").run(feeds)["y"]
    assert_close(engine.run(feeds)["y"], ref, red)


def test_conv_columns_found_by_name():
    """The lowering looks the columns up by dim name: a partition listing its dims in another
    order gives the same result."""
    g, feeds, red = conv_block(CONVS["groups2_dil2_stride2"])
    plan = ig.plan(g, ig.Target.ipu_mk2())
    step = find_step(plan, "conv2d+batch_norm+add+relu")
    ext = extents_of(step)
    dims = ("kh", "ow", "c", "n", "oh", "k")
    spl = {"n": 2, "k": 3, "oh": 2, "ow": 1, "c": 3, "kh": 2}
    set_table(step, dims, [ext[d] for d in dims], [spl[d] for d in dims])
    engine = ig.compile(g, backend="cpu", plan=plan)
    assert kernel_of(engine, step.group.anchor.name).partials.shape[0] == 6
    ref = ig.compile(g, backend="reference").run(feeds)["y"]
    assert_close(engine.run(feeds)["y"], ref, red)


def test_incomplete_or_overlapping_split_is_rejected():
    g, _, _ = conv_block(CONVS["dense_cg19"])
    plan = ig.plan(g, ig.Target.ipu_mk2())
    step = find_step(plan, "conv2d+batch_norm+add+relu")
    set_table(step, CONV_DIMS, conv_extents(step), (1, 2, 1, 1, 2, 3))
    full = step.vertices
    step.vertices = full[1:].copy()                                 # one vertex missing
    with pytest.raises(ValueError, match="not a complete split of the reduction"):
        ig.compile(g, backend="cpu", plan=plan)
    twice = full.copy()
    assert (twice[0, :10] == twice[1, :10]).all() and twice[0, 10] != twice[1, 10]
    twice[1, 10:12] = twice[0, 10:12]            # two vertices over the same channels and rows
    step.vertices = twice
    with pytest.raises(ValueError, match="overlap"):
        ig.compile(g, backend="cpu", plan=plan)
    step.vertices = np.ascontiguousarray(full[:, :10])           # columns do not match dims
    with pytest.raises(ValueError, match="does not have 2 columns per dim"):
        ig.compile(g, backend="cpu", plan=plan)


# ------------------------------------------------------------------------------------ gemm
def linear_graph(m, k, n, bn=False):
    g = ig.Graph(name="mlp")
    a = g.input("a", (m, k))
    w = g.variable("w", (n, k), value=rand((n, k), 2))
    bias = g.variable("bias", (n,), value=rand((n,), 3))
    y = ig.ops.linear(a, w, bias)
    if bn:
        y = ig.ops.batch_norm(y, *_bn(g, n, "bn", 20))
    g.output("y", ig.ops.relu(y))
    return g, {"a": rand((m, k), 0)}


@pytest.mark.parametrize("m,k,n,splits", [
    (5, 300, 37, (2, 2, 3)),
    (8, 4100, 20, (1, 1, 2)),          # slabs of 2050: each crosses the kernel's 2048 blocking
    (3, 33, 17, (3, 2, 5)),            # K not a multiple of 16, uneven
    (4, 7, 9, (1, 1, 7)),              # one reduction element per slab
])
def test_linear_relu_split_k(m, k, n, splits):
    g, feeds = linear_graph(m, k, n)
    engine, step = compile_split(g, "linear+relu", GEMM_DIMS, splits)
    assert kernel_of(engine, step.group.anchor.name).partials.shape == (splits[2], m, n)
    ref = ig.compile(g, backend="reference").run(feeds)["y"]
    assert_close(engine.run(feeds)["y"], ref, k, what=f"linear {m}x{k}x{n} split {splits}")
    feeds2 = {"a": rand((m, k), 5)}
    ref2 = ig.compile(g, backend="reference").run(feeds2)["y"]
    assert_close(engine.run(feeds2)["y"], ref2, k, what="second run")


def test_linear_bn_relu_split_k_with_planned_reduce_vertices():
    m, k, n = 6, 90, 40
    g, feeds = linear_graph(m, k, n, bn=True)
    plan = ig.plan(g, ig.Target.ipu_mk2())
    step = find_step(plan, "linear+batch_norm+relu")
    rv = np.array([[0, 6, 0, 16], [0, 3, 16, 40], [3, 6, 16, 40]], np.int32)  # (m0, m1, n0, n1)
    set_table(step, GEMM_DIMS, [extents_of(step)[d] for d in GEMM_DIMS], (2, 3, 4),
              reduce_vertices=rv)
    engine = ig.compile(g, backend="cpu", plan=plan)
    ref = ig.compile(g, backend="reference").run(feeds)["y"]
    assert_close(engine.run(feeds)["y"], ref, k)


def test_matmul_runtime_operand_split_k():
    """A matmul whose right operand is computed at run time (packed every run), split over k."""
    m, k, n = 7, 50, 19
    g = ig.Graph(name="mm")
    a = g.input("a", (m, k))
    b = g.input("b", (k, n))
    g.output("y", ig.ops.matmul(a, b))
    plan = ig.plan(g, ig.Target.ipu_mk2())
    step = find_step(plan, "matmul")
    set_table(step, GEMM_DIMS, [extents_of(step)[d] for d in GEMM_DIMS], (2, 1, 3))
    engine = ig.compile(g, backend="cpu", plan=plan)
    for seed in (0, 1):
        feeds = {"a": rand((m, k), seed), "b": rand((k, n), seed + 10)}
        ref = feeds["a"].astype(np.float64) @ feeds["b"]
        assert_close(engine.run(feeds)["y"], ref, k)


def test_gemm_legacy_two_dim_table_runs_fused():
    g, feeds = linear_graph(5, 64, 33)
    engine, step = compile_split(g, "linear+relu", ("m", "n"), (2, 3))
    assert kernel_of(engine, step.group.anchor.name).partials is None
    ref = ig.compile(g, backend="reference").run(feeds)["y"]
    assert_close(engine.run(feeds)["y"], ref, 64)
