"""Estimated IPU inference throughput of ResNet-34/50 from the planner, with cold planning times.

For each model, target and batch it plans the graph from an empty plan cache and prints one
markdown row: planning seconds, estimated latency and images/s, the split of the BSP cycles
(compute / exchange / sync / reduction), peak bytes on a tile, and any Repeat. An FP16-rate row
re-plans with the AMP's FP16 MACs/cycle (the tensors stay FP32, so its exchange and memory are
pessimistic): Graphcore publishes FP16 figures.

    .venv/bin/python bench/ipu_estimates.py                      # the default sweep
    .venv/bin/python bench/ipu_estimates.py --models resnet34 --targets ipu-mk2 --batches 4
"""
import argparse
import importlib
import os
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import ipugraph as ig  # noqa: E402

plan_module = importlib.import_module("ipugraph.planner.plan")


def row(model: str, target, batch: int, label: str) -> str:
    g = getattr(ig.models, model)(batch=batch, image_size=224, target=target)
    plan_module._CACHE.clear()                      # cold: nothing planned before
    start = time.perf_counter()
    try:
        p = ig.plan(g, target)
    except ig.PlanError as e:
        return f"| {model} | {label} | {batch} | {time.perf_counter() - start:.2f} | refused: {e} |"
    secs = time.perf_counter() - start
    cyc = p.estimated_cycles()
    parts = [sum(getattr(s, f) for s in p.steps) / cyc for f in
             ("compute_cycles", "exchange_cycles", "sync_cycles", "reduce_cycles")]
    reps = max(s.repeats for s in p.steps)
    return (f"| {model} | {label} | {batch} | {secs:.2f} | {p.estimated_seconds() * 1e3:.3f} | "
            f"{p.samples_per_second():,.0f} | "
            + " / ".join(f"{x:.0%}" for x in parts)
            + f" | {p.peak_tile_bytes() / 1024:.0f} of {target.bytes_per_tile // 1024} | "
            f"{reps if reps > 1 else '-'} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet34,resnet50")
    ap.add_argument("--targets", default="ipu-mk1,ipu-mk2")
    ap.add_argument("--batches", default="1,4,16")
    ap.add_argument("--fp16-rate", action="store_true", help="also rows at the FP16 MAC rate")
    args = ap.parse_args()
    print("| model | target | batch | plan s (cold) | est. latency ms | est. img/s | "
          "compute / exchange / sync / reduction | peak tile KiB | repeats |")
    print("|---|---|---|---|---|---|---|---|---|")
    for model in args.models.split(","):
        for name in args.targets.split(","):
            for batch in (int(b) for b in args.batches.split(",")):
                target = ig.Target.from_name(name)
                print(row(model, target, batch, name), flush=True)
                if args.fp16_rate:
                    fast = ig.Target.from_name(name)
                    fast = type(fast)(**{**fast.__dict__, "name": name + " fp16-rate",
                                         "macs_per_cycle": fast.fp16_macs_per_cycle})
                    print(row(model, fast, batch, fast.name), flush=True)


if __name__ == "__main__":
    main()
