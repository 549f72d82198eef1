"""dump(plan, out_dir): every export and picture of a plan, timed, with a manifest.

Files (each module documents its own): graph.json with graph.vertices.parquet and
graph.edges.parquet (schema.py), graph.gexf / graph.graphml /
graph.dot (exports.py), trace.json (trace.py), graph.png / graph.svg (layout.py + draw.py),
tiles.png and, with frames=True, frames/frame_NNN.png (tiles.py), report.html (report.py), and
manifest.json: the files, their sizes and how long each took.
"""
from __future__ import annotations

import json
import os
import time
from typing import Callable

from .graphdata import build

COLORS = ("auto", "layer", "phase", "density")
LEVELS = ("auto", "vertex", "op-tile", "op-tilegroup")


def dump(plan, out_dir: str, *, level: str = "auto", color: str = "auto",
         frames: bool = False, seed: int = 0,
         progress: Callable[[str], None] | None = None) -> dict:
    """Write the dump of `plan` into `out_dir` (created if needed); returns the manifest."""
    if color not in COLORS:
        raise ValueError(f"viz.dump: color must be one of {COLORS}, got {color!r}")
    if level not in LEVELS:
        raise ValueError(f"viz.dump: level must be one of {LEVELS}, got {level!r}")
    from . import draw, exports, layout, report, schema, tiles, trace
    say = progress or (lambda message: None)
    os.makedirs(out_dir, exist_ok=True)
    timings: dict[str, float] = {}
    files: dict[str, str] = {}

    def timed(label: str, fn, *paths):
        say(f"{label} ...")
        start = time.perf_counter()
        result = fn()
        timings[label] = round(time.perf_counter() - start, 3)
        for p in paths:
            if p and os.path.exists(p):
                files[os.path.relpath(p, out_dir)] = p
        say(f"{label}: {timings[label]:.1f} s")
        return result

    path = lambda name: os.path.join(out_dir, name)          # noqa: E731
    vg = timed("vertex graph", lambda: build(plan, progress=say))
    say(f"{vg.num_vertices:,} vertices, {vg.num_edges:,} edges")
    if color == "auto":     # a training step: forward, backward and update told apart
        color = "phase" if any(p != "forward" for p in vg.step_phases) else "layer"
    timed("graph.json", lambda: schema.write_graph_json(vg, path("graph.json")),
          path("graph.json"), path("graph.vertices.parquet"), path("graph.edges.parquet"))
    level = exports.resolve_level(vg, level)             # once, not in each of the writers
    timed("graph.gexf", lambda: exports.write_gexf(vg, path("graph.gexf"), level=level),
          path("graph.gexf"))
    timed("graph.graphml", lambda: exports.write_graphml(vg, path("graph.graphml"), level=level),
          path("graph.graphml"))
    timed("graph.dot", lambda: exports.write_dot(vg, path("graph.dot"), level=level),
          path("graph.dot"))
    timed("trace.json", lambda: trace.write_trace(plan, path("trace.json")), path("trace.json"))
    positions = timed("layout", lambda: layout.layout(vg, seed=seed))
    timed("graph.png/svg", lambda: draw.draw_graph(vg, positions, path("graph.png"),
                                                  path("graph.svg"), color=color),
          path("graph.png"), path("graph.svg"))
    timed("tiles.png", lambda: tiles.draw_tiles(plan, path("tiles.png")), path("tiles.png"))
    if frames:
        out = timed("frames", lambda: tiles.draw_frames(vg, positions, plan, path("frames")))
        for p in out or []:
            files[os.path.relpath(p, out_dir)] = p
    pictures = {"The vertex graph": path("graph.png"), "Tiles: bytes and cycles": path("tiles.png")}
    timed("report.html", lambda: report.write_report(vg, positions, path("report.html"),
                                                    pictures=pictures), path("report.html"))
    manifest = {
        "graph": plan.graph.name, "target": plan.target.name, "batch": plan.batch(),
        "vertices": vg.num_vertices, "edges": vg.num_edges, "level": level, "color": color,
        "seconds": timings, "total_seconds": round(sum(timings.values()), 3),
        "files": {name: os.path.getsize(p) for name, p in sorted(files.items())},
    }
    with open(path("manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest
