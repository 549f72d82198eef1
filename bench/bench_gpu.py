"""The GPU measurement of the triton backend, in one command: a markdown table and a JSON record
in bench/results/ (gpu_<device>_<date>.md / .json).

    python bench/bench_gpu.py --quick        # first run: every code path, few iterations
    python bench/bench_gpu.py                # the full run
    python bench/bench_gpu.py --parts net --dtypes fp16 --batches 1,256

Expected time on an H100, first run on a fresh machine: --quick about 3 minutes, the full run
about 5 (peak ~10 s, layers ~3 min, network ~2 min), most of it Triton compiling and autotuning
(compiled kernels are cached on disk, so a full run after --quick is about a minute shorter).

Three parts, all in this process:

(a) peak   The device's measured peak: a large torch matmul (8192^3) per dtype, timed with CUDA
           events -- the TFLOP/s every layer and network figure is compared against ("% peak").
(b) layers Every distinct conv shape of ResNet-34 at 224x224 (as bench_kernels.py), per batch and
           dtype: the Triton implicit-GEMM conv (ipugraph.kernels.conv2d_nhwc, fused bias + ReLU
           epilogue) against torch.nn.functional.conv2d on cuDNN (channels_last, same dtype,
           with bias; cudnn.benchmark on). Device time per call: each side's calls are captured
           in a CUDA graph and replayed between CUDA events (no Python launch overhead), the two
           sides interleaved sample by sample; medians.
(c) net    Whole ResNet-34 inference at batch 1, 32, 256 (224x224): ipugraph's triton backend
           (and with cuda_graph=True at batch 1) against torch eager on cuDNN, channels_last,
           same dtype (and torch captured in a CUDA graph at the same batches), same weights and
           input, interleaved round by round; medians of per-call CUDA-event times, each call
           synchronised. Inputs and outputs stay on the device; each call includes its own
           NCHW -> NHWC input layout change. Random weights with batch-norm statistics away
           from (0, 1) (interop.torch_resnet.randomize_), so every folded weight matters. Before
           timing, the logits of every runtime are compared with torch in fp32 (TF32 off) on
           the same rounded input, and with torch eager in the same dtype.

Every first call (Triton compile and autotune, cuDNN algorithm search, CUDA graph capture) is a
warm-up: its time is recorded as first_call_s, never among the timings.

dtypes: fp16, bf16, tf32 (float32 storage, TF32 tensor cores: ipugraph allow_tf32=True, torch
cudnn/matmul allow_tf32=True) and fp32 (IEEE float32 dots on both sides). A network dtype the
backend cannot take as a graph dtype is recorded as skipped, with the reason. (Graphs take
float16 and float32 today, so bf16 is measured per layer only.)

The outputs are rewritten after every part, so a run cut short keeps what it measured; a
measurement that raises is recorded under "errors" and the run goes on. Exit status 1 if any
measurement failed or any error check is above its tolerance (marked in the tables).

--smoke: tiny shapes, 1 iteration, a small network; on the CPU (torch CPU, the kernels in
Triton's interpreter: TRITON_INTERPRET=1 is set when no CUDA device is present) with
perf_counter timings, so CI runs every code path; on a GPU the same tiny run uses CUDA.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import ctypes
import datetime
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)  # runnable from a checkout without installing

SCHEMA = "ipugraph-bench-gpu/1"

from resnet34_shapes import SHAPES  # noqa: E402  (bench/ is on sys.path)

# --smoke: one shape per conv form (gathered K, tap loop, 1x1 stride 2)
SMOKE_SHAPES = [
    ("smoke 7x7/2 c3", 17, 17, 3, 16, 7, 7, 2, 3, 1),
    ("smoke 3x3 32", 9, 9, 32, 32, 3, 3, 1, 1, 2),
    ("smoke 1x1/2 32-64", 9, 9, 32, 64, 1, 1, 2, 0, 1),
]


class DType:
    def __init__(self, key, torch_name, graph_dtype, tf32, label):
        self.key, self.torch_name, self.graph_dtype = key, torch_name, graph_dtype
        self.tf32, self.label = tf32, label


DTYPES = {
    "fp16": DType("fp16", "float16", "float16", False, "fp16"),
    "bf16": DType("bf16", "bfloat16", "bfloat16", False, "bf16"),
    "tf32": DType("tf32", "float32", "float32", True, "fp32 storage, TF32 dots"),
    "fp32": DType("fp32", "float32", "float32", False, "fp32, IEEE dots"),
}
# max |a - b| / max |ref| against fp32 (TF32 off) on the same rounded inputs: a conv rounds its
# output once; a network compounds one rounding per layer
LAYER_TOL = {"fp16": 1e-2, "bf16": 5e-2, "tf32": 1e-2, "fp32": 1e-4}
NET_TOL = {"fp16": 5e-2, "bf16": 2e-1, "tf32": 5e-2, "fp32": 1e-3}
PARTS = ("peak", "layers", "net")

# Rough seconds of each part on an H100, first run in a fresh machine (printed at the start).
# Compilation and autotuning dominate: each kernel compiles once per dtype, epilogue and class
# of shape, in 4 configs, at its first use (then cached on disk, ~/.triton/cache, so a full run
# after --quick is shorter), and every new (shape, dtype) autotunes 4 configs (~0.6 s). Timed
# work is small: a layer sample is ~2 ms of device time, a batch-256 network call ~10-40 ms.
BUDGET_S = {"full": {"peak": 10, "layers": 180, "net": 120},
            "quick": {"peak": 5, "layers": 100, "net": 70}}


_T0 = time.perf_counter()


def progress(message: str) -> None:
    print(f"[bench_gpu +{time.perf_counter() - _T0:6.1f}s] {message}", file=sys.stderr,
          flush=True)


def int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"expected positive integers like 1,32,256, got '{text}'")
    return values


def name_list(choices):
    def parse(text: str) -> list[str]:
        values = [v.strip() for v in text.split(",") if v.strip()]
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"choose from {', '.join(choices)} (comma "
                                             f"separated), got '{text}'")
        return list(dict.fromkeys(values))
    return parse


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--quick", action="store_true",
                      help="few iterations, layers at batch 32, network at batch 1 and 32: a "
                      "first run through every code path")
    mode.add_argument("--smoke", action="store_true",
                      help="tiny shapes, 1 iteration (CPU + Triton interpreter without a GPU)")
    ap.add_argument("--parts", type=name_list(PARTS), default=list(PARTS),
                    help="which parts to run (default: peak,layers,net)")
    ap.add_argument("--dtypes", type=name_list(tuple(DTYPES)), default=None,
                    help="comma separated, of fp16,bf16,tf32,fp32 (default: fp16,bf16,tf32)")
    ap.add_argument("--batches", type=int_list, default=None,
                    help="batch sizes of the layers and the network (default: layers 32,256; "
                    "network 1,32,256)")
    ap.add_argument("--layer-batches", type=int_list, default=None,
                    help="batch sizes of part (b) only (overrides --batches there)")
    ap.add_argument("--graph-batches", type=int_list, default=None,
                    help="network batch sizes also run with cuda_graph=True (default: 1)")
    ap.add_argument("--iters", type=int, default=None,
                    help="timed samples per measurement (default 30; --quick 5; --smoke 1)")
    ap.add_argument("--warmup", type=int, default=None,
                    help="untimed rounds after the first call (default 3; --quick 1; --smoke 0)")
    ap.add_argument("--model", choices=("resnet18", "resnet34", "resnet50"), default=None,
                    help="network of part (c) (default resnet34; --smoke resnet18)")
    ap.add_argument("--image-size", type=int, default=None,
                    help="network input side (default 224; --smoke 17)")
    ap.add_argument("--peak-size", type=int, default=None,
                    help="M = N = K of the peak matmul (default 8192; --smoke 64)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=os.path.join(ROOT, "bench", "results"), metavar="DIR",
                    help="where the .md and .json go (default bench/results)")
    return ap


def resolve(args) -> None:
    """Fill the defaults that depend on --quick / --smoke."""
    mode = "smoke" if args.smoke else "quick" if args.quick else "full"
    args.mode = mode
    pick = {"full": 0, "quick": 1, "smoke": 2}[mode]

    def default(value, full, quick, smoke):
        return value if value is not None else (full, quick, smoke)[pick]

    args.dtypes = default(args.dtypes, ["fp16", "bf16", "tf32"], ["fp16", "bf16", "tf32"],
                          ["fp16", "bf16", "tf32"])
    args.net_batches = default(args.batches, [1, 32, 256], [1, 32], [1])
    args.layer_batches = default(args.layer_batches,
                                 args.batches or [32, 256], args.batches or [32],
                                 args.batches or [2])
    args.graph_batches = default(args.graph_batches, [1], [1], [1])
    args.iters = max(1, default(args.iters, 30, 5, 1))
    args.warmup = max(0, default(args.warmup, 3, 1, 0))
    args.model = default(args.model, "resnet34", "resnet34", "resnet18")
    args.image_size = default(args.image_size, 224, 224, 17)
    args.peak_size = default(args.peak_size, 8192, 8192, 64)
    args.num_classes = 10 if args.smoke else 1000
    args.shapes = SMOKE_SHAPES if args.smoke else SHAPES


# -- the device, its timer and its versions ----------------------------------------------------

def setup_runtime(smoke: bool):
    """(torch, triton, ipugraph, ipugraph.kernels, the backend module, device). Decides
    TRITON_INTERPRET before the kernels are imported: --smoke without CUDA interprets."""
    import torch
    if smoke and not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
    import triton

    import ipugraph as ig
    try:
        from ipugraph.backends import triton as backend
    except ImportError as e:
        raise SystemExit(f"bench_gpu: the triton backend is not available: {e}") from None
    _, kernels, device = backend.runtime()
    if device.type != "cuda" and not smoke:
        raise SystemExit("bench_gpu: needs a CUDA device (TRITON_INTERPRET=1 runs the kernels on "
                         "the CPU: use --smoke for that)")
    return torch, triton, ig, kernels, backend, device


class Timer:
    """Seconds of device work. On a GPU: CUDA events around each call, synchronised after it.
    On the CPU (--smoke only): perf_counter."""

    def __init__(self, torch, device):
        self.torch = torch
        self.cuda = device.type == "cuda"
        self.method = "cuda events" if self.cuda else "perf_counter (CPU, --smoke)"

    def call(self, fn) -> float:
        return self.call_with_result(fn)[0]

    def call_with_result(self, fn):
        """(seconds, what fn returned)."""
        if self.cuda:
            start = self.torch.cuda.Event(enable_timing=True)
            end = self.torch.cuda.Event(enable_timing=True)
            start.record()
            result = fn()
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3, result
        t0 = time.perf_counter()
        result = fn()
        return time.perf_counter() - t0, result

    def repeated(self, fn, calls: int):
        """(a callable running `fn` `calls` times, how): on a GPU the calls are captured in one
        CUDA graph, so a replay times the device work alone; if capture fails (or on the CPU),
        a plain loop of eager calls."""
        def loop():
            for _ in range(calls):
                fn()
        if not self.cuda:
            return loop, "eager loop"
        torch = self.torch
        try:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                fn()
            torch.cuda.current_stream().wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                loop()
            torch.cuda.synchronize()
            return graph.replay, f"cuda graph of {calls} calls"
        except Exception as e:  # noqa: BLE001 - any capture failure: fall back, say so
            progress(f"warning: CUDA graph capture failed ({type(e).__name__}: {e}); timing "
                     "an eager loop instead")
            torch.cuda.synchronize()
            return loop, f"eager loop of {calls} calls (capture failed)"


def _driver(torch) -> dict:
    """The driver: its CUDA API version (torch.cuda's private helper, else libcuda) and its
    release (nvidia-smi), whichever can be read."""
    info = {"cuda_api": None, "release": None}
    version = None
    fn = getattr(torch._C, "_cuda_getDriverVersion", None)
    if callable(fn):
        with contextlib.suppress(Exception):
            version = int(fn())
    if not version:
        with contextlib.suppress(Exception):
            lib = ctypes.CDLL("libcuda.so.1")
            value = ctypes.c_int()
            if lib.cuDriverGetVersion(ctypes.byref(value)) == 0:
                version = value.value
    if version:
        info["cuda_api"] = f"{version // 1000}.{version % 1000 // 10}"
    with contextlib.suppress(Exception):
        res = subprocess.run(["nvidia-smi", "--query-gpu=driver_version",
                              "--format=csv,noheader"], capture_output=True, text=True,
                             timeout=20)
        if res.returncode == 0 and res.stdout.strip():
            info["release"] = res.stdout.strip().splitlines()[0].strip()
    return info


def device_info(torch, triton, ig, device, interpret: bool) -> tuple[dict, dict]:
    import numpy as np
    versions = {"ipugraph": ig.__version__, "python": platform.python_version(),
                "numpy": np.__version__, "torch": torch.__version__,
                "triton": triton.__version__, "cuda": torch.version.cuda,
                "cudnn": None, "driver": None}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        versions["cudnn"] = torch.backends.cudnn.version()
        versions["driver"] = _driver(torch)
        info = {"name": props.name, "type": "cuda", "index": device.index,
                "capability": f"{props.major}.{props.minor}",
                "multiprocessors": props.multi_processor_count,
                "memory_gib": round(props.total_memory / 2**30, 1),
                "l2_cache_mib": round(getattr(props, "L2_cache_size", 0) / 2**20, 1) or None,
                "interpreter": False}
    else:
        info = {"name": f"CPU ({platform.processor() or platform.machine()}), Triton "
                        f"interpreter" if interpret else "CPU", "type": "cpu", "index": None,
                "capability": None, "multiprocessors": os.cpu_count(), "memory_gib": None,
                "l2_cache_mib": None, "interpreter": interpret}
    return info, versions


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "device"


@contextlib.contextmanager
def tf32(torch, allow: bool):
    """torch's TF32 switches (cuDNN convs and cuBLAS matmuls), restored afterwards."""
    old = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = allow
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = old


def rel_error(torch, actual, expected) -> float:
    a, e = actual.detach().double(), expected.detach().double()
    if not bool(torch.isfinite(a).all()):
        return float("inf")
    return float((a - e).abs().max() / e.abs().max().clamp_min(1e-30))


def _median_ms(times: list[float]) -> float:
    return statistics.median(times) * 1e3


def _free(torch) -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.empty_cache()


def guarded(ctx, part: str, what: str, fn):
    """fn(), or None after recording its exception in results["errors"]: one failing
    measurement must not cost the others (nor the outputs) of a run on a lent GPU."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - recorded, reported, and the exit status is 1
        import traceback
        progress(f"ERROR in {part} {what}: {type(e).__name__}: {e}")
        traceback.print_exc(file=sys.stderr)
        ctx["results"]["errors"].append({"part": part, "what": what,
                                         "error": f"{type(e).__name__}: {e}"})
        with contextlib.suppress(Exception):
            _free(ctx["torch"])
        return None


# -- (a) the measured peak ---------------------------------------------------------------------

def bench_peak_one(ctx, key: str) -> dict:
    torch, timer, args, device = ctx["torch"], ctx["timer"], ctx["args"], ctx["device"]
    n = args.peak_size
    reps = {"full": 10, "quick": 3, "smoke": 1}[args.mode]
    spec = DTYPES[key]
    dt = getattr(torch, spec.torch_name)
    gen = torch.Generator(device=device).manual_seed(args.seed)
    a = torch.randn(n, n, device=device, generator=gen).to(dt)
    b = torch.randn(n, n, device=device, generator=gen).to(dt)
    c = torch.empty(n, n, device=device, dtype=dt)

    def mm():
        torch.matmul(a, b, out=c)

    with tf32(torch, spec.tf32):
        first = timer.call(mm)                 # cuBLAS heuristics, workspace
        if timer.cuda:                         # ~0.3 s of matmuls: clocks up, as under load
            for _ in range(min(200, math.ceil(0.3 / max(timer.call(mm), 1e-6)))):
                mm()
        times = [timer.call(mm) for _ in range(reps)]
    flop = 2.0 * n ** 3
    row = {"dtype": key, "label": spec.label, "m": n, "n": n, "k": n,
           "median_ms": _median_ms(times), "tflops": flop / statistics.median(times) / 1e12,
           "first_call_s": first, "times_ms": [t * 1e3 for t in times]}
    progress(f"(a) peak {key}: {n}^3 matmul {row['median_ms']:.3f} ms = "
             f"{row['tflops']:.1f} TFLOP/s")
    return row


def bench_peak(ctx) -> None:
    for key in ctx["args"].dtypes:
        row = guarded(ctx, "peak", key, lambda: bench_peak_one(ctx, key))
        if row is not None:
            ctx["results"]["peak"].append(row)
    _free(ctx["torch"])


def peak_of(ctx, key: str) -> float | None:
    for row in ctx["results"]["peak"]:
        if row["dtype"] == key:
            return row["tflops"]
    return None


def pct(tflops: float, peak: float | None) -> float | None:
    return 100.0 * tflops / peak if peak else None


# -- (b) conv layers ---------------------------------------------------------------------------

def bench_layer(ctx, key: str, batch: int, shape) -> dict:
    torch, K, timer, args, device = (ctx["torch"], ctx["kernels"], ctx["timer"], ctx["args"],
                                     ctx["device"])
    F = torch.nn.functional
    cl = torch.channels_last
    spec = DTYPES[key]
    dt = getattr(torch, spec.torch_name)
    name, h, w, c, k, r, s, st, pd, occ = shape
    oh, ow = (h + 2 * pd - r) // st + 1, (w + 2 * pd - s) // st + 1
    flop = 2.0 * batch * oh * ow * k * c * r * s

    gen = torch.Generator(device=device).manual_seed(args.seed)
    x = torch.randn(batch, h, w, c, device=device, generator=gen).to(dt)        # NHWC
    weight = (torch.randn(k, c, r, s, device=device, generator=gen)
              / math.sqrt(c * r * s)).to(dt)
    bias = 0.1 * torch.randn(k, device=device, generator=gen)     # fp32, as the backend's
    packed = K.pack_weight(weight, 1)
    out = torch.empty(batch, oh, ow, k, device=device, dtype=dt)
    x_cl = x.permute(0, 3, 1, 2)            # the NCHW view of NHWC data: channels_last
    w_cl = weight.contiguous(memory_format=cl)
    b_dt = bias.to(dt)

    def ours():
        K.conv2d_nhwc(x, packed, (r, s), bias, None, out, stride=st, padding=pd, relu=True,
                      allow_tf32=spec.tf32)

    def theirs():
        return F.conv2d(x_cl, w_cl, b_dt, stride=st, padding=pd)

    with tf32(torch, spec.tf32):
        first_ours = timer.call(ours)          # compile + autotune
        first_theirs, theirs_out = timer.call_with_result(theirs)   # cuDNN algorithm search
    with tf32(torch, False):
        ref = torch.relu(F.conv2d(x_cl.float(), weight.float(), bias, stride=st, padding=pd))
    err_ours = rel_error(torch, out.permute(0, 3, 1, 2), ref)
    err_theirs = rel_error(torch, torch.relu(theirs_out), ref)
    del ref, theirs_out

    with tf32(torch, spec.tf32):
        for _ in range(max(1, args.warmup)):
            timer.call(ours)
            timer.call(theirs)
        calls = 1
        if timer.cuda:                     # ~2 ms of device work per sample (at 200 TFLOP/s)
            calls = max(1, min(100, round(2e-3 * 200e12 / flop)))
        run_ours, method = timer.repeated(ours, calls)
        run_theirs, _ = timer.repeated(theirs, calls)
        t_ours, t_theirs = [], []
        for _ in range(args.iters):         # interleaved: load changes hit both alike
            t_ours.append(timer.call(run_ours) / calls)
            t_theirs.append(timer.call(run_theirs) / calls)
    del run_ours, run_theirs, x, weight, packed, out, x_cl, w_cl
    peak = peak_of(ctx, key)
    mo, mt = statistics.median(t_ours), statistics.median(t_theirs)
    tol = LAYER_TOL[key]
    row = {"batch": batch, "dtype": key, "name": name, "occurrences": occ,
           "shape": {"H": h, "W": w, "C": c, "K": k, "R": r, "S": s, "stride": st, "pad": pd,
                     "OH": oh, "OW": ow},
           "gflop": flop / 1e9, "method": method,
           "triton_ms": mo * 1e3, "cudnn_ms": mt * 1e3,
           "triton_tflops": flop / mo / 1e12, "cudnn_tflops": flop / mt / 1e12,
           "triton_pct_peak": pct(flop / mo / 1e12, peak),
           "cudnn_pct_peak": pct(flop / mt / 1e12, peak),
           "cudnn_over_triton": mt / mo,
           "triton_max_rel_err": err_ours, "cudnn_max_rel_err": err_theirs, "tolerance": tol,
           "ok": err_ours <= tol,
           "first_call_s": {"triton": first_ours, "cudnn": first_theirs},
           "triton_times_ms": [t * 1e3 for t in t_ours],
           "cudnn_times_ms": [t * 1e3 for t in t_theirs]}
    progress(f"(b) {key} b{batch} {name:<18} triton {mo * 1e3:8.3f} ms "
             f"({row['triton_tflops']:6.1f} TFLOP/s)  cudnn {mt * 1e3:8.3f} ms "
             f"({row['cudnn_tflops']:6.1f})  cudnn/triton {mt / mo:5.2f}  err {err_ours:.1e}"
             + ("" if row["ok"] else f"  ABOVE TOLERANCE {tol:.0e}"))
    return row


def bench_layers(ctx) -> None:
    args, res = ctx["args"], ctx["results"]
    for key in args.dtypes:
        for batch in args.layer_batches:
            group = []
            for shape in args.shapes:
                row = guarded(ctx, "layers", f"{key} b{batch} {shape[0]}",
                              lambda: bench_layer(ctx, key, batch, shape))
                if row is not None:
                    group.append(row)
                    res["layers"].append(row)
            _free(ctx["torch"])
            if len(group) != len(args.shapes):
                continue                       # no weighted total over a partial set
            flop = sum(r["gflop"] * r["occurrences"] for r in group) / 1e3     # TFLOP
            t_ours = sum(r["triton_ms"] * r["occurrences"] for r in group) / 1e3
            t_theirs = sum(r["cudnn_ms"] * r["occurrences"] for r in group) / 1e3
            peak = peak_of(ctx, key)
            res["layer_totals"].append({"batch": batch, "dtype": key, "tflop": flop,
                           "triton_ms": t_ours * 1e3, "cudnn_ms": t_theirs * 1e3,
                           "triton_tflops": flop / t_ours, "cudnn_tflops": flop / t_theirs,
                           "triton_pct_peak": pct(flop / t_ours, peak),
                           "cudnn_pct_peak": pct(flop / t_theirs, peak),
                           "cudnn_over_triton": t_theirs / t_ours})
            progress(f"(b) {key} b{batch} weighted by occurrence: triton {t_ours * 1e3:.2f} ms, "
                     f"cudnn {t_theirs * 1e3:.2f} ms, cudnn/triton {t_theirs / t_ours:.2f}")


# -- (c) the whole network ---------------------------------------------------------------------

def cast_graph(ig, src, dtype: str):
    """A copy of `src` whose inputs, variables and float constants are `dtype` (values cast),
    every op rebuilt on them in the same order with the same names (so every op's output
    takes the new dtype through its shape rule)."""
    g = ig.Graph(src.target, name=f"{src.name}_{dtype}")
    floats = ("float16", "float32", "float64")
    new = {}
    for t in src.tensors.values():
        if t.kind == "input":
            new[t.name] = g.input(t.name, t.shape, dtype=dtype if t.dtype in floats else t.dtype)
        elif t.kind == "variable":
            new[t.name] = g.variable(t.name, t.shape, dtype=dtype if t.dtype in floats
                                     else t.dtype, value=t.value, trainable=t.trainable)
        elif t.kind == "constant":
            new[t.name] = g.constant(t.value, name=t.name,
                                     dtype=dtype if t.dtype in floats else t.dtype)
    for node in src.nodes:
        outs = g.add_node(node.op, tuple(new[t.name] for t in node.inputs), node.attrs,
                          name=node.name)
        for old, out in zip(node.outputs, outs):
            new[old.name] = out
    for name, t in src.outputs.items():
        g.output(name, new[t.name])
    return g


def network_support(ig, backend, key: str) -> str | None:
    """Why the triton backend cannot run a `key` network graph, or None if it can."""
    gd = DTYPES[key].graph_dtype
    if gd not in ig.DTYPES:
        return (f"ipugraph graphs have no {gd} dtype (they take {', '.join(sorted(ig.DTYPES))}); "
                f"the {key} kernels are measured in part (b)")
    if gd not in backend.SUPPORTED_DTYPES:
        return (f"the triton backend takes {' and '.join(backend.SUPPORTED_DTYPES)} graphs, "
                f"not {gd}")
    return None


def _torch_graph_runner(torch, model, x):
    """torch captured in a CUDA graph: copy the input in, replay, copy the logits out."""
    cl = torch.channels_last
    static_x = x.clone()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side), torch.inference_mode():
        for _ in range(2):
            model(static_x.contiguous(memory_format=cl))
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), torch.inference_mode():
        static_out = model(static_x.contiguous(memory_format=cl))

    def run():
        static_x.copy_(x)
        graph.replay()
        return static_out.clone()
    return run


def _figures(times: list[float], batch: int, flop: float, peak: float | None) -> dict:
    median = statistics.median(times)
    return {"median_ms": median * 1e3, "min_ms": min(times) * 1e3, "img_per_s": batch / median,
            "tflops": flop / median / 1e12, "pct_peak": pct(flop / median / 1e12, peak),
            "times_ms": [t * 1e3 for t in times]}


def bench_net_one(ctx, base, ref_model, key: str, batch: int) -> dict:
    torch, ig, timer, args, device = (ctx["torch"], ctx["ig"], ctx["timer"], ctx["args"],
                                      ctx["device"])
    spec = DTYPES[key]
    row = {"model": args.model, "batch": batch, "image_size": args.image_size, "dtype": key,
           "label": spec.label, "allow_tf32": spec.tf32}
    reason = network_support(ig, ctx["backend"], key)
    if reason:
        progress(f"(c) {key} b{batch}: skipped: {reason}")
        ctx["results"]["skipped"].append({"part": "net", "what": f"{args.model} {key} b{batch}",
                                          "reason": reason})
        return {**row, "skipped": reason}
    dt = getattr(torch, spec.torch_name)
    cl = torch.channels_last

    graph = ig.models.MODELS[args.model](batch=batch, image_size=args.image_size,
                                         num_classes=args.num_classes, seed=args.seed)
    ig.interop.load_state_dict(graph, base.state_dict())
    if spec.graph_dtype != "float32":
        graph = cast_graph(ig, graph, spec.graph_dtype)
    flop = 2.0 * graph.macs()
    gen = torch.Generator(device=device).manual_seed(args.seed + batch)
    x = torch.randn(batch, 3, args.image_size, args.image_size, device=device,
                    generator=gen).to(dt)
    with tf32(torch, False), torch.inference_mode():
        ref = ref_model(x.float())

    runners, first, builds = {}, {}, {}
    t0 = time.perf_counter()
    eng = ig.compile(graph, backend="triton", allow_tf32=spec.tf32)
    builds["ipugraph"] = time.perf_counter() - t0
    runners["ipugraph"] = lambda: eng.run({"x": x})["logits"]
    if batch in args.graph_batches:
        if timer.cuda:
            t0 = time.perf_counter()
            eng_g = ig.compile(graph, backend="triton", allow_tf32=spec.tf32, cuda_graph=True)
            builds["ipugraph cuda_graph"] = time.perf_counter() - t0
            runners["ipugraph cuda_graph"] = lambda: eng_g.run({"x": x})["logits"]
        else:
            ctx["results"]["skipped"].append(
                {"part": "net", "what": f"cuda_graph runners {key} b{batch}",
                 "reason": "CUDA graphs need a CUDA device"})
    t0 = time.perf_counter()
    model = copy.deepcopy(base).to(device=device, dtype=dt).to(memory_format=cl).eval()
    builds["torch"] = time.perf_counter() - t0

    def torch_eager():
        with torch.inference_mode():
            return model(x.contiguous(memory_format=cl))
    runners["torch eager"] = torch_eager

    logits = {}
    with tf32(torch, spec.tf32):
        for name in list(runners):         # first calls: compile, autotune, capture, search
            first[name], logits[name] = timer.call_with_result(runners[name])
        if batch in args.graph_batches and timer.cuda:
            t0 = time.perf_counter()
            runners["torch cuda_graph"] = _torch_graph_runner(torch, model, x)
            first["torch cuda_graph"] = time.perf_counter() - t0
            logits["torch cuda_graph"] = runners["torch cuda_graph"]()
        errors = {name: rel_error(torch, out, ref) for name, out in logits.items()}
        vs_torch = {name: rel_error(torch, out, logits["torch eager"])
                    for name, out in logits.items() if name.startswith("ipugraph")}
        del logits
        for _ in range(args.warmup):
            for fn in runners.values():
                timer.call(fn)
        times = {name: [] for name in runners}
        for _ in range(args.iters):        # one call of each per round, in turn
            for name, fn in runners.items():
                times[name].append(timer.call(fn))
    del ref
    peak = peak_of(ctx, key)
    tol = NET_TOL[key]
    figures = {name: _figures(t, batch, flop, peak) for name, t in times.items()}
    ratios = {"ipugraph / torch eager": figures["torch eager"]["median_ms"]
              / figures["ipugraph"]["median_ms"]}
    if "ipugraph cuda_graph" in figures:
        ratios["ipugraph cuda_graph / torch eager"] = (
            figures["torch eager"]["median_ms"] / figures["ipugraph cuda_graph"]["median_ms"])
    if "ipugraph cuda_graph" in figures and "torch cuda_graph" in figures:
        ratios["ipugraph cuda_graph / torch cuda_graph"] = (
            figures["torch cuda_graph"]["median_ms"] / figures["ipugraph cuda_graph"]["median_ms"])
    ok = all(err <= tol for name, err in errors.items() if name.startswith("ipugraph"))
    row.update({"gflop": flop / 1e9, "runtimes": figures, "speedup": ratios,
                "max_rel_err_vs_fp32": errors, "max_rel_err_vs_torch": vs_torch,
                "tolerance": tol, "ok": ok,
                "first_call_s": first, "build_s": builds})
    progress(f"(c) {args.model} {key} b{batch}: " + ", ".join(
        f"{name} {f['median_ms']:.3f} ms ({f['img_per_s']:.0f} img/s)"
        for name, f in figures.items()) + f"; ipugraph/torch eager "
        f"{ratios['ipugraph / torch eager']:.2f}x; err " + ", ".join(
            f"{name} {err:.1e}" for name, err in errors.items())
        + ("" if ok else f"  ABOVE TOLERANCE {tol:.0e}"))
    return row                             # the engines and models are freed with this frame


def bench_net(ctx) -> None:
    torch, ig, args, device = ctx["torch"], ctx["ig"], ctx["args"], ctx["device"]
    from ipugraph.interop import torch_resnet
    # Random weights with BN statistics away from (0, 1), scaled to keep activations O(1):
    # every folded weight matters and nothing overflows in fp16.
    base = torch_resnet.randomize_(torch_resnet.MODELS[args.model](args.num_classes), args.seed)
    base.eval()
    ref_model = copy.deepcopy(base).to(device).eval()
    for key in args.dtypes:
        for batch in args.net_batches:
            row = guarded(ctx, "net", f"{args.model} {key} b{batch}",
                          lambda: bench_net_one(ctx, base, ref_model, key, batch))
            if row is not None:
                ctx["results"]["net"].append(row)
            _free(torch)
    del ref_model
    _free(torch)


# -- outputs -----------------------------------------------------------------------------------

def _f(value, fmt: str, none: str = "-") -> str:
    return none if value is None else format(value, fmt)


def markdown(res: dict) -> str:
    d, v, s = res["device"], res["versions"], res["settings"]
    drv = v.get("driver") or {}
    lines = [f"# ipugraph triton backend on {d['name']}, {res['date'][:10]}", "",
             f"`{res['command']}` ({res['mode']} run, {res['seconds'].get('total', 0):.0f} s"
             + ("" if res["complete"] else ", INCOMPLETE: written after a part, the run did "
                "not finish") + ")", "",
             f"- device: {d['name']}" + (f", compute capability {d['capability']}, "
                                         f"{d['multiprocessors']} SMs, {d['memory_gib']} GiB"
                                         if d["type"] == "cuda" else ""),
             f"- versions: torch {v['torch']}, triton {v['triton']}, CUDA {v['cuda']}, "
             f"cuDNN {v['cudnn']}, driver {drv.get('release')} (CUDA API "
             f"{drv.get('cuda_api')}), Python {v['python']}, ipugraph {v['ipugraph']}",
             f"- timing: {s['timer']}; medians of {s['iters']} samples after the first call "
             f"and {s['warmup']} warm-up rounds; cudnn.benchmark {s['cudnn_benchmark']}",
             "- checks: " + ("all within tolerance" if res.get("checks_ok")
                             else "SOME ABOVE TOLERANCE")
             + (f"; {len(res['errors'])} measurement(s) failed" if res["errors"] else "")]
    if res["peak"]:
        lines += ["", "## (a) Measured peak (torch.matmul)", "",
                  "| dtype | M=N=K | median ms | TFLOP/s |", "|---|---:|---:|---:|"]
        lines += [f"| {r['dtype']} ({r['label']}) | {r['m']} | {r['median_ms']:.3f} | "
                  f"{r['tflops']:.1f} |" for r in res["peak"]]
    if res["layers"]:
        methods = sorted({r["method"] for r in res["layers"]})
        layer_timing = (f"{s['timer']}: " if d["type"] != "cuda" else "") + "; ".join(methods)
        lines += ["", "## (b) ResNet-34 conv layers: Triton (conv + bias + ReLU, one kernel) vs "
                  "cuDNN (conv + bias), channels_last", "",
                  f"Time per call ({layer_timing}), median; % of the measured peak of "
                  "the same dtype; cuDNN/Triton > 1: Triton faster. Error: max |a−b| / max|ref| "
                  "vs fp32 (TF32 off) on the same rounded inputs."]
        totals = {(t["dtype"], t["batch"]): t for t in res["layer_totals"]}
        for key, batch in dict.fromkeys((r["dtype"], r["batch"]) for r in res["layers"]):
            total = totals.get((key, batch))
            lines += ["", f"### {key}, batch {batch}", "",
                      "| layer | ×occ | GFLOP | Triton ms | TFLOP/s | % peak | cuDNN ms | "
                      "TFLOP/s | % peak | cuDNN/Triton | Triton err | cuDNN err |",
                      "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
            for r in res["layers"]:
                if r["dtype"] != key or r["batch"] != batch:
                    continue
                flag = "" if r["ok"] else " ⚠"
                lines.append(
                    f"| {r['name']} | {r['occurrences']} | {r['gflop']:.2f} | "
                    f"{r['triton_ms']:.3f} | {r['triton_tflops']:.1f} | "
                    f"{_f(r['triton_pct_peak'], '.0f')} | {r['cudnn_ms']:.3f} | "
                    f"{r['cudnn_tflops']:.1f} | {_f(r['cudnn_pct_peak'], '.0f')} | "
                    f"{r['cudnn_over_triton']:.2f} | {_f(r['triton_max_rel_err'], '.1e')}{flag} | "
                    f"{_f(r['cudnn_max_rel_err'], '.1e')} |")
            if total is None:                  # a layer of the set failed: see Errors
                continue
            lines.append(
                f"| **weighted (×occ)** | | {total['tflop'] * 1e3:.1f} | "
                f"{total['triton_ms']:.2f} | {total['triton_tflops']:.1f} | "
                f"{_f(total['triton_pct_peak'], '.0f')} | {total['cudnn_ms']:.2f} | "
                f"{total['cudnn_tflops']:.1f} | {_f(total['cudnn_pct_peak'], '.0f')} | "
                f"**{total['cudnn_over_triton']:.2f}** | | |")
    if res["net"]:
        model = res["net"][0]["model"]
        size = res["net"][0]["image_size"]
        lines += ["", f"## (c) {model} inference, {size}×{size}: ipugraph triton backend vs "
                  "torch (cuDNN, channels_last)", "",
                  "Per call, inputs and logits on the device, input layout change included; "
                  "median of CUDA-event times, each call synchronised. vs torch: the torch "
                  "runner of the same kind (eager, or CUDA graph) over this one, in img/s. "
                  "Errors: logits, max |a−b| / max|ref|, against torch fp32 (TF32 off) and "
                  "against torch eager in the same dtype.", "",
                  "| batch | dtype | runtime | median ms | img/s | TFLOP/s | % peak | vs torch | "
                  "first call s | err vs fp32 | err vs torch |",
                  "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in res["net"]:
            if "skipped" in r:
                lines.append(f"| {r['batch']} | {r['dtype']} | skipped: {r['skipped']} "
                             "| | | | | | | | |")
                continue
            figs = r["runtimes"]
            for name, f in figs.items():
                peer = "torch cuda_graph" if name.endswith("cuda_graph") else "torch eager"
                vs = (f"{figs[peer]['median_ms'] / f['median_ms']:.2f}x"
                      if name.startswith("ipugraph") and peer in figs else "")
                err = r["max_rel_err_vs_fp32"].get(name)
                flag = "" if (not name.startswith("ipugraph") or err is None
                              or err <= r["tolerance"]) else " ⚠"
                lines.append(
                    f"| {r['batch']} | {r['dtype']} | {name} | {f['median_ms']:.3f} | "
                    f"{f['img_per_s']:.1f} | {f['tflops']:.1f} | {_f(f['pct_peak'], '.0f')} | "
                    f"{vs} | {_f(r['first_call_s'].get(name), '.2f')} | "
                    f"{_f(err, '.1e')}{flag} | "
                    f"{_f(r['max_rel_err_vs_torch'].get(name), '.1e')} |")
    if res["errors"]:
        lines += ["", "## Errors", ""]
        lines += [f"- {e['part']}: {e['what']}: `{e['error']}`" for e in res["errors"]]
    if res["skipped"]:
        lines += ["", "## Skipped", ""]
        lines += [f"- {k['part']}: {k['what']}: {k['reason']}" for k in res["skipped"]]
    lines += ["", "## Notes", "",
              "- TF32: the `tf32` rows run float32 storage with TF32 tensor-core dots on both "
              "sides (ipugraph `allow_tf32=True`; torch `cudnn.allow_tf32` and "
              "`cuda.matmul.allow_tf32` True). `fp32` rows (if any) use IEEE fp32 dots on both.",
              "- Autotuning, kernel compilation, cuDNN's algorithm search and CUDA graph capture "
              "happen in each runtime's first call (\"first call s\"), outside the timings.",
              "- Layers: each side's calls are captured in one CUDA graph per sample (no Python "
              "launch overhead); repeated calls on the same tensors may hit L2 (50 MB on an "
              "H100) at batch 32, alike for both sides. Triton also applies ReLU, cuDNN does not.",
              "- Network: ipugraph runs each compute set as one Triton launch from Python "
              "(eager), or replays a CUDA graph of all of them (`cuda_graph=True`).",
              f"- Per-part seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in
                                                  res["seconds"].items()), ""]
    return "\n".join(lines)


def _json_default(o):
    import numpy as np
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"{type(o).__name__} is not JSON serialisable")


def output_base(res: dict, out_dir: str) -> str:
    """DIR/gpu_<device>_<date>[_quick|_smoke], with _2, _3, ... rather than overwrite."""
    os.makedirs(out_dir, exist_ok=True)
    stem = f"gpu_{slug(res['device']['name'])}_{res['date'][:10]}"
    if res["mode"] != "full":
        stem += f"_{res['mode']}"
    base, n = os.path.join(out_dir, stem), 2
    while os.path.exists(base + ".json") or os.path.exists(base + ".md"):
        base = os.path.join(out_dir, f"{stem}_{n}")
        n += 1
    res["files"] = {"json": os.path.basename(base + ".json"),
                    "markdown": os.path.basename(base + ".md")}
    return base


def write_outputs(res: dict, base: str) -> str:
    """Write base.json and base.md (again after every part: a run cut short keeps what it
    measured); returns the markdown."""
    res = _clean_floats(res)
    with open(base + ".json", "w") as f:
        json.dump(res, f, indent=1, default=_json_default, allow_nan=False)
        f.write("\n")
    text = markdown(res)
    with open(base + ".md", "w") as f:
        f.write(text)
    return text


def _clean_floats(obj):
    """inf/nan (a non-finite output's error) as None, so the JSON stays strict."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _clean_floats(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean_floats(v) for v in obj]
    return obj


# -- entry point -------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    global _T0
    _T0 = time.perf_counter()
    args = build_parser().parse_args(argv)
    resolve(args)
    command = shlex.join(["python", "bench/bench_gpu.py", *(sys.argv[1:] if argv is None
                                                             else argv)])
    torch, triton, ig, kernels, backend, device = setup_runtime(args.smoke)
    interpret = bool(kernels.INTERPRET)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True
    dev, versions = device_info(torch, triton, ig, device, interpret)
    timer = Timer(torch, device)
    progress(f"{dev['name']}; torch {versions['torch']}, triton {versions['triton']}, CUDA "
             f"{versions['cuda']}; {args.mode} run, parts {','.join(args.parts)}, dtypes "
             f"{','.join(args.dtypes)}")
    if args.mode in BUDGET_S and device.type == "cuda":
        budget = {p: BUDGET_S[args.mode][p] for p in args.parts}
        progress(f"expected on an H100 with the default settings: about {sum(budget.values())} s"
                 " (" + ", ".join(f"({'abc'[PARTS.index(p)]}) {p} ~{t} s"
                                  for p, t in budget.items()) + ")")
    results = {
        "schema": SCHEMA, "command": command, "mode": args.mode,
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "device": dev, "versions": versions,
        "settings": {"dtypes": args.dtypes, "parts": args.parts,
                     "layer_batches": args.layer_batches, "net_batches": args.net_batches,
                     "graph_batches": args.graph_batches, "iters": args.iters,
                     "warmup": args.warmup, "model": args.model,
                     "image_size": args.image_size, "num_classes": args.num_classes,
                     "peak_size": args.peak_size, "seed": args.seed, "timer": timer.method,
                     "cudnn_benchmark": True, "triton_interpret": interpret},
        "peak": [], "layers": [], "layer_totals": [], "net": [], "skipped": [], "errors": [],
        "seconds": {}, "complete": False,
    }
    ctx = {"torch": torch, "ig": ig, "kernels": kernels, "backend": backend, "device": device,
           "timer": timer, "args": args, "results": results}
    base = output_base(results, args.out)
    run_part = {"peak": bench_peak, "layers": bench_layers, "net": bench_net}
    for part in PARTS:
        if part not in args.parts:
            continue
        t0 = time.perf_counter()
        progress(f"part ({'abc'[PARTS.index(part)]}) {part}")
        guarded(ctx, part, "(whole part)", lambda: run_part[part](ctx))
        results["seconds"][part] = time.perf_counter() - t0
        results["seconds"]["total"] = time.perf_counter() - _T0
        results["checks_ok"] = checks_ok(results)
        write_outputs(results, base)
    results["complete"] = True
    results["seconds"]["total"] = time.perf_counter() - _T0
    results["checks_ok"] = checks_ok(results)
    print(write_outputs(results, base))
    progress(f"wrote {base}.json and {base}.md")
    if results["errors"]:
        progress(f"{len(results['errors'])} measurement(s) failed (listed under Errors)")
    if not results["checks_ok"]:
        progress("some results are above their error tolerance (marked in the table)")
    return 0 if results["checks_ok"] and not results["errors"] else 1


def checks_ok(res: dict) -> bool:
    return (all(r["ok"] for r in res["layers"]) and all(r.get("ok", True) for r in res["net"]))


if __name__ == "__main__":
    sys.exit(main())
