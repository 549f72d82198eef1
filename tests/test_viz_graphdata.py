"""The vertex graph's box overlaps (graphdata.overlaps and its two methods) against a brute-force
pairwise check, on random boxes of every rank, empty and full-axis boxes included, and the
input-edge ranks against a sort."""
import numpy as np
import pytest

from ipugraph.space import Region
from ipugraph.viz import graphdata as gd


def brute(a: Region, b: Region) -> set:
    out = set()
    for i in range(len(a.lo)):
        for j in range(len(b.lo)):
            ext = np.minimum(a.hi[i], b.hi[j]) - np.maximum(a.lo[i], b.lo[j])
            if (ext > 0).all():
                out.add((i, j, int(np.prod(ext))))
    return out


def random_region(rng, n, rank, grid):
    if grid:        # a partition: few distinct intervals per axis, as the planner makes them
        cuts = [np.unique(np.r_[0, rng.integers(1, 12, 3), 12]) for _ in range(rank)]
        pick = [rng.integers(0, len(c) - 1, n) for c in cuts]
        lo = np.stack([c[p] for c, p in zip(cuts, pick)], 1)
        hi = np.stack([c[p + 1] for c, p in zip(cuts, pick)], 1)
    else:
        lo = rng.integers(0, 10, (n, rank))
        hi = lo + rng.integers(0, 6, (n, rank))     # zero extents: empty boxes
        hi[rng.random(n) < 0.1, 0] = 20             # some boxes span a whole axis
    return Region(rng.integers(0, 5, n), lo.astype(np.int64), hi.astype(np.int64))


@pytest.mark.parametrize("grid", [False, True])
def test_overlaps_match_brute_force(grid):
    rng = np.random.default_rng(3 + grid)
    for _ in range(60):
        rank = int(rng.integers(1, 5))
        a = random_region(rng, int(rng.integers(0, 40)), rank, grid)
        b = random_region(rng, int(rng.integers(0, 40)), rank, grid)
        expect = brute(a, b)
        got = gd.overlaps(a, b)
        assert set(zip(*(x.tolist() for x in got))) == expect
        assert len(got[0]) == len(expect)                  # no pair twice
        if len(a.lo) and len(b.lo):
            for d in range(rank):                          # the sweep on any axis, tiny chunks
                w = gd._window(a.lo[:, d], a.hi[:, d], b.lo[:, d], b.hi[:, d])
                sw = gd._overlaps_by_sweep(a, b, d, w, max_pairs=int(rng.integers(1, 30)))
                assert set(zip(*(x.tolist() for x in sw))) == expect
            ids, uniq = [], []
            for d in range(rank):
                u, inv = np.unique(np.stack([b.lo[:, d], b.hi[:, d]], 1), axis=0,
                                   return_inverse=True)
                ids.append(inv.reshape(-1))
                uniq.append(u)
            key = gd._overlaps_by_key(a, b, ids, uniq, budget=10**9)
            assert set(zip(*(x.tolist() for x in key))) == expect


def test_overlaps_of_batch_one_partitions_scale_with_pairs():
    """Two 4-D partitions at batch 1 (every box on the same batch interval): 40 k boxes each,
    one pair per box; the old chunked sweep along axis 0 compared all 1.6e9 pairs."""
    rng = np.random.default_rng(0)
    k, h, w = np.meshgrid(np.arange(64), np.arange(25), np.arange(25), indexing="ij")
    lo = np.stack([np.zeros(k.size, np.int64), k.ravel() * 4, h.ravel() * 2, w.ravel() * 2], 1)
    hi = lo + [1, 4, 2, 2]
    perm = rng.permutation(len(lo))
    a, b = Region.boxes(lo, hi), Region.boxes(lo[perm], hi[perm])
    i, j, v = gd.overlaps(a, b)
    assert len(i) == len(lo) and (v == 16).all()
    assert np.array_equal(perm[j], i)


def test_rank_inputs_orders_by_bytes_then_nearer_tile():
    src = np.array([0, 1, 2, 3, 0, 1])
    dst = np.array([5, 5, 5, 5, 6, 6])
    nbytes = np.array([10, 30, 30, 5, 7, 7])
    tile = np.array([0, 9, 4, 0, 0, 0, 3])
    # vertex 5 (tile 0): 30 from tile 4 before 30 from tile 9, then 10, then 5;
    # vertex 6 (tile 3): equal bytes from tiles 0 and 9 -> the nearer (0) first
    assert gd.rank_inputs(src, dst, nbytes, tile).tolist() == [2, 1, 0, 3, 0, 1]
