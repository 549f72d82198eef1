"""conv2d: shape rule, NumPy reference, cost and tiling space, all in one place.

Layout is NCHW for activations and [K, C/groups, R, S] for weights, as in torch; backends may
store other layouts internally (the CPU backend keeps activations NHWC).
"""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from .registry import Cost, Dim, Space, defop, expect_float, expect_rank, fail, pair


def conv_out_size(size: int, kernel: int, stride: int, pad: int, dilation: int) -> int:
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def _conv2d_infer(node, inputs, attrs):
    op = "conv2d"
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    expect_rank(op, node, "x", x, (4,))
    expect_rank(op, node, "weight", w, (4,))
    tensors = {"x": x, "weight": w} | ({"bias": bias} if bias is not None else {})
    dtype = expect_float(op, node, **tensors)
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    groups = attrs["groups"]
    if not isinstance(groups, (int, np.integer)) or groups < 1:
        raise fail(op, node, f"groups must be a positive int, got {groups!r}")
    if c % groups or k % groups:
        raise fail(op, node, f"in-channels {c} and out-channels {k} must both be divisible by "
                   f"groups={groups}", x=x, weight=w)
    if cg * groups != c:
        raise fail(op, node, f"x has {c} channels but weight expects {cg}×groups({groups}) = "
                   f"{cg * groups}", x=x, weight=w)
    if bias is not None and bias.shape != (k,):
        raise fail(op, node, f"bias must have shape ({k},) to match the weight's out-channels",
                   weight=w, bias=bias)
    sh, sw = attrs["stride"]
    ph, pw = attrs["padding"]
    dh, dw = attrs["dilation"]
    if min(sh, sw, dh, dw) < 1 or min(ph, pw) < 0:
        raise fail(op, node, f"stride {attrs['stride']} and dilation {attrs['dilation']} must be "
                   f">= 1 and padding {attrs['padding']} >= 0")
    oh, ow = conv_out_size(h, r, sh, ph, dh), conv_out_size(wd, s, sw, pw, dw)
    if oh < 1 or ow < 1:
        raise fail(op, node, f"the (dilated) {r}x{s} kernel does not fit the padded "
                   f"{h + 2 * ph}x{wd + 2 * pw} input (output would be {oh}x{ow})", x=x, weight=w)
    return [((n, k, oh, ow), dtype)]


def _conv2d_cost(node) -> Cost:
    x, w = node.inputs[0], node.inputs[1]
    n, k, oh, ow = node.output.shape
    macs = n * k * oh * ow * w.shape[1] * w.shape[2] * w.shape[3]
    extra = n * k * oh * ow if len(node.inputs) > 2 else 0
    return Cost(macs, 2 * macs + extra, sum(t.nbytes for t in node.inputs), node.output.nbytes)


def _conv2d_space(node, target) -> Space:
    """Split over batch, output channels, output rows and columns (the field), and, as PopLibs'
    conv planner also does, over input channels (within a group) and kernel rows: those two make
    partial sums that a reduction step adds up."""
    from ..planner.regions import Region
    x, w = node.inputs[0], node.inputs[1]
    _, c, h, wd = x.shape
    k_total, cg, r, s = w.shape
    kg = k_total // node.attrs["groups"]
    sh, sw = node.attrs["stride"]
    dh, dw = node.attrs["dilation"]
    ph, pw = node.attrs["padding"]
    item = x.itemsize
    n, k, oh, ow = node.output.shape
    block = target.conv_pixel_block

    def slice_cost(sizes):
        sn, sk, soh, sow, sc, skh = (sizes[..., i] for i in range(6))
        # The codelet computes `block` output pixels of a row at a time: a ragged row pays for
        # the whole last block.
        macs = sn * sk * soh * (-(-sow // block) * block) * (sc * skh * s)
        rows_in = np.minimum((soh - 1) * sh + (skh - 1) * dh + 1, h + 2 * ph)
        cols_in = np.minimum((sow - 1) * sw + (s - 1) * dw + 1, wd + 2 * pw)
        groups_spanned = np.minimum(-(-sk // kg) + (kg % 16 != 0), c // cg)
        x_bytes = sn * np.minimum(c, groups_spanned * sc) * rows_in * cols_in * item
        w_bytes = sk * (sc * skh * s + 1) * item
        return macs, x_bytes, w_bytes, sn * sk * soh * sow * item

    def boxes(table):
        n0, n1, k0, k1, oh0, oh1, ow0, ow1, c0, c1, r0, r1 = table.T.astype(np.int64)
        out = Region.boxes(np.stack([n0, k0, oh0, ow0], 1), np.stack([n1, k1, oh1, ow1], 1))
        g0, g1 = k0 // kg, (k1 - 1) // kg
        ih0 = np.clip(oh0 * sh - ph + r0 * dh, 0, h)
        ih1 = np.clip((oh1 - 1) * sh - ph + (r1 - 1) * dh + 1, 0, h)
        iw0 = np.clip(ow0 * sw - pw, 0, wd)
        iw1 = np.clip((ow1 - 1) * sw - pw + (s - 1) * dw + 1, 0, wd)
        xin = Region.boxes(np.stack([n0, g0 * cg + c0, ih0, iw0], 1),
                           np.stack([n1, g1 * cg + c1, ih1, iw1], 1))
        zero, full_s = np.zeros_like(k0), np.full_like(k0, s)
        win = Region.boxes(np.stack([k0, c0, r0, zero], 1), np.stack([k1, c1, r1, full_s], 1))
        ins = [(x, xin), (w, win)]
        if len(node.inputs) > 2:
            ins.append((node.inputs[2], Region.boxes(k0[:, None], k1[:, None])))
        return out, ins

    return Space((Dim("n", n), Dim("k", k, target.channel_grain), Dim("oh", oh), Dim("ow", ow),
                  Dim("c", cg, target.channel_grain), Dim("kh", r)), slice_cost, boxes,
                 reduce_dims=("c", "kh"), codelet="supervisor", rate="macs")


@defop("conv2d", infer=_conv2d_infer, cost=_conv2d_cost, space=_conv2d_space,
       attrs={"stride": (1, 1), "padding": (0, 0), "dilation": (1, 1), "groups": 1})
def conv2d_op(x, w, bias=None, *, stride, padding, dilation, groups):
    """out[n,k,i,j] = bias[k] + sum_{c,r,s} xpad[n, g*Cg+c, i*sh+r*dh, j*sw+s*dw] * w[k,c,r,s]."""
    n, c, h, wd = x.shape
    k, cg, r, s = w.shape
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh, ow = conv_out_size(h, r, sh, ph, dh), conv_out_size(wd, s, sw, pw, dw)
    kg = k // groups
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    xg = xp.reshape(n, groups, cg, h + 2 * ph, wd + 2 * pw)
    wg = w.reshape(groups, kg, cg, r, s)
    out = np.zeros((groups, n * oh * ow, kg), dtype=np.result_type(x, w))
    for i in range(r):
        for j in range(s):
            patch = xg[:, :, :, i * dh: i * dh + sh * (oh - 1) + 1: sh,
                       j * dw: j * dw + sw * (ow - 1) + 1: sw]          # n, g, cg, oh, ow
            cols = patch.transpose(1, 0, 3, 4, 2).reshape(groups, n * oh * ow, cg)
            out += cols @ wg[:, :, :, i, j].transpose(0, 2, 1)         # g, n*oh*ow, kg
    out = out.reshape(groups, n, oh, ow, kg).transpose(1, 0, 4, 2, 3).reshape(n, k, oh, ow)
    if bias is not None:
        out = out + bias.reshape(1, k, 1, 1)
    return out


def conv2d(x: Tensor, weight: Tensor, bias: Tensor | None = None, stride=1, padding=0,
           dilation=1, groups: int = 1, name: str | None = None) -> Tensor:
    """2-D convolution (cross-correlation, as torch.nn.functional.conv2d), NCHW."""
    node = name or "conv2d"
    attrs = dict(stride=pair(stride, "stride", "conv2d", node),
                 padding=pair(padding, "padding", "conv2d", node),
                 dilation=pair(dilation, "dilation", "conv2d", node), groups=groups)
    inputs = (x, weight) if bias is None else (x, weight, bias)
    return conv2d_op(*inputs, name=name, **attrs)
