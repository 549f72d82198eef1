"""matmul and linear on the cpu backend (csrc/matmul.cpp): a [K, N] weight packed in 16-column
blocks (linear's [N, K] transposed), an inference batch norm folded in, the fused epilogue (a
ReLU in registers, any other chain right after each chunk of rows). Vertex table dims
(m, n, k); a plan that splits k runs matmul_partial, then reduce_partials (the gemm seen as a
1x1 conv: boxes (m0, m1, n0, n1, 0, 1, 0, 1)) at the Reduce entry."""
from __future__ import annotations

import numpy as np

from ..registry import lowering
from .common import C, Context, Kernel, packing
from .conv import folded_weight_bias, reduce_boxes, weight_operands
from .partials import SplitReduction, nonempty, split_kernel
from .pointwise import anchor_epilogue, program_epilogue

GEMM_DIMS = ("m", "n", "k")                      # k: the reduction dim


def _gemm_cpu(ctx: Context, cs, transposed: bool) -> Kernel:
    node = cs.anchor
    a_t, w_t = node.inputs[0], node.inputs[1]
    b_t = node.inputs[2] if len(node.inputs) > 2 else None
    m, n = cs.output.shape
    what = f"{node.op.name} '{node.name}'"
    a = ctx.array(a_t, f"{what} input")
    out = ctx.array(cs.output, f"{what} output")
    res, relu, epi = anchor_epilogue(ctx, cs, out)
    if res is not None:            # the gemm codelet has no residual input: all in the program
        res, relu, epi = None, False, None
        epi = program_epilogue(ctx, cs)
    kred = a_t.shape[1]
    cols = nonempty(cs.table(*GEMM_DIMS, extents=(m, n, kred)), 4, (kred,))
    split = not ((cols[:, 4] == 0) & (cols[:, 5] == kred)).all()
    packed = {}

    def prepare():
        w, b = folded_weight_bias(ctx, cs, w_t, b_t, out_axis=0 if transposed else 1)
        packed["w"] = C.pack_matmul_weight(w, transposed, into=packed.get("w"))
        packed["b"] = b

    packs = weight_operands(cs, w_t, b_t)
    dynamic = not ctx.is_static(*packs)
    if not split:
        verts = np.ascontiguousarray(cols[:, :4])
        return Kernel(node.name,
                      lambda: C.matmul(a, packed["w"], n, packed["b"], out, verts, relu, epi),
                      **packing(prepare, packs, dynamic))
    boxes = np.concatenate([cols[:, :4], np.tile(np.array([0, 1, 0, 1], np.int32),
                                                 (len(cols), 1))], axis=1)
    sr = SplitReduction(reduce_boxes(cs, pad=2), boxes, cols[:, 4:6], (m, 1, 1, n), kred, what)
    table = np.ascontiguousarray(sr.table()[:, [0, 1, 2, 3, 8, 9, 10]])
    rverts = sr.reduce_vertices
    partials = np.zeros((sr.num_slabs, m, n), np.float32)
    partials4, out4 = partials.reshape(sr.num_slabs, m, 1, 1, n), out.reshape(m, 1, 1, n)
    return split_kernel(cs, lambda: C.matmul_partial(a, packed["w"], n, partials, table),
                        lambda: C.reduce_partials(partials4, packed["b"], None, out4, rverts,
                                                  relu, epi),
                        **packing(prepare, packs, dynamic), partials=partials)


@lowering("linear", backend="cpu")
def linear_cpu(ctx, cs) -> Kernel:
    return _gemm_cpu(ctx, cs, transposed=True)


@lowering("matmul", backend="cpu")
def matmul_cpu(ctx, cs) -> Kernel:
    return _gemm_cpu(ctx, cs, transposed=False)
