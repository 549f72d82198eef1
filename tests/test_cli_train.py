"""The training commands: `ipugraph train`, `ipugraph bench --train`, and `plan`/`dump --train`
(tiny models and images so the suite stays quick; the figures come from bench/results/)."""
import json

import ipugraph.cli as cli


def test_train_prints_the_loss_of_every_step(capsys):
    assert cli.main(["train", "resnet18", "--batch", "4", "--image-size", "32", "--steps", "3",
                     "--classes", "3"]) == 0
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    assert [line.split()[1] for line in lines] == ["1/3", "2/3", "3/3"]
    assert all("loss" in line for line in lines)
    assert "resnet18 on synthetic (3 classes, 32x32), batch 4" in out


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


def test_dump_training_graph(tmp_path, capsys):
    out = tmp_path / "dump"
    # batch 1 at 64x64: layer4's training-mode batch norm still sees 2x2 values per channel
    assert cli.main(["dump", "resnet18", "--train", "--target", "ipu-mk1", "--batch", "1",
                     "--image-size", "64", "--out", str(out), "--level", "op-tilegroup"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    graph = json.loads((out / "graph.json").read_text())
    names = json.dumps(graph)
    assert "grad_w" in names and "sgd_step" in names           # backward and update ops drawn
    assert manifest["vertices"] > 0
