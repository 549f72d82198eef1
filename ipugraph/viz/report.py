"""report.html: one self-contained page for a Plan's vertex graph.

The page holds the plan's header figures (graph, target, batch, estimated latency and samples/s,
peak tile bytes), its per-op table (the rows of `Plan.to_json()`), any pictures (PNG files
embedded as data URIs) and an interactive view of the vertex graph on a canvas: points at the
given layout positions, coloured by layer and sized by cycles, with pan (drag), zoom (wheel), a
tooltip for the vertex under the mouse, layer highlighting (legend, vertex or table row click)
and a faint, toggle-able sample of the heaviest edges.

It opens offline: inline CSS and vanilla JavaScript only, no network. The vertex tables travel
as base64 of gzipped little-endian typed arrays inside one JSON block (the browser's
DecompressionStream inflates them), so a ResNet-34 plan (~66k vertices) makes a file of a few
MB and its training step on a Mk2 (1.3 M vertices) one of ~15 MB. The page draws each layer as one batched canvas path and
finds the vertex under the mouse through a uniform grid over the layout, so hover and redraw stay
interactive at that size.

`window.ipugraphReport` exposes the view's state for browser tests: `ready`, `count`,
`screenPosition(i)` (CSS pixels relative to the canvas), `hovered`, `highlighted`,
`highlight(layer)`, `pick(x, y)` and `redraw()` (draws now and reads a pixel back, so the
milliseconds it returns include rasterising).
"""
from __future__ import annotations

import base64
import gzip
import html
import json
import mimetypes
from pathlib import Path

import numpy as np

from .graphdata import CODELETS, VizGraph

MAX_EDGES = 20000          # heaviest edges drawn in the view
_READING = """<section id="reading"><h2>What does it mean?</h2><ul>
<li><b>A point</b> is a vertex: one slice of one op's work (say output channels 64-79, rows
0-6 of a conv) on one tile in one BSP step. Hover it for its step, tile, layer, codelet, MACs,
cycles and bytes.</li>
<li><b>Its size</b> is its estimated cycles; <b>its place</b> comes from the bytes it exchanges:
vertices that trade data sit together, so a cluster is usually one BSP step.</li>
<li><b>An edge</b> joins the vertex that wrote some elements to one that reads them; between
different tiles those bytes cross the exchange. The view draws the heaviest edges.</li>
<li><b>Colour</b> is the layer here; graph.png can colour by phase (forward, backward,
update) or compute density. The plan table below gives each step's compute, exchange, sync
and reduction cycles, the figures the sizes and colours come from.</li>
</ul></section>"""


def layer_colours(n: int) -> list[str]:
    """The layer colours of graph.png (draw.layer_colors), as CSS hex: one palette for both."""
    from .draw import layer_colors
    return ["#%02x%02x%02x" % tuple(round(c * 255) for c in rgba[:3])
            for rgba in layer_colors(n)]


def _int_array(a: np.ndarray) -> tuple[np.ndarray, str]:
    """`a` as the smallest little-endian integer typed array that holds it, and its JS name."""
    a = np.asarray(a)
    lo, hi = (int(a.min()), int(a.max())) if a.size else (0, 0)
    for dt, js in (("<u1", "Uint8Array"), ("<i2", "Int16Array"), ("<u2", "Uint16Array"),
                   ("<i4", "Int32Array")):
        info = np.iinfo(np.dtype(dt))
        if info.min <= lo and hi <= info.max:
            return a.astype(dt), js
    raise ValueError(f"values {lo}..{hi} do not fit an Int32Array")


def _pack(a: np.ndarray, js: str) -> dict:
    """A typed array for the page: gzip (the page's DecompressionStream inflates it; steps,
    layers and tiles come in long runs, so a training graph's tables shrink ~3x), then base64."""
    raw = gzip.compress(np.ascontiguousarray(a).tobytes(), compresslevel=6, mtime=0)
    return {"type": js, "b64": base64.b64encode(raw).decode("ascii")}


def _packi(a) -> dict:
    arr, js = _int_array(a)
    return _pack(arr, js)


def _packf(a) -> dict:
    return _pack(np.asarray(a, dtype="<f4"), "Float32Array")


def _split(row: dict) -> str:
    parts = [f"{d}/{s}" for d, s in zip(row["dims"], row["splits"]) if s > 1]
    text = "×".join(parts) if parts else "whole"
    return text + (f" ×{row['repeats']} rep" if row["repeats"] > 1 else "")


def _heaviest_edges(vg: VizGraph, k: int) -> np.ndarray:
    """Indices of the k heaviest edges (ties: lower index first), heaviest first."""
    e = vg.num_edges
    if e <= k:
        idx = np.arange(e)
    else:
        idx = np.argpartition(-vg.e_bytes, k - 1)[:k]
    order = np.lexsort((idx, -vg.e_bytes[idx]))
    return idx[order]


def _picture_html(pictures) -> str:
    figs = []
    for caption, path in (pictures or {}).items():
        p = Path(path)
        if not p.is_file():
            continue
        mime = mimetypes.guess_type(p.name)[0] or "image/png"
        data = base64.b64encode(p.read_bytes()).decode("ascii")
        figs.append(f'<figure><img alt="{html.escape(str(caption))}" '
                    f'src="data:{mime};base64,{data}"><figcaption>{html.escape(str(caption))}'
                    f'</figcaption></figure>')
    if not figs:
        return ""
    return '<section id="pictures"><h2>Pictures</h2><div class="figs">' + "".join(figs) \
        + "</div></section>"


def _summary_html(info: dict, step_layer: dict[int, int]) -> str:
    e = html.escape
    cols = ("step", "op", "fused", "split", "tiles", "compute", "exchange", "sync", "reduce",
            "max tile KiB", "balance", "note")
    head = "".join(f"<th>{c}</th>" for c in cols)
    rows = []
    for r in info["steps"]:
        fused = "+".join(r["fused"]) or "-"
        layer = step_layer.get(r["index"], -1)
        rows.append(
            f'<tr data-layer="{layer}"><td>{r["index"]}</td>'
            f'<td>{e(r["name"])} <span class="dim">{e(r["op"])}</span></td>'
            f'<td>{e(fused)}</td><td>{e(_split(r))}</td><td>{r["tiles_used"]}</td>'
            f'<td>{r["compute_cycles"]:,.0f}</td><td>{r["exchange_cycles"]:,.0f}</td>'
            f'<td>{r["sync_cycles"]:,.0f}</td><td>{r["reduce_cycles"]:,.0f}</td>'
            f'<td>{r["max_tile_bytes"] / 1024:,.1f}</td><td>{r["balance"]:.2f}</td>'
            f'<td class="note">{e(r["note"] or "")}</td></tr>')
    steps = info["steps"]
    tot = {k: sum(r[k] for r in steps) for k in ("compute_cycles", "exchange_cycles",
                                                   "sync_cycles", "reduce_cycles")}
    foot = (f'<tr><td></td><td>total ({len(steps)} steps)</td><td></td><td></td><td></td>'
            f'<td>{tot["compute_cycles"]:,.0f}</td><td>{tot["exchange_cycles"]:,.0f}</td>'
            f'<td>{tot["sync_cycles"]:,.0f}</td><td>{tot["reduce_cycles"]:,.0f}</td>'
            f'<td>{info["peak_tile_bytes"] / 1024:,.1f}</td><td></td>'
            f'<td>{info["estimated_cycles"]:,.0f} cycles</td></tr>')
    return (f'<section id="plan"><h2>Plan: per-op summary</h2>'
            f'<p class="dim">Click a row to highlight its layer in the view.</p>'
            f'<table id="summary"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody>'
            f'<tfoot>{foot}</tfoot></table></section>')


def _header_html(plan, info: dict, vg: VizGraph, title: str) -> str:
    e = html.escape
    t = plan.target
    cyc = info["estimated_cycles"] or 1.0
    parts = {k: sum(r[k] for r in info["steps"]) / cyc
             for k in ("compute_cycles", "exchange_cycles", "sync_cycles", "reduce_cycles")}
    peak = info["peak_tile_bytes"]
    facts = [
        ("graph", e(info["graph"])),
        ("target", e(t.describe())),
        ("batch", f'{info["batch"]}'),
        ("estimated latency", f'{info["estimated_seconds"] * 1e3:,.3f} ms '
                              f'({info["estimated_cycles"]:,.0f} cycles)'),
        ("images/s", f'{info["samples_per_second"]:,.1f}'),
        ("peak tile bytes", f'{peak:,} of {t.bytes_per_tile:,} ({peak / t.bytes_per_tile:.1%})'),
        ("cycles", f'compute {parts["compute_cycles"]:.0%}, exchange '
                   f'{parts["exchange_cycles"]:.0%}, sync {parts["sync_cycles"]:.0%}, '
                   f'reduction {parts["reduce_cycles"]:.0%}'),
        ("vertex graph", f'{vg.num_vertices:,} vertices, {vg.num_edges:,} edges, '
                         f'{len(info["steps"])} steps, {len(vg.layers)} layers'),
    ]
    dl = "".join(f"<div><dt>{k}</dt><dd>{v}</dd></div>" for k, v in facts)
    return f'<header><h1>{e(title)}</h1><dl id="facts">{dl}</dl></header>'


_CSS = """
*{box-sizing:border-box}
body{margin:0;font:13px/1.4 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;
background:#f5f6f8}
header,section{padding:10px 18px}
h1{font-size:20px;margin:4px 0 8px}
h2{font-size:16px;margin:14px 0 6px}
#facts{display:flex;flex-wrap:wrap;gap:6px 22px;margin:0}
#facts div{min-width:0}
#facts dt{font-size:11px;color:#667;text-transform:uppercase;letter-spacing:.04em}
#facts dd{margin:0;font-weight:600}
.dim{color:#778;font-weight:400}
#viewer{display:flex;gap:10px;align-items:stretch}
#wrap{position:relative;flex:1;min-width:0;height:640px;background:#0f1115;border-radius:6px;
overflow:hidden}
#graph{position:absolute;left:0;top:0;width:100%;height:100%;cursor:crosshair}
#overlay{position:absolute;left:0;top:0;width:100%;height:100%;pointer-events:none}
#tooltip{position:absolute;display:none;pointer-events:none;background:rgba(255,255,255,.96);
color:#111;border-radius:4px;padding:6px 8px;font-size:12px;box-shadow:0 2px 8px rgba(0,0,0,.4);
white-space:nowrap;z-index:2}
#tooltip .k{color:#667;display:inline-block;min-width:54px}
#side{width:250px;display:flex;flex-direction:column;gap:6px}
#legend{list-style:none;margin:0;padding:0;overflow:auto;max-height:560px;border:1px solid #dde;
border-radius:6px;background:#fff}
#legend li{display:flex;align-items:center;gap:6px;padding:2px 8px;cursor:pointer;
white-space:nowrap}
#legend li:hover{background:#eef}
#legend li.on{background:#dde4ff;font-weight:600}
#legend li.off{opacity:.45}
#legend .sw{width:12px;height:12px;border-radius:2px;flex:none}
#legend .n{margin-left:auto;color:#889;font-size:11px}
#controls{display:flex;flex-wrap:wrap;gap:6px 12px;align-items:center;margin:6px 0;color:#445}
#controls button{font:inherit;padding:2px 10px}
#status{font-size:11px;color:#667}
.figs{display:flex;flex-wrap:wrap;gap:14px}
figure{margin:0;background:#fff;padding:8px;border-radius:6px;border:1px solid #dde;
max-width:100%}
figure img{max-width:100%;height:auto;display:block}
figcaption{font-size:12px;color:#556;margin-top:4px}
table{border-collapse:collapse;background:#fff;font-size:12px;width:100%}
th,td{padding:3px 7px;border-bottom:1px solid #e4e6ea;text-align:right;white-space:nowrap}
th{position:sticky;top:0;background:#e9ecf2;text-align:right}
td:nth-child(2),td:nth-child(3),td:nth-child(4),th:nth-child(2),th:nth-child(3),
th:nth-child(4),td.note,th:last-child{text-align:left}
td.note{white-space:normal;max-width:340px;color:#854}
tbody tr{cursor:pointer}
tbody tr:hover{background:#f0f3ff}
tbody tr.on{background:#dde4ff}
tfoot td{font-weight:600;background:#f0f1f4}
"""

_JS = r"""
(async function () {
"use strict";
var D = JSON.parse(document.getElementById("ipugraph-data").textContent);
var TYPES = {Uint8Array: Uint8Array, Int16Array: Int16Array, Uint16Array: Uint16Array,
             Int32Array: Int32Array, Float32Array: Float32Array};
async function decode(o) {
  var s = atob(o.b64), n = s.length, u = new Uint8Array(n);
  for (var i = 0; i < n; i++) u[i] = s.charCodeAt(i);
  var inflated = new Blob([u]).stream().pipeThrough(new DecompressionStream("gzip"));
  return new TYPES[o.type](await new Response(inflated).arrayBuffer());
}
var A = {};
var keys = Object.keys(D.arrays), decoded = await Promise.all(keys.map(function (k) {
  return decode(D.arrays[k]); }));
keys.forEach(function (k, j) { A[k] = decoded[j]; });
var V = D.count, NL = D.layers.length, pos = A.pos, layerOf = A.layer, cyc = A.cycles;
var esrc = A.esrc, edst = A.edst, EK = esrc.length;
var BG = "#0f1115", DIM = 0.10, R0 = 1.0, R1 = 3.5, PAD = 16;
var hook = window.ipugraphReport = {
  ready: false, count: V, hovered: null, highlighted: null, lastDrawMs: 0, draws: 0,
  screenPosition: function (i) { return [pos[2 * i] * view.s + view.tx,
                                         pos[2 * i + 1] * view.s + view.ty]; },
  redraw: function () {            // draw now and wait for the pixels: milliseconds
    var t0 = performance.now();
    draw();
    ctx.getImageData(0, 0, 1, 1);
    return performance.now() - t0;
  },
  highlight: function (layer) { setHighlight(layer); },
  pick: function (x, y) { return pick(x, y); }
};

// -- static tables: bounds, point radii, vertices grouped by layer, hit-test grid ----------
var minX = Infinity, minY = Infinity, maxX = -Infinity, maxY = -Infinity, cmax = 0, i, k;
for (i = 0; i < V; i++) {
  var x = pos[2 * i], y = pos[2 * i + 1];
  if (x < minX) minX = x; if (x > maxX) maxX = x;
  if (y < minY) minY = y; if (y > maxY) maxY = y;
  if (cyc[i] > cmax) cmax = cyc[i];
}
if (V === 0) { minX = minY = 0; maxX = maxY = 1; }
var rad = new Float32Array(V);
for (i = 0; i < V; i++) rad[i] = R0 + (R1 - R0) * (cmax > 0 ? Math.sqrt(cyc[i] / cmax) : 0);
var lstart = new Int32Array(NL + 1), litems = new Int32Array(V);
for (i = 0; i < V; i++) lstart[layerOf[i] + 1]++;
for (k = 0; k < NL; k++) lstart[k + 1] += lstart[k];
var fillp = lstart.slice(0, NL);
for (i = 0; i < V; i++) litems[fillp[layerOf[i]]++] = i;

var gw = Math.max(maxX - minX, 1e-9), gh = Math.max(maxY - minY, 1e-9);
var cell = Math.sqrt(gw * gh / Math.max(V / 3, 1));
if (!(cell > 0) || !isFinite(cell)) cell = Math.max(gw, gh);
var gx = Math.max(1, Math.min(2048, Math.ceil(gw / cell) || 1));
var gy = Math.max(1, Math.min(2048, Math.ceil(gh / cell) || 1));
var cw = gw / gx, ch = gh / gy;
var gstart = new Int32Array(gx * gy + 1), gitems = new Int32Array(V), gcell = new Int32Array(V);
function cellX(wx) {
  var c = Math.floor((wx - minX) / cw);
  return c < 0 ? 0 : c >= gx ? gx - 1 : c;
}
function cellY(wy) {
  var c = Math.floor((wy - minY) / ch);
  return c < 0 ? 0 : c >= gy ? gy - 1 : c;
}
for (i = 0; i < V; i++) {
  gcell[i] = cellY(pos[2 * i + 1]) * gx + cellX(pos[2 * i]);
  gstart[gcell[i] + 1]++;
}
for (k = 0; k < gx * gy; k++) gstart[k + 1] += gstart[k];
var gfill = gstart.slice(0, gx * gy);
for (i = 0; i < V; i++) gitems[gfill[gcell[i]]++] = i;

// -- view ---------------------------------------------------------------------------------
var canvas = document.getElementById("graph"), overlay = document.getElementById("overlay");
var wrap = document.getElementById("wrap"), tip = document.getElementById("tooltip");
var ctx = canvas.getContext("2d"), octx = overlay.getContext("2d");
var view = {s: 1, tx: 0, ty: 0, fit: 1}, W = 0, H = 0, dpr = 1;
var showEdges = true, pending = false, drag = null;
var highlighted = null, hovered = null;

function fit() {
  var s = Math.min((W - 2 * PAD) / gw, (H - 2 * PAD) / gh);
  if (!(s > 0) || !isFinite(s)) s = 1;
  view.s = view.fit = s;
  view.tx = W / 2 - (minX + maxX) / 2 * s;
  view.ty = H / 2 - (minY + maxY) / 2 * s;
}
// Points grow slower than the zoom (so zooming in separates them), at most 5x.
function zoomFactor() { return Math.min(5, Math.max(1, Math.pow(view.s / view.fit, 0.4))); }
function resize() {
  dpr = window.devicePixelRatio || 1;
  W = wrap.clientWidth; H = wrap.clientHeight;
  canvas.width = overlay.width = Math.max(1, Math.round(W * dpr));
  canvas.height = overlay.height = Math.max(1, Math.round(H * dpr));
  SW = Math.max(1, Math.ceil(W)); SH = Math.max(1, Math.ceil(H));
  stamp = new Int32Array(SW * SH); srad = new Float32Array(SW * SH); pass = 0;
}
// While the view moves (drag, wheel), frames are the last full frame shifted and scaled (one
// drawImage); the full redraw follows once the view has been still for SETTLE_MS.
var snap = null, snapView = null, fullView = null, settle = 0, SETTLE_MS = 150;
function quick() {
  if (!fullView) { draw(); return; }
  if (view.s === fullView.s && view.tx === fullView.tx && view.ty === fullView.ty) return;
  if (!snapView) {
    if (!snap) snap = document.createElement("canvas");
    snap.width = canvas.width; snap.height = canvas.height;
    snap.getContext("2d").drawImage(canvas, 0, 0);
    snapView = fullView;
  }
  var k = view.s / snapView.s;
  ctx.setTransform(1, 0, 0, 1, 0, 0);
  ctx.globalAlpha = 1;
  ctx.fillStyle = BG;
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  ctx.drawImage(snap, (view.tx - snapView.tx * k) * dpr, (view.ty - snapView.ty * k) * dpr,
                snap.width * k, snap.height * k);
  drawOverlay();
  clearTimeout(settle);
  settle = setTimeout(draw, SETTLE_MS);
}
function moved() {
  if (pending) return;
  pending = true;
  requestAnimationFrame(function () { pending = false; quick(); });
}

function drawEdges(hl) {
  var s = view.s, tx = view.tx, ty = view.ty, j, a, b;
  ctx.lineWidth = 1;
  ctx.strokeStyle = "#c8d2ff";
  ctx.globalAlpha = hl === null ? 0.10 : 0.04;
  ctx.beginPath();
  for (j = 0; j < EK; j++) {
    a = esrc[j]; b = edst[j];
    ctx.moveTo(pos[2 * a] * s + tx, pos[2 * a + 1] * s + ty);
    ctx.lineTo(pos[2 * b] * s + tx, pos[2 * b + 1] * s + ty);
  }
  ctx.stroke();
  if (hl !== null) {
    ctx.globalAlpha = 0.45;
    ctx.strokeStyle = D.colours[hl];
    ctx.beginPath();
    for (j = 0; j < EK; j++) {
      a = esrc[j]; b = edst[j];
      if (layerOf[a] !== hl && layerOf[b] !== hl) continue;
      ctx.moveTo(pos[2 * a] * s + tx, pos[2 * a + 1] * s + ty);
      ctx.lineTo(pos[2 * b] * s + tx, pos[2 * b + 1] * s + ty);
    }
    ctx.stroke();
  }
}

// One fill colour per layer, one square per vertex (fillRect: in Chromium's software raster it
// beats one path of 66k rect()s by about a third). A point whose pixel already holds an
// at-least-as-large square of the same layer adds nothing (zoomed out, many vertices share a
// pixel): it is skipped.
var stamp = new Int32Array(1), srad = new Float32Array(1), SW = 1, SH = 1, pass = 0;
function drawLayer(L, z) {
  var s = view.s, tx = view.tx, ty = view.ty, n = 0, id = ++pass;
  ctx.fillStyle = D.colours[L];
  for (var q = lstart[L], end = lstart[L + 1]; q < end; q++) {
    var v = litems[q], r = rad[v] * z;
    var x = pos[2 * v] * s + tx, y = pos[2 * v + 1] * s + ty;
    if (x < -r || y < -r || x > W + r || y > H + r) continue;
    n++;
    if (x >= 0 && y >= 0 && x < SW && y < SH) {
      var c = (y | 0) * SW + (x | 0);
      if (stamp[c] === id && srad[c] >= r) continue;
      stamp[c] = id;
      srad[c] = r;
    }
    ctx.fillRect(x - r, y - r, 2 * r, 2 * r);
  }
  return n;
}

function draw() {
  var t0 = performance.now(), hl = highlighted, z = zoomFactor(), drawn = 0, L;
  clearTimeout(settle);
  fullView = {s: view.s, tx: view.tx, ty: view.ty};
  snapView = null;
  ctx.setTransform(dpr, 0, 0, dpr, 0, 0);
  ctx.globalAlpha = 1;
  ctx.fillStyle = BG;
  ctx.fillRect(0, 0, W, H);
  if (showEdges && EK > 0) drawEdges(hl);
  for (L = 0; L < NL; L++) {
    if (L === hl) continue;
    ctx.globalAlpha = hl === null ? 1 : DIM;
    drawn += drawLayer(L, z);
  }
  if (hl !== null) { ctx.globalAlpha = 1; drawn += drawLayer(hl, z); }
  ctx.globalAlpha = 1;
  hook.lastDrawMs = performance.now() - t0;
  hook.draws++;
  drawOverlay();
  document.getElementById("status").textContent =
    drawn.toLocaleString() + " of " + V.toLocaleString() + " vertices in view \u00b7 zoom \u00d7" +
    (view.s / view.fit).toFixed(1) + " \u00b7 drawn in " + hook.lastDrawMs.toFixed(1) + " ms";
}

function drawOverlay() {
  octx.setTransform(dpr, 0, 0, dpr, 0, 0);
  octx.clearRect(0, 0, W, H);
  if (hovered === null) return;
  var p = hook.screenPosition(hovered), r = rad[hovered] * zoomFactor() + 3;
  octx.lineWidth = 2;
  octx.strokeStyle = "#ffffff";
  octx.strokeRect(p[0] - r, p[1] - r, 2 * r, 2 * r);
}

// -- hit test through the grid: the nearest vertex whose square (plus 3 px) holds the point ----
function rank(v) {
  var L = layerOf[v];
  return (highlighted !== null && L === highlighted ? NL : L) * V + v;
}
function pick(mx, my) {
  if (V === 0) return null;
  var s = view.s, z = zoomFactor(), reach = (R1 * z + 3) / s;
  var wx = (mx - view.tx) / s, wy = (my - view.ty) / s;
  if (wx < minX - reach || wx > maxX + reach || wy < minY - reach || wy > maxY + reach) return null;
  var x0 = cellX(wx - reach), x1 = cellX(wx + reach);
  var y0 = cellY(wy - reach), y1 = cellY(wy + reach);
  var best = null, bd = Infinity;
  for (var cy = y0; cy <= y1; cy++) {
    for (var cx = x0; cx <= x1; cx++) {
      var c = cy * gx + cx;
      for (var q = gstart[c], end = gstart[c + 1]; q < end; q++) {
        var v = gitems[q];
        var dx = pos[2 * v] * s + view.tx - mx, dy = pos[2 * v + 1] * s + view.ty - my;
        var lim = rad[v] * z + 3, d = dx * dx + dy * dy;
        if (d > lim * lim) continue;
        if (d < bd || (d === bd && rank(v) > rank(best))) { best = v; bd = d; }
      }
    }
  }
  return best;
}

function fmt(x) { return Math.round(x).toLocaleString(); }
function esc(t) {
  return String(t).replace(/[&<>"]/g, function (c) {
    return {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]; });
}
function row(k, v) { return '<div><span class="k">' + k + "</span> " + v + "</div>"; }
function tooltipHtml(v) {
  var st = A.step[v], op = st < 0 ? "input" : D.stepOps[st];
  var where = st < 0 ? "graph input" : "step " + st + " \u00b7 " + D.stepNames[st];
  return row("vertex", "#" + v) +
    row("op", esc(op) + ' <span class="k">(' + esc(where) + ")</span>") +
    row("layer", esc(D.layers[layerOf[v]])) + row("codelet", esc(D.codelets[A.codelet[v]])) +
    row("tile", String(A.tile[v])) + row("MACs", fmt(A.macs[v])) +
    row("cycles", fmt(cyc[v])) + row("bytes", fmt(A.bytes[v]));
}
function setHover(v, mx, my) {
  if (v !== hovered) {
    hovered = v;
    hook.hovered = v;
    if (v !== null) tip.innerHTML = tooltipHtml(v);
    drawOverlay();
  }
  if (v === null) { tip.style.display = "none"; return; }
  tip.style.display = "block";
  var tw = tip.offsetWidth, th = tip.offsetHeight;
  var left = mx + 14, top = my + 14;
  if (left + tw > W) left = Math.max(0, mx - 14 - tw);
  if (top + th > H) top = Math.max(0, my - 14 - th);
  tip.style.left = left + "px";
  tip.style.top = top + "px";
}

function setHighlight(L) {
  highlighted = (L === null || L === undefined || L < 0 || L >= NL) ? null : L;
  hook.highlighted = highlighted;
  var items = document.querySelectorAll("#legend li");
  for (var j = 0; j < items.length; j++) {
    var m = +items[j].getAttribute("data-layer");
    items[j].className = highlighted === null ? "" : (m === highlighted ? "on" : "off");
  }
  var rows = document.querySelectorAll("#summary tbody tr");
  for (j = 0; j < rows.length; j++)
    rows[j].className = highlighted !== null && +rows[j].getAttribute("data-layer") === highlighted
      ? "on" : "";
  document.getElementById("hl").textContent =
    highlighted === null ? "" : "highlighted: " + D.layers[highlighted] + " (click again to clear)";
  draw();
}
function toggleLayer(L) { setHighlight(highlighted === L ? null : L); }

function local(e) {
  var r = canvas.getBoundingClientRect();
  return [e.clientX - r.left, e.clientY - r.top];
}
function zoomAt(mx, my, f) {
  var s = Math.min(Math.max(view.s * f, view.fit * 0.05), view.fit * 2000);
  var wx = (mx - view.tx) / view.s, wy = (my - view.ty) / view.s;
  view.s = s;
  view.tx = mx - wx * s;
  view.ty = my - wy * s;
}

canvas.addEventListener("mousedown", function (e) {
  if (e.button !== 0) return;
  drag = {x: e.clientX, y: e.clientY, tx: view.tx, ty: view.ty, moved: false};
  e.preventDefault();
});
window.addEventListener("mousemove", function (e) {
  if (!drag) return;
  var dx = e.clientX - drag.x, dy = e.clientY - drag.y;
  if (!drag.moved && dx * dx + dy * dy > 9) drag.moved = true;
  if (!drag.moved) return;
  view.tx = drag.tx + dx;
  view.ty = drag.ty + dy;
  setHover(null);
  moved();
});
window.addEventListener("mouseup", function (e) {
  if (!drag) return;
  var d = drag;
  drag = null;
  if (d.moved) { draw(); return; }
  if (e.target !== canvas) return;
  var p = local(e), v = pick(p[0], p[1]);
  if (v !== null) toggleLayer(layerOf[v]); else if (highlighted !== null) setHighlight(null);
});
canvas.addEventListener("mousemove", function (e) {
  if (drag && drag.moved) return;
  var p = local(e);
  setHover(pick(p[0], p[1]), p[0], p[1]);
});
canvas.addEventListener("mouseleave", function () { if (!drag) setHover(null); });
canvas.addEventListener("wheel", function (e) {
  e.preventDefault();
  var p = local(e), dy = e.deltaY;
  if (e.deltaMode === 1) dy *= 16; else if (e.deltaMode === 2) dy *= H;
  zoomAt(p[0], p[1], Math.exp(-dy * 0.0015));
  moved();
  setHover(pick(p[0], p[1]), p[0], p[1]);
}, {passive: false});

document.getElementById("legend").addEventListener("click", function (e) {
  var li = e.target.closest("li");
  if (li) toggleLayer(+li.getAttribute("data-layer"));
});
var tbody = document.querySelector("#summary tbody");
if (tbody) tbody.addEventListener("click", function (e) {
  var tr = e.target.closest("tr");
  if (tr && +tr.getAttribute("data-layer") >= 0) {
    toggleLayer(+tr.getAttribute("data-layer"));
    wrap.scrollIntoView({block: "nearest"});
  }
});
var et = document.getElementById("edges-toggle");
et.checked = showEdges;
et.addEventListener("change", function () { showEdges = et.checked; draw(); });
document.getElementById("reset").addEventListener("click", function () { fit(); draw(); });

var started = false;
function layout() {
  var w = wrap.clientWidth, h = wrap.clientHeight;
  if (w === W && h === H && started) return;
  var cx = (W / 2 - view.tx) / view.s, cy = (H / 2 - view.ty) / view.s;
  resize();
  if (!started) { fit(); started = true; }
  else { view.tx = W / 2 - cx * view.s; view.ty = H / 2 - cy * view.s; }
  draw();
  hook.ready = true;
}
if (window.ResizeObserver) new ResizeObserver(layout).observe(wrap);
window.addEventListener("resize", layout);
layout();
})();
"""


def write_report(vg: VizGraph, positions, path, pictures=None, title=None,
                 max_edges: int = MAX_EDGES) -> Path:
    """Write report.html for `vg` (from `graphdata.build(plan)`) with vertices at `positions`
    (float [V, 2], any units: the view fits them to the canvas). `pictures`: caption -> image
    path, embedded (missing files are left out). Returns the path written."""
    plan = vg.plan
    V = vg.num_vertices
    pos = np.asarray(positions, dtype=np.float64)
    if pos.shape != (V, 2):
        raise ValueError(f"positions must be [{V}, 2] (one row per vertex), got {pos.shape}")
    pos = np.where(np.isfinite(pos), pos, 0.0)
    pos[:, 1] = -pos[:, 1]                   # canvas y grows downwards; graph.png's upwards
    if V:
        pos = pos - pos.min(axis=0)          # float32 keeps the detail of far-off layouts
    info = plan.to_json()

    keep = _heaviest_edges(vg, max_edges)
    colours = layer_colours(len(vg.layers))
    counts = np.bincount(vg.v_layer, minlength=len(vg.layers)) if V else \
        np.zeros(len(vg.layers), np.int64)
    step_layer = {}
    if V:
        steps, first = np.unique(vg.v_step, return_index=True)
        step_layer = {int(s): int(vg.v_layer[f]) for s, f in zip(steps, first) if s >= 0}

    data = {
        "count": V,
        "layers": list(vg.layers),
        "colours": colours,
        "stepOps": list(vg.step_ops),
        "stepNames": [s.name for s in plan.steps],
        "codelets": list(CODELETS),
        "edgesShown": int(len(keep)),
        "edgesTotal": int(vg.num_edges),
        "arrays": {
            "pos": _packf(pos),
            "step": _packi(vg.v_step), "tile": _packi(vg.v_tile),
            "codelet": _packi(vg.v_codelet), "layer": _packi(vg.v_layer),
            "macs": _packf(vg.v_macs), "cycles": _packf(vg.v_cycles),
            "bytes": _packf(vg.v_bytes),
            "esrc": _pack(vg.e_src[keep].astype("<i4"), "Int32Array"),
            "edst": _pack(vg.e_dst[keep].astype("<i4"), "Int32Array"),
        },
    }
    # No "<" inside the <script> block (no "</script>", no "<!--"): JSON's own escape for it.
    blob = json.dumps(data, separators=(",", ":")).replace("<", "\\u003c")

    e = html.escape
    title = title or (f"{info['graph']} on {plan.target.name}, batch {info['batch']}")
    legend = "".join(
        f'<li data-layer="{i}"><span class="sw" style="background:{c}"></span>{e(name)}'
        f'<span class="n">{int(n):,}</span></li>'
        for i, (name, c, n) in enumerate(zip(vg.layers, colours, counts)))
    lightest = int(vg.e_bytes[keep].min()) if len(keep) else 0
    edge_note = (f"{len(keep):,} heaviest of {vg.num_edges:,} edges "
                 f"(≥ {lightest:,} bytes each)" if len(keep) else "no edges")
    viewer = f"""<section id="view"><h2>Vertex graph</h2>
<div id="controls"><label><input type="checkbox" id="edges-toggle" checked> edges:
<span id="edge-note">{e(edge_note)}</span></label>
<button id="reset" type="button">reset view</button>
<span>drag to pan · wheel to zoom · hover a vertex for details · click a vertex or a layer to
highlight it</span></div>
<div id="viewer"><div id="wrap"><canvas id="graph"></canvas><canvas id="overlay"></canvas>
<div id="tooltip"></div></div>
<div id="side">
<div><b>Layers</b> <span class="dim">(vertices; point size ∝ √cycles)</span></div>
<ul id="legend">{legend}</ul><div id="hl" class="dim"></div><div id="status"></div></div></div>
</section>"""

    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>{e(title)}</title>
<style>{_CSS}</style></head>
<body>
{_header_html(plan, info, vg, title)}
{viewer}
{_READING}
{_picture_html(pictures)}
{_summary_html(info, step_layer)}
<script id="ipugraph-data" type="application/json">{blob}</script>
<script>{_JS}</script>
</body></html>
"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(page, encoding="utf-8")
    return path
