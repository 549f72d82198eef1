"""The dump's pictures: layout (viz/layout.py), graph.png/svg (viz/draw.py), tiles.png and the
per-step frames (viz/tiles.py), on small plans: ResNet-18 at 32x32, batch 1, on a Mk2, on a
16-tile IPU and on a 2-core host.

A picture is checked as a reader would first meet it: the file is a valid PNG (or SVG), it is
not blank (its pixels vary and hold many distinct colours), and a layout is finite, the same for
the same seed, and spread out (the vertices of one BSP step sit closer together than vertices
at large: layers form clusters instead of one blob).
"""
from __future__ import annotations

import os
import xml.etree.ElementTree as ET

import numpy as np
import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("igraph")

import ipugraph as ig                                               # noqa: E402
from ipugraph.viz import draw, layout, tiles                         # noqa: E402
from ipugraph.viz.graphdata import build                             # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
FAST = 2.0                      # max_seconds: the fewest UMAP epochs, enough for these checks


def _plan(target):
    return ig.plan(ig.models.resnet18(batch=1, image_size=32), target)


@pytest.fixture(scope="module")
def mk2():
    p = _plan(ig.Target.ipu_mk2())
    vg = build(p)
    return p, vg, layout.layout(vg, seed=0, max_seconds=FAST)


@pytest.fixture(scope="module")
def tiny():
    p = _plan(ig.Target.ipu(tiles=16, bytes_per_tile=4 * 1024 * 1024))
    vg = build(p)
    return p, vg, layout.layout(vg, seed=0, max_seconds=FAST)


@pytest.fixture(scope="module")
def host():
    p = _plan(ig.Target.host(threads=2))
    vg = build(p)
    return p, vg, layout.layout(vg, seed=0, max_seconds=FAST)


def read_png(path) -> np.ndarray:
    with open(path, "rb") as f:
        assert f.read(8) == PNG_MAGIC, f"{path} is not a PNG"
    import matplotlib.pyplot as plt
    return plt.imread(path)


def assert_not_blank(img: np.ndarray, min_colours: int = 20) -> None:
    rgb = img[..., :3]
    assert float(rgb.std()) > 0.02, "picture is (nearly) one flat colour"
    q = np.round(rgb.reshape(-1, 3) * 31).astype(np.int32)
    distinct = len(np.unique(q[:, 0] * 1024 + q[:, 1] * 32 + q[:, 2]))
    assert distinct >= min_colours, f"only {distinct} distinct colours"


# -- layout --------------------------------------------------------------------------------------
def test_layout_finite_deterministic_and_spread(mk2):
    p, vg, pos = mk2
    assert pos.shape == (vg.num_vertices, 2) and pos.dtype == np.float32
    assert np.isfinite(pos).all()
    again = layout.layout(vg, seed=0, max_seconds=FAST)
    np.testing.assert_array_equal(pos, again)
    other = layout.layout(vg, seed=1, max_seconds=FAST)
    assert not np.array_equal(pos, other)
    # Not collapsed: the picture has extent, and few vertices share a spot.
    span = np.ptp(pos, axis=0)
    assert span.min() > 0
    grid = np.floor((pos - pos.min(axis=0)) / (span.max() / 200)).astype(np.int64)
    cells = len(np.unique(grid[:, 0] * 1000 + grid[:, 1]))
    assert cells > 0.02 * vg.num_vertices, f"{cells} occupied cells of 200x200"
    # Clusters: vertices of one step are much closer to each other than vertices at large.
    rng = np.random.default_rng(0)
    a, b = rng.integers(0, vg.num_vertices, (2, 4000))
    overall = np.median(np.linalg.norm(pos[a] - pos[b], axis=1))
    within = []
    for s in range(len(p.steps)):
        m = np.flatnonzero(vg.v_step == s)
        i, j = rng.choice(m, 200), rng.choice(m, 200)
        within.append(np.median(np.linalg.norm(pos[i] - pos[j], axis=1)))
    assert np.median(within) < 0.5 * overall, (np.median(within), overall)


def test_layout_small_targets(tiny, host):
    for p, vg, pos in (tiny, host):
        assert pos.shape == (vg.num_vertices, 2)
        assert np.isfinite(pos).all() and np.ptp(pos, axis=0).min() > 0


def test_epochs_follow_the_budget():
    assert layout.epochs_for(200_000, 1.0) == layout.MIN_EPOCHS
    assert layout.epochs_for(1_000, 20.0) == layout.EPOCHS
    assert layout.epochs_for(200_000, 5.0) < layout.epochs_for(200_000, 10.0)


# -- graph picture -------------------------------------------------------------------------------
def test_draw_graph_png_and_svg(mk2, tmp_path):
    p, vg, pos = mk2
    png, svg = tmp_path / "graph.png", tmp_path / "graph.svg"
    out = draw.draw_graph(vg, pos, str(png), str(svg))
    assert out == [str(png), str(svg)]
    img = read_png(png)
    assert 1900 <= img.shape[1] <= 2100 and img.shape[0] >= 900
    assert_not_blank(img, min_colours=40)
    root = ET.parse(svg).getroot()
    assert root.tag.endswith("svg")
    uses = sum(1 for e in root.iter() if e.tag.endswith("use"))
    assert uses >= vg.num_vertices                   # every vertex is a marker
    assert os.path.getsize(svg) < 8 * 1024 * 1024


def test_draw_graph_density_and_title(tiny, tmp_path):
    p, vg, pos = tiny
    png = tmp_path / "density.png"
    draw.draw_graph(vg, pos, str(png), color="density", title="a title")
    assert_not_blank(read_png(png))
    d = draw.density(vg)
    assert np.isfinite(d).all() and (d[vg.v_step >= 0] > 0).any()


def test_draw_graph_host(host, tmp_path):
    p, vg, pos = host
    png = tmp_path / "host.png"
    draw.draw_graph(vg, pos, str(png))
    assert_not_blank(read_png(png))


def test_bad_color_and_positions(tiny, tmp_path):
    p, vg, pos = tiny
    with pytest.raises(ValueError, match=r"'layer'.*'phase'.*'density'.*'heat'"):
        draw.draw_graph(vg, pos, str(tmp_path / "x.png"), color="heat")
    with pytest.raises(ValueError, match="positions"):
        draw.draw_graph(vg, pos[:-1], str(tmp_path / "x.png"))
    assert not (tmp_path / "x.png").exists()


def test_palette_and_sizes():
    pal = draw.layer_colors(22)
    assert pal.shape == (22, 4) and len({tuple(c) for c in pal}) == 22
    s = draw.vertex_sizes(np.array([0.0, 10.0, 100.0, 1000.0]), 0.5, 5.0)
    assert s[0] == 0.5 and s[-1] == 5.0 and np.all(np.diff(s) >= 0)
    assert s[2] == pytest.approx(0.5)                  # area ∝ cycles, floored
    assert draw.size_ceiling(60000) == draw.SIZE_MAX < draw.size_ceiling(600)


# -- the training picture -------------------------------------------------------------------
@pytest.fixture(scope="module")
def training():
    g = ig.models.resnet18(batch=2, image_size=32, num_classes=10, training=True)
    ig.training.add_training(g)
    p = ig.plan(g, ig.Target.ipu(tiles=64, bytes_per_tile=4 * 1024 * 1024))
    vg = build(p)
    return p, vg, layout.layout(vg, seed=0, max_seconds=FAST)


def test_training_groups_and_phases(training):
    from ipugraph.viz.graphdata import PHASES, layer_groups
    p, vg, _ = training
    names, group = layer_groups(vg)
    assert names == ["stem", "layer1", "layer2", "layer3", "layer4", "head", "loss"]
    phase = vg.v_phase
    for k, ph in enumerate(PHASES):                  # a vertex's phase is its step's anchor's
        steps = {s.index for s in p.steps if s.group.anchor.phase == ph}
        assert steps and set(vg.v_step[phase == k].tolist()) <= steps | {-1}
    # every group but the loss has all three phases; the loss has no weights to update
    for i, name in enumerate(names):
        have = set(phase[group == i].tolist())
        assert have == ({0, 1} if name == "loss" else {0, 1, 2}), (name, have)
    # a grad op joins its forward layer's group
    grad = [li for li, n in enumerate(vg.layers) if n == "layer3.0.conv1"][0]
    assert {names[g] for g in group[vg.v_layer == grad]} == {"layer3"}


def test_phase_colours_tell_the_phases_apart(training, tmp_path):
    p, vg, pos = training
    rgba, key = draw.vertex_colors(vg, "phase")
    pal = key["palette"]
    assert pal.shape == (7, 3, 4)
    hsv = np.array([[__import__("colorsys").rgb_to_hsv(*c[:3]) for c in row] for row in pal])
    assert np.ptp(hsv[:, :, 0], axis=1).max() < 1e-6          # one hue per group
    assert (np.diff(hsv[:, 0, 0]) > 0).all()                   # hues follow depth
    assert (hsv[:, 0, 1] > hsv[:, 1, 1] + 0.3).all()           # backward paler than forward
    assert (hsv[:, 2, 2] < hsv[:, 1, 2] - 0.3).all()           # update dimmer
    assert np.array_equal(rgba, pal[key["group"], vg.v_phase])
    png = tmp_path / "train.png"
    draw.draw_graph(vg, pos, str(png), color="phase")
    assert_not_blank(read_png(png), min_colours=40)


def test_density_bands_hold_equal_shares(training):
    _, vg, _ = training
    d = draw.density(vg)
    norm = draw.density_norm(d)
    pos = d[d > 0]
    bands = np.digitize(pos, norm.boundaries[1:-1])
    n = len(norm.boundaries) - 1
    assert n >= 6
    for b in range(n):                  # a band holds its 1/20 plus at most one tied value's
        inside = pos[bands == b]
        if not len(inside):
            continue
        ties = np.unique(inside, return_counts=True)[1].max() / len(pos)
        assert len(inside) / len(pos) <= 1 / 20 + ties + 0.01, (b, len(inside), ties)


def test_dump_colours_a_training_step_by_phase(training, tmp_path):
    p, _, _ = training
    manifest = ig.viz.dump(p, str(tmp_path))
    assert manifest["color"] == "phase"


# -- tiles ---------------------------------------------------------------------------------------
def test_grid_shapes():
    assert tiles.grid_shape(1472) == (32, 46)
    assert tiles.grid_shape(1216) == (32, 38)
    assert tiles.grid_shape(16) == (4, 4)
    assert tiles.grid_shape(2) == (1, 2)
    r, c = tiles.grid_shape(97)                      # a prime: near-square, last row partial
    assert r * c >= 97 and c <= 2 * r


@pytest.mark.parametrize("which", ["mk2", "tiny", "host"])
def test_draw_tiles_all_steps_and_one(which, request, tmp_path):
    p, vg, pos = request.getfixturevalue(which)
    a, b = tmp_path / "tiles.png", tmp_path / "tiles_3.png"
    assert tiles.draw_tiles(p, str(a)) == str(a)
    tiles.draw_tiles(p, str(b), step=3)
    for f in (a, b):
        assert_not_blank(read_png(f))
    nbytes, cycles, at = tiles.tile_values(p)
    np.testing.assert_array_equal(nbytes, p.memory.total.max(axis=0))
    np.testing.assert_allclose(cycles, np.sum([s.tile_compute for s in p.steps], axis=0))
    nbytes3, cycles3, _ = tiles.tile_values(p, 3)
    np.testing.assert_array_equal(nbytes3, p.memory.total[3])
    np.testing.assert_array_equal(cycles3, p.steps[3].tile_compute)


def test_draw_tiles_bad_step(tiny, tmp_path):
    p, vg, pos = tiny
    n = len(p.steps)
    for bad in (n, -1, 10**6):
        with pytest.raises(ValueError, match=rf"step {bad} is out of range.*{n} steps"):
            tiles.draw_tiles(p, str(tmp_path / "t.png"), step=bad)
    with pytest.raises(TypeError):
        tiles.draw_tiles(p, str(tmp_path / "t.png"), step="3")
    assert not (tmp_path / "t.png").exists()


def test_draw_frames_one_per_step(tiny, tmp_path):
    p, vg, pos = tiny
    paths = tiles.draw_frames(vg, pos, p, str(tmp_path / "frames"), width_px=640)
    assert len(paths) == len(p.steps)
    assert [os.path.basename(x) for x in paths] == [f"frame_{i:03d}.png"
                                                    for i in range(len(p.steps))]
    first, mid = read_png(paths[0]), read_png(paths[len(paths) // 2])
    assert first.shape == mid.shape and first.shape[1] == 640
    assert_not_blank(first)
    assert np.abs(first - mid).max() > 0.1           # a different step is lit
