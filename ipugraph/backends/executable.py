"""What the cpu and triton executables share: running a Program's BSP schedule, the residency of
variables, the kernels' packed operands, the in-place updates and the profile.

Residency. Variables live in the executable's storage. A run first loads the variables and
constants whose value changed since it last saw them (Tensor.version) and re-prepares only the
kernels that pack one of them (a conv's packed weights); then it walks `program.bsp`, running
each compute set's kernel (and its reduction at the Reduce entry); then it copies out the
outputs and writes every assigned value (an optimizer step, a running statistic) into its
variable (nothing to copy for an update computed in place), marking the variable as held here:
Tensor.value reads it from this executable on demand.

Threads. run() may be called from several threads: the runs of every engine built on one graph
are serialised by the graph's lock (they share its variables), so each run sees and leaves a
consistent state.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from ..program import ComputeSet, Instr, PointwiseProgram, Reduce


@dataclass
class Kernel:
    """A compiled compute set. compute() runs its vertices (a split reduction: the partial sums;
    reduce() then adds them at the Program's Reduce entry; None when compute() adds them
    itself). prepare() packs its static operands (weights, folded batch norms) and runs again
    whenever the value of a tensor in `packs` changes; refresh() runs right before every
    compute() (it packs a weight computed or fed at run time)."""
    name: str
    compute: Callable[[], None]
    reduce: Callable[[], None] | None = None
    prepare: Callable[[], None] | None = None
    packs: tuple = ()
    refresh: Callable[[], None] | None = None
    partials: object = None
    op: str = ""

    @property
    def dynamic(self) -> bool:
        return self.refresh is not None


@dataclass
class Profile:
    """One run, timed: seconds per compute set (and its reduction) and outside the kernels."""
    kernels: list = field(default_factory=list)   # (name, op, phase, seconds)
    prepare: float = 0.0                          # checking and repacking static operands
    feeds: float = 0.0
    outputs: float = 0.0
    updates: float = 0.0
    total: float = 0.0

    @property
    def kernel_seconds(self) -> float:
        return sum(k[3] for k in self.kernels)

    @property
    def outside_seconds(self) -> float:
        """Everything but the compute sets' kernels: orchestration, feeds, outputs, updates and
        repacking."""
        return self.total - self.kernel_seconds

    def by_kind(self) -> dict[str, float]:
        """Seconds per op kind (the compute set's op, 'pointwise' for a fused chain)."""
        return {op: sec for op, (_, sec) in self.kinds().items()}

    def kinds(self) -> dict[str, tuple[int, float]]:
        """(compute sets, seconds) per op kind, slowest first."""
        out: dict[str, tuple[int, float]] = {}
        for _, op, _, sec in self.kernels:
            n, total = out.get(op, (0, 0.0))
            out[op] = (n + 1, total + sec)
        return dict(sorted(out.items(), key=lambda kv: -kv[1][1]))

    def to_dict(self) -> dict:
        """The figures of a profile as plain numbers (milliseconds), for JSON."""
        ms = 1e3
        return {"total_ms": self.total * ms, "kernels_ms": self.kernel_seconds * ms,
                "outside_ms": self.outside_seconds * ms,
                "outside_share": self.outside_seconds / self.total if self.total else 0.0,
                "prepare_ms": self.prepare * ms, "feeds_ms": self.feeds * ms,
                "outputs_ms": self.outputs * ms, "updates_ms": self.updates * ms,
                "compute_sets": len(self.kernels),
                "by_kind": {op: {"compute_sets": n, "ms": sec * ms}
                            for op, (n, sec) in self.kinds().items()}}

    def table(self) -> str:
        """Per op kind: compute sets, ms, share of the run; then what ran outside the kernels."""
        head = f"{'op kind':<26} {'sets':>5} {'ms':>9} {'share':>7}"
        lines = [head, "-" * len(head)]
        for op, (n, sec) in self.kinds().items():
            lines.append(f"{op:<26} {n:>5} {sec * 1e3:>9.1f} {sec / self.total:>7.1%}")
        out = self.outside_seconds
        lines.append(f"{'outside the kernels':<26} {'':>5} {out * 1e3:>9.1f} "
                     f"{out / self.total:>7.1%}")
        lines.append(f"  (checking and repacking changed weights {self.prepare * 1e3:.1f} ms, "
                     f"feeds {self.feeds * 1e3:.1f}, outputs {self.outputs * 1e3:.1f}, variable "
                     f"updates {self.updates * 1e3:.1f}; the rest is dispatch)")
        lines.append(f"{'total':<26} {len(self.kernels):>5} {self.total * 1e3:>9.1f}")
        return "\n".join(lines)


def split_epilogue(prog: PointwiseProgram):
    """What a conv / gemm codelet's own epilogue can do in registers, peeled off the front of a
    fused chain: a residual add of a same-shaped operand, then a ReLU. Returns (residual tensor
    or None, relu, the rest of the chain as a program reading the peeled result as operand 0, or
    None when nothing is left). The rest must not read the accumulator before the peel."""
    code = list(prog.code)
    n_in = prog.num_inputs
    v, i, residual, relu = 0, 0, None, False
    if i < len(code) and code[i].op == "add" and 0 in code[i].args and \
            code[i].args.count(0) == 1:
        other = code[i].args[1] if code[i].args[0] == 0 else code[i].args[0]
        if other < len(prog.operands) and prog.operands[other].contiguous and \
                prog.operands[other].tensor is not None:
            residual, v, i = prog.operands[other].tensor, n_in + i, i + 1
    if i < len(code) and code[i].op == "relu" and code[i].args == (v,):
        relu, v, i = True, n_in + i, i + 1
    if i == 0:
        return None, False, prog
    peeled = set(range(n_in, n_in + i)) | {0}
    rest = code[i:]
    if any(a in peeled and a != v for ins in rest for a in ins.args) or \
            (prog.result in peeled and prog.result != v):
        return None, False, prog
    if not rest and prog.result == v:
        return residual, relu, None

    def remap(a: int) -> int:
        return 0 if a == v else a - i if a >= n_in else a
    rest = tuple(Instr(ins.op, tuple(remap(a) for a in ins.args)) for ins in rest)
    return residual, relu, PointwiseProgram(prog.shape, prog.dtype, prog.operands,
                                            prog.immediates, rest, remap(prog.result))


class Executable:
    """Subclasses provide the storage: new_storage(t), load(array, t, value) (a host logical
    value into storage), copy(dst, src), fetch(t) (a fresh host copy, logical layout),
    load_feed(name, array) and, for timing on a device, synchronize()."""

    def __init__(self, program):
        self.program = program
        self.graph = program.graph
        # What this executable was lowered for: outputs or updates added to the graph later
        # belong to the engines compiled after them (ipugraph.record compiles a second engine
        # with extra outputs on the same graph and variables).
        self.outputs = dict(self.graph.outputs)
        self.updates = dict(self.graph.updates)
        self._storage: dict = {}
        self._loaded: dict[str, int] = {}          # variable / constant -> version in storage
        self._packed: dict[int, dict] = {}         # kernel index -> {tensor: version packed}
        self._prepared: set[int] = set()
        self.kernels: list[Kernel] = []
        self.last_profile: Profile | None = None

    # -- storage ---------------------------------------------------------------------------
    def storage(self, t):
        """t's storage; a variable or constant read as an array gets one, loaded at the next
        run (and whenever its value changes)."""
        if t.name not in self._storage:
            if t.kind not in ("variable", "constant"):
                raise KeyError(f"{type(self).__name__}: no storage for tensor '{t.name}'")
            arr = self.new_storage(t)
            self.load(arr, t, t.value)
            self._storage[t.name] = arr
            self._loaded[t.name] = t.version
        return self._storage[t.name]

    def holds(self, t) -> bool:
        """Whether this executable's storage has t's current value."""
        return t.name in self._storage and self._loaded.get(t.name) == t.version

    # -- running ---------------------------------------------------------------------------
    def _refresh(self) -> None:
        graph = self.graph
        for name, arr in list(self._storage.items()):
            t = graph.tensors[name]
            if t.kind in ("variable", "constant") and self._loaded.get(name) != t.version:
                value = t.value                     # (may fetch it from another executable)
                self.load(arr, t, value)
                self._loaded[name] = t.version
        for i, k in enumerate(self.kernels):
            if k.prepare is None:
                continue
            seen = self._packed.setdefault(i, {})
            if i not in self._prepared or any(seen.get(t.name) != t.version for t in k.packs):
                self._prepared.add(i)
                k.prepare()
                for t in k.packs:
                    seen[t.name] = t.version

    def run(self, feeds: dict, profile: bool = False) -> dict:
        """One run: the outputs as fresh arrays; assigned variables updated in place."""
        with self.graph.lock:
            return self._run(feeds, profile)

    def _run(self, feeds, profile):
        clock = time.perf_counter
        prof = Profile() if profile else None
        t0 = clock()
        self._refresh()
        t1 = clock()
        for name, a in feeds.items():
            self.load_feed(name, a)
        t2 = clock()
        kernels = self.kernels
        if prof is None:
            self.launch()
        else:
            self.synchronize()
            for entry in self.program.bsp:
                if isinstance(entry, (ComputeSet, Reduce)):
                    idx = entry.index if isinstance(entry, ComputeSet) else entry.step
                    k = kernels[idx]
                    call = k.compute if isinstance(entry, ComputeSet) else k.reduce
                    if call is None:       # (a kernel that adds its partial sums itself)
                        continue
                    start = clock()
                    if k.refresh is not None and call is k.compute:
                        k.refresh()
                    call()
                    self.synchronize()
                    cs = self.program.compute_sets[idx]
                    prof.kernels.append((k.name, cs.op, cs.phase, clock() - start))
        t3 = clock()
        out = {name: self.fetch(t) for name, t in self.outputs.items()}
        t4 = clock()
        self._apply_updates()
        t5 = clock()
        if prof is not None:
            prof.prepare, prof.feeds, prof.outputs, prof.updates = t1 - t0, t2 - t1, t4 - t3, \
                t5 - t4
            prof.total = t5 - t0
            self.last_profile = prof
        return out

    def launch(self) -> None:
        """Every kernel, in the order of the Program's BSP schedule."""
        kernels = self.kernels
        for entry in self.program.bsp:
            if isinstance(entry, ComputeSet):
                k = kernels[entry.index]
                if k.refresh is not None:  # it packs a tensor computed (or fed) this run
                    k.refresh()
                k.compute()
            elif isinstance(entry, Reduce) and kernels[entry.step].reduce is not None:
                kernels[entry.step].reduce()

    def _apply_updates(self) -> None:
        graph = self.graph
        for var_name, value in self.updates.items():
            var = graph.variables[var_name]
            dst = self.storage(var)
            if value.name not in self.program.inplace:
                self.copy(dst, self._storage[value.name])
            var.updated_by(self)
            self._loaded[var_name] = var.version

    def read(self, t) -> np.ndarray:
        """A fresh host copy of tensor t's value from the last run, in its logical layout."""
        with self.graph.lock:
            return self.fetch(t)

    def read_variable(self, t) -> np.ndarray:
        """The value of variable t this executable holds (Tensor.value calls this)."""
        with self.graph.lock:
            return self.fetch(t)

    def synchronize(self) -> None:
        pass
