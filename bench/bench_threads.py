"""How the OpenMP wait policy changes a training step when another process takes a core.

Both ipugraph's extension and torch run on libgomp, whose idle workers spin (OMP_WAIT_POLICY,
GOMP_SPINCOUNT) before they sleep. With 2 threads on 2 cores and a third process busy, a
spinning worker holds a core the busy process wants, and a sleeping one must be woken: each
policy trades one against the other. Every (policy, load) pair runs `ipugraph bench MODEL
--train --compare torch` in a fresh process (libgomp reads the variables at load), so ipugraph
and torch see the same policy; "busy" runs one pure-Python spinning process beside it.

    .venv/bin/python bench/bench_threads.py --json bench/results/threads_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

POLICIES = {
    "default": {},                                   # libgomp: spin ~300k iterations, then sleep
    "passive": {"OMP_WAIT_POLICY": "PASSIVE"},       # sleep at once
    "active": {"OMP_WAIT_POLICY": "ACTIVE"},         # spin (practically) for ever
    "spin-10k": {"GOMP_SPINCOUNT": "10000"},         # spin briefly, then sleep
}
SPIN = "while True: pass"


def run(model, batch, size, threads, env_extra, busy, iters) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    env.update(env_extra, OMP_NUM_THREADS=str(threads))
    hog = subprocess.Popen([sys.executable, "-c", SPIN]) if busy else None
    try:
        if hog:
            time.sleep(0.5)
        with tempfile.NamedTemporaryFile(suffix=".json") as f:
            cmd = [sys.executable, "-m", "ipugraph", "bench", model, "--train", "--compare",
                   "torch", "--batch", str(batch), "--image-size", str(size), "--threads",
                   str(threads), "--warmup", "1", "--iters", str(iters), "--rounds", "1",
                   "--json", f.name]
            subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
            data = json.load(open(f.name))
    finally:
        if hog:
            hog.kill()
            hog.wait()
    return {name: r["median_ms"] for name, r in data["results"].items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="resnet18")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--image-size", type=int, default=32)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--json")
    args = ap.parse_args()
    rows = []
    for name, env in POLICIES.items():
        for busy in (False, True):
            ms = run(args.model, args.batch, args.image_size, args.threads, env, busy,
                     args.iters)
            rows.append({"policy": name, "env": env, "busy_core": busy, "median_ms": ms})
            cells = "  ".join(f"{k} {v:8.1f} ms" for k, v in ms.items())
            print(f"{name:9s} {'busy' if busy else 'quiet':5s}  {cells}", flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"command": " ".join(sys.argv), "model": args.model, "batch": args.batch,
                       "image_size": args.image_size, "threads": args.threads,
                       "date": time.strftime("%Y-%m-%d"), "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
