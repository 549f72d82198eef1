"""dropout's keep mask: element i (its logical row-major index, as a uint32) is kept when
mix32(i ^ mix32(seed)) >= threshold, mix32 being Chris Wellons' "lowbias32" integer hash: the
bits of ipugraph/ops/random.py's reference. The hash runs in uint64 lanes masked to 32 bits."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LAUNCH_OPTIONS, configs, offset6

FLAT_CONFIGS = configs(
    [triton.Config({"BLOCK": 1024}, num_warps=4)],
    triton.Config({"BLOCK": 1024}))
AXES = 6


@triton.jit
def _mix32(x):
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & 0xFFFFFFFF
    x = x ^ (x >> 15)
    x = (x * 0x846CA68B) & 0xFFFFFFFF
    return x ^ (x >> 16)


@triton.autotune(configs=FLAT_CONFIGS, restore_value=["out_ptr"], key=["numel"])
@triton.jit
def dropout_mask_kernel(seed_ptr, out_ptr, numel, threshold, n0, n1, n2, n3, n4, n5,
                        ls0, ls1, ls2, ls3, ls4, ls5, BLOCK: tl.constexpr):
    i = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = i < numel
    li = offset6(i, n0, n1, n2, n3, n4, n5, ls0, ls1, ls2, ls3, ls4, ls5)
    s = _mix32(tl.load(seed_ptr).to(tl.int64).to(tl.uint64) & 0xFFFFFFFF)
    h = _mix32((li.to(tl.uint64) & 0xFFFFFFFF) ^ s)
    tl.store(out_ptr + i, h >= threshold, mask=mask)


def dropout_mask(out: torch.Tensor, shape, logical_strides, seed: torch.Tensor,
                 threshold: int) -> torch.Tensor:
    """out (bool, the mask's storage of `shape` in storage order, logical_strides[d] the logical
    row-major stride of storage dim d); seed: an integer scalar tensor on out's device."""
    if out.dtype != torch.bool or seed.numel() != 1 or seed.device != out.device:
        raise ValueError("dropout_mask: out must be bool and seed a scalar on out's device")
    if len(shape) > AXES or len(shape) != len(logical_strides):
        raise ValueError(f"dropout_mask: at most {AXES} dims, one logical stride each")
    pad = AXES - len(shape)
    dims = [1] * pad + list(shape)
    strides = [0] * pad + list(logical_strides)
    numel = out.numel()
    if numel:
        def grid(meta):
            return (triton.cdiv(numel, meta["BLOCK"]),)
        dropout_mask_kernel[grid](seed, out, numel, int(threshold), *dims, *strides,
                                  **LAUNCH_OPTIONS)
    return out
