"""Shared test helpers: seeded data, one-op graphs, and tolerances.

Tolerances for float32 results against a float64 oracle: rtol 1e-5 plus an atol that grows
with the reduction length K as sqrt(K) (random-walk rounding of fp32 accumulation), times the
typical magnitude of the result."""
from __future__ import annotations

import numpy as np

import ipugraph as ig

TARGETS = {"host": ig.Target.host, "mk2": ig.Target.ipu_mk2, "mk1": ig.Target.ipu_mk1}


def rand(shape, seed=0, low=-1.0, high=1.0, dtype=np.float32):
    return np.random.default_rng(seed).uniform(low, high, size=shape).astype(dtype)


def assert_close(actual, expected, reduction=1, rtol=1e-5, what=""):
    """|a - e| <= atol + rtol·|e| elementwise, atol = 2e-6·sqrt(K)·max|e| (fp32 vs fp64)."""
    actual = np.asarray(actual)
    expected = np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    assert np.all(np.isfinite(actual)), f"{what}: non-finite values in the result"
    scale = max(float(np.abs(expected).max()), 1e-12)
    atol = 2e-6 * np.sqrt(reduction) * scale
    err = np.abs(actual.astype(np.float64) - expected)
    bad = err > atol + rtol * np.abs(expected)
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {bad.size} elements off; max abs err "
                           f"{err.max():.3e} (atol {atol:.3e}) at {np.unravel_index(err.argmax(), err.shape)}")


def run(graph, backend, target_name="host", feeds=None):
    plan = ig.plan(graph, TARGETS[target_name]())
    eng = ig.compile(graph, backend=backend, plan=plan)
    return eng.run(feeds)
