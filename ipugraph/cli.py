"""The `ipugraph` command line (also `python -m ipugraph`).

  ipugraph bench resnet34 --backend cpu --batch 8 --image-size 224 --compare all
  ipugraph plan resnet34 --target ipu-mk2 --batch 1 [--json plan.json]
  ipugraph dump resnet34 --target ipu-mk2 --batch 1 --out out/resnet34-mk2 [--frames]
  ipugraph info

`bench` times ipugraph and its peers (torch, ONNX Runtime, OpenVINO) on the same network,
weights, input and threads in one process, each runtime in its own timed block, and reports the
best round's median (ipugraph/benchmark.py). Progress goes to stderr, results to stdout (and
--json).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import sys
import time

import numpy as np

from .backends import NAMES as BACKEND_NAMES
from .benchmark import (BUSY_CORES, cpu_model, figures, measure_probed, parse_compare,
                        peer_runners, print_profile, probe_text, profile_runs, progress,
                        rel_error, require, table)
from .models import MODELS

TARGET_NAMES = ("host", "ipu-mk1", "ipu-mk2")
MODEL_NAMES = tuple(MODELS)
# Above this max|a-b|/max|b| the two runtimes are not computing the same function, and their
# timings are not comparable (fp32 runtimes agree to ~1e-6 on ResNets).
AGREE_REL_ERROR = 1e-3


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
    info = {"built": True, "path": getattr(_C, "module_file", None),
            "simd": getattr(_C, "simd", None), "isa_builds": _C.built(),
            "runnable": _C.available(), "omp_threads": _C.num_threads()}
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
        print(f"C++ extension ipugraph._C: built, SIMD {ext['simd']}{extra}\n  {ext['path']}"
              f"\n  ISA builds: {', '.join(ext['isa_builds'])}; this CPU runs "
              f"{', '.join(ext['runnable'])} (IPUGRAPH_ISA picks one)")
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


def cmd_animate(args) -> int:
    from .target import Target
    from .viz.animate import animate
    if os.path.exists(args.out) and not os.path.isdir(args.out):
        raise UsageError(f"animate: --out {args.out} exists and is not a folder")
    try:
        manifest = animate(args.recording, args.out, target=Target.from_name(args.target),
                           fps=args.fps, progress=progress)
    except ValueError as e:
        raise UsageError(str(e)) from None
    print(f"{len(manifest['steps'])} frames of {manifest['vertices']:,} vertices "
          f"({manifest['drawn']:,} drawn) -> {args.out}")
    for label, secs in manifest["seconds"].items():
        print(f"  {label:<36} {secs:7.2f} s")
    for key in ("mp4", "gif", "html", "small_multiples"):
        path = os.path.join(args.out, manifest["files"][key])
        print(f"  {manifest['files'][key]:<28} {os.path.getsize(path) / 2**20:8.2f} MiB")
    return 0


# -- bench ------------------------------------------------------------------------------------

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
    try:
        peers = parse_compare(args.compare)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.train:
        from .cli_train import bench_train
        return bench_train(sys.modules[__name__], args, peers)
    from . import __version__
    from .engine import compile as ig_compile
    from .planner import plan
    from .target import Target

    try:
        threads = apply_threads(args.threads, args.backend)
    except ImportError as e:              # ipugraph._C not built
        raise UsageError(f"backend '{args.backend}' is not available: {e}") from None
    try:
        for p in peers:
            require(p)
    except ImportError as e:
        raise UsageError(str(e)) from None

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
    runners = {"ipugraph": lambda: engine.run({"x": x})["logits"]}
    versions = {}
    if peers:
        progress(f"building the same network with the same weights in {', '.join(peers)}")
        import torch
        device = "cuda" if args.backend == "triton" and torch.cuda.is_available() else "cpu"
        try:
            more, versions = peer_runners(peers, args.model, graph, x, threads, device)
        except ValueError as e:
            raise UsageError(str(e)) from None
        runners.update(more)

    outputs = {name: np.asarray(fn()) for name, fn in runners.items()}
    # every runtime against torch's NCHW logits (the reference), else against ipugraph's
    ref_name = "torch NCHW" if "torch NCHW" in outputs else "ipugraph"
    errors = {name: rel_error(out, outputs[ref_name])
              for name, out in outputs.items() if name != ref_name}
    for name, err in errors.items():
        progress(f"max rel error {name} vs {ref_name}: {err:.2e}")
    agree = all(err <= AGREE_REL_ERROR for err in errors.values())

    load_start = os.getloadavg()
    measured, probe = measure_probed(runners, args.warmup, args.iters, args.rounds,
                                     args.backend == "cpu")
    load_end = os.getloadavg()
    results = {name: figures(rec["best"], args.batch, macs, rec) for name, rec in measured.items()}
    peer_names = [n for n in results if n != "ipugraph"]
    fastest = min(peer_names, key=lambda n: results[n]["median_ms"]) if peer_names else None
    torch_peer = None
    if "torch NCHW" in results:           # torch in its faster layout
        torch_peer = min(("torch NCHW", "torch channels_last"),
                         key=lambda n: results[n]["median_ms"])
    ours = results["ipugraph"]

    def ratio(name):
        return ours["img_per_s"] / results[name]["img_per_s"] if name else None
    cores = len(os.sched_getaffinity(0))
    busy = [name for name, r in results.items() if r["busy"]]

    print(f"{args.model}, batch {args.batch}, {size}, float32, {threads} threads, "
          f"ipugraph backend '{args.backend}' planned for {target.name}")
    rows = [("ipugraph " + args.backend, ours)] + [(n, results[n]) for n in peer_names]
    print(table(rows, results[fastest] if fastest else None, "fastest peer"))
    if fastest is not None:
        print(f"ipugraph/{fastest} (the fastest peer) throughput: {ratio(fastest):.2f}x")
    if torch_peer is not None:
        print(f"ipugraph/torch throughput: {ratio(torch_peer):.2f}x (torch {versions['torch']} "
              f"eager under inference_mode, {torch_peer.split()[1]} the faster layout)")
    if errors:
        print("max rel error of the logits vs " + ref_name + ": " +
              ", ".join(f"{n} {e:.1e}" for n, e in errors.items()))
    print(f"each runtime timed in its own block: {args.warmup} warm-up + {args.iters} timed "
          f"calls, {args.rounds} rounds, best round's median; {cores} cores ({cpu_model()})"
          + (f"; BUSY (other processes used >= {BUSY_CORES} cores) during: {', '.join(busy)}: "
             "those times are inflated, re-run" if busy else "; quiet"))
    probed = probe_text(*probe)
    if probed:
        print(probed)
    prof = profile_runs(engine, {"x": x}, args.iters) if args.profile else None
    if args.profile:
        print_profile(prof, args.iters)
    if not agree:
        print(f"ERROR: the runtimes disagree (max rel error {max(errors.values()):.2e} > "
              f"{AGREE_REL_ERROR}); the timings compare different computations", file=sys.stderr)

    if args.json:
        write_json(args.json, {
            "command": args.command_line,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": args.model, "batch": args.batch, "image_size": size, "dtype": "float32",
            "seed": args.seed, "backend": args.backend, "target": target.name,
            "warmup": args.warmup, "iters": args.iters, "rounds": args.rounds,
            "timing": "each runtime in its own block; the best round's median",
            "threads": threads, "params": graph.num_params(), "macs_per_run": macs,
            "results": results, "fastest_peer": fastest,
            "ratio_ipugraph_over_fastest_peer": ratio(fastest),
            "torch_peer": torch_peer, "ratio_ipugraph_over_torch": ratio(torch_peer),
            "reference": ref_name, "max_rel_error": errors, "outputs_agree": agree,
            "machine": {"cpu_model": cpu_model(), "cores": cores,
                        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                        "loadavg_start": load_start, "loadavg_end": load_end,
                        "busy_runtimes": busy, "platform": platform.platform(),
                        "fma_probe_gflops_before_after": probe},
            "versions": {"ipugraph": __version__, "python": platform.python_version(),
                         "numpy": np.__version__, **versions},
            "extension": extension_info() if args.backend == "cpu" else None,
            "profile": prof.to_dict() if prof is not None else None,
        })
    return 0 if agree else 1


# -- entry point ------------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ipugraph", description="Plan, run and benchmark ipugraph models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    bench = sub.add_parser("bench", help="time a model on a backend against its peers",
                           description="Time MODEL on an ipugraph backend and, with --compare, "
                           "the same network and weights in PyTorch, ONNX Runtime and OpenVINO "
                           "(via an ONNX export of the torch twin), in one process on the same "
                           "threads, each runtime timed in its own blocks (warm-up, then the "
                           "timed calls; --rounds); prints the best round's medians and the "
                           "ratio to the fastest peer.")
    bench.add_argument("model", choices=MODEL_NAMES)
    bench.add_argument("--backend", choices=BACKEND_NAMES, default="cpu")
    bench.add_argument("--target", choices=TARGET_NAMES, default="host",
                       help="the plan's target (default: host, one tile per thread)")
    bench.add_argument("--batch", type=positive_int, default=8)
    bench.add_argument("--image-size", type=image_size, default=224, metavar="N|HxW")
    bench.add_argument("--compare", default="torch", metavar="PEERS",
                       help="none, all, or a comma list of torch,onnxruntime,openvino "
                            "(default torch; --train compares with torch only)")
    bench.add_argument("--warmup", type=nonnegative_int, default=2)
    bench.add_argument("--iters", type=positive_int, default=5,
                       help="timed calls per runtime per round")
    bench.add_argument("--rounds", type=positive_int, default=2,
                       help="rounds of blocks (warm-up, then the timed calls) per runtime")
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
    train.add_argument("--record", metavar="DIR", default=None,
                       help="record activation, gradient and update statistics into DIR "
                            "(stats.parquet, meta.json), computed in the step itself")
    train.add_argument("--record-every", type=positive_int, default=10, metavar="K",
                       help="record every K-th step, the first included (default 10)")
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
    dump.add_argument("--color", choices=("auto", "layer", "phase", "density"), default="auto",
                      help="graph.png colour: the layer; the group with forward, backward and "
                           "update in three tones (phase); compute density at quantiles; auto "
                           "(default): phase for a training step, else layer")
    dump.add_argument("--frames", action="store_true",
                      help="also one picture per BSP step in DIR/frames/")
    dump.add_argument("--train", action="store_true",
                      help="dump the training step's graph (forward, backward, SGD update)")
    dump.set_defaults(func=cmd_dump)

    anim = sub.add_parser("animate", help="paint a recorded training run (train --record) on "
                          "the training step's tile-placement graph: MP4, GIF, HTML with a "
                          "step slider, small multiples of every statistic")
    anim.add_argument("recording", metavar="DIR", help="a folder written by train --record")
    anim.add_argument("--out", required=True, metavar="OUT")
    anim.add_argument("--target", choices=("ipu-mk1", "ipu-mk2"), default="ipu-mk2",
                      help="the IPU whose plan gives the layout (default ipu-mk2)")
    anim.add_argument("--fps", type=float, default=4.0, help="frames per second (default 4)")
    anim.set_defaults(func=cmd_animate)

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
