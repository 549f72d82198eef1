"""The `ipugraph` command line (also `python -m ipugraph`).

  ipugraph bench resnet34 --backend cpu --batch 8 --image-size 224 --compare torch
  ipugraph plan resnet34 --target ipu-mk2 --batch 1 [--json plan.json]
  ipugraph dump resnet34 --target ipu-mk2 --batch 1 --out out/resnet34-mk2 [--frames]
  ipugraph info

`bench` times ipugraph and PyTorch on the same network, weights, input and threads in one
process, interleaved round by round so that a change in machine load hits both alike, and
reports medians. Progress goes to stderr, results to stdout (and --json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shlex
import statistics
import sys
import time

import numpy as np

from .backends import NAMES as BACKEND_NAMES
from .models import MODELS

TARGET_NAMES = ("host", "ipu-mk1", "ipu-mk2")
MODEL_NAMES = tuple(MODELS)
# Above this max|a-b|/max|b| the two runtimes are not computing the same function, and their
# timings are not comparable (fp32 runtimes agree to ~1e-6 on ResNets).
AGREE_REL_ERROR = 1e-3


def progress(message: str) -> None:
    print(f"[ipugraph] {message}", file=sys.stderr, flush=True)


def image_size(text: str):
    """'224' -> 224, '224x160' -> (224, 160) (height x width)."""
    try:
        parts = [int(p) for p in text.lower().split("x")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2) or min(parts) < 1:
        raise argparse.ArgumentTypeError(f"image size must be N or HxW, got '{text}'")
    return parts[0] if len(parts) == 1 else tuple(parts)


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def nonnegative_int(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


class UsageError(Exception):
    """A bad combination of arguments, reported as `ipugraph CMD: error: ...` (exit status 2)."""


def build_model(name: str, batch: int, size, seed: int = 0, target=None):
    try:
        return MODELS[name](batch=batch, image_size=size, seed=seed, target=target)
    except ValueError as e:               # e.g. an image too small for the network
        raise UsageError(str(e)) from None


def size_text(size) -> str:
    h, w = (size, size) if isinstance(size, int) else size
    return f"{h}x{w}"


def write_json(path: str, data: dict) -> None:
    def default(o):                       # NumPy scalars and arrays from plans and timings
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        raise TypeError(f"{type(o).__name__} is not JSON serialisable")
    directory = os.path.dirname(path)
    if directory:
        os.makedirs(directory, exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f, indent=2, default=default)
        f.write("\n")
    progress(f"wrote {path}")


# -- info -------------------------------------------------------------------------------------

def extension_info() -> dict:
    """Whether ipugraph._C is built, where, and what it reports about its build."""
    try:
        from . import _C
    except ImportError as e:
        return {"built": False, "error": str(e)}
    info = {"built": True, "path": getattr(_C, "__file__", None),
            "simd": getattr(_C, "simd", None), "omp_threads": _C.num_threads()}
    for attr in ("build_flags", "compile_flags", "compiler"):   # if the extension records them
        if hasattr(_C, attr):
            info[attr] = getattr(_C, attr)
    return info


def backend_status() -> dict[str, str]:
    from .backends import get_backend
    status = {}
    for name in BACKEND_NAMES:
        try:
            get_backend(name)
            status[name] = "available"
        except (RuntimeError, ValueError, ImportError) as e:
            status[name] = f"not available ({e})"
    return status


def cmd_info(args) -> int:
    from . import __version__, ops
    from .target import Target
    ext = extension_info()
    print(f"ipugraph {__version__} (Python {platform.python_version()}, NumPy {np.__version__})")
    if ext["built"]:
        extra = "".join(f", {k} {ext[k]}" for k in ("build_flags", "compile_flags", "compiler")
                        if k in ext)
        print(f"C++ extension ipugraph._C: built, SIMD {ext['simd']}{extra}\n  {ext['path']}")
        print(f"OpenMP threads: {ext['omp_threads']}")
    else:
        print(f"C++ extension ipugraph._C: not built ({ext['error']})")
        print(f"OpenMP threads: {os.environ.get('OMP_NUM_THREADS', 'unset')} (OMP_NUM_THREADS)")
    print(f"host target: {Target.host().describe()}")
    for name in ("ipu-mk1", "ipu-mk2"):
        print(f"{name} target: {Target.from_name(name).describe()}")
    print(f"ops ({len(ops.OPS)}): {', '.join(sorted(ops.OPS))}")
    print("backends: " + "; ".join(f"{k} {v}" for k, v in backend_status().items()))
    print(f"models: {', '.join(MODEL_NAMES)}")
    return 0


# -- plan -------------------------------------------------------------------------------------

def plan_model(args):
    """Build args.model for args.target and plan it, with progress: (graph, plan)."""
    from .planner import PlanError, plan
    from .target import Target
    target = Target.from_name(args.target)
    what = "training step" if getattr(args, "train", False) else "forward pass"
    progress(f"building {args.model} {what} (batch {args.batch}, {size_text(args.image_size)})")
    if getattr(args, "train", False):
        from .cli_train import training_graph
        graph, _ = training_graph(sys.modules[__name__], _train_defaults(args), target)
    else:
        graph = build_model(args.model, args.batch, args.image_size, target=target)
    progress(f"planning {len(graph.nodes)} ops over {target.tiles} tiles of {target.name}")
    start = time.perf_counter()
    try:
        p = plan(graph, target)
    except PlanError as e:
        raise UsageError(str(e)) from None
    progress(f"planned in {time.perf_counter() - start:.2f} s")
    return graph, p


def cmd_plan(args) -> int:
    graph, p = plan_model(args)
    print(f"{args.model}: batch {args.batch}, {size_text(args.image_size)}, "
          f"{graph.num_params():,} parameters, {graph.macs() / 1e9:.3f} GMAC per run")
    print(p.summary())
    if args.json:
        write_json(args.json, p.to_json(vertices=True))     # the whole plan, every vertex
    return 0


def cmd_dump(args) -> int:
    from .viz import dump
    start = time.perf_counter()
    graph, p = plan_model(args)
    target = p.target
    manifest = dump(p, args.out, level=args.level, color=args.color, frames=args.frames,
                    progress=progress)
    manifest["seconds"] = {"build and plan": round(time.perf_counter() - start
                                         - manifest["total_seconds"], 3), **manifest["seconds"]}
    print(f"{args.model} on {target.name}, batch {args.batch}: {manifest['vertices']:,} vertices, "
          f"{manifest['edges']:,} edges -> {args.out}")
    width = max(len(k) for k in manifest["seconds"])
    for label, secs in manifest["seconds"].items():
        print(f"  {label:<{width}}  {secs:7.2f} s")
    for name, size in manifest["files"].items():
        print(f"  {name:<28} {size / 2**20:8.2f} MiB")
    return 0


# -- bench ------------------------------------------------------------------------------------

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


def apply_threads(requested: int | None, backend: str) -> int:
    """Fix the OpenMP thread count before ipugraph._C (and its OpenMP runtime) loads; returns
    the count the ipugraph kernels will actually use."""
    if requested is not None:
        os.environ["OMP_NUM_THREADS"] = str(requested)
    if backend == "cpu":
        from . import _C
        actual = _C.num_threads()
        if requested is not None and actual != requested:
            progress(f"warning: --threads {requested} ignored: ipugraph._C was already loaded "
                     f"with {actual} OpenMP threads in this process")
        return actual
    return requested or len(os.sched_getaffinity(0))


def figures(times: list[float], batch: int, macs: int) -> dict:
    median = statistics.median(times)
    return {"median_ms": median * 1e3, "min_ms": min(times) * 1e3, "img_per_s": batch / median,
            "gflop_per_s": 2.0 * macs / median / 1e9, "times_ms": [t * 1e3 for t in times]}


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


def _rel_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b).max() / max(np.abs(b).max(), 1e-30))


def _torch_runners(torch, arch: str, graph, x: np.ndarray, device: str = "cpu") -> dict:
    """The same network and weights in torch, NCHW and channels_last (whichever is faster on
    this machine becomes the peer). Each timed call includes the runtime's own input layout
    change, as ipugraph's cpu backend converts NCHW to NHWC inside Engine.run. On a GPU (the
    triton backend) each call also includes the input's upload and the logits' download, as
    Engine.run does."""
    from .interop import torch_resnet
    model = torch_resnet.from_graph(arch, graph).to(device)
    model_cl = torch_resnet.from_graph(arch, graph).to(device,
                                                        memory_format=torch.channels_last)
    tx = torch.from_numpy(x)

    def run_nchw():
        with torch.inference_mode():
            return model(tx.to(device)).cpu()

    def run_cl():
        with torch.inference_mode():
            return model_cl(tx.to(device).contiguous(memory_format=torch.channels_last)).cpu()

    return {"torch NCHW": run_nchw, "torch channels_last": run_cl}


def measure(runners: dict, warmup: int, iters: int) -> tuple[dict, float | None]:
    """Seconds per call of every runner over `iters` rounds after `warmup` rounds, and the
    cores other processes kept busy meanwhile (None where /proc/stat is unreadable)."""
    machine0, own0, wall0 = machine_cpu_seconds(), own_cpu_seconds(), time.perf_counter()
    times: dict[str, list[float]] = {name: [] for name in runners}
    for i in range(warmup):
        progress(f"warm-up {i + 1}/{warmup}")
        for fn in runners.values():
            fn()
    for i in range(iters):
        # one call of each runtime per round, in turn: a change of machine load during the
        # benchmark is shared by all of them instead of landing on whichever ran last
        for name, fn in runners.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
        progress(f"run {i + 1}/{iters}: " + ", ".join(
            f"{name} {t[-1] * 1e3:.1f} ms" for name, t in times.items()))
    # The machine's busy CPU time minus our own: one core busy with another job stalls every
    # OpenMP barrier of a 2-thread run and inflates both runtimes' times.
    others = None
    machine1 = machine_cpu_seconds()
    if machine0 is not None and machine1 is not None:
        others = max(0.0, (machine1 - machine0) - (own_cpu_seconds() - own0)) \
            / (time.perf_counter() - wall0)
    return times, others


def _train_defaults(args):
    """Training options of `plan`/`dump --train` (which only need the graph's shape)."""
    for name, value in (("classes", 1000), ("seed", 0), ("momentum", 0.9),
                        ("weight_decay", 1e-4)):
        if not hasattr(args, name):
            setattr(args, name, value)
    return args


def cmd_train(args) -> int:
    from .cli_train import cmd_train as run
    if args.lr is None:
        args.lr = 2e-3 if args.optimizer == "adam" else 0.02
    return run(sys.modules[__name__], args)


def cmd_bench(args) -> int:
    if args.train:
        from .cli_train import bench_train
        return bench_train(sys.modules[__name__], args)
    from . import __version__
    from .engine import compile as ig_compile
    from .planner import plan
    from .target import Target

    try:
        threads = apply_threads(args.threads, args.backend)
    except ImportError as e:              # ipugraph._C not built
        raise UsageError(f"backend '{args.backend}' is not available: {e}") from None
    torch = None
    if args.compare == "torch":
        try:
            import torch
        except ImportError:
            raise UsageError("--compare torch needs PyTorch installed (pip install torch), "
                             "or use --compare none") from None
        torch.set_num_threads(threads)

    # a host plan has one tile per thread the kernels actually run on
    target = Target.host(threads) if args.target == "host" else Target.from_name(args.target)
    size = size_text(args.image_size)
    progress(f"building {args.model} (batch {args.batch}, {size}, seed {args.seed})")
    graph = build_model(args.model, args.batch, args.image_size, seed=args.seed, target=target)
    macs = graph.macs()
    progress(f"planning for {target.name} and compiling on backend '{args.backend}'")
    try:
        engine = ig_compile(graph, backend=args.backend, plan=plan(graph, target))
    except RuntimeError as e:             # a backend that is not built / not installed
        raise UsageError(str(e)) from None
    x = np.random.default_rng(args.seed).standard_normal(graph.inputs["x"].shape, np.float32)
    runners = {"ipugraph": lambda: engine.run({"x": x})}
    if torch is not None:
        progress("building the same network in torch with the same weights")
        device = "cuda" if args.backend == "triton" and torch.cuda.is_available() else "cpu"
        runners.update(_torch_runners(torch, args.model, graph, x, device))

    ours = engine.run({"x": x})["logits"]
    errors = {name: _rel_error(ours, np.asarray(fn()))
              for name, fn in runners.items() if name != "ipugraph"}
    for name, err in errors.items():
        progress(f"max rel error ipugraph vs {name}: {err:.2e}")
    agree = all(err <= AGREE_REL_ERROR for err in errors.values())

    load_start = os.getloadavg()
    times, others = measure(runners, args.warmup, args.iters)
    load_end = os.getloadavg()
    results = {name: figures(t, args.batch, macs) for name, t in times.items()}
    peer = None
    if torch is not None:                 # torch in its faster layout is the peer
        peer = min(("torch NCHW", "torch channels_last"), key=lambda n: results[n]["median_ms"])
    ratio = results["ipugraph"]["img_per_s"] / results[peer]["img_per_s"] if peer else None
    cores = len(os.sched_getaffinity(0))
    busy = others is not None and others >= 0.25

    print(f"{args.model}, batch {args.batch}, {size}, float32, {threads} threads, "
          f"ipugraph backend '{args.backend}' planned for {target.name}")
    rows = [("ipugraph " + args.backend, results["ipugraph"])]
    if peer is not None:
        rows.append((peer, results[peer]))
    print(table(rows, results[peer] if peer else None))
    if peer is not None:
        other = "torch NCHW" if peer == "torch channels_last" else "torch channels_last"
        print(f"torch {torch.__version__} eager under inference_mode; {peer.split()[1]} was "
              f"faster ({other.split()[1]}: median {results[other]['median_ms']:.1f} ms)")
        print(f"ipugraph/torch throughput: {ratio:.2f}x; max rel error vs torch "
              f"{errors[peer]:.1e}")
    load = ("other processes unmeasured" if others is None else
            f"other processes used {others:.2f} of the {os.cpu_count()} cores meanwhile"
            + (" (BUSY: these times are inflated)" if busy else ""))
    print(f"medians of {args.iters} interleaved runs after {args.warmup} warm-up on {cores} "
          f"cores ({cpu_model()}); {load}")
    prof = profile_runs(engine, {"x": x}, args.iters) if args.profile else None
    if args.profile:
        print_profile(prof, args.iters)
    if not agree:
        print(f"ERROR: ipugraph and torch disagree (max rel error {max(errors.values()):.2e} > "
              f"{AGREE_REL_ERROR}); the timings compare different computations", file=sys.stderr)

    if args.json:
        write_json(args.json, {
            "command": args.command_line,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": args.model, "batch": args.batch, "image_size": size, "dtype": "float32",
            "seed": args.seed, "backend": args.backend, "target": target.name,
            "warmup": args.warmup, "iters": args.iters, "threads": threads,
            "params": graph.num_params(), "macs_per_run": macs,
            "results": results, "torch_peer": peer, "ratio_ipugraph_over_torch": ratio,
            "max_rel_error": errors, "outputs_agree": agree,
            "machine": {"cpu_model": cpu_model(), "cores": cores,
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                        "loadavg_start": load_start, "loadavg_end": load_end,
                        "other_processes_cores": others, "busy": busy,
                        "platform": platform.platform()},
            "versions": {"ipugraph": __version__, "python": platform.python_version(),
                         "numpy": np.__version__, "torch": torch.__version__ if torch else None},
            "extension": extension_info() if args.backend == "cpu" else None,
            "profile": prof.to_dict() if prof is not None else None,
        })
    return 0 if agree else 1


def table(rows: list[tuple[str, dict]], peer: dict | None) -> str:
    head = f"{'runtime':<22} {'img/s':>9} {'median ms':>10} {'GFLOP/s':>9} {'vs torch':>9}"
    lines = [head, "-" * len(head)]
    for name, r in rows:
        ratio = f"{r['img_per_s'] / peer['img_per_s']:.2f}x" if peer else "-"
        lines.append(f"{name:<22} {r['img_per_s']:>9.2f} {r['median_ms']:>10.1f} "
                     f"{r['gflop_per_s']:>9.1f} {ratio:>9}")
    return "\n".join(lines)


# -- entry point ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipugraph", description="Plan, run and benchmark ipugraph models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("bench", help="time a model on a backend against PyTorch",
                           description="Time MODEL on an ipugraph backend and, with --compare "
                           "torch, the same network and weights in PyTorch, interleaved in one "
                           "process on the same threads; prints medians.")
    bench.add_argument("model", choices=MODEL_NAMES)
    bench.add_argument("--backend", choices=BACKEND_NAMES, default="cpu")
    bench.add_argument("--target", choices=TARGET_NAMES, default="host",
                       help="the plan's target (default: host, one tile per thread)")
    bench.add_argument("--batch", type=positive_int, default=8)
    bench.add_argument("--image-size", type=image_size, default=224, metavar="N|HxW")
    bench.add_argument("--compare", choices=("torch", "none"), default="torch")
    bench.add_argument("--warmup", type=nonnegative_int, default=2)
    bench.add_argument("--iters", type=positive_int, default=5)
    bench.add_argument("--threads", type=positive_int, default=None,
                       help="OpenMP threads for ipugraph and torch (default: OMP_NUM_THREADS "
                       "or all usable cores)")
    bench.add_argument("--seed", type=nonnegative_int, default=0,
                       help="seed of the random weights and input")
    bench.add_argument("--json", metavar="FILE", help="also write the figures and machine info")
    bench.add_argument("--profile", action="store_true",
                       help="after the timed runs, time every compute set of --iters more "
                            "ipugraph runs and print the per-op-kind table (also in --json)")
    bench.add_argument("--train", action="store_true",
                       help="time one training step (forward, cross-entropy, backward, SGD "
                       "update) instead of inference")
    bench.add_argument("--classes", type=positive_int, default=1000)
    bench.add_argument("--lr", type=float, default=0.01)
    bench.add_argument("--momentum", type=float, default=0.9)
    bench.add_argument("--weight-decay", type=float, default=1e-4)
    bench.set_defaults(func=cmd_bench)

    train = sub.add_parser("train", help="train a model on a generated data set, printing the "
                           "loss of every step", description="Build MODEL's training step "
                           "(training-mode batch norm, cross-entropy, gradients, optimizer "
                           "update in place) and run it STEPS times on generated images.")
    train.add_argument("model", choices=MODEL_NAMES)
    train.add_argument("--backend", choices=BACKEND_NAMES, default="cpu")
    train.add_argument("--target", choices=TARGET_NAMES, default="host")
    train.add_argument("--batch", type=positive_int, default=8)
    train.add_argument("--image-size", type=image_size, default=64, metavar="N")
    train.add_argument("--steps", type=positive_int, default=50)
    train.add_argument("--dataset", choices=("synthetic", "shapes"), default="synthetic",
                       help="generated coloured shapes; the class is the shape's kind")
    train.add_argument("--classes", type=positive_int, default=4)
    train.add_argument("--optimizer", choices=("sgd", "adam"), default="adam")
    train.add_argument("--lr", type=float, default=None,
                       help="learning rate (default 0.02 for sgd, 0.002 for adam)")
    train.add_argument("--momentum", type=float, default=0.9)
    train.add_argument("--weight-decay", type=float, default=5e-4)
    train.add_argument("--threads", type=positive_int, default=None)
    train.add_argument("--seed", type=nonnegative_int, default=0)
    train.set_defaults(func=cmd_train)

    plan = sub.add_parser("plan", help="print a model's tile plan for a target")
    plan.add_argument("model", choices=MODEL_NAMES)
    plan.add_argument("--target", choices=TARGET_NAMES, default="ipu-mk2")
    plan.add_argument("--batch", type=positive_int, default=1)
    plan.add_argument("--image-size", type=image_size, default=224, metavar="N|HxW")
    plan.add_argument("--json", metavar="FILE", help="also write plan.to_json()")
    plan.add_argument("--train", action="store_true",
                      help="plan the training step (forward, backward, SGD update)")
    plan.set_defaults(func=cmd_plan)

    dump = sub.add_parser("dump", help="write a model's tile-placement graph, pictures, trace "
                          "and report.html", description="Plan MODEL for a target and write "
                          "graph.json/.gexf/.graphml/.dot, graph.png/.svg, tiles.png, trace.json, "
                          "report.html and manifest.json into --out.")
    dump.add_argument("model", choices=MODEL_NAMES)
    dump.add_argument("--target", choices=TARGET_NAMES, default="ipu-mk2")
    dump.add_argument("--batch", type=positive_int, default=1)
    dump.add_argument("--image-size", type=image_size, default=224, metavar="N|HxW")
    dump.add_argument("--out", required=True, metavar="DIR")
    dump.add_argument("--level", choices=("auto", "vertex", "op-tile", "op-tilegroup"),
                      default="auto", help="graph.gexf/.graphml/.dot: one node per vertex, per "
                      "(op, tile) or per (op, group of 32 tiles); auto picks by size")
    dump.add_argument("--color", choices=("layer", "density"), default="layer",
                      help="graph.png colour: the layer, or compute density")
    dump.add_argument("--frames", action="store_true",
                      help="also one picture per BSP step in DIR/frames/")
    dump.add_argument("--train", action="store_true",
                      help="dump the training step's graph (forward, backward, SGD update)")
    dump.set_defaults(func=cmd_dump)

    info = sub.add_parser("info", help="version, C++ extension, threads, targets, ops, backends")
    info.set_defaults(func=cmd_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    args.command_line = shlex.join(["ipugraph", *(sys.argv[1:] if argv is None else argv)])
    try:
        return args.func(args)
    except UsageError as e:
        print(f"ipugraph {args.command}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
