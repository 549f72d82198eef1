"""The reference backend: every op's NumPy reference, node by node (fused sets unfused).

It computes in float64 by default (precision=) and returns each output in its declared dtype,
which makes it the oracle the other backends are tested against. It follows the Program's
order but not its vertex tables: partitions are checked by the planner tests instead. Like the
other backends it holds the variables it updates (in their declared dtype) until read.
"""
from __future__ import annotations

import numpy as np

from ..graph import DTYPES
from .registry import backend


class ReferenceExecutable:
    def __init__(self, program, precision: str = "float64"):
        self.program = program
        self.graph = program.graph
        self.precision = np.dtype(precision)
        self.outputs = dict(self.graph.outputs)       # as lowered (see Executable)
        self.updates = dict(self.graph.updates)
        self._env: dict = {}
        self._held: dict = {}                 # variable -> (version, value) this run wrote

    def _cast(self, a):
        a = np.asarray(a)
        return a.astype(self.precision) if a.dtype.kind == "f" else a

    def run(self, feeds: dict[str, np.ndarray], profile: bool = False) -> dict[str, np.ndarray]:
        with self.graph.lock:
            graph = self.graph
            env = {name: self._cast(a) for name, a in feeds.items()}
            for t in graph.tensors.values():
                if t.kind in ("variable", "constant"):
                    env[t.name] = self._cast(t.value)
            for cs in self.program.compute_sets:
                for node in cs.nodes:
                    args = [env[t.name] for t in node.inputs]
                    result = node.op.reference(*args, **node.attrs)
                    results = result if isinstance(result, tuple) else (result,)
                    for t, value in zip(node.outputs, results):
                        env[t.name] = value
            self._env = env
            out = {name: self.read(t) for name, t in self.outputs.items()}
            for name, t in self.updates.items():
                var = graph.variables[name]
                value = self.read(t)
                var.updated_by(self)
                self._held[name] = (var.version, value)
            return out

    def read(self, t) -> np.ndarray:
        """The last run's value of tensor t, in its declared dtype."""
        return np.asarray(self._env[t.name]).astype(DTYPES[t.dtype])

    def read_variable(self, t) -> np.ndarray:
        return self._held[t.name][1]


@backend("reference")
def make_reference(program, **options) -> ReferenceExecutable:
    return ReferenceExecutable(program, **options)
