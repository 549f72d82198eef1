"""matmul [M,K]·[K,N] and linear (torch.nn.functional.linear: x·Wᵀ + b, W is [N,K])."""
from __future__ import annotations

import numpy as np

from ..graph import Tensor
from ..space import Region
from .registry import Cost, Dim, Space, defop, expect_float, expect_rank, fail, grad_name


def _matmul_infer(node, inputs, attrs):
    a, b = inputs
    expect_rank("matmul", node, "a", a, (2,))
    expect_rank("matmul", node, "b", b, (2,))
    dtype = expect_float("matmul", node, a=a, b=b)
    if a.shape[1] != b.shape[0]:
        raise fail("matmul", node, f"inner dimensions differ: a has {a.shape[1]} columns, "
                   f"b has {b.shape[0]} rows", a=a, b=b)
    return [((a.shape[0], b.shape[1]), dtype)]


def _linear_infer(node, inputs, attrs):
    x, w = inputs[0], inputs[1]
    bias = inputs[2] if len(inputs) > 2 else None
    expect_rank("linear", node, "x", x, (2,))
    expect_rank("linear", node, "weight", w, (2,))
    tensors = {"x": x, "weight": w} | ({"bias": bias} if bias is not None else {})
    dtype = expect_float("linear", node, **tensors)
    if x.shape[1] != w.shape[1]:
        raise fail("linear", node, f"x has {x.shape[1]} features but weight [out, in] expects "
                   f"{w.shape[1]}", x=x, weight=w)
    if bias is not None and bias.shape != (w.shape[0],):
        raise fail("linear", node, f"bias must have shape ({w.shape[0]},)", weight=w, bias=bias)
    return [((x.shape[0], w.shape[0]), dtype)]


def _gemm_dims(node):
    """(M, K, N) of the op seen as out[M,N] = a[M,K]·b[K,N]."""
    a = node.inputs[0]
    m, n = node.output.shape
    return m, a.shape[1], n


def _gemm_cost(node) -> Cost:
    m, k, n = _gemm_dims(node)
    extra = m * n if len(node.inputs) > 2 else 0
    return Cost(m * n * k, 2 * m * n * k + extra, sum(t.nbytes for t in node.inputs),
                node.output.nbytes)


def _gemm_space(node, target) -> Space:
    """PopLibs plans a matmul as a 1-D conv (in-channels K, out-channels N): split over rows of
    the output (the field), its columns (out-channels) and the reduction dim K (partial sums)."""
    m, k, n = _gemm_dims(node)
    item = node.output.itemsize
    a_t, w_t = node.inputs[0], node.inputs[1]
    transposed = node.op.name == "linear"          # linear's weight is [N, K]

    def slice_cost(sizes):
        sm, sn, sk = sizes[..., 0], sizes[..., 1], sizes[..., 2]
        return sm * sn * sk, sm * sk * item, sn * (sk + 1) * item, sm * sn * item

    def boxes(table):
        m0, m1, n0, n1, k0, k1 = table.T.astype(np.int64)
        out = Region.boxes(np.stack([m0, n0], 1), np.stack([m1, n1], 1))
        a = Region.boxes(np.stack([m0, k0], 1), np.stack([m1, k1], 1))
        w = (Region.boxes(np.stack([n0, k0], 1), np.stack([n1, k1], 1)) if transposed else
             Region.boxes(np.stack([k0, n0], 1), np.stack([k1, n1], 1)))
        ins = [(a_t, a), (w_t, w)]
        if len(node.inputs) > 2:
            ins.append((node.inputs[2], Region.boxes(n0[:, None], n1[:, None])))
        return out, ins

    return Space((Dim("m", m), Dim("n", n, target.channel_grain),
                  Dim("k", k, target.channel_grain)), slice_cost, boxes, reduce_dims=("k",),
                 codelet="supervisor", rate="macs")


@defop("matmul", infer=_matmul_infer, cost=_gemm_cost, space=_gemm_space)
def matmul_op(a, b):
    return a @ b


@defop("linear", infer=_linear_infer, cost=_gemm_cost, space=_gemm_space)
def linear_op(x, w, bias=None):
    y = x @ w.T
    return y if bias is None else y + bias


def matmul(a: Tensor, b: Tensor, name: str | None = None) -> Tensor:
    return matmul_op(a, b, name=name)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None = None,
           name: str | None = None) -> Tensor:
    inputs = (x, weight) if bias is None else (x, weight, bias)
    return linear_op(*inputs, name=name)


def _matmul_grad(node, dy, needs):
    """da = dy·bᵀ, db = aᵀ·dy."""
    from .shape import transpose
    a, b = node.inputs
    da = (matmul_op(dy, transpose(b, name=grad_name(node, "b_t")), name=grad_name(node, "grad_a"))
          if needs[0] else None)
    db = (matmul_op(transpose(a, name=grad_name(node, "a_t")), dy, name=grad_name(node, "grad_b"))
          if needs[1] else None)
    return [da, db]


def _linear_grad(node, dy, needs):
    """y = x·Wᵀ + b: dx = dy·W, dW = dyᵀ·x, db = dy summed over rows."""
    from .reduce import channel_sum
    from .shape import transpose
    x, w = node.inputs[0], node.inputs[1]
    dx = matmul_op(dy, w, name=grad_name(node, "grad_x")) if needs[0] else None
    dw = (matmul_op(transpose(dy, name=grad_name(node, "dy_t")), x, name=grad_name(node, "grad_w"))
          if needs[1] else None)
    grads = [dx, dw]
    if len(node.inputs) > 2:
        grads.append(channel_sum(dy, name=grad_name(node, "grad_b")) if needs[2] else None)
    return grads


matmul_op.grad = _matmul_grad
linear_op.grad = _linear_grad
