"""Pooling: max_pool2d, avg_pool2d (torch semantics, ceil_mode=False) and global_avg_pool."""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from .conv import conv_out_size
from ..space import Region
from .registry import (Cost, Dim, Space, defop, expect_float, expect_rank, fail, grad_name,
                       pair)


def _pool_infer(opname):
    def infer(node, inputs, attrs):
        (x,) = inputs
        expect_rank(opname, node, "x", x, (4,))
        expect_float(opname, node, x=x)
        (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
        dh, dw = attrs.get("dilation", (1, 1))
        if min(kh, kw, sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
            raise fail(opname, node, f"kernel {attrs['kernel']}, stride {attrs['stride']} and "
                       f"dilation must be >= 1, padding {attrs['padding']} >= 0", x=x)
        if 2 * ph > kh or 2 * pw > kw:
            raise fail(opname, node, f"padding {attrs['padding']} must be at most half the "
                       f"kernel {attrs['kernel']} (as torch requires)", x=x)
        n, c, h, w = x.shape
        oh, ow = conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw)
        if oh < 1 or ow < 1:
            raise fail(opname, node, f"the {kh}x{kw} window does not fit the padded "
                       f"{h + 2 * ph}x{w + 2 * pw} input", x=x)
        return [((n, c, oh, ow), x.dtype)]
    return infer


def _pool_cost(node) -> Cost:
    kh, kw = node.attrs["kernel"]
    out = node.output
    return Cost(0, out.size * kh * kw, node.inputs[0].nbytes, out.nbytes)


def _pool_space(node, target) -> Space:
    x = node.inputs[0]
    (kh, kw), (sh, _), (ph, _) = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
    dh = node.attrs.get("dilation", (1, 1))[0]
    n, c, oh, ow = node.output.shape
    w_in = x.shape[3]

    def slice_cost(sizes):
        sn, sc, soh = sizes[..., 0], sizes[..., 1], sizes[..., 2]
        rows_in = np.minimum((soh - 1) * sh + (kh - 1) * dh + 1, x.shape[2] + 2 * ph)
        out = sn * sc * soh * ow
        return (out * kh * kw, sn * sc * rows_in * w_in * x.itemsize, np.zeros_like(out),
                out * x.itemsize)
    def boxes(table):
        n0, n1, c0, c1, oh0, oh1 = table.T.astype(np.int64)
        ih0 = np.clip(oh0 * sh - ph, 0, x.shape[2])
        ih1 = np.clip((oh1 - 1) * sh - ph + (kh - 1) * dh + 1, 0, x.shape[2])
        zero = np.zeros_like(n0)
        out = Region.boxes(np.stack([n0, c0, oh0, zero], 1),
                           np.stack([n1, c1, oh1, np.full_like(n0, ow)], 1))
        xin = Region.boxes(np.stack([n0, c0, ih0, zero], 1),
                           np.stack([n1, c1, ih1, np.full_like(n0, w_in)], 1))
        return out, [(x, xin)]
    return Space((Dim("n", n), Dim("c", c, target.vector_grain), Dim("oh", oh)), slice_cost,
                 boxes)


def _windows(x, kernel, stride, padding, dilation, fill):
    """Yield each (r, s) tap of the window as an [N, C, OH, OW] strided view of padded x."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, w = x.shape
    oh, ow = conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=fill)
    for i in range(kh):
        for j in range(kw):
            yield xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                     j * dw: j * dw + sw * (ow - 1) + 1: sw]


@defop("max_pool2d", infer=_pool_infer("max_pool2d"), cost=_pool_cost, space=_pool_space,
       attrs={"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1)})
def max_pool2d_op(x, *, kernel, stride, padding, dilation):
    out = None
    for tap in _windows(x, kernel, stride, padding, dilation, -np.inf):
        out = tap.copy() if out is None else np.maximum(out, tap)
    return out


@defop("avg_pool2d", infer=_pool_infer("avg_pool2d"), cost=_pool_cost, space=_pool_space,
       attrs={"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0), "count_include_pad": True})
def avg_pool2d_op(x, *, kernel, stride, padding, count_include_pad):
    ones = np.ones((1, 1) + x.shape[2:], dtype=x.dtype)
    total = sum(_windows(x, kernel, stride, padding, (1, 1), 0))
    if count_include_pad:
        return total / (kernel[0] * kernel[1])
    count = sum(_windows(ones, kernel, stride, padding, (1, 1), 0))
    return total / count


def _gap_infer(node, inputs, attrs):
    (x,) = inputs
    expect_rank("global_avg_pool", node, "x", x, (4,))
    expect_float("global_avg_pool", node, x=x)
    return [((x.shape[0], x.shape[1], 1, 1), x.dtype)]


def _gap_space(node, target) -> Space:
    x = node.inputs[0]
    hw = x.shape[2] * x.shape[3]

    def slice_cost(sizes):
        sn, sc = sizes[..., 0], sizes[..., 1]
        return sn * sc * hw, sn * sc * hw * x.itemsize, np.zeros_like(sn), sn * sc * x.itemsize
    def boxes(table):
        n0, n1, c0, c1 = table.T.astype(np.int64)
        zero, one = np.zeros_like(n0), np.ones_like(n0)
        out = Region.boxes(np.stack([n0, c0, zero, zero], 1), np.stack([n1, c1, one, one], 1))
        xin = Region.boxes(np.stack([n0, c0, zero, zero], 1),
                           np.stack([n1, c1, zero + x.shape[2], zero + x.shape[3]], 1))
        return out, [(x, xin)]
    return Space((Dim("n", x.shape[0]), Dim("c", x.shape[1], target.vector_grain)), slice_cost,
                 boxes)


@defop("global_avg_pool", infer=_gap_infer, space=_gap_space,
       cost=lambda node: Cost(0, node.inputs[0].size, node.inputs[0].nbytes, node.output.nbytes))
def global_avg_pool_op(x):
    return x.mean(axis=(2, 3), keepdims=True)


def _window(op: str, name, kernel, stride, padding) -> dict:
    """kernel/stride/padding as checked pairs; stride defaults to the kernel size (torch)."""
    node = name or op
    kernel = pair(kernel, "kernel", op, node)
    stride = kernel if stride is None else pair(stride, "stride", op, node)
    return dict(kernel=kernel, stride=stride, padding=pair(padding, "padding", op, node))


def max_pool2d(x: Tensor, kernel, stride=None, padding=0, dilation=1,
               name: str | None = None) -> Tensor:
    """torch.nn.functional.max_pool2d; stride defaults to the kernel size."""
    return max_pool2d_op(x, **_window("max_pool2d", name, kernel, stride, padding),
                         dilation=pair(dilation, "dilation", "max_pool2d", name or "max_pool2d"),
                         name=name)


def avg_pool2d(x: Tensor, kernel, stride=None, padding=0, count_include_pad: bool = True,
               name: str | None = None) -> Tensor:
    """torch.nn.functional.avg_pool2d; stride defaults to the kernel size."""
    return avg_pool2d_op(x, **_window("avg_pool2d", name, kernel, stride, padding),
                         count_include_pad=bool(count_include_pad), name=name)


def global_avg_pool(x: Tensor, name: str | None = None) -> Tensor:
    """Mean over H and W, keeping them as 1×1 (torch's AdaptiveAvgPool2d(1))."""
    return global_avg_pool_op(x, name=name)


# -- backward ---------------------------------------------------------------------------------

def _pool_bwd_infer(opname):
    def infer(node, inputs, attrs):
        dy = inputs[-1]
        expect_rank(opname, node, "dy", dy, (4,))
        if opname == "max_pool2d_backward":
            x = inputs[0]
            expect_rank(opname, node, "x", x, (4,))
            expect_float(opname, node, x=x, dy=dy)
            h, w = x.shape[2:]
            if x.shape[:2] != dy.shape[:2]:
                raise fail(opname, node, "x and dy must share batch and channels", x=x, dy=dy)
        else:
            expect_float(opname, node, dy=dy)
            h, w = attrs["input_size"]
        (kh, kw), (sh, sw), (ph, pw) = attrs["kernel"], attrs["stride"], attrs["padding"]
        dh, dw = attrs.get("dilation", (1, 1))
        if (conv_out_size(h, kh, sh, ph, dh), conv_out_size(w, kw, sw, pw, dw)) != dy.shape[2:]:
            raise fail(opname, node, f"a {kh}x{kw} window over a {h}x{w} input does not give "
                       f"dy's {dy.shape[2:]}", dy=dy)
        return [((dy.shape[0], dy.shape[1], h, w), dy.dtype)]
    return infer


def _pool_bwd_space(node, target) -> Space:
    """Split over the batch, channels and rows of dx; a vertex reads the dy rows (and, for max,
    the x rows of the windows) that touch its rows."""
    dy = node.inputs[-1]
    (kh, kw), (sh, _), (ph, _) = node.attrs["kernel"], node.attrs["stride"], node.attrs["padding"]
    dh = node.attrs.get("dilation", (1, 1))[0]
    n, c, h, w = node.output.shape
    oh, ow = dy.shape[2:]
    with_x = len(node.inputs) == 2

    def slice_cost(sizes):
        sn, sc, sih = sizes[..., 0], sizes[..., 1], sizes[..., 2]
        rows = np.minimum(-(-sih // sh) + kh, oh)
        taps = (kh * kw) * (2 if with_x else 1)
        out = sn * sc * sih * w
        dy_b = sn * sc * rows * ow * dy.itemsize
        x_b = sn * sc * np.minimum(sih + kh * dh, h) * w * dy.itemsize if with_x else 0
        return out * taps, dy_b + x_b, np.zeros_like(out), out * dy.itemsize

    def boxes(table):
        n0, n1, c0, c1, h0, h1 = table.T.astype(np.int64)
        zero = np.zeros_like(n0)
        o0 = np.clip(-(-(h0 + ph - (kh - 1) * dh) // sh), 0, oh)
        o1 = np.maximum(o0, np.clip((h1 - 1 + ph) // sh + 1, 0, oh))
        out = Region.boxes(np.stack([n0, c0, h0, zero], 1), np.stack([n1, c1, h1, zero + w], 1))
        dyr = Region.boxes(np.stack([n0, c0, o0, zero], 1), np.stack([n1, c1, o1, zero + ow], 1))
        ins = [(dy, dyr)]
        if with_x:     # the windows of those dy rows
            x0 = np.clip(o0 * sh - ph, 0, h)
            x1 = np.maximum(x0, np.clip((o1 - 1) * sh - ph + (kh - 1) * dh + 1, 0, h))
            ins.insert(0, (node.inputs[0], Region.boxes(np.stack([n0, c0, x0, zero], 1),
                                                        np.stack([n1, c1, x1, zero + w], 1))))
        return out, ins
    return Space((Dim("n", n), Dim("c", c, target.vector_grain), Dim("ih", h)), slice_cost, boxes)


def _pool_bwd_cost(node) -> Cost:
    kh, kw = node.attrs["kernel"]
    dy = node.inputs[-1]
    return Cost(0, dy.size * kh * kw, sum(t.nbytes for t in node.inputs), node.output.nbytes)


@defop("max_pool2d_backward", infer=_pool_bwd_infer("max_pool2d_backward"), cost=_pool_bwd_cost,
       space=_pool_bwd_space,
       attrs={"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0), "dilation": (1, 1)})
def max_pool2d_backward_op(x, dy, *, kernel, stride, padding, dilation):
    """Each window's dy goes to its first maximum in scan order (rows, then columns; padding
    never wins), as torch routes it; overlapping windows add up."""
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = kernel, stride, padding, dilation
    n, c, h, w = x.shape
    oh, ow = dy.shape[2:]
    best = np.full(dy.shape, -np.inf)
    arg = np.full(dy.shape, -1, np.int64)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=-np.inf)
    for i in range(kh):
        for j in range(kw):
            tap = xp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                     j * dw: j * dw + sw * (ow - 1) + 1: sw]
            better = (tap > best) | ((arg < 0) & np.isnan(tap))
            best = np.where(better, tap, best)
            arg = np.where(better, i * kw + j, arg)
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), np.result_type(x, dy))
    for i in range(kh):
        for j in range(kw):
            hit = arg == i * kw + j
            dxp[:, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                j * dw: j * dw + sw * (ow - 1) + 1: sw] += np.where(hit, dy, 0)
    return dxp[:, :, ph:ph + h, pw:pw + w]


@defop("avg_pool2d_backward", infer=_pool_bwd_infer("avg_pool2d_backward"), cost=_pool_bwd_cost,
       space=_pool_bwd_space,
       attrs={"kernel": (1, 1), "stride": (1, 1), "padding": (0, 0), "count_include_pad": True,
              "input_size": (1, 1)})
def avg_pool2d_backward_op(dy, *, kernel, stride, padding, count_include_pad, input_size):
    """Each window spreads dy / count over its in-bounds pixels."""
    (kh, kw), (sh, sw), (ph, pw) = kernel, stride, padding
    h, w = input_size
    n, c, oh, ow = dy.shape
    if count_include_pad:
        share = dy / (kh * kw)
    else:
        ones = np.ones((1, 1, h, w))
        count = sum(_windows(ones, kernel, stride, padding, (1, 1), 0))
        share = dy / count
    dxp = np.zeros((n, c, h + 2 * ph, w + 2 * pw), dy.dtype)
    for i in range(kh):
        for j in range(kw):
            dxp[:, :, i: i + sh * (oh - 1) + 1: sh, j: j + sw * (ow - 1) + 1: sw] += share
    return dxp[:, :, ph:ph + h, pw:pw + w]


def _max_pool_grad(node, dy, needs):
    a = node.attrs
    return [max_pool2d_backward_op(node.inputs[0], dy, kernel=a["kernel"], stride=a["stride"],
                                   padding=a["padding"], dilation=a["dilation"],
                                   name=grad_name(node, "grad_x"))]


def _avg_pool_grad(node, dy, needs):
    a = node.attrs
    return [avg_pool2d_backward_op(dy, kernel=a["kernel"], stride=a["stride"],
                                   padding=a["padding"], count_include_pad=a["count_include_pad"],
                                   input_size=node.inputs[0].shape[2:],
                                   name=grad_name(node, "grad_x"))]


def _global_avg_pool_grad(node, dy, needs):
    hw = node.inputs[0].shape[2:]
    return [avg_pool2d_backward_op(dy, kernel=hw, stride=hw, padding=(0, 0),
                                   count_include_pad=True, input_size=hw,
                                   name=grad_name(node, "grad_x"))]


max_pool2d_op.grad = _max_pool_grad
avg_pool2d_op.grad = _avg_pool_grad
global_avg_pool_op.grad = _global_avg_pool_grad
