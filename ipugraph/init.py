"""Initialisers for Graph.variable(init=...): callables (shape, np.dtype) -> ndarray, seeded."""
from __future__ import annotations

import numpy as np


def _fans(shape) -> tuple[int, int]:
    receptive = int(np.prod(shape[2:])) if len(shape) > 2 else 1
    fan_in = shape[1] * receptive if len(shape) > 1 else shape[0]
    fan_out = shape[0] * receptive
    return fan_in, fan_out


def kaiming_normal(seed: int = 0, mode: str = "fan_out", gain: float = np.sqrt(2.0)):
    """He et al. 2015 normal init, torch's kaiming_normal_(mode=..., nonlinearity='relu')."""
    if mode not in ("fan_in", "fan_out"):
        raise ValueError(f"kaiming_normal: mode must be 'fan_in' or 'fan_out', got {mode!r}")

    def init(shape, dtype):
        fan = _fans(shape)[0 if mode == "fan_in" else 1]
        std = gain / np.sqrt(fan)
        return np.random.default_rng(seed).normal(0.0, std, size=shape).astype(dtype)
    return init


def uniform(low: float = -1.0, high: float = 1.0, seed: int = 0):
    def init(shape, dtype):
        return np.random.default_rng(seed).uniform(low, high, size=shape).astype(dtype)
    return init


def normal(mean: float = 0.0, std: float = 1.0, seed: int = 0):
    def init(shape, dtype):
        return np.random.default_rng(seed).normal(mean, std, size=shape).astype(dtype)
    return init


def linear_default(seed: int = 0):
    """torch.nn.Linear/Conv default: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
    def init(shape, dtype):
        bound = 1.0 / np.sqrt(_fans(shape)[0])
        return np.random.default_rng(seed).uniform(-bound, bound, size=shape).astype(dtype)
    return init


def zeros():
    return lambda shape, dtype: np.zeros(shape, dtype)


def ones():
    return lambda shape, dtype: np.ones(shape, dtype)


def constant(value: float):
    return lambda shape, dtype: np.full(shape, value, dtype)
