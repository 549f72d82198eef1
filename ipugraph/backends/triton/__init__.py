"""The triton backend: Triton kernels (kernels/, installed as ipugraph.kernels) on a GPU, or on
the CPU under TRITON_INTERPRET=1; one module per op family (mirroring the cpu backend and csrc/)
over the shared layer in common.py."""
from ..registry import backend
from .common import NO_DEVICE, SUPPORTED_DTYPES, TritonExecutable, runtime

# Unavailable here: refuse the import, so that backends.available("triton") is False and
# get_backend("triton") raises RuntimeError with the reason. (A failed import is not cached:
# a later get_backend tries again.)
try:
    runtime()
except RuntimeError as _e:
    raise ImportError(str(_e)) from None

from . import conv, loss, matmul, norm, pointwise, pool, random, reduce, shape  # noqa: E402,F401


@backend("triton")
def make_triton(program, **options) -> TritonExecutable:
    unknown = set(options) - {"allow_tf32", "cuda_graph"}
    if unknown:
        raise TypeError(f"triton backend: unknown options {sorted(unknown)}; it takes "
                        "allow_tf32= and cuda_graph=")
    return TritonExecutable(program, **options)


__all__ = ["NO_DEVICE", "SUPPORTED_DTYPES", "TritonExecutable", "runtime", "make_triton"]
