"""Per-layer roofline table: ResNet-34's distinct conv layers, each method, against torch.

For every distinct conv shape of ResNet-34 at the given batch (bench/resnet34_shapes.py) and
every method the planner can compute it with on this host (direct; Winograd F(4x4) and F(2x2)
for the 3x3 stride-1 layers), the layer is planned alone with that method (ig.plan(..., methods=...)),
compiled on the cpu backend and its compute set timed (Engine.run(profile=True): the kernel
alone, not the feed copy), each method in its own block; torch's F.conv2d on channels_last
input is timed on the same shape and threads. Columns:

  MACs       multiply-accumulates of the layer (the direct convolution's count)
  ms         median kernel time;  GFLOP/s = 2 x MACs / ms (for Winograd: the direct-equivalent
             rate, which can exceed the FMA peak because it does fewer multiplications)
  %peak      GFLOP/s / the FMA peak measured first (ipugraph._C.fma_peak, same threads)
  model ms   the planner's estimate for that plan (its cost model)
  chosen     the method the planner picks without restriction
  torch      torch 2.x F.conv2d, channels_last, same threads

--cold evicts the caches (reads a buffer of 3x the L3) before every timed call, as in a whole
network, where a layer's weights come from memory rather than from the previous call.

    OMP_NUM_THREADS=2 .venv/bin/python bench/bench_layers.py --batch 8 --reps 10 \\
        --json bench/results/layers_cpu_b8.json
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)
import ipugraph as ig  # noqa: E402
from ipugraph import _C  # noqa: E402
from ipugraph.benchmark import OtherLoad, cpu_model  # noqa: E402
from resnet34_shapes import SHAPES  # noqa: E402

METHODS = ("direct", "winograd4x4", "winograd2x2")


def l3_bytes() -> int:
    try:
        with open("/sys/devices/system/cpu/cpu0/cache/index3/size") as f:
            s = f.read().strip()
        return int(s.rstrip("KM")) * {"K": 1024, "M": 1 << 20}.get(s[-1], 1)
    except (OSError, ValueError):
        return 64 << 20


def layer_graph(n, h, w, c, k, r, st, pd):
    g = ig.Graph(ig.Target.host(), name="layer")
    x = g.input("x", (n, c, h, w))
    wt = g.variable("w", (k, c, r, r), init=ig.init.kaiming_normal(seed=0))
    g.output("y", ig.ops.conv2d(x, wt, stride=st, padding=pd))
    return g


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=10)
    ap.add_argument("--cold", action="store_true", help="evict the caches before every call")
    ap.add_argument("--only", default="", help="substring filter on the layer name")
    ap.add_argument("--no-torch", action="store_true")
    ap.add_argument("--json", metavar="FILE")
    args = ap.parse_args()
    threads = _C.num_threads()
    peak = _C.fma_peak(1.0)
    sizes = {"L2": 1 << 20, "L3": 16 << 20, "DRAM": 4 * l3_bytes() // 3}
    bw = {k: _C.read_bandwidth(np.ones(v // 4, np.float32), max(2, (256 << 20) // v))
          for k, v in sizes.items()}
    print(f"{cpu_model()}, {threads} threads: FMA peak {peak:.0f} GFLOP/s; read bandwidth "
          + ", ".join(f"{k} {v:.0f} GB/s" for k, v in bw.items()) + f"; batch {args.batch}"
          + (", cold caches" if args.cold else ", warm caches"))
    flush = np.ones(3 * l3_bytes() // 4, np.float32) if args.cold else None

    def evict():
        if flush is not None:
            _C.read_bandwidth(flush, 1)

    torch = None
    if not args.no_torch:
        import torch
        import torch.nn.functional as F
        torch.set_num_threads(threads)
    head = (f"{'layer':18s} {'GMACs':>6s} {'method':>11s} {'ms':>7s} {'GFLOP/s':>8s} "
            f"{'%peak':>6s} {'model ms':>9s} {'chosen':>7s} {'torch ms':>9s} {'GFLOP/s':>8s}")
    print(head)
    print("-" * len(head))
    rows = []
    rng = np.random.default_rng(0)
    for name, H, W, C, K, R, S, st, pd, occ in SHAPES:
        if args.only and args.only not in name:
            continue
        N = args.batch
        g = layer_graph(N, H, W, C, K, R, st, pd)
        macs = g.macs()
        x = rng.standard_normal((N, C, H, W), np.float32)
        chosen = ig.plan(g, ig.Target.host()).steps[0].space.method
        t_torch = None
        if torch is not None:
            xt = torch.from_numpy(x).contiguous(memory_format=torch.channels_last)
            wt = torch.from_numpy(g.variables["w"].value).contiguous(
                memory_format=torch.channels_last)
            times = []
            for i in range(args.reps + 2):
                evict()
                t0 = time.perf_counter()
                with torch.inference_mode():
                    F.conv2d(xt, wt, stride=st, padding=pd)
                if i >= 2:
                    times.append(time.perf_counter() - t0)
            t_torch = statistics.median(times)
        for method in METHODS:
            p = ig.plan(g, ig.Target.host(), methods=(method,))
            if p.steps[0].space.method != method:
                continue
            eng = ig.compile(g, plan=p)
            load = OtherLoad().start()
            times = []
            for i in range(args.reps + 2):
                evict()
                eng.run({"x": x}, profile=True)
                if i >= 2:
                    times.append(eng.last_profile.kernel_seconds)
            others = load.stop()
            t = statistics.median(times)
            model = p.estimated_seconds()
            gf = 2 * macs / t / 1e9
            row = {"layer": name, "occurrences": occ, "macs": macs, "method": method,
                   "ms": t * 1e3, "gflop_per_s": gf, "percent_of_peak": 100 * gf / peak,
                   "model_ms": model * 1e3, "chosen": chosen == method,
                   "plan": p.steps[0].partition.describe(),
                   "torch_ms": None if t_torch is None else t_torch * 1e3,
                   "other_processes_cores": others}
            rows.append(row)
            tt = "" if t_torch is None else f"{t_torch * 1e3:9.2f} {2 * macs / t_torch / 1e9:8.0f}"
            print(f"{name:18s} {macs / 1e9:6.3f} {method:>11s} {t * 1e3:7.2f} {gf:8.0f} "
                  f"{100 * gf / peak:6.0f} {model * 1e3:9.2f} {'*' if chosen == method else '':>7s} "
                  + tt + ("  BUSY" if others is not None and others >= 0.25 else ""))
    # the network's conv time as the planner's choices would run it, layer times x occurrences
    total = sum(r["ms"] * r["occurrences"] for r in rows if r["chosen"])
    direct = sum(r["ms"] * r["occurrences"] for r in rows if r["method"] == "direct")
    torch_total = sum(r["torch_ms"] * r["occurrences"] for r in rows
                      if r["method"] == "direct" and r["torch_ms"] is not None)
    print("-" * len(head))
    print(f"ResNet-34's convs (x occurrences): chosen methods {total:.1f} ms, direct only "
          f"{direct:.1f} ms" + (f", torch {torch_total:.1f} ms" if torch_total else ""))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(["OMP_NUM_THREADS=" + str(threads), ".venv/bin/python",
                                            *sys.argv]),
                       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
                           timespec="seconds"),
                       "cpu_model": cpu_model(), "threads": threads, "batch": args.batch,
                       "cold": args.cold, "fma_peak_gflop_per_s": peak,
                       "read_bandwidth_gb_per_s": bw, "layers": rows,
                       "convs_ms": {"chosen": total, "direct": direct, "torch": torch_total}},
                      f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
