"""The Program: what lower() hands a backend, and all a backend reads.

A Program is the plan as a bulk-synchronous schedule (`bsp`): per planned step an Exchange (the
bytes its busiest tile receives), the ComputeSet, a Sync, and for an op split over a reduction
(conv input channels or kernel rows, a matmul's K, a weight gradient's batch) a Reduce and a
second Sync. A backend walks `bsp` in order: it runs each ComputeSet and each Reduce; on a
machine with shared memory an Exchange or a Sync has nothing to move or wait for.

A ComputeSet carries everything its kernel needs, so no backend imports the planner:
  the anchor op application (op name, attributes, input tensors) and every node of the set;
  the fused pointwise chain as a PointwiseProgram (the epilogue of a conv / matmul, or the
  whole set for a pointwise region); an inference batch norm folded into the anchor;
  the vertex table, its column pairs named (`columns`, the codelet's order: the op Space's
  dims); and, on its Reduce, the reduction boxes (the output boxes over the kept dims).

Buffers: activations get buffers by liveness (a buffer is reused once its tensor's last reader
has run). An assigned value (an optimizer update, a running statistic) whose compute set can
write its variable in place does so (`inplace`): no buffer, no copy at the end of the run.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .graph import Node, Tensor


@dataclass(frozen=True)
class Operand:
    """A tensor a pointwise program reads, broadcast to the program's shape: for each output
    axis, the operand's axis it indexes (-1: broadcast, the operand has size 1 there or lacks
    the axis). `tensor` None is the anchor's result (operand 0 of an epilogue)."""
    tensor: Tensor | None
    axes: tuple[int, ...]

    @property
    def contiguous(self) -> bool:
        """Read element for element with the output (same shape)."""
        return self.tensor is None or (len(self.axes) == self.tensor.ndim and
                                       self.axes == tuple(range(self.tensor.ndim)))


@dataclass(frozen=True)
class Instr:
    op: str                        # a primitive of ops/pointwise.py
    args: tuple[int, ...]          # value ids (see PointwiseProgram)


@dataclass(frozen=True)
class PointwiseProgram:
    """A fused chain of pointwise primitives over a tensor of `shape`, in SSA form. Value ids:
    [0, len(operands)) the operands, then the immediates (constants folded into the code), then
    one per instruction. `result` is the value stored (in `dtype`; a bool output stores v != 0).
    Values are computed in fp32; a bool operand reads as 0 or 1."""
    shape: tuple[int, ...]
    dtype: str
    operands: tuple[Operand, ...]
    immediates: tuple[float, ...]
    code: tuple[Instr, ...]
    result: int

    @property
    def num_inputs(self) -> int:
        return len(self.operands) + len(self.immediates)

    def value_kind(self, v: int) -> str:
        n = len(self.operands)
        return "operand" if v < n else "immediate" if v < self.num_inputs else "instr"

    def describe(self) -> str:
        names = [f"in{i}" for i in range(len(self.operands))]
        names += [repr(v) for v in self.immediates]
        for ins in self.code:
            names.append(f"{ins.op}({', '.join(names[a] for a in ins.args)})")
        return names[self.result]

    def key(self) -> tuple:
        """What a compiled kernel for this program depends on (not the operands' names)."""
        return (self.shape, self.dtype,
                tuple((o.tensor is None, None if o.tensor is None else o.tensor.shape,
                       None if o.tensor is None else o.tensor.dtype, o.axes)
                      for o in self.operands),
                self.immediates, tuple((i.op, i.args) for i in self.code), self.result)


@dataclass
class Exchange:
    step: int
    bytes_in: int                   # bytes the busiest tile receives
    cycles: float


@dataclass
class Sync:
    step: int
    cycles: float


@dataclass
class Reduce:
    """The partial-sum reduction of a step split over reduce dims (its own compute set on an
    IPU: exchange of the partial slabs, then the adds): one vertex per output box."""
    step: int
    columns: tuple[str, ...]        # the kept dims, in the space's order
    vertices: np.ndarray            # int32 [Vr, 2*len(columns)]: (lo, hi) per kept dim
    tiles: np.ndarray
    cycles: float


@dataclass
class ComputeSet:
    index: int                      # the plan step it executes
    name: str
    op: str                         # the anchor op's name, or "pointwise" for a region
    anchor: Node | None             # the anchor op application (None for a region)
    nodes: tuple[Node, ...]         # every node, in execution order (the reference runs these)
    inputs: tuple[Tensor, ...]      # tensors read from outside the set, in order of first use
    output: Tensor
    columns: tuple[str, ...]        # the vertex table's dims, one (lo, hi) column pair each
    vertices: np.ndarray            # int32 [V, 2*len(columns)]
    tiles: np.ndarray               # int32 [V]
    folded_bn: Node | None = None   # an inference batch_norm folded into the anchor
    pointwise: PointwiseProgram | None = None   # the chain (an anchor's epilogue: operand 0 is
                                                # the anchor's result)
    reduce: Reduce | None = None
    repeats: int = 1
    phase: str = "forward"
    method: str = "direct"          # which codelet computes the anchor (Space.method)

    def table(self, *names: str, extents: tuple[int, ...] = ()) -> np.ndarray:
        """The vertex table's column pairs for `names`, in that order; a dim the table lacks
        is unsplit: (0, extent). Raises naming the set if the table has a dim not named."""
        if self.vertices.ndim != 2 or self.vertices.shape[1] != 2 * len(self.columns):
            raise ValueError(f"compute set '{self.name}' ({self.op}): its vertex table of shape "
                             f"{self.vertices.shape} does not have 2 columns per dim of "
                             f"{self.columns}")
        unknown = [d for d in self.columns if d not in names]
        if unknown:
            raise ValueError(f"compute set '{self.name}' ({self.op}): its vertex table splits "
                             f"dims {unknown} that the codelet does not know (it takes "
                             f"{names})")
        cols = []
        for k, name in enumerate(names):
            if name in self.columns:
                i = self.columns.index(name)
                cols.append(self.vertices[:, 2 * i:2 * i + 2])
            else:
                cols.append(np.tile(np.array([0, extents[k]], np.int32),
                                    (len(self.vertices), 1)))
        return np.ascontiguousarray(np.concatenate(cols, axis=1), dtype=np.int32)


@dataclass
class Program:
    graph: object
    plan: object                                # for reports only; backends never read it
    bsp: list                                   # Exchange | ComputeSet | Sync | Reduce
    compute_sets: list[ComputeSet]
    buffer_of: dict[str, int] = field(default_factory=dict)   # tensor name -> buffer id
    buffer_bytes: list[int] = field(default_factory=list)
    last_use: dict[str, int] = field(default_factory=dict)
    inplace: dict[str, str] = field(default_factory=dict)     # assigned value -> its variable

    def activation_bytes(self) -> int:
        """Bytes of all activation buffers (after reuse)."""
        return sum(self.buffer_bytes)

    def describe(self) -> str:
        counts = {k: sum(isinstance(s, k) for s in self.bsp)
                  for k in (Exchange, ComputeSet, Sync, Reduce)}
        naive = sum(cs.output.nbytes for cs in self.compute_sets)
        return (f"Program: {counts[ComputeSet]} compute sets, {counts[Exchange]} exchanges, "
                f"{counts[Reduce]} reductions, {counts[Sync]} syncs; "
                f"{len(self.buffer_bytes)} activation buffers, "
                f"{self.activation_bytes() / 2**20:.1f} MiB (without reuse "
                f"{naive / 2**20:.1f} MiB); {len(self.inplace)} updates in place")


# -- building a pointwise program from nodes ---------------------------------------------------

def broadcast_axes(shape: tuple, out_shape: tuple) -> tuple[int, ...]:
    """For each axis of out_shape, the axis of `shape` it reads (NumPy broadcasting), or -1."""
    k = len(out_shape) - len(shape)
    return tuple(d - k if d >= k and shape[d - k] == n else -1 for d, n in enumerate(out_shape))


def pointwise_program(nodes, out: Tensor, acc: Tensor | None = None) -> PointwiseProgram:
    """The program computing `out` from `nodes` (pointwise ops, in execution order). `acc`: the
    anchor's result, read as operand 0. A constant scalar is folded in as an immediate (a
    constant's value never changes); every other tensor from outside is an operand."""
    operands: list[Operand] = []
    imms: list[float] = []
    code: list[Instr] = []
    value: dict[str, tuple[str, int]] = {}       # tensor name -> (kind, index)
    if acc is not None:
        operands.append(Operand(None, tuple(range(len(out.shape)))))
        value[acc.name] = ("operand", 0)

    def ref(t: Tensor) -> tuple[str, int]:
        if t.name in value:
            return value[t.name]
        if t.kind == "constant" and t.size == 1 and t.value is not None:
            imms.append(float(np.asarray(t.value, np.float64).reshape(())))
            value[t.name] = ("immediate", len(imms) - 1)
        else:
            operands.append(Operand(t, broadcast_axes(t.shape, out.shape)))
            value[t.name] = ("operand", len(operands) - 1)
        return value[t.name]

    for node in nodes:
        args = [ref(t) for t in node.inputs]
        if node.op.pointwise == "identity":        # expand, cast: the value flows through
            value[node.output.name] = args[0]
            continue
        code.append(Instr(node.op.name, tuple(args)))     # resolved to ids below
        value[node.output.name] = ("instr", len(code) - 1)

    n_in, n_imm = len(operands), len(imms)

    def vid(kind_index) -> int:
        kind, i = kind_index
        return i if kind == "operand" else n_in + i if kind == "immediate" else n_in + n_imm + i
    code = [Instr(ins.op, tuple(vid(a) for a in ins.args)) for ins in code]
    return PointwiseProgram(tuple(out.shape), out.dtype, tuple(operands), tuple(imms),
                            tuple(code), vid(value[out.name]))
