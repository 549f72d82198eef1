"""Triton lowerings of the training ops other than the conv gradients (kernels/train.py).

One launch (or a fixed short sequence) per op over its whole output; the plan's vertex tables
are ignored. Storage: 4-D tensors NHWC, everything else row-major, so operands of one shape
share a layout and elementwise ops run over flat storage; per-channel ops see their tensor as
(OUTER, C, INNER) (kernels.train.channel_layout); layout changes (reshape, transpose, select)
and the last logical axis of a 4-D tensor (softmax_backward) go through strides."""
from __future__ import annotations

from .registry import lowering
from .triton import Context, Kernel, to_logical


def _node(cs):
    return cs.group.anchor


def _flat(ctx: Context, t):
    return ctx.storage(t).view(-1)


# -- pooling -----------------------------------------------------------------------------------

@lowering("max_pool2d_backward", backend="triton")
def max_pool2d_backward_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    x_t, dy_t = node.inputs
    a = node.attrs
    x, dy, out = ctx.storage(x_t), ctx.storage(dy_t), ctx.storage(node.output)
    argmax = ctx.resident(tuple(dy.shape), ctx.torch.int32)
    kernel = ctx.kernels.train.max_pool2d_backward_nhwc
    dilation = a.get("dilation", (1, 1))
    return Kernel(node.name, lambda: kernel(x, dy, a["kernel"], a["stride"], a["padding"],
                                            dilation, out=out, argmax=argmax))


@lowering("avg_pool2d_backward", backend="triton")
def avg_pool2d_backward_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    a = node.attrs
    dy, out = ctx.storage(node.inputs[0]), ctx.storage(node.output)
    kernel = ctx.kernels.train.avg_pool2d_backward_nhwc
    size = tuple(a["input_size"])
    return Kernel(node.name, lambda: kernel(dy, size, a["kernel"], a["stride"], a["padding"],
                                            a["count_include_pad"], out=out))


# -- batch norm (training) ---------------------------------------------------------------------

@lowering("bn_stats", backend="triton")
def bn_stats_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    x_t = node.inputs[0]
    x, out = ctx.storage(x_t), ctx.storage(node.output)
    layout = ctx.kernels.train.channel_layout(x_t.shape)
    kernel = ctx.kernels.train.bn_stats
    return Kernel(node.name, lambda: kernel(x, layout, out))


@lowering("batch_norm_train", backend="triton")
def batch_norm_train_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    x_t, gamma_t, beta_t, stats_t = node.inputs
    x, gamma, beta, stats = (ctx.storage(t) for t in node.inputs)
    out = ctx.storage(node.output)
    layout = ctx.kernels.train.channel_layout(x_t.shape)
    kernel = ctx.kernels.train.batch_norm_train
    eps = node.attrs["eps"]
    return Kernel(node.name, lambda: kernel(x, gamma, beta, stats, layout, eps, out=out))


@lowering("bn_grad_stats", backend="triton")
def bn_grad_stats_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    dy_t = node.inputs[0]
    dy, x, stats = (ctx.storage(t) for t in node.inputs)
    out = ctx.storage(node.output)
    layout = ctx.kernels.train.channel_layout(dy_t.shape)
    kernel = ctx.kernels.train.bn_grad_stats
    eps = node.attrs["eps"]
    return Kernel(node.name, lambda: kernel(dy, x, stats, layout, eps, out))


@lowering("batch_norm_backward", backend="triton")
def batch_norm_backward_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    dy_t = node.inputs[0]
    dy, x, gamma, stats, gstats = (ctx.storage(t) for t in node.inputs)
    out = ctx.storage(node.output)
    layout = ctx.kernels.train.channel_layout(dy_t.shape)
    kernel = ctx.kernels.train.batch_norm_backward
    eps = node.attrs["eps"]
    return Kernel(node.name, lambda: kernel(dy, x, gamma, stats, gstats, layout, eps, out=out))


@lowering("running_stat_update", backend="triton")
def running_stat_update_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    running, stats = (ctx.storage(t) for t in node.inputs)
    out = ctx.storage(node.output)
    a = node.attrs
    kernel = ctx.kernels.train.running_stat_update
    return Kernel(node.name, lambda: kernel(running, stats, a["row"], a["momentum"], a["count"],
                                            out=out))


@lowering("channel_sum", backend="triton")
def channel_sum_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    x_t = node.inputs[0]
    x, out = ctx.storage(x_t), ctx.storage(node.output)
    layout = ctx.kernels.train.channel_layout(x_t.shape)
    kernel = ctx.kernels.train.channel_sum
    return Kernel(node.name, lambda: kernel(x, layout, out))


# -- elementwise and layout ----------------------------------------------------------------------

@lowering("relu_backward", backend="triton")
def relu_backward_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    y, dy = (_flat(ctx, t) for t in node.inputs)
    out = _flat(ctx, node.output)
    kernel = ctx.kernels.train.relu_backward
    return Kernel(node.name, lambda: kernel(y, dy, out=out))


def _copy_kernel(ctx: Context, node, src, dst) -> Kernel:
    copy = ctx.kernels.train.strided_copy
    return Kernel(node.name, lambda: copy(src, dst))


@lowering("select", backend="triton")
def select_triton(ctx: Context, cs) -> Kernel:
    """t[index] in logical order: a view of t's storage, gathered into the output's layout."""
    node = _node(cs)
    t_t = node.inputs[0]
    src = to_logical(t_t, ctx.storage(t_t))[node.attrs["index"]]
    dst = to_logical(node.output, ctx.storage(node.output))
    return _copy_kernel(ctx, node, src, dst)


@lowering("reshape", backend="triton")
def reshape_triton(ctx: Context, cs) -> Kernel:
    """x.reshape(shape) in logical (NCHW row-major) order: both sides are logical views of
    their storage (NHWC for 4-D) and the kernel matches their row-major orders."""
    node = _node(cs)
    x_t = node.inputs[0]
    src = to_logical(x_t, ctx.storage(x_t))
    dst = to_logical(node.output, ctx.storage(node.output))
    return _copy_kernel(ctx, node, src, dst)


@lowering("transpose", backend="triton")
def transpose_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    src = ctx.storage(node.inputs[0]).t()
    dst = ctx.storage(node.output)
    return _copy_kernel(ctx, node, src, dst)


# -- softmax and loss ------------------------------------------------------------------------------

@lowering("softmax_backward", backend="triton")
def softmax_backward_triton(ctx: Context, cs) -> Kernel:
    """Rows along the logical last axis: contiguous rows, except for a 4-D tensor whose W axis
    is strided by C in its NHWC storage (rows (n, c, h) at n·HWC + c + h·WC)."""
    node = _node(cs)
    y_t = node.inputs[0]
    y, dy = (ctx.storage(t) for t in node.inputs)
    out = ctx.storage(node.output)
    if y_t.ndim == 4:
        n, c, h, w = y_t.shape
        rows, strides, cols, col_stride = (n, c, h), (h * w * c, 1, w * c), w, c
    else:
        cols = y_t.shape[-1] if y_t.ndim else 1
        rows, strides, col_stride = (y_t.size // max(cols, 1),), (cols,), 1
    kernel = ctx.kernels.train.softmax_backward_rows
    return Kernel(node.name, lambda: kernel(y, dy, out, rows, strides, cols, col_stride))


@lowering("cross_entropy", backend="triton")
def cross_entropy_triton(ctx: Context, cs) -> Kernel:
    """The labels are checked on the host before the launch (ValueError naming the op, the label
    and K); under CUDA-graph capture, where that cannot run, a bad label gives NaN."""
    node = _node(cs)
    logits_t, labels_t = node.inputs
    logits, labels = ctx.storage(logits_t), ctx.storage(labels_t)
    out = ctx.storage(node.output)
    workspace = ctx.resident((logits_t.shape[0],))
    kernel = ctx.kernels.train.cross_entropy
    return Kernel(node.name, lambda: kernel(logits, labels, out, workspace=workspace))


@lowering("cross_entropy_backward", backend="triton")
def cross_entropy_backward_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    logits, labels, dloss = (ctx.storage(t) for t in node.inputs)
    out = ctx.storage(node.output)
    kernel = ctx.kernels.train.cross_entropy_backward
    return Kernel(node.name, lambda: kernel(logits, labels, dloss, out=out))


# -- optimizer updates -----------------------------------------------------------------------------

@lowering("sgd_direction", backend="triton")
def sgd_direction_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    ins = [_flat(ctx, t) for t in node.inputs]
    g, w = ins[0], ins[1]
    v = ins[2] if len(ins) > 2 else None
    out = _flat(ctx, node.output)
    a = node.attrs
    kernel = ctx.kernels.train.sgd_direction
    return Kernel(node.name, lambda: kernel(g, w, v, momentum=a["momentum"],
                                            weight_decay=a["weight_decay"], out=out))


@lowering("sgd_apply", backend="triton")
def sgd_apply_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    w, d, lr = (_flat(ctx, t) for t in node.inputs)
    out = _flat(ctx, node.output)
    kernel = ctx.kernels.train.sgd_apply
    return Kernel(node.name, lambda: kernel(w, d, lr, out=out))


@lowering("adam_moment", backend="triton")
def adam_moment_triton(ctx: Context, cs) -> Kernel:
    node = _node(cs)
    m, g = (_flat(ctx, t) for t in node.inputs)
    out = _flat(ctx, node.output)
    a = node.attrs
    kernel = ctx.kernels.train.adam_moment
    return Kernel(node.name, lambda: kernel(m, g, beta=a["beta"], square=bool(a["square"]),
                                            out=out))


@lowering("adam_apply", backend="triton")
def adam_apply_triton(ctx: Context, cs) -> Kernel:
    """The bias corrections 1 − β^step are two float64 device scalars computed before the
    launch (no host synchronisation: the step may be a variable updated on the device)."""
    node = _node(cs)
    w, m, v, lr, step = (_flat(ctx, t) for t in node.inputs)
    out = _flat(ctx, node.output)
    a = node.attrs
    corrections = ctx.resident((2,), ctx.torch.float64)
    kernel = ctx.kernels.train.adam_apply
    return Kernel(node.name, lambda: kernel(w, m, v, lr, step, beta1=a["beta1"],
                                            beta2=a["beta2"], eps=a["eps"], out=out,
                                            corrections=corrections))
