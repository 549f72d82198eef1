"""Pooling: max_pool2d, avg_pool2d (torch semantics, ceil_mode=False) and global_avg_pool."""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from .conv import conv_out_size
from .registry import Cost, Dim, Space, defop, expect_float, expect_rank, fail, pair


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
        from ..planner.regions import Region
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
        from ..planner.regions import Region
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
