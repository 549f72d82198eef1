"""What every Triton codelet family shares: the fused epilogue, the dot's precision, the autotune
configs, the launch options and the host-side argument checks.

Fused epilogue. A conv or gemm tile leaves its main loop as an fp32 accumulator ``acc`` of
``[BLOCK_M, BLOCK_N]`` (output pixels or rows × output channels or columns). Before it is
stored, in registers, the epilogue applies what the planner fused into the compute set:

    y = acc + bias[n]            bias: the op's bias, or a batch norm folded into it
                                 (b' = b·scale + shift; the scale is folded into the weights)
    y = y + residual[m, n]       the residual add of a ResNet block
    y = max(y, 0)                ReLU

and stores ``y`` in the output's dtype. So conv → BN → add → ReLU is one kernel launch.

Precision. Inputs are float32, float16 or bfloat16; accumulation is always fp32. For float32
inputs the dot is IEEE fp32 (``input_precision="ieee"``) unless the caller passes
``allow_tf32=True``, which selects TF32 tensor cores (``input_precision="tf32"``: 10-bit
mantissa products, about 1e-3 relative error per product, several times faster on Ampere and
Hopper). TF32 is opt-in: the default matches the CPU backend to fp32 rounding. Every kernel
with a dot takes the choice as its INPUT_PRECISION meta-parameter (see input_precision()).

Autotuning. Every kernel is ``@triton.autotune``-d over a small set of configs (2-4) keyed on
its shape, so a first run tunes in seconds. Under ``TRITON_INTERPRET=1`` (Triton's CPU
interpreter, which runs each program with NumPy) timing configs measures nothing useful, so each
kernel gets a single small config there.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

# Read once, when the kernels are first imported: @triton.jit decides at decoration time
# whether a kernel is compiled for the GPU or run by the interpreter.
INTERPRET: bool = bool(triton.knobs.runtime.interpret)


# Compile options of every launch. FMA contraction is chosen explicitly (as the CPU backend's
# -ffp-contract=fast): Triton 3.9 warns when it is left to its default, which 3.10 changes.
LAUNCH_OPTIONS = {"enable_fp_fusion": True}


def configs(gpu: list, interpreter: triton.Config) -> list:
    """The autotune candidates: `gpu` on a device, the one `interpreter` config under
    TRITON_INTERPRET=1."""
    return [interpreter] if INTERPRET else gpu


def input_precision(allow_tf32: bool) -> str:
    """tl.dot's input_precision for fp32 operands ("tf32" or "ieee"; fp16/bf16 ignore it)."""
    return "tf32" if allow_tf32 else "ieee"


def dot_in_fp32(dtype) -> bool:
    """Whether a dot over `dtype` operands must be upcast to fp32 first. The interpreter (Triton
    3.9) multiplies bfloat16 dot operands as their raw 16-bit patterns; the upcast gives the same
    exact products a bf16 MMA accumulates in fp32. On a GPU bf16 dots run natively."""
    return INTERPRET and str(dtype).endswith("bfloat16")


@triton.jit
def program_block(M, N, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """This program's rows (grid axis 0) and columns (grid axis 1): offsets and masks."""
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = tl.program_id(1) * BLOCK_N + tl.arange(0, BLOCK_N)
    return offs_m, offs_n, offs_m < M, offs_n < N


@triton.jit
def decode_field(offs_m, H, W):
    """Pixels m = (n, h, w) of an NHWC [N, H, W] field."""
    w = offs_m % W
    h = (offs_m // W) % H
    n = offs_m // (W * H)
    return n, h, w


@triton.jit
def tap_source(pos, pad, tap, dil, stride, OUT):
    """The output row/column whose window reads input row/column `pos` through tap `tap`, and
    whether it exists (on the stride grid and inside [0, OUT)): the transposed window of a
    conv's backward-data and a pool's backward."""
    num = pos + pad - tap * dil
    src = num // stride
    ok = (num >= 0) & (num - src * stride == 0) & (src < OUT)
    return src, ok


@triton.jit
def offset6(i, n0, n1, n2, n3, n4, n5, s0, s1, s2, s3, s4, s5):
    """The offset of flat index i over dims (n0..n5) row-major, through strides (s0..s5)."""
    off = (i % n5) * s5
    r = i // n5
    off += (r % n4) * s4
    r = r // n4
    off += (r % n3) * s3
    r = r // n3
    off += (r % n2) * s2
    r = r // n2
    off += (r % n1) * s1
    r = r // n1
    return off + r * s0


@triton.jit
def decode_pixels(offs_m, H, W, C, OH, OW, stride_h, stride_w, pad_h, pad_w):
    """Output pixels m of an NHWC [N, OH, OW] field: the top-left input row/column of each
    pixel's window (before dilation) and the int64 offset of its image x[n, 0, 0, 0]."""
    ow = offs_m % OW
    oh = (offs_m // OW) % OH
    n = offs_m // (OW * OH)
    return oh * stride_h - pad_h, ow * stride_w - pad_w, n.to(tl.int64) * H * W * C


@triton.jit
def store_epilogue(acc, offs_m, offs_n, mask_m, mask_n, bias_ptr, res_ptr, stride_res_m,
                   out_ptr, stride_out_m,
                   HAS_BIAS: tl.constexpr, HAS_RES: tl.constexpr, RELU: tl.constexpr):
    """Store relu?(acc + bias[n] + residual[m, n]) to out[m, n] for the tile's rows offs_m and
    columns offs_n (rows strided, columns contiguous), in out's dtype. The pointers are only
    touched under their flags, so an absent bias or residual may be passed as None."""
    mask = mask_m[:, None] & mask_n[None, :]
    rows = offs_m.to(tl.int64)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + offs_n, mask=mask_n, other=0.0).to(tl.float32)
        acc = acc + bias[None, :]
    if HAS_RES:
        res = tl.load(res_ptr + rows[:, None] * stride_res_m + offs_n[None, :], mask=mask,
                      other=0.0)
        acc = acc + res.to(tl.float32)
    if RELU:                                      # (NaN stays NaN, as torch.relu)
        acc = tl.where(acc < 0.0, 0.0, acc)
    tl.store(out_ptr + rows[:, None] * stride_out_m + offs_n[None, :],
             acc.to(out_ptr.dtype.element_ty), mask=mask)


# -- host-side checks shared by the wrappers --------------------------------------------------

FLOAT_DTYPES = ("torch.float32", "torch.float16", "torch.bfloat16")


def check_tensor(t, what: str, shape=None, dtype=None, device=None, contiguous: bool = True):
    """Raise ValueError (never crash in a kernel) unless `t` is a torch tensor of that shape,
    dtype and device, contiguous if asked."""
    if not hasattr(t, "data_ptr"):
        raise ValueError(f"{what}: expected a torch tensor, got {type(t).__name__}")
    if shape is not None and tuple(t.shape) != tuple(shape):
        raise ValueError(f"{what}: shape {tuple(t.shape)}, expected {tuple(shape)}")
    if dtype is not None and t.dtype != dtype:
        raise ValueError(f"{what}: dtype {t.dtype}, expected {dtype}")
    if dtype is None and str(t.dtype) not in FLOAT_DTYPES:
        raise ValueError(f"{what}: dtype {t.dtype}; the kernels take float32, float16 or "
                         "bfloat16")
    if device is not None and t.device != device:
        raise ValueError(f"{what}: on {t.device}, expected {device}")
    if contiguous and not t.is_contiguous():
        raise ValueError(f"{what}: must be contiguous (strides {tuple(t.stride())})")
    return t


def _extent(t) -> tuple[int, int]:
    """The byte range [first, last) a strided tensor can touch."""
    span = sum((size - 1) * stride for size, stride in zip(t.shape, t.stride())) + 1
    return t.data_ptr(), t.data_ptr() + span * t.element_size()


def check_no_overlap(out, what: str, **inputs) -> None:
    """A kernel whose programs read `inputs` while others write `out` must not get them in the
    same memory (an in-place conv or matmul would read half-written values)."""
    o0, o1 = _extent(out)
    for name, t in inputs.items():
        if t is not None and t.numel() and out.numel() and t.device == out.device:
            a0, a1 = _extent(t)
            if a0 < o1 and o0 < a1:
                raise ValueError(f"{what}: out overlaps {name} in memory; the kernel cannot "
                                 "run in place")


def check_epilogue(out, bias, residual, channels: int, what: str):
    """The optional bias [channels] and residual (out's shape and dtype) of a fused epilogue."""
    if bias is not None:
        check_tensor(bias, f"{what} bias", shape=(channels,), device=out.device)
    if residual is not None:
        check_tensor(residual, f"{what} residual", shape=tuple(out.shape), dtype=out.dtype,
                     device=out.device)


def pair(v, what: str = "argument") -> tuple[int, int]:
    """An int or a pair of ints (kernel, stride, padding, dilation) as a pair."""
    if isinstance(v, int):
        return v, v
    try:
        a, b = v
        return int(a), int(b)
    except (TypeError, ValueError):
        raise ValueError(f"{what}: expected an int or a pair, got {v!r}") from None


def like(ref, out, what: str, name: str = "out"):
    """`out`, checked to have ref's shape, dtype and device, or a new contiguous one."""
    if out is None:
        out = torch.empty_like(ref, memory_format=torch.contiguous_format)
    check_tensor(out, f"{what} {name}", shape=tuple(ref.shape), dtype=ref.dtype,
                 device=ref.device)
    return out


def check_same(t, ref, what: str, name: str, dtype: bool = True) -> None:
    check_tensor(t, f"{what} {name}", shape=tuple(ref.shape),
                 dtype=ref.dtype if dtype else None, device=ref.device)


def check_scalar(t, what: str, name: str, device) -> None:
    check_tensor(t, f"{what} {name}", device=device)
    if t.numel() != 1:
        raise ValueError(f"{what}: {name} must be a scalar (one element), got shape "
                         f"{tuple(t.shape)}")
