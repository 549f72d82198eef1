"""ipugraph.record: the statistics a training step records, against torch forward hooks and
autograd on the same weights, data and SGD steps (float64 torch; tolerances below), and the
files a recording writes."""
import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import ipugraph as ig                                                       # noqa: E402
from ipugraph.interop import load_state_dict                                # noqa: E402

import torch_resnet                                                         # noqa: E402


def _torch_step(model, opt, x, y):
    """One SGD step of the float64 torch model: ReLU outputs' mean / std / zero fraction
    (forward hooks, in call order), every parameter's gradient norm and relative update."""
    acts = []
    hooks = [m.register_forward_hook(
        lambda mod, inp, out: acts.append((out.mean().item(), out.std(unbiased=False).item(),
                                           (out == 0).double().mean().item())))
        for m in model.modules() if isinstance(m, torch.nn.ReLU)]
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt.zero_grad()
    torch.nn.functional.cross_entropy(model(torch.from_numpy(x).double()),
                                      torch.from_numpy(y)).backward()
    grads = {n: p.grad.norm().item() for n, p in model.named_parameters()}
    opt.step()
    for h in hooks:
        h.remove()
    ratio = {}
    for n, p in model.named_parameters():
        w = before[n].norm().item()
        ratio[n] = (p.detach() - before[n]).norm().item() / w if w > 0 else float("nan")
    return {"acts": np.array(acts), "grad": grads, "ratio": ratio}


def _sync(model, opt, g):
    """The torch model and optimizer at ipugraph's current state (weights, batch-norm
    statistics, momentum buffers), so that a recorded step is compared on the same values."""
    with torch.no_grad():
        for n, t in list(model.named_parameters()) + list(model.named_buffers()):
            if n in g.variables:
                t.copy_(torch.from_numpy(np.array(g.variables[n].value, np.float64)))
    for n, p in model.named_parameters():
        buf = g.variables.get(f"{n}.momentum_buffer")
        if buf is not None:
            opt.state[p]["momentum_buffer"] = torch.from_numpy(np.array(buf.value, np.float64))


def test_recorded_statistics_match_torch(tmp_path):
    """Each recorded step against torch on the same state: the steps between run on the plain
    engine, and the torch model is brought to ipugraph's weights before each recorded one."""
    B, S, C, lr, steps = 4, 32, 10, 0.1, 5
    model = torch_resnet.randomize_(torch_resnet.resnet18(num_classes=C), seed=5).train()
    g = ig.models.resnet18(batch=B, image_size=S, num_classes=C, training=True)
    load_state_dict(g, model.state_dict())
    step = ig.training.add_training(g, optimizer="sgd", momentum=0.9)
    plain = ig.compile(g, methods=("direct",))
    stats = ig.record.add_statistics(g, step)
    rec = ig.record.Recorder(tmp_path / "r", g, stats, every=2, plain=plain,
                             meta={"model": "resnet18"}, methods=("direct",))
    model = model.double()
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    rng = np.random.default_rng(0)
    ref = {}
    for i in range(steps):
        x = rng.standard_normal((B, 3, S, S)).astype(np.float32)
        y = rng.integers(0, C, B).astype(np.int64)
        if rec.records(i):
            _sync(model, opt, g)
            ref[i] = _torch_step(model, opt, x, y)
        out = rec.run(i, {"x": x, "labels": y, "lr": np.float32(lr)})
        assert not any(k.startswith("record:") for k in out) and "loss" in out
    rec.close()

    d = ig.record.load(tmp_path / "r")
    assert d["steps"] == [0, 2, 4] and d["meta"]["recorded_steps"] == [0, 2, 4]
    assert d["meta"]["model"] == "resnet18" and len(d["meta"]["losses"]) == steps
    assert len(d["subjects"]["act_mean"]) == 17     # the stem's and two per basic block
    for row, s in enumerate(d["steps"]):
        acts = ref[s]["acts"]                        # [17, 3]: mean, std, zero fraction
        assert acts.shape == (17, 3)
        # float32 against float64 on the same state: 1e-4 relative; a zero count can move
        # by the few elements whose float32 value lands on the other side of 0
        np.testing.assert_allclose(d["values"]["act_mean"][row], acts[:, 0], rtol=1e-4)
        np.testing.assert_allclose(d["values"]["act_std"][row], acts[:, 1], rtol=1e-4)
        np.testing.assert_allclose(d["values"]["act_zero"][row], acts[:, 2], atol=1e-3)
        names = d["subjects"]["grad_norm"]
        assert sorted(names) == sorted(ref[s]["grad"])
        # gradients through ReLU / max-pool kinks: 1e-3 relative (see tests/test_training.py)
        np.testing.assert_allclose(d["values"]["grad_norm"][row],
                                   [ref[s]["grad"][n] for n in names], rtol=1e-3)
        want = np.array([ref[s]["ratio"][n] for n in d["subjects"]["update_ratio"]])
        got = d["values"]["update_ratio"][row]
        assert np.array_equal(np.isnan(got), np.isnan(want))       # zero-init BN biases
        np.testing.assert_allclose(got[~np.isnan(want)], want[~np.isnan(want)], rtol=1e-3)
    json.loads((tmp_path / "r" / "meta.json").read_text())


def test_recorder_rejects_bad_input(tmp_path):
    g = ig.models.resnet18(batch=2, image_size=32, num_classes=4, training=True)
    step = ig.training.add_training(g)
    stats = ig.record.add_statistics(g, step)
    with pytest.raises(ig.GraphError, match="already records statistics"):
        ig.record.add_statistics(g, step)
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 0"):
        ig.record.Recorder(tmp_path, g, stats, every=0)
    with pytest.raises(ValueError, match="every must be an integer >= 1, got 2.5"):
        ig.record.Recorder(tmp_path, g, stats, every=2.5)
    with pytest.raises(ValueError, match="not a recording"):
        ig.record.load(tmp_path / "nothing")
    # a zero weight (the batch norms' beta at initialisation) has no relative update: NaN
    rec = ig.record.Recorder(tmp_path / "z", g, stats, every=1)
    rng = np.random.default_rng(0)
    rec.run(0, {"x": rng.standard_normal((2, 3, 32, 32)).astype(np.float32),
                "labels": np.array([0, 1]), "lr": np.float32(0.1)})
    rec.close()
    d = ig.record.load(tmp_path / "z")
    ratio = dict(zip(d["subjects"]["update_ratio"], d["values"]["update_ratio"][0]))
    assert np.isnan(ratio["bn1.bias"]) and np.isfinite(ratio["bn1.weight"])
