"""Training in motion: statistics of a training step, computed in the step itself.

`add_statistics(g, step)` appends to a training graph (ig.training.add_training's) the
reductions that say how a network is learning, each a graph output computed on the backend like
the rest of the step -- no activation is copied to Python:

    act_mean, act_std, act_zero   every forward ReLU output: mean, standard deviation (over all
                                  its elements) and the fraction of exact zeros
    grad_norm                     every trained variable: the L2 norm of its gradient
    update_ratio                  every trained variable: ||w_new - w|| / ||w||, the step's
                                  relative change of the weight (NaN while ||w|| is 0, as for
                                  a batch norm's bias at initialisation)
    loss                          the step's loss (the graph's own output)

The graph keeps the engine compiled before the statistics were added (an executable fetches the
outputs it was lowered with), so `Recorder` runs the plain engine on most steps and a second
engine, compiled with the statistics, on every K-th; both hold the same variables.

    eng = ig.compile(g)                          # the plain step
    stats = ig.record.add_statistics(g, step)
    rec = ig.record.Recorder("r/", g, stats, every=10, plain=eng)
    for i in range(steps):
        out = rec.run(i, feeds)                  # records steps 0, 10, 20, ...
    rec.close()                                  # r/stats.parquet, r/meta.json

`load(dir)` reads a recording back: {"meta": ..., "steps": [...], "values": {stat: [steps,
subjects] array}, "subjects": {stat: [names]}, "layers": {stat: [layer names]}}.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import numpy as np

from . import ops
from .graph import Graph, GraphError

STATS = ("act_mean", "act_std", "act_zero", "grad_norm", "update_ratio")
PREFIX = "record:"


@dataclass(frozen=True)
class Stat:
    kind: str                 # one of STATS
    subject: str              # the tensor or variable it describes
    layer: str                # its layer (node scope), for the pictures
    output: str               # the graph output holding it
    denominator: str | None = None   # an output it is divided by (update_ratio: ||w||)


def _norm(x):
    return ops.sqrt(ops.sum(ops.mul(x, x)))


def add_statistics(g: Graph, step) -> list[Stat]:
    """Append the statistics of the module docstring to `g` (a graph with a training step
    `step` from ig.training.add_training) as graph outputs; returns what was added, in order."""
    if any(n.startswith(PREFIX) for n in g.outputs):
        raise GraphError(f"add_statistics: graph '{g.name}' already records statistics")
    stats: list[Stat] = []

    def out(kind, subject, layer, t, den=None):
        name = f"{PREFIX}{kind}:{subject}"
        g.output(name, t)
        if den is not None:
            g.output(f"{PREFIX}{kind}.denominator:{subject}", den)
        stats.append(Stat(kind, subject, layer, name,
                          None if den is None else f"{PREFIX}{kind}.denominator:{subject}"))

    relus = [n for n in list(g.nodes) if n.op.name == "relu" and n.phase == "forward"]
    for node in relus:
        y = node.output
        layer = node.scope or node.name
        mean = ops.mean(y)
        sq = ops.mean(ops.mul(y, y))
        out("act_mean", y.name, layer, mean)
        out("act_std", y.name, layer, ops.sqrt(ops.maximum(ops.sub(sq, ops.mul(mean, mean)),
                                                           0.0)))
        out("act_zero", y.name, layer, ops.mean(ops.cast(ops.equal(y, 0.0), y.dtype)))
    for name, grad in step.grads.items():
        w = g.variables[name]
        layer = name.rsplit(".", 1)[0] if "." in name else name
        out("grad_norm", name, layer, _norm(grad))
        new = g.updates.get(name)
        if new is not None:
            out("update_ratio", name, layer, _norm(ops.sub(new, w)), den=_norm(w))
    return stats


class Recorder:
    """Runs a training step, recording the statistics every `every` steps (step 0 first) into
    `out_dir`: stats.parquet (one row per recorded step and statistic: step, stat, subject,
    layer, value) and meta.json (the run's description, the losses of every step)."""

    def __init__(self, out_dir, g: Graph, stats: list[Stat], every: int = 10, plain=None,
                 meta: dict | None = None, **compile_options):
        from .engine import compile as ig_compile
        if not isinstance(every, (int, np.integer)) or isinstance(every, bool) or every < 1:
            raise ValueError(f"Recorder: every must be an integer >= 1, got {every!r}")
        if not stats:
            raise ValueError("Recorder: no statistics to record (see add_statistics)")
        self.dir = os.fspath(out_dir)
        os.makedirs(self.dir, exist_ok=True)
        self.stats, self.every, self.plain = list(stats), int(every), plain
        self.engine = ig_compile(g, **compile_options)
        self.meta = dict(meta or {})
        self.rows: dict[str, list] = {k: [] for k in ("step", "stat", "subject", "layer",
                                                      "value")}
        self.losses: list[float] = []
        self.recorded: list[int] = []

    def records(self, step: int) -> bool:
        return step % self.every == 0

    def run(self, step: int, feeds: dict) -> dict:
        """One training step; on a recording step its statistics are kept. Returns the step's
        outputs without the statistics."""
        record = self.records(step)
        out = (self.engine if record or self.plain is None else self.plain).run(feeds)
        if record:
            self.recorded.append(int(step))
            for s in self.stats:
                self.rows["step"].append(int(step))
                self.rows["stat"].append(s.kind)
                self.rows["subject"].append(s.subject)
                self.rows["layer"].append(s.layer)
                v = float(out[s.output])
                if s.denominator is not None:
                    d = float(out[s.denominator])
                    v = v / d if d > 0 else float("nan")
                self.rows["value"].append(v)
        out = {k: v for k, v in out.items() if not k.startswith(PREFIX)}
        if "loss" in out:
            self.losses.append(float(out["loss"]))
        return out

    def close(self) -> str:
        """Write the files; returns the folder."""
        import pyarrow as pa
        import pyarrow.parquet as pq
        pq.write_table(pa.table({"step": np.asarray(self.rows["step"], np.int64),
                                 "stat": self.rows["stat"], "subject": self.rows["subject"],
                                 "layer": self.rows["layer"],
                                 "value": np.asarray(self.rows["value"], np.float64)}),
                       os.path.join(self.dir, "stats.parquet"), compression="zstd")
        meta = {**self.meta, "every": self.every, "recorded_steps": self.recorded,
                "losses": self.losses, "stats": list(STATS),
                "subjects": {k: [s.subject for s in self.stats if s.kind == k] for k in STATS}}
        with open(os.path.join(self.dir, "meta.json"), "w") as f:
            json.dump(meta, f, indent=1)
        return self.dir


def load(path) -> dict:
    """A recording (Recorder's folder) as arrays: values[stat] is [recorded steps, subjects]."""
    import pyarrow.parquet as pq
    path = os.fspath(path)
    try:
        with open(os.path.join(path, "meta.json")) as f:
            meta = json.load(f)
        t = pq.read_table(os.path.join(path, "stats.parquet")).to_pydict()
    except (OSError, ValueError) as e:
        raise ValueError(f"{path}: not a recording (meta.json and stats.parquet from "
                         f"`ipugraph train --record`): {e}") from None
    steps = sorted(set(t["step"]))
    at = {s: i for i, s in enumerate(steps)}
    values, subjects, layers = {}, {}, {}
    for kind in STATS:
        names = meta["subjects"].get(kind, [])
        col = {n: j for j, n in enumerate(names)}
        v = np.full((len(steps), len(names)), np.nan)
        lay = [""] * len(names)
        for st, k, sub, lyr, val in zip(t["step"], t["stat"], t["subject"], t["layer"],
                                        t["value"]):
            if k == kind and sub in col:
                v[at[st], col[sub]] = val
                lay[col[sub]] = lyr
        values[kind], subjects[kind], layers[kind] = v, names, lay
    return {"meta": meta, "steps": steps, "values": values, "subjects": subjects,
            "layers": layers}
