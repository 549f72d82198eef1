"""Micro-benchmark of the C++ conv codelet (ipugraph._C.conv2d_nhwc) on ResNet-34's conv shapes.

For each distinct conv shape at the given batch (224x224 input) it prints the median time of
ipugraph's kernel and of torch.nn.functional.conv2d (channels_last, same thread count), timed
interleaved in this process, GFLOP/s (2*N*OH*OW*K*Cg*R*S) and torch/ours ratio (> 1: ours faster).
"model ms" is the planner's cost-model estimate for the same conv planned on Target.host() (the
cost model the planner scores splits with), so model/ours shows how far the model is from the
measured kernel on this machine.
The vertex table splits batch x output rows into about --vpt vertices per thread, as a host plan
would.  The "weighted" line sums each shape times its number of occurrences in ResNet-34.

    .venv/bin/python bench/bench_kernels.py --batch 8 --reps 5
"""
import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # not installed
import ipugraph as ig  # noqa: E402
from ipugraph import _C  # noqa: E402

from resnet34_shapes import SHAPES  # noqa: E402  (bench/ is on sys.path)


def vertex_table(N, K, OH, OW, target):
    """Split batch x output rows into about `target` vertices (all channels, all columns)."""
    nb = min(N, target)
    rows = max(1, min(OH, -(-target // nb)))
    npts = np.linspace(0, N, nb + 1).round().astype(int)
    hpts = np.linspace(0, OH, rows + 1).round().astype(int)
    return np.array([[n0, n1, 0, K, h0, h1, 0, OW]
                     for n0, n1 in zip(npts[:-1], npts[1:])
                     for h0, h1 in zip(hpts[:-1], hpts[1:])], np.int32)


def model_seconds(N, H, W, C, K, R, S, st, pd, threads):
    """The host cost model's estimate for this conv (as the planner would split it)."""
    g = ig.Graph(name="conv")
    x = g.input("x", (N, C, H, W))
    w = g.variable("w", (K, C, R, S), init=ig.init.zeros())
    g.output("y", ig.ops.conv2d(x, w, stride=st, padding=pd))
    return ig.plan(g, ig.Target.host(threads=threads)).estimated_seconds()


def timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--reps", type=int, default=5, help="timed runs per kernel (median reported)")
    ap.add_argument("--vpt", type=int, default=4, help="vertices per thread")
    ap.add_argument("--only", default="", help="substring filter on the shape name")
    ap.add_argument("--no-torch", action="store_true")
    args = ap.parse_args()

    threads = _C.num_threads()
    torch.set_num_threads(threads)
    print(f"ipugraph._C simd={_C.simd} threads={threads}  torch {torch.__version__} "
          f"threads={torch.get_num_threads()}  batch={args.batch} reps={args.reps}")
    hdr = (f"{'layer':18s} {'GFLOP':>6s} {'ours ms':>8s} {'GFLOP/s':>8s} {'torch ms':>9s} "
           f"{'GFLOP/s':>8s} {'torch/ours':>10s} {'model ms':>9s} {'model/ours':>10s}")
    print(hdr)
    print("-" * len(hdr))
    rng = np.random.default_rng(0)
    tot_ours = tot_torch = tot_flop = tot_model = 0.0
    for name, H, W, C, K, R, S, st, pd, occ in SHAPES:
        if args.only and args.only not in name:
            continue
        N = args.batch
        OH = (H + 2 * pd - R) // st + 1
        OW = (W + 2 * pd - S) // st + 1
        x = rng.standard_normal((N, H, W, C), dtype=np.float32)
        w = (rng.standard_normal((K, C, R, S)) / np.sqrt(C * R * S)).astype(np.float32)
        wp = _C.pack_conv_weight(w, 1)
        out = np.empty((N, OH, OW, K), np.float32)
        verts = vertex_table(N, K, OH, OW, args.vpt * threads)
        flop = 2.0 * N * OH * OW * K * C * R * S

        def ours():
            _C.conv2d_nhwc(x, wp, None, None, out, verts, K, R, S, st, st, pd, pd, 1, 1, 1, False)

        xt = torch.from_numpy(x).permute(0, 3, 1, 2)  # NCHW view of NHWC data = channels_last
        wt = torch.from_numpy(w).contiguous(memory_format=torch.channels_last)

        def theirs():
            with torch.no_grad():
                F.conv2d(xt, wt, stride=st, padding=pd)

        ours()
        if not args.no_torch:
            theirs()
        to, tt = [], []
        for _ in range(args.reps):
            to.append(timed(ours))
            if not args.no_torch:
                tt.append(timed(theirs))
        mo = statistics.median(to)
        mt = statistics.median(tt) if tt else float("nan")
        tot_ours += occ * mo
        tot_torch += occ * mt
        tot_flop += occ * flop
        mm = model_seconds(N, H, W, C, K, R, S, st, pd, threads)
        tot_model += occ * mm
        print(f"{name:18s} {flop / 1e9:6.2f} {mo * 1e3:8.2f} {flop / mo / 1e9:8.1f} "
              f"{mt * 1e3:9.2f} {flop / mt / 1e9:8.1f} {mt / mo:10.2f} {mm * 1e3:9.2f} "
              f"{mm / mo:10.2f}")
    if tot_flop:
        print("-" * len(hdr))
        print(f"{'weighted (x occ)':18s} {tot_flop / 1e9:6.2f} {tot_ours * 1e3:8.1f} "
              f"{tot_flop / tot_ours / 1e9:8.1f} {tot_torch * 1e3:9.1f} "
              f"{tot_flop / tot_torch / 1e9:8.1f} {tot_torch / tot_ours:10.2f} "
              f"{tot_model * 1e3:9.1f} {tot_model / tot_ours:10.2f}")


if __name__ == "__main__":
    main()
