"""pytest-benchmark suite: ResNet-34 inference, ipugraph's cpu backend vs PyTorch eager (NCHW and
channels_last), same batch, same weights, same threads; reported side by side in one group.

    OMP_NUM_THREADS=2 .venv/bin/python -m pytest bench/bench_resnet.py

Configure with IPUGRAPH_BENCH_BATCH (default 8), IPUGRAPH_BENCH_IMAGE (224),
IPUGRAPH_BENCH_ROUNDS (5). No timing is asserted: the figures are for reading (and for
--benchmark-json / --benchmark-compare); only agreement of the outputs is checked, so a broken
kernel is never timed. pytest-benchmark times one runtime after the other; `ipugraph bench`
interleaves them, which is fairer on a shared machine.
"""
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ipugraph as ig                                       # noqa: E402
from ipugraph.interop import torch_resnet                   # noqa: E402

BATCH = int(os.environ.get("IPUGRAPH_BENCH_BATCH", "8"))
IMAGE = int(os.environ.get("IPUGRAPH_BENCH_IMAGE", "224"))
ROUNDS = int(os.environ.get("IPUGRAPH_BENCH_ROUNDS", "5"))
GROUP = f"resnet34 batch {BATCH} {IMAGE}x{IMAGE}"


@pytest.fixture(scope="module")
def setup():
    graph = ig.models.resnet34(batch=BATCH, image_size=IMAGE, seed=0)
    engine = ig.compile(graph, backend="cpu")
    from ipugraph import _C
    torch.set_num_threads(_C.num_threads())                 # the threads ipugraph runs on
    model = torch_resnet.from_graph("resnet34", graph)
    model_cl = torch_resnet.from_graph("resnet34", graph).to(memory_format=torch.channels_last)
    x = np.random.default_rng(0).standard_normal((BATCH, 3, IMAGE, IMAGE), np.float32)
    tx = torch.from_numpy(x)

    def run_ipugraph():
        return engine.run({"x": x})["logits"]

    def run_torch():
        with torch.inference_mode():
            return model(tx)

    def run_torch_cl():
        with torch.inference_mode():
            return model_cl(tx.contiguous(memory_format=torch.channels_last))

    ours, ref = run_ipugraph(), run_torch().numpy()
    rel = float(np.abs(ours - ref).max() / np.abs(ref).max())
    assert rel < 1e-4, f"ipugraph and torch disagree (max rel error {rel:.2e}): not timing"
    runners = {"ipugraph-cpu": run_ipugraph, "torch-nchw": run_torch,
               "torch-channels_last": run_torch_cl}
    return runners, graph.macs(), _C.num_threads()


@pytest.mark.parametrize("runtime", ["ipugraph-cpu", "torch-nchw", "torch-channels_last"])
def test_resnet34_forward(benchmark, setup, runtime):
    runners, macs, threads = setup
    benchmark.group = GROUP
    benchmark.extra_info.update(batch=BATCH, image=IMAGE, threads=threads, macs=macs)
    benchmark.pedantic(runners[runtime], rounds=ROUNDS, warmup_rounds=1, iterations=1)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update(img_per_s=BATCH / median, gflop_per_s=2 * macs / median / 1e9)
