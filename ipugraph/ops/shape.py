"""Shape ops: data movement, no arithmetic. flatten (torch.flatten from start_dim), reshape and
the 2-D transpose, all in logical row-major (NCHW) order; select (one index of axis 0); concat,
slice / split, pad (constant, reflect, replicate) and upsample (nearest, bilinear).

Most of them are gathers: output element i is element m(i) of one input, or a fill value. Each
says so with a GatherSpec (per output axis, a map to the source index), which is all a backend
needs to run it (one gather codelet serves them all). The rest are separable linear resamplings
along one axis (bilinear upsampling, and the gradients of reflect padding and of nearest
upsampling): a Resample table (CSR: the source indices and weights of each output index).
"""
from __future__ import annotations

import builtins
import math
from dataclasses import dataclass

import numpy as np

from ..graph import GraphError, Tensor
from ..space import Dim, Region, Space, flat_region
from .registry import Cost, defop, elementwise_space, fail, grad_name


def _flatten_infer(node, inputs, attrs):
    (x,) = inputs
    start = attrs["start_dim"]
    if not -x.ndim <= start < x.ndim:
        raise fail("flatten", node, f"start_dim {start} is out of range for rank {x.ndim}", x=x)
    start %= x.ndim
    return [(x.shape[:start] + (int(np.prod(x.shape[start:])),), x.dtype)]


@defop("flatten", infer=_flatten_infer, space=elementwise_space, attrs={"start_dim": 1},
       cost=lambda node: Cost(0, 0, node.inputs[0].nbytes, node.output.nbytes))
def flatten_op(x, *, start_dim):
    start = start_dim % x.ndim
    return x.reshape(x.shape[:start] + (-1,))


def flatten(x: Tensor, start_dim: int = 1, name: str | None = None) -> Tensor:
    return flatten_op(x, start_dim=int(start_dim), name=name)


def _reshape_infer(node, inputs, attrs):
    (x,) = inputs
    shape = tuple(int(d) for d in attrs["shape"])
    if any(d <= 0 for d in shape) or int(np.prod(shape, dtype=np.int64)) != x.size:
        raise fail("reshape", node, f"cannot reshape {x.size} elements to {shape}", x=x)
    return [(shape, x.dtype)]


@defop("reshape", infer=_reshape_infer, space=elementwise_space, attrs={"shape": (1,)},
       cost=lambda node: Cost(0, 0, node.inputs[0].nbytes, node.output.nbytes))
def reshape_op(x, *, shape):
    return x.reshape(shape)


def _transpose_infer(node, inputs, attrs):
    (a,) = inputs
    if a.ndim != 2:
        raise fail("transpose", node, f"a must be 2-D, got rank {a.ndim}", a=a)
    return [((a.shape[1], a.shape[0]), a.dtype)]


def _transpose_space(node, target) -> Space:
    """Split over rows of the output = columns of the input."""
    a = node.inputs[0]
    rows, cols = node.output.shape

    def slice_cost(sizes):
        b = sizes[..., 0] * cols * a.itemsize
        return sizes[..., 0] * cols, b, np.zeros_like(b), b

    def boxes(table):
        r0, r1 = table[:, 0].astype(np.int64), table[:, 1].astype(np.int64)
        zero = np.zeros_like(r0)
        out = Region.boxes(np.stack([r0, zero], 1), np.stack([r1, zero + cols], 1))
        return out, [(a, Region.boxes(np.stack([zero, r0], 1), np.stack([zero + cols, r1], 1)))]
    return Space((Dim("i", rows),), slice_cost, boxes)


@defop("transpose", infer=_transpose_infer, space=_transpose_space,
       cost=lambda node: Cost(0, 0, node.inputs[0].nbytes, node.output.nbytes))
def transpose_op(a):
    return np.ascontiguousarray(a.T)


def _reshape_grad(node, dy, needs):
    return [reshape_op(dy, shape=node.inputs[0].shape, name=grad_name(node, "grad_x"))]


flatten_op.grad = _reshape_grad
reshape_op.grad = _reshape_grad
transpose_op.grad = lambda node, dy, needs: [transpose_op(dy, name=grad_name(node, "grad_x"))]


def reshape(x: Tensor, shape, name: str | None = None) -> Tensor:
    """x.reshape(shape) in logical (NCHW, row-major) order."""
    return reshape_op(x, shape=tuple(int(d) for d in shape), name=name)


def transpose(a: Tensor, name: str | None = None) -> Tensor:
    """The transpose of a 2-D tensor."""
    return transpose_op(a, name=name)


# -- gathers ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GatherSpec:
    """out[i] = src[j] or `fill`: for each output axis d, `axes[d]` is the source axis it
    indexes and maps[d][i_d] the index along it (-1: outside the source, the element is fill);
    a source axis that no output axis indexes is held at its `fixed` index. With a select axis
    (concat), select[i_d] along it says which input is the source."""
    maps: tuple
    axes: tuple
    fixed: tuple = ()                  # ((source axis, index), ...)
    fill: float = 0.0
    select_axis: int = -1
    select: np.ndarray | None = None


GATHER_SPECS: dict = {}                # op name -> (node -> GatherSpec)


def gather_spec(node) -> GatherSpec:
    """How the data-movement op of `node` reads its inputs (see GatherSpec)."""
    return GATHER_SPECS[node.op.name](node)


def _gather_cost(node) -> Cost:
    return Cost(0, 0, sum(t.nbytes for t in node.inputs), node.output.nbytes)


def gather_space(node, target) -> Space:
    """Split over the output's flat element range; each vertex reads, per output box, the
    source box its maps cover (the maps are monotone per axis for every gather op, or read
    whole where they are not)."""
    out = node.output
    spec = gather_spec(node)
    lo_of, hi_of = [], []
    for m in spec.maps:                 # per output axis: cumulative min / max source index
        valid = np.where(m < 0, np.iinfo(np.int64).max, m)
        lo_of.append(np.minimum.accumulate(valid[::-1])[::-1])
        hi_of.append(np.maximum.accumulate(np.where(m < 0, -1, m)))

    def slice_cost(sizes):
        n = sizes[..., 0]
        b = n * out.itemsize
        return n, b * len(node.inputs), np.zeros_like(n), b

    def boxes(table):
        region = flat_region(out.shape, table[:, 0], table[:, 1])
        ins = []
        for k, t in enumerate(node.inputs):
            lo = np.zeros((len(region.vid), max(t.ndim, 1)), np.int64)
            hi = np.tile(np.asarray(t.shape or (1,), np.int64), (len(region.vid), 1))
            keep = np.ones(len(region.vid), bool)
            for src_axis, index in spec.fixed:
                lo[:, src_axis], hi[:, src_axis] = index, index + 1
            for d, src_axis in enumerate(spec.axes):
                a, b = region.lo[:, d], region.hi[:, d] - 1
                if spec.select_axis == d:
                    mine = np.flatnonzero(spec.select == k)
                    a, b = np.maximum(a, mine[0]), np.minimum(b, mine[-1])
                    keep &= a <= b
                    a, b = np.minimum(a, b), np.maximum(a, b)
                lo_d, hi_d = lo_of[d][a], hi_of[d][b] + 1
                ok = hi_d > lo_d
                lo[:, src_axis] = np.where(ok, np.minimum(lo_d, t.shape[src_axis]), 0)
                hi[:, src_axis] = np.where(ok, np.clip(hi_d, 0, t.shape[src_axis]), 0)
            ins.append((t, Region(region.vid[keep], lo[keep], hi[keep])))
        return region, ins
    return Space((Dim("i", out.size, target.vector_grain),), slice_cost, boxes)


def _reference_gather(node_or_spec, inputs, out_shape):
    spec = node_or_spec
    grids = np.meshgrid(*(np.asarray(m) for m in spec.maps), indexing="ij") if spec.maps \
        else []
    out = np.full(out_shape, spec.fill, dtype=np.result_type(*inputs))
    inside = np.ones(out_shape, bool)
    for g in grids:
        inside &= g >= 0
    which = (np.meshgrid(*[spec.select if d == spec.select_axis else np.zeros(n, np.int64)
                           for d, n in enumerate(out_shape)], indexing="ij")[spec.select_axis]
             if spec.select_axis >= 0 else np.zeros(out_shape, np.int64))
    for k, x in enumerate(inputs):
        mask = inside & (which == k)
        if not mask.any():
            continue
        index = [None] * x.ndim
        for src_axis, i in spec.fixed:
            index[src_axis] = np.full(int(mask.sum()), i)
        for d, src_axis in enumerate(spec.axes):
            index[src_axis] = grids[d][mask]
        out[mask] = x[tuple(index)]
    return out


def _gather_op(name: str, infer, spec_fn, attrs, grad=None):
    """Register a gather op: its reference applies its GatherSpec with NumPy indexing."""
    GATHER_SPECS[name] = spec_fn

    def reference(*xs, **attrs):
        node = _Shim(name, xs, attrs)
        shape = infer_shape[name](node)
        return _reference_gather(spec_fn(node), xs, shape)
    infer_shape[name] = lambda node: tuple(infer(node.name, node.inputs, node.attrs)[0][0])
    return defop(name, infer=infer, cost=_gather_cost, space=gather_space, attrs=attrs,
                 grad=grad)(reference)


infer_shape: dict = {}


class _Shim:
    """What a GatherSpec function reads of a node (op, inputs with shapes, attrs, output
    shape), for the reference, which sees arrays."""

    def __init__(self, op, arrays, attrs):
        self.name = op
        self.inputs = tuple(_Shape(a.shape) for a in arrays)
        self.attrs = attrs

    @property
    def output(self):
        return _Shape(infer_shape[self.name](self))


class _Shape:
    def __init__(self, shape):
        self.shape = tuple(shape)
        self.ndim = len(self.shape)
        self.dtype = "float32"
        self.name = "x"
        self.size = int(np.prod(self.shape, dtype=np.int64))


# select ------------------------------------------------------------------------------------

def _select_infer(node, inputs, attrs):
    (t,) = inputs
    i = attrs["index"]
    if t.ndim < 1 or not isinstance(i, (int, np.integer)) or not 0 <= i < t.shape[0]:
        raise fail("select", node, f"index {i!r} must be an int in [0, {t.shape[0] if t.ndim else 0}) "
                   "of a tensor of rank >= 1", t=t)
    return [(t.shape[1:], t.dtype)]


def _select_spec(node) -> GatherSpec:
    t = node.inputs[0]
    return GatherSpec(tuple(np.arange(d, dtype=np.int64) for d in t.shape[1:]),
                      tuple(range(1, t.ndim)), ((0, int(node.attrs["index"])),))


def _select_grad(node, dy, needs):
    t = node.inputs[0]
    i = node.attrs["index"]
    one = reshape(dy, (1,) + t.shape[1:])
    return [pad(one, (0, 0) * (t.ndim - 1) + (i, t.shape[0] - 1 - i))]


select_op = _gather_op("select", _select_infer, _select_spec, {"index": 0}, _select_grad)


def select(t: Tensor, index: int, name: str | None = None) -> Tensor:
    """t[index] along axis 0."""
    return select_op(t, index=int(index), name=name)


# concat ------------------------------------------------------------------------------------

def _concat_infer(node, inputs, attrs):
    axis = attrs["axis"]
    first = inputs[0]
    named = {f"input{i}": t for i, t in enumerate(inputs)}
    if not 0 <= axis < first.ndim:
        raise fail("concat", node, f"axis {axis} is out of range for rank {first.ndim}", **named)
    for t in inputs[1:]:
        if t.dtype != first.dtype or t.ndim != first.ndim or \
                any(a != b for d, (a, b) in enumerate(zip(t.shape, first.shape)) if d != axis):
            raise fail("concat", node, f"every input must have the dtype and the shape of the "
                       f"first except along axis {axis}", **named)
    total = sum(t.shape[axis] for t in inputs)
    return [(first.shape[:axis] + (total,) + first.shape[axis + 1:], first.dtype)]


def _concat_spec(node) -> GatherSpec:
    axis = node.attrs["axis"]
    sizes = [t.shape[axis] for t in node.inputs]
    maps = tuple(np.concatenate([np.arange(n, dtype=np.int64) for n in sizes]) if d == axis
                 else np.arange(n, dtype=np.int64) for d, n in enumerate(node.output.shape))
    return GatherSpec(maps, tuple(range(len(maps))), select_axis=axis,
                      select=np.repeat(np.arange(len(sizes), dtype=np.int64), sizes))


def _concat_grad(node, dy, needs):
    axis = node.attrs["axis"]
    grads, start = [], 0
    for t, need in zip(node.inputs, needs):
        n = t.shape[axis]
        grads.append(slice(dy, (start,), (start + n,), (axis,)) if need else None)
        start += n
    return grads


concat_op = _gather_op("concat", _concat_infer, _concat_spec, {"axis": 0}, _concat_grad)


def concat(tensors, axis: int = 0, name: str | None = None) -> Tensor:
    """torch.cat(tensors, dim=axis): one dtype, equal shapes except along `axis`."""
    tensors = list(tensors)
    if not tensors or not all(isinstance(t, Tensor) for t in tensors):
        raise GraphError(f"concat: needs a non-empty sequence of ipugraph Tensors, got "
                         f"{[type(t).__name__ for t in tensors]}")
    axis = _axis("concat", axis, tensors[0])
    if len(tensors) == 1:
        return tensors[0]
    return concat_op(*tensors, axis=axis, name=name)


def _axis(op: str, axis, x: Tensor) -> int:
    if not isinstance(axis, (int, np.integer)) or isinstance(axis, bool) or \
            not -x.ndim <= axis < x.ndim:
        raise GraphError(f"{op}: axis {axis!r} must be an int in [{-x.ndim}, {x.ndim}) for "
                         f"'{x.name}' {x.shape}")
    return int(axis) % x.ndim


# slice and split ---------------------------------------------------------------------------

def _slice_infer(node, inputs, attrs):
    (x,) = inputs
    shape = []
    for d, (start, stop, step) in enumerate(zip(attrs["starts"], attrs["stops"], attrs["steps"])):
        n = len(range(start, stop, step))
        if n < 1:
            raise fail("slice", node, f"axis {d}: [{start}:{stop}:{step}] of {x.shape[d]} is "
                       "empty", x=x)
        shape.append(n)
    return [(tuple(shape), x.dtype)]


def _slice_spec(node) -> GatherSpec:
    a = node.attrs
    maps = tuple(np.arange(b, e, s, dtype=np.int64)
                 for b, e, s in zip(a["starts"], a["stops"], a["steps"]))
    return GatherSpec(maps, tuple(range(len(maps))))


def _slice_grad(node, dy, needs):
    a, x = node.attrs, node.inputs[0]
    if all(s == 1 for s in a["steps"]):
        pads = []
        for d in reversed(range(x.ndim)):
            pads += [a["starts"][d], x.shape[d] - a["stops"][d]]
        return [pad(dy, tuple(pads))]
    return [slice_backward_op(dy, shape=x.shape, starts=a["starts"], stops=a["stops"],
                              steps=a["steps"], name=grad_name(node, "grad_x"))]


slice_op = _gather_op("slice", _slice_infer, _slice_spec,
                      {"starts": (0,), "stops": (1,), "steps": (1,)}, _slice_grad)


def _slice_backward_infer(node, inputs, attrs):
    return [(tuple(attrs["shape"]), inputs[0].dtype)]


def _slice_backward_spec(node) -> GatherSpec:
    """dx: dy scattered back into zeros at the sliced positions."""
    a = node.attrs
    maps = []
    for n, b, e, s in zip(a["shape"], a["starts"], a["stops"], a["steps"]):
        m = np.full(n, -1, np.int64)
        m[np.arange(b, e, s)] = np.arange(len(range(b, e, s)))
        maps.append(m)
    return GatherSpec(tuple(maps), tuple(range(len(maps))))


slice_backward_op = _gather_op(
    "slice_backward", _slice_backward_infer, _slice_backward_spec,
    {"shape": (1,), "starts": (0,), "stops": (1,), "steps": (1,)},
    lambda node, dy, needs: [slice_op(dy, starts=node.attrs["starts"], stops=node.attrs["stops"],
                                      steps=node.attrs["steps"])])


def slice(x: Tensor, starts, ends, axes=None, steps=None, name: str | None = None) -> Tensor:  # noqa: A001
    """x[starts[i]:ends[i]:steps[i]] along axes[i] (ONNX Slice; Python's clamping of out-of-
    range bounds; negative steps walk backwards)."""
    if not isinstance(x, Tensor):
        raise GraphError(f"slice: x must be an ipugraph Tensor, got {type(x).__name__}")
    starts, ends = tuple(starts), tuple(ends)
    axes = tuple(range(len(starts))) if axes is None else tuple(axes)
    steps = (1,) * len(starts) if steps is None else tuple(steps)
    if not len(starts) == len(ends) == len(axes) == len(steps):
        raise GraphError(f"slice '{name or 'slice'}': starts {starts}, ends {ends}, axes {axes} "
                         f"and steps {steps} must have one entry per sliced axis")
    b, e, s = [0] * x.ndim, list(x.shape), [1] * x.ndim
    for start, end, axis, step in zip(starts, ends, axes, steps):
        d = _axis("slice", axis, x)
        for v, what in ((start, "start"), (end, "end"), (step, "step")):
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool):
                raise GraphError(f"slice: {what} {v!r} along axis {axis} must be an int")
        if step == 0:
            raise GraphError(f"slice: step along axis {axis} must not be 0")
        b[d], e[d], s[d] = _python_range(int(start), int(end), int(step), x.shape[d])
    return slice_op(x, starts=tuple(b), stops=tuple(e), steps=tuple(s), name=name)


def _python_range(start: int, stop: int, step: int, n: int) -> tuple[int, int, int]:
    """Python's clamping of slice bounds: builtins.slice(start, stop, step).indices(n)."""
    return builtins.slice(start, stop, step).indices(n)


def split(x: Tensor, sizes, axis: int = 0, name: str | None = None) -> list[Tensor]:
    """torch.split(x, sizes, dim=axis): `sizes` an int (equal chunks, the last smaller) or a
    list of sizes summing to the axis length. Returns one tensor per piece."""
    d = _axis("split", axis, x)
    n = x.shape[d]
    if isinstance(sizes, (int, np.integer)):
        if sizes < 1:
            raise GraphError(f"split: chunk size must be >= 1, got {sizes}")
        sizes = [min(int(sizes), n - i) for i in range(0, n, int(sizes))]
    sizes = [int(v) for v in sizes]
    if sum(sizes) != n or any(v < 1 for v in sizes):
        raise GraphError(f"split: sizes {sizes} must be positive and sum to {n}, the length of "
                         f"axis {axis} of '{x.name}' {x.shape}")
    out, start = [], 0
    for i, v in enumerate(sizes):
        out.append(slice(x, (start,), (start + v,), (d,),
                         name=None if name is None else f"{name}.{i}"))
        start += v
    return out


# pad ---------------------------------------------------------------------------------------

PAD_MODES = ("constant", "reflect", "replicate")


def _pad_infer(node, inputs, attrs):
    (x,) = inputs
    pads, mode = attrs["pads"], attrs["mode"]
    if mode not in PAD_MODES:
        raise fail("pad", node, f"mode must be one of {PAD_MODES}, got {mode!r}", x=x)
    if len(pads) != 2 * x.ndim:
        raise fail("pad", node, f"pads {pads} must have 2 entries per axis", x=x)
    shape = []
    for d in range(x.ndim):
        before, after = pads[2 * d], pads[2 * d + 1]
        if mode != "constant" and (min(before, after) < 0 or
                                   (mode == "reflect" and max(before, after) >= x.shape[d])):
            raise fail("pad", node, f"{mode} padding ({before}, {after}) of axis {d} must be >= 0"
                       + (f" and < its size {x.shape[d]}" if mode == "reflect" else ""), x=x)
        n = x.shape[d] + before + after
        if n < 1:
            raise fail("pad", node, f"pads ({before}, {after}) leave axis {d} of size "
                       f"{x.shape[d]} empty", x=x)
        shape.append(n)
    return [(tuple(shape), x.dtype)]


def pad_map(n: int, before: int, out: int, mode: str) -> np.ndarray:
    i = np.arange(out, dtype=np.int64) - before
    if mode == "reflect":
        i = np.abs(i)
        return np.where(i >= n, 2 * (n - 1) - i, i)
    if mode == "replicate":
        return np.clip(i, 0, n - 1)
    return np.where((i >= 0) & (i < n), i, -1)


def _pad_spec(node) -> GatherSpec:
    x, out, a = node.inputs[0], node.output, node.attrs
    maps = tuple(pad_map(x.shape[d], a["pads"][2 * d], out.shape[d], a["mode"])
                 for d in range(x.ndim))
    return GatherSpec(maps, tuple(range(x.ndim)), fill=float(a["value"]))


def _pad_grad(node, dy, needs):
    x, a = node.inputs[0], node.attrs
    if a["mode"] == "constant":
        return [pad_op(dy, pads=tuple(-p for p in a["pads"]), mode="constant", value=0.0,
                       name=grad_name(node, "grad_x"))]
    g = dy
    for d in range(x.ndim):
        before, after = a["pads"][2 * d], a["pads"][2 * d + 1]
        if before or after:
            g = resample_op(g, axis=d, size=x.shape[d], kind=f"{a['mode']}_fold",
                            params=(x.shape[d], before, dy.shape[d]))
    return [g]


pad_op = _gather_op("pad", _pad_infer, _pad_spec,
                    {"pads": (0, 0), "mode": "constant", "value": 0.0}, _pad_grad)


def pad(x: Tensor, pads, mode: str = "constant", value: float = 0.0,
        name: str | None = None) -> Tensor:
    """torch.nn.functional.pad: `pads` as (last_left, last_right, second_last_left, ...),
    for as many trailing axes as it covers; negative constant pads crop."""
    if not isinstance(x, Tensor):
        raise GraphError(f"pad: x must be an ipugraph Tensor, got {type(x).__name__}")
    pads = tuple(pads)
    if len(pads) % 2 or len(pads) > 2 * x.ndim or not all(
            isinstance(p, (int, np.integer)) and not isinstance(p, bool) for p in pads):
        raise GraphError(f"pad: pads {pads!r} must be an even number (at most {2 * x.ndim}) of "
                         f"ints for '{x.name}' {x.shape}")
    per_axis = [(0, 0)] * x.ndim
    for k in range(len(pads) // 2):
        per_axis[x.ndim - 1 - k] = (int(pads[2 * k]), int(pads[2 * k + 1]))
    flat = tuple(v for p in per_axis for v in p)
    return pad_op(x, pads=flat, mode=str(mode), value=float(value), name=name)


# upsample ----------------------------------------------------------------------------------

UPSAMPLE_MODES = ("nearest", "bilinear")


def _pair_scale(scale) -> tuple[float, float]:
    if isinstance(scale, (int, float, np.number)) and not isinstance(scale, bool):
        return float(scale), float(scale)
    try:
        a, b = scale
        return float(a), float(b)
    except (TypeError, ValueError):
        raise GraphError(f"upsample: scale_factor must be a number or a pair, got {scale!r}") \
            from None


def _upsample_infer(node, inputs, attrs):
    (x,) = inputs
    if x.ndim != 4:
        raise fail("upsample", node, f"x must be 4-D [N, C, H, W], got rank {x.ndim}", x=x)
    sh, sw = attrs["scale"]
    oh, ow = int(math.floor(x.shape[2] * sh)), int(math.floor(x.shape[3] * sw))
    if not (sh > 0 and sw > 0) or oh < 1 or ow < 1:
        raise fail("upsample", node, f"scale_factor {attrs['scale']} must be > 0 and give a "
                   f"non-empty output (got {oh}x{ow})", x=x)
    return [((x.shape[0], x.shape[1], oh, ow), x.dtype)]


def nearest_map(n: int, out: int, scale: float) -> np.ndarray:
    """torch's 'nearest' source index: floor(i / scale_factor), clamped."""
    src = np.floor(np.arange(out, dtype=np.float64) * np.float32(1.0 / scale)).astype(np.int64)
    return np.minimum(src, n - 1)


def _upsample_spec(node) -> GatherSpec:
    x, out = node.inputs[0], node.output
    sh, sw = node.attrs["scale"]
    maps = (np.arange(x.shape[0], dtype=np.int64), np.arange(x.shape[1], dtype=np.int64),
            nearest_map(x.shape[2], out.shape[2], sh), nearest_map(x.shape[3], out.shape[3], sw))
    return GatherSpec(maps, (0, 1, 2, 3))


def _upsample_grad(node, dy, needs):
    x = node.inputs[0]
    sh, sw = node.attrs["scale"]
    g = resample_op(dy, axis=2, size=x.shape[2], kind="nearest_fold",
                    params=(x.shape[2], dy.shape[2], sh))
    return [resample_op(g, axis=3, size=x.shape[3], kind="nearest_fold",
                        params=(x.shape[3], dy.shape[3], sw), name=grad_name(node, "grad_x"))]


upsample_nearest_op = _gather_op("upsample_nearest", _upsample_infer, _upsample_spec,
                                 {"scale": (2.0, 2.0)}, _upsample_grad)


def upsample(x: Tensor, scale_factor=2, mode: str = "nearest", align_corners: bool = False,
             name: str | None = None) -> Tensor:
    """torch.nn.functional.interpolate(x, scale_factor=..., mode=...) for 4-D NCHW x: 'nearest'
    or 'bilinear' (align_corners as torch, default False). The output is floor(H·s) x
    floor(W·s)."""
    if not isinstance(x, Tensor):
        raise GraphError(f"upsample: x must be an ipugraph Tensor, got {type(x).__name__}")
    scale = _pair_scale(scale_factor)
    if mode == "nearest":
        return upsample_nearest_op(x, scale=scale, name=name)
    if mode != "bilinear":
        raise GraphError(f"upsample: mode must be one of {UPSAMPLE_MODES}, got {mode!r}")
    (_, _, oh, ow), _ = _upsample_infer(name or "upsample", (x,), {"scale": scale})[0]
    ac = bool(align_corners)
    y = resample_op(x, axis=2, size=oh, kind="linear", params=(x.shape[2], oh, scale[0], ac))
    return resample_op(y, axis=3, size=ow, kind="linear", params=(x.shape[3], ow, scale[1], ac),
                       name=name)


# -- resampling along one axis -----------------------------------------------------------------

@dataclass(frozen=True)
class Resample:
    """out[..., j, ...] = sum_e weights[e] · x[..., indices[e], ...] for e in
    [indptr[j], indptr[j + 1]): a sparse [out, in] matrix (CSR) applied along one axis."""
    indptr: np.ndarray
    indices: np.ndarray
    weights: np.ndarray

    def dense(self, n_in: int) -> np.ndarray:
        m = np.zeros((len(self.indptr) - 1, n_in))
        rows = np.repeat(np.arange(len(self.indptr) - 1), np.diff(self.indptr))
        np.add.at(m, (rows, self.indices), self.weights)
        return m


def _csr(rows: np.ndarray, cols: np.ndarray, weights: np.ndarray, n_rows: int) -> Resample:
    order = np.lexsort((cols, rows))
    rows, cols, weights = rows[order], cols[order], weights[order]
    indptr = np.zeros(n_rows + 1, np.int64)
    np.add.at(indptr, rows + 1, 1)
    return Resample(np.cumsum(indptr), cols.astype(np.int64), weights.astype(np.float64))


def linear_taps(n: int, out: int, scale: float, align_corners: bool):
    """torch's bilinear source positions along one axis: (i0, i1, weight of i1) per output."""
    j = np.arange(out, dtype=np.float64)
    if align_corners:
        src = j * ((n - 1) / (out - 1)) if out > 1 else np.zeros(out)
    else:
        src = np.maximum((j + 0.5) * (1.0 / scale) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n - 1)
    i1 = np.minimum(i0 + 1, n - 1)
    return i0, i1, src - i0


def resample_table(kind: str, params: tuple) -> Resample:
    """The CSR of a resampling `kind` with its `params` (the op's attributes)."""
    if kind == "linear":
        n, out, scale, ac = params
        i0, i1, w1 = linear_taps(n, out, scale, ac)
        rows = np.repeat(np.arange(out), 2)
        return _csr(rows, np.stack([i0, i1], 1).reshape(-1),
                    np.stack([1.0 - w1, w1], 1).reshape(-1), out)
    if kind == "linear_fold":                     # the transpose of "linear"
        n, out, scale, ac = params
        i0, i1, w1 = linear_taps(n, out, scale, ac)
        cols = np.repeat(np.arange(out), 2)
        return _csr(np.stack([i0, i1], 1).reshape(-1), cols,
                    np.stack([1.0 - w1, w1], 1).reshape(-1), n)
    if kind == "nearest_fold":
        n, out, scale = params
        src = nearest_map(n, out, scale)
        return _csr(src, np.arange(out), np.ones(out), n)
    if kind in ("reflect_fold", "replicate_fold"):
        n, before, out = params
        src = pad_map(n, before, out, kind.split("_")[0])
        return _csr(src, np.arange(out), np.ones(out), n)
    raise ValueError(f"unknown resample kind {kind!r}")


def _resample_infer(node, inputs, attrs):
    (x,) = inputs
    axis = attrs["axis"]
    if not 0 <= axis < x.ndim:
        raise fail("resample", node, f"axis {axis} out of range", x=x)
    if not x.dtype.startswith("float"):
        raise fail("resample", node, "needs a floating-point tensor", x=x)
    shape = list(x.shape)
    shape[axis] = int(attrs["size"])
    return [(tuple(shape), x.dtype)]


def _resample_space(node, target) -> Space:
    """Split over the output's flat range; a vertex reads its box with the resampled axis
    whole (the taps of a box are a contiguous range for bilinear, scattered for the folds)."""
    x, out = node.inputs[0], node.output
    axis = node.attrs["axis"]
    taps = max(1, int(np.ceil(len(resample_table(node.attrs["kind"], node.attrs["params"])
                                  .indices) / max(out.shape[axis], 1))))

    def slice_cost(sizes):
        n = sizes[..., 0]
        return n * taps * 2, n * taps * x.itemsize, np.zeros_like(n), n * out.itemsize

    def boxes(table):
        region = flat_region(out.shape, table[:, 0], table[:, 1])
        lo, hi = region.lo.copy(), region.hi.copy()
        lo[:, axis], hi[:, axis] = 0, x.shape[axis]
        return region, [(x, Region(region.vid, lo, hi))]
    return Space((Dim("i", out.size, target.vector_grain),), slice_cost, boxes)


def _resample_grad(node, dy, needs):
    a = node.attrs
    kind = a["kind"]
    x = node.inputs[0]
    if kind != "linear":
        raise GraphError(f"resample '{node.name}' ({kind}) is itself a gradient; it has no "
                         "gradient rule")
    return [resample_op(dy, axis=a["axis"], size=x.shape[a["axis"]], kind="linear_fold",
                        params=a["params"], name=grad_name(node, "grad_x"))]


@defop("resample", infer=_resample_infer, space=_resample_space, grad=_resample_grad,
       attrs={"axis": 0, "size": 1, "kind": "linear", "params": ()},
       cost=lambda node: Cost(0, 2 * node.output.size, node.inputs[0].nbytes,
                              node.output.nbytes))
def resample_op(x, *, axis, size, kind, params):
    m = resample_table(kind, params).dense(x.shape[axis])
    return np.moveaxis(np.tensordot(m, x, axes=([1], [axis])), 0, axis)
