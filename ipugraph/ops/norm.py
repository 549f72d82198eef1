"""Normalisation. batch_norm in its inference form: y = (x - mean) / sqrt(var + eps) * gamma +
beta, per channel (axis 1); backends may fold it into the preceding conv's weights and bias.
The training form: batch statistics (bn_stats), normalisation with them (batch_norm_train), the
gradient's per-channel sums (bn_grad_stats) and, in the vocabulary, dx and torch's
running-statistics update. layer_norm is a composite of the vocabulary (mean, rsqrt, ...)."""
from __future__ import annotations

import numpy as np

from ..graph import GraphError, Tensor
from .registry import Cost, defop, elementwise_space, expect_float, expect_rank, fail, grad_name
from . import pointwise as pw


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
       attrs={"eps": 1e-5})
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
       attrs={"eps": 1e-5})
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


def _per_channel(t: Tensor, x: Tensor) -> Tensor:
    """A [C] tensor shaped [1, C, 1, ...] to broadcast against x (channels on axis 1)."""
    from .shape import reshape
    return reshape(t, (1, x.shape[1]) + (1,) * (x.ndim - 2))


def _stat(stats: Tensor, row: int, x: Tensor) -> Tensor:
    from .shape import select
    return _per_channel(select(stats, row), x)


def _bn_train_grad(node, dy, needs):
    """The whole batch-norm gradient, through the normalisation and the batch statistics
    (bn_stats itself is not differentiated: this rule accounts for it):
        dx = gamma * invstd * (dy - (dbeta + xhat * dgamma) / M),  xhat = (x - mean) * invstd
    with dbeta = sum(dy), dgamma = sum(dy * xhat) per channel (bn_grad_stats, one pass) and M
    values per channel. dx is vocabulary arithmetic: one fused pass over dy and x."""
    from .shape import select
    x, gamma, _, stats = node.inputs
    if stats.node is None or stats.node.op.name != "bn_stats" or stats.node.inputs[0] is not x:
        raise GraphError(f"batch_norm_train '{node.name}': its stats '{stats.name}' must be "
                         f"bn_stats of its own input '{x.name}' to be differentiated")
    eps = node.attrs["eps"]
    gs = bn_grad_stats_op(dy, x, stats, eps=eps, name=grad_name(node, "grad_stats"))
    dx = None
    if needs[0]:
        invstd = pw.rsqrt(pw.add(_stat(stats, 1, x), eps))
        xhat = pw.mul(pw.sub(x, _stat(stats, 0, x)), invstd)
        m = x.size // x.shape[1]
        inner = pw.mul(pw.add(_stat(gs, 0, x), pw.mul(xhat, _stat(gs, 1, x))), 1.0 / m)
        dx = pw.mul(pw.mul(_per_channel(gamma, x), invstd), pw.sub(dy, inner),
                    name=grad_name(node, "grad_x"))
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
                     name: str | None = None, running_mean: Tensor | None = None,
                     running_var: Tensor | None = None,
                     momentum: float = 0.1) -> tuple[Tensor, Tensor]:
    """Training-mode batch norm (torch's F.batch_norm(training=True)): normalise with the
    batch's statistics. Returns (y, stats) where stats = bn_stats(x) ([2, C]: mean, biased
    var). Given running_mean / running_var (variables), also updates them at the end of every
    run as torch does: (1 - momentum)·running + momentum·batch statistic, the variance
    unbiased."""
    node = name or "batch_norm_train"
    stats = bn_stats_op(x, name=f"{node}.stats" if name else None)
    y = batch_norm_train_op(x, gamma, beta, stats, eps=float(eps), name=name)
    count = x.size // x.shape[1]
    for row, running in enumerate((running_mean, running_var)):
        if running is not None:
            update_running_stat(running, stats, row, momentum, count,
                                name=f"{node}.update_running_{('mean', 'var')[row]}")
    return y, stats


def update_running_stat(running: Tensor, stats: Tensor, row: int, momentum: float, count: int,
                        name: str | None = None) -> Tensor:
    """running <- (1 - momentum)·running + momentum·stats[row] (row 1, the variance, made
    unbiased: times count / (count - 1)), assigned at the end of every run."""
    from .shape import select
    g = running.graph
    if running.kind != "variable" or running.shape != (stats.shape[-1],):
        raise GraphError(f"batch_norm_train: running statistic '{running.name}' "
                         f"{running.shape} must be a variable of shape ({stats.shape[-1]},)")
    if not 0.0 <= momentum <= 1.0 or count < 2:
        raise GraphError(f"batch_norm_train: momentum {momentum} must be in [0, 1] and the "
                         f"batch must hold >= 2 values per channel (got {count})")
    stat = select(stats, row)
    factor = momentum * (count / (count - 1) if row == 1 else 1.0)
    new = pw.add(pw.mul(running, 1.0 - momentum), pw.mul(stat, factor), name=name)
    for t in (new, stat, new.node.inputs[0], new.node.inputs[1]):
        if t.node is not None:
            t.node.phase = "update"
    g.assign(running, new)
    return new


def layer_norm(x: Tensor, normalized_shape, weight: Tensor | None = None,
               bias: Tensor | None = None, eps: float = 1e-5,
               name: str | None = None) -> Tensor:
    """torch.nn.functional.layer_norm: normalise over the trailing `normalized_shape` axes
    (biased variance), then weight · y + bias (each of normalized_shape, or None)."""
    from .reduce import mean
    if not isinstance(x, Tensor):
        raise GraphError(f"layer_norm: x must be an ipugraph Tensor, got {type(x).__name__}")
    shape = (int(normalized_shape),) if isinstance(normalized_shape, (int, np.integer)) \
        else tuple(int(d) for d in normalized_shape)
    k = len(shape)
    if not 1 <= k <= x.ndim or x.shape[x.ndim - k:] != shape:
        raise GraphError(f"layer_norm: normalized_shape {shape} must be the trailing axes of "
                         f"'{x.name}' {x.shape}")
    for role, t in (("weight", weight), ("bias", bias)):
        if t is not None and (not isinstance(t, Tensor) or t.shape != shape):
            raise GraphError(f"layer_norm: {role} must be a tensor of shape {shape}, got "
                             f"{getattr(t, 'shape', type(t).__name__)}")
    if not float(eps) > 0:
        raise GraphError(f"layer_norm: eps must be > 0, got {eps}")
    axes = tuple(range(x.ndim - k, x.ndim))
    d = pw.sub(x, mean(x, axes, keepdims=True))
    y = pw.mul(d, pw.rsqrt(pw.add(mean(pw.mul(d, d), axes, keepdims=True), float(eps))),
               name=name if weight is None and bias is None else None)
    if weight is not None:
        y = pw.mul(y, weight, name=None if bias is not None else name)
    if bias is not None:
        y = pw.add(y, bias, name=name)
    return y
