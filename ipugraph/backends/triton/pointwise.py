"""Fused pointwise chains on the triton backend: one generated kernel per chain
(kernels/pointwise.py), as its own compute set or after an anchor's kernel (in place over its
output: operand 0, the accumulator, is the output itself)."""
from __future__ import annotations

from ...ops.pointwise import PRIMITIVES
from ..executable import Kernel, split_epilogue
from ..layout import program_layout
from ..registry import lowering
from .common import Context


def compile_program(ctx: Context, prog, out_tensor):
    """A launcher of `prog` writing out_tensor's storage."""
    out = ctx.storage(out_tensor)
    shape, strides = program_layout(prog, out_tensor)
    operands = [(out if o.tensor is None else ctx.storage(o.tensor), st)
                for o, st in zip(prog.operands, strides)]
    code = [(PRIMITIVES[ins.op].triton, ins.args) for ins in prog.code]
    return ctx.kernels.pointwise.Pointwise(out, shape, operands, prog.immediates, code,
                                           prog.result)


def anchor_epilogue(ctx: Context, cs):
    """(residual storage or None, relu, launcher of the rest or None) of an anchored set."""
    if cs.pointwise is None:
        return None, False, None
    residual, relu, rest = split_epilogue(cs.pointwise)
    res = None if residual is None else ctx.storage(residual)
    return res, relu, None if rest is None else compile_program(ctx, rest, cs.output)


def program_epilogue(ctx: Context, cs):
    """The whole epilogue of an anchored set as one launcher (or None)."""
    return None if cs.pointwise is None else compile_program(ctx, cs.pointwise, cs.output)


def then(first, epilogue):
    """first(), then the epilogue launcher if there is one."""
    if epilogue is None:
        return first

    def run():
        first()
        epilogue()
    return run


@lowering("pointwise", backend="triton")
def pointwise_triton(ctx: Context, cs) -> Kernel:
    return Kernel(cs.name, compile_program(ctx, cs.pointwise, cs.output))
