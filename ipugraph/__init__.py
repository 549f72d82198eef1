"""ipugraph: a Poplar-like static compute graph, planned over IPU-style tiles and run with
C++/OpenMP (CPU) or Triton (GPU) kernels."""
from . import init, ops, optim
from .autodiff import grad
from .engine import Engine, FeedError, compile
from .graph import DTYPES, Graph, GraphError, Node, Tensor
from .lower import Program, lower
from .planner import Plan, PlanError, plan
from .target import Target

__version__ = "0.1.0"


def __getattr__(name):
    # Heavier subpackages load on first use so `import ipugraph` stays quick.
    import importlib
    if name in ("models", "interop", "viz", "backends", "training", "datasets", "record"):
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module 'ipugraph' has no attribute '{name}'")


__all__ = ["init", "ops", "optim", "grad", "Engine", "FeedError", "compile", "DTYPES", "Graph", "GraphError",
           "Node", "Tensor", "Program", "lower", "Plan", "PlanError", "plan", "Target",
           "models", "interop", "viz", "backends", "training", "datasets", "record"]
