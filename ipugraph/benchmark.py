"""Timing ipugraph against the runtimes a user would pick instead, fairly.

Each runtime is timed in its own block -- warm-up calls, then the timed calls -- and the blocks
are repeated for `rounds` rounds; a runtime's figure is its best round's median. Interleaving
runtimes call by call instead penalises whichever runs after one whose thread pool is still
spinning (OpenVINO's batch-8 ResNet-34 went from 164 to 197 ms that way on this project's
2-core machine). The cores other processes used are measured per block: one busy core stalls
every OpenMP barrier and makes 2-thread runs 10-100x slower, so a busy block is flagged.

Peers (`runners`): torch eager (NCHW and channels_last), ONNX Runtime (CPU EP) and OpenVINO
(CPU, f32, LATENCY hint), the last two on an ONNX export of the same torch module, all on the
same thread count. Every call includes the runtime's own handling of the NCHW float32 input
and returns the logits as a NumPy array, as Engine.run does.
"""
from __future__ import annotations

import os
import platform
import resource
import statistics
import sys
import tempfile
import time
import warnings

import numpy as np

PEERS = ("torch", "onnxruntime", "openvino")
INSTALL = {"torch": "pip install torch==2.13.0", "onnxruntime": "pip install onnxruntime onnx",
           "openvino": "pip install openvino onnx"}


def progress(message: str) -> None:
    print(f"[ipugraph] {message}", file=sys.stderr, flush=True)


# -- the machine -------------------------------------------------------------------------------

def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_cpu_seconds() -> float | None:
    """Busy CPU-seconds of the whole machine since boot, from /proc/stat (None if unreadable)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(v) for v in f.readline().split()[1:9]]   # user .. steal
    except (OSError, ValueError):
        return None
    idle = ticks[3] + ticks[4]                                    # idle + iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU-seconds used by this process, all its threads (OpenMP's and torch's) included."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class OtherLoad:
    """Cores that other processes kept busy between start() and stop() (None if unmeasurable)."""

    def start(self) -> "OtherLoad":
        self.machine, self.own, self.wall = machine_cpu_seconds(), own_cpu_seconds(), \
            time.perf_counter()
        return self

    def stop(self) -> float | None:
        machine = machine_cpu_seconds()
        if self.machine is None or machine is None:
            return None
        wall = max(time.perf_counter() - self.wall, 1e-9)
        return max(0.0, (machine - self.machine) - (own_cpu_seconds() - self.own)) / wall


BUSY_CORES = 0.25        # other processes' cores above which a block's times are inflated


def fma_probe(seconds: float = 0.3) -> float | None:
    """GFLOP/s of the extension's FMA loop on the OpenMP threads right now (None without the
    extension). A virtual machine whose host is busy shows no other processes, only a lower
    figure than the same machine's quiet peak (the cores are shared): printed beside a bench's
    times, before and after them, so a contended run can be told from a quiet one."""
    try:
        from . import _C
    except ImportError:
        return None
    return float(_C.fma_peak(seconds))


def probe_text(before: float | None, after: float | None) -> str:
    if before is None or after is None:
        return ""
    return (f"FMA probe {before:.0f} GFLOP/s before the timed blocks, {after:.0f} after (a "
            "figure below this machine's quiet one means its cores were shared with another "
            "guest)")


# -- timing ------------------------------------------------------------------------------------

def measure(runners: dict, warmup: int, iters: int, rounds: int = 2) -> dict[str, dict]:
    """Each runner timed in its own block (warmup calls, then iters timed calls), the blocks
    repeated `rounds` times. Per runner: the best round's samples (seconds), every round's
    median, and the most cores other processes used during any of its blocks."""
    out = {name: {"rounds": [], "others": None} for name in runners}
    for r in range(rounds):
        for name, fn in runners.items():
            for _ in range(warmup):
                fn()
            load = OtherLoad().start()
            times = []
            for _ in range(iters):
                t0 = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t0)
            others = load.stop()
            rec = out[name]
            rec["rounds"].append(times)
            if others is not None:
                rec["others"] = max(rec["others"] or 0.0, others)
            progress(f"round {r + 1}/{rounds}: {name} median "
                     f"{statistics.median(times) * 1e3:.1f} ms over {iters} calls")
    for rec in out.values():
        rec["best"] = min(rec["rounds"], key=statistics.median)
    return out


def measure_probed(runners: dict, warmup: int, iters: int, rounds: int, probe: bool):
    """measure(), with the FMA probe (fma_probe) taken just before and just after when `probe`:
    (measure's result, [before, after])."""
    before = fma_probe() if probe else None
    measured = measure(runners, warmup, iters, rounds)
    return measured, [before, fma_probe() if probe else None]


def figures(times: list[float], batch: int, macs: int, rec: dict | None = None) -> dict:
    median = statistics.median(times)
    fig = {"median_ms": median * 1e3, "min_ms": min(times) * 1e3, "img_per_s": batch / median,
           "gflop_per_s": 2.0 * macs / median / 1e9, "times_ms": [t * 1e3 for t in times]}
    if rec is not None:
        fig["round_medians_ms"] = [statistics.median(t) * 1e3 for t in rec["rounds"]]
        fig["other_processes_cores"] = rec["others"]
        fig["busy"] = rec["others"] is not None and rec["others"] >= BUSY_CORES
    return fig


def rel_error(a: np.ndarray, b: np.ndarray) -> float:
    """max |a - b| / max |b|."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def table(rows: list[tuple[str, dict]], base: dict | None, base_name: str = "peer") -> str:
    head = f"{'runtime':<26} {'img/s':>9} {'median ms':>10} {'GFLOP/s':>9} " \
           f"{'vs ' + base_name:>13}"
    lines = [head, "-" * len(head)]
    for name, r in rows:
        ratio = f"{r['img_per_s'] / base['img_per_s']:.2f}x" if base else "-"
        busy = "  BUSY" if r.get("busy") else ""
        lines.append(f"{name:<26} {r['img_per_s']:>9.2f} {r['median_ms']:>10.1f} "
                     f"{r['gflop_per_s']:>9.1f} {ratio:>13}{busy}")
    return "\n".join(lines)


# -- profiles ----------------------------------------------------------------------------------

def profile_runs(engine, feeds: dict, runs: int):
    """The median-total profile of `runs` profiled runs (None where the backend has none)."""
    profiles = []
    for i in range(runs):
        progress(f"profiled run {i + 1}/{runs}")
        engine.run(feeds, profile=True)
        if engine.last_profile is None:
            return None
        profiles.append(engine.last_profile)
    return sorted(profiles, key=lambda p: p.total)[len(profiles) // 2]


def print_profile(prof, runs: int) -> None:
    if prof is None:
        print("profile: this backend does not time its compute sets")
        return
    print(f"\nprofile of one ipugraph run (the median of {runs} profiled runs; each compute set "
          "synchronised and timed)")
    print(prof.table())


# -- peers -------------------------------------------------------------------------------------

def parse_compare(text: str) -> tuple[str, ...]:
    """'torch', 'none', 'all' or a comma list of PEERS -> the peers, in PEERS order."""
    text = text.strip().lower()
    if text == "none":
        return ()
    if text == "all":
        return PEERS
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in PEERS]
    if unknown or not names:
        raise ValueError(f"--compare takes 'none', 'all' or a comma list of {', '.join(PEERS)}; "
                         f"got '{text}'")
    return tuple(p for p in PEERS if p in names)


def require(peer: str):
    """Import a peer's package or say how to install it."""
    try:
        if peer == "torch":
            import torch as mod
        elif peer == "onnxruntime":
            import onnxruntime as mod
        else:
            import openvino as mod
    except ImportError:
        raise ImportError(f"--compare {peer} needs {peer} installed ({INSTALL[peer]}; "
                          "`make bench` installs every peer)") from None
    return mod


def export_onnx(model, x: np.ndarray, path: str) -> None:
    """The torch module as ONNX (opset 17, input 'x', output 'logits'), weights included."""
    import torch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")         # the TorchScript exporter's deprecation notice
        torch.onnx.export(model, (torch.from_numpy(x),), path, input_names=["x"],
                          output_names=["logits"], opset_version=17, dynamo=False)


def peer_runners(peers, arch: str, graph, x: np.ndarray, threads: int,
                 device: str = "cpu") -> tuple[dict, dict]:
    """{runtime name: call returning logits} for the peers, and {runtime name: version}. The
    torch twin of the graph (same weights) is the source of every peer: ONNX Runtime and
    OpenVINO run its ONNX export. On a GPU (device 'cuda') only torch runs, and each call
    includes the input's upload and the logits' download, as Engine.run does."""
    from .interop import torch_resnet
    torch = require("torch")
    torch.set_num_threads(threads)
    model = torch_resnet.from_graph(arch, graph).to(device)
    runners, versions = {}, {"torch": torch.__version__}
    if "torch" in peers:
        model_cl = torch_resnet.from_graph(arch, graph).to(device,
                                                            memory_format=torch.channels_last)
        tx = torch.from_numpy(x)

        def run_nchw():
            with torch.inference_mode():
                return model(tx.to(device)).cpu().numpy()

        def run_cl():
            with torch.inference_mode():
                return model_cl(tx.to(device).contiguous(
                    memory_format=torch.channels_last)).cpu().numpy()
        runners["torch NCHW"] = run_nchw
        runners["torch channels_last"] = run_cl
    others = [p for p in peers if p != "torch"]
    if others and device != "cpu":
        raise ValueError(f"--compare {','.join(others)}: only torch is a GPU peer")
    if others:
        tmp = tempfile.mkdtemp(prefix="ipugraph-bench-")
        path = os.path.join(tmp, f"{arch}.onnx")
        progress(f"exporting the torch {arch} to ONNX for {', '.join(others)}")
        export_onnx(model.cpu().eval(), x, path)
    if "onnxruntime" in others:
        ort = require("onnxruntime")
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        runners["onnxruntime"] = lambda: session.run(None, {"x": x})[0]
        versions["onnxruntime"] = ort.__version__
    if "openvino" in others:
        ov = require("openvino")
        compiled = ov.Core().compile_model(path, "CPU", {
            "PERFORMANCE_HINT": "LATENCY", "INFERENCE_NUM_THREADS": threads,
            "INFERENCE_PRECISION_HINT": "f32"})       # (bf16 by default where the CPU has it)
        request = compiled.create_infer_request()

        def run_ov():
            request.infer([x])
            return request.get_output_tensor(0).data.copy()
        runners["openvino"] = run_ov
        versions["openvino"] = ov.__version__
    return runners, versions
