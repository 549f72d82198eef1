"""The CPU backend: each compute set is ONE call into ipugraph._C, which runs the set's vertex
table under `#pragma omp parallel for` (csrc/).

A conv / matmul whose plan splits its reduction (a conv's input channels "c" or kernel rows
"kh", a gemm's "k") runs as two C++ calls inside its one Kernel, the two compute sets of PopLibs:
the partial codelet stores each vertex's partial sum into one slab of a partials buffer
(allocated once at compile), then reduce_partials sums the slabs and applies the fused epilogue
(folded BN bias, residual, ReLU) over the reduction vertices.

Layout: 4-D activations are stored NHWC (channels contiguous, what the conv microkernel and the
pooling loops vectorise over); everything else row-major as declared. Feeds are converted on the
way in and outputs on the way out. Weights are packed (and BN folded into them) at compile, and
again whenever a variable's value changes (Graph._values_version). Every array handed to C++
is checked here first (dtype, contiguity, shape), so a bad call is a Python exception, not a
crash; the C++ side checks again.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..graph import DTYPES, GraphError, Tensor
from ..ops.norm import bn_scale_shift
from .registry import backend, lowering, lowering_for

try:
    from .. import _C
except ImportError as e:                                    # pragma: no cover
    raise ImportError("the C++ extension ipugraph._C is not built; run `make ext` (or "
                      "`pip install -e .`) first") from e


def storage_shape(t: Tensor) -> tuple[int, ...]:
    if t.ndim == 4:
        n, c, h, w = t.shape
        return (n, h, w, c)
    return t.shape


def to_storage(t: Tensor, a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 2, 3, 1) if t.ndim == 4 else a


def to_logical(t: Tensor, a: np.ndarray) -> np.ndarray:
    return a.transpose(0, 3, 1, 2) if t.ndim == 4 else a


def check_array(a: np.ndarray, shape: tuple, what: str) -> np.ndarray:
    if a.dtype != np.float32 or not a.flags.c_contiguous or tuple(a.shape) != tuple(shape):
        raise ValueError(f"cpu backend: {what} must be a C-contiguous float32 array of shape "
                         f"{tuple(shape)}, got {a.dtype} {a.shape} "
                         f"(contiguous={a.flags.c_contiguous})")
    return a


@dataclass
class Kernel:
    """A compiled compute set: run() makes the C++ call (two for a split reduction: partial
    sums, then their reduction); prepare() (re)packs its static operands and is called at
    compile and whenever the graph's values change, or before every run when an operand it
    packs is computed at run time. `partials` is a split reduction's slab buffer."""
    name: str
    run: Callable[[], None]
    prepare: Callable[[], None] | None = None
    dynamic: bool = False
    partials: np.ndarray | None = None


class Context:
    """What a lowering may ask of the executable: storage for tensors, values of parameters."""

    def __init__(self, exe: "CpuExecutable"):
        self.exe = exe

    def storage(self, t: Tensor) -> np.ndarray:
        return self.exe.storage(t)

    def value(self, t: Tensor) -> np.ndarray:
        """Current logical-layout value: a variable's or constant's, or a computed tensor's."""
        if t.kind in ("variable", "constant"):
            return t.value
        return to_logical(t, self.exe.storage(t))

    @staticmethod
    def is_static(*tensors: Tensor | None) -> bool:
        return all(t is None or t.kind in ("variable", "constant") for t in tensors)


class CpuExecutable:
    def __init__(self, program):
        self.program = program
        graph = program.graph
        for t in graph.tensors.values():
            if t.dtype != "float32" and t.kind != "constant" and not (
                    t.kind == "input" and t.dtype in ("int64", "int32")):
                raise GraphError(f"cpu backend: tensor '{t.name}' is {t.dtype}; the CPU kernels "
                                 "are float32, with integer inputs for class labels (use "
                                 "backend='reference' for other dtypes)")
        self.buffers = [np.empty(nbytes // 4, dtype=np.float32)
                        for nbytes in program.buffer_bytes]
        self._storage: dict[str, np.ndarray] = {}
        for name, t in graph.inputs.items():
            self._storage[name] = np.empty(storage_shape(t), dtype=DTYPES[t.dtype])
        for cs in program.compute_sets:
            t = cs.output
            buf = self.buffers[program.buffer_of[t.name]]
            self._storage[t.name] = buf[:t.size].reshape(storage_shape(t))
        self._materialized_version = -1
        ctx = Context(self)
        self.kernels = [lowering_for(cs.group.anchor.op.name, "cpu")(ctx, cs)
                        for cs in program.compute_sets]
        self._prepared_version = -1
        self._prepare(force=True)

    def storage(self, t: Tensor) -> np.ndarray:
        if t.name not in self._storage:
            # A variable or constant used as an activation: keep a storage-layout copy.
            if t.kind not in ("variable", "constant"):
                raise KeyError(f"cpu backend: no storage for tensor '{t.name}'")
            # (np.array, not ascontiguousarray: that makes a 0-d scalar 1-d)
            self._storage[t.name] = np.array(to_storage(t, t.value), np.float32, order="C")
        return self._storage[t.name]

    def _prepare(self, force: bool = False) -> None:
        version = self.program.graph._values_version
        if force or version != self._prepared_version:
            for name, arr in list(self._storage.items()):
                t = self.program.graph.tensors[name]
                if t.kind in ("variable", "constant"):
                    np.copyto(arr, to_storage(t, t.value))
            for k in self.kernels:
                if k.prepare is not None and not k.dynamic:
                    k.prepare()
            self._prepared_version = version

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        graph = self.program.graph
        self._prepare()
        for name, a in feeds.items():
            np.copyto(self._storage[name], to_storage(graph.inputs[name], a))
        for k in self.kernels:
            if k.dynamic and k.prepare is not None:
                k.prepare()
            k.run()
        # Copies: the buffers are reused by the next run, the caller's arrays must not be.
        return {name: self.read(t) for name, t in graph.outputs.items()}

    def read(self, t: Tensor) -> np.ndarray:
        """A fresh logical-layout copy of tensor t's value from the last run."""
        return np.array(to_logical(t, self.storage(t)), order="C", copy=True)


@backend("cpu")
def make_cpu(program, **options) -> CpuExecutable:
    if options:
        raise TypeError(f"cpu backend takes no options, got {sorted(options)}")
    return CpuExecutable(program)


def _vertices(cs) -> np.ndarray:
    return np.ascontiguousarray(cs.vertices, dtype=np.int32)


def _columns(cs, names: tuple[str, ...], extents: tuple[int, ...], what: str) -> np.ndarray:
    """The vertex table's (lo, hi) column pairs for the dims `names`, in that order, found by
    name in the step's partition (dim d owns columns 2i, 2i+1 where i = dims.index(d)); a dim
    the partition does not have is unsplit: its full range (0, extent) in every row."""
    table = _vertices(cs)
    if table.ndim != 2:
        raise ValueError(f"cpu backend: {what}: vertex table must be 2-D, got shape "
                         f"{table.shape}")
    part = getattr(getattr(cs, "step", None), "partition", None)
    dims = tuple(part.dims) if part is not None else names[:table.shape[1] // 2]
    if table.shape[1] != 2 * len(dims):
        raise ValueError(f"cpu backend: {what}: vertex table of shape {table.shape} does not "
                         f"match the partition's dims {dims} (2 columns per dim)")
    unknown = [d for d in dims if d not in names]
    if unknown:
        raise ValueError(f"cpu backend: {what}: the partition splits dims {unknown} this "
                         f"lowering does not know (it knows {names})")
    cols = []
    for name, extent in zip(names, extents):
        if name in dims:
            i = dims.index(name)
            cols.append(table[:, 2 * i:2 * i + 2])
        else:
            cols.append(np.tile(np.array([0, extent], np.int32), (len(table), 1)))
    return np.ascontiguousarray(np.concatenate(cols, axis=1), dtype=np.int32)


def _nonempty(cols: np.ndarray, first_red: int, red_extents: tuple[int, ...]) -> np.ndarray:
    """Drop the vertices whose reduction range (columns first_red on) is empty while the
    reduction is not: they add nothing (a split finer than its extent, e.g. c over a depthwise
    conv's Cg = 1). If every row left has the whole reduction, the fused kernel runs."""
    red = cols[:, first_red:]
    empty_ok = np.array(red_extents) == 0             # e.g. a matmul with K = 0: out = bias
    keep = ((red[:, 1::2] > red[:, 0::2]) | empty_ok).all(axis=1)
    return cols if keep.all() else np.ascontiguousarray(cols[keep])


def _cover(boxes: np.ndarray, weights: np.ndarray, layer: np.ndarray, layers: int,
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


def _first_bad(bad: np.ndarray, edges) -> tuple:
    """The [n, oh, ow, k] element at the start of the first cell where `bad` (cells) holds."""
    cell = np.unravel_index(int(np.argmax(bad)), bad.shape)
    return tuple(int(edges[a][c]) for a, c in enumerate(cell))


class _SplitReduction:
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

    def __init__(self, cs, boxes: np.ndarray, red: np.ndarray, shape: tuple, full: int,
                 what: str):
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
        planned = getattr(getattr(cs, "step", None), "reduce_vertices", None)
        if planned is not None:
            self.reduce_vertices = np.ascontiguousarray(planned, dtype=np.int32)
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
        writers, edges = _cover(self.boxes, ones, self.slab, self.num_slabs, shape)
        if (writers > 1).any():
            p = int(np.argmax((writers > 1).any(axis=(1, 2, 3, 4))))
            start = tuple(int(v) for v in self.red[self.slab == p][0, 0::2])
            raise ValueError(f"cpu backend: {what}: vertices with reduction start {start} "
                             f"overlap in their output boxes (at element "
                             f"{_first_bad(writers[p] > 1, edges)} of [n, oh, ow, k])")
        covered, edges = _cover(self.boxes, volume, np.zeros(len(volume), np.int64), 1, shape)
        if (covered != full).any():
            at = _first_bad(covered[0] != full, edges)
            raise ValueError(f"cpu backend: {what}: the vertices' reduction ranges cover "
                             f"{int(covered[0][covered[0] != full][0])} of {full} at output "
                             f"element {at} ([n, oh, ow, k]): not a complete split of the "
                             "reduction")
        reduced, edges = _cover(rv, np.ones(len(rv), np.int64), np.zeros(len(rv), np.int64), 1,
                                shape)
        if (reduced != 1).any():
            at = _first_bad(reduced[0] != 1, edges)
            raise ValueError(f"cpu backend: {what}: output element {at} is in "
                             f"{int(reduced[0][reduced[0] != 1][0])} reduction boxes (must be "
                             "exactly 1)")


def _folded_weight_bias(ctx: Context, group, w_t: Tensor, b_t: Tensor | None, out_axis: int):
    """The anchor's weight and bias with an inference batch_norm folded in:
    w' = w·scale (per output channel), b' = b·scale + shift."""
    w = np.asarray(ctx.value(w_t), dtype=np.float64)
    k = w.shape[out_axis]
    b = np.zeros(k) if b_t is None else np.asarray(ctx.value(b_t), dtype=np.float64)
    bn = group.bn
    if bn is not None:
        gamma, beta, mean, var = (np.asarray(ctx.value(t), np.float64) for t in bn.inputs[1:])
        scale, shift = bn_scale_shift(gamma, beta, mean, var, bn.attrs["eps"])
        shape = [1] * w.ndim
        shape[out_axis] = k
        w = w * scale.reshape(shape)
        b = b * scale + shift
    has_bias = b_t is not None or bn is not None
    return (np.ascontiguousarray(w, np.float32),
            np.ascontiguousarray(b, np.float32) if has_bias else None)


# -- lowerings ------------------------------------------------------------------------------

CONV_DIMS = ("n", "k", "oh", "ow", "c", "kh")   # c: input channels within a group; kh: rows
GEMM_DIMS = ("m", "n", "k")                      # k: the reduction dim


@lowering("conv2d", backend="cpu")
def conv2d_cpu(ctx: Context, cs) -> Kernel:
    group, node = cs.group, cs.group.anchor
    x_t, w_t = node.inputs[0], node.inputs[1]
    b_t = node.inputs[2] if len(node.inputs) > 2 else None
    k, cg, r, s = w_t.shape
    a = node.attrs
    groups = a["groups"]
    what = f"conv2d '{node.name}'"
    x = check_array(ctx.storage(x_t), storage_shape(x_t), f"{what} input")
    out = check_array(ctx.storage(group.output), storage_shape(group.output), f"{what} output")
    res = None
    if group.residual is not None:
        res = check_array(ctx.storage(group.residual), out.shape,
                          f"{what} residual '{group.residual.name}'")
    n, oh, ow, _ = out.shape
    cols = _nonempty(_columns(cs, CONV_DIMS, (n, k, oh, ow, cg, r), what), 8, (cg, r))
    red = cols[:, 8:12]
    split = not ((red[:, 0] == 0) & (red[:, 1] == cg) & (red[:, 2] == 0) & (red[:, 3] == r)).all()
    packed = {}

    def prepare():
        w, b = _folded_weight_bias(ctx, group, w_t, b_t, out_axis=0)
        packed["w"] = _C.pack_conv_weight(w, groups)
        packed["b"] = b

    (sh, sw), (ph, pw), (dh, dw) = a["stride"], a["padding"], a["dilation"]
    geom = (k, r, s, sh, sw, ph, pw, dh, dw, groups)
    partials = None
    if not split:
        verts = np.ascontiguousarray(cols[:, :8])

        def run():
            _C.conv2d_nhwc(x, packed["w"], packed["b"], res, out, verts, *geom, group.relu)
    else:
        sr = _SplitReduction(cs, cols[:, :8], red, out.shape, cg * r, what)
        table, rverts = sr.table(), sr.reduce_vertices
        partials = np.zeros((sr.num_slabs, *out.shape), np.float32)

        def run():
            _C.conv2d_nhwc_partial(x, packed["w"], partials, table, *geom)
            _C.reduce_partials(partials, packed["b"], res, out, rverts, group.relu)

    bn_params = group.bn.inputs[1:] if group.bn is not None else ()
    return Kernel(node.name, run, prepare, dynamic=not ctx.is_static(w_t, b_t, *bn_params),
                  partials=partials)


def _gemm_cpu(ctx: Context, cs, transposed: bool) -> Kernel:
    group, node = cs.group, cs.group.anchor
    a_t, w_t = node.inputs[0], node.inputs[1]
    b_t = node.inputs[2] if len(node.inputs) > 2 else None
    m, n = group.output.shape
    what = f"{node.op.name} '{node.name}'"
    a = check_array(ctx.storage(a_t), a_t.shape, f"{what} input")
    out = check_array(ctx.storage(group.output), (m, n), f"{what} output")
    kred = a_t.shape[1]
    cols = _nonempty(_columns(cs, GEMM_DIMS, (m, n, kred), what), 4, (kred,))
    split = not ((cols[:, 4] == 0) & (cols[:, 5] == kred)).all()
    packed = {}

    def prepare():
        w, b = _folded_weight_bias(ctx, group, w_t, b_t, out_axis=0 if transposed else 1)
        packed["w"] = _C.pack_matmul_weight(w, transposed)
        packed["b"] = b

    partials = None
    if not split:
        verts = np.ascontiguousarray(cols[:, :4])

        def run():
            _C.matmul(a, packed["w"], n, packed["b"], out, verts, group.relu)
    else:
        # The reduction sees the gemm as a 1x1 conv: boxes (m0, m1, n0, n1, 0, 1, 0, 1).
        boxes = np.concatenate([cols[:, :4], np.tile(np.array([0, 1, 0, 1], np.int32),
                                                     (len(cols), 1))], axis=1)
        sr = _SplitReduction(cs, boxes, cols[:, 4:6], (m, 1, 1, n), kred, what)
        table = np.ascontiguousarray(sr.table()[:, [0, 1, 2, 3, 8, 9, 10]])
        rverts = sr.reduce_vertices
        partials = np.zeros((sr.num_slabs, m, n), np.float32)
        partials4, out4 = partials.reshape(sr.num_slabs, m, 1, 1, n), out.reshape(m, 1, 1, n)

        def run():
            _C.matmul_partial(a, packed["w"], n, partials, table)
            _C.reduce_partials(partials4, packed["b"], None, out4, rverts, group.relu)

    bn_params = group.bn.inputs[1:] if group.bn is not None else ()
    return Kernel(node.name, run, prepare, dynamic=not ctx.is_static(w_t, b_t, *bn_params),
                  partials=partials)


@lowering("linear", backend="cpu")
def linear_cpu(ctx, cs) -> Kernel:
    return _gemm_cpu(ctx, cs, transposed=True)


@lowering("matmul", backend="cpu")
def matmul_cpu(ctx, cs) -> Kernel:
    return _gemm_cpu(ctx, cs, transposed=False)


def _pool_cpu(ctx, cs, call) -> Kernel:
    node = cs.group.anchor
    x_t = node.inputs[0]
    x = check_array(ctx.storage(x_t), storage_shape(x_t), f"{node.op.name} '{node.name}' input")
    out = check_array(ctx.storage(node.output), storage_shape(node.output),
                      f"{node.op.name} '{node.name}' output")
    verts = _vertices(cs)
    return Kernel(node.name, lambda: call(x, out, verts, node.attrs))


@lowering("max_pool2d", backend="cpu")
def max_pool2d_cpu(ctx, cs) -> Kernel:
    return _pool_cpu(ctx, cs, lambda x, out, v, a: _C.max_pool2d_nhwc(
        x, out, v, *a["kernel"], *a["stride"], *a["padding"], *a["dilation"]))


@lowering("avg_pool2d", backend="cpu")
def avg_pool2d_cpu(ctx, cs) -> Kernel:
    return _pool_cpu(ctx, cs, lambda x, out, v, a: _C.avg_pool2d_nhwc(
        x, out, v, *a["kernel"], *a["stride"], *a["padding"], a["count_include_pad"]))


@lowering("global_avg_pool", backend="cpu")
def global_avg_pool_cpu(ctx, cs) -> Kernel:
    def call(x, out, v, a):
        _C.global_avg_pool_nhwc(x, out.reshape(out.shape[0], out.shape[3]), v)
    return _pool_cpu(ctx, cs, call)


def _flat(ctx, t: Tensor, what: str) -> np.ndarray:
    return check_array(ctx.storage(t), storage_shape(t), what).reshape(-1)


@lowering("relu", backend="cpu")
def relu_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    x = _flat(ctx, node.inputs[0], f"relu '{node.name}' input")
    out = _flat(ctx, node.output, f"relu '{node.name}' output")
    verts = _vertices(cs)
    return Kernel(node.name, lambda: _C.relu(x, out, verts))


@lowering("add", backend="cpu")
def add_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    a = _flat(ctx, node.inputs[0], f"add '{node.name}' a")
    b = _flat(ctx, node.inputs[1], f"add '{node.name}' b")
    out = _flat(ctx, node.output, f"add '{node.name}' output")
    verts = _vertices(cs)
    return Kernel(node.name, lambda: _C.add(a, b, out, verts, False))


@lowering("batch_norm", backend="cpu")
def batch_norm_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    x_t = node.inputs[0]
    x = _flat(ctx, x_t, f"batch_norm '{node.name}' input")
    out = _flat(ctx, node.output, f"batch_norm '{node.name}' output")
    # channel_affine indexes its per-channel tables with (flat index % period). Channels are
    # the last storage dim for rank 2 and 4 (NHWC); for rank 3 [N, C, L] each channel's value
    # repeats L times, so the tables are repeated to one period of C*L.
    c = x_t.shape[1]
    inner = x_t.shape[2] if x_t.ndim == 3 else 1
    verts = _vertices(cs)
    params = {}

    def prepare():
        gamma, beta, mean, var = (np.asarray(ctx.value(t), np.float64) for t in node.inputs[1:])
        scale, shift = bn_scale_shift(gamma, beta, mean, var, node.attrs["eps"])
        params["scale"] = np.ascontiguousarray(np.repeat(scale, inner), np.float32)
        params["shift"] = np.ascontiguousarray(np.repeat(shift, inner), np.float32)

    def run():
        _C.channel_affine(x, params["scale"], params["shift"], out, c * inner, verts, False)

    return Kernel(node.name, run, prepare, dynamic=not ctx.is_static(*node.inputs[1:]))


@lowering("softmax", backend="cpu")
def softmax_cpu(ctx, cs) -> Kernel:
    """Rows of the logical last axis; a 4-D tensor is stored NHWC, so its rows are gathered
    into a logical-order scratch buffer and scattered back."""
    node = cs.group.anchor
    x_t = node.inputs[0]
    cols = node.output.shape[-1]
    verts = _vertices(cs)
    if x_t.ndim != 4:
        x = _flat(ctx, x_t, f"softmax '{node.name}' input").reshape(-1, cols)
        out = _flat(ctx, node.output, f"softmax '{node.name}' output").reshape(-1, cols)
        return Kernel(node.name, lambda: _C.softmax_rows(x, out, verts))
    x = ctx.storage(x_t)
    out = ctx.storage(node.output)
    rows_in = np.empty(x_t.shape, np.float32)
    rows_out = np.empty(x_t.shape, np.float32)

    def run():
        np.copyto(rows_in, to_logical(x_t, x))
        _C.softmax_rows(rows_in.reshape(-1, cols), rows_out.reshape(-1, cols), verts)
        np.copyto(out, to_storage(node.output, rows_out))

    return Kernel(node.name, run)


@lowering("flatten", backend="cpu")
def flatten_cpu(ctx, cs) -> Kernel:
    """A layout change, not arithmetic: NHWC storage back to row-major NCHW order, then a
    reshape (a plain copy when the input is not 4-D)."""
    node = cs.group.anchor
    x_t = node.inputs[0]
    x = ctx.storage(x_t)
    out = ctx.storage(node.output)
    logical = to_logical(x_t, x)
    dst = out.reshape(x_t.shape)
    return Kernel(node.name, lambda: np.copyto(dst, logical))


# Lowerings of the training ops live in their own modules; importing them registers them.
from . import cpu_conv_grad, cpu_optim, cpu_train  # noqa: E402,F401
