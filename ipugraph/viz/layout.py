"""layout(vg) -> [V, 2] positions of every vertex of a VizGraph, for the Graphcore-style picture.

The method is multilevel, with igraph (PyPI `igraph`, already in the `viz` extra) as the engine
at both levels:

1. **Coarse**: the vertices are grouped into super-nodes, one per (BSP step, group of adjacent
   tiles) — up to 32 tile groups per step, so ResNet-34 on a Mk2 (40 steps + the input, 1472
   tiles) gives 1,312 super-nodes — joined by the bytes exchanged between them (1.7 M vertex
   edges fold into 35 k). igraph's Fruchterman-Reingold (grid variant, 1000 iterations from a
   random start, edge weight log(1 + bytes), 0.3 s) lays them out: the graph is a chain of
   steps, and FR folds it into a winding path along the network's depth, each step a band of
   its tile groups. (The exact, non-grid FR stretches the same chain into a long straight worm
   that fills a square picture badly; every seed tried, 0-8, gave a winding path.)
2. **Fine**: every vertex starts at its super-node (plus a small Gaussian jitter) and UMAP
   (igraph's `layout_umap`, seeded with these positions, 50 epochs, min_dist 0) arranges the
   vertices on a reduced vertex graph: each vertex's 3 heaviest input edges (ties broken by
   the nearer tile) plus its heaviest output edge, so that every vertex stays connected
   (ResNet-34/Mk2: 214 k edges; with input edges only, the 2,000-odd slices of the graph input
   would float free). The seed is spread wide (±30) against UMAP's own length scale (~1), so
   UMAP keeps the coarse path and pulls each vertex next to those it exchanges most with: each
   step becomes a cluster and the exchange between consecutive steps shows as fans of edges.

A graph of more than FINE_MAX_VERTICES vertices (a training step on a Mk2: 1.3 M vertices, 70 M
edges) skips UMAP, which would need minutes: each super-node's vertices are spread over a
sunflower disc around its coarse position, in tile order, at one density for all discs.

Finally the positions are centred and turned (a rotation and a mirror) so that the long axis
is horizontal and the first steps are on the left.

Deterministic: igraph draws its random numbers from a `random.Random(seed)` (installed for the
call, and igraph's default — Python's `random` module — put back after), the jitter from
NumPy's generator seeded alike, and the number of UMAP epochs comes from `max_seconds` and the
edge count by a fixed rate (1.5 µs per edge and epoch), never from timing, so the same graph,
seed and `max_seconds` give the same positions on any machine. At the default
`max_seconds=20` a graph gets the full 50 epochs up to ~225 k reduced edges (ResNet-34/Mk2 has
214 k); a bigger graph or a tighter budget gets fewer, 10 at least.

Measurements (ResNet-34, batch 1, 224x224, Mk2: 65,845 vertices, 1,719,512 edges; the 2-core
development Xeon, shared with other jobs — wall times vary by ±30 %):

====================================  =======  ===============================================
engine (input graph)                  seconds  what the picture looked like
====================================  =======  ===============================================
igraph DrL, default options            77.4    a disc of disconnected fragments (the 2-in-edge
(2 heaviest in-edges/vertex, 127 k e)          graph falls apart), input vertices scattered as
                                               noise; no order along depth
igraph Fruchterman-Reingold, grid,      0.9    not converged: one central blob, the isolated
100 iterations (3 in-edges, 188 k e)           vertices spread over a square around it
igraph LGL, 50 iterations (188 k e)    32.3    a hairball, layers mixed
Graphviz sfdp 2.x, defaults            32.9    the best single-engine structure: a tree of
(188 k e; apt, not PyPI)                       layers along depth with comb-like reductions;
                                               but over budget and not installable by pip
ForceAtlas2 (fa2-modified 0.4,        100.5    for 20 iterations only: far over budget
Barnes-Hut, 188 k e)
igraph UMAP, random start, 30 epochs    8.9    a uniform disc of small fragments, no order
(188 k e)                                      along depth (UMAP needs a good start)
coarse FR, then FR (grid) on all      0.9 +    the path of layers, but each super-node a
vertices from it, 100 it., temp. 3     12.2    uniform fog of vertices: no fine structure
3 levels: FR 32 -> 256 groups/step     27.6    one fuzzy comet: FR's short-range (grid)
-> vertices                                    repulsion makes blobs at every level
coarse FR, then DrL "refine" seeded   1.3 +    a ring of fuzzy clouds, no fine structure
from it                                44.3
coarse FR, then UMAP seeded, 15 ep.    4.5     a continuous nebula, layers as smooth bands,
(214 k e)                                      little structure inside them
**same, 50 epochs (chosen)**          **10.6** **a winding path of layer clusters; the wide
                                               early layers as constellations of small clumps,
                                               the deep ones as separate clusters joined by
                                               fans of exchange edges**
same, 80 epochs                        16.0    tighter clumps, more empty space; over the
                                               per-picture budget for little gain
====================================  =======  ===============================================

The chosen call takes 10.6 s at ResNet-34/Mk2 (reduced-edge pick 0.6 s, coarse graph 0.2 s,
coarse FR 0.3 s, UMAP ~9 s). ResNet-18 at 32x32 on a Mk2 (24,869 vertices): ~6 s; on 16
tiles (694 vertices) 0.3 s; on the 2-core host (68 vertices) 0.04 s.
"""
from __future__ import annotations

import random

import numpy as np

from .graphdata import VizGraph, heaviest_inputs, sum_by_key

MAX_GROUPS = 32                 # tile groups per step in the coarse graph
IN_EDGES = 3                    # heaviest input edges kept per vertex for the fine layout
EPOCHS = 50                     # UMAP epochs when the budget allows (see the measurements)
MIN_EPOCHS = 10                 # never fewer, whatever the budget
SECONDS_PER_EDGE_EPOCH = 1.5e-6 # UMAP cost rate used to turn max_seconds into epochs
FIXED_SECONDS = 3.0             # what the rest costs at ResNet-34/Mk2 scale (edge pick, coarse)
COARSE_ITERATIONS = 1000
SPREAD = 30.0                   # half-width of the coarse layout, in UMAP's length units
JITTER = 0.3                    # of a median coarse edge length
MIN_DIST = 0.0                  # UMAP's min_dist
FINE_MAX_VERTICES = 250_000     # above this, no UMAP: each super-node a disc of its vertices
DISC = 0.45                     # disc radius of the largest super-node, in median edge lengths
GOLDEN_ANGLE = np.pi * (3.0 - np.sqrt(5.0))


def _igraph():
    try:
        import igraph
    except ImportError as e:                        # pragma: no cover - viz extra not installed
        raise ImportError("ipugraph.viz.layout needs igraph: pip install 'ipugraph[viz]' "
                          "(or pip install igraph)") from e
    return igraph


def tile_groups(vg: VizGraph, groups: int = MAX_GROUPS) -> tuple[np.ndarray, int]:
    """Super-node id of every vertex: (step, group of adjacent tiles); and the super-node count."""
    tiles = max(int(vg.plan.target.tiles), 1)
    g = max(1, min(groups, tiles))
    key = (vg.v_step.astype(np.int64) + 1) * g + vg.v_tile.astype(np.int64) * g // tiles
    _, sid = np.unique(key, return_inverse=True)
    sid = sid.reshape(-1)
    return sid, int(sid.max()) + 1 if len(sid) else 0


def coarse_edges(sid: np.ndarray, n: int, src, dst, nbytes):
    """The edges between super-nodes (undirected, no self loops) with their summed bytes."""
    def keys(sl):
        a, b = sid[src[sl]].astype(np.int64), sid[dst[sl]].astype(np.int64)
        return np.where(a != b, np.minimum(a, b) * n + np.maximum(a, b), -1)

    key, w, _ = sum_by_key(len(src), keys, nbytes)
    return key // n, key % n, w


def reduce_edges(vg: VizGraph, k: int = IN_EDGES) -> np.ndarray:
    """Indices of the edges kept for the fine layout: every vertex's k heaviest input edges and
    its heaviest output edge; among equal bytes, the edge between nearer tiles first."""
    src, dst, w = vg.e_src, vg.e_dst, vg.e_bytes
    if len(src) == 0:
        return np.zeros(0, np.int64)
    near = np.abs(vg.v_tile[src].astype(np.int64) - vg.v_tile[dst])
    order = np.lexsort((near, -w, src))
    g = src[order]
    first = order[np.arange(len(order)) == np.searchsorted(g, g, side="left")]
    return np.union1d(heaviest_inputs(vg, k), first)


def epochs_for(num_edges: int, max_seconds: float) -> int:
    """UMAP epochs that fit `max_seconds` at the fixed cost rate (deterministic)."""
    budget = max(max_seconds - FIXED_SECONDS, 0.0)
    e = budget / (max(num_edges, 1) * SECONDS_PER_EDGE_EPOCH)
    return int(np.clip(e, MIN_EPOCHS, EPOCHS))


def layout(vg: VizGraph, seed: int = 0, max_seconds: float = 20.0) -> np.ndarray:
    """Positions [V, 2] (float32) of the vertices of `vg`; see the module docstring."""
    V = vg.num_vertices
    if V == 0:
        return np.zeros((0, 2), np.float32)
    if V == 1:
        return np.zeros((1, 2), np.float32)
    ig = _igraph()
    rng = np.random.default_rng(seed)
    ig.set_random_number_generator(random.Random(seed))
    try:
        # -- coarse: super-nodes of (step, tile group) -----------------------------------------
        sid, S = tile_groups(vg)
        cs, cd, cw = coarse_edges(sid, S, vg.e_src, vg.e_dst, vg.e_bytes)
        if S > 1:
            g = ig.Graph(n=S, edges=np.stack([cs, cd], axis=1).tolist())
            wn = np.log1p(cw)
            wn = (wn / wn.max()).tolist() if len(wn) and wn.max() > 0 else None
            coarse = np.array(g.layout_fruchterman_reingold(
                weights=wn, niter=COARSE_ITERATIONS,
                grid="grid").coords, np.float64)
        else:
            coarse = np.zeros((1, 2))
        coarse -= coarse.mean(axis=0)
        extent = np.abs(coarse).max()
        coarse *= SPREAD / extent if extent > 0 else 1.0
        if len(cs):
            elen = float(np.median(np.hypot(*(coarse[cs] - coarse[cd]).T)))
        else:
            elen = 1.0
        init = coarse[sid] + rng.normal(size=(V, 2)) * max(elen, 1e-3) * JITTER

        # -- fine: UMAP seeded with the coarse placement ----------------------------------------
        if V > FINE_MAX_VERTICES:
            return orient(coarse[sid] + discs(sid, S, vg.v_tile, DISC * max(elen, 1e-3)),
                          vg.v_step).astype(np.float32)
        keep = reduce_edges(vg)
        if len(keep) == 0:
            pos = init
        else:
            g = ig.Graph(n=V, edges=np.stack([vg.e_src[keep], vg.e_dst[keep]], 1).tolist())
            epochs = epochs_for(len(keep), max_seconds)
            pos = np.array(g.layout_umap(seed=init.tolist(), epochs=epochs,
                                         min_dist=MIN_DIST).coords, np.float64)
    finally:
        ig.set_random_number_generator(random)
    pos = np.asarray(pos, np.float64)
    bad = ~np.isfinite(pos).all(axis=1)
    if bad.any():                                   # never seen; keep the picture drawable
        pos[bad] = init[bad]
    return orient(pos, vg.v_step).astype(np.float32)


def discs(sid: np.ndarray, S: int, tile: np.ndarray, radius: float) -> np.ndarray:
    """Offsets [V, 2] that spread each super-node's vertices over a sunflower disc, in tile
    order from the centre out, at one density: the largest super-node fills `radius`."""
    order = np.lexsort((tile, sid))
    s = sid[order]
    k = np.arange(len(order)) - np.searchsorted(s, s, side="left")
    top = max(int(np.bincount(sid, minlength=S).max()), 1)
    r = radius * np.sqrt((k + 0.5) / top)
    off = np.empty((len(sid), 2))
    off[order, 0] = r * np.cos(k * GOLDEN_ANGLE)
    off[order, 1] = r * np.sin(k * GOLDEN_ANGLE)
    return off


def orient(pos: np.ndarray, step: np.ndarray) -> np.ndarray:
    """Centre, turn the long axis horizontal and put the first steps on the left, so that
    depth reads left to right (a rotation and a mirror: distances are unchanged)."""
    pos = pos - pos.mean(axis=0)
    if len(pos) < 3:
        return pos
    _, _, vt = np.linalg.svd(pos - pos.mean(axis=0), full_matrices=False)
    pos = pos @ vt.T
    early = step <= np.quantile(step, 0.25)
    late = step >= np.quantile(step, 0.75)
    if early.any() and late.any() and pos[early, 0].mean() > pos[late, 0].mean():
        pos[:, 0] = -pos[:, 0]
    return pos
