"""Targets: the machine a plan partitions work over.

IPU figures (see ../shared/ANCHORS.md for the collection):
- Mk1 GC2: 1216 tiles × 256 KiB SRAM, 6 worker threads/tile, 31.1 TFLOP/s FP32 and 124.5 FP16
  peak, which at ~1.6 GHz implies 8 FP32 / 32 FP16 MACs per tile per cycle. Jia et al.,
  "Dissecting the Graphcore IPU Architecture via Microbenchmarking", arXiv:1912.03413.
- Mk2 GC200: 1472 tiles × 624 KiB (~900 MB), 6 worker threads/tile, 1.33 GHz on the M2000,
  62.5 TFLOP/s FP32 / 250 FP16 peak, implying 16 FP32 / 64 FP16 MACs per tile per cycle.
  Graphcore GC200 product announcement and the IPU Memory and Performance Optimisation guide.
- Exchange: ~4 bytes/cycle/tile, the commonly quoted per-tile figure (~8 TB/s over 1472 tiles
  at 1.33 GHz). The cost of one BSP sync is modelled as a fixed number of cycles (an assumption
  of this model, not a published figure; it only matters for graphs of many tiny steps).
- PopLibs' availableMemoryProportion defaults to 0.6 of a tile's memory for an op's temporaries.
- Non-AMP arithmetic (pooling, elementwise, partial-sum reductions): the tile's 64-bit vector
  datapath does 2 FP32 operations per cycle, shared by its 6 barrel-scheduled workers (each
  worker issues every 6th cycle). Model assumption from the ISA's 64-bit SIMD width.

The host target treats each core as a tile whose "memory" is its L2 cache: plans prefer vertex
slices whose working set fits it, but a host plan is never refused for size.
"""
from __future__ import annotations

import functools
import os
import re
from dataclasses import dataclass, replace

import numpy as np


@dataclass(frozen=True)
class Target:
    name: str
    kind: str                                   # "ipu" or "host"
    tiles: int
    bytes_per_tile: int
    clock_hz: float
    macs_per_cycle: int                         # FP32 MACs per tile per cycle
    fp16_macs_per_cycle: int
    worker_threads: int = 6
    exchange_bytes_per_cycle: float = 4.0       # bytes a tile can receive per cycle
    sync_cycles: int = 200                      # one BSP sync (model assumption)
    vertex_overhead_cycles: int = 100           # launching one vertex on a worker
    channel_grain: int = 8                      # out-channel split granularity (vector width)
    vector_grain: int = 2                       # elementwise split granularity
    available_memory_proportion: float = 0.6    # PopLibs default
    memory_is_cache: bool = False               # True: bytes_per_tile is soft (host L2)
    spill_bytes_per_cycle: float = 16.0         # host: bytes/cycle a core streams from L3/DRAM
    conv_pixel_block: int = 1                   # output pixels the conv codelet computes at once
    vector_ops_per_cycle: float = 2.0           # FP32 element ops per tile per cycle, non-AMP
    gemm_blocks: int = 1                        # host: 16-channel blocks per microkernel call

    def block_efficiency(self, out_channels):
        """Host: the share of the FMA peak the conv/GEMM microkernel reaches on a slice of
        `out_channels` (array): with AVX-512 it holds up to 4 blocks of 16 channels in
        registers, and fewer blocks leave FMA latency and per-call overhead uncovered
        (measured: ~0.55 / 0.85 / 0.95 / 1 for 1-4 blocks). 1 elsewhere."""
        if self.gemm_blocks <= 1:
            return np.ones_like(np.asarray(out_channels, np.float64))
        nb = np.minimum(-(-np.asarray(out_channels) // 16), self.gemm_blocks)
        return np.asarray([1.0, 0.55, 0.85, 0.95, 1.0])[np.clip(nb, 0, 4)]

    # -- constructors --------------------------------------------------------------------
    @staticmethod
    def ipu_mk1(**overrides) -> "Target":
        base = Target("ipu-mk1", "ipu", tiles=1216, bytes_per_tile=256 * 1024, clock_hz=1.6e9,
                      macs_per_cycle=8, fp16_macs_per_cycle=32)
        return replace(base, **overrides)

    @staticmethod
    def ipu_mk2(**overrides) -> "Target":
        base = Target("ipu-mk2", "ipu", tiles=1472, bytes_per_tile=624 * 1024, clock_hz=1.33e9,
                      macs_per_cycle=16, fp16_macs_per_cycle=64)
        return replace(base, **overrides)

    @staticmethod
    def ipu(tiles: int = 1472, bytes_per_tile: int = 624 * 1024, clock_hz: float = 1.33e9,
            macs_per_cycle: int = 16, fp16_macs_per_cycle: int = 64, name: str = "ipu-custom",
            **overrides) -> "Target":
        """A hypothetical IPU (defaults: Mk2); every field of Target may be overridden."""
        if tiles < 1 or bytes_per_tile < 1:
            raise ValueError(f"Target.ipu: tiles ({tiles}) and bytes_per_tile "
                             f"({bytes_per_tile}) must be positive")
        return Target(name, "ipu", tiles=tiles, bytes_per_tile=bytes_per_tile, clock_hz=clock_hz,
                      macs_per_cycle=macs_per_cycle, fp16_macs_per_cycle=fp16_macs_per_cycle,
                      **overrides)

    @staticmethod
    def host(threads: int | None = None, **overrides) -> "Target":
        """This machine: one tile per worker thread (OMP_NUM_THREADS or the usable cores)."""
        if threads is None:
            env = os.environ.get("OMP_NUM_THREADS", "")
            threads = int(env) if env.isdigit() and int(env) > 0 else len(os.sched_getaffinity(0))
        info = _cpu_info()
        base = Target("host", "host", tiles=threads, bytes_per_tile=_l2_bytes(),
                      clock_hz=info["clock_hz"], macs_per_cycle=info["macs_per_cycle"],
                      fp16_macs_per_cycle=info["macs_per_cycle"], worker_threads=1,
                      exchange_bytes_per_cycle=4.0, sync_cycles=3000,
                      vertex_overhead_cycles=2000, channel_grain=16, vector_grain=1024,
                      memory_is_cache=True, conv_pixel_block=6, spill_bytes_per_cycle=6.0,
                      gemm_blocks=4 if info["macs_per_cycle"] == 32 else 1,
                      vector_ops_per_cycle=info["macs_per_cycle"] / 2)
        return replace(base, **overrides)

    @staticmethod
    def from_name(name: str) -> "Target":
        """'host', 'ipu-mk1', 'ipu-mk2' (as the CLI spells them)."""
        table = {"host": Target.host, "cpu": Target.host, "ipu-mk1": Target.ipu_mk1,
                 "mk1": Target.ipu_mk1, "ipu-mk2": Target.ipu_mk2, "mk2": Target.ipu_mk2}
        try:
            return table[name.lower()]()
        except KeyError:
            raise ValueError(f"unknown target '{name}'; choose from host, ipu-mk1, ipu-mk2") from None

    # -- derived -------------------------------------------------------------------------
    @property
    def total_bytes(self) -> int:
        return self.tiles * self.bytes_per_tile

    @property
    def op_bytes_per_tile(self) -> int:
        """What one op's vertices may use on a tile (availableMemoryProportion)."""
        return int(self.bytes_per_tile * self.available_memory_proportion)

    def macs_per_cycle_for(self, dtype: str) -> int:
        return self.fp16_macs_per_cycle if dtype == "float16" else self.macs_per_cycle

    def peak_flops(self, dtype: str = "float32") -> float:
        return 2.0 * self.macs_per_cycle_for(dtype) * self.tiles * self.clock_hz

    def describe(self) -> str:
        mem = "L2" if self.memory_is_cache else "SRAM"
        return (f"{self.name}: {self.tiles} tiles × {self.bytes_per_tile // 1024} KiB {mem}, "
                f"{self.clock_hz / 1e9:.2f} GHz, {self.macs_per_cycle} FP32 MACs/tile/cycle, "
                f"peak {self.peak_flops() / 1e12:.2f} TFLOP/s FP32")


def _read(path: str) -> str:
    with open(path) as f:
        return f.read()


@functools.lru_cache(maxsize=None)
def _l2_bytes(default: int = 512 * 1024) -> int:
    try:
        for idx in sorted(os.listdir("/sys/devices/system/cpu/cpu0/cache")):
            base = f"/sys/devices/system/cpu/cpu0/cache/{idx}"
            if _read(f"{base}/level").strip() == "2":
                size = _read(f"{base}/size").strip()
                mult = {"K": 1024, "M": 1024 * 1024}.get(size[-1], 1)
                return int(size.rstrip("KM")) * mult
    except OSError:
        pass
    return default


@functools.lru_cache(maxsize=None)
def _cpu_info() -> dict:
    """Clock and FP32 FMA throughput of this CPU (MACs per core per cycle), read once."""
    text = ""
    try:
        text = _read("/proc/cpuinfo")
    except OSError:
        pass
    mhz = [float(m) for m in re.findall(r"cpu MHz\s*:\s*([\d.]+)", text)]
    flags = set((re.search(r"flags\s*:\s*(.*)", text) or re.match("", "")).group(1).split()) \
        if "flags" in text else set()
    # the kernels run the ISA build ipugraph/_C.py loads: IPUGRAPH_ISA may pick a lesser one
    isa = os.environ.get("IPUGRAPH_ISA", "").strip().lower()
    if isa in ("avx2", "portable"):
        flags = {f for f in flags if not f.startswith("avx512")}
    if isa == "portable":
        flags -= {"avx2", "fma"}
    family = re.search(r"cpu family\s*:\s*(\d+)", text)
    vendor_amd = "AuthenticAMD" in text
    fam = int(family.group(1)) if family else 0
    if vendor_amd and fam == 23 and "fma" in flags:
        macs = 8        # Zen 1/2 era: 256-bit FMAs as two 128-bit halves (Zen 1)
    elif vendor_amd and "fma" in flags:
        macs = 16       # Zen 3/4: two 256-bit FMA pipes (Zen 4 double-pumps AVX-512)
    elif "avx512f" in flags:
        macs = 32       # Intel with two 512-bit FMA units
    elif "avx2" in flags and "fma" in flags:
        macs = 16
    else:
        macs = 4
    return {"clock_hz": (max(mhz) if mhz else 2500.0) * 1e6, "macs_per_cycle": macs}
