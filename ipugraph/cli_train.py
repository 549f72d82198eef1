"""`ipugraph train` and `ipugraph bench --train`: a training step (forward, backward, SGD update)
as one Engine.run, on generated data; the benchmark times it against torch's step in the same
process."""
from __future__ import annotations

import datetime
import os
import platform
import time

import numpy as np


def training_graph(cli, args, target, optimizer="sgd"):
    from . import training
    from .models import MODELS
    try:
        g = MODELS[args.model](batch=args.batch, image_size=args.image_size,
                               num_classes=args.classes, seed=args.seed, target=target,
                               training=True)
    except ValueError as e:
        raise cli.UsageError(str(e)) from None
    step = training.add_training(g, optimizer=optimizer, momentum=args.momentum,
                                 weight_decay=args.weight_decay)
    return g, step


def cmd_train(cli, args) -> int:
    from .datasets import DATASETS
    from .engine import compile as ig_compile
    from .planner import plan
    from .target import Target
    threads = cli.apply_threads(args.threads, args.backend)
    target = Target.host(threads) if args.target == "host" else Target.from_name(args.target)
    size = cli.size_text(args.image_size)
    if not isinstance(args.image_size, int):
        raise cli.UsageError("train: --image-size must be one number (square images) for the "
                             "generated data set")
    side = args.image_size
    cli.progress(f"building {args.model} training step (batch {args.batch}, {size}, "
                 f"{args.classes} classes, {args.optimizer})")
    g, train_step = training_graph(cli, args, target, args.optimizer)
    cli.progress(f"planning {len(g.nodes)} ops for {target.name}, compiling on '{args.backend}'")
    t0 = time.perf_counter()
    engine = ig_compile(g, backend=args.backend, plan=plan(g, target))
    cli.progress(f"compiled in {time.perf_counter() - t0:.1f} s")
    rec = None
    if args.record:
        from . import record
        t0 = time.perf_counter()
        stats = record.add_statistics(g, train_step)
        meta = {k: getattr(args, k) for k in ("model", "batch", "image_size", "classes",
                                              "dataset", "optimizer", "lr", "momentum",
                                              "weight_decay", "seed", "steps", "target",
                                              "backend")}
        rec = record.Recorder(args.record, g, stats, every=args.record_every, plain=engine,
                              meta=meta, backend=args.backend, target=target)
        cli.progress(f"recording {len(stats)} statistics every {args.record_every} steps "
                     f"into {args.record} (second engine compiled in "
                     f"{time.perf_counter() - t0:.1f} s)")
    images, labels = DATASETS[args.dataset](args.steps * args.batch, side, args.classes,
                                            seed=args.seed)
    lr = np.float32(args.lr)
    start = time.perf_counter()
    losses, rec_times, plain_times = [], [], []
    for step in range(args.steps):
        sl = slice(step * args.batch, (step + 1) * args.batch)
        t = time.perf_counter()
        feeds = {"x": images[sl], "labels": labels[sl], "lr": lr}
        loss = float((rec.run(step, feeds) if rec else engine.run(feeds))["loss"])
        took = time.perf_counter() - t
        (rec_times if rec and rec.records(step) else plain_times).append(took)
        losses.append(loss)
        done = step + 1
        eta = (time.perf_counter() - start) / done * (args.steps - done)
        bar = "#" * (20 * done // args.steps)
        print(f"step {done:4d}/{args.steps} [{bar:<20}] loss {loss:.4f}  "
              f"{took * 1e3:7.1f} ms  eta {eta:5.1f} s", flush=True)
    total = time.perf_counter() - start
    k = max(1, min(5, len(losses) // 2))
    print(f"{args.model} on {args.dataset} ({args.classes} classes, {size}), batch "
          f"{args.batch}: loss {np.mean(losses[:k]):.4f} (first {k}) -> "
          f"{np.mean(losses[-k:]):.4f} (last {k}) in {args.steps} steps, {total:.1f} s "
          f"({args.steps * args.batch / total:.1f} img/s)")
    if rec:
        rec.close()
        line = f"recorded {len(rec.recorded)} of {args.steps} steps into {args.record}"
        if len(plain_times) >= 2 and len(rec_times) >= 2:
            # medians, the first step of each engine left out (it packs the weights)
            p_ms = float(np.median(plain_times[1:])) * 1e3
            r_ms = float(np.median(rec_times[1:])) * 1e3
            extra = (r_ms - p_ms) * len(rec_times) / (p_ms * args.steps)
            line += (f": a recorded step {r_ms:.1f} ms, a plain one {p_ms:.1f} ms, so "
                     f"recording adds {extra:+.1%} to the training time")
        print(line)
    return 0


def bench_train(cli, args, peers=("torch",)) -> int:
    """One SGD step (forward, loss, backward, update) of ipugraph against torch's, each timed
    in its own blocks (ipugraph/benchmark.py)."""
    from . import __version__
    from .engine import compile as ig_compile
    from .planner import plan
    from .target import Target
    threads = cli.apply_threads(args.threads, args.backend)
    torch = None
    if set(peers) - {"torch"}:
        raise cli.UsageError("bench --train compares with torch only (--compare torch or none)")
    if peers:
        import torch
        torch.set_num_threads(threads)
    target = Target.host(threads) if args.target == "host" else Target.from_name(args.target)
    size = cli.size_text(args.image_size)
    cli.progress(f"building the {args.model} training step (batch {args.batch}, {size})")
    g, _ = training_graph(cli, args, target)
    macs = g.macs()
    rng = np.random.default_rng(args.seed)
    x = rng.standard_normal(g.inputs["x"].shape, np.float32)
    y = rng.integers(0, args.classes, args.batch).astype(np.int64)
    lr = np.float32(args.lr)
    runners, first = {}, {}
    if torch is not None:
        from .interop import torch_resnet
        model = torch_resnet.from_graph(args.model, g).train().to(
            memory_format=torch.channels_last)
        opt = torch.optim.SGD(model.parameters(), lr=float(lr), momentum=args.momentum,
                              weight_decay=args.weight_decay)
        tx = torch.from_numpy(x)
        ty = torch.from_numpy(y)

        def torch_step():
            opt.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(
                model(tx.contiguous(memory_format=torch.channels_last)), ty)
            loss.backward()
            opt.step()
            return float(loss)
        runners["torch channels_last"] = torch_step
    cli.progress(f"planning {len(g.nodes)} ops for {target.name}, compiling on '{args.backend}'")
    engine = ig_compile(g, backend=args.backend, plan=plan(g, target))
    runners = {"ipugraph": lambda: float(engine.run({"x": x, "labels": y, "lr": lr})["loss"]),
               **runners}
    for name, fn in runners.items():           # the first step starts from the same weights
        first[name] = fn()
    error = None
    if torch is not None:
        error = abs(first["ipugraph"] - first["torch channels_last"]) / abs(
            first["torch channels_last"])
        cli.progress(f"first-step loss: ipugraph {first['ipugraph']:.6f}, torch "
                     f"{first['torch channels_last']:.6f} (rel. difference {error:.1e})")
    measured, probe = cli.measure_probed(runners, args.warmup, args.iters, args.rounds,
                                         args.backend == "cpu")
    # the training graph's macs() already counts forward, backward-data and backward-weight
    results = {name: cli.figures(rec["best"], args.batch, macs, rec)
               for name, rec in measured.items()}
    peer = "torch channels_last" if torch is not None else None
    ratio = results["ipugraph"]["img_per_s"] / results[peer]["img_per_s"] if peer else None
    print(f"{args.model} training step (forward, cross-entropy, backward, SGD momentum "
          f"{args.momentum}), batch {args.batch}, {size}, float32, {threads} threads, "
          f"backend '{args.backend}'")
    rows = [("ipugraph " + args.backend, results["ipugraph"])]
    if peer:
        rows.append((peer, results[peer]))
    print(cli.table(rows, results[peer] if peer else None, "torch"))
    if peer:
        print(f"ipugraph/torch training-step throughput: {ratio:.2f}x; first-step loss rel. "
              f"difference {error:.1e}")
    busy = [name for name, r in results.items() if r["busy"]]
    print(f"each runtime timed in its own block: {args.warmup} warm-up + {args.iters} timed "
          f"steps, {args.rounds} rounds, best round's median; {len(os.sched_getaffinity(0))} "
          f"cores ({cli.cpu_model()})"
          + (f"; BUSY during: {', '.join(busy)}: those times are inflated, re-run" if busy
             else "; quiet"))
    probed = cli.probe_text(*probe)
    if probed:
        print(probed)
    feeds = {"x": x, "labels": y, "lr": lr}
    prof = cli.profile_runs(engine, feeds, args.iters) if args.profile else None
    if args.profile:
        cli.print_profile(prof, args.iters)
    if args.json:
        cli.write_json(args.json, {
            "command": args.command_line,
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "model": args.model, "mode": "train", "batch": args.batch, "image_size": size,
            "classes": args.classes, "threads": threads, "backend": args.backend,
            "results": results, "torch_peer": peer, "ratio_ipugraph_over_torch": ratio,
            "first_step_loss": first, "first_step_loss_rel_difference": error,
            "warmup": args.warmup, "iters": args.iters, "rounds": args.rounds,
            "timing": "each runtime in its own block; the best round's median",
            "machine": {"cpu_model": cli.cpu_model(), "busy_runtimes": busy,
                        "platform": platform.platform(),
                        "fma_probe_gflops_before_after": probe},
            "versions": {"ipugraph": __version__, "numpy": np.__version__,
                         "torch": torch.__version__ if torch else None},
            "profile": prof.to_dict() if prof is not None else None})
    return 0 if error is None or error < 1e-3 else 1
