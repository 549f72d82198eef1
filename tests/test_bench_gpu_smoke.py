"""bench/bench_gpu.py --smoke: every code path of the GPU benchmark (peak matmul, conv layers,
whole network, the JSON and markdown it writes) on tiny shapes, on the CPU with the kernels in
Triton's interpreter. It runs in a subprocess with no CUDA device visible and TRITON_INTERPRET=1,
so it behaves the same on a machine with a GPU and does not depend on which mode this process
imported the kernels in."""
import json
import os
import pathlib
import subprocess
import sys
from collections import Counter

import ipugraph as ig

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "bench_gpu.py"
sys.path.insert(0, str(ROOT / "bench"))
import bench_gpu  # noqa: E402  (stdlib imports only at module level)


def test_smoke_run_writes_json_and_markdown(tmp_path):
    env = {**os.environ, "TRITON_INTERPRET": "1", "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--dtypes", "fp16,bf16",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True,
                          timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "[bench_gpu" in proc.stderr and "part (c) net" in proc.stderr     # progress
    jsons, mds = list(tmp_path.glob("gpu_*_smoke.json")), list(tmp_path.glob("gpu_*_smoke.md"))
    assert len(jsons) == 1 and len(mds) == 1, sorted(p.name for p in tmp_path.iterdir())
    res = json.loads(jsons[0].read_text())
    today = res["date"][:10]
    assert jsons[0].name.endswith(f"_{today}_smoke.json")
    assert res["files"] == {"json": jsons[0].name, "markdown": mds[0].name}

    assert res["schema"] == bench_gpu.SCHEMA and res["mode"] == "smoke"
    assert "--smoke" in res["command"] and res["command"].startswith("python bench/bench_gpu.py")
    assert res["device"]["type"] == "cpu" and res["device"]["interpreter"] is True
    assert set(res["versions"]) >= {"torch", "triton", "cuda", "cudnn", "driver", "python",
                                    "ipugraph"}
    assert res["settings"]["dtypes"] == ["fp16", "bf16"]
    assert res["settings"]["timer"].startswith("perf_counter")
    assert set(res["seconds"]) == {"peak", "layers", "net", "total"}
    assert res["checks_ok"] is True and res["complete"] is True and res["errors"] == []

    # (a) the peak: one matmul per dtype
    assert [r["dtype"] for r in res["peak"]] == ["fp16", "bf16"]
    assert all(r["tflops"] > 0 and r["median_ms"] > 0 for r in res["peak"])

    # (b) layers: every smoke shape per dtype and batch, both sides timed and checked
    assert len(res["layers"]) == len(bench_gpu.SMOKE_SHAPES) * 2
    for r in res["layers"]:
        assert r["batch"] == 2 and r["dtype"] in ("fp16", "bf16")
        assert r["triton_ms"] > 0 and r["cudnn_ms"] > 0 and r["gflop"] > 0
        assert r["triton_pct_peak"] > 0 and r["cudnn_over_triton"] > 0
        assert r["ok"] and r["triton_max_rel_err"] <= r["tolerance"]
        assert len(r["triton_times_ms"]) == len(r["cudnn_times_ms"]) == 1
        assert set(r["shape"]) >= {"H", "W", "C", "K", "R", "S", "stride", "pad"}
    assert [(t["dtype"], t["batch"]) for t in res["layer_totals"]] == [("fp16", 2), ("bf16", 2)]

    # (c) the network: fp16 runs (ipugraph vs torch eager); bf16 graphs are skipped, saying why
    fp16, bf16 = res["net"]
    assert fp16["dtype"] == "fp16" and fp16["batch"] == 1 and fp16["model"] == "resnet18"
    assert set(fp16["runtimes"]) == {"ipugraph", "torch eager"}
    for f in fp16["runtimes"].values():
        assert f["median_ms"] > 0 and f["img_per_s"] > 0 and len(f["times_ms"]) == 1
    assert fp16["ok"] and fp16["max_rel_err_vs_fp32"]["ipugraph"] <= fp16["tolerance"]
    assert fp16["speedup"]["ipugraph / torch eager"] > 0
    assert fp16["first_call_s"]["ipugraph"] > 0
    assert "bfloat16" in bf16["skipped"]
    reasons = {k["what"]: k["reason"] for k in res["skipped"]}
    assert "CUDA graphs need a CUDA device" in reasons["cuda_graph runners fp16 b1"]

    md = mds[0].read_text()
    for heading in ("# ipugraph triton backend on", "## (a) Measured peak",
                    "## (b) ResNet-34 conv layers", "### fp16, batch 2", "### bf16, batch 2",
                    "## (c) resnet18 inference", "## Skipped", "## Notes"):
        assert heading in md, heading
    assert res["command"] in md and "torch 2." in md and "weighted (×occ)" in md
    assert proc.stdout.strip() == md.strip()           # the tables also go to stdout


def test_default_run_settings_and_resnet34_shapes():
    """The full run's defaults, and SHAPES: exactly ResNet-34's distinct conv shapes at 224x224
    with their number of occurrences."""
    args = bench_gpu.build_parser().parse_args([])
    bench_gpu.resolve(args)
    assert (args.mode, args.dtypes, args.net_batches, args.layer_batches, args.graph_batches) \
        == ("full", ["fp16", "bf16", "tf32"], [1, 32, 256], [32, 256], [1])
    assert (args.model, args.image_size, args.peak_size, args.iters) == ("resnet34", 224, 8192, 30)
    quick = bench_gpu.build_parser().parse_args(["--quick", "--dtypes", "fp16"])
    bench_gpu.resolve(quick)
    assert (quick.layer_batches, quick.net_batches, quick.iters, quick.dtypes) == \
        ([32], [1, 32], 5, ["fp16"])

    net = ig.models.resnet34(batch=1, image_size=224)
    seen = Counter()
    for node in net.nodes:
        if node.op.name == "conv2d":
            _, c, h, w = node.inputs[0].shape
            k, _, r, s = node.inputs[1].shape
            seen[(h, w, c, k, r, s, node.attrs["stride"][0], node.attrs["padding"][0])] += 1
    listed = {tuple(shape[1:9]): shape[9] for shape in bench_gpu.SHAPES}
    assert listed == dict(seen)


def test_a_failing_measurement_is_recorded_and_reported(tmp_path):
    """guarded() keeps the run going and the outputs say what failed; non-finite errors become
    JSON null."""
    res = {"schema": bench_gpu.SCHEMA, "command": "python bench/bench_gpu.py", "mode": "full",
           "date": "2026-01-02T03:04:05+00:00", "complete": False, "checks_ok": False,
           "device": {"name": "Some GPU 80GB", "type": "cuda", "capability": "9.0",
                      "multiprocessors": 132, "memory_gib": 79.1},
           "versions": {k: "x" for k in ("torch", "triton", "cuda", "cudnn", "python",
                                         "ipugraph")} | {"driver": None},
           "settings": {"timer": "cuda events", "iters": 3, "warmup": 1,
                        "cudnn_benchmark": True},
           "peak": [], "layers": [], "layer_totals": [], "net": [], "skipped": [],
           "errors": [], "seconds": {"peak": 1.0, "total": 2.0}, "nan": float("inf")}

    def boom():
        raise RuntimeError("CUDA error: out of memory")
    assert bench_gpu.guarded({"results": res, "torch": None}, "net", "resnet34 fp16 b256",
                             boom) is None
    assert res["errors"] == [{"part": "net", "what": "resnet34 fp16 b256",
                              "error": "RuntimeError: CUDA error: out of memory"}]
    base = bench_gpu.output_base(res, str(tmp_path))
    assert base.endswith("gpu_some-gpu-80gb_2026-01-02")
    text = bench_gpu.write_outputs(res, base)
    assert "## Errors" in text and "out of memory" in text and "INCOMPLETE" in text
    assert json.loads((tmp_path / res["files"]["json"]).read_text())["nan"] is None
    # a second run on the same day does not overwrite the first
    assert bench_gpu.output_base(res, str(tmp_path)).endswith("_2026-01-02_2")
