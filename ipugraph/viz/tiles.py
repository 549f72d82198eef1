"""Tile pictures of a Plan: heat maps of every tile's bytes and cycles (tiles.png) and one frame
of the vertex graph per BSP step (frames/frame_NNN.png).

draw_tiles(plan, png_path, step=None)
    The target's tiles as a near-square grid in tile-id order, row by row: the grid is the most
    square factorisation of the tile count with at most 2.5 columns per row (Mk2: 1472 = 32 rows
    × 46 columns; Mk1: 1216 = 32 × 38; 16 tiles: 4 × 4; the host's 2 cores: 1 × 2), falling back
    to ⌈√T⌉ columns with the last row part-filled. It is a map of tile ids, not of the chip's
    floor plan, which the cost model does not use. Two maps side by side:

    - **bytes**: always-live (weights, code, vertex state) + live activations + the step's
      temporaries (planner/memory.py). With `step=None`, each tile's peak over all steps;
      with `step=s`, at step s. The colour scale runs from 0 to the tile's memory (SRAM, or the
      host's L2, where a tile may exceed it) on a square-root scale so that a lightly used
      chip still shows its pattern; the colour bar marks the limit and the 90 % line, and
      tiles above 90 % are outlined.
    - **cycles**: compute cycles per tile (the tile's vertices at the codelet's rate, the
      tile_compute of each step), summed over all steps, or at step s.

    The titles give max, mean and the tiles used; the caption names the fullest tile and what
    fills it.

draw_frames(vg, positions, plan, out_dir) -> list of paths
    One PNG per BSP step (frame_000.png, ...): the graph picture of draw.py with that step's
    vertices lit and the rest dimmed, the step's input edges (from its producers) drawn, and a
    strip of the schedule below with the step's share of the cycles. The dimmed picture is
    rendered once and pasted under every frame, so a frame costs only its own vertices.
"""
from __future__ import annotations

import os

import numpy as np

from . import draw
from .graphdata import VizGraph, heaviest_inputs

FULL = 0.9                      # tiles above this fraction of their memory are outlined
FRAME_WIDTH_PX = 1400


def grid_shape(tiles: int) -> tuple[int, int]:
    """(rows, columns) of the tile map: the squarest exact factorisation with columns/rows in
    [1, 2.5], else ⌈√T⌉ columns."""
    tiles = max(int(tiles), 1)
    best = None
    for rows in range(1, int(np.sqrt(tiles)) + 1):
        if tiles % rows == 0:
            cols = tiles // rows
            if cols / rows <= 2.5:
                best = (rows, cols)
    if best is None:
        cols = int(np.ceil(np.sqrt(tiles)))
        best = (int(np.ceil(tiles / cols)), cols)
    return best


def _as_grid(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    rows, cols = shape
    out = np.full(rows * cols, np.nan)
    out[:len(values)] = values
    return out.reshape(rows, cols)


def _check_step(plan, step) -> int | None:
    if step is None:
        return None
    n = len(plan.steps)
    if isinstance(step, bool) or not isinstance(step, (int, np.integer)):
        raise TypeError(f"step must be an int in 0..{n - 1} or None, got {step!r}")
    if not 0 <= int(step) < n:
        raise ValueError(f"step {step} is out of range: plan of '{plan.graph.name}' has {n} "
                         f"steps (0..{n - 1})")
    return int(step)


def _nice_ticks(top: float) -> list[float]:
    """0, round steps in KiB or MiB (1, 2 or 5 × a power of two... of ten), up to `top`."""
    if top <= 0:
        return [0.0]
    unit = 1024.0 * 1024 if top >= 4 * 1024 * 1024 else 1024.0
    span = top / unit
    raw = span / 5
    mag = 10 ** np.floor(np.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=raw)
    ticks = list(np.arange(0, span + 1e-9, step) * unit)
    return ticks


def _cycles(c: float) -> str:
    if abs(c) >= 1e6:
        return f"{c / 1e6:,.2f} M"
    if abs(c) >= 1e4:
        return f"{c / 1e3:,.0f} k"
    return f"{c:,.0f}"


def _kib(b: float) -> str:
    if b == 0:
        return "0"
    if b >= 1024 * 1024:
        return f"{b / 1024 / 1024:,.1f} MiB"
    return f"{b / 1024:,.1f} KiB"


def tile_values(plan, step: int | None = None):
    """(bytes [T], cycles [T], step of each tile's peak bytes [T])."""
    step = _check_step(plan, step)
    T = plan.target.tiles
    total = plan.memory.total
    if len(plan.steps) == 0:
        z = np.zeros(T)
        return z, z.copy(), np.zeros(T, np.int64)
    if step is None:
        at = np.argmax(total, axis=0)
        nbytes = total[at, np.arange(T)]
        cycles = np.sum([s.tile_compute for s in plan.steps], axis=0)
    else:
        at = np.full(T, step)
        nbytes = total[step]
        cycles = np.asarray(plan.steps[step].tile_compute, np.float64)
    return np.asarray(nbytes, np.float64), np.asarray(cycles, np.float64), at


def draw_tiles(plan, png_path, step: int | None = None) -> str:
    """Write the bytes and cycles heat maps of `plan`'s tiles (see the module docstring)."""
    step = _check_step(plan, step)
    matplotlib, plt = draw._mpl()
    from matplotlib import colors as mcolors
    import matplotlib.patheffects as pe
    from matplotlib.patches import Rectangle
    from matplotlib.ticker import FuncFormatter, MaxNLocator
    t = plan.target
    T = t.tiles
    nbytes, cycles, at = tile_values(plan, step)
    shape = grid_shape(T)
    rows, cols = shape
    limit = float(t.bytes_per_tile)
    top = max(limit, float(nbytes.max()) if T else 0.0)
    W, H = 2000, 1080
    fig = plt.figure(figsize=(W / draw.DPI, H / draw.DPI), dpi=draw.DPI,
                     facecolor=draw.BACKGROUND)
    fg, muted = draw.FOREGROUND, draw.MUTED
    # Two panels of the grid's aspect, each with a colour bar below.
    panel_w, panel_h = 0.44, 0.62
    aspect = cols / rows
    if aspect * H * panel_h > W * panel_w:          # too wide for the height: shrink height
        panel_h = W * panel_w / (aspect * H)
    else:
        panel_w = aspect * H * panel_h / W
    axes = []
    for k in range(2):
        x0 = 0.04 + k * 0.5 + (0.44 - panel_w) / 2
        ax = fig.add_axes((x0, 0.25 + (0.62 - panel_h), panel_w, panel_h))
        ax.set_facecolor(draw.BACKGROUND)
        for sp in ax.spines.values():
            sp.set_color("#30344a")
        ax.tick_params(colors=muted, labelsize=9)
        axes.append(ax)

    # -- bytes ---------------------------------------------------------------------------------
    ax = axes[0]
    norm_b = mcolors.PowerNorm(0.5, vmin=0.0, vmax=top)
    cmap_b = matplotlib.colormaps["inferno"].with_extremes(bad=draw.BACKGROUND)
    im = ax.imshow(_as_grid(nbytes, shape), cmap=cmap_b, norm=norm_b, interpolation="nearest",
                   origin="upper", aspect="equal")
    hot = np.flatnonzero(nbytes > FULL * limit)
    for i in hot[:5000]:
        ax.add_patch(Rectangle((i % cols - 0.5, i // cols - 0.5), 1, 1, fill=False,
                               edgecolor="#4de3ff", linewidth=0.8))
    cax = fig.add_axes((ax.get_position().x0, 0.15, ax.get_position().width, 0.025))
    cb = fig.colorbar(im, cax=cax, orientation="horizontal")
    ticks = _nice_ticks(top)
    cb.set_ticks(ticks, labels=[_kib(v) for v in ticks])
    cb.ax.tick_params(colors=fg, labelsize=9)
    cb.outline.set_edgecolor(muted)
    for frac, style in ((1.0, "-"), (FULL, "--")):
        cb.ax.axvline(frac * limit, color="#4de3ff", linewidth=2, linestyle=style)
    if T:
        cb.ax.axvline(nbytes.max(), color="white", linewidth=1.5)
        lift = 2.4 if np.sqrt(nbytes.max() / top) > 0.45 else 1.3   # clear of the limit text
        cb.ax.text(nbytes.max(), lift, f"max {_kib(nbytes.max())}", color="white", fontsize=9.5,
                   ha="center", va="bottom", transform=cb.ax.get_xaxis_transform())
    mem_name = "L2" if t.memory_is_cache else "SRAM"
    right = limit > 0.5 * top
    cb.ax.text(limit, 1.3, f"{mem_name} limit {_kib(limit)} (solid) · {FULL:.0%} (dashed, "
               f"tiles above it outlined)", color="#4de3ff", fontsize=9.5,
               ha="right" if right else "left", va="bottom",
               transform=cb.ax.get_xaxis_transform())
    mem = "L2 cache (soft limit)" if t.memory_is_cache else "SRAM"
    cb.set_label(f"bytes on the tile (square-root scale, up to the tile's {mem})", color=fg,
                 fontsize=10)
    where = "peak over all steps" if step is None else f"at step {step}"
    used_b = int(np.count_nonzero(nbytes))
    ax.set_title(f"Bytes per tile, {where}\nmax {_kib(nbytes.max())} "
                 f"({nbytes.max() / limit:.0%} of {_kib(limit)}) · mean {_kib(nbytes.mean())} · "
                 f"{len(hot):,} tiles above {FULL:.0%}", color=fg, fontsize=13, pad=10)

    # -- cycles --------------------------------------------------------------------------------
    ax = axes[1]
    cmap_c = matplotlib.colormaps["viridis"].with_extremes(bad=draw.BACKGROUND)
    cmax = float(cycles.max()) if T and cycles.max() > 0 else 1.0
    grid_c = _as_grid(np.where(cycles > 0, cycles, np.nan), shape)
    im = ax.imshow(grid_c, cmap=cmap_c, vmin=0, vmax=cmax, interpolation="nearest",
                   origin="upper", aspect="equal")
    cax = fig.add_axes((ax.get_position().x0, 0.15, ax.get_position().width, 0.025))
    cb = fig.colorbar(im, cax=cax, orientation="horizontal")
    cb.ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: _cycles(v)))
    cb.ax.tick_params(colors=fg, labelsize=9)
    cb.outline.set_edgecolor(muted)
    cb.set_label("compute cycles on the tile (tiles that compute nothing: background)",
                 color=fg, fontsize=10)
    used = cycles[cycles > 0]
    mean_c = float(used.mean()) if used.size else 0.0
    where = "summed over all steps" if step is None else f"at step {step}"
    ax.set_title(f"Compute cycles per tile, {where}\nmax {cycles.max():,.0f} · mean "
                 f"{mean_c:,.0f} over the {used.size:,} of {T:,} tiles used · balance "
                 f"{(cycles.max() / mean_c if mean_c else 1):.2f} (max/mean)", color=fg,
                 fontsize=13, pad=10)
    for ax, values, fmt in ((axes[0], nbytes, _kib), (axes[1], cycles, _cycles)):
        ax.set_xlabel(f"tile id mod {cols}", color=muted, fontsize=9)
        ax.set_ylabel(f"tile id // {cols}", color=muted, fontsize=9)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=12))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True, nbins=10))
        if T <= 64:                                 # few tiles: write each tile's number
            for i in range(T):
                ax.text(i % cols, i // cols, f"tile {i}\n{fmt(values[i])}", ha="center",
                        va="center", fontsize=11 if T <= 16 else 8, color="white",
                        path_effects=[pe.withStroke(linewidth=2.5, foreground="black")])

    # -- title and caption ---------------------------------------------------------------------
    head = f"{plan.graph.name} on {t.name}, batch {plan.batch()}: the {T:,} tiles"
    if step is not None:
        s = plan.steps[step]
        head += (f" at step {step} of {len(plan.steps)} — {s.name} ({s.op}), "
                 f"{s.total_cycles:,.0f} cycles")
    else:
        head += f" over all {len(plan.steps)} steps ({plan.estimated_cycles():,.0f} cycles)"
    fig.text(0.012, 0.965, head, color=fg, fontsize=17, fontweight="bold", va="center")
    lines = [f"Grid: tile t at row t // {cols}, column t % {cols} ({rows} × {cols}, tile-id "
             f"order, not the chip's floor plan). {t.describe()}."]
    if T and len(plan.steps):
        k = int(np.argmax(nbytes))
        b = plan.memory.breakdown(int(at[k]), k)
        lines.append(
            f"Fullest tile: {k} at step {int(at[k])} — {_kib(b['total'])}: always-live "
            f"{_kib(b['always_live'])} (weights {_kib(b['weights'])}, code and vertex state "
            f"{_kib(b['code_and_vertex_state'])}), live activations "
            f"{_kib(b['live_activations'])}, temporaries {_kib(b['temporaries'])}. "
            f"Tiles holding anything: {used_b:,} of {T:,}.")
    fig.text(0.012, 0.045, "\n".join(lines), color=muted, fontsize=11, va="center",
             linespacing=1.6)
    d = os.path.dirname(os.path.abspath(png_path))
    os.makedirs(d, exist_ok=True)
    fig.savefig(png_path, facecolor=draw.BACKGROUND, dpi=draw.DPI)
    plt.close(fig)
    return str(png_path)


# -- frames ------------------------------------------------------------------------------------
def draw_frames(vg: VizGraph, positions, plan, out_dir,
                width_px: int = FRAME_WIDTH_PX) -> list[str]:
    """One PNG per BSP step in `out_dir` (frame_000.png, ...), `width_px` wide; see the module
    docstring."""
    _, plt = draw._mpl()
    from matplotlib.patches import Rectangle
    pos = np.asarray(positions, np.float64)
    if pos.shape != (vg.num_vertices, 2):
        raise ValueError(f"positions must be [{vg.num_vertices}, 2] (one row per vertex), "
                         f"got {pos.shape}")
    os.makedirs(out_dir, exist_ok=True)
    steps = plan.steps
    if not steps:
        return []
    colors, _ = draw.vertex_colors(vg, "layer")
    top = float(vg.v_cycles.max()) if vg.num_vertices else 0.0
    smax = draw.size_ceiling(vg.num_vertices) * 0.6
    sizes = draw.vertex_sizes(vg.v_cycles, draw.SIZE_MIN * smax / draw.SIZE_MAX, smax, top=top)

    # The dimmed base: rendered once.
    fig, ax, _, (head, foot) = draw.canvas(pos, width_px=width_px, legend=False,
                                           header_px=70, footer_px=80)
    dim = colors.copy()
    dim[:, :3] = 0.25 * dim[:, :3] + 0.75 * np.array([0.16, 0.17, 0.22])
    base_edges = heaviest_inputs(vg, 1)
    draw.draw_edges(ax, pos, vg, base_edges, dim, alpha=draw.edge_alpha(len(base_edges)),
                    linewidth=0.3)
    draw.draw_points(ax, pos, dim, sizes, halo=False, core_alpha=0.8)
    draw.label_layers(ax, vg, pos, fontsize=8.5)
    for txt in ax.texts:
        txt.set_alpha(0.5)
    # The schedule strip: one bar per step, width by its cycles.
    Hf = fig.get_figheight() * draw.DPI
    sax = fig.add_axes((0.012, 0.28 * foot / Hf, 0.976, 0.3 * foot / Hf))
    sax.set_axis_off()
    cyc = np.array([s.total_cycles for s in steps], np.float64)
    ends = np.cumsum(cyc)
    starts = ends - cyc
    total = float(ends[-1]) if ends[-1] > 0 else 1.0
    step_layer = np.full(len(steps), -1)
    np.maximum.at(step_layer, vg.v_step[vg.v_step >= 0], vg.v_layer[vg.v_step >= 0])
    pal = draw.layer_colors(len(vg.layers))
    for i in range(len(steps)):
        c = pal[step_layer[i]] if step_layer[i] >= 0 else (0.5, 0.5, 0.5, 1)
        sax.add_patch(Rectangle((starts[i] / total, 0), cyc[i] / total, 1,
                                facecolor=(*c[:3], 0.35), edgecolor=draw.BACKGROUND, lw=0.5))
    sax.set_xlim(0, 1)
    sax.set_ylim(0, 1)
    fig.text(0.012, 0.72 * foot / Hf, "schedule: one bar per BSP step, width ∝ its cycles",
             color=draw.MUTED, fontsize=9, va="center")
    fig.canvas.draw()
    base = np.asarray(fig.canvas.buffer_rgba())[..., :3].astype(np.float32)
    # From here the figure draws only the lit step, on a transparent canvas, and each frame is
    # that overlay composited over the base in NumPy (no re-rendering of the dimmed graph).
    for a in list(ax.collections) + list(ax.texts):
        a.remove()
    for a in list(sax.patches):
        a.remove()
    for txt in list(fig.texts):
        txt.remove()
    fig.patch.set_alpha(0)
    ax.patch.set_alpha(0)
    from PIL import Image
    in_edges_by_step = _in_edges_by_step(vg, len(steps))
    paths = []
    digits = max(3, len(str(len(steps) - 1)))
    for i, s in enumerate(steps):
        members = np.flatnonzero(vg.v_step == i)
        arts = []
        e = in_edges_by_step[i]
        if len(e):
            arts.append(draw.draw_edges(ax, pos, vg, e, colors, linewidth=0.35,
                                        alpha=min(2.5 * draw.edge_alpha(len(e) * 20), 0.6)))
        arts += draw.draw_points(ax, pos[members], colors[members], sizes[members] * 1.6,
                                 halo=True)
        arts.append(sax.add_patch(Rectangle((starts[i] / total, 0), cyc[i] / total, 1,
                                            facecolor="white", edgecolor="white", lw=1.2)))
        layer = vg.layers[step_layer[i]] if step_layer[i] >= 0 else s.name
        title = (f"step {i} of {len(steps)} · {layer} · {s.op} · {s.total_cycles:,.0f} cycles "
                 f"(compute {s.compute_cycles:,.0f}, exchange {s.exchange_cycles:,.0f}, "
                 f"sync {s.sync_cycles:,.0f}, reduction {s.reduce_cycles:,.0f})")
        sub = (f"{s.name}: {len(members):,} vertices on {s.tiles_used:,} tiles · cycles "
               f"{starts[i]:,.0f}–{ends[i]:,.0f} of {total:,.0f} · lit: this step's vertices "
               f"and the heaviest input edge of each (from the steps that produced its inputs)")
        arts.append(fig.text(0.012, 1 - 0.36 * head / Hf, title, color=draw.FOREGROUND,
                             fontsize=13, fontweight="bold", va="center"))
        arts.append(fig.text(0.012, 1 - 0.78 * head / Hf, sub, color=draw.MUTED, fontsize=10,
                             va="center"))
        fig.canvas.draw()
        over = np.asarray(fig.canvas.buffer_rgba())
        a = over[..., 3:4].astype(np.float32) / 255.0
        rgb = over[..., :3] * a + base * (1.0 - a)
        path = os.path.join(out_dir, f"frame_{i:0{digits}d}.png")
        Image.fromarray(np.clip(rgb + 0.5, 0, 255).astype(np.uint8)).save(path, compress_level=3)
        for art in arts:
            if art is not None:
                art.remove()
        paths.append(path)
    plt.close(fig)
    return paths


def _in_edges_by_step(vg: VizGraph, n_steps: int, per_vertex: int = 1) -> list[np.ndarray]:
    """For each step, the indices of its vertices' `per_vertex` heaviest input edges."""
    idx = heaviest_inputs(vg, per_vertex)
    st = vg.v_step[vg.e_dst[idx]]
    order = np.argsort(st, kind="stable")
    idx, st = idx[order], st[order]
    bounds = np.searchsorted(st, np.arange(n_steps + 1))
    return [idx[bounds[i]:bounds[i + 1]] for i in range(n_steps)]
