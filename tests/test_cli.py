"""The `ipugraph` command line: info, plan and a tiny bench, in process through cli.main(argv)
(one subprocess checks `python -m ipugraph`)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import ipugraph as ig
from ipugraph.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = ["resnet18", "--batch", "1", "--image-size", "32", "--warmup", "1", "--iters", "1"]


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"ipugraph {ig.__version__}" in out
    assert "C++ extension ipugraph._C: built" in out          # the cpu backend needs it
    assert "host target: host:" in out and "ipu-mk2 target:" in out
    assert "conv2d" in out and "batch_norm" in out
    assert "reference available" in out and "cpu available" in out


def test_python_dash_m_runs_the_same_cli():
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, "-m", "ipugraph", "info"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"ipugraph {ig.__version__}" in done.stdout


def test_plan_prints_summary_and_writes_json(tmp_path, capsys):
    path = tmp_path / "plan.json"
    assert main(["plan", "resnet18", "--target", "ipu-mk2", "--batch", "2",
                 "--image-size", "64x48", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "resnet18: batch 2, 64x48, 11,689,512 parameters" in out
    assert "plan of 'resnet18' (batch 2) on ipu-mk2: 1472 tiles" in out and "layer4.1.conv2" in out
    data = json.loads(path.read_text())
    assert data["target"]["name"] == "ipu-mk2" and data["target"]["tiles"] == 1472
    assert {s["name"] for s in data["steps"]} >= {"conv1", "layer1.0.conv1", "fc"}
    assert data["estimated_cycles"] > 0


def _check_bench_json(path, backend, compare):
    data = json.loads(path.read_text())
    assert data["model"] == "resnet18" and data["batch"] == 1 and data["image_size"] == "32x32"
    assert data["backend"] == backend and data["iters"] == 1 and data["outputs_agree"]
    assert data["command"].startswith("ipugraph bench resnet18")
    assert data["macs_per_run"] == ig.models.resnet18(batch=1, image_size=32).macs()
    for key in ("cpu_model", "cores", "loadavg_start"):
        assert key in data["machine"]
    assert data["versions"]["numpy"] and data["versions"]["python"]
    ours = data["results"]["ipugraph"]
    assert data["rounds"] == 2 and len(ours["round_medians_ms"]) == 2
    # the best round's median; its one sample is the median
    assert ours["median_ms"] == min(ours["round_medians_ms"])
    assert len(ours["times_ms"]) == 1 and ours["median_ms"] == ours["times_ms"][0] > 0
    assert ours["img_per_s"] == pytest.approx(1e3 / ours["median_ms"])
    assert ours["gflop_per_s"] == pytest.approx(2 * data["macs_per_run"] / ours["median_ms"] / 1e6)
    if compare:
        peer = data["results"][data["torch_peer"]]
        assert data["torch_peer"] in ("torch NCHW", "torch channels_last")
        assert data["ratio_ipugraph_over_torch"] == pytest.approx(
            ours["img_per_s"] / peer["img_per_s"])
        fastest = data["results"][data["fastest_peer"]]
        assert fastest["median_ms"] == min(r["median_ms"] for n, r in data["results"].items()
                                           if n != "ipugraph")
        assert data["ratio_ipugraph_over_fastest_peer"] == pytest.approx(
            ours["img_per_s"] / fastest["img_per_s"])
        assert data["reference"] == "torch NCHW"
        assert max(data["max_rel_error"].values()) < 1e-4
    return data


@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bench_against_torch(backend, tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--backend", backend, "--compare", "torch",
                 "--json", str(path)]) == 0
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("runtime"))
    assert lines[header].split() == ["runtime", "img/s", "median", "ms", "GFLOP/s", "vs",
                                     "fastest", "peer"]
    assert lines[header + 2].startswith(f"ipugraph {backend}")
    assert lines[header + 3].startswith("torch NCHW")
    assert lines[header + 4].startswith("torch channels_last")
    assert "ipugraph/torch throughput:" in captured.out
    assert "each runtime timed in its own block" in captured.out
    # blocks: every runtime's round 1 before any runtime's round 2
    rounds = [line for line in captured.err.splitlines() if "] round " in line]
    assert [r.split(":")[0].split()[-1] for r in rounds] == ["1/2"] * 3 + ["2/2"] * 3
    _check_bench_json(path, backend, compare=True)


def test_bench_against_onnxruntime_and_openvino(tmp_path, capsys):
    """The ONNX peers run the same weights (exported from the torch twin) and agree."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("openvino")
    path = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--compare", "all", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    data = _check_bench_json(path, "cpu", compare=True)
    assert set(data["results"]) == {"ipugraph", "torch NCHW", "torch channels_last",
                                    "onnxruntime", "openvino"}
    assert set(data["max_rel_error"]) == {"ipugraph", "torch channels_last", "onnxruntime",
                                          "openvino"}
    assert data["versions"]["onnxruntime"] and data["versions"]["openvino"]
    assert f"ipugraph/{data['fastest_peer']} (the fastest peer) throughput:" in out


def test_bench_compare_names_are_checked(capsys):
    assert main(["bench", *TINY, "--compare", "torch,tensorflow"]) == 2
    assert "--compare takes 'none', 'all' or a comma list of torch, onnxruntime, openvino" \
        in capsys.readouterr().err


def test_bench_profile_table_and_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    assert main(["bench", *TINY, "--compare", "none", "--profile", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    table = out[out.index("op kind"):].splitlines()
    assert table[0].split() == ["op", "kind", "sets", "ms", "share"]
    assert any(line.startswith("conv2d ") for line in table)
    assert any(line.startswith("outside the kernels") for line in table)
    prof = json.loads(path.read_text())["profile"]
    g = ig.models.resnet18(batch=1, image_size=32)
    engine = ig.compile(g, plan=ig.plan(g, ig.Target.host(ig._C.num_threads())))  # as bench's
    # every compute set of the program is timed once, under its op kind, and every
    # partial-sum reduction once more
    reductions = sum(1 for cs in engine.program.compute_sets if cs.reduce is not None)
    assert prof["compute_sets"] == len(engine.program.compute_sets) + reductions
    assert sum(k["compute_sets"] for k in prof["by_kind"].values()) == prof["compute_sets"]
    assert sum(k["ms"] for k in prof["by_kind"].values()) == pytest.approx(prof["kernels_ms"])
    assert prof["kernels_ms"] + prof["outside_ms"] == pytest.approx(prof["total_ms"])
    assert 0 <= prof["outside_share"] < 1 and prof["prepare_ms"] >= 0


def test_bench_without_torch_and_threads(tmp_path, capsys, monkeypatch):
    # --threads sets OMP_NUM_THREADS in this process; monkeypatch restores it afterwards
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "1"))
    path = tmp_path / "sub" / "bench.json"
    assert main(["bench", *TINY, "--backend", "reference", "--compare", "none",
                 "--threads", "1", "--json", str(path)]) == 0
    out = capsys.readouterr().out
    assert "1 threads" in out and "ipugraph reference" in out
    assert not any(line.startswith("torch") for line in out.splitlines())
    data = _check_bench_json(path, "reference", compare=False)
    assert data["threads"] == 1 and data["torch_peer"] is None


@pytest.mark.parametrize("argv, message", [
    (["bench", "resnet99"], "invalid choice: 'resnet99'"),
    (["bench", "resnet18", "--backend", "gpu"], "invalid choice: 'gpu'"),
    (["plan", "resnet18", "--target", "ipu-mk9"], "invalid choice: 'ipu-mk9'"),
    (["bench", "resnet18", "--iters", "0"], "must be >= 1"),
    (["plan", "resnet18", "--image-size", "2x2x2"], "image size must be N or HxW"),
    (["dump", "resnet18"], "the following arguments are required: --out"),
    (["dump", "resnet18", "--out", "x", "--color", "rainbow"], "invalid choice: 'rainbow'"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert message in capsys.readouterr().err


def test_image_too_small_is_a_clear_error(capsys):
    assert main(["plan", "resnet34", "--image-size", "16"]) == 2
    assert "resnet34: image_size 16x16 is too small" in capsys.readouterr().err
