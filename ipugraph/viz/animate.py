"""animate(recording, out_dir): a recorded training run (ipugraph.record) painted on the training
step's tile-placement graph, one frame per recorded step.

The graph is the plan of the recorded model's training step on an IPU target (ipu-mk2 unless
told otherwise), laid out once (viz/layout.py): the positions stay fixed and only the colours
move. Each frame has three panels on that layout, one per phase of the step:

- **forward**: each vertex in the colour of its layer's fraction of zeros after the ReLU
  (the recorded ReLU whose scope shares the most leading name parts with the vertex's layer);
- **backward**: the gradient norm of its layer's weight (log scale);
- **update**: the weight's relative update ||Δw|| / ||w|| (log scale).

The colour scales are fixed over the whole run (the range of every recorded step), so a layer
changes colour only when its statistic changes. Files: frames/frame_NNN.png, animation.mp4
(H.264 through imageio-ffmpeg's ffmpeg), animation.gif (Pillow), index.html (the frames with a
step slider and the statistics of the step), statistics.png (small multiples: every statistic
of every layer over the steps) and animate.json (what was written, and how long it took).
"""
from __future__ import annotations

import html
import json
import os
import time
from typing import Callable

import numpy as np

from .graphdata import PHASES, build

PANELS = (("forward", "act_zero", "fraction of zeros after the ReLU", False),
          ("backward", "grad_norm", "gradient norm (log10)", True),
          ("update", "update_ratio", "update ||Δw|| / ||w|| (log10)", True))
MAX_POINTS = 60_000        # vertices drawn per panel (a fixed random subset past this)
SMALL = (("act_mean", "activation mean after ReLU", False),
         ("act_std", "activation std after ReLU", False),
         ("act_zero", "fraction of zeros after ReLU", False),
         ("grad_norm", "gradient norm", True),
         ("update_ratio", "update ratio ||Δw|| / ||w||", True))


def match_layers(vertex_layers: list[str], subject_layers: list[str]) -> np.ndarray:
    """For each vertex layer, the index of the subject layer sharing the most leading dotted
    name parts with it (the first on ties), or -1 when none shares one."""
    subj = [s.split(".") for s in subject_layers]
    out = np.full(len(vertex_layers), -1, np.int64)
    for i, name in enumerate(vertex_layers):
        parts = name.split(".")
        best, arg = 0, -1
        for j, s in enumerate(subj):
            n = 0
            for a, b in zip(parts, s):
                if a != b:
                    break
                n += 1
            if n > best:
                best, arg = n, j
        out[i] = arg
    return out


def training_plan(meta: dict, target):
    """The plan of the recorded model's training step (meta: a recording's meta.json)."""
    from .. import training
    from ..models import MODELS
    from ..planner import plan
    for key in ("model", "batch", "image_size", "classes"):
        if key not in meta:
            raise ValueError(f"animate: the recording's meta.json has no '{key}' (record with "
                             f"`ipugraph train ... --record DIR`)")
    if meta["model"] not in MODELS:
        raise ValueError(f"animate: unknown model {meta['model']!r} in the recording "
                         f"(known: {', '.join(sorted(MODELS))})")
    g = MODELS[meta["model"]](batch=meta["batch"], image_size=meta["image_size"],
                              num_classes=meta["classes"], training=True, target=target)
    training.add_training(g, optimizer=meta.get("optimizer", "sgd"))
    return plan(g, target)


def _scale(values: np.ndarray, log: bool):
    v = np.asarray(values, np.float64)
    if log:
        v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
    fin = v[np.isfinite(v)]
    lo, hi = (float(fin.min()), float(fin.max())) if fin.size else (0.0, 1.0)
    return v, lo, (hi if hi > lo else lo + 1.0)


def animate(recording, out_dir, target=None, fps: float = 4.0, seed: int = 0,
            max_points: int = MAX_POINTS, progress: Callable[[str], None] | None = None) -> dict:
    """Write the animation files of the recording folder `recording` into `out_dir`; returns
    the manifest (also animate.json). `target`: an ipugraph.Target (default ipu-mk2)."""
    from .. import record
    from ..target import Target
    from . import draw, layout
    say = progress or (lambda message: None)
    if not (isinstance(fps, (int, float)) and np.isfinite(fps) and fps > 0):
        raise ValueError(f"animate: fps must be a positive number, got {fps!r}")
    rec = record.load(recording)
    if not rec["steps"]:
        raise ValueError(f"{recording}: the recording holds no recorded step")
    target = target or Target.ipu_mk2()
    os.makedirs(os.path.join(out_dir, "frames"), exist_ok=True)
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    say(f"planning {rec['meta']['model']}'s training step on {target.name}")
    vg = build(training_plan(rec["meta"], target))
    seconds["plan and vertex graph"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    say(f"layout of {vg.num_vertices:,} vertices")
    pos = layout.layout(vg, seed=seed, max_seconds=10.0)
    seconds["layout"] = time.perf_counter() - t0

    rng = np.random.default_rng(seed)
    keep = np.arange(vg.num_vertices) if vg.num_vertices <= max_points else \
        np.sort(rng.choice(vg.num_vertices, max_points, replace=False))
    phase = vg.v_phase[keep]
    vlayer = vg.v_layer[keep]

    _, plt = draw._mpl()
    import matplotlib
    from PIL import Image
    cmap = matplotlib.colormaps["viridis"]
    fig, axes = plt.subplots(1, 3, figsize=(18, 6.6), dpi=100, facecolor=draw.BACKGROUND)
    fig.subplots_adjust(left=0.01, right=0.99, top=0.84, bottom=0.12, wspace=0.03)
    panels = []
    for ax, (ph, kind, label, log) in zip(axes, PANELS):
        ax.set_facecolor(draw.BACKGROUND)
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_visible(False)
        mine = phase == PHASES.index(ph)
        idx = keep[mine]
        values, lo, hi = _scale(rec["values"][kind], log)
        which = match_layers(vg.layers, rec["layers"][kind])[vlayer[mine]]
        ax.scatter(pos[keep, 0], pos[keep, 1], s=0.6, c="#2a2d38", linewidths=0,
                   rasterized=True)
        sc = ax.scatter(pos[idx, 0], pos[idx, 1], s=1.6, linewidths=0, rasterized=True)
        ax.set_title(f"{ph}: {label}", color=draw.FOREGROUND, fontsize=12)
        norm = matplotlib.colors.Normalize(lo, hi)
        cb = fig.colorbar(matplotlib.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax,
                          orientation="horizontal", fraction=0.04, pad=0.02)
        cb.ax.tick_params(colors=draw.FOREGROUND, labelsize=8)
        cb.outline.set_edgecolor(draw.MUTED)
        panels.append((sc, values, which, norm))
    title = fig.text(0.01, 0.95, "", color=draw.FOREGROUND, fontsize=15, fontweight="bold",
                     va="center")
    fig.text(0.01, 0.905, f"{rec['meta']['model']} training step on {target.name} "
             f"({vg.num_vertices:,} vertices, {len(keep):,} drawn; fixed layout): each vertex "
             f"in the colour of its layer's recorded statistic", color=draw.MUTED, fontsize=10,
             va="center")

    t0 = time.perf_counter()
    frames, images = [], []
    losses = rec["meta"].get("losses", [])
    for row, step in enumerate(rec["steps"]):
        for sc, values, which, norm in panels:
            v = np.where(which >= 0, values[row][np.maximum(which, 0)], np.nan)
            rgba = cmap(norm(np.nan_to_num(v, nan=norm.vmin)))
            rgba[~np.isfinite(v)] = (0.35, 0.36, 0.4, 1.0)
            sc.set_facecolor(rgba)
        loss = f", loss {losses[step]:.4f}" if step < len(losses) else ""
        title.set_text(f"step {step}{loss}")
        fig.canvas.draw()                   # rendered once: the PNG, MP4 and GIF share it
        images.append(np.asarray(fig.canvas.buffer_rgba())[:, :, :3].copy())
        path = os.path.join(out_dir, "frames", f"frame_{row:03d}.png")
        Image.fromarray(images[-1]).save(path)
        frames.append(path)
        say(f"frame {row + 1}/{len(rec['steps'])} (step {step})")
    plt.close(fig)
    seconds["frames"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    files = {"frames": [os.path.relpath(p, out_dir) for p in frames]}
    files["mp4"] = _write_mp4(images, os.path.join(out_dir, "animation.mp4"), fps)
    files["gif"] = _write_gif(images, os.path.join(out_dir, "animation.gif"), fps)
    files["small_multiples"] = _small_multiples(rec, os.path.join(out_dir, "statistics.png"))
    files["html"] = _write_html(rec, files["frames"], os.path.join(out_dir, "index.html"), fps)
    seconds["video, gif, html, small multiples"] = time.perf_counter() - t0
    manifest = {"recording": os.fspath(recording), "target": target.name,
                "vertices": vg.num_vertices, "drawn": int(len(keep)),
                "steps": rec["steps"], "fps": fps,
                "seconds": {k: round(v, 3) for k, v in seconds.items()},
                "files": {k: (v if isinstance(v, list) else os.path.relpath(v, out_dir))
                          for k, v in files.items()}}
    with open(os.path.join(out_dir, "animate.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return manifest


def _write_mp4(images, path, fps) -> str:
    try:
        import imageio_ffmpeg
    except ImportError as e:                        # pragma: no cover - viz extra not installed
        raise ImportError("the MP4 needs imageio-ffmpeg: pip install 'ipugraph[viz]'") from e
    h, w = images[0].shape[:2]
    h2, w2 = h - h % 2, w - w % 2                   # yuv420p: even sides
    writer = imageio_ffmpeg.write_frames(path, (w2, h2), fps=fps, codec="libx264",
                                         pix_fmt_out="yuv420p", macro_block_size=1,
                                         quality=7)
    writer.send(None)
    for im in images:
        writer.send(np.ascontiguousarray(im[:h2, :w2]))
    writer.close()
    return path


def _write_gif(images, path, fps) -> str:
    from PIL import Image
    frames = [Image.fromarray(im).resize((im.shape[1] // 2, im.shape[0] // 2)) for im in images]
    frames[0].save(path, save_all=True, append_images=frames[1:], loop=0,
                   duration=int(1000 / fps), optimize=True)
    return path


def _small_multiples(rec, path) -> str:
    from . import draw
    _, plt = draw._mpl()
    fig, axes = plt.subplots(1, len(SMALL), figsize=(4.2 * len(SMALL), 3.8), dpi=100)
    steps = np.asarray(rec["steps"])
    for ax, (kind, label, log) in zip(axes, SMALL):
        v = rec["values"][kind]
        n = v.shape[1]
        colours = plt.get_cmap("viridis")(np.linspace(0, 1, max(n, 1)))
        for j in range(n):
            ax.plot(steps, v[:, j], color=colours[j], linewidth=1.0, alpha=0.85)
        if log:
            ax.set_yscale("log")
        ax.set_title(label, fontsize=10)
        ax.set_xlabel("step", fontsize=9)
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.25)
    axes[0].text(0.02, 0.02, "one line per layer: first (purple) to last (yellow)",
                 transform=axes[0].transAxes, fontsize=7.5, color="#444")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _write_html(rec, frames, path, fps) -> str:
    e = html.escape
    losses = rec["meta"].get("losses", [])
    rows = []
    for row, step in enumerate(rec["steps"]):
        vals = {k: rec["values"][k][row] for k in ("act_zero", "grad_norm", "update_ratio")}
        loss = losses[step] if step < len(losses) else float("nan")
        rows.append({"step": int(step), "loss": float(loss),
                     "zero": float(np.nanmean(vals["act_zero"])),
                     "grad": float(np.nanmedian(vals["grad_norm"])),
                     "ratio": float(np.nanmedian(vals["update_ratio"]))})
    data = json.dumps({"frames": frames, "rows": rows}).replace("<", "\\u003c")
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{e(rec['meta'].get('model', ''))} training,
recorded</title><link rel="icon" href="data:,">
<style>body{{font:14px system-ui,sans-serif;background:#07080d;color:#e6e8ef;margin:16px}}
img{{max-width:100%;display:block;margin:8px 0}}input{{width:60%}}.dim{{color:#9aa0b4}}
</style></head><body>
<h1>{e(rec['meta'].get('model', ''))}: the training run, one frame per recorded step</h1>
<p class="dim">Drag the slider or press play. Statistics: <a href="statistics.png"
style="color:#8fb4ff">small multiples</a>.</p>
<div><input id="slider" type="range" min="0" max="{len(frames) - 1}" value="0">
<button id="play" type="button">play</button> <span id="info"></span></div>
<img id="frame" alt="frame" src="{e(frames[0])}">
<script id="data" type="application/json">{data}</script>
<script>
(function () {{
var D = JSON.parse(document.getElementById("data").textContent);
var s = document.getElementById("slider"), img = document.getElementById("frame");
var info = document.getElementById("info"), timer = null;
function show(i) {{
  var r = D.rows[i];
  img.src = D.frames[i];
  s.value = i;
  info.textContent = "step " + r.step + " \\u00b7 loss " + r.loss.toFixed(4) +
    " \\u00b7 mean zero fraction " + r.zero.toFixed(3) + " \\u00b7 median gradient norm " +
    r.grad.toExponential(2) + " \\u00b7 median update ratio " + r.ratio.toExponential(2);
  window.ipugraphAnimation.frame = i;
}}
window.ipugraphAnimation = {{count: D.frames.length, frame: 0, show: show}};
s.addEventListener("input", function () {{ show(+s.value); }});
document.getElementById("play").addEventListener("click", function () {{
  if (timer) {{ clearInterval(timer); timer = null; return; }}
  timer = setInterval(function () {{ show((+s.value + 1) % D.frames.length); }},
                      {int(1000 / fps)});
}});
show(0);
}})();
</script></body></html>
"""
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path
