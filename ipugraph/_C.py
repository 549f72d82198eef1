"""ipugraph._C: the C++/OpenMP codelets, in the build for this CPU's vector ISA.

setup.py builds csrc/ once per ISA (ipugraph._C_avx512, ipugraph._C_avx2; _C_portable or
_C_native on request); this module imports the best one the CPU supports (read from
/proc/cpuinfo) and re-exports its functions, so the kernels dispatch on the machine they run
on, not the one they were built on. IPUGRAPH_ISA=avx2 (say) picks one explicitly; an ISA the
CPU lacks is refused with the flags it needs.
"""
from __future__ import annotations

import importlib
import importlib.util
import os

ORDER = ("native", "avx512", "avx2", "portable")
REQUIRES = {"avx512": {"avx512f", "avx512bw", "avx512dq", "avx512vl", "avx2", "fma"},
            "avx2": {"avx2", "fma"}, "native": set(), "portable": set()}


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def built() -> list[str]:
    """The ISA builds present, best first."""
    return [isa for isa in ORDER if importlib.util.find_spec(f"{__name__}_{isa}") is not None]


def supported(isa: str) -> bool:
    return REQUIRES[isa] <= cpu_flags()


def available() -> list[str]:
    """The builds this CPU can run, best first."""
    return [isa for isa in built() if supported(isa)]


def load(isa: str):
    """The extension module of one ISA build (for tests that run every ISA path)."""
    if isa not in built():
        raise ImportError(f"ipugraph._C: no '{isa}' build (built: {', '.join(built()) or 'none'}; "
                          "run `make ext`)")
    if not supported(isa):
        missing = sorted(REQUIRES[isa] - cpu_flags())
        raise ImportError(f"ipugraph._C: this CPU cannot run the '{isa}' build (it lacks "
                          f"{', '.join(missing)})")
    return importlib.import_module(f"{__name__}_{isa}")


def _choose() -> str:
    wanted = os.environ.get("IPUGRAPH_ISA", "").strip().lower()
    if wanted:
        return wanted
    runnable = available()
    if not runnable:
        raise ImportError("ipugraph._C is not built, or no build runs on this CPU (built: "
                          f"{', '.join(built()) or 'none'}); run `make ext`")
    return runnable[0]


# libgomp's own wait policy is kept (idle workers spin ~300k iterations, then sleep):
# bench/bench_threads.py measured OMP_WAIT_POLICY=ACTIVE degrading less with a core taken by
# another process (2.7-3.9x slower instead of 4.1-4.8x) at no quiet cost, but its workers spin
# on between runs and starve every other runtime in the process (ONNX Runtime 2.5x slower in
# one bench run); PASSIVE degraded least (1.9x) but cost 67-71 % on a quiet machine.

isa = _choose()
_module = load(isa)
module_file = _module.__file__
globals().update({k: v for k, v in vars(_module).items() if not k.startswith("__")})
