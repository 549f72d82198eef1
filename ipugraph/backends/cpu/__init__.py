"""The cpu backend: C++/OpenMP codelets behind pybind11 (ipugraph._C), one module per op family
(mirrored by csrc/ and the triton backend): conv, matmul, pool, pointwise, norm, loss, shape,
reduce, random over the shared layer in common.py."""
from ..registry import backend
from .common import CpuExecutable
from . import conv, matmul, loss, norm, pointwise, pool, random, reduce, shape  # noqa: F401


@backend("cpu")
def make_cpu(program, **options) -> CpuExecutable:
    if options:
        raise TypeError(f"cpu backend takes no options, got {sorted(options)}")
    return CpuExecutable(program)
