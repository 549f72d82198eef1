"""ig.grad: reverse-mode differentiation of a static graph, appending the backward ops to it.

Each op's gradient rule lives with the op (OpDef.grad: (node, dy, needs) -> one gradient per
input, built from registered ops). grad() walks the nodes between the variables and the loss in
reverse order, calls each rule with the gradient flowing into the node's output, and adds up
the contributions of a tensor read by several ops (a residual branch, a weight used twice) with
`add`. The backward ops join the forward node's layer (Node.scope) and are marked
Node.phase = "backward", so plans and pictures can tell forward, backward and update apart.
"""
from __future__ import annotations

import numpy as np

from . import ops
from .graph import DTYPES, Graph, GraphError, Tensor


def _on_path(graph: Graph, loss: Tensor, sources: set[str]) -> set[str]:
    """Names of tensors that depend on a source and that the loss depends on."""
    depends = set(sources)
    for node in graph.nodes:
        if any(t.name in depends for t in node.inputs):
            depends.update(t.name for t in node.outputs)
    needed = {loss.name}
    for node in reversed(graph.nodes):
        if any(t.name in needed for t in node.outputs):
            needed.update(t.name for t in node.inputs)
    return depends & needed


def grad(graph: Graph, loss: Tensor, wrt=None) -> dict[str, Tensor]:
    """Gradients of the scalar `loss` with respect to `wrt` (variables or their names; default:
    every trainable variable the loss depends on), appended to `graph`. Returns {variable name:
    gradient tensor}, in the order of `wrt` (default: graph.variables order)."""
    graph.check_owned(loss, "grad: loss")
    if loss.size != 1 or not loss.dtype.startswith("float"):
        raise GraphError(f"grad: the loss must be a floating-point scalar, got '{loss.name}' "
                         f"{loss.shape} {loss.dtype}")
    if wrt is None:
        targets = [t for t in graph.variables.values() if t.trainable]
    else:
        targets = []
        for item in wrt:
            t = graph.variables.get(item) if isinstance(item, str) else item
            if t is None:
                raise GraphError(f"grad: '{item}' is not a variable of graph '{graph.name}'")
            graph.check_owned(t, "grad: wrt")
            if t.kind != "variable":
                raise GraphError(f"grad: '{t.name}' is {t.kind}, not a variable")
            targets.append(t)
    names = {t.name for t in targets}
    path = _on_path(graph, loss, names)
    if wrt is None:
        targets = [t for t in targets if t.name in path]
    else:
        unused = [t.name for t in targets if t.name not in path]
        if unused:
            raise GraphError(f"grad: the loss '{loss.name}' does not depend on {unused}")
    forward = [n for n in graph.nodes if n.output.name in path]
    seed = graph.constant(np.ones(loss.shape, DTYPES[loss.dtype]), dtype=loss.dtype,
                          name=graph.fresh_name(f"{loss.name}.grad_seed"))
    pending: dict[str, list[Tensor]] = {loss.name: [seed]}

    def total(t: Tensor, scope: str) -> Tensor:
        parts = pending.pop(t.name)
        acc = parts[0]
        for part in parts[1:]:
            with _as(graph, scope):
                acc = ops.add(acc, part, name=graph.fresh_name(f"{t.name}.grad_sum"))
        return acc

    for node in reversed(forward):
        out = node.output
        if out.name not in pending:
            continue                       # reaches a source, but not the loss
        dy = total(out, node.scope)
        needs = [t.name in path for t in node.inputs]
        if node.op.grad is None:
            raise GraphError(f"grad: {node.op.name} '{node.name}' has no gradient rule, but "
                             f"the gradient of '{loss.name}' must flow through it to "
                             f"{[t.name for t, n in zip(node.inputs, needs) if n]}")
        with _as(graph, node.scope):
            grads = node.op.grad(node, dy, needs)
        for t, g, need in zip(node.inputs, grads, needs):
            if need and g is not None:
                if g.shape != t.shape:
                    raise GraphError(f"grad: the rule of {node.op.name} '{node.name}' gave a "
                                     f"gradient of shape {g.shape} for '{t.name}' {t.shape}")
                pending.setdefault(t.name, []).append(g)
    result = {}
    for t in targets:
        if t.name not in pending:
            raise GraphError(f"grad: no gradient reached '{t.name}'")
        result[t.name] = total(t, "")
    return result


class _as:
    """Mark the nodes appended inside as backward nodes of layer `scope`."""

    def __init__(self, graph: Graph, scope: str):
        self.graph, self.scope = graph, scope

    def __enter__(self):
        self.start = len(self.graph.nodes)

    def __exit__(self, *exc):
        for node in self.graph.nodes[self.start:]:
            node.scope = self.scope
            node.phase = "backward"
