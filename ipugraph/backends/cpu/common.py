"""The cpu backend's shared layer: the executable, the Context a lowering builds its Kernel
with, and the argument checks every family uses.

Each compute set is ONE call into ipugraph._C (two for a split reduction: the partial sums, then
their reduction at the Program's Reduce entry), which runs the set's vertex table under
`#pragma omp parallel for` (csrc/). Every array handed to C++ is checked here first (dtype,
contiguity, shape), so a bad call is a Python exception, not a crash; the C++ side checks again.
Storage: 4-D tensors NHWC, the rest row-major (backends/layout.py); float32, bool for masks,
integer inputs for labels and seeds.
"""
from __future__ import annotations

import numpy as np

from ...graph import DTYPES, GraphError, Tensor
from ...ops.pointwise import PRIMITIVES
from ..executable import Executable, Kernel
from ..layout import storage_shape, to_logical, to_storage

try:
    from ... import _C as C
except ImportError as e:                                    # pragma: no cover
    raise ImportError("the C++ extension ipugraph._C is not built; run `make ext` (or "
                      "`pip install -e .`) first") from e

_TABLE = tuple((p.name, p.arity) for p in PRIMITIVES.values())
if tuple(tuple(x) for x in C.pointwise_ops()) != _TABLE:    # pragma: no cover
    raise ImportError("ipugraph._C was built from another pointwise table than "
                      "ipugraph/ops/pointwise.py: rebuild it (`make ext`)")

STORED = ("float32", "bool")          # what the kernels read and write


def check_array(a: np.ndarray, shape: tuple, what: str, dtype=np.float32) -> np.ndarray:
    if a.dtype != dtype or not a.flags.c_contiguous or tuple(a.shape) != tuple(shape):
        raise ValueError(f"cpu backend: {what} must be a C-contiguous {np.dtype(dtype).name} "
                         f"array of shape {tuple(shape)}, got {a.dtype} {a.shape} "
                         f"(contiguous={a.flags.c_contiguous})")
    return a


def what(node, role: str = "") -> str:
    return f"{node.op.name} '{node.name}'" + (f" {role}" if role else "")


class Context:
    """What a lowering may ask of the executable: storage for tensors, current values of
    parameters (for packing), checked views."""

    def __init__(self, exe: "CpuExecutable"):
        self.exe = exe

    def storage(self, t: Tensor) -> np.ndarray:
        return self.exe.storage(t)

    def array(self, t: Tensor, role: str, node=None) -> np.ndarray:
        """t's float32 storage, checked."""
        label = f"{what(node, role)}" if node is not None else role
        return check_array(self.storage(t), storage_shape(t), label)

    def flat(self, t: Tensor, role: str, node=None) -> np.ndarray:
        return self.array(t, role, node).reshape(-1)

    def value(self, t: Tensor) -> np.ndarray:
        """t's current value in logical layout (a view of this executable's storage when it
        holds it, else the tensor's value)."""
        if t.kind in ("variable", "constant") and not self.exe.holds(t):
            return t.value
        return to_logical(t, self.storage(t))

    @staticmethod
    def is_static(*tensors: Tensor | None) -> bool:
        return all(t is None or t.kind in ("variable", "constant") for t in tensors)


class CpuExecutable(Executable):
    def __init__(self, program):
        super().__init__(program)
        from ..registry import lowering_for
        graph = program.graph
        for t in graph.tensors.values():
            ok = t.dtype in STORED or t.kind == "constant" or (
                t.kind == "input" and t.dtype in ("int64", "int32"))
            if not ok:
                raise GraphError(f"cpu backend: tensor '{t.name}' is {t.dtype}; the CPU kernels "
                                 "are float32 (bool for masks), with integer inputs for labels "
                                 "and seeds (use backend='reference' for other dtypes)")
        self.buffers = [np.empty(nbytes, dtype=np.uint8) for nbytes in program.buffer_bytes]
        for name, t in graph.inputs.items():
            self._storage[name] = np.empty(storage_shape(t), dtype=DTYPES[t.dtype])
        for cs in program.compute_sets:
            t = cs.output
            if t.name in program.inplace:          # written into its variable's storage
                self._storage[t.name] = self.storage(graph.variables[program.inplace[t.name]])
                continue
            buf = self.buffers[program.buffer_of[t.name]]
            self._storage[t.name] = buf[:t.nbytes].view(DTYPES[t.dtype]).reshape(storage_shape(t))
        ctx = Context(self)
        self.kernels = [lowering_for(cs.op, "cpu")(ctx, cs) for cs in program.compute_sets]
        for k, cs in zip(self.kernels, program.compute_sets):
            k.op = cs.op
        self._refresh()                            # pack the static operands now, at compile

    def new_storage(self, t: Tensor) -> np.ndarray:
        dtype = np.float32 if t.dtype.startswith("float") else DTYPES[t.dtype]
        return np.empty(storage_shape(t), dtype=dtype)

    def load(self, arr: np.ndarray, t: Tensor, value) -> None:
        np.copyto(arr, to_storage(t, np.asarray(value)), casting="unsafe")

    def copy(self, dst: np.ndarray, src: np.ndarray) -> None:
        np.copyto(dst, src)

    def fetch(self, t: Tensor) -> np.ndarray:
        return np.array(to_logical(t, self.storage(t)), order="C", copy=True)

    def load_feed(self, name: str, a: np.ndarray) -> None:
        t = self.graph.inputs[name]
        np.copyto(self._storage[name], to_storage(t, a))


def packing(prepare, packs, dynamic: bool) -> dict:
    """The Kernel fields of a kernel that packs `packs` with prepare(): at compile and when they
    change, or before every run when one of them is computed at run time (dynamic)."""
    if dynamic:
        return {"refresh": prepare}
    return {"prepare": prepare, "packs": tuple(packs)}


def flat_table(cs) -> np.ndarray:
    """The (start, end) element ranges of a flat compute set (its single "i" dim)."""
    return cs.table("i", extents=(cs.output.size,))


__all__ = ["C", "Context", "CpuExecutable", "Kernel", "check_array", "flat_table", "packing",
           "what"]
