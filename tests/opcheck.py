"""One op-check helper for every backend: build a graph of one op (or a small composite), run it
on a backend, compare with torch in float64; check gradients by central differences on the
reference backend in float64 and, on the other backends, against torch autograd.

Tolerance table (float32 kernels against float64 oracles), per element:
    |actual - expected| <= ATOL[backend] · max|expected| + RTOL[backend] · |expected|
  reference (float64 throughout)  atol 1e-12, rtol 1e-12
  cpu, triton (fp32 arithmetic)   atol 2e-6,  rtol 1e-5   (a few fp32 roundings per element;
                                                            exp/log/tanh/erf/pow within 4 ulp)
Gradients by central differences (reference, float64, h = 1e-6): |fd - analytic| <= 1e-6 ·
max(1, max|analytic|). The triton backend runs under Triton's interpreter without a GPU
(tests/conftest.py sets TRITON_INTERPRET=1 before anything imports triton).
"""
from __future__ import annotations

import numpy as np
import torch

import ipugraph as ig

TOL = {"reference": (1e-12, 1e-12), "cpu": (2e-6, 1e-5), "triton": (2e-6, 1e-5)}


def backends() -> list[str]:
    names = ["reference", "cpu"]
    if ig.backends.available("triton"):
        names.append("triton")
    return names


def data(shape, low, high, seed, dtype=np.float64):
    """Random values in [low, high); bool for a condition's "(bool)" domain."""
    rng = np.random.default_rng(seed)
    if low == "bool":
        return rng.random(shape) > 0.5
    return rng.uniform(low, high, size=shape).astype(dtype)


def assert_matches(actual, expected, backend: str, what: str, scale: float = 1.0) -> None:
    atol, rtol = TOL[backend]
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} != {expected.shape}"
    if expected.dtype == bool or actual.dtype == bool:
        assert actual.dtype == expected.dtype, f"{what}: dtype {actual.dtype} != {expected.dtype}"
        np.testing.assert_array_equal(actual, expected, err_msg=what)
        return
    a, e = actual.astype(np.float64), expected.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=f"{what}: NaN positions")
    ok = ~np.isnan(e)
    if not ok.any():
        return
    top = max(float(np.abs(e[ok]).max()), 1e-30) * scale
    err = np.abs(a[ok] - e[ok])
    bad = err > atol * top + rtol * np.abs(e[ok])
    assert not bad.any(), (f"{what} on {backend}: {int(bad.sum())} of {bad.size} off, max err "
                           f"{err.max():.3e} (scale {top:.3e})")


def dtype_of(backend: str) -> str:
    """The graph dtype an op is checked in: float64 on the reference backend (the oracle's own
    precision), float32 on the kernels."""
    return "float64" if backend == "reference" else "float32"


def as_fed(arrays, backend: str) -> list[np.ndarray]:
    """The inputs as the backend sees them (float32-rounded for the kernels), in float64."""
    dt = np.dtype(dtype_of(backend))
    return [a if a.dtype == bool else a.astype(dt).astype(np.float64) for a in arrays]


def run_op(build, arrays: list[np.ndarray], backend: str, dtype: str | None = None):
    """Graph: inputs in0.. of arrays' shapes -> build(*inputs) -> output "y"; one run."""
    dtype = dtype or dtype_of(backend)
    g = ig.Graph(name="opcheck")
    ins = [g.input(f"in{i}", a.shape, "bool" if a.dtype == bool else dtype)
           for i, a in enumerate(arrays)]
    g.output("y", build(*ins))
    feeds = {f"in{i}": (a if a.dtype == bool else a.astype(dtype)) for i, a in enumerate(arrays)}
    return ig.compile(g, backend=backend).run(feeds)["y"]


def torch_of(arrays, grad=False):
    return [torch.from_numpy(a) if a.dtype == bool else
            torch.tensor(a, dtype=torch.float64, requires_grad=grad) for a in arrays]


def fd_check(build, arrays: list[np.ndarray], what: str, seed: int = 0) -> None:
    """ig.grad of sum(build(x...) · w) on the reference backend in float64 against central
    differences, for every float input."""
    g = ig.Graph(name="fd")
    xs = [g.constant(a, dtype="bool") if a.dtype == bool else
          g.variable(f"x{i}", a.shape, "float64", value=a) for i, a in enumerate(arrays)]
    y = build(*xs)
    w = g.constant(np.random.default_rng(seed + 99).uniform(-1, 1, y.shape), dtype="float64")
    loss = ig.ops.sum(ig.ops.mul(y, w))
    wrt = [x for x in xs if x.kind == "variable"]
    grads = ig.grad(g, loss, wrt)
    g.output("loss", loss)
    for name, t in grads.items():
        g.output(f"d{name}", t)
    eng = ig.compile(g, backend="reference")
    out = eng.run({})
    h = 1e-6
    for x in wrt:
        analytic = out[f"d{x.name}"]
        base = x.value.copy()
        fd = np.zeros_like(base)
        for idx in np.ndindex(base.shape):
            for sign in (1, -1):
                v = base.copy()
                v[idx] += sign * h
                x.value = v
                fd[idx] += sign * eng.run({})["loss"] / (2 * h)
        x.value = base
        tol = 1e-6 * max(1.0, float(np.abs(analytic).max()))
        err = np.abs(fd - analytic).max()
        assert err <= tol, f"{what}: d/d{x.name} off by {err:.3e} (tol {tol:.1e})"


def grad_matches_torch(build, torch_fn, arrays, backend: str, what: str, seed: int = 0):
    """The backend's ig.grad (float32 graph) against torch autograd in float64."""
    g = ig.Graph(name="grad")
    xs = [g.constant(a, dtype="bool") if a.dtype == bool else
          g.variable(f"x{i}", a.shape, value=a.astype(np.float32)) for i, a in enumerate(arrays)]
    y = build(*xs)
    wv = np.random.default_rng(seed + 7).uniform(-1, 1, y.shape)
    w = g.constant(wv.astype(np.float32))
    wrt = [x for x in xs if x.kind == "variable"]
    grads = ig.grad(g, ig.ops.sum(ig.ops.mul(y, w)), wrt)
    for name, t in grads.items():
        g.output(f"d{name}", t)
    out = ig.compile(g, backend=backend).run({})
    ts = torch_of([a if a.dtype == bool else a.astype(np.float32).astype(np.float64)
                   for a in arrays], grad=True)
    (torch_fn(*ts) * torch.from_numpy(wv)).sum().backward()
    for x, t in zip(xs, ts):
        if x.kind == "variable":
            assert_matches(out[f"d{x.name}"], t.grad.numpy(), backend, f"{what} d{x.name}")
