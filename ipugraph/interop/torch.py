"""Moving weights between a Graph and PyTorch: load_state_dict / state_dict.

Keys are variable names (ipugraph.models use torchvision's). Values may be torch tensors or
anything NumPy can read; torch itself is never imported here (a tensor is recognised by its
.detach/.numpy methods), so this module works where torch is not installed.

Loading is all-or-nothing: every key is checked first and one StateDictError lists everything
wrong (missing, unexpected, mis-shaped, non-numeric), so a failed load leaves the graph as it was.
Setting a value goes through Tensor.value, which casts to the variable's dtype and bumps the
graph's version, so engines compiled earlier repack their weights before their next run.
"""
from __future__ import annotations

from typing import Any, Mapping, NamedTuple

import numpy as np

from ..graph import Graph, GraphError

# BatchNorm's step counter: a training-time buffer with no counterpart in an inference graph.
IGNORED_SUFFIXES = ("num_batches_tracked",)


class IncompatibleKeys(NamedTuple):
    """What strict=False tolerated, as torch's Module.load_state_dict returns it."""
    missing_keys: list[str]
    unexpected_keys: list[str]


class StateDictError(GraphError):
    """A state_dict that does not fit the graph. The message lists every problem; the fields
    keep them for programs: missing / unexpected key names, mismatched (key, graph shape,
    state_dict shape) and invalid (key, why)."""

    def __init__(self, graph: str, missing=(), unexpected=(), mismatched=(), invalid=()):
        self.graph = graph
        self.missing, self.unexpected = list(missing), list(unexpected)
        self.mismatched, self.invalid = list(mismatched), list(invalid)
        lines = [f"state_dict does not fit graph '{graph}':"]
        if self.missing:
            lines.append(f"  missing keys ({len(self.missing)}): {_names(self.missing)}")
        if self.unexpected:
            lines.append(f"  unexpected keys ({len(self.unexpected)}): {_names(self.unexpected)}")
        for key, want, got in self.mismatched:
            lines.append(f"  '{key}': shape {got} in the state_dict, the graph's variable is "
                         f"{want}")
        for key, why in self.invalid:
            lines.append(f"  '{key}': {why}")
        super().__init__("\n".join(lines))


def _names(keys: list[str], limit: int = 20) -> str:
    shown = ", ".join(f"'{k}'" for k in keys[:limit])
    return shown + (f", ... ({len(keys) - limit} more)" if len(keys) > limit else "")


def _to_numpy(value: Any) -> np.ndarray:
    """A torch tensor (any device, requires_grad or not) or array-like as a NumPy array."""
    if hasattr(value, "detach") and hasattr(value, "numpy"):
        value = value.detach().cpu()
        try:
            return value.numpy()
        except TypeError:              # dtypes NumPy lacks (bfloat16): widen to float32 first
            return value.float().numpy()
    return np.asarray(value)


def load_state_dict(graph: Graph, state_dict: Mapping[str, Any],
                    strict: bool = True) -> IncompatibleKeys:
    """Set the graph's variables from `state_dict` (name -> torch tensor or array).

    strict=True (default): the keys must match the graph's variables exactly (keys ending in
    num_batches_tracked are ignored). strict=False loads the keys both sides have and returns
    the missing and unexpected ones, as torch does. A value of the wrong shape or a non-numeric
    value is an error either way. Raises StateDictError listing every problem.
    """
    if not isinstance(graph, Graph):
        raise TypeError(f"load_state_dict: expected an ipugraph Graph, got {type(graph).__name__}")
    if not isinstance(state_dict, Mapping):
        raise TypeError(f"load_state_dict: expected a mapping of name -> tensor, got "
                        f"{type(state_dict).__name__}")
    keys = [k for k in state_dict if not str(k).endswith(IGNORED_SUFFIXES)]
    unexpected = [k for k in keys if k not in graph.variables]
    # optimizer state (momentum buffers, Adam moments) is not part of a model's state_dict
    missing = [name for name, t in graph.variables.items()
               if name not in state_dict and not t.optimizer_state]
    mismatched, invalid, arrays = [], [], {}
    for key in keys:
        if key not in graph.variables:
            continue
        var = graph.variables[key]
        try:
            array = _to_numpy(state_dict[key])
        except Exception as e:          # whatever the object is, report it with its key
            invalid.append((key, f"cannot be read as an array ({type(e).__name__}: {e})"))
            continue
        if array.dtype.kind not in "fiu":
            invalid.append((key, f"is not numeric ({type(state_dict[key]).__name__} of dtype "
                                 f"{array.dtype})"))
        elif tuple(array.shape) != var.shape:
            mismatched.append((key, var.shape, tuple(array.shape)))
        else:
            arrays[key] = array
    if mismatched or invalid or (strict and (missing or unexpected)):
        raise StateDictError(graph.name, missing if strict else (),
                             unexpected if strict else (), mismatched, invalid)
    for key, array in arrays.items():
        # a copy: torch's .numpy() shares the parameter's memory, and a graph value that
        # changed behind its back would leave compiled engines with stale packed weights
        graph.variables[key].value = np.array(array, copy=True)
    return IncompatibleKeys(missing, unexpected)


def state_dict(graph: Graph) -> dict[str, np.ndarray]:
    """Every variable's current value (a copy), keyed by name, in creation order: the inverse of
    load_state_dict. For a torch module: {k: torch.from_numpy(v) for k, v in ...}. Optimizer
    state (momentum buffers, Adam moments) is left out, as in torch's module state_dict."""
    return {name: np.array(t.value, copy=True) for name, t in graph.variables.items()
            if not t.optimizer_state}
