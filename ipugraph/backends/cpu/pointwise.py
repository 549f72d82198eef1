"""Fused pointwise chains on the cpu backend: a Program's PointwiseProgram becomes one
_C.PointwiseProgram (validated once, here at compile) that csrc/pointwise.h evaluates in one
pass over memory: as its own compute set (`pointwise`), or as the epilogue of a conv, gemm,
reduction or batch norm over the output elements each vertex has just written.

Operands are read through strides over the output's storage dims (coalesced): the output's own
layout for a same-shaped operand, zeros where an operand is broadcast; an operand stored in
another layout (NCHW-logical vs NHWC) is simply another set of strides."""
from __future__ import annotations

import numpy as np

from ...graph import GraphError
from ...ops.pointwise import PRIMITIVES
from ...program import PointwiseProgram
from ..executable import Kernel, split_epilogue
from ..layout import program_layout
from ..registry import lowering
from .common import C, Context, flat_table


def compile_program(ctx: Context, prog: PointwiseProgram, out_tensor, label: str,
                    acc_array: np.ndarray | None = None):
    """The _C.PointwiseProgram of `prog` writing out_tensor's storage (operand 0, the anchor's
    result, is that storage itself)."""
    out = ctx.storage(out_tensor)
    if out.dtype not in (np.float32, np.bool_):
        raise GraphError(f"cpu backend: {label} writes {out.dtype}; the pointwise kernels write "
                         "float32 or bool")
    arrays = []
    for o in prog.operands:
        arr = (out if acc_array is None else acc_array) if o.tensor is None else \
            ctx.storage(o.tensor)
        if arr.dtype not in (np.float32, np.bool_):
            raise GraphError(f"cpu backend: {label} reads '{o.tensor.name}' "
                             f"{o.tensor.dtype}; the pointwise kernels read float32 and bool "
                             "(use backend='reference' for integer arithmetic)")
        arrays.append(arr.reshape(-1))
    shape, strides = program_layout(prog, out_tensor)
    code = np.full((len(prog.code), 4), -1, np.int32)
    for i, ins in enumerate(prog.code):
        code[i, 0] = PRIMITIVES[ins.op].opcode
        code[i, 1:1 + len(ins.args)] = ins.args
    return C.PointwiseProgram(out.reshape(-1), shape, arrays,
                              np.asarray(strides, np.int64).reshape(len(arrays), len(shape)),
                              np.asarray(prog.immediates, np.float32), code, prog.result)


def anchor_epilogue(ctx: Context, cs, out: np.ndarray):
    """The epilogue of an anchored compute set, split into what the anchor's codelet does in
    registers (a residual add, a ReLU) and the rest as a _C.PointwiseProgram over `out`:
    (residual array or None, relu, program or None)."""
    if cs.pointwise is None:
        return None, False, None
    residual, relu, rest = split_epilogue(cs.pointwise)
    res = None if residual is None else ctx.storage(residual)
    prog = None if rest is None else compile_program(ctx, rest, cs.output, f"{cs.name} epilogue")
    return res, relu, prog


def program_epilogue(ctx: Context, cs):
    """The whole epilogue of an anchored compute set as one _C.PointwiseProgram (for codelets
    without a register epilogue), or None."""
    if cs.pointwise is None:
        return None
    return compile_program(ctx, cs.pointwise, cs.output, f"{cs.name} epilogue")


def then_epilogue(first, epi, out: np.ndarray):
    """first(), then the epilogue program `epi` (program_epilogue) over all of `out`, if any."""
    if epi is None:
        return first
    everything = np.array([[0, out.size]], np.int32)

    def run():
        first()
        C.pointwise(epi, everything)
    return run


@lowering("pointwise", backend="cpu")
def pointwise_cpu(ctx: Context, cs) -> Kernel:
    prog = compile_program(ctx, cs.pointwise, cs.output, f"pointwise '{cs.name}'")
    verts = flat_table(cs)
    return Kernel(cs.name, lambda: C.pointwise(prog, verts))
