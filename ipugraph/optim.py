"""Optimizers as graph ops: each appends its update of every parameter to the graph and assigns
the results to the variables (Graph.assign), so one Engine.run is one training step: forward,
backward and update, with the variables updated in place for the next run.

    grads = ig.grad(g, loss)
    ig.optim.sgd(g, grads, lr=g.input("lr", ()), momentum=0.9, weight_decay=1e-4)

`lr` is a scalar tensor (a fed input, so a schedule can change it every step) or a Python float
(a constant). Semantics are torch.optim's: SGD with momentum (dampening 0, not Nesterov) keeps a
momentum buffer per parameter, initialised to the first step's direction (zeros plus it, the
same thing); Adam keeps both moments and a step count.

The updates are written in the pointwise vocabulary, so the planner fuses each into one pass
over the parameter (SGD: the new momentum buffer, then the new weight; Adam: each moment, then
the weight); the scalar parts (Adam's bias corrections) are scalar ops computed once per step.
"""
from __future__ import annotations

import numpy as np

from . import init, ops
from .graph import Graph, GraphError, Tensor


def _scalar(g: Graph, value, what: str) -> Tensor:
    if isinstance(value, Tensor):
        g.check_owned(value, what)
        if value.size != 1 or not value.dtype.startswith("float"):
            raise GraphError(f"{what}: must be a float scalar tensor, got '{value.name}' "
                             f"{value.shape} {value.dtype}")
        return value
    value = float(value)
    if not np.isfinite(value) or value < 0:
        raise GraphError(f"{what}: must be a finite number >= 0, got {value}")
    return g.constant(np.float32(value), name=g.fresh_name("optim.lr"))


def _params(g: Graph, grads: dict) -> list[tuple[Tensor, Tensor]]:
    if not isinstance(grads, dict) or not grads:
        raise GraphError("optimizer: grads must be the non-empty dict ig.grad returns "
                         "({variable name: gradient})")
    pairs = []
    for name, grad in grads.items():
        w = g.variables.get(name)
        if w is None:
            raise GraphError(f"optimizer: '{name}' is not a variable of graph '{g.name}'")
        g.check_owned(grad, f"optimizer: gradient of '{name}'")
        if grad.shape != w.shape:
            raise GraphError(f"optimizer: gradient '{grad.name}' {grad.shape} does not match "
                             f"'{name}' {w.shape}")
        pairs.append((w, grad))
    return pairs


class _update:
    """Mark the nodes appended inside as the update phase of parameter w's layer."""

    def __init__(self, g: Graph, w: Tensor):
        self.g, self.scope = g, w.name.rsplit(".", 1)[0] if "." in w.name else ""

    def __enter__(self):
        self.start = len(self.g.nodes)

    def __exit__(self, *exc):
        for node in self.g.nodes[self.start:]:
            node.scope = self.scope
            node.phase = "update"


def _state(g: Graph, w: Tensor, what: str) -> Tensor:
    t = g.variable(f"{w.name}.{what}", w.shape, w.dtype, init=init.zeros(), trainable=False)
    t.optimizer_state = True
    return t


def sgd(g: Graph, grads: dict, lr, momentum: float = 0.0, weight_decay: float = 0.0
        ) -> dict[str, Tensor]:
    """torch.optim.SGD(lr, momentum, weight_decay) as graph ops; returns {name: new value}:
        d = grad + weight_decay·w;  buf = momentum·buf + d;  w = w - lr·buf (or lr·d)."""
    if momentum < 0 or weight_decay < 0:
        raise GraphError(f"sgd: momentum {momentum} and weight_decay {weight_decay} must be >= 0")
    lr = _scalar(g, lr, "sgd: lr")
    new = {}
    for w, grad in _params(g, grads):
        with _update(g, w):
            d = ops.add(grad, ops.mul(w, float(weight_decay))) if weight_decay else grad
            if momentum:
                buf = _state(g, w, "momentum_buffer")
                d = ops.add(ops.mul(buf, float(momentum)), d,
                            name=g.fresh_name(f"{w.name}.sgd_momentum"))
                g.assign(buf, d)
            new[w.name] = ops.sub(w, ops.mul(d, lr), name=g.fresh_name(f"{w.name}.sgd_step"))
            g.assign(w, new[w.name])
    return new


def adam(g: Graph, grads: dict, lr, betas=(0.9, 0.999), eps: float = 1e-8,
         weight_decay: float = 0.0) -> dict[str, Tensor]:
    """torch.optim.Adam(lr, betas, eps, weight_decay) as graph ops; returns {name: new value}:
        m = b1·m + (1-b1)·g;  v = b2·v + (1-b2)·g²;  t = t + 1
        w = w - (lr / (1 - b1^t)) · m / (sqrt(v) / sqrt(1 - b2^t) + eps)."""
    b1, b2 = (float(b) for b in betas)
    if not (0 <= b1 < 1 and 0 <= b2 < 1) or eps <= 0 or weight_decay < 0:
        raise GraphError(f"adam: betas {betas} must be in [0, 1), eps {eps} > 0, "
                         f"weight_decay {weight_decay} >= 0")
    lr = _scalar(g, lr, "adam: lr")
    name = g.fresh_name("optim.adam_step")
    step = g.variable(name, (), "float32", value=np.float32(0), trainable=False)
    step.optimizer_state = True
    start = len(g.nodes)
    t = ops.add(step, 1.0, name=g.fresh_name(f"{name}.next"))
    g.assign(step, t)
    # Per step, once: step size lr / (1 - b1^t) and sqrt(1 - b2^t).
    step_size = ops.div(lr, ops.sub(1.0, ops.pow(b1, t)))
    root_bc2 = ops.sqrt(ops.sub(1.0, ops.pow(b2, t)))
    for node in g.nodes[start:]:
        node.phase = "update"
    new = {}
    for w, grad in _params(g, grads):
        with _update(g, w):
            if weight_decay:
                grad = ops.add(grad, ops.mul(w, float(weight_decay)))
            m_var, v_var = _state(g, w, "exp_avg"), _state(g, w, "exp_avg_sq")
            m = ops.add(ops.mul(m_var, b1), ops.mul(grad, 1.0 - b1),
                        name=g.fresh_name(f"{w.name}.adam_m"))
            v = ops.add(ops.mul(v_var, b2), ops.mul(ops.mul(grad, grad), 1.0 - b2),
                        name=g.fresh_name(f"{w.name}.adam_v"))
            g.assign(m_var, m)
            g.assign(v_var, v)
            denom = ops.add(ops.div(ops.sqrt(v), root_bc2), float(eps))
            new[w.name] = ops.sub(w, ops.div(ops.mul(m, step_size), denom),
                                  name=g.fresh_name(f"{w.name}.adam_step"))
            g.assign(w, new[w.name])
    return new
