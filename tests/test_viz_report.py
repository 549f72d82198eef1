"""report.html: one self-contained page per plan, checked as a file and in headless Chromium.

The browser tests drive the page through selenium: the canvas is drawn (several colours), the
vertex under the mouse shows its tooltip, wheel zooms, drag pans, a legend or vertex click
highlights a layer and a second click clears it, and the console stays free of errors. They need
Debian's chromium and chromium-driver, which `make test` installs (`make sysdeps`); without them
the tests fail rather than skip. Vertex positions here are a deterministic stand-in (a column
per step, a row per tile), not a layout engine's.
"""
from __future__ import annotations

import os
import re
import struct
import time
import zlib

import numpy as np
import pytest

import ipugraph as ig
from ipugraph.viz.graphdata import CODELETS, build
from ipugraph.viz.report import _heaviest_edges, write_report

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
SIZE_LIMIT = 15 * 1024 * 1024
WRITE_LIMIT_S = 5.0


def standin_positions(vg) -> np.ndarray:
    """x: a column per step (vertices of one step on one tile side by side), y: the tile."""
    step = vg.v_step.astype(np.int64)
    tile = vg.v_tile.astype(np.int64)
    key = (step + 1) * (int(tile.max(initial=0)) + 1) + tile
    order = np.argsort(key, kind="stable")
    ks = key[order]
    start = np.r_[0, np.flatnonzero(np.diff(ks)) + 1]
    count = np.diff(np.r_[start, len(ks)])
    rank = np.empty(len(ks), np.int64)
    rank[order] = np.arange(len(ks)) - np.repeat(start, count)
    n = np.empty(len(ks), np.int64)
    n[order] = np.repeat(count, count)
    width = vg.plan.target.tiles / (len(vg.plan.steps) + 1)
    x = (step + 1) * width + 0.6 * width * rank / np.maximum(n, 1)
    return np.stack([x, tile.astype(np.float64)], axis=1)


def tiny_png() -> bytes:
    """A 2x2 RGB PNG."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + \
            struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    raw = b"".join(b"\x00" + bytes([200, 30, 30, 30, 200, 30]) for _ in range(2))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 2, 2, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


# -- fixtures -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def small(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    plan = ig.plan(ig.models.resnet18(batch=1, image_size=32), ig.Target.ipu_mk2())
    vg = build(plan)
    png = d / "tiles.png"
    png.write_bytes(tiny_png())
    path = write_report(vg, standin_positions(vg), d / "report.html",
                        pictures={"tile heat map": png, "not drawn": d / "missing.png"})
    return {"plan": plan, "vg": vg, "path": path, "html": path.read_text(encoding="utf-8")}


class NoBrowser(str):
    """Why the browser could not start (each browser test fails with it)."""


@pytest.fixture(scope="module")
def browser():
    missing = [p for p in (CHROMIUM, CHROMEDRIVER) if not os.access(p, os.X_OK)]
    if missing:
        yield NoBrowser(f"{' and '.join(missing)} not found: the report.html browser tests need "
                        f"Debian's chromium and chromium-driver; `make test` installs them "
                        f"(its sysdeps target: apt-get install chromium chromium-driver)")
        return
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as err:
        yield NoBrowser(f"selenium is not installed ({err}); `make test` installs it "
                        f"(pip install -e '.[test]')")
        return
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--window-size=1400,1000",
                "--disable-dev-shm-usage"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    yield drv
    drv.quit()


def need(browser):
    """The driver, or this test fails saying why there is none (never a skip)."""
    if isinstance(browser, NoBrowser):
        pytest.fail(str(browser), pytrace=False)
    return browser


def open_report(driver, path, timeout=30.0):
    driver.get(path.resolve().as_uri())
    end = time.time() + timeout
    while time.time() < end:
        if driver.execute_script("return !!(window.ipugraphReport && window.ipugraphReport.ready)"):
            return driver
        time.sleep(0.05)
    raise AssertionError(f"report never became ready; console: {driver.get_log('browser')}")


def severe(driver) -> list:
    return [m for m in driver.get_log("browser") if m.get("level") == "SEVERE"]


PIXELS = """
var c = document.getElementById('graph'), d = c.getContext('2d')
  .getImageData(0, 0, c.width, c.height).data;
var bg = [0x0f, 0x11, 0x15], lit = 0, colours = new Set(), h = 0;
for (var i = 0; i < d.length; i += 4) {
  if (d[i] !== bg[0] || d[i + 1] !== bg[1] || d[i + 2] !== bg[2]) lit++;
  colours.add((d[i] << 16) | (d[i + 1] << 8) | d[i + 2]);
  h = (h * 31 + d[i] * 7 + d[i + 1] * 3 + d[i + 2]) % 1000000007;
}
return {lit: lit, total: d.length / 4, colours: colours.size, hash: h, bg: bg};
"""

# A vertex inside the canvas with no other vertex within `gap` pixels (so the mouse lands on it).
ISOLATED = """
var h = window.ipugraphReport, c = document.getElementById('graph');
var W = c.clientWidth, H = c.clientHeight, gap = arguments[0], cells = new Map(), inside = [];
function key(x, y) { return Math.floor(x / gap) + ',' + Math.floor(y / gap); }
for (var i = 0; i < h.count; i++) {
  var p = h.screenPosition(i);
  if (p[0] < -gap || p[1] < -gap || p[0] > W + gap || p[1] > H + gap) continue;
  var k = key(p[0], p[1]);
  cells.set(k, (cells.get(k) || 0) + 1);
  if (p[0] > 40 && p[1] > 40 && p[0] < W - 40 && p[1] < H - 40) inside.push(i);
}
for (var j = 0; j < inside.length; j++) {
  var q = h.screenPosition(inside[j]), cx = Math.floor(q[0] / gap), cy = Math.floor(q[1] / gap);
  var n = 0;
  for (var a = -1; a <= 1; a++)
    for (var b = -1; b <= 1; b++) n += cells.get((cx + a) + ',' + (cy + b)) || 0;
  if (n === 1) return inside[j];
}
return null;
"""


def canvas(driver):
    from selenium.webdriver.common.by import By
    return driver.find_element(By.ID, "graph")


def move_to_vertex(driver, i):
    """Put the mouse on vertex i (Selenium 4 offsets are from the element's centre)."""
    from selenium.webdriver.common.action_chains import ActionChains
    el = canvas(driver)
    x, y = driver.execute_script("return window.ipugraphReport.screenPosition(arguments[0])", i)
    w, h = driver.execute_script("var r = arguments[0].getBoundingClientRect();"
                                 "return [r.width, r.height]", el)
    ActionChains(driver).move_to_element_with_offset(el, round(x - w / 2),
                                                     round(y - h / 2)).perform()
    return el


def zoom_in(driver, clicks=5):
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    origin = ScrollOrigin.from_element(canvas(driver), 0, 0)
    for _ in range(clicks):
        ActionChains(driver).scroll_from_origin(origin, 0, -400).perform()


def state(driver, name):
    return driver.execute_script(f"return window.ipugraphReport.{name}")


# -- the file ---------------------------------------------------------------------------------
def test_report_file_is_self_contained(small):
    text = small["html"]
    assert text.startswith("<!DOCTYPE html>")
    refs = re.findall(r"""(?:src|href)\s*=\s*["']?\s*(?:[a-z][a-z0-9+.-]*:)?//""", text, re.I)
    assert not refs, f"external references: {refs[:5]}"
    assert not re.search(r"url\(\s*['\"]?\s*(?:https?:)?//", text, re.I)
    assert "http://" not in text and "https://" not in text
    assert not re.search(r"<script[^>]*\bsrc=", text, re.I)
    assert not re.search(r"<link[^>]*rel=[\"']?stylesheet", text, re.I)
    # the picture is embedded, the missing one left out
    assert "data:image/png;base64," in text and "tile heat map" in text
    assert "not drawn" not in text


def test_report_header_and_summary_come_from_the_plan(small):
    plan, text = small["plan"], small["html"]
    info = plan.to_json()
    assert "resnet18 on ipu-mk2, batch 1" in text
    assert f"{info['samples_per_second']:,.1f}" in text
    assert f"{info['estimated_seconds'] * 1e3:,.3f} ms" in text
    assert f"{plan.peak_tile_bytes():,}" in text
    body = re.search(r'<table id="summary">.*?<tbody>(.*?)</tbody>', text, re.S).group(1)
    rows = re.findall(r"<tr[^>]*>(.*?)</tr>", body, re.S)
    assert len(rows) == len(plan.steps)
    for row, s in zip(rows, info["steps"]):
        cells = [re.sub(r"<[^>]+>", "", c) for c in re.findall(r"<td[^>]*>(.*?)</td>", row, re.S)]
        assert cells[0] == str(s["index"]) and cells[1].startswith(s["name"])
        assert cells[4] == str(s["tiles_used"])
        assert cells[5] == f"{s['compute_cycles']:,.0f}"
        assert cells[9] == f"{s['max_tile_bytes'] / 1024:,.1f}"


def test_report_data_block_survives_awkward_names(small, tmp_path):
    import dataclasses
    import json
    vg = small["vg"]
    odd = ["</script><!-- x & \"y\"", *vg.layers[1:]]
    path = write_report(dataclasses.replace(vg, layers=odd), standin_positions(vg),
                        tmp_path / "odd.html", title="<b>odd</b>")
    text = path.read_text(encoding="utf-8")
    assert text.count("</script>") == 2 and "<b>odd</b>" not in text
    blob = re.search(r'<script id="ipugraph-data" type="application/json">(.*?)</script>',
                     text, re.S).group(1)
    data = json.loads(blob)
    assert data["layers"] == odd and data["count"] == vg.num_vertices
    assert data["edgesShown"] == min(vg.num_edges, 20000)
    keep = _heaviest_edges(vg, 20000)
    rest = np.setdiff1d(np.arange(vg.num_edges), keep)
    assert len(np.unique(keep)) == len(keep)
    assert vg.e_bytes[keep].min() >= vg.e_bytes[rest].max()
    assert np.all(np.diff(vg.e_bytes[keep]) <= 0)             # heaviest first


def test_report_rejects_positions_of_the_wrong_shape(small, tmp_path):
    with pytest.raises(ValueError, match="positions"):
        write_report(small["vg"], np.zeros((3, 2)), tmp_path / "r.html")


# -- in the browser ---------------------------------------------------------------------------
def test_page_loads_and_draws(browser, small):
    page = open_report(need(browser), small["path"])
    from selenium.webdriver.common.by import By
    vg = small["vg"]
    assert state(page, "count") == vg.num_vertices
    px = page.execute_script(PIXELS)
    assert px["lit"] > 0.02 * px["total"], px          # points and edges cover the canvas
    assert px["colours"] >= 10, px                      # several layer colours (and blends)
    rows = page.find_elements(By.CSS_SELECTOR, "#summary tbody tr")
    assert len(rows) == len(small["plan"].steps)
    legend = page.find_elements(By.CSS_SELECTOR, "#legend li")
    assert len(legend) == len(vg.layers)
    assert all(name in li.text for li, name in zip(legend, vg.layers))
    assert f"of {vg.num_edges:,} edges" in page.find_element(By.ID, "edge-note").text
    assert not severe(page)


def test_hover_shows_the_vertex_and_wheel_zooms(browser, small):
    page = open_report(need(browser), small["path"])
    from selenium.webdriver.common.by import By
    vg = small["vg"]
    a, b = 0, vg.num_vertices - 1
    span = lambda: np.subtract(*page.execute_script(
        "var h = window.ipugraphReport; return [h.screenPosition(arguments[0]),"
        " h.screenPosition(arguments[1])]", a, b))
    before = np.hypot(*span())
    zoom_in(page)
    after = np.hypot(*span())
    assert after > 3 * before, (before, after)
    i = page.execute_script(ISOLATED, 8)
    assert i is not None, "no isolated vertex in view after zooming in"
    move_to_vertex(page, i)
    assert state(page, "hovered") == i
    tip = page.find_element(By.ID, "tooltip")
    assert tip.is_displayed()
    text = tip.text
    step = int(vg.v_step[i])
    op = vg.step_ops[step] if step >= 0 else "input"
    assert f"#{i}" in text
    assert op in text
    assert f"tile {int(vg.v_tile[i])}" in text
    assert vg.layers[int(vg.v_layer[i])] in text
    assert CODELETS[int(vg.v_codelet[i])] in text
    assert f"{round(float(vg.v_cycles[i])):,}" in text
    # the mouse leaves: no tooltip
    from selenium.webdriver.common.action_chains import ActionChains
    ActionChains(page).move_to_element(page.find_element(By.TAG_NAME, "h1")).perform()
    assert state(page, "hovered") is None and not tip.is_displayed()
    assert not severe(page)


def test_drag_pans_and_clicks_highlight(browser, small):
    page = open_report(need(browser), small["path"])
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    vg = small["vg"]
    p0 = page.execute_script("return window.ipugraphReport.screenPosition(0)")
    el = canvas(page)
    ActionChains(page).move_to_element(el).click_and_hold().move_by_offset(60, 25) \
        .release().perform()
    p1 = page.execute_script("return window.ipugraphReport.screenPosition(0)")
    assert abs(p1[0] - p0[0] - 60) <= 1.5 and abs(p1[1] - p0[1] - 25) <= 1.5, (p0, p1)
    assert state(page, "highlighted") is None          # a drag is not a click

    base = page.execute_script(PIXELS)
    layer = len(vg.layers) // 2
    li = page.find_element(By.CSS_SELECTOR, f'#legend li[data-layer="{layer}"]')
    li.click()
    assert state(page, "highlighted") == layer
    assert "on" in li.get_attribute("class")
    lit = page.execute_script(PIXELS)
    assert lit["hash"] != base["hash"]
    li.click()
    assert state(page, "highlighted") is None
    assert page.execute_script(PIXELS)["hash"] == base["hash"]

    # clicking a vertex highlights its layer; clicking it again clears
    zoom_in(page, 4)
    i = page.execute_script(ISOLATED, 8)
    assert i is not None
    move_to_vertex(page, i)
    ActionChains(page).click().perform()
    assert state(page, "highlighted") == int(vg.v_layer[i])
    ActionChains(page).click().perform()
    assert state(page, "highlighted") is None

    # the edges toggle redraws without them
    page.find_element(By.ID, "reset").click()
    with_edges = page.execute_script(PIXELS)
    page.find_element(By.ID, "edges-toggle").click()
    without = page.execute_script(PIXELS)
    assert without["lit"] < with_edges["lit"]
    page.find_element(By.ID, "edges-toggle").click()
    assert not severe(page)


# -- ResNet-34 scale --------------------------------------------------------------------------
@pytest.mark.slow
def test_resnet34_report_size_and_speed(browser, tmp_path):
    plan = ig.plan(ig.models.resnet34(batch=1), ig.Target.ipu_mk2())
    vg = build(plan)
    pos = standin_positions(vg)
    t0 = time.perf_counter()
    path = write_report(vg, pos, tmp_path / "resnet34.html")
    took = time.perf_counter() - t0
    size = path.stat().st_size
    print(f"\nresnet34 mk2 b1: {vg.num_vertices:,} vertices, {vg.num_edges:,} edges -> "
          f"{size / 1e6:.2f} MB in {took:.2f} s")
    assert vg.num_vertices > 60000
    assert size < SIZE_LIMIT, f"{size:,} bytes"
    assert took < WRITE_LIMIT_S, f"{took:.2f} s"

    driver = open_report(need(browser), path)
    assert state(driver, "count") == vg.num_vertices
    ms = [driver.execute_script("return window.ipugraphReport.redraw()") for _ in range(3)]
    print(f"redraw {min(ms):.0f}-{max(ms):.0f} ms")
    assert min(ms) < 1000, ms
    zoom_in(driver, 6)
    i = driver.execute_script(ISOLATED, 8)
    assert i is not None
    move_to_vertex(driver, i)
    assert state(driver, "hovered") == i
    assert not severe(driver)


@pytest.mark.slow
def test_training_scale_report_is_bounded_and_interactive(browser, small, tmp_path):
    """1.4 M vertices (ResNet-34's training step on a Mk2 plans 1.34 M): the small plan's vertex
    graph repeated 56 times side by side, so the page carries a training dump's tables. The file
    stays within 40 MB (gzipped typed arrays) and the page still hovers, zooms and highlights."""
    import dataclasses
    vg, reps = small["vg"], 56
    V, E = vg.num_vertices, vg.num_edges
    rep = lambda a: np.tile(a, reps)                                  # noqa: E731
    shift = np.repeat(np.arange(reps), E) * V
    big = dataclasses.replace(
        vg, v_step=rep(vg.v_step), v_tile=rep(vg.v_tile), v_codelet=rep(vg.v_codelet),
        v_layer=rep(vg.v_layer), v_macs=rep(vg.v_macs), v_cycles=rep(vg.v_cycles),
        v_bytes=rep(vg.v_bytes), e_src=rep(vg.e_src) + shift, e_dst=rep(vg.e_dst) + shift,
        e_bytes=rep(vg.e_bytes), e_tensor=rep(vg.e_tensor), e_rank=None, cache={})
    pos = standin_positions(vg)
    width = np.ptp(pos[:, 0]) * 1.05
    pos = np.concatenate([pos + [k * width, 0] for k in range(reps)])
    pos += np.random.default_rng(0).normal(0, 0.2, pos.shape)   # a layout's incompressible bits
    t0 = time.perf_counter()
    path = write_report(big, pos, tmp_path / "big.html")
    size = path.stat().st_size
    print(f"\n{big.num_vertices:,} vertices -> {size / 2**20:.1f} MiB in "
          f"{time.perf_counter() - t0:.1f} s")
    assert big.num_vertices > 1_300_000
    assert size <= 40 * 2**20, f"{size:,} bytes"

    t0 = time.perf_counter()
    page = open_report(need(browser), path, timeout=120.0)
    print(f"ready in {time.perf_counter() - t0:.1f} s; redraw "
          f"{page.execute_script('return window.ipugraphReport.redraw()'):.0f} ms")
    assert state(page, "count") == big.num_vertices
    px = page.execute_script(PIXELS)
    assert px["lit"] > 0.02 * px["total"], px
    zoom_in(page, 12)
    i = page.execute_script(ISOLATED, 8)
    assert i is not None, "no isolated vertex in view after zooming in"
    move_to_vertex(page, i)
    assert state(page, "hovered") == i
    from selenium.webdriver.common.by import By
    assert f"#{i}" in page.find_element(By.ID, "tooltip").text
    layer = int(big.v_layer[i])
    page.find_element(By.CSS_SELECTOR, f'#legend li[data-layer="{layer}"]').click()
    assert state(page, "highlighted") == layer
    assert not severe(page)
