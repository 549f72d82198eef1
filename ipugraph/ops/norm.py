"""batch_norm in its inference form: y = (x - mean) / sqrt(var + eps) * gamma + beta, per channel
(axis 1). Backends may fold it into the preceding conv's weights and bias. Below it, the training
form: batch statistics (bn_stats), normalisation with them, their gradient and torch's
running-statistics update."""
from __future__ import annotations

import numpy as np

from ..graph import GraphError, Tensor
from .registry import Cost, defop, elementwise_space, expect_float, expect_rank, fail, grad_name


def _bn_infer(node, inputs, attrs):
    x, gamma, beta, mean, var = inputs
    expect_rank("batch_norm", node, "x", x, (2, 3, 4))
    expect_float("batch_norm", node, x=x, gamma=gamma, beta=beta, mean=mean, var=var)
    c = x.shape[1]
    for role, t in (("gamma", gamma), ("beta", beta), ("running_mean", mean),
                    ("running_var", var)):
        if t.shape != (c,):
            raise fail("batch_norm", node, f"{role} must have shape ({c},) for x's {c} channels",
                       x=x, **{role: t})
    if not attrs["eps"] > 0:
        raise fail("batch_norm", node, f"eps must be > 0, got {attrs['eps']}")
    return [(x.shape, x.dtype)]


def _bn_cost(node) -> Cost:
    x = node.inputs[0]
    return Cost(0, 2 * x.size, sum(t.nbytes for t in node.inputs), node.output.nbytes)


def bn_scale_shift(gamma, beta, mean, var, eps):
    """The per-channel affine form of inference BN: y = x * scale + shift."""
    scale = gamma / np.sqrt(var + eps)
    return scale, beta - mean * scale


@defop("batch_norm", infer=_bn_infer, cost=_bn_cost, space=elementwise_space,
       attrs={"eps": 1e-5}, elementwise=True)
def batch_norm_op(x, gamma, beta, mean, var, *, eps):
    scale, shift = bn_scale_shift(gamma, beta, mean, var, eps)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return x * scale.reshape(shape) + shift.reshape(shape)


def batch_norm(x: Tensor, gamma: Tensor, beta: Tensor, mean: Tensor, var: Tensor,
               eps: float = 1e-5, name: str | None = None) -> Tensor:
    return batch_norm_op(x, gamma, beta, mean, var, eps=float(eps), name=name)


# -- training mode ----------------------------------------------------------------------------
# Batch statistics are their own op (bn_stats -> [2, C]: mean, biased variance) so that the
# normalisation, the running-statistics update and the backward pass all read one result.

def _channel_view(x: np.ndarray, stats: np.ndarray):
    """mean and var of a [2, C] stats array shaped to broadcast against x (channels on axis 1)."""
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return stats[0].reshape(shape), stats[1].reshape(shape)


def _expect_stats(op, node, x, **others):
    c = x.shape[1]
    for role, t in others.items():
        want = (2, c) if role in ("stats", "gstats") else (c,)
        if t.shape != want:
            raise fail(op, node, f"{role} must have shape {want} for x's {c} channels",
                       x=x, **{role: t})


def _bn_stats_infer(node, inputs, attrs):
    (x,) = inputs
    expect_rank("bn_stats", node, "x", x, (2, 3, 4))
    expect_float("bn_stats", node, x=x)
    if x.size // x.shape[1] < 2:
        raise fail("bn_stats", node, "batch statistics need more than one value per channel",
                   x=x)
    return [((2, x.shape[1]), x.dtype)]


def _channel_space(node, target):
    from .reduce import channel_space
    return channel_space(node, target)


@defop("bn_stats", infer=_bn_stats_infer, space=_channel_space,
       cost=lambda node: Cost(0, 3 * node.inputs[0].size, node.inputs[0].nbytes,
                              node.output.nbytes))
def bn_stats_op(x):
    axes = (0,) + tuple(range(2, x.ndim))
    return np.stack([x.mean(axis=axes), x.var(axis=axes)])


def _bn_train_infer(node, inputs, attrs):
    x, gamma, beta, stats = inputs
    expect_rank("batch_norm_train", node, "x", x, (2, 3, 4))
    expect_float("batch_norm_train", node, x=x, gamma=gamma, beta=beta, stats=stats)
    _expect_stats("batch_norm_train", node, x, gamma=gamma, beta=beta, stats=stats)
    return [(x.shape, x.dtype)]


@defop("batch_norm_train", infer=_bn_train_infer, cost=_bn_cost, space=elementwise_space,
       attrs={"eps": 1e-5}, elementwise=True)
def batch_norm_train_op(x, gamma, beta, stats, *, eps):
    mean, var = _channel_view(x, stats)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - mean) / np.sqrt(var + eps) * gamma.reshape(shape) + beta.reshape(shape)


def _bn_grad_stats_infer(node, inputs, attrs):
    dy, x, stats = inputs
    expect_float("bn_grad_stats", node, dy=dy, x=x, stats=stats)
    if dy.shape != x.shape:
        raise fail("bn_grad_stats", node, "dy and x must have the same shape", dy=dy, x=x)
    _expect_stats("bn_grad_stats", node, x, stats=stats)
    return [((2, x.shape[1]), x.dtype)]


@defop("bn_grad_stats", infer=_bn_grad_stats_infer, space=_channel_space, attrs={"eps": 1e-5},
       cost=lambda node: Cost(0, 4 * node.inputs[0].size, 2 * node.inputs[0].nbytes,
                              node.output.nbytes))
def bn_grad_stats_op(dy, x, stats, *, eps):
    """[sum(dy), sum(dy * xhat)] per channel: dbeta and dgamma."""
    mean, var = _channel_view(x, stats)
    xhat = (x - mean) / np.sqrt(var + eps)
    axes = (0,) + tuple(range(2, x.ndim))
    return np.stack([dy.sum(axis=axes), (dy * xhat).sum(axis=axes)])


def _bn_backward_infer(node, inputs, attrs):
    dy, x, gamma, stats, gstats = inputs
    expect_float("batch_norm_backward", node, dy=dy, x=x, gamma=gamma, stats=stats,
                 gstats=gstats)
    if dy.shape != x.shape:
        raise fail("batch_norm_backward", node, "dy and x must have the same shape", dy=dy, x=x)
    _expect_stats("batch_norm_backward", node, x, gamma=gamma, stats=stats, gstats=gstats)
    return [(x.shape, x.dtype)]


@defop("batch_norm_backward", infer=_bn_backward_infer, space=elementwise_space,
       attrs={"eps": 1e-5}, elementwise=True,
       cost=lambda node: Cost(0, 6 * node.output.size, 2 * node.output.nbytes,
                              node.output.nbytes))
def batch_norm_backward_op(dy, x, gamma, stats, gstats, *, eps):
    """dx = gamma * invstd * (dy - (sum(dy) + xhat * sum(dy * xhat)) / M), M = N*H*W."""
    mean, var = _channel_view(x, stats)
    dbeta, dgamma = _channel_view(x, gstats)
    shape = (1, -1) + (1,) * (x.ndim - 2)
    invstd = 1.0 / np.sqrt(var + eps)
    xhat = (x - mean) * invstd
    m = x.size // x.shape[1]
    return gamma.reshape(shape) * invstd * (dy - (dbeta + xhat * dgamma) / m)


def _running_infer(node, inputs, attrs):
    running, stats = inputs
    expect_float("running_stat_update", node, running=running, stats=stats)
    c = running.shape[0] if running.ndim == 1 else -1
    if running.ndim != 1 or stats.shape != (2, c):
        raise fail("running_stat_update", node, "running must be [C] and stats [2, C]",
                   running=running, stats=stats)
    if attrs["row"] not in (0, 1) or not 0 <= attrs["momentum"] <= 1 or attrs["count"] < 2:
        raise fail("running_stat_update", node, f"row must be 0 (mean) or 1 (var), momentum in "
                   f"[0, 1] and count >= 2; got {attrs}")
    return [(running.shape, running.dtype)]


@defop("running_stat_update", infer=_running_infer, space=elementwise_space, elementwise=True,
       attrs={"row": 0, "momentum": 0.1, "count": 2},
       cost=lambda node: Cost(0, 3 * node.output.size, 2 * node.output.nbytes,
                              node.output.nbytes))
def running_stat_update_op(running, stats, *, row, momentum, count):
    """torch's running statistics: the variance is the unbiased one (times M / (M - 1))."""
    stat = stats[row] * (count / (count - 1) if row == 1 else 1.0)
    return (1 - momentum) * running + momentum * stat


def _bn_train_grad(node, dy, needs):
    """The whole batch-norm gradient, through the normalisation and the batch statistics
    (bn_stats itself is not differentiated: this rule accounts for it)."""
    from .reduce import select
    x, gamma, _, stats = node.inputs
    if stats.node is None or stats.node.op.name != "bn_stats" or stats.node.inputs[0] is not x:
        raise GraphError(f"batch_norm_train '{node.name}': its stats '{stats.name}' must be "
                         f"bn_stats of its own input '{x.name}' to be differentiated")
    eps = node.attrs["eps"]
    gs = bn_grad_stats_op(dy, x, stats, eps=eps, name=grad_name(node, "grad_stats"))
    dx = (batch_norm_backward_op(dy, x, gamma, stats, gs, eps=eps,
                                 name=grad_name(node, "grad_x")) if needs[0] else None)
    dgamma = select(gs, 1, name=grad_name(node, "grad_gamma")) if needs[1] else None
    dbeta = select(gs, 0, name=grad_name(node, "grad_beta")) if needs[2] else None
    return [dx, dgamma, dbeta, None]


def _bn_inference_grad(node, dy, needs):
    """Frozen statistics: dx = dy * gamma / sqrt(running_var + eps), itself an inference batch
    norm of dy with zero shift. gamma and beta of a frozen batch norm are not differentiated
    here: build the model with training=True to train them."""
    x, gamma, beta, mean, var = node.inputs
    if needs[1] or needs[2]:
        raise GraphError(f"batch_norm '{node.name}' is in inference form: its gamma/beta "
                         "gradients are not defined here; build the model with training=True "
                         "(batch statistics), or leave them out of wrt")
    if not needs[0]:
        return [None] * 5
    g = x.graph
    zero = g.constant(np.zeros(x.shape[1]), name=grad_name(node, "zero"), dtype=x.dtype)
    return [batch_norm_op(dy, gamma, zero, zero, var, eps=node.attrs["eps"],
                          name=grad_name(node, "grad_x")), None, None, None, None]


batch_norm_op.grad = _bn_inference_grad
batch_norm_train_op.grad = _bn_train_grad


def batch_norm_train(x: Tensor, gamma: Tensor, beta: Tensor, eps: float = 1e-5,
                     name: str | None = None) -> tuple[Tensor, Tensor]:
    """Training-mode batch norm: normalise with the batch's statistics. Returns (y, stats)
    where stats = bn_stats(x) ([2, C]: mean, biased var), for the running-statistics update."""
    node = name or "batch_norm_train"
    stats = bn_stats_op(x, name=f"{node}.stats" if name else None)
    return batch_norm_train_op(x, gamma, beta, stats, eps=float(eps), name=name), stats
