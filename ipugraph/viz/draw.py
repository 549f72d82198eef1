"""draw_graph: the Graphcore-style picture of a plan's vertex graph (graph.png, graph.svg).

Every vertex of the plan is a point at its layout position (layout.py) on a dark background:

- **size**: area proportional to the vertex's estimated cycles, between a floor (so that
  vertices that do almost nothing, such as the graph input's slices, stay visible) and a
  ceiling at the most expensive vertex; the key shows three reference sizes;
- **colour**, `color="layer"`: the layer (op scope: conv1, layer1.0, ..., fc) on a palette
  ordered by execution depth — hue runs red → yellow → green → cyan → blue → magenta from the
  first layer to the last, and consecutive layers alternate between a full and a paler tone so
  that neighbouring clusters stay apart; the key names every layer;
- **colour**, `color="density"`: compute density, the vertex's MACs (or element operations for
  pooling, elementwise and reduction vertices) per byte it touches (inputs + weights + outputs),
  on a log scale with a colour bar; vertices that compute nothing (graph inputs) are grey;
- **edges**: producer → consumer, coloured like the producer and faint. A ResNet-34 graph has
  ~1.7 M edges, so the picture draws a subsample, stated in the caption: each vertex's 2
  heaviest input edges (by bytes) in the PNG, its heaviest one in the SVG.

Points glow in the PNG: each is drawn as a faint halo under a bright core, so dense clusters
light up the way they do in Graphcore's pictures. Each layer's name is written at its medoid
(or beside it, where names would overlap). The caption gives the graph, target, batch, step,
vertex and edge counts and the plan's estimated cycles; the side panel holds the colour key,
the size key and how to read the picture. The PNG is 2000 px wide, drawn with matplotlib's Agg
backend and collections (one scatter per pass, one LineCollection for the edges): ~1.7 s at
ResNet-34/Mk2 (65,845 vertices, 127 k edges drawn).

The SVG keeps every vertex as a vector marker but is lighter: no halo, sizes rounded to 4
classes and colours to 32 shades per channel (one marker artist per class, so each vertex is
one short <use>), and each vertex's heaviest input edge only, one path per producer colour.
ResNet-34/Mk2: ~11 MB, ~1 s.
"""
from __future__ import annotations

import colorsys
import os

import numpy as np

from .graphdata import PHASES, VizGraph, heaviest_inputs, layer_groups

COLORS = ("layer", "phase", "density")
BACKGROUND = "#07080d"
FOREGROUND = "#e6e8ef"
MUTED = "#9aa0b4"
WIDTH_PX = 2000
DPI = 100
SIZE_MIN = 0.5                   # point area (pt²) floor
SIZE_MAX = 5.0                   # point area (pt²) of the most expensive vertex
HALO = 9.0                       # halo area / core area
HALO_ALPHA = 0.035
EDGES_PER_VERTEX_PNG = 2
EDGES_PER_VERTEX_SVG = 1
EDGE_ALPHA = 0.05
NO_WORK = (0.55, 0.57, 0.62, 1.0)
MAX_EDGES_DRAWN = 400_000        # the heaviest of the picked edges, past this many
SVG_VECTOR_MAX = 150_000         # vertices; a bigger graph's SVG embeds its points as an image


def _mpl():
    try:
        import matplotlib
    except ImportError as e:                        # pragma: no cover - viz extra not installed
        raise ImportError("ipugraph.viz.draw needs matplotlib: pip install 'ipugraph[viz]'") from e
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt
    return matplotlib, plt


# -- colours, sizes, edges ---------------------------------------------------------------------
def layer_colors(n: int) -> np.ndarray:
    """[n, 4] RGBA: hue by execution order (red ... magenta), alternating full/pale tones."""
    out = np.ones((max(n, 0), 4))
    for i in range(n):
        h = 0.83 * i / max(n - 1, 1)
        s, v = (0.78, 1.0) if i % 2 == 0 else (0.45, 0.92)
        out[i, :3] = colorsys.hsv_to_rgb(h, s, v)
    return out


# (saturation, value) of each phase's tone of a group's hue: forward vivid, backward pastel,
# update a dim tint -- told apart at a glance on the dark background
PHASE_TONES = {"forward": (0.85, 1.0), "backward": (0.32, 1.0), "update": (0.22, 0.55)}


def group_colors(n: int) -> np.ndarray:
    """[n, 3, 4] RGBA: group i's hue (red ... magenta by execution order) in each phase's tone."""
    out = np.ones((max(n, 0), len(PHASES), 4))
    for i in range(n):
        h = 0.83 * i / max(n - 1, 1)
        for k, ph in enumerate(PHASES):
            out[i, k, :3] = colorsys.hsv_to_rgb(h, *PHASE_TONES[ph])
    return out


def size_ceiling(num_vertices: int) -> float:
    """SIZE_MAX at ResNet-34/Mk2 scale (~60 k vertices), larger for smaller graphs so that a
    few hundred vertices still fill the picture (∝ 1/√V, up to 16×)."""
    return float(np.clip(SIZE_MAX * np.sqrt(60000.0 / max(num_vertices, 1)), SIZE_MAX,
                         16 * SIZE_MAX))


def edge_alpha(drawn: int) -> float:
    """EDGE_ALPHA at ~130 k drawn edges, stronger when fewer are drawn (up to 0.5)."""
    return float(np.clip(EDGE_ALPHA * np.sqrt(130000.0 / max(drawn, 1)), EDGE_ALPHA, 0.5))


def density(vg: VizGraph) -> np.ndarray:
    """Compute density of every vertex: MACs (element ops off the AMP) per byte touched."""
    b = np.maximum(vg.v_bytes.astype(np.float64), 1.0)
    return vg.v_macs.astype(np.float64) / b


def vertex_sizes(cycles: np.ndarray, smin: float = SIZE_MIN, smax: float = SIZE_MAX,
                 top: float | None = None) -> np.ndarray:
    """Marker areas (pt²): proportional to cycles, clipped to [smin, smax]."""
    c = np.asarray(cycles, np.float64)
    top = float(c.max()) if top is None and c.size else (top or 1.0)
    if top <= 0:
        return np.full(c.shape, smin)
    return np.clip(smax * c / top, smin, smax)


def check_color(color: str) -> None:
    if color not in COLORS:
        raise ValueError(f"color must be one of {', '.join(repr(c) for c in COLORS)}; "
                         f"got {color!r}")


def density_norm(dens: np.ndarray):
    """A quantile scale for compute density: equal shares of the vertices get equal shares of
    the colour map (on a log scale most of a network sits between 2 and 5 MACs per byte, one
    colour), with the value at each quantile kept for the colour bar."""
    import matplotlib
    pos = np.sort(dens[dens > 0])
    if pos.size < 2 or pos[0] == pos[-1]:
        lo = float(pos[0]) if pos.size else 1.0
        return matplotlib.colors.LogNorm(vmin=lo, vmax=lo * 10.0)
    q = np.linspace(0.0, 1.0, 21)
    edges = np.unique(np.quantile(pos, q))
    if len(edges) < 3:
        return matplotlib.colors.LogNorm(vmin=float(pos[0]), vmax=float(pos[-1]))
    return matplotlib.colors.BoundaryNorm(edges, 256, extend="neither")


def vertex_colors(vg: VizGraph, color: str):
    """RGBA [V, 4] per vertex, plus what the key needs (layer colours, the group x phase
    palette, or the density norm)."""
    matplotlib, _ = _mpl()
    check_color(color)
    if color == "layer":
        pal = layer_colors(len(vg.layers))
        return pal[vg.v_layer], {"palette": pal}
    if color == "phase":
        names, group = layer_groups(vg)
        pal = group_colors(len(names))
        return pal[group, vg.v_phase], {"groups": names, "group": group, "palette": pal}
    dens = density(vg)
    norm = density_norm(dens)
    cmap = matplotlib.colors.LinearSegmentedColormap.from_list(
        "density", matplotlib.colormaps["plasma"](np.linspace(0.12, 1.0, 256)))
    lo = float(norm.boundaries[0]) if hasattr(norm, "boundaries") else norm.vmin
    rgba = cmap(norm(np.maximum(dens, lo)))
    rgba[dens <= 0] = NO_WORK
    return rgba, {"norm": norm, "cmap": cmap}


# -- figure ------------------------------------------------------------------------------------
def _limits(pos: np.ndarray) -> tuple[float, float, float, float]:
    if len(pos) == 0:
        return -1.0, 1.0, -1.0, 1.0
    lo, hi = pos.min(axis=0), pos.max(axis=0)
    span = np.maximum(hi - lo, 1e-6)
    span = np.maximum(span, span.max() * 0.05)
    mid = (lo + hi) / 2
    pad = 0.04 * span.max()
    return (mid[0] - span[0] / 2 - pad, mid[0] + span[0] / 2 + pad,
            mid[1] - span[1] / 2 - pad, mid[1] + span[1] / 2 + pad)


def canvas(positions: np.ndarray, width_px: int = WIDTH_PX, legend: bool = True,
           header_px: int = 90, footer_px: int = 110, legend_px: int = 430):
    """A dark figure whose graph axes keep the layout's aspect (between 1:1 and 2.2:1, wide).

    Returns (fig, ax, legend_ax or None, (header_px, footer_px))."""
    _, plt = _mpl()
    x0, x1, y0, y1 = _limits(positions)
    graph_w = width_px - (legend_px if legend else 0)
    aspect = np.clip((x1 - x0) / max(y1 - y0, 1e-9), 1.0, 2.2)
    graph_h = int(graph_w / aspect)
    if legend:
        graph_h = max(graph_h, 900)                 # room for the key beside it
    height = graph_h + header_px + footer_px
    fig = plt.figure(figsize=(width_px / DPI, height / DPI), dpi=DPI, facecolor=BACKGROUND)
    ax = fig.add_axes((0, footer_px / height, graph_w / width_px, graph_h / height))
    ax.set_facecolor(BACKGROUND)
    ax.set_axis_off()
    # Keep the data aspect 1:1 inside the box: widen the short side's limits.
    box = graph_w / graph_h
    if (x1 - x0) / (y1 - y0) > box:
        c, h = (y0 + y1) / 2, (x1 - x0) / box / 2
        y0, y1 = c - h, c + h
    else:
        c, w = (x0 + x1) / 2, (y1 - y0) * box / 2
        x0, x1 = c - w, c + w
    ax.set_xlim(x0, x1)
    ax.set_ylim(y0, y1)
    lax = None
    if legend:
        lax = fig.add_axes((graph_w / width_px, footer_px / height, legend_px / width_px,
                            graph_h / height))
        lax.set_axis_off()
        lax.set_xlim(0, 1)
        lax.set_ylim(0, 1)
    return fig, ax, lax, (header_px, footer_px)


def draw_edges(ax, positions, vg: VizGraph, idx: np.ndarray, colors, alpha: float = EDGE_ALPHA,
               linewidth: float = 0.3, rasterized: bool = False):
    from matplotlib.collections import LineCollection
    if len(idx) == 0:
        return None
    segs = np.stack([positions[vg.e_src[idx]], positions[vg.e_dst[idx]]], axis=1)
    c = np.array(colors[vg.e_src[idx]], np.float64, copy=True)
    c[:, 3] = alpha
    lc = LineCollection(segs, colors=c, linewidths=linewidth, antialiased=True,
                        rasterized=rasterized, zorder=1)
    ax.add_collection(lc, autolim=False)
    return lc


def draw_points(ax, positions, colors, sizes, order=None, halo: bool = True,
                rasterized: bool = False, core_alpha: float = 0.95):
    """A faint halo pass and a core pass; `order` draws small (cheap) vertices first."""
    if order is None:
        order = np.argsort(sizes, kind="stable")
    p, c, s = positions[order], np.array(colors[order], copy=True), sizes[order]
    arts = []
    if halo:
        h = c.copy()
        h[:, 3] = HALO_ALPHA
        arts.append(ax.scatter(p[:, 0], p[:, 1], s=s * HALO, c=h, linewidths=0,
                               rasterized=True, zorder=2))
    c[:, 3] = core_alpha
    arts.append(ax.scatter(p[:, 0], p[:, 1], s=s, c=c, linewidths=0, rasterized=rasterized,
                           zorder=3))
    return arts


def draw_points_vector(ax, positions, vg: VizGraph, colors, sizes, classes: int = 4):
    """Points for a vector file: one marker artist per (colour, size class) — sizes rounded to
    `classes` geometric classes — so that the SVG writes one short <use> per vertex."""
    arts = []
    lo, hi = float(sizes.min()), float(sizes.max())
    if hi > lo:
        edges = np.geomspace(lo, hi, classes + 1)
        cls = np.clip(np.searchsorted(edges, sizes, side="right") - 1, 0, classes - 1)
        mid = np.sqrt(edges[:-1] * edges[1:])
    else:
        cls, mid = np.zeros(len(sizes), np.int64), np.array([lo])
    rgb = np.round(np.asarray(colors)[:, :3] * 31)         # a colour bar's shades: 32 levels
    key = np.unique(rgb, axis=0, return_inverse=True)[1].reshape(-1)
    combo = key * len(mid) + cls
    for k in np.unique(combo):
        m = combo == k
        c = tuple(np.asarray(colors)[np.argmax(m)][:3])
        ms = float(np.sqrt(mid[k % len(mid)]))
        arts += ax.plot(positions[m, 0], positions[m, 1], linestyle="none", marker="o",
                        markersize=ms, markeredgewidth=0, color=c, alpha=0.95, zorder=3)
    return arts


def draw_edges_vector(ax, positions, vg: VizGraph, idx: np.ndarray, colors, alpha: float = 0.12,
                      linewidth: float = 0.3):
    """Edges for a vector file: one path per producer colour (segments split by NaNs)."""
    arts = []
    if len(idx) == 0:
        return arts
    src = vg.e_src[idx]
    rgb = np.round(np.asarray(colors)[src, :3] * 15)
    key = np.unique(rgb, axis=0, return_inverse=True)[1].reshape(-1)
    for k in np.unique(key):
        sel = idx[key == k]
        a, b = positions[vg.e_src[sel]], positions[vg.e_dst[sel]]
        xy = np.full((len(sel) * 3, 2), np.nan)
        xy[0::3], xy[1::3] = a, b
        c = tuple(np.asarray(colors)[vg.e_src[sel[0]]][:3])
        arts += ax.plot(xy[:, 0], xy[:, 1], color=c, alpha=alpha, linewidth=linewidth,
                        solid_capstyle="butt", zorder=1)
    return arts


def _fmt_cycles(c: float) -> str:
    if c >= 1e6:
        return f"{c / 1e6:.2f} M"
    if c >= 1e3:
        return f"{c / 1e3:.1f} k"
    return f"{c:.0f}"


def caption(vg: VizGraph, drawn: int, per_vertex: int) -> str:
    plan = vg.plan
    t = plan.target
    cyc = plan.estimated_cycles()
    secs = plan.estimated_seconds()
    from .layout import FINE_MAX_VERTICES
    which = "heaviest input edge" if per_vertex == 1 else f"{per_vertex} heaviest input edges"
    fine = ("then every vertex by UMAP" if vg.num_vertices <= FINE_MAX_VERTICES else
            "each one's vertices on a disc around it, in tile order")
    return (f"{plan.graph.name} · {t.name} ({t.tiles:,} tiles × {t.bytes_per_tile // 1024} "
            f"KiB) · batch {plan.batch()} · {len(plan.steps)} BSP steps · "
            f"{vg.num_vertices:,} vertices · {vg.num_edges:,} edges · estimated {cyc:,.0f} "
            f"cycles = {secs * 1e3:.3f} ms at {t.clock_hz / 1e9:.2f} GHz "
            f"({plan.samples_per_second():,.0f} samples/s)\n"
            f"Edges drawn: the {which} (by bytes) of every vertex"
            f"{', the heaviest of them' if drawn == MAX_EDGES_DRAWN else ''}"
            f" — {drawn:,} of {vg.num_edges:,}; an edge leaves its producer in the producer's "
            f"colour. Layout: multilevel, (step, tile-group) super-nodes by "
            f"Fruchterman-Reingold, {fine} (ipugraph.viz.layout).")


def _legend(lax, vg: VizGraph, color: str, key: dict, top_cycles: float, smax: float,
            smin: float) -> None:
    """Layer key (or colour bar), size key and the reading notes in the side panel."""
    fig = lax.figure
    txt = dict(color=FOREGROUND, fontsize=11, va="center", transform=lax.transAxes)
    y = 0.975
    if color == "layer":
        lax.text(0.05, y, "colour: layer, in execution order", fontweight="bold", **txt)
        y -= 0.035
        pal = key["palette"]
        counts = np.bincount(vg.v_layer, minlength=len(vg.layers))
        names = list(vg.layers)
        n = len(names)
        shown = list(range(n))
        if n > 48:                                  # too many to name: every k-th, in order
            k = int(np.ceil(n / 48))
            shown = sorted(set(range(0, n, k)) | {n - 1})
        cols = 1 if len(shown) <= 24 else 2
        rows = int(np.ceil(len(shown) / cols))
        dy = min(0.03, 0.52 / max(rows, 1))
        fs = 10 if cols == 1 else 8.5
        for j, i in enumerate(shown):
            cx = 0.06 + (j // rows) * 0.47
            cy = y - (j % rows) * dy
            lax.scatter([cx], [cy], s=70, color=pal[i], transform=lax.transAxes, clip_on=False)
            label = names[i] if len(names[i]) <= 22 else names[i][:21] + "…"
            lax.text(cx + 0.035, cy, label, fontsize=fs, color=FOREGROUND, va="center",
                     transform=lax.transAxes)
            if cols == 1:
                lax.text(0.93, cy, f"{counts[i]:,}", fontsize=fs - 1, color=MUTED, va="center",
                         ha="right", transform=lax.transAxes)
        if cols == 1:
            lax.text(0.93, y + 0.03, "vertices", fontsize=9, color=MUTED, va="center",
                     ha="right", transform=lax.transAxes)
        if len(shown) < n:
            lax.text(0.06, y - rows * dy, f"(every {shown[1] - shown[0]}th of {n} layers named)",
                     fontsize=9, color=MUTED, va="center", transform=lax.transAxes)
        y -= rows * dy + 0.03
    elif color == "phase":
        lax.text(0.05, y, "colour: group (hue) × phase (tone)", fontweight="bold", **txt)
        y -= 0.035
        names, group, pal = key["groups"], key["group"], key["palette"]
        phase = vg.v_phase
        counts = np.zeros((len(names), len(PHASES)), np.int64)
        np.add.at(counts, (group, phase), 1)
        for k, ph in enumerate(PHASES):
            lax.text(0.50 + 0.16 * k, y, {"forward": "fwd", "backward": "bwd"}.get(ph, "upd"),
                     fontsize=9,
                     color=MUTED, va="center", ha="center", transform=lax.transAxes)
        y -= 0.028
        dy = min(0.03, 0.5 / max(len(names), 1))
        for i, name in enumerate(names):
            cy = y - i * dy
            lax.text(0.06, cy, name if len(name) <= 18 else name[:17] + "…", fontsize=10,
                     color=FOREGROUND, va="center", transform=lax.transAxes)
            for k in range(len(PHASES)):
                if counts[i, k]:
                    lax.scatter([0.50 + 0.16 * k], [cy], s=70, color=pal[i, k],
                                transform=lax.transAxes, clip_on=False)
        y -= len(names) * dy + 0.005
        lax.text(0.06, y, "vertices: " + ", ".join(
            f"{ph} {int(counts[:, k].sum()):,}" for k, ph in enumerate(PHASES)),
            fontsize=8.5, color=MUTED, va="center", transform=lax.transAxes)
        y -= 0.04
    else:
        lax.text(0.05, y, "colour: compute density", fontweight="bold", **txt)
        lax.text(0.05, y - 0.03, "MACs (element ops off the AMP) per byte the vertex\n"
                 "touches (inputs + weights + outputs); colours at\n"
                 "quantiles: each band holds 1/20 of the vertices", fontsize=9.5, color=MUTED,
                 va="top", transform=lax.transAxes)
        import matplotlib as mpl
        cax = fig.add_axes(_inset(lax, 0.07, y - 0.42, 0.1, 0.33))
        cb = fig.colorbar(mpl.cm.ScalarMappable(norm=key["norm"], cmap=key["cmap"]), cax=cax)
        norm = key["norm"]
        if hasattr(norm, "boundaries"):             # quantile bands: label every 4th edge
            b = norm.boundaries
            ticks = list(b[::4]) + ([b[-1]] if (len(b) - 1) % 4 else [])
            cb.set_ticks(ticks, labels=[f"{t:.3g}" for t in ticks])
        else:
            lo, hi = norm.vmin, norm.vmax
            ticks = [t for t in (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100,
                                 200, 500, 1000) if lo <= t <= hi] or [lo, hi]
            cb.set_ticks(ticks, labels=[f"{t:g}" for t in ticks])
        cb.ax.minorticks_off()
        cb.ax.tick_params(which="both", colors=FOREGROUND, labelsize=9)
        cb.outline.set_edgecolor(MUTED)
        cb.set_label("MACs per byte", color=FOREGROUND, fontsize=10)
        lax.scatter([0.45], [y - 0.39], s=70, color=NO_WORK, transform=lax.transAxes)
        lax.text(0.49, y - 0.39, "no compute (graph input)", fontsize=9.5, color=FOREGROUND,
                 va="center", transform=lax.transAxes)
        y -= 0.47
    # Size key.
    y -= 0.01
    lax.text(0.05, y, "size: area ∝ estimated cycles", fontweight="bold", **txt)
    y -= 0.045
    refs = _size_refs(top_cycles)
    for j, c in enumerate(refs):
        cx = 0.1 + j * 0.3
        s = vertex_sizes(np.array([c]), smin, smax, top=top_cycles)[0] * 6 * SIZE_MAX / smax
        lax.scatter([cx], [y], s=s, color=FOREGROUND, transform=lax.transAxes, clip_on=False)
        lax.text(cx + 0.04, y, f"{_fmt_cycles(c)} cycles", fontsize=9.5, color=FOREGROUND,
                 va="center", transform=lax.transAxes)
    y -= 0.03
    lax.text(0.05, y, f"(key drawn ×{6 * SIZE_MAX / smax:.2g}; on the graph, areas from "
             f"{smin:.2g} to {smax:.3g} pt²)", fontsize=8.5, color=MUTED, va="center",
             transform=lax.transAxes)
    y -= 0.05
    what = (("· hue = group (stem, layer1 …, head, loss), tone",
             "  = phase: vivid forward, pastel backward (ig.grad),",
             "  dim update (the optimizer); names at the centres") if color == "phase" else
            ("· each BSP step is a cluster, a layer (one colour)",
             "  is its steps; depth runs along the path from the",
             "  first layer to the last (names at layer centres)"))
    notes = ("How to read it",
             "· one point per vertex: one op's slice on one tile;",
             "  vertices that exchange many bytes sit close",
             *what,
             "· lines run producer → consumer; fans between",
             "  clusters = a layer's output exchanged across",
             "  tiles to the next layer",
             "· big points = the vertices with the most cycles")
    lax.text(0.05, y, notes[0], fontweight="bold", **txt)
    for j, line in enumerate(notes[1:]):
        lax.text(0.05, y - 0.03 * (j + 1), line, fontsize=9.5, color=MUTED, va="center",
                 transform=lax.transAxes)


def label_layers(ax, vg: VizGraph, positions, fontsize: float = 10.0, min_vertices: int = 1,
                 names=None, index=None):
    """Name each layer (or, given `names` and the per-vertex `index` into them, each of those
    groups) on the picture at its medoid (the member vertex nearest the median of their
    positions), or next to it where that would overlap a label already placed (bigger ones
    first); a label with no free spot is left to the key."""
    import matplotlib.patheffects as pe
    fig = ax.figure
    to_px = ax.transData.transform                  # limits are fixed: no draw needed
    if names is None:
        names, index = vg.layers, vg.v_layer
    counts = np.bincount(index, minlength=len(names))
    order = np.argsort(index, kind="stable")
    starts = np.r_[0, np.cumsum(counts)]
    placed = []
    px_per_pt = fig.dpi / 72.0
    for i in np.argsort(-counts, kind="stable"):
        if counts[i] < max(min_vertices, 1):
            continue
        members = order[starts[i]:starts[i + 1]]
        med = np.median(positions[members], axis=0)
        j = members[np.argmin(((positions[members] - med) ** 2).sum(axis=1))]
        x, y = to_px(positions[j][None, :])[0]
        name = names[i]
        w = 0.62 * fontsize * px_per_pt * len(name) + 6
        h = 1.5 * fontsize * px_per_pt
        # At the medoid, else just above, below, right or left of it, or further up or down.
        for dx, dy in ((0, 0), (0, 1.2 * h), (0, -1.2 * h), (0.6 * w, 0), (-0.6 * w, 0),
                       (0, 2.4 * h), (0, -2.4 * h)):
            box = (x + dx - w / 2, y + dy - h / 2, x + dx + w / 2, y + dy + h / 2)
            if not any(box[0] < b[2] and b[0] < box[2] and box[1] < b[3] and b[1] < box[3]
                       for b in placed):
                break
        else:
            continue
        placed.append(box)
        tx, ty = ax.transData.inverted().transform((x + dx, y + dy))
        ax.text(tx, ty, name, fontsize=fontsize, color="white",
                ha="center", va="center", zorder=5, alpha=0.92, fontweight="bold",
                path_effects=[pe.withStroke(linewidth=2.6, foreground=BACKGROUND)])


def phase_labels(vg: VizGraph, key: dict) -> tuple[list[str], np.ndarray]:
    """Label names "layer3 · backward" and the per-vertex index into them (group x phase)."""
    names, group = key["groups"], key["group"]
    index = group * len(PHASES) + vg.v_phase
    return [f"{g} · {ph}" for g in names for ph in PHASES], index


def _inset(lax, x, y, w, h):
    """Figure-fraction rect of an axes-fraction rect inside `lax`."""
    b = lax.get_position()
    return (b.x0 + x * b.width, b.y0 + y * b.height, w * b.width, h * b.height)


def _size_refs(top: float) -> list[float]:
    if top <= 0:
        return [0.0]
    refs = []
    for frac in (0.02, 0.2, 1.0):
        c = top * frac
        mag = 10 ** np.floor(np.log10(c)) if c > 0 else 1
        refs.append(float(np.round(c / mag) * mag) if frac < 1 else top)
    return refs


def _wrap(text: str, width: int = 190) -> str:
    import textwrap
    return "\n".join(textwrap.fill(line, width) for line in text.split("\n"))


def title_text(vg: VizGraph, title: str | None, color: str) -> str:
    if title:
        return title
    plan = vg.plan
    what = {"layer": "coloured by layer", "density": "coloured by compute density",
            "phase": "forward, backward and update coloured by group"}[color]
    return (f"{plan.graph.name} on {plan.target.name}, batch {plan.batch()}: every vertex of "
            f"the planned compute graph, {what}")


def draw_graph(vg: VizGraph, positions, png_path, svg_path=None, color: str = "layer",
               title: str | None = None) -> list[str]:
    """Draw graph.png (and graph.svg when `svg_path` is given); returns the paths written."""
    check_color(color)
    pos = np.asarray(positions, np.float64)
    if pos.shape != (vg.num_vertices, 2):
        raise ValueError(f"positions must be [{vg.num_vertices}, 2] (one row per vertex), "
                         f"got {pos.shape}")
    if not np.isfinite(pos).all():
        raise ValueError("positions must be finite")
    _, plt = _mpl()
    colors, key = vertex_colors(vg, color)
    top = float(vg.v_cycles.max()) if vg.num_vertices else 0.0
    smax = size_ceiling(vg.num_vertices)
    smin = SIZE_MIN * smax / SIZE_MAX
    sizes = vertex_sizes(vg.v_cycles, smin, smax, top=top)
    order = np.argsort(sizes, kind="stable")
    written = []
    for path, per_vertex, fmt in ((png_path, EDGES_PER_VERTEX_PNG, "png"),
                                  (svg_path, EDGES_PER_VERTEX_SVG, "svg")):
        if not path:
            continue
        fig, ax, lax, (head, foot) = canvas(pos)
        idx = heaviest_inputs(vg, per_vertex)
        if len(idx) > MAX_EDGES_DRAWN:
            idx = np.sort(idx[np.argpartition(-vg.e_bytes[idx], MAX_EDGES_DRAWN - 1)
                              [:MAX_EDGES_DRAWN]])
        if fmt == "png" or vg.num_vertices > SVG_VECTOR_MAX:
            # (rasterized: in the SVG the points and edges are one embedded image, the text
            # and keys stay vectors -- 1.3 M vertex markers made a 205 MB file)
            draw_edges(ax, pos, vg, idx, colors, alpha=edge_alpha(len(idx)),
                       rasterized=fmt == "svg")
            draw_points(ax, pos, colors, sizes, order=order, rasterized=fmt == "svg")
        else:                                       # compact vector: no glow, 4 size classes
            draw_edges_vector(ax, pos, vg, idx, colors,
                              alpha=min(1.4 * edge_alpha(len(idx)), 0.5))
            draw_points_vector(ax, pos, vg, colors, sizes)
        if color == "phase":
            names, index = phase_labels(vg, key)
            label_layers(ax, vg, pos, fontsize=10.5, min_vertices=vg.num_vertices // 400,
                         names=names, index=index)
        else:
            label_layers(ax, vg, pos)
        _legend(lax, vg, color, key, top, smax, smin)
        H = fig.get_figheight() * DPI
        fig.text(0.012, 1 - 0.5 * head / H, title_text(vg, title, color), color=FOREGROUND,
                 fontsize=19, va="center", ha="left", fontweight="bold")
        fig.text(0.012, 0.5 * foot / H, _wrap(caption(vg, len(idx), per_vertex)), color=MUTED,
                 fontsize=11.5, va="center", ha="left", linespacing=1.6)
        d = os.path.dirname(os.path.abspath(path))
        os.makedirs(d, exist_ok=True)
        fig.savefig(path, format=fmt, facecolor=BACKGROUND, dpi=DPI)
        plt.close(fig)
        written.append(str(path))
    return written
