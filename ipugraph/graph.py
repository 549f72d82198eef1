"""The IR: a static graph of tensors and ops with fixed shapes and dtypes.

A Graph is append-only, so its node list is always in topological order. Every op is
checked by its shape rule when it is added (see ops/registry.py), so a graph that builds
is a graph every backend can run.
"""
from __future__ import annotations

import contextlib
import re
import threading
from typing import Any, Callable, Iterable

import numpy as np

# dtype names the IR carries; the NumPy type each is stored as.
DTYPES: dict[str, np.dtype] = {
    "float32": np.dtype(np.float32),
    "float16": np.dtype(np.float16),
    "float64": np.dtype(np.float64),
    "int32": np.dtype(np.int32),
    "int64": np.dtype(np.int64),
    "bool": np.dtype(np.bool_),          # comparisons (ops.greater, ...) and masks
}
FLOAT_DTYPES = ("float16", "float32", "float64")


class GraphError(ValueError):
    """A graph that cannot be built: a bad name, a bad shape, a bad feed."""


def canonical_dtype(dtype: Any) -> str:
    """'float32', np.float32, np.dtype('float32') and torch-style names all map to one string."""
    name = getattr(dtype, "name", None) or str(dtype)
    name = name.replace("torch.", "")
    if name not in DTYPES:
        try:
            name = np.dtype(dtype).name
        except TypeError:
            pass
    if name not in DTYPES:
        raise GraphError(f"unsupported dtype {dtype!r}; ipugraph supports {sorted(DTYPES)}")
    return name


def _check_shape(shape: Iterable[int], what: str) -> tuple[int, ...]:
    try:
        shape = tuple(int(d) for d in shape)
    except TypeError:
        raise GraphError(f"{what}: shape must be a sequence of ints, got {shape!r}") from None
    if any(d <= 0 for d in shape):
        raise GraphError(f"{what}: every dimension must be positive, got {shape}")
    return shape


class Tensor:
    """A value in the graph. kind is 'input', 'variable', 'constant' or 'op' (an op's output).

    Values. A variable's value lives where it is used: after an Engine run that updates it
    (an optimizer step, a running statistic) the freshest copy is the engine's, and reading
    `value` fetches it then. `value` is a read-only array: an in-place edit such as
    ``w.value[0, 0] = 5`` raises instead of being silently lost; assign a new array
    (``w.value = w.value * 5``) and every engine sees it at its next run. A constant's value is
    fixed when it is created.

    Arithmetic and comparison operators build ops: ``x * 2``, ``1 - x``, ``-x``, ``x / y``,
    ``x ** 2``, ``x > 0``, ``x == y`` (Python scalars on either side; NumPy broadcasting).
    A Tensor has no truth value at build time (``if x > 0`` raises): use ``ig.ops.where``."""

    __hash__ = object.__hash__           # identity, though == builds an op

    def __init__(self, graph: "Graph", name: str, shape: tuple[int, ...], dtype: str, kind: str,
                 node: "Node | None" = None, value: np.ndarray | None = None):
        self.graph = graph
        self.name = name
        self.shape = shape
        self.dtype = dtype
        self.kind = kind
        self.node = node
        self._value = value
        self.version = 0                     # bumped whenever the value changes
        self._holder = None                  # an executable holding a newer value, if any
        self.trainable = kind == "variable"   # False for buffers such as BN running stats
        self.optimizer_state = False          # True for ig.optim's momentum buffers, moments

    # -- static facts ------------------------------------------------------------------
    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def itemsize(self) -> int:
        return DTYPES[self.dtype].itemsize

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize

    @property
    def is_parameter(self) -> bool:
        return self.kind == "variable"

    # -- values (variables and constants only) -----------------------------------------
    @property
    def value(self) -> np.ndarray | None:
        """The current value (read-only), fetched from the engine that last updated it."""
        holder = self._holder
        if holder is not None:
            self._holder = None
            self._store(holder.read_variable(self))
        return self._value

    @value.setter
    def value(self, array: np.ndarray) -> None:
        if self.kind not in ("variable", "constant"):
            raise GraphError(f"tensor '{self.name}' is an {self.kind}; only variables and "
                             "constants hold values")
        if self.kind == "constant" and self._value is not None:
            raise GraphError(f"constant '{self.name}' is fixed when it is created; use a "
                             "variable for a value that changes")
        array = np.asarray(array)
        if tuple(array.shape) != self.shape:
            raise GraphError(f"value for '{self.name}' has shape {tuple(array.shape)}, "
                             f"the tensor is {self.shape}")
        # A private copy: later edits to the caller's array must not reach the graph unseen.
        self._holder = None
        self._store(np.array(array, dtype=DTYPES[self.dtype], order="C", copy=True))
        self.version += 1
        self.graph._values_version += 1

    def _store(self, array: np.ndarray) -> None:
        array.flags.writeable = False
        self._value = array

    def updated_by(self, holder) -> None:
        """An executable wrote a new value of this variable; `value` reads it from there."""
        self._holder = holder
        self.version += 1
        self.graph._values_version += 1

    # -- sugar -------------------------------------------------------------------------
    def __repr__(self) -> str:
        return f"Tensor('{self.name}', {self.shape}, {self.dtype})"

    def __bool__(self):
        raise GraphError(f"tensor '{self.name}' is symbolic: it has no truth value while the "
                         "graph is built (use ig.ops.where for a choice per element)")

    def __matmul__(self, other: "Tensor") -> "Tensor":
        from . import ops
        return ops.matmul(self, other)

    def _op(name: str, swap: bool = False):
        def method(self, other):
            from . import ops
            fn = getattr(ops, name)
            return fn(other, self) if swap else fn(self, other)
        method.__name__ = name
        return method

    __add__, __radd__ = _op("add"), _op("add", True)
    __sub__, __rsub__ = _op("sub"), _op("sub", True)
    __mul__, __rmul__ = _op("mul"), _op("mul", True)
    __truediv__, __rtruediv__ = _op("div"), _op("div", True)
    __pow__, __rpow__ = _op("pow"), _op("pow", True)
    __gt__, __lt__ = _op("greater"), _op("less")
    __eq__ = _op("equal")
    del _op

    def __ne__(self, other):
        from . import ops
        return ops.equal(ops.equal(self, other), False)

    def __neg__(self):
        from . import ops
        return ops.neg(self)

    def __abs__(self):
        from . import ops
        return ops.abs(self)


class Node:
    """One op application: an OpDef, its input tensors, its attributes, its output tensors."""

    def __init__(self, op, inputs: tuple[Tensor, ...], attrs: dict, name: str, scope: str):
        self.op = op
        self.inputs = inputs
        self.attrs = attrs
        self.name = name
        self.scope = scope
        self.outputs: tuple[Tensor, ...] = ()
        self.index = -1                     # position in graph.nodes
        self.phase = "forward"              # "backward" (ig.grad) or "update" (ig.optim)

    @property
    def output(self) -> Tensor:
        return self.outputs[0]

    def cost(self):
        return self.op.cost(self)

    def __repr__(self) -> str:
        ins = ", ".join(t.name for t in self.inputs)
        return f"Node({self.op.name} '{self.name}': {ins} -> {self.output.shape})"


_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_.:/\-]*$")


class Graph:
    """A static compute graph for one target.

    >>> g = Graph(Target.host()); x = g.input("x", (1, 3, 8, 8))
    """

    def __init__(self, target=None, name: str = "graph"):
        from .target import Target
        self.target = target if target is not None else Target.host()
        self.name = name
        self.tensors: dict[str, Tensor] = {}
        self.nodes: list[Node] = []
        self.inputs: dict[str, Tensor] = {}
        self.variables: dict[str, Tensor] = {}
        self.outputs: dict[str, Tensor] = {}
        self.updates: dict[str, Tensor] = {}    # variable name -> its new value (assign())
        self._scopes: list[str] = []
        self._counters: dict[str, int] = {}
        self._values_version = 0            # bumped when any value changes
        self.lock = threading.RLock()       # serialises the runs of the engines built on it

    # -- naming ------------------------------------------------------------------------
    @contextlib.contextmanager
    def scope(self, name: str):
        """Name ops built inside as '<scope>.<op>' and record the layer they belong to."""
        self._scopes.append(name)
        try:
            yield
        finally:
            self._scopes.pop()

    @property
    def current_scope(self) -> str:
        return ".".join(self._scopes)

    def fresh_name(self, base: str) -> str:
        prefix = f"{self.current_scope}.{base}" if self._scopes else base
        if prefix not in self.tensors:
            return prefix
        k = self._counters.get(prefix, 0)
        while f"{prefix}_{k}" in self.tensors:
            k += 1
        self._counters[prefix] = k + 1
        return f"{prefix}_{k}"

    def _register(self, tensor: Tensor) -> Tensor:
        if not _NAME_RE.match(tensor.name):
            raise GraphError(f"invalid tensor name {tensor.name!r}")
        if tensor.name in self.tensors:
            raise GraphError(f"a tensor named '{tensor.name}' already exists in graph "
                             f"'{self.name}' ({self.tensors[tensor.name]!r})")
        self.tensors[tensor.name] = tensor
        return tensor

    # -- leaves ------------------------------------------------------------------------
    def input(self, name: str, shape, dtype="float32") -> Tensor:
        """A value fed at every run: Engine.run({name: array})."""
        t = Tensor(self, name, _check_shape(shape, f"input '{name}'"), canonical_dtype(dtype),
                   "input")
        self.inputs[name] = self._register(t)
        return t

    def variable(self, name: str, shape, dtype="float32", *,
                 init: Callable[[tuple, np.dtype], np.ndarray] | None = None,
                 value: np.ndarray | None = None, trainable: bool = True) -> Tensor:
        """A value held by the graph (init=ig.init.* or value=ndarray). trainable=False marks a
        buffer (e.g. BN running statistics): stored and loaded like a parameter, not counted
        by num_params() and not differentiated."""
        shape = _check_shape(shape, f"variable '{name}'")
        t = Tensor(self, name, shape, canonical_dtype(dtype), "variable")
        t.trainable = trainable
        if (init is None) == (value is None):
            raise GraphError(f"variable '{name}' needs exactly one of init= or value=")
        array = np.asarray(init(shape, DTYPES[t.dtype]) if init is not None else value)
        if tuple(array.shape) != shape:
            raise GraphError(f"value for '{name}' has shape {tuple(array.shape)}, "
                             f"the tensor is {shape}")
        self._register(t)
        t.value = array
        self.variables[name] = t
        return t

    def constant(self, value, name: str | None = None, dtype=None) -> Tensor:
        array = np.asarray(value, dtype=None if dtype is None else DTYPES[canonical_dtype(dtype)])
        if array.dtype == np.float64 and dtype is None:
            array = array.astype(np.float32)        # like torch: Python floats become float32
        name = name or self.fresh_name("const")
        t = Tensor(self, name, tuple(array.shape), canonical_dtype(array.dtype), "constant")
        self._register(t)
        t.value = array
        return t

    def output(self, name: str, tensor: Tensor) -> Tensor:
        self.check_owned(tensor, f"output '{name}'")
        if name in self.outputs:
            raise GraphError(f"graph '{self.name}' already has an output named '{name}'")
        if name in self.tensors and self.tensors[name] is not tensor:
            raise GraphError(f"output name '{name}' is already the name of another tensor")
        self.outputs[name] = tensor
        return tensor

    def assign(self, variable: Tensor, value: Tensor) -> None:
        """Write `value` into `variable` at the end of every run (an in-place update: an
        optimizer step, a running statistic). Every op of the run reads the old value; the
        next run reads the new one."""
        self.check_owned(variable, "assign: variable")
        self.check_owned(value, f"assign to '{variable.name}': value")
        if variable.kind != "variable":
            raise GraphError(f"assign: '{variable.name}' is {variable.kind}, not a variable")
        if (value.shape, value.dtype) != (variable.shape, variable.dtype):
            raise GraphError(f"assign: value '{value.name}' {value.shape} {value.dtype} does not "
                             f"match variable '{variable.name}' {variable.shape} "
                             f"{variable.dtype}")
        if value.kind != "op":
            raise GraphError(f"assign to '{variable.name}': the value must be computed by an op, "
                             f"got {value.kind} '{value.name}'")
        if variable.name in self.updates:
            raise GraphError(f"assign: variable '{variable.name}' is already updated by "
                             f"'{self.updates[variable.name].name}'")
        self.updates[variable.name] = value

    def kept(self) -> set[str]:
        """Names of the tensors a run must keep to its end: outputs and assigned values."""
        return {t.name for t in self.outputs.values()} | {t.name for t in self.updates.values()}

    # -- ops ---------------------------------------------------------------------------
    def check_owned(self, tensor: Any, what: str) -> None:
        if not isinstance(tensor, Tensor):
            raise GraphError(f"{what}: expected an ipugraph Tensor, got {type(tensor).__name__}")
        if tensor.graph is not self:
            raise GraphError(f"{what}: tensor '{tensor.name}' belongs to graph "
                             f"'{tensor.graph.name}', not '{self.name}'")

    def add_node(self, op, inputs: tuple[Tensor, ...], attrs: dict,
                 name: str | None = None) -> tuple[Tensor, ...]:
        """Check the op's shape rule and append it; returns its output tensors."""
        for i, t in enumerate(inputs):
            self.check_owned(t, f"{op.name}: input {i}")
        node_name = name or self.fresh_name(op.name)
        if name is not None and self._scopes:
            node_name = f"{self.current_scope}.{name}"
        out_specs = op.infer(node_name, inputs, attrs)
        node = Node(op, tuple(inputs), dict(attrs), node_name, self.current_scope)
        outs = []
        for k, (shape, dtype) in enumerate(out_specs):
            tname = node_name if k == 0 else f"{node_name}:{k}"
            outs.append(self._register(Tensor(self, tname, tuple(shape), dtype, "op", node=node)))
        node.outputs = tuple(outs)
        node.index = len(self.nodes)
        self.nodes.append(node)
        return node.outputs

    # -- queries -----------------------------------------------------------------------
    def __getitem__(self, name: str) -> Tensor:
        if name in self.outputs:
            return self.outputs[name]
        if name in self.tensors:
            return self.tensors[name]
        raise KeyError(f"graph '{self.name}' has no tensor or output named '{name}'")

    def __contains__(self, name: str) -> bool:
        return name in self.outputs or name in self.tensors

    def consumers(self) -> dict[str, list[Node]]:
        """tensor name -> the nodes that read it, in order."""
        users: dict[str, list[Node]] = {name: [] for name in self.tensors}
        for node in self.nodes:
            for t in node.inputs:
                users[t.name].append(node)
        return users

    def num_params(self) -> int:
        """Elements in trainable variables; like torch's parameters(), buffers such as BN
        running statistics are not counted."""
        return sum(t.size for t in self.variables.values() if t.trainable)

    def macs(self) -> int:
        """Multiply-accumulates of one run (conv, matmul and linear; others are ~0)."""
        return sum(node.cost().macs for node in self.nodes)

    def flops(self) -> int:
        return sum(node.cost().flops for node in self.nodes)

    def __repr__(self) -> str:
        return (f"Graph('{self.name}', {len(self.nodes)} ops, {len(self.inputs)} inputs, "
                f"{len(self.variables)} variables, target={self.target.name})")
