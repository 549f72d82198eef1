"""The training commands: `ipugraph train`, `ipugraph bench --train`, and `plan`/`dump --train`
(tiny models and images so the suite stays quick; the figures come from bench/results/)."""
import json

import numpy as np

import pytest

import ipugraph.cli as cli


def test_train_prints_the_loss_of_every_step(capsys):
    assert cli.main(["train", "resnet18", "--batch", "4", "--image-size", "32", "--steps", "3",
                     "--classes", "3"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("loss" in line for line in lines)
    assert "resnet18 on synthetic (3 classes, 32x32), batch 4" in out


def test_train_records_statistics(tmp_path, capsys):
    """--record: the same losses as without it (the statistics only read the step), files a
    recording loader reads, and the measured cost printed."""
    import ipugraph as ig
    args = ["train", "resnet18", "--batch", "4", "--image-size", "32", "--steps", "5",
            "--classes", "3"]
    assert cli.main(args) == 0
    plain = [ln.split("loss ")[1].split()[0] for ln in capsys.readouterr().out.splitlines()
             if ln.startswith("step ")]
    assert cli.main(args + ["--record", str(tmp_path / "r"), "--record-every", "2"]) == 0
    out = capsys.readouterr().out
    recorded = [ln.split("loss ")[1].split()[0] for ln in out.splitlines()
                if ln.startswith("step ")]
    assert recorded == plain
    assert "recorded 3 of 5 steps" in out and "recording adds" in out
    d = ig.record.load(tmp_path / "r")
    assert d["steps"] == [0, 2, 4] and d["meta"]["model"] == "resnet18"
    assert d["values"]["act_zero"].shape == (3, 17)
    assert np.isfinite(d["values"]["grad_norm"]).all()
    with pytest.raises(SystemExit) as bad:                 # argparse: usage error, exit 2
        cli.main(args + ["--record", str(tmp_path / "r"), "--record-every", "0"])
    assert bad.value.code == 2


def test_train_rejects_non_square_images(capsys):
    assert cli.main(["train", "resnet18", "--image-size", "32x48", "--steps", "1"]) == 2
    assert "square" in capsys.readouterr().err


def test_bench_train_reports_the_ratio(tmp_path, capsys):
    path = tmp_path / "b.json"
    assert cli.main(["bench", "resnet18", "--train", "--batch", "2", "--image-size", "32",
                     "--classes", "10", "--warmup", "0", "--iters", "1",
                     "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "ipugraph/torch training-step throughput:" in out
    data = json.loads(path.read_text())
    assert data["mode"] == "train" and data["ratio_ipugraph_over_torch"] > 0
    assert data["first_step_loss_rel_difference"] < 1e-3
    # GFLOP/s counts the training graph's own MACs (forward + both backward passes), once
    import ipugraph as ig
    g = ig.models.resnet18(batch=2, image_size=32, num_classes=10, training=True)
    ig.training.add_training(g, optimizer="sgd")
    ours = data["results"]["ipugraph"]
    assert ours["gflop_per_s"] == pytest.approx(2 * g.macs() / ours["median_ms"] / 1e6)
    assert data["profile"] is None                      # (only with --profile)


def test_training_graph_exports(tmp_path):
    """The training step's plan through the viz exporters (graph.json, GEXF): forward, backward
    and update ops all appear. (`ipugraph dump --train` runs these plus the layout and pictures,
    minutes for a training graph on this machine, so the suite checks the exporters only.)"""
    import ipugraph as ig
    from ipugraph.viz import graphdata, schema, exports
    target = ig.Target.ipu_mk1()
    g = ig.models.resnet18(batch=1, image_size=64, num_classes=10, training=True, target=target)
    ig.training.add_training(g)
    vg = graphdata.build(ig.plan(g, target))
    schema.write_graph_json(vg, tmp_path / "graph.json")
    exports.write_gexf(vg, tmp_path / "graph.gexf", level="op-tilegroup")
    doc = schema.load(tmp_path / "graph.json")
    names = json.dumps({k: doc[k] for k in ("lookups", "tensors", "steps")})
    assert "grad_w" in names and "sgd_step" in names and "layer1.0.conv1" in names
    assert (tmp_path / "graph.gexf").stat().st_size > 0
