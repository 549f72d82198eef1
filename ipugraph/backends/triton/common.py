"""The triton backend's shared layer: the runtime check, the executable (torch tensors on the
device), the Context a lowering builds its Kernel with, and the weight folding / packing.

Each compute set is one launch (or a fixed short sequence) of a Triton kernel (kernels/,
installed as ipugraph.kernels) on a GPU, or on the CPU under Triton's interpreter
(TRITON_INTERPRET=1). It runs the Program's compute sets in order over the Program's buffers,
but re-blocks every compute set for the GPU: the plan's vertex tables (what one IPU tile or CPU
core computes) are ignored and each kernel picks its own tile sizes by autotuning. A conv or
gemm with a fused chain is its kernel (bias, residual add and ReLU in its epilogue) and, for the
rest of the chain, one generated pointwise kernel over its output.

Layout: as on the cpu backend (backends/layout.py), 4-D tensors NHWC, the rest row-major.

Options (ig.compile(g, backend="triton", ...)):
  allow_tf32=False  float32 convs and gemms use IEEE fp32 dots; True allows TF32 tensor cores
                    (about 1e-3 relative error per product; faster on Ampere and later).
  cuda_graph=False  on a GPU, capture the whole run (every launch) in one CUDA graph at the
                    first run and replay it afterwards.

Feeds: NumPy arrays or torch tensors (CUDA tensors on a GPU). Through Engine.run every output
is a fresh NumPy array; TritonExecutable.run(feeds) called with torch tensors returns fresh
torch tensors on the device instead.

Without a CUDA device and without TRITON_INTERPRET=1 the backend is unavailable and
ig.compile(..., backend="triton") raises RuntimeError saying so. TRITON_INTERPRET is read at
the first use of the backend (when ipugraph.kernels is first imported, @triton.jit fixes the
mode of every kernel), not when ipugraph is imported.
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

from ...graph import DTYPES, GraphError, Tensor
from ...ops.norm import bn_scale_shift
from ..executable import Executable, Kernel
from ..layout import storage_shape, to_logical, to_storage

NO_DEVICE = ("triton backend: no CUDA device is available and TRITON_INTERPRET is not set to 1. "
             "Run on a machine with a GPU, or set TRITON_INTERPRET=1 before the first use of "
             "the backend to run its kernels on the CPU in Triton's interpreter (slow; meant "
             "for tests)")
SUPPORTED_DTYPES = ("float32", "float16", "bool")


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
    from ... import kernels
    if kernels.INTERPRET != interpret:
        loaded = "with" if kernels.INTERPRET else "without"
        raise RuntimeError(f"triton backend: ipugraph.kernels were first imported {loaded} "
                           "TRITON_INTERPRET=1 and the setting has changed since; @triton.jit "
                           "fixes it at import, so set TRITON_INTERPRET before the first use "
                           "of the backend (in a fresh process)")
    device = torch.device("cpu") if interpret else torch.device("cuda", torch.cuda.current_device())
    return torch, kernels, device


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
        """A tensor's current value in logical layout: a view of its device storage."""
        return to_logical(t, self.exe.storage(t))

    def host_value(self, t: Tensor) -> np.ndarray:
        """A variable's or constant's current value on the host (logical layout)."""
        if self.exe.holds(t):
            return np.asarray(self.exe.fetch(t))
        return np.asarray(t.value)

    def dtype(self, t: Tensor):
        return self.exe.torch_dtype(t.dtype)

    def resident(self, shape, dtype=None):
        """A tensor on the device that lives as long as the executable (packed weights)."""
        return self.torch.zeros(tuple(shape), dtype=dtype or self.torch.float32,
                                device=self.device)

    def upload(self, dst, array: np.ndarray) -> None:
        """Copy a host array into a resident tensor (cast to its dtype)."""
        dst.copy_(self.torch.from_numpy(np.array(array, order="C")))

    @staticmethod
    def is_static(*tensors: Tensor | None) -> bool:
        return all(t is None or t.kind in ("variable", "constant") for t in tensors)


class TritonExecutable(Executable):
    accepts_torch = True           # Engine passes torch (CUDA) tensors through unconverted

    def __init__(self, program, allow_tf32: bool = False, cuda_graph: bool = False):
        super().__init__(program)
        from ..registry import lowering_for
        self.torch, self.kernel_module, self.device = runtime()
        torch = self.torch
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
                                 f"kernels take float32, float16 and bool, with integer inputs "
                                 "for labels and seeds (use backend='reference' for other "
                                 "dtypes)")
        self.buffers = [torch.empty(nbytes, dtype=torch.uint8, device=self.device)
                        for nbytes in program.buffer_bytes]
        for name, t in graph.inputs.items():
            self._storage[name] = torch.empty(storage_shape(t), dtype=self.torch_dtype(t.dtype),
                                              device=self.device)
        for cs in program.compute_sets:
            t = cs.output
            if t.name in program.inplace:
                self._storage[t.name] = self.storage(graph.variables[program.inplace[t.name]])
                continue
            buf = self.buffers[program.buffer_of[t.name]]
            self._storage[t.name] = (buf[:t.nbytes].view(self.torch_dtype(t.dtype))
                                     .view(storage_shape(t)))
        ctx = Context(self)
        self.kernels = [lowering_for(cs.op, "triton")(ctx, cs) for cs in program.compute_sets]
        for k, cs in zip(self.kernels, program.compute_sets):
            k.op = cs.op
        self._refresh()                            # pack the static operands now, at compile
        self._graph = None

    def torch_dtype(self, name: str):
        return getattr(self.torch, name)

    # -- storage hooks -------------------------------------------------------------------------
    def new_storage(self, t: Tensor):
        dtype = t.dtype if t.dtype in SUPPORTED_DTYPES or t.dtype.startswith("int") else "float32"
        if t.dtype == "float64":
            dtype = "float32"
        return self.torch.empty(storage_shape(t), dtype=self.torch_dtype(dtype),
                                device=self.device)

    def load(self, arr, t: Tensor, value) -> None:
        value = np.array(value, order="C")            # (keeps a 0-d value 0-d)
        arr.copy_(to_storage(t, self.torch.from_numpy(value)))

    def copy(self, dst, src) -> None:
        dst.copy_(src)

    def fetch(self, t: Tensor) -> np.ndarray:
        return np.array(to_logical(t, self.storage(t)).contiguous().cpu().numpy(), order="C",
                        copy=True)

    def load_feed(self, name: str, a) -> None:
        from ...engine import FeedError
        torch = self.torch
        graph = self.graph
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

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            self.torch.cuda.synchronize()

    # -- running ---------------------------------------------------------------------------------
    def run(self, feeds: dict, profile: bool = False) -> dict:
        """Run once. NumPy feeds give fresh NumPy outputs; if any feed is a torch tensor the
        outputs are fresh torch tensors on the device."""
        torch = self.torch
        missing = sorted(set(self.graph.inputs) - set(feeds))
        if missing:
            from ...engine import FeedError
            raise FeedError(f"triton backend: feeds miss inputs {missing}")
        as_torch = any(torch.is_tensor(a) for a in feeds.values())
        with self.graph.lock:
            if self.cuda_graph and not profile:
                out = self._run_graph(feeds)
            else:
                out = self._run(feeds, profile)
            if as_torch:
                return {name: to_logical(t, self.storage(t)).clone(
                    memory_format=torch.contiguous_format)
                    for name, t in self.outputs.items()}
            return out

    def _run_graph(self, feeds):
        """Through a CUDA graph of the launches: captured at the first call, after one eager
        run (on a side stream) that compiles and autotunes every kernel outside the capture."""
        torch = self.torch
        self._refresh()
        for name, a in feeds.items():
            self.load_feed(name, a)
        if self._graph is None:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.launch()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                self.launch()
            self._graph = graph
        self._graph.replay()
        out = {name: self.fetch(t) for name, t in self.outputs.items()}
        self._apply_updates()
        return out


class Weights:
    """The anchor's weight and bias with a following inference batch norm folded in
    (w' = w·scale per output channel, b' = b·scale + shift), packed by `pack` (a function of a
    logical-layout torch weight) into resident device tensors `packed` and `bias` (fp32; None
    when the op has neither a bias nor a batch norm).

    Static weights are folded in float64 on the host by prepare(). A weight or bias computed at
    run time (dynamic) is folded on the device by refresh(), from its storage and the static
    parts that prepare() uploaded."""

    def __init__(self, ctx: Context, cs, w_t: Tensor, b_t: Tensor | None, out_axis: int,
                 packed_shape: tuple, pack: Callable):
        self.ctx, self.w_t, self.b_t, self.out_axis, self.pack = ctx, w_t, b_t, out_axis, pack
        self.bn = cs.folded_bn
        self.k = w_t.shape[out_axis]
        self.packed = ctx.resident(packed_shape, ctx.dtype(w_t))
        self.bias = ctx.resident((self.k,)) if (b_t is not None or self.bn is not None) else None
        self.dynamic = not ctx.is_static(w_t, b_t)
        bn = tuple(self.bn.inputs[1:]) if self.bn is not None else ()
        self.packs = tuple(t for t in (w_t, b_t, *bn) if t is not None and ctx.is_static(t))
        self._static: dict = {}

    def _affine(self):
        """(scale, shift) of the folded batch norm in float64, or (None, None)."""
        if self.bn is None:
            return None, None
        gamma, beta, mean, var = (np.asarray(self.ctx.host_value(t), np.float64)
                                  for t in self.bn.inputs[1:])
        return bn_scale_shift(gamma, beta, mean, var, self.bn.attrs["eps"])

    def _axis_shape(self, ndim: int) -> list:
        shape = [1] * ndim
        shape[self.out_axis] = self.k
        return shape

    def prepare(self) -> None:
        torch, ctx = self.ctx.torch, self.ctx
        scale, shift = self._affine()
        if not self.dynamic:
            w = np.asarray(ctx.host_value(self.w_t), np.float64)
            b = (np.zeros(self.k) if self.b_t is None
                 else np.asarray(ctx.host_value(self.b_t), np.float64))
            if scale is not None:
                w = w * scale.reshape(self._axis_shape(w.ndim))
                b = b * scale + shift
            self.packed.copy_(self.pack(torch.from_numpy(w)))
            if self.bias is not None:
                ctx.upload(self.bias, b)
            return
        # Dynamic: upload the static parts; refresh() does the rest on the device.
        for key, t in (("w", self.w_t), ("b", self.b_t)):
            if t is not None and ctx.is_static(t):
                self._static[key] = torch.from_numpy(
                    np.asarray(ctx.host_value(t), np.float32)).to(ctx.device)
        if scale is not None:
            self._static["scale"] = torch.from_numpy(scale.astype(np.float32)).to(ctx.device)
            self._static["shift"] = torch.from_numpy(shift.astype(np.float32)).to(ctx.device)

    def kernel_fields(self) -> dict:
        """prepare() at compile and when a static part changes; refresh() before every run
        when the weight is computed at run time."""
        fields = {"prepare": self.prepare, "packs": self.packs}
        if self.dynamic:
            fields["refresh"] = self.refresh
        return fields

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


__all__ = ["Context", "Kernel", "TritonExecutable", "Weights", "runtime", "NO_DEVICE"]
