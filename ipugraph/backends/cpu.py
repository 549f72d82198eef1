"""The CPU backend: each compute set is ONE call into ipugraph._C, which runs the set's vertex
table under `#pragma omp parallel for` (csrc/).

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

from ..graph import GraphError, Tensor
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
    """A compiled compute set: run() makes the one C++ call; prepare() (re)packs its static
    operands and is called at compile and whenever the graph's values change, or before every
    run when an operand it packs is computed at run time."""
    name: str
    run: Callable[[], None]
    prepare: Callable[[], None] | None = None
    dynamic: bool = False


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
            if t.dtype != "float32" and t.kind != "constant":
                raise GraphError(f"cpu backend: tensor '{t.name}' is {t.dtype}; the CPU kernels "
                                 "are float32 (use backend='reference' for other dtypes)")
        self.buffers = [np.empty(nbytes // 4, dtype=np.float32)
                        for nbytes in program.buffer_bytes]
        self._storage: dict[str, np.ndarray] = {}
        for name, t in graph.inputs.items():
            self._storage[name] = np.empty(storage_shape(t), dtype=np.float32)
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
            self._storage[t.name] = np.ascontiguousarray(to_storage(t, t.value), np.float32)
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
        return {name: np.array(to_logical(t, self.storage(t)), order="C", copy=True)
                for name, t in graph.outputs.items()}


@backend("cpu")
def make_cpu(program, **options) -> CpuExecutable:
    if options:
        raise TypeError(f"cpu backend takes no options, got {sorted(options)}")
    return CpuExecutable(program)


def _vertices(cs) -> np.ndarray:
    return np.ascontiguousarray(cs.vertices, dtype=np.int32)


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

@lowering("conv2d", backend="cpu")
def conv2d_cpu(ctx: Context, cs) -> Kernel:
    group, node = cs.group, cs.group.anchor
    x_t, w_t = node.inputs[0], node.inputs[1]
    b_t = node.inputs[2] if len(node.inputs) > 2 else None
    k, cg, r, s = w_t.shape
    a = node.attrs
    groups = a["groups"]
    x = check_array(ctx.storage(x_t), storage_shape(x_t), f"conv2d '{node.name}' input")
    out = check_array(ctx.storage(group.output), storage_shape(group.output),
                      f"conv2d '{node.name}' output")
    res = None
    if group.residual is not None:
        res = check_array(ctx.storage(group.residual), out.shape,
                          f"conv2d '{node.name}' residual '{group.residual.name}'")
    verts = _vertices(cs)
    packed = {}

    def prepare():
        w, b = _folded_weight_bias(ctx, group, w_t, b_t, out_axis=0)
        packed["w"] = _C.pack_conv_weight(w, groups)
        packed["b"] = b

    (sh, sw), (ph, pw), (dh, dw) = a["stride"], a["padding"], a["dilation"]

    def run():
        _C.conv2d_nhwc(x, packed["w"], packed["b"], res, out, verts, k, r, s, sh, sw, ph, pw,
                       dh, dw, groups, group.relu)

    bn_params = group.bn.inputs[1:] if group.bn is not None else ()
    return Kernel(node.name, run, prepare, dynamic=not ctx.is_static(w_t, b_t, *bn_params))


def _gemm_cpu(ctx: Context, cs, transposed: bool) -> Kernel:
    group, node = cs.group, cs.group.anchor
    a_t, w_t = node.inputs[0], node.inputs[1]
    b_t = node.inputs[2] if len(node.inputs) > 2 else None
    m, n = group.output.shape
    a = check_array(ctx.storage(a_t), a_t.shape, f"{node.op.name} '{node.name}' input")
    out = check_array(ctx.storage(group.output), (m, n), f"{node.op.name} '{node.name}' output")
    verts = _vertices(cs)
    packed = {}

    def prepare():
        w, b = _folded_weight_bias(ctx, group, w_t, b_t, out_axis=0 if transposed else 1)
        packed["w"] = _C.pack_matmul_weight(w, transposed)
        packed["b"] = b

    def run():
        _C.matmul(a, packed["w"], n, packed["b"], out, verts, group.relu)

    bn_params = group.bn.inputs[1:] if group.bn is not None else ()
    return Kernel(node.name, run, prepare, dynamic=not ctx.is_static(w_t, b_t, *bn_params))


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
    c = x_t.shape[1]                      # channels are the last storage dim for rank 2 and 4
    verts = _vertices(cs)
    params = {}

    def prepare():
        gamma, beta, mean, var = (np.asarray(ctx.value(t), np.float64) for t in node.inputs[1:])
        scale, shift = bn_scale_shift(gamma, beta, mean, var, node.attrs["eps"])
        params["scale"] = np.ascontiguousarray(scale, np.float32)
        params["shift"] = np.ascontiguousarray(shift, np.float32)

    def run():
        _C.channel_affine(x, params["scale"], params["shift"], out, c, verts, False)

    return Kernel(node.name, run, prepare, dynamic=not ctx.is_static(*node.inputs[1:]))


@lowering("softmax", backend="cpu")
def softmax_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    cols = node.output.shape[-1]
    x = _flat(ctx, node.inputs[0], f"softmax '{node.name}' input").reshape(-1, cols)
    out = _flat(ctx, node.output, f"softmax '{node.name}' output").reshape(-1, cols)
    verts = _vertices(cs)
    return Kernel(node.name, lambda: _C.softmax_rows(x, out, verts))


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
