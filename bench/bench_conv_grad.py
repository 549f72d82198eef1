"""Convolution backward on the CPU backend vs torch, per ResNet-34 conv shape.

For every distinct conv of ResNet-34 (bench/resnet34_shapes.py) at --batch (8) and
--image-size (224; the shapes scale with it) it builds a graph with conv2d_backward_data and
conv2d_backward_weight, compiles it on the cpu backend with the plan for --target (host: one
tile per OpenMP thread), and times the two compiled Kernels themselves (prepare() + run(): the
weight repack that a training step pays is included; the engine's feed layout conversion is
not). In the same process, on the same data and threads, it times torch's CPU conv backward,
torch.ops.aten.convolution_backward with channels_last float32 tensors and output_mask
[dx only] resp. [dw only]. Rounds alternate ipugraph and torch; medians of --iters rounds.

    .venv/bin/python bench/bench_conv_grad.py                      # batch 8, 224x224
    .venv/bin/python bench/bench_conv_grad.py --image-size 112 --iters 3

ratio = torch time / ipugraph time (> 1: ipugraph faster). The total weights each layer by its
number of occurrences in ResNet-34. Results are checked against torch (max rel error).
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from resnet34_shapes import SHAPES  # noqa: E402

import ipugraph as ig  # noqa: E402
from ipugraph import _C  # noqa: E402


def build(n, c, h, w, k, r, s, stride, pad, target, seed=0):
    rng = np.random.default_rng(seed)
    oh = (h + 2 * pad - r) // stride + 1
    ow = (w + 2 * pad - s) // stride + 1
    g = ig.Graph(name="conv_grad")
    dy = g.input("dy", (n, k, oh, ow))
    x = g.input("x", (n, c, h, w))
    wt = g.variable("w", (k, c, r, s),
                    value=rng.standard_normal((k, c, r, s)).astype(np.float32) * 0.1)
    geom = dict(stride=(stride, stride), padding=(pad, pad), dilation=(1, 1), groups=1)
    dx = ig.ops.OPS["conv2d_backward_data"](dy, wt, input_size=(h, w), name="dx", **geom)
    dwt = ig.ops.OPS["conv2d_backward_weight"](x, dy, kernel=(r, s), name="dw", **geom)
    g.output("dx", dx)
    g.output("dw", dwt)
    eng = ig.compile(g, backend="cpu", plan=ig.plan(g, target))
    exe = eng._exe
    kernels = {kk.name: kk for kk in exe.kernels}
    xs = exe.storage(x)
    dys = exe.storage(dy)
    xs[...] = rng.standard_normal(xs.shape).astype(np.float32)
    dys[...] = rng.standard_normal(dys.shape).astype(np.float32)
    return eng, exe, kernels, (x, dy, wt, dx, dwt)


def timeit(fn):
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--image-size", type=int, default=224)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--target", default="host", choices=["host", "mk2", "mk1"])
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: OpenMP's)")
    ap.add_argument("--layers", default=None, help="comma-separated substrings of layer names")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads or _C.num_threads())
    target = {"host": ig.Target.host, "mk2": ig.Target.ipu_mk2, "mk1": ig.Target.ipu_mk1}[
        args.target]()
    scale = args.image_size / 224
    print(f"conv backward, batch {args.batch}, {args.image_size}x{args.image_size}, "
          f"{_C.num_threads()} threads ({_C.simd}), torch {torch.__version__}, "
          f"load avg {os.getloadavg()[0]:.2f}")
    hdr = (f"{'layer':20s} {'x':>5s} | {'dx ms':>8s} {'torch':>8s} {'ratio':>6s} | "
           f"{'dw ms':>8s} {'torch':>8s} {'ratio':>6s} | {'err dx':>8s} {'err dw':>8s}")
    print(hdr)
    print("-" * len(hdr))
    tot = np.zeros(4)
    for name, h, w, c, k, r, s, stride, pad, occ in SHAPES:
        if args.layers and not any(p in name for p in args.layers.split(",")):
            continue
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
        n = args.batch
        eng, exe, kernels, (x_t, dy_t, w_t, dx_t, dw_t) = build(n, c, h, w, k, r, s, stride,
                                                                  pad, target)
        kd, kw = kernels["dx"], kernels["dw"]

        def ours(kernel):     # the compute set (and its reduction, when split)
            kernel.compute()
            if kernel.reduce is not None:
                kernel.reduce()

        def ours_dx():
            kd.prepare()      # a training step repacks the updated weight
            ours(kd)

        xt = torch.from_numpy(exe.storage(x_t)).permute(0, 3, 1, 2)      # channels_last views
        dyt = torch.from_numpy(exe.storage(dy_t)).permute(0, 3, 1, 2)
        wt = torch.from_numpy(w_t.value).contiguous(memory_format=torch.channels_last)
        geo = ([stride, stride], [pad, pad], [1, 1], False, [0, 0], 1)

        def torch_dx():
            return torch.ops.aten.convolution_backward(dyt, xt, wt, None, *geo,
                                                       [True, False, False])[0]

        def torch_dw():
            return torch.ops.aten.convolution_backward(dyt, xt, wt, None, *geo,
                                                       [False, True, False])[1]

        times = {key: [] for key in ("dx", "tdx", "dw", "tdw")}
        for it in range(args.warmup + args.iters):
            row = {"dx": timeit(ours_dx), "tdx": timeit(torch_dx),
                   "dw": timeit(lambda: ours(kw)), "tdw": timeit(torch_dw)}
            if it >= args.warmup:
                for key, v in row.items():
                    times[key].append(v)
        med = {key: statistics.median(v) for key, v in times.items()}
        ref_dx = torch_dx().permute(0, 2, 3, 1).numpy()
        ref_dw = torch_dw().permute(0, 2, 3, 1).numpy()              # [K, R, S, C]
        dx = exe.storage(dx_t)
        dwv = exe.storage(dw_t)
        err_dx = float(np.abs(dx - ref_dx).max() / max(np.abs(ref_dx).max(), 1e-30))
        err_dw = float(np.abs(dwv - ref_dw).max() / max(np.abs(ref_dw).max(), 1e-30))
        tot += occ * np.array([med["dx"], med["tdx"], med["dw"], med["tdw"]])
        print(f"{name:20s} {occ:>5d} | {med['dx'] * 1e3:8.2f} {med['tdx'] * 1e3:8.2f} "
              f"{med['tdx'] / med['dx']:6.2f} | {med['dw'] * 1e3:8.2f} {med['tdw'] * 1e3:8.2f} "
              f"{med['tdw'] / med['dw']:6.2f} | {err_dx:8.1e} {err_dw:8.1e}", flush=True)
        del eng, exe, kernels
    print("-" * len(hdr))
    print(f"{'total (x occurrences)':26s} | {tot[0] * 1e3:8.1f} {tot[1] * 1e3:8.1f} "
          f"{tot[1] / tot[0]:6.2f} | {tot[2] * 1e3:8.1f} {tot[3] * 1e3:8.1f} "
          f"{tot[3] / tot[2]:6.2f} |")
    both = (tot[1] + tot[3]) / (tot[0] + tot[2])
    print(f"dx + dw: ipugraph {(tot[0] + tot[2]) * 1e3:.1f} ms, torch "
          f"{(tot[1] + tot[3]) * 1e3:.1f} ms, ratio {both:.2f}; load avg "
          f"{os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
