"""Backends register one lowering per op name: how that op (as the anchor of a compute set)
runs there. A table per backend, never an if/elif chain; a test checks every registered op has
a lowering on every backend."""
from __future__ import annotations

from typing import Callable

LOWERINGS: dict[str, dict[str, Callable]] = {}
BACKENDS: dict[str, Callable] = {}          # name -> factory(program) -> executable


def lowering(op: str, backend: str):
    def register(fn: Callable) -> Callable:
        table = LOWERINGS.setdefault(backend, {})
        if op in table:
            raise RuntimeError(f"op '{op}' has two lowerings on backend '{backend}'")
        table[op] = fn
        return fn
    return register


def backend(name: str):
    def register(factory: Callable) -> Callable:
        BACKENDS[name] = factory
        return factory
    return register


def lowering_for(op: str, backend_name: str) -> Callable:
    try:
        return LOWERINGS[backend_name][op]
    except KeyError:
        raise NotImplementedError(f"op '{op}' has no lowering on the '{backend_name}' "
                                  "backend") from None
