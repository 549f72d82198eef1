"""Split reductions on the cpu backend, shared by conv2d, matmul / linear and the conv gradients:
an op whose plan splits its reduction (a conv's input channels or kernel rows, a gemm's K, a
weight gradient's batch and rows) runs as the two compute sets of PopLibs: the partial codelet
stores each vertex's partial sum into one slab of a partials buffer (allocated once at compile),
then, at the Program's Reduce entry, reduce_partials sums the slabs over the reduction boxes
and applies the fused epilogue. Boxes are in conv order (n0,n1,k0,k1,oh0,oh1,ow0,ow1) of an
[N, OH, OW, K] array (a gemm's output viewed as [M, 1, 1, N])."""
from __future__ import annotations

import numpy as np


def conv_order(boxes: np.ndarray, pad: int) -> np.ndarray:
    """Boxes over the kept dims padded to conv order with `pad` trailing (0, 1) pairs."""
    boxes = np.asarray(boxes, np.int32)
    tail = np.tile(np.array([0, 1] * pad, np.int32), (len(boxes), 1))
    return np.ascontiguousarray(np.concatenate([boxes, tail], axis=1))


def nonempty(cols: np.ndarray, first_red: int, red_extents: tuple[int, ...]) -> np.ndarray:
    """Drop the vertices whose reduction range (columns first_red on) is empty while the
    reduction is not: they add nothing (a split finer than its extent, e.g. c over a depthwise
    conv's Cg = 1). If every row left has the whole reduction, the fused kernel runs."""
    red = cols[:, first_red:]
    empty_ok = np.array(red_extents) == 0             # e.g. a matmul with K = 0: out = bias
    keep = ((red[:, 1::2] > red[:, 0::2]) | empty_ok).all(axis=1)
    return cols if keep.all() else np.ascontiguousarray(cols[keep])


def cover(boxes: np.ndarray, weights: np.ndarray, layer: np.ndarray, layers: int,
           shape: tuple):
    """Sum of `weights` over the boxes that cover each cell, per layer: boxes int [V, 8] in
    conv order (n0,n1,k0,k1,oh0,oh1,ow0,ow1) inside `shape` ([N, OH, OW, K]). The cells are
    the grid between all distinct box edges (every element of a cell is covered alike), so
    this is a 4-D difference array with one scatter per box corner: no loop over boxes.
    Returns (sums [layers, cells...], edges per axis)."""
    lo = boxes[:, [0, 4, 6, 2]].astype(np.int64)
    hi = boxes[:, [1, 5, 7, 3]].astype(np.int64)
    edges = [np.unique(np.concatenate([lo[:, a], hi[:, a], [0, shape[a]]])) for a in range(4)]
    ilo = [np.searchsorted(edges[a], lo[:, a]) for a in range(4)]
    ihi = [np.searchsorted(edges[a], hi[:, a]) for a in range(4)]
    diff = np.zeros((layers, *(len(e) for e in edges)), np.int64)
    w = np.asarray(weights, np.int64)
    for corner in range(16):
        up = [(corner >> a) & 1 for a in range(4)]
        idx = tuple(ihi[a] if up[a] else ilo[a] for a in range(4))
        np.add.at(diff, (layer, *idx), w if sum(up) % 2 == 0 else -w)
    for a in range(1, 5):
        diff = np.cumsum(diff, axis=a)
    return diff[:, :-1, :-1, :-1, :-1], edges


def first_bad(bad: np.ndarray, edges) -> tuple:
    """The [n, oh, ow, k] element at the start of the first cell where `bad` (cells) holds."""
    cell = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return tuple(int(edges[a][c]) for a, c in enumerate(cell))


class SplitReduction:
    """The compile-time half of a split reduction.

    Slabs: one per distinct reduction start (c0, kh0) resp. (k0) of the vertices whose
    reduction range is not empty (the others add nothing: see _nonempty); a slab position no
    vertex writes keeps the buffer's initial zero. Reduction boxes: the planner's
    `reduce_vertices` when the step has them, else the distinct output boxes of the table.
    The table is checked to be a complete reduction: each output element's ranges add up to
    the whole reduction, no slab element has two writers, and each output element is reduced
    exactly once, so a bad plan fails at compile instead of giving wrong numbers.

    boxes: int32 [V, 8] output boxes in conv order (n0,n1,k0,k1,oh0,oh1,ow0,ow1); red: int32
    [V, 2r] reduction ranges (c0,c1,kh0,kh1) resp. (k0,k1); shape: the output as
    [N, OH, OW, K] (a gemm's [M, 1, 1, N]); full: the whole reduction's volume (Cg*R resp. K)."""

    def __init__(self, reduce_boxes, boxes: np.ndarray, red: np.ndarray, shape: tuple,
                 full: int, what: str):
        self.what = what
        volume = np.prod(red[:, 1::2] - red[:, 0::2], axis=1)
        keep = np.flatnonzero(volume > 0)
        _, first, inverse = np.unique(red[keep][:, 0::2], axis=0, return_index=True,
                                      return_inverse=True)
        rank = np.empty(len(first), np.int64)
        rank[np.argsort(first)] = np.arange(len(first))   # slab ids in order of appearance
        self.num_slabs = len(first)
        self.slab = rank[inverse.reshape(-1)].astype(np.int32)
        self.boxes = np.ascontiguousarray(boxes[keep], dtype=np.int32)
        self.red = np.ascontiguousarray(red[keep], dtype=np.int32)
        if reduce_boxes is not None:
            self.reduce_vertices = np.ascontiguousarray(reduce_boxes, dtype=np.int32)
        else:
            _, idx = np.unique(boxes, axis=0, return_index=True)
            self.reduce_vertices = np.ascontiguousarray(boxes[np.sort(idx)], dtype=np.int32)
        self._check(shape, full, volume[keep])

    def table(self) -> np.ndarray:
        """The partial codelet's table: box, reduction ranges, slab."""
        return np.ascontiguousarray(
            np.concatenate([self.boxes, self.red, self.slab[:, None]], axis=1), dtype=np.int32)

    def _check(self, shape: tuple, full: int, volume: np.ndarray) -> None:
        what = self.what
        rv = self.reduce_vertices
        if rv.ndim != 2 or rv.shape[1] != 8:
            raise ValueError(f"cpu backend: {what}: reduce_vertices must be int32 [Vr, 8], "
                             f"got shape {rv.shape}")
        ext = np.array([shape[0], shape[0], shape[3], shape[3], shape[1], shape[1], shape[2],
                        shape[2]])
        if len(rv) and ((rv < 0).any() or (rv > ext).any() or (rv[:, 1::2] < rv[:, 0::2]).any()):
            raise ValueError(f"cpu backend: {what}: reduce_vertices hold a box outside the "
                             f"output [N, OH, OW, K] = {list(shape)} or with lo > hi")
        ones = np.ones(len(self.boxes), np.int64)
        writers, edges = cover(self.boxes, ones, self.slab, self.num_slabs, shape)
        if (writers > 1).any():
            p = int(np.argmax((writers > 1).any(axis=(1, 2, 3, 4))))
            start = tuple(int(v) for v in self.red[self.slab == p][0, 0::2])
            raise ValueError(f"cpu backend: {what}: vertices with reduction start {start} "
                             f"overlap in their output boxes (at element "
                             f"{first_bad(writers[p] > 1, edges)} of [n, oh, ow, k])")
        covered, edges = cover(self.boxes, volume, np.zeros(len(volume), np.int64), 1, shape)
        if (covered != full).any():
            at = first_bad(covered[0] != full, edges)
            raise ValueError(f"cpu backend: {what}: the vertices' reduction ranges cover "
                             f"{int(covered[0][covered[0] != full][0])} of {full} at output "
                             f"element {at} ([n, oh, ow, k]): not a complete split of the "
                             "reduction")
        reduced, edges = cover(rv, np.ones(len(rv), np.int64), np.zeros(len(rv), np.int64), 1,
                                shape)
        if (reduced != 1).any():
            at = first_bad(reduced[0] != 1, edges)
            raise ValueError(f"cpu backend: {what}: output element {at} is in "
                             f"{int(reduced[0][reduced[0] != 1][0])} reduction boxes (must be "
                             "exactly 1)")


def split_kernel(cs, partial, reduce, **fields):
    """The Kernel of a split reduction: the partial sums at the compute set, their reduction at
    the Program's Reduce entry (or right after the partials when the Program has none for it:
    a vertex table set by hand)."""
    from .common import Kernel
    if cs.reduce is None:
        def both():
            partial()
            reduce()
        return Kernel(cs.name, both, **fields)
    return Kernel(cs.name, partial, reduce=reduce, **fields)
