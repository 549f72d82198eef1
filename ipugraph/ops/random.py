"""Random ops: dropout, from a counter-based keep mask.

The mask of element i (its logical row-major index) is a pure function of (seed, i): a 32-bit
integer hash (Chris Wellons' "lowbias32") of i mixed with the hashed seed, kept when it is at
least p·2³². Every backend computes the same bits, so a run on the cpu or triton backend drops
exactly the elements the reference drops. The seed is a scalar integer tensor read at run time
(a fed input gives a fresh mask every step) or a Python int (the same mask every run).
"""
from __future__ import annotations

import numpy as np

from ..graph import GraphError, Tensor
from ..space import Dim, Space, flat_region, full_region
from .registry import Cost, defop, fail

HASH_M1, HASH_M2 = 0x7FEB352D, 0x846CA68B


def mix32(x: np.ndarray) -> np.ndarray:
    """lowbias32 on uint32 arrays (wrapping arithmetic)."""
    x = np.asarray(x, np.uint32)
    with np.errstate(over="ignore"):
        x = x ^ (x >> np.uint32(16))
        x = (x * np.uint32(HASH_M1)).astype(np.uint32)
        x = x ^ (x >> np.uint32(15))
        x = (x * np.uint32(HASH_M2)).astype(np.uint32)
        return x ^ (x >> np.uint32(16))


def keep_threshold(p: float) -> int:
    """Hashes at or above this uint32 are kept: P(keep) = 1 - p."""
    return min(int(round(p * 2.0 ** 32)), 2 ** 32 - 1)


def _mask_infer(node, inputs, attrs):
    (seed,) = inputs
    if seed.size != 1 or not seed.dtype.startswith("int"):
        raise fail("dropout_mask", node, "seed must be an integer scalar tensor", seed=seed)
    if not 0.0 < attrs["p"] < 1.0:
        raise fail("dropout_mask", node, f"p must be in (0, 1), got {attrs['p']}")
    return [(tuple(attrs["shape"]), "bool")]


def _mask_space(node, target) -> Space:
    out = node.output
    seed = node.inputs[0]

    def slice_cost(sizes):
        n = sizes[..., 0]
        return n * 10, np.full_like(n, 8), np.zeros_like(n), n * out.itemsize

    def boxes(table):
        region = flat_region(out.shape, table[:, 0], table[:, 1])
        return region, [(seed, full_region(seed.shape, len(table)))]
    return Space((Dim("i", out.size, target.vector_grain),), slice_cost, boxes)


@defop("dropout_mask", infer=_mask_infer, space=_mask_space, attrs={"shape": (1,), "p": 0.5},
       cost=lambda node: Cost(0, 10 * node.output.size, 8, node.output.nbytes))
def dropout_mask_op(seed, *, shape, p):
    s = mix32(np.asarray(seed).reshape(()).astype(np.int64).astype(np.uint32))
    i = np.arange(int(np.prod(shape, dtype=np.int64)), dtype=np.uint64).astype(np.uint32)
    return (mix32(i ^ s) >= np.uint32(keep_threshold(p))).reshape(shape)


def dropout(x: Tensor, p: float = 0.5, training: bool = True, seed=0,
            name: str | None = None) -> Tensor:
    """torch.nn.functional.dropout: in training, zero each element with probability p and
    scale the rest by 1/(1-p); identity otherwise. `seed`: an int, or an integer scalar
    tensor (e.g. a fed input) for a new mask every run."""
    from .pointwise import mul, where
    if not isinstance(x, Tensor):
        raise GraphError(f"dropout: x must be an ipugraph Tensor, got {type(x).__name__}")
    p = float(p)
    if not 0.0 <= p <= 1.0:
        raise GraphError(f"dropout: p must be in [0, 1], got {p}")
    if not training or p == 0.0:
        return x
    if p == 1.0:
        return mul(x, 0.0, name=name)
    if isinstance(seed, Tensor):
        x.graph.check_owned(seed, "dropout: seed")
        seed_t = seed
    elif isinstance(seed, (int, np.integer)) and not isinstance(seed, bool):
        seed_t = x.graph.constant(np.int64(seed))
    else:
        raise GraphError(f"dropout: seed must be an int or an integer scalar tensor, got "
                         f"{type(seed).__name__}")
    mask = dropout_mask_op(seed_t, shape=x.shape, p=p)
    return where(mask, mul(x, 1.0 / (1.0 - p)), 0.0, name=name)
