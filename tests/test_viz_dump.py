"""ig.viz.dump and `ipugraph dump`: every file of the dump is written, listed in the manifest
with its size, and loads with the readers the other viz tests check in depth."""
import json
import os

import networkx as nx
import pytest

import ipugraph as ig
from ipugraph.cli import main
from ipugraph.viz.schema import load

FILES = ("graph.json", "graph.vertices.parquet", "graph.edges.parquet", "graph.gexf", "graph.graphml", "graph.dot", "graph.png", "graph.svg",
         "tiles.png", "trace.json", "report.html")


@pytest.fixture(scope="module")
def small_plan():
    g = ig.models.resnet18(batch=1, image_size=32)
    return ig.plan(g, ig.Target.ipu_mk2())


def test_dump_writes_every_file(small_plan, tmp_path):
    messages = []
    manifest = ig.viz.dump(small_plan, str(tmp_path), frames=True, progress=messages.append)
    for name in FILES:
        assert (tmp_path / name).stat().st_size > 0, name
        assert manifest["files"][name] == (tmp_path / name).stat().st_size
    frames = sorted(p for p in manifest["files"] if p.startswith("frames"))
    assert len(frames) == len(small_plan.steps)
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest
    doc = load(str(tmp_path / "graph.json"))
    assert len(doc["vertices"]["id"]) == manifest["vertices"]
    g = nx.read_graphml(tmp_path / "graph.graphml")
    assert g.number_of_nodes() > 0
    assert set(manifest["seconds"]) >= {"vertex graph", "layout", "report.html"}
    assert any("layout" in m for m in messages)


def test_dump_rejects_bad_options(small_plan, tmp_path):
    with pytest.raises(ValueError, match="color must be one of"):
        ig.viz.dump(small_plan, str(tmp_path), color="rainbow")
    with pytest.raises(ValueError, match="level must be one of"):
        ig.viz.dump(small_plan, str(tmp_path), level="tile")


def test_cli_dump(tmp_path, capsys):
    out = tmp_path / "dump"
    assert main(["dump", "resnet18", "--target", "host", "--batch", "1", "--image-size", "32",
                 "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "vertices" in text and "layout" in text and "report.html" in text
    for name in FILES:
        assert (out / name).exists(), name
    assert os.path.getsize(out / "manifest.json") > 0
