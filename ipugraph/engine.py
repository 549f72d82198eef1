"""compile() and Engine: plan (if not given a plan), lower, hand the Program to a backend."""
from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from .graph import DTYPES, Graph, GraphError
from .lower import Program, lower
from .planner import Plan, plan as make_plan


class FeedError(GraphError):
    """A run's feeds do not match the graph's inputs."""


class Engine:
    def __init__(self, graph: Graph, plan: Plan, program: Program, backend: str, executable):
        self.graph = graph
        self.plan = plan
        self.program = program
        self.backend = backend
        self._exe = executable

    def check_feeds(self, feeds) -> dict[str, np.ndarray]:
        if not isinstance(feeds, dict):
            raise FeedError(f"Engine.run takes a dict of input name -> array, got "
                            f"{type(feeds).__name__}")
        expected = self.graph.inputs
        missing = sorted(set(expected) - set(feeds))
        unknown = sorted(set(feeds) - set(expected))
        if missing or unknown:
            parts = []
            if missing:
                parts.append("missing " + ", ".join(f"'{n}' {expected[n].shape} "
                                                    f"{expected[n].dtype}" for n in missing))
            if unknown:
                parts.append("unknown " + ", ".join(f"'{n}'" for n in unknown))
            raise FeedError(f"graph '{self.graph.name}': feeds do not match its inputs: "
                            f"{'; '.join(parts)} (inputs are {sorted(expected)})")
        checked = {}
        keep_torch = getattr(self._exe, "accepts_torch", False)
        for name, t in expected.items():
            a = feeds[name]
            if hasattr(a, "detach") and hasattr(a, "numpy"):      # a torch tensor
                if keep_torch:                 # checked here, stays on its device
                    dtype = str(a.dtype).removeprefix("torch.")
                    if tuple(a.shape) != t.shape or dtype != t.dtype:
                        raise FeedError(f"feed '{name}' is a torch tensor {tuple(a.shape)} "
                                        f"{dtype}, the graph input is {t.shape} {t.dtype}")
                    checked[name] = a
                    continue
                a = a.detach().cpu().numpy()
            a = np.asarray(a)
            if tuple(a.shape) != t.shape:
                raise FeedError(f"feed '{name}' has shape {tuple(a.shape)}, the graph input is "
                                f"{t.shape}")
            if a.dtype != DTYPES[t.dtype]:
                raise FeedError(f"feed '{name}' has dtype {a.dtype}, the graph input is "
                                f"{t.dtype} (convert with .astype(np.{t.dtype}))")
            checked[name] = a
        return checked

    def run(self, feeds: dict, profile: bool = False) -> dict[str, np.ndarray]:
        """Run once; returns {output name: array}: fresh NumPy arrays, safe to keep (a backend
        that takes torch tensors, e.g. triton, returns device tensors for torch feeds). The
        graph's assigned values (optimizer steps, running statistics) are written into their
        variables, which stay in this engine until read (Tensor.value, Engine.variables).

        Thread-safe: runs of the engines built on one graph are serialised (they share its
        variables). profile=True times every compute set; the result is `last_profile`."""
        return self._exe.run(self.check_feeds(feeds), profile=profile)

    __call__ = run

    @property
    def last_profile(self):
        """The Profile of the last run(profile=True) (cpu and triton backends)."""
        return getattr(self._exe, "last_profile", None)

    @property
    def variables(self) -> Mapping:
        """{name: current value} of the graph's variables, read on demand (read-only arrays)."""
        return _Values(self.graph)

    def __repr__(self) -> str:
        return (f"Engine(graph='{self.graph.name}', backend='{self.backend}', "
                f"target={self.plan.target.name}, steps={len(self.plan.steps)})")


def compile(graph: Graph, backend: str = "cpu", plan: Plan | None = None, target=None,
            fuse: bool = True, methods=None, **options) -> Engine:
    """Plan `graph` (unless given a plan), lower it and build an executable on `backend`.
    `methods` restricts how ops may be computed (planner.plan's argument)."""
    from .backends import get_backend
    if not graph.outputs and not graph.updates:
        raise GraphError(f"graph '{graph.name}' has no outputs: mark one with g.output(name, t)")
    if plan is None:
        plan = make_plan(graph, target, fuse=fuse, methods=methods)
    elif plan.graph is not graph:
        raise GraphError("compile: the plan was made for another graph")
    program = lower(plan)
    factory = get_backend(backend)
    return Engine(graph, plan, program, backend, factory(program, **options))


class _Values(Mapping):
    def __init__(self, graph: Graph):
        self._vars = graph.variables

    def __getitem__(self, name: str) -> np.ndarray:
        return self._vars[name].value

    def __iter__(self):
        return iter(self._vars)

    def __len__(self) -> int:
        return len(self._vars)
