"""Time to learn: ResNet-18 from scratch on ipugraph's generated shapes (4 classes, 32x32,
batch 32), 320 Adam steps at lr 2e-3 on the cpu backend -- the run tests/test_training.py checks
for accuracy (>= 90% held out) -- timed here, outside the test suite: seconds for the whole run,
per step, and the held-out accuracy reached.

    python bench/bench_learn_shapes.py [--steps 320] [--json bench/results/learn_shapes.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import numpy as np

import ipugraph as ig
from ipugraph.benchmark import cpu_model


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=320)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)
    B, S, C = args.batch, 32, 4
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    xs, ys = ig.datasets.shapes(args.steps * B, S, C, seed=1)
    xt, yt = ig.datasets.shapes(8 * B, S, C, seed=2)
    g = ig.models.resnet18(batch=B, image_size=S, num_classes=C, training=True)
    ig.training.add_training(g, optimizer="adam")
    g.output("probe_logits", g["logits"])
    eng = ig.compile(g, backend="cpu")
    t1 = time.perf_counter()
    losses = []
    for step in range(args.steps):
        sl = slice(step * B, (step + 1) * B)
        losses.append(float(eng.run({"x": xs[sl], "labels": ys[sl],
                                     "lr": np.float32(2e-3)})["loss"]))
    t2 = time.perf_counter()
    correct = 0
    for i in range(0, len(xt), B):
        z = eng.run({"x": xt[i:i + B], "labels": yt[i:i + B], "lr": np.float32(0)})["probe_logits"]
        correct += int((z.argmax(1) == yt[i:i + B]).sum())
    command = " ".join(["python", "bench/bench_learn_shapes.py", *(argv or sys.argv[1:])])
    date = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    result = {"command": command, "date": date, "cpu_model": cpu_model(), "steps": args.steps,
              "batch": B, "seconds_total": time.perf_counter() - t0,
              "seconds_compile": t1 - t0, "seconds_per_step": (t2 - t1) / args.steps,
              "accuracy": correct / len(xt), "first_loss": losses[0], "last_loss": losses[-1],
              "load_average_before": load, "threads": ig._C.num_threads()}
    print(f"{args.steps} Adam steps, batch {B}: {result['seconds_total']:.1f} s in all "
          f"({result['seconds_per_step'] * 1e3:.0f} ms a step, compile "
          f"{result['seconds_compile']:.1f} s); loss {losses[0]:.3f} -> {losses[-1]:.3f}; "
          f"held-out accuracy {result['accuracy']:.1%}; load average before {load:.2f}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
