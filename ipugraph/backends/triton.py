"""The Triton backend: each compute set is one launch of a Triton kernel (kernels/, installed as
ipugraph.kernels) on a GPU, or on the CPU under Triton's interpreter (TRITON_INTERPRET=1).

It runs the Program's compute sets in order, reading and writing the Program's buffers, but
re-blocks every compute set for the GPU: the plan's vertex tables (what one IPU tile or CPU core
computes) are ignored and each kernel picks its own tile sizes by autotuning. A compute set is
the anchor op with its fused epilogue, so conv → batch norm → residual add → ReLU is one launch.

Layout: as on the CPU backend, 4-D activations are stored NHWC and everything else row-major;
feeds are converted on the way in and outputs on the way out, once per run.

Residency: the activation buffers (torch tensors on the device, one per Program buffer) and the
weights stay on the device. Weights are packed for their kernel, with a following inference
batch norm folded in (w' = w·scale, b' = b·scale + shift, in float64 on the host), once at
compile and again whenever the graph's values change (Graph._values_version). A weight computed
at run time is folded and packed on the device by its kernel's run(), before the launch.

Options (ig.compile(g, backend="triton", ...)):
  allow_tf32=False  float32 convs and gemms use IEEE fp32 dots; True allows TF32 tensor cores
                    (about 1e-3 relative error per product; faster on Ampere and later).
  cuda_graph=False  on a GPU, capture the whole run (every launch) in one CUDA graph at the
                    first run and replay it afterwards; feeds are copied into the captured
                    input buffers and outputs copied out of the captured output buffers.

Feeds: NumPy arrays or torch tensors (CUDA tensors on a GPU). Through Engine.run every feed is
NumPy and every output a fresh NumPy array; TritonExecutable.run(feeds) called with torch
tensors returns fresh torch tensors on the device instead.

Without a CUDA device and without TRITON_INTERPRET=1 the backend is unavailable and
ig.compile(..., backend="triton") raises RuntimeError saying so. TRITON_INTERPRET is read at
the first use of the backend (when ipugraph.kernels is first imported, @triton.jit fixes the
mode of every kernel), not when ipugraph is imported.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..graph import DTYPES, GraphError, Tensor
from ..ops.norm import bn_scale_shift
from .registry import backend, lowering, lowering_for

NO_DEVICE = ("triton backend: no CUDA device is available and TRITON_INTERPRET is not set to 1. "
             "Run on a machine with a GPU, or set TRITON_INTERPRET=1 before the first use of "
             "the backend to run its kernels on the CPU in Triton's interpreter (slow; meant "
             "for tests)")
SUPPORTED_DTYPES = ("float32", "float16")


def _interpreting(triton) -> bool:
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").lower() in ("1", "true", "on", "yes")


def runtime():
    """(torch, ipugraph.kernels, device) for this process, or RuntimeError saying what is
    missing. Reads TRITON_INTERPRET now, not at import of ipugraph."""
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(f"triton backend: needs PyTorch ({e}); pip install torch") from e
    try:
        import triton
    except ImportError as e:
        raise RuntimeError(f"triton backend: needs Triton ({e}); pip install triton") from e
    interpret = _interpreting(triton)
    if not interpret and not torch.cuda.is_available():
        raise RuntimeError(NO_DEVICE)
    from .. import kernels
    if kernels.INTERPRET != interpret:
        loaded = "with" if kernels.INTERPRET else "without"
        raise RuntimeError(f"triton backend: ipugraph.kernels were first imported {loaded} "
                           "TRITON_INTERPRET=1 and the setting has changed since; @triton.jit "
                           "fixes it at import, so set TRITON_INTERPRET before the first use "
                           "of the backend (in a fresh process)")
    device = torch.device("cpu") if interpret else torch.device("cuda", torch.cuda.current_device())
    return torch, kernels, device


# Unavailable here: refuse the import, so that backends.available("triton") is False and
# get_backend("triton") raises RuntimeError with the reason. (A failed import is not cached:
# a later get_backend tries again.)
try:
    runtime()
except RuntimeError as _e:
    raise ImportError(str(_e)) from None


def storage_shape(t: Tensor) -> tuple[int, ...]:
    if t.ndim == 4:
        n, c, h, w = t.shape
        return (n, h, w, c)
    return t.shape


def to_storage(t: Tensor, a):
    """A logical-layout (NCHW) torch tensor as a view in storage layout (NHWC)."""
    return a.permute(0, 2, 3, 1) if t.ndim == 4 else a


def to_logical(t: Tensor, a):
    return a.permute(0, 3, 1, 2) if t.ndim == 4 else a


@dataclass
class Kernel:
    """A compiled compute set. run() launches its kernel(s) on the buffers; prepare() uploads
    its static operands (packed, folded weights) and is called at compile and whenever the
    graph's values change. A `dynamic` kernel's weight is computed at run time: its run()
    folds and packs it on the device (device operations only, so a CUDA graph captures them)."""
    name: str
    run: Callable[[], None]
    prepare: Callable[[], None] | None = None
    dynamic: bool = False


class Context:
    """What a lowering may ask of the executable: storage for tensors, values of parameters,
    resident device tensors, the kernels and the options."""

    def __init__(self, exe: "TritonExecutable"):
        self.exe = exe
        self.torch = exe.torch
        self.kernels = exe.kernel_module
        self.device = exe.device
        self.allow_tf32 = exe.allow_tf32

    def storage(self, t: Tensor):
        return self.exe.storage(t)

    def value(self, t: Tensor):
        """A computed tensor's current value in logical layout: a view of its device storage."""
        return to_logical(t, self.exe.storage(t))

    def dtype(self, t: Tensor):
        return self.exe.torch_dtype(t.dtype)

    def resident(self, shape, dtype=None):
        """A tensor on the device that lives as long as the executable (packed weights)."""
        return self.torch.zeros(tuple(shape), dtype=dtype or self.torch.float32,
                                device=self.device)

    def upload(self, dst, array: np.ndarray) -> None:
        """Copy a host array into a resident tensor (cast to its dtype)."""
        dst.copy_(self.torch.from_numpy(np.ascontiguousarray(array)))

    @staticmethod
    def is_static(*tensors: Tensor | None) -> bool:
        return all(t is None or t.kind in ("variable", "constant") for t in tensors)


class TritonExecutable:
    accepts_torch = True           # Engine passes torch (CUDA) tensors through unconverted

    def __init__(self, program, allow_tf32: bool = False, cuda_graph: bool = False):
        self.torch, self.kernel_module, self.device = runtime()
        torch = self.torch
        self.program = program
        self.allow_tf32 = bool(allow_tf32)
        self.cuda_graph = bool(cuda_graph)
        if self.cuda_graph and self.device.type != "cuda":
            raise RuntimeError("triton backend: cuda_graph=True needs a CUDA device; this "
                               "process runs the kernels in Triton's interpreter on the CPU")
        graph = program.graph
        for t in graph.tensors.values():
            if t.dtype not in SUPPORTED_DTYPES and t.kind != "constant" and not (
                    t.kind == "input" and t.dtype in ("int64", "int32")):
                raise GraphError(f"triton backend: tensor '{t.name}' is {t.dtype}; the Triton "
                                 f"kernels take {' and '.join(SUPPORTED_DTYPES)}, with integer "
                                 "inputs for class labels (use backend='reference' for other "
                                 "dtypes)")
        self.buffers = [torch.empty(nbytes, dtype=torch.uint8, device=self.device)
                        for nbytes in program.buffer_bytes]
        self._storage: dict = {}
        for name, t in graph.inputs.items():
            self._storage[name] = torch.empty(storage_shape(t), dtype=self.torch_dtype(t.dtype),
                                              device=self.device)
        for cs in program.compute_sets:
            t = cs.output
            buf = self.buffers[program.buffer_of[t.name]]
            self._storage[t.name] = (buf[:t.nbytes].view(self.torch_dtype(t.dtype))
                                     .view(storage_shape(t)))
        ctx = Context(self)
        self.kernels = [lowering_for(cs.group.anchor.op.name, "triton")(ctx, cs)
                        for cs in program.compute_sets]
        self._prepared_version = -1
        self._prepare(force=True)
        self._graph = None

    def torch_dtype(self, name: str):
        return getattr(self.torch, name)

    def storage(self, t: Tensor):
        if t.name not in self._storage:
            # A variable or constant used as an activation: a resident storage-layout copy,
            # refreshed by _prepare when the graph's values change.
            if t.kind not in ("variable", "constant"):
                raise KeyError(f"triton backend: no storage for tensor '{t.name}'")
            self._storage[t.name] = self.torch.empty(
                storage_shape(t), dtype=self.torch_dtype(t.dtype), device=self.device)
            self._storage[t.name].copy_(to_storage(t, self.torch.from_numpy(t.value)))
        return self._storage[t.name]

    def _prepare(self, force: bool = False) -> None:
        graph = self.program.graph
        version = graph._values_version
        if force or version != self._prepared_version:
            for name, arr in list(self._storage.items()):
                t = graph.tensors[name]
                if t.kind in ("variable", "constant"):
                    arr.copy_(to_storage(t, self.torch.from_numpy(t.value)))
            for k in self.kernels:
                if k.prepare is not None:
                    k.prepare()
            self._prepared_version = version

    def _launch(self) -> None:
        for k in self.kernels:
            k.run()

    def _replay(self) -> None:
        """Run through a CUDA graph: captured at the first call, after one eager run (on a side
        stream) that compiles and autotunes every kernel outside the capture."""
        torch = self.torch
        if self._graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self._launch()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self._launch()
            self._graph = graph
        self._graph.replay()

    def _load_feed(self, name: str, a) -> None:
        from ..engine import FeedError
        torch = self.torch
        graph = self.program.graph
        if name not in graph.inputs:
            raise FeedError(f"triton backend: '{name}' is not an input of graph "
                            f"'{graph.name}' (inputs are {sorted(graph.inputs)})")
        t = graph.inputs[name]
        if not torch.is_tensor(a):
            a = np.asarray(a)
            if a.dtype != DTYPES[t.dtype]:
                raise FeedError(f"feed '{name}' has dtype {a.dtype}, the graph input is "
                                f"{t.dtype}")
            a = torch.from_numpy(np.array(a, order="C"))      # keeps a 0-d feed 0-d
        elif a.dtype != self.torch_dtype(t.dtype):
            raise FeedError(f"feed '{name}' has dtype {a.dtype}, the graph input is {t.dtype}")
        if tuple(a.shape) != t.shape:
            raise FeedError(f"feed '{name}' has shape {tuple(a.shape)}, the graph input is "
                            f"{t.shape}")
        # Upload as it is (one contiguous copy), then change the layout on the device.
        self._storage[name].copy_(to_storage(t, a.detach().to(self.device)))

    def run(self, feeds: dict) -> dict:
        """Run once. NumPy feeds give fresh NumPy outputs; if any feed is a torch tensor the
        outputs are fresh torch tensors on the device."""
        torch = self.torch
        graph = self.program.graph
        as_numpy = not any(torch.is_tensor(a) for a in feeds.values())
        missing = sorted(set(graph.inputs) - set(feeds))
        if missing:
            from ..engine import FeedError
            raise FeedError(f"triton backend: feeds miss inputs {missing}")
        self._prepare()
        for name, a in feeds.items():
            self._load_feed(name, a)
        if self.cuda_graph:
            self._replay()
        else:
            self._launch()
        outputs = {name: to_logical(t, self.storage(t)) for name, t in graph.outputs.items()}
        if as_numpy:
            # Copies: the buffers are reused by the next run, the caller's arrays must not be.
            return {name: np.array(o.contiguous().cpu().numpy(), order="C", copy=True)
                    for name, o in outputs.items()}
        return {name: o.clone(memory_format=torch.contiguous_format)
                for name, o in outputs.items()}

    def read(self, t: Tensor) -> np.ndarray:
        """Tensor t's value from the last run, copied to a host NumPy array."""
        return np.array(to_logical(t, self.storage(t)).contiguous().cpu().numpy(), order="C",
                        copy=True)


@backend("triton")
def make_triton(program, **options) -> TritonExecutable:
    unknown = set(options) - {"allow_tf32", "cuda_graph"}
    if unknown:
        raise TypeError(f"triton backend: unknown options {sorted(unknown)}; it takes "
                        "allow_tf32= and cuda_graph=")
    return TritonExecutable(program, **options)


# -- weights --------------------------------------------------------------------------------

class _Weights:
    """The anchor's weight and bias with a following inference batch norm folded in
    (w' = w·scale per output channel, b' = b·scale + shift), packed by `pack` (a function of a
    logical-layout torch weight) into resident device tensors `packed` and `bias` (fp32; None
    when the op has neither a bias nor a batch norm).

    Static weights are folded in float64 on the host by prepare(). A weight or bias computed at
    run time (dynamic) is folded on the device by refresh(), from its storage and the static
    parts that prepare() uploaded."""

    def __init__(self, ctx: Context, group, w_t: Tensor, b_t: Tensor | None, out_axis: int,
                 packed_shape: tuple, pack: Callable):
        self.ctx, self.w_t, self.b_t, self.out_axis, self.pack = ctx, w_t, b_t, out_axis, pack
        self.bn = group.bn
        self.k = w_t.shape[out_axis]
        self.packed = ctx.resident(packed_shape, ctx.dtype(w_t))
        self.bias = ctx.resident((self.k,)) if (b_t is not None or self.bn is not None) else None
        self.dynamic = not ctx.is_static(w_t, b_t)
        self._static: dict = {}

    def _affine(self):
        """(scale, shift) of the folded batch norm in float64, or (None, None)."""
        if self.bn is None:
            return None, None
        gamma, beta, mean, var = (np.asarray(t.value, np.float64) for t in self.bn.inputs[1:])
        return bn_scale_shift(gamma, beta, mean, var, self.bn.attrs["eps"])

    def _axis_shape(self, ndim: int) -> list:
        shape = [1] * ndim
        shape[self.out_axis] = self.k
        return shape

    def prepare(self) -> None:
        torch, ctx = self.ctx.torch, self.ctx
        scale, shift = self._affine()
        if not self.dynamic:
            w = np.asarray(self.w_t.value, np.float64)
            b = (np.zeros(self.k) if self.b_t is None
                 else np.asarray(self.b_t.value, np.float64))
            if scale is not None:
                w = w * scale.reshape(self._axis_shape(w.ndim))
                b = b * scale + shift
            self.packed.copy_(self.pack(torch.from_numpy(w)))
            if self.bias is not None:
                ctx.upload(self.bias, b)
            return
        # Dynamic: upload the static parts once; refresh() does the rest on the device.
        for key, t in (("w", self.w_t), ("b", self.b_t)):
            if t is not None and ctx.is_static(t):
                self._static[key] = torch.from_numpy(np.asarray(t.value, np.float32)).to(
                    ctx.device)
        if scale is not None:
            self._static["scale"] = torch.from_numpy(scale.astype(np.float32)).to(ctx.device)
            self._static["shift"] = torch.from_numpy(shift.astype(np.float32)).to(ctx.device)

    def _device_value(self, key: str, t: Tensor):
        return self._static[key] if key in self._static else self.ctx.value(t).float()

    def refresh(self) -> None:
        """Fold and pack a run-time weight on the device (device operations only)."""
        w = self._device_value("w", self.w_t)
        scale = self._static.get("scale")
        if scale is not None:
            w = w * scale.view(self._axis_shape(w.dim()))
        self.packed.copy_(self.pack(w))
        if self.bias is not None:
            b = (self._device_value("b", self.b_t) if self.b_t is not None
                 else self.ctx.torch.zeros(self.k, device=self.ctx.device))
            if scale is not None:
                b = b * scale + self._static["shift"]
            self.bias.copy_(b)


# -- lowerings ------------------------------------------------------------------------------

@lowering("conv2d", backend="triton")
def conv2d_triton(ctx: Context, cs) -> Kernel:
    group, node = cs.group, cs.group.anchor
    x_t, w_t = node.inputs[0], node.inputs[1]
    b_t = node.inputs[2] if len(node.inputs) > 2 else None
    k, cg, r, s = w_t.shape
    a = node.attrs
    groups = a["groups"]
    x = ctx.storage(x_t)
    out = ctx.storage(group.output)
    res = ctx.storage(group.residual) if group.residual is not None else None
    weights = _Weights(ctx, group, w_t, b_t, 0, (groups, r * s * cg, k // groups),
                       lambda w: ctx.kernels.pack_weight(w, groups))
    conv = ctx.kernels.conv2d_nhwc
    geometry = dict(stride=a["stride"], padding=a["padding"], dilation=a["dilation"],
                    groups=groups, relu=group.relu, allow_tf32=ctx.allow_tf32)

    def run():
        if weights.dynamic:
            weights.refresh()
        conv(x, weights.packed, (r, s), weights.bias, res, out, **geometry)

    return Kernel(node.name, run, weights.prepare, dynamic=weights.dynamic)


def _gemm_triton(ctx: Context, cs, transposed: bool) -> Kernel:
    """linear (weight [N, K], transposed) or matmul (b [K, N]); B is packed [K, N]."""
    group, node = cs.group, cs.group.anchor
    a_t, w_t = node.inputs[0], node.inputs[1]
    b_t = node.inputs[2] if len(node.inputs) > 2 else None
    m, n = group.output.shape
    kred = a_t.shape[1]
    a = ctx.storage(a_t)
    out = ctx.storage(group.output)
    weights = _Weights(ctx, group, w_t, b_t, 0 if transposed else 1, (kred, n),
                       (lambda w: w.t()) if transposed else (lambda w: w))
    matmul = ctx.kernels.matmul

    def run():
        if weights.dynamic:
            weights.refresh()
        matmul(a, weights.packed, weights.bias, None, out, relu=group.relu,
               allow_tf32=ctx.allow_tf32)

    return Kernel(node.name, run, weights.prepare, dynamic=weights.dynamic)


@lowering("linear", backend="triton")
def linear_triton(ctx, cs) -> Kernel:
    return _gemm_triton(ctx, cs, transposed=True)


@lowering("matmul", backend="triton")
def matmul_triton(ctx, cs) -> Kernel:
    return _gemm_triton(ctx, cs, transposed=False)


@lowering("max_pool2d", backend="triton")
def max_pool2d_triton(ctx, cs) -> Kernel:
    node = cs.group.anchor
    x, out, a = ctx.storage(node.inputs[0]), ctx.storage(node.output), node.attrs
    pool = ctx.kernels.max_pool2d_nhwc
    return Kernel(node.name, lambda: pool(x, a["kernel"], a["stride"], a["padding"],
                                          a["dilation"], out=out))


@lowering("avg_pool2d", backend="triton")
def avg_pool2d_triton(ctx, cs) -> Kernel:
    node = cs.group.anchor
    x, out, a = ctx.storage(node.inputs[0]), ctx.storage(node.output), node.attrs
    pool = ctx.kernels.avg_pool2d_nhwc
    return Kernel(node.name, lambda: pool(x, a["kernel"], a["stride"], a["padding"],
                                          a["count_include_pad"], out=out))


@lowering("global_avg_pool", backend="triton")
def global_avg_pool_triton(ctx, cs) -> Kernel:
    node = cs.group.anchor
    x, out = ctx.storage(node.inputs[0]), ctx.storage(node.output)
    flat = out.view(out.shape[0], out.shape[3])                  # [N, 1, 1, C] -> [N, C]
    pool = ctx.kernels.global_avg_pool_nhwc
    return Kernel(node.name, lambda: pool(x, out=flat))


@lowering("relu", backend="triton")
def relu_triton(ctx, cs) -> Kernel:
    node = cs.group.anchor
    x, out = ctx.storage(node.inputs[0]).view(-1), ctx.storage(node.output).view(-1)
    relu = ctx.kernels.relu
    return Kernel(node.name, lambda: relu(x, out))


@lowering("add", backend="triton")
def add_triton(ctx, cs) -> Kernel:
    node = cs.group.anchor
    a, b = (ctx.storage(t).view(-1) for t in node.inputs)
    out = ctx.storage(node.output).view(-1)
    add = ctx.kernels.add
    return Kernel(node.name, lambda: add(a, b, out))


@lowering("batch_norm", backend="triton")
def batch_norm_triton(ctx, cs) -> Kernel:
    """Standalone (unfused) inference batch norm: x·scale[c] + shift[c]. The channel is the
    innermost storage dim for NHWC activations and [N, C]; an [N, C, L] tensor has L inside."""
    node = cs.group.anchor
    x_t = node.inputs[0]
    x, out = ctx.storage(x_t).view(-1), ctx.storage(node.output).view(-1)
    c = x_t.shape[1]
    inner = x_t.shape[2] if x_t.ndim == 3 else 1
    params = node.inputs[1:]
    scale, shift = ctx.resident((c,)), ctx.resident((c,))
    dynamic = not ctx.is_static(*params)
    static_params = {t.name: ctx.resident((c,)) for t in params if ctx.is_static(t)}
    affine = ctx.kernels.channel_affine

    def prepare():
        if not dynamic:
            gamma, beta, mean, var = (np.asarray(t.value, np.float64) for t in params)
            sc, sh = bn_scale_shift(gamma, beta, mean, var, node.attrs["eps"])
            ctx.upload(scale, sc)
            ctx.upload(shift, sh)
        else:                                  # run() folds on the device from these
            for t in params:
                if t.name in static_params:
                    ctx.upload(static_params[t.name], t.value)

    def run():
        if dynamic:
            gamma, beta, mean, var = (static_params[t.name] if t.name in static_params
                                      else ctx.value(t).float() for t in params)
            s = gamma / ctx.torch.sqrt(var + node.attrs["eps"])
            scale.copy_(s)
            shift.copy_(beta - mean * s)
        affine(x, scale, shift, out, channels=c, inner=inner)

    return Kernel(node.name, run, prepare, dynamic=dynamic)


@lowering("softmax", backend="triton")
def softmax_triton(ctx, cs) -> Kernel:
    """Rows over the logical last axis. A 4-D tensor's last logical axis (W) is not the
    innermost of its NHWC storage, so it is softmaxed through a logical-layout temporary."""
    node = cs.group.anchor
    x_t = node.inputs[0]
    x, out = ctx.storage(x_t), ctx.storage(node.output)
    softmax = ctx.kernels.softmax_rows
    if x_t.ndim != 4:
        return Kernel(node.name, lambda: softmax(x, out))
    tmp_in = ctx.resident(x_t.shape, x.dtype)
    tmp_out = ctx.resident(x_t.shape, x.dtype)

    def run():
        tmp_in.copy_(to_logical(x_t, x))
        softmax(tmp_in, tmp_out)
        out.copy_(to_storage(x_t, tmp_out))

    return Kernel(node.name, run)


@lowering("flatten", backend="triton")
def flatten_triton(ctx, cs) -> Kernel:
    """A layout change, not arithmetic: NHWC storage back to row-major NCHW order, then a
    reshape (a plain copy when the input is not 4-D)."""
    node = cs.group.anchor
    x_t = node.inputs[0]
    logical = to_logical(x_t, ctx.storage(x_t))
    dst = ctx.storage(node.output).view(x_t.shape)
    return Kernel(node.name, lambda: dst.copy_(logical))


# Lowerings of the training ops live in their own modules; importing them registers them.
from . import triton_conv_grad, triton_train  # noqa: E402,F401
