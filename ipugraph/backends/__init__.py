"""Backends execute a Program: reference (NumPy), cpu (C++/OpenMP), triton (GPU)."""
import importlib

from .registry import BACKENDS, LOWERINGS, backend, lowering, lowering_for

_MODULES = {"reference": ".reference", "cpu": ".cpu", "triton": ".triton"}
NAMES = tuple(sorted(_MODULES))


def available(name: str) -> bool:
    """Whether backend `name` can run here (its module and runtime import)."""
    try:
        get_backend(name)
    except (ValueError, RuntimeError):
        return False
    return True


def get_backend(name: str):
    """The executable factory of backend `name`, importing its module on first use."""
    if name not in _MODULES:
        raise ValueError(f"unknown backend '{name}'; choose from {sorted(_MODULES)}")
    if name not in BACKENDS:
        try:
            importlib.import_module(_MODULES[name], __name__)
        except ImportError as e:
            raise RuntimeError(f"backend '{name}' is not available: {e}") from e
    return BACKENDS[name]


__all__ = ["NAMES", "available", "BACKENDS", "LOWERINGS", "backend", "lowering", "lowering_for", "get_backend"]
