"""A fused chain of six pointwise ops over 16 M float32 elements: one pass over memory.

    out = tanh(sigmoid(x * y + 0.5) * x) - y          (mul, add, sigmoid, mul, tanh, sub)

ipugraph plans the chain as ONE compute set (asserted here) and the cpu backend evaluates it in
one call: csrc/pointwise.h interprets the chain's instructions per block of 256 elements, each
instruction a vectorised loop over the block, so every intermediate stays in L1 and memory is
read (x, y) and written (out) once.  Beside it, for the same chain and threads:

  generated C++  the same program turned into straight-line C++ from the table's own `cpp`
                 expressions (ipugraph/ops/pointwise.py), compiled here with g++ -O3
                 -march=native -fopenmp: the "generate and compile" alternative to the
                 evaluator, to measure both and keep the faster;
  NumPy          the natural expression (a temporary per op: ~6 passes over memory);
  torch eager    likewise, on torch's intra-op threads;
  torch.compile  (with --torch-compile) Inductor's generated C++ for the chain;
  stream         np.add(x, y, out=z): the same three streams with no math, a bandwidth bound.

Each runtime is timed in its own block (--reps calls after one warm-up); medians are reported
with GB/s over the 3 x 64 MiB the chain must move, and each runtime's time relative to
ipugraph's.  ipugraph's figure is the compute set's kernel time from Engine.run(profile=True)
(the inputs' copy into the engine's storage is reported separately, as 'run() total').

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_pointwise.py --reps 10 \\
        --json bench/results/pointwise_chain_cpu.json
"""
import argparse
import ctypes
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))  # run from a checkout without installing
import ipugraph as ig  # noqa: E402
from ipugraph.benchmark import cpu_model, machine_cpu_seconds, own_cpu_seconds  # noqa: E402
from ipugraph.ops.pointwise import PRIMITIVES  # noqa: E402

SHAPE = (4096, 4096)                     # 16 M elements, 64 MiB per tensor


def chain(x, y, ops):
    """The benchmarked chain written once, over any namespace `ops` of the primitives."""
    return ops.tanh(ops.sigmoid(x * y + 0.5) * x) - y


class NumpyOps:
    tanh = staticmethod(np.tanh)

    @staticmethod
    def sigmoid(t):
        return 1.0 / (1.0 + np.exp(-t))


def generated_source(prog) -> str:
    """Straight-line C++ for a PointwiseProgram of same-shape float32 operands, one expression
    per instruction from the table's `cpp` field (placeholders {a} {b} {c})."""
    names = [f"in{i}[i]" for i in range(len(prog.operands))]
    names += [f"{v!r}f" for v in prog.immediates]
    body = []
    for k, ins in enumerate(prog.code):
        expr = PRIMITIVES[ins.op].cpp
        for slot, a in zip("abc", ins.args):
            expr = expr.replace("{" + slot + "}", f"({names[a]})")
        body.append(f"      const float t{k} = {expr};  // {ins.op}")
        names.append(f"t{k}")
    args = ", ".join(f"const float* __restrict in{i}" for i in range(len(prog.operands)))
    return "\n".join([
        '#include "pointwise_math.h"',
        "using namespace ipugraph;",
        f'extern "C" void chain({args}, float* __restrict out, int64_t n) {{',
        "#pragma omp parallel for simd schedule(static)",
        "  for (int64_t i = 0; i < n; ++i) {",
        *body,
        f"      out[i] = {names[prog.result]};",
        "  }",
        "}",
        ""])


def compile_generated(prog, workdir: str):
    src = os.path.join(workdir, "chain.cpp")
    lib = os.path.join(workdir, "chain.so")
    with open(src, "w") as f:
        f.write(generated_source(prog))
    # the extension's own flags (setup.py), so the comparison is of the code and not the options
    cmd = ["g++", "-O3", "-march=native", "-fopenmp", "-std=c++20", "-ffp-contract=fast",
           "-fno-math-errno", "-shared", "-fPIC", "-I", os.path.join(HERE, "..", "csrc"),
           src, "-o", lib]
    subprocess.run(cmd, check=True)
    fn = ctypes.CDLL(lib).chain
    fp = ctypes.POINTER(ctypes.c_float)
    fn.argtypes = [fp] * (len(prog.operands) + 1) + [ctypes.c_int64]
    fn.restype = None
    return fn, " ".join(cmd)


LOAD: dict[str, float | None] = {}          # runtime -> cores other processes used meanwhile


def block(name: str, fn, reps: int) -> list[float]:
    """`reps` timed calls of fn after one warm-up (first touch, caches), and the cores other
    processes kept busy during them (a busy core stalls every OpenMP barrier)."""
    fn()
    machine0, own0, wall0 = machine_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    machine1 = machine_cpu_seconds()
    LOAD[name] = None if machine0 is None or machine1 is None else max(
        0.0, (machine1 - machine0) - (own_cpu_seconds() - own0)) / (time.perf_counter() - wall0)
    return times


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--torch-compile", action="store_true",
                    help="also time torch.compile's Inductor kernel (compiles C++ on first call)")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    threads = int(os.environ.get("OMP_NUM_THREADS", len(os.sched_getaffinity(0))))
    import torch
    torch.set_num_threads(threads)

    rng = np.random.default_rng(0)
    xv = rng.standard_normal(SHAPE, np.float32)
    yv = rng.standard_normal(SHAPE, np.float32)
    expect = chain(xv.astype(np.float64), yv.astype(np.float64), NumpyOps)

    g = ig.Graph(name="pointwise_chain")
    x, y = g.input("x", SHAPE), g.input("y", SHAPE)
    g.output("out", chain(x, y, ig.ops))
    eng = ig.compile(g, backend="cpu")
    sets = eng.program.compute_sets
    if len(sets) != 1 or sets[0].op != "pointwise":
        raise SystemExit(f"expected one fused pointwise compute set, got {[s.op for s in sets]}")
    prog = sets[0].pointwise
    print(f"chain: {prog.describe()}  ({len(prog.code)} instructions, one compute set, "
          f"{threads} threads)")

    feeds = {"x": xv, "y": yv}
    results, errors = {}, {}

    kernel_times = []

    def ipugraph_kernel():
        eng.run(feeds, profile=True)
        kernel_times.append(eng.last_profile.kernel_seconds)
    block("ipugraph cpu (kernel)", ipugraph_kernel, args.reps)
    results["ipugraph cpu (kernel)"] = kernel_times[1:]
    results["ipugraph run() total"] = block("ipugraph run() total", lambda: eng.run(feeds),
                                            args.reps)
    errors["ipugraph cpu (kernel)"] = eng.run(feeds)["out"]

    with tempfile.TemporaryDirectory() as tmp:
        gen, gen_cmd = compile_generated(prog, tmp)
        out = np.empty(SHAPE, np.float32)
        fp = ctypes.POINTER(ctypes.c_float)
        ptrs = [a.ctypes.data_as(fp) for a in (xv, yv, out)]
        results["generated C++"] = block("generated C++", lambda: gen(*ptrs, out.size), args.reps)
        errors["generated C++"] = out.copy()

    results["NumPy"] = block("NumPy", lambda: chain(xv, yv, NumpyOps), args.reps)
    errors["NumPy"] = chain(xv, yv, NumpyOps)
    tx, ty = torch.from_numpy(xv), torch.from_numpy(yv)
    results["torch eager"] = block("torch eager", lambda: chain(tx, ty, torch), args.reps)
    errors["torch eager"] = chain(tx, ty, torch).numpy()
    if args.torch_compile:
        compiled = torch.compile(lambda a, b: chain(a, b, torch))
        errors["torch.compile"] = compiled(tx, ty).numpy()   # (compiles here)
        results["torch.compile"] = block("torch.compile", lambda: compiled(tx, ty), args.reps)
    z = np.empty(SHAPE, np.float32)
    results["stream (x + y, no math)"] = block("stream (x + y, no math)", lambda: np.add(xv, yv, out=z),
                                              args.reps)

    moved = 3 * xv.nbytes
    base = statistics.median(results["ipugraph cpu (kernel)"])
    head = f"{'runtime':<26} {'median ms':>10} {'min ms':>8} {'GB/s':>7} {'vs ipugraph':>12} " \
           f"{'max abs err':>12} {'others':>7}"
    print(head)
    print("-" * len(head))
    rows = {}
    for name, t in results.items():
        med = statistics.median(t)
        err = float(np.abs(errors[name] - expect).max()) if name in errors else None
        load = LOAD.get(name)
        rows[name] = {"median_ms": med * 1e3, "min_ms": min(t) * 1e3,
                      "gb_per_s": moved / med / 1e9, "time_over_ipugraph": med / base,
                      "max_abs_err_vs_float64": err, "other_processes_cores": load,
                      "times_ms": [s * 1e3 for s in t]}
        print(f"{name:<26} {med * 1e3:>10.1f} {min(t) * 1e3:>8.1f} {moved / med / 1e9:>7.1f} "
              f"{med / base:>11.2f}x {'' if err is None else f'{err:.1e}':>12} "
              f"{'?' if load is None else f'{load:.2f}':>7}")
    print(f"(vs ipugraph: time / ipugraph kernel's time, > 1 is slower; GB/s over "
          f"{moved / 2**20:.0f} MiB read and written; others: cores other processes used "
          "during that runtime's block)")
    busy = [name for name, load in LOAD.items() if load is not None and load >= 0.25]
    print(cpu_model() + (f"; BUSY during {', '.join(busy)}: those times are inflated, re-run"
                         if busy else "; quiet: no other process used a quarter core"))
    if args.json:
        data = {"command": " ".join(["OMP_NUM_THREADS=" + str(threads), ".venv/bin/python",
                                     *sys.argv]),
                "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                    timespec="seconds"),
                "chain": prog.describe(), "elements": int(xv.size), "threads": threads,
                "generated_compile": gen_cmd, "results": rows,
                "machine": {"cpu_model": cpu_model(), "busy_blocks": busy,
                            "loadavg_end": os.getloadavg(),
                            "platform": platform.platform()},
                "versions": {"ipugraph": ig.__version__, "numpy": np.__version__,
                             "torch": torch.__version__}}
        with open(args.json, "w") as f:
            json.dump(data, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
