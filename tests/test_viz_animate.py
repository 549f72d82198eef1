"""ipugraph animate / ig.viz.animate: a recorded run painted on the training step's layout --
the MP4, GIF, HTML slider page and small multiples exist and are what they claim (a video
container, one GIF frame per recorded step, frames that change with the statistics)."""
import json

import numpy as np
import pytest

import ipugraph as ig
from ipugraph.cli import main
from ipugraph.viz.animate import animate, match_layers

SMALL_IPU = dict(tiles=64, bytes_per_tile=4 * 1024 * 1024)


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    d = tmp_path_factory.mktemp("rec")
    g = ig.models.resnet18(batch=2, image_size=32, num_classes=4, training=True)
    step = ig.training.add_training(g, optimizer="sgd")
    plain = ig.compile(g)
    stats = ig.record.add_statistics(g, step)
    rec = ig.record.Recorder(d / "r", g, stats, every=2, plain=plain,
                             meta={"model": "resnet18", "batch": 2, "image_size": 32,
                                   "classes": 4, "optimizer": "sgd"})
    xs, ys = ig.datasets.shapes(2 * 5, 32, 4, seed=3)
    for i in range(5):
        rec.run(i, {"x": xs[2 * i:2 * i + 2], "labels": ys[2 * i:2 * i + 2],
                    "lr": np.float32(0.2)})
    rec.close()
    return d / "r"


def test_animate_writes_video_gif_page_and_small_multiples(recording, tmp_path):
    from PIL import Image
    out = tmp_path / "a"
    m = animate(recording, out, target=ig.Target.ipu(**SMALL_IPU))
    assert m["steps"] == [0, 2, 4]
    assert json.loads((out / "animate.json").read_text()) == m
    mp4 = (out / "animation.mp4").read_bytes()
    assert mp4[4:8] == b"ftyp" and len(mp4) > 1000            # an MP4 container
    gif = Image.open(out / "animation.gif")
    assert gif.n_frames == 3
    frames = [np.asarray(Image.open(out / f).convert("RGB")) for f in m["files"]["frames"]]
    assert len(frames) == 3 and all(f.shape == frames[0].shape for f in frames)
    # the statistics move between steps, so do the colours (the layout does not)
    assert not np.array_equal(frames[0], frames[2])
    page = (out / "index.html").read_text()
    assert 'type="range"' in page and 'max="2"' in page
    data = json.loads(page.split('<script id="data" type="application/json">')[1]
                      .split("</script>")[0])
    assert data["frames"] == m["files"]["frames"] and [r["step"] for r in data["rows"]] == [0, 2, 4]
    assert (out / "statistics.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_match_layers():
    subjects = ["relu", "layer1.0", "layer1.1", "layer2.0"]
    got = match_layers(["layer1.0.conv1", "layer1.1", "layer2.0.bn1", "relu", "fc", "layer3"],
                       subjects)
    assert got.tolist() == [1, 2, 3, 0, -1, -1]


def test_animate_rejects_bad_input(recording, tmp_path, capsys):
    with pytest.raises(ValueError, match="fps must be a positive number"):
        animate(recording, tmp_path / "x", fps=0)
    with pytest.raises(ValueError, match="not a recording"):
        animate(tmp_path / "none", tmp_path / "x")
    assert main(["animate", str(tmp_path / "none"), "--out", str(tmp_path / "x")]) == 2
    assert "not a recording" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert main(["animate", str(recording), "--out", str(tmp_path / "file")]) == 2
    assert "is not a folder" in capsys.readouterr().err
