"""Fused pointwise chains: one generated Triton kernel per chain.

The chain arrives as the pointwise table's Triton expressions (ipugraph/ops/pointwise.py) in
SSA order over value ids [operands | immediates | instructions]. generate() writes a kernel
that, for a block of BLOCK output elements, computes the coordinates over the output's storage
dims (only if a broadcast or strided operand needs them), loads every operand in fp32 (a bool
operand as 0 / 1, a broadcast one through its strides, a scalar once), evaluates the
expressions in registers and stores the result in the output's dtype: one pass over memory.

Kernels are written to a cache directory ($IPUGRAPH_CACHE_DIR, else ~/.cache/ipugraph) under
the hash of their source and imported from there (Triton reads a kernel's source from its file;
the interpreter too), once per process per distinct chain.

The helpers below are what the table's Triton expressions may call besides triton.language:
tanh (Triton has no core tanh, and the interpreter no libdevice) and pow (torch's semantics
for negative bases and zero exponents).
"""
from __future__ import annotations

import hashlib
import importlib.util
import os
import tempfile

import torch
import triton
import triton.language as tl

from .common import INTERPRET, LAUNCH_OPTIONS, check_no_overlap


@triton.jit
def tanh_f32(x):
    """tanh through exp: the odd polynomial of Cephes' tanhf below |x| = 0.625 (where
    1 - 2/(e^2x + 1) would cancel), that formula beyond; NaN propagates."""
    ax = tl.abs(x)
    z = x * x
    p = -5.70498872745e-3
    p = p * z + 2.06390887954e-2
    p = p * z - 5.37397155531e-2
    p = p * z + 1.33314422036e-1
    p = p * z - 3.33332819422e-1
    small = p * z * x + x
    big = 1.0 - 2.0 / (tl.exp(ax + ax) + 1.0)
    big = tl.where(x < 0.0, -big, big)
    return tl.where(ax < 0.625, small, big)


@triton.jit
def pow_f32(a, b):
    """a^b as torch.pow: exp(b·ln|a|), a negative base only for an integer b (the sign by its
    parity, NaN otherwise); a^0 = 1 and 1^b = 1 even for NaN."""
    r = tl.exp(b * tl.log(tl.abs(a)))
    integer = b == tl.floor(b)
    half = b * 0.5
    odd = integer & (half != tl.floor(half))
    neg = tl.where(integer, tl.where(odd, -r, r), tl.where(a == 0.0, r, float("nan")))
    r = tl.where(a < 0.0, neg, r)
    r = tl.where(b == 0.0, 1.0, r)
    return tl.where(a == 1.0, 1.0, r)


BLOCK = 4096 if INTERPRET else 1024
_KERNELS: dict = {}


def _cache_dir() -> str:
    base = os.environ.get("IPUGRAPH_CACHE_DIR") or os.path.join(
        os.path.expanduser("~"), ".cache", "ipugraph")
    path = os.path.join(base, "triton_pointwise")
    try:
        os.makedirs(path, exist_ok=True)
        return path
    except OSError:
        path = os.path.join(tempfile.gettempdir(), "ipugraph_triton_pointwise")
        os.makedirs(path, exist_ok=True)
        return path


def generate(shape, operands, immediates, code, result: int, out_bool: bool) -> str:
    """The kernel's source. shape: the output's storage dims (coalesced); operands: per operand
    (strides per dim, bool?); code: per instruction (Triton expression with {a} {b} {c}, value
    ids of its arguments)."""
    nd = len(shape)
    n_in = len(operands) + len(immediates)
    lines = ["import triton", "import triton.language as tl",
             "from ipugraph.kernels.pointwise import pow_f32, tanh_f32", "", "", "@triton.jit"]
    params = ", ".join(["out_ptr"] + [f"in{k}_ptr" for k in range(len(operands))])
    lines.append(f"def kernel({params}, numel, BLOCK: tl.constexpr):")
    body = ["i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)",
            "mask = i < numel"]
    rowmajor = [1] * nd
    for d in range(nd - 2, -1, -1):
        rowmajor[d] = rowmajor[d + 1] * shape[d + 1]
    def contiguous(st):
        return all(s == r for s, r, n in zip(st, rowmajor, shape) if n > 1)
    need_coords = any(not contiguous(st) and any(st) for st, _ in operands)
    if need_coords:
        body.append("r = i")
        for d in range(nd - 1, -1, -1):
            body.append(f"c{d} = r % {shape[d]}" if d else f"c{d} = r")
            if d:
                body.append(f"r = r // {shape[d]}")
    for k, (strides, is_bool) in enumerate(operands):
        if not any(strides):
            load = f"tl.load(in{k}_ptr)"
        elif contiguous(strides):
            load = f"tl.load(in{k}_ptr + i, mask=mask, other=0)"
        else:
            off = " + ".join(f"c{d} * {s}" for d, s in enumerate(strides) if s)
            load = f"tl.load(in{k}_ptr + ({off}), mask=mask, other=0)"
        body.append(f"v{k} = {load}.to(tl.float32)")
    for j, value in enumerate(immediates):
        body.append(f"v{len(operands) + j} = tl.full((BLOCK,), {_literal(value)}, tl.float32)")
    for i, (expr, args) in enumerate(code):
        for slot, a in zip(("{a}", "{b}", "{c}"), args):     # (any other brace is the code's)
            expr = expr.replace(slot, f"v{a}")
        body.append(f"v{n_in + i} = {expr}")
    res = f"v{result}"
    if result < len(operands) and not any(operands[result][0]):
        res = f"tl.full((BLOCK,), 0.0, tl.float32) + {res}"     # a scalar stored everywhere
    value = f"({res} != 0.0)" if out_bool else f"{res}.to(out_ptr.dtype.element_ty)"
    body.append(f"tl.store(out_ptr + i, {value}, mask=mask)")
    lines += ["    " + b for b in body]
    return "\n".join(lines) + "\n"


def _literal(v: float) -> str:
    if v != v:
        return 'float("nan")'
    if v in (float("inf"), float("-inf")):
        return f'float("{v}")'
    return repr(float(v))


def compile_kernel(source: str):
    """The @triton.jit kernel of a generated source (written once to the cache directory)."""
    kernel = _KERNELS.get(source)
    if kernel is None:
        digest = hashlib.sha1(source.encode()).hexdigest()[:20]
        path = os.path.join(_cache_dir(), f"pw_{digest}.py")
        if not os.path.exists(path):
            tmp = f"{path}.{os.getpid()}.tmp"
            with open(tmp, "w") as f:
                f.write(source)
            os.replace(tmp, path)
        spec = importlib.util.spec_from_file_location(f"ipugraph_pw_{digest}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        kernel = _KERNELS[source] = module.kernel
    return kernel


class Pointwise:
    """A compiled chain bound to its tensors: __call__ launches it. out and every operand are
    torch tensors on one device (an operand may be out itself when it is read element for
    element)."""

    def __init__(self, out: torch.Tensor, shape, operands, immediates, code, result: int):
        tensors = [t for t, _ in operands]
        for k, t in enumerate(tensors):
            if t.device != out.device:
                raise ValueError(f"pointwise: operand {k} is on {t.device}, out on {out.device}")
            strides = operands[k][1]
            if t.data_ptr() != out.data_ptr():
                check_no_overlap(out, "pointwise", **{f"operand{k}": t})
            elif any(st != rm for st, rm, n in zip(strides, _rowmajor(shape), shape) if n > 1):
                raise ValueError("pointwise: an operand that is out must be read element for "
                                 "element")
        layouts = [(tuple(st), t.dtype == torch.bool) for t, st in operands]
        source = generate(tuple(shape), layouts, tuple(immediates), tuple(code), result,
                          out.dtype == torch.bool)
        self.kernel = compile_kernel(source)
        self.source = source
        self.out = out.reshape(-1)
        self.tensors = [t.reshape(-1) for t in tensors]
        self.numel = out.numel()

    def __call__(self) -> None:
        if self.numel:
            grid = (triton.cdiv(self.numel, BLOCK),)
            self.kernel[grid](self.out, *self.tensors, self.numel, BLOCK=BLOCK,
                              **LAUNCH_OPTIONS)


def _rowmajor(shape) -> list[int]:
    out, step = [1] * len(shape), 1
    for d in reversed(range(len(shape))):
        out[d] = step
        step *= shape[d]
    return out
