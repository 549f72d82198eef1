"""Batch norm in training form: the batch statistics (bn_stats: two rounds of per-channel sums,
the mean, then the mean of squared deviations from it: no E[x²] − E[x]² cancellation), the
gradient's per-channel sums (bn_grad_stats) and the normalisation (batch_norm_train). Layouts
as reduce.py's per-channel view (OUTER, C, INNER)."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from .common import LAUNCH_OPTIONS, check_no_overlap, check_tensor, configs
from .reduce import channel_reduce, per_channel_input

FLAT_CONFIGS = configs(
    [triton.Config({"BLOCK": 1024}, num_warps=4),
     triton.Config({"BLOCK": 4096}, num_warps=8)],
    triton.Config({"BLOCK": 1024}))


@triton.autotune(configs=FLAT_CONFIGS, restore_value=["out_ptr"], key=["numel"])
@triton.jit
def batch_norm_train_kernel(x_ptr, gamma_ptr, beta_ptr, stats_ptr, out_ptr, numel, C, INNER,
                            eps, BLOCK: tl.constexpr):
    """(x − mean[c]) / sqrt(var[c] + eps) · gamma[c] + beta[c], c = (i // INNER) % C."""
    offs = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < numel
    x = tl.load(x_ptr + offs, mask=mask, other=0.0).to(tl.float32)
    ch = (offs // INNER) % C
    mean = tl.load(stats_ptr + ch, mask=mask, other=0.0).to(tl.float32)
    var = tl.load(stats_ptr + C + ch, mask=mask, other=1.0).to(tl.float32)
    gamma = tl.load(gamma_ptr + ch, mask=mask, other=0.0).to(tl.float32)
    beta = tl.load(beta_ptr + ch, mask=mask, other=0.0).to(tl.float32)
    y = (x - mean) / tl.sqrt_rn(var + eps) * gamma + beta
    tl.store(out_ptr + offs, y.to(out_ptr.dtype.element_ty), mask=mask)


def bn_stats(x: torch.Tensor, layout, out=None, *, split: int | None = None) -> torch.Tensor:
    """[2, C]: the batch mean and the biased batch variance per channel of x (storage layout,
    `layout` = channel_layout(logical shape)): two rounds, the second around the fp32 mean."""
    what = "bn_stats"
    per_channel_input(x, layout, what)
    c = layout[1]
    if out is None:
        out = torch.empty((2, c), dtype=x.dtype, device=x.device)
    check_tensor(out, f"{what} out", shape=(2, c), device=x.device)
    check_no_overlap(out, what, x=x)
    count = layout[0] * layout[2]
    if count == 0:
        raise ValueError(f"{what}: no elements per channel")
    mean = torch.empty((2, c), dtype=torch.float32, device=x.device)
    channel_reduce(x, layout, 0, out[0], scale=1.0 / count, f32_out=mean[0], split=split)
    channel_reduce(x, layout, 1, out[1], stats=mean, scale=1.0 / count, split=split)
    return out


def bn_grad_stats(dy: torch.Tensor, x: torch.Tensor, stats: torch.Tensor, layout, eps: float,
                  out=None, *, split: int | None = None) -> torch.Tensor:
    """[2, C]: sum(dy) and sum(dy · xhat) per channel."""
    what = "bn_grad_stats"
    per_channel_input(dy, layout, what, "dy")
    check_tensor(x, f"{what} x", shape=tuple(dy.shape), dtype=dy.dtype, device=dy.device)
    c = layout[1]
    check_tensor(stats, f"{what} stats", shape=(2, c), device=dy.device)
    if out is None:
        out = torch.empty((2, c), dtype=dy.dtype, device=dy.device)
    check_tensor(out, f"{what} out", shape=(2, c), device=dy.device)
    check_no_overlap(out, what, dy=dy, x=x, stats=stats)
    channel_reduce(dy, layout, 2, out, b=x, stats=stats, eps=eps, split=split)
    return out


def batch_norm_train(x, gamma, beta, stats, layout, eps: float, out=None) -> torch.Tensor:
    """(x − mean) / sqrt(var + eps) · gamma + beta, stats = [mean; var] per channel."""
    what = "batch_norm_train"
    per_channel_input(x, layout, what)
    c = layout[1]
    for t, name in ((gamma, "gamma"), (beta, "beta")):
        check_tensor(t, f"{what} {name}", shape=(c,), device=x.device)
    check_tensor(stats, f"{what} stats", shape=(2, c), device=x.device)
    if out is None:
        out = torch.empty_like(x, memory_format=torch.contiguous_format)
    check_tensor(out, f"{what} out", shape=tuple(x.shape), dtype=x.dtype, device=x.device)
    numel = x.numel()
    if numel:
        def grid(meta):
            return (triton.cdiv(numel, meta["BLOCK"]),)
        batch_norm_train_kernel[grid](x, gamma, beta, stats, out, numel, c, layout[2],
                                      float(eps), **LAUNCH_OPTIONS)
    return out
