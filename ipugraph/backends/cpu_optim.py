"""CPU lowerings of the training ops that are not convolutions or batch norm: relu_backward,
reshape, transpose, softmax_backward, cross_entropy (+ backward) and the SGD / Adam updates
(csrc/optim.cpp).

Layouts: 4-D tensors are stored NHWC, everything else row-major (cpu.storage_shape). The flat
elementwise ops (relu_backward, the optimizer updates) work on storage directly: all their full
size operands share the output's shape, so the same storage layout and the same flat range.
An operand the op's shape rule lets be a scalar (size 1) where the output is bigger is
broadcast into a full-size buffer before each run. reshape and a 4-D softmax_backward convert
between NHWC storage and logical row-major order (reshape is in logical NCHW order, as
flatten). Scalars (lr, step, dloss) are shape () arrays handed to C++ as they are: their values
are read at every run, never captured at compile. Labels are integer arrays (int64, or int32),
read as stored (a fed input) or from the tensor's current value (a variable or constant)."""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from .cpu import Kernel, _columns, _flat, check_array, storage_shape, to_logical, to_storage
from .registry import lowering

from .. import _C


def _what(node, role: str) -> str:
    return f"{node.op.name} '{node.name}' {role}"


def _flat_verts(cs, node) -> np.ndarray:
    return _columns(cs, ("i",), (node.output.size,), f"{node.op.name} '{node.name}'")


def _operands(ctx, node, tensors, roles):
    """Flat float32 storage of each operand tensor, plus a refresh() that fills the broadcast
    buffer of any size-1 operand of a bigger output (its value may change from run to run)."""
    out_t = node.output
    arrays, fills = [], []
    for t, role in zip(tensors, roles):
        if t.size == out_t.size:
            if t.shape != out_t.shape and t.size != 1:
                raise ValueError(f"cpu backend: {_what(node, role)} '{t.name}' {t.shape} must "
                                 f"have the output's shape {out_t.shape}")
            arrays.append(_flat(ctx, t, _what(node, role)))
        elif t.size == 1:
            src = check_array(ctx.storage(t), storage_shape(t), _what(node, role)).reshape(-1)
            buf = np.empty(out_t.size, np.float32)
            fills.append((buf, src))
            arrays.append(buf)
        else:
            raise ValueError(f"cpu backend: {_what(node, role)} '{t.name}' {t.shape} must have "
                             f"the output's shape {out_t.shape} or be a scalar")

    def refresh():
        for buf, src in fills:
            buf.fill(src[0])
    return arrays, refresh


def _scalar(ctx, node, t: Tensor, role: str) -> np.ndarray:
    """A shape () (size 1) operand's storage: C++ reads its value at every call."""
    if t.size != 1:
        raise ValueError(f"cpu backend: {_what(node, role)} '{t.name}' must be a scalar, got "
                         f"shape {t.shape}")
    return check_array(ctx.storage(t), storage_shape(t), _what(node, role))


def _labels_getter(ctx, node, t: Tensor):
    """labels as an integer array, current at run time."""
    what = _what(node, "labels")
    if t.kind in ("variable", "constant"):
        # ctx.storage would keep a float32 copy of a variable or constant: read the value.
        return lambda: np.ascontiguousarray(t.value)
    arr = ctx.storage(t)
    if arr.dtype.kind not in "iu" or arr.shape != t.shape:
        raise ValueError(f"cpu backend: {what} '{t.name}' must be stored as an integer (int64) "
                         f"array of shape {t.shape}, got {arr.dtype} {arr.shape}")
    return lambda: arr


def _elementwise(ctx, cs, roles, call) -> Kernel:
    """A flat "i" op: call(arrays, out, verts) after the scalar-operand broadcast."""
    node = cs.group.anchor
    arrays, refresh = _operands(ctx, node, node.inputs, roles)
    out = _flat(ctx, node.output, _what(node, "output"))
    verts = _flat_verts(cs, node)

    def run():
        refresh()
        call(arrays, out, verts)
    return Kernel(node.name, run)


# -- elementwise and shape ------------------------------------------------------------------

@lowering("relu_backward", backend="cpu")
def relu_backward_cpu(ctx, cs) -> Kernel:
    return _elementwise(ctx, cs, ("y", "dy"),
                        lambda a, out, v: _C.relu_backward(a[0], a[1], out, v))


@lowering("reshape", backend="cpu")
def reshape_cpu(ctx, cs) -> Kernel:
    """A layout change: both sides as logical row-major views, one NumPy copy. Without a 4-D
    side the storage is already row-major on both sides and the copy follows the vertex
    table's flat ranges."""
    node = cs.group.anchor
    x_t, y_t = node.inputs[0], node.output
    x = check_array(ctx.storage(x_t), storage_shape(x_t), _what(node, "input"))
    out = check_array(ctx.storage(y_t), storage_shape(y_t), _what(node, "output"))
    if x_t.ndim != 4 and y_t.ndim != 4:
        src, dst = x.reshape(-1), out.reshape(-1)
        ranges = [(int(a), int(b)) for a, b in _flat_verts(cs, node) if b > a]

        def run():
            for a, b in ranges:
                dst[a:b] = src[a:b]
        return Kernel(node.name, run)
    # Views only, built once (a reshape of the strided NHWC->NCHW view would be a copy, taken
    # at compile): x 4-D -> copy its logical view into y's storage seen in x's logical shape;
    # y 4-D -> y's logical view receives x (row-major) seen in y's shape; both 4-D -> through
    # a logical scratch buffer.
    if y_t.ndim != 4:
        src, dst = to_logical(x_t, x), out.reshape(x_t.shape)
        return Kernel(node.name, lambda: np.copyto(dst, src))
    dst = to_logical(y_t, out)
    if x_t.ndim != 4:
        src = x.reshape(y_t.shape)
        return Kernel(node.name, lambda: np.copyto(dst, src))
    scratch = np.empty(x_t.shape, np.float32)
    src_view, scratch_y = to_logical(x_t, x), scratch.reshape(y_t.shape)

    def run():
        np.copyto(scratch, src_view)
        np.copyto(dst, scratch_y)
    return Kernel(node.name, run)


@lowering("transpose", backend="cpu")
def transpose_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    a_t = node.inputs[0]
    a = check_array(ctx.storage(a_t), a_t.shape, _what(node, "input"))
    out = check_array(ctx.storage(node.output), node.output.shape, _what(node, "output"))
    verts = _columns(cs, ("i",), (node.output.shape[0],), f"transpose '{node.name}'")
    return Kernel(node.name, lambda: _C.transpose2d(a, out, verts))


# -- softmax and the loss -------------------------------------------------------------------

@lowering("softmax_backward", backend="cpu")
def softmax_backward_cpu(ctx, cs) -> Kernel:
    """Rows of the logical last axis; 4-D tensors (stored NHWC) are gathered into logical
    scratch buffers and the result scattered back, as softmax_cpu does."""
    node = cs.group.anchor
    y_t, dy_t = node.inputs
    out_t = node.output
    cols = out_t.shape[-1]
    verts = _columns(cs, ("row",), (out_t.size // max(cols, 1),), f"softmax_backward "
                     f"'{node.name}'")
    if out_t.ndim != 4:
        y = _flat(ctx, y_t, _what(node, "y")).reshape(-1, cols)
        dy = _flat(ctx, dy_t, _what(node, "dy")).reshape(-1, cols)
        out = _flat(ctx, out_t, _what(node, "output")).reshape(-1, cols)
        return Kernel(node.name, lambda: _C.softmax_backward_rows(y, dy, out, verts))
    y = check_array(ctx.storage(y_t), storage_shape(y_t), _what(node, "y"))
    dy = check_array(ctx.storage(dy_t), storage_shape(dy_t), _what(node, "dy"))
    out = check_array(ctx.storage(out_t), storage_shape(out_t), _what(node, "output"))
    rows_y, rows_dy, rows_out = (np.empty(out_t.shape, np.float32) for _ in range(3))

    def run():
        np.copyto(rows_y, to_logical(y_t, y))
        np.copyto(rows_dy, to_logical(dy_t, dy))
        _C.softmax_backward_rows(rows_y.reshape(-1, cols), rows_dy.reshape(-1, cols),
                                 rows_out.reshape(-1, cols), verts)
        np.copyto(out, to_storage(out_t, rows_out))
    return Kernel(node.name, run)


def _named(node, call):
    """Run call(); a ValueError from C++ (e.g. a bad label) gets the node's name."""
    try:
        call()
    except ValueError as e:
        msg = str(e).removeprefix(f"{node.op.name}: ")
        raise ValueError(f"{node.op.name} '{node.name}': {msg}") from None


@lowering("cross_entropy", backend="cpu")
def cross_entropy_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    logits_t, labels_t = node.inputs
    logits = check_array(ctx.storage(logits_t), logits_t.shape, _what(node, "logits"))
    out = check_array(ctx.storage(node.output), (), _what(node, "output"))
    labels = _labels_getter(ctx, node, labels_t)
    verts = _columns(cs, ("all",), (1,), f"cross_entropy '{node.name}'")
    return Kernel(node.name,
                  lambda: _named(node, lambda: _C.cross_entropy(logits, labels(), out, verts)))


@lowering("cross_entropy_backward", backend="cpu")
def cross_entropy_backward_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    logits_t, labels_t, dloss_t = node.inputs
    logits = check_array(ctx.storage(logits_t), logits_t.shape, _what(node, "logits"))
    out = check_array(ctx.storage(node.output), node.output.shape, _what(node, "output"))
    labels = _labels_getter(ctx, node, labels_t)
    dloss = _scalar(ctx, node, dloss_t, "dloss")
    verts = _columns(cs, ("row",), (logits_t.shape[0],), f"cross_entropy_backward "
                     f"'{node.name}'")
    return Kernel(node.name, lambda: _named(
        node, lambda: _C.cross_entropy_backward(logits, labels(), dloss, out, verts)))


# -- optimizer updates ----------------------------------------------------------------------

@lowering("sgd_direction", backend="cpu")
def sgd_direction_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    a = node.attrs
    mu, wd = float(a["momentum"]), float(a["weight_decay"])
    return _elementwise(ctx, cs, ("g", "w", "v"), lambda x, out, v: _C.sgd_direction(
        x[0], x[1], x[2] if len(x) > 2 else None, out, mu, wd, v))


@lowering("sgd_apply", backend="cpu")
def sgd_apply_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    _check_arity(node, 3)
    lr = _scalar(ctx, node, node.inputs[2], "lr")
    arrays, refresh = _operands(ctx, node, node.inputs[:2], ("w", "d"))
    out = _flat(ctx, node.output, _what(node, "output"))
    verts = _flat_verts(cs, node)

    def run():
        refresh()
        _C.sgd_apply(arrays[0], arrays[1], lr, out, verts)
    return Kernel(node.name, run)


@lowering("adam_moment", backend="cpu")
def adam_moment_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    beta, square = float(node.attrs["beta"]), bool(node.attrs["square"])
    return _elementwise(ctx, cs, ("m", "g"),
                        lambda x, out, v: _C.adam_moment(x[0], x[1], out, beta, square, v))


@lowering("adam_apply", backend="cpu")
def adam_apply_cpu(ctx, cs) -> Kernel:
    node = cs.group.anchor
    a = node.attrs
    _check_arity(node, 5)
    lr = _scalar(ctx, node, node.inputs[3], "lr")
    step = _scalar(ctx, node, node.inputs[4], "step")
    arrays, refresh = _operands(ctx, node, node.inputs[:3], ("w", "m", "v"))
    out = _flat(ctx, node.output, _what(node, "output"))
    verts = _flat_verts(cs, node)
    b1, b2, eps = float(a["beta1"]), float(a["beta2"]), float(a["eps"])

    def run():
        refresh()
        _C.adam_apply(arrays[0], arrays[1], arrays[2], lr, step, out, b1, b2, eps, verts)
    return Kernel(node.name, run)


def _check_arity(node, n: int) -> None:
    if len(node.inputs) != n:
        raise ValueError(f"cpu backend: {node.op.name} '{node.name}' takes {n} inputs, got "
                         f"{len(node.inputs)}")

