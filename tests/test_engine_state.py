"""Engine state: variables live in the executable. Tensor.value and Engine.variables read them on
demand; nothing is repacked unless a value changed; a value written between runs is seen by the
next run of every engine; an in-place edit of a value raises (read-only arrays) instead of
being lost; run() is safe from several threads (runs of one graph's engines are serialised)."""
from __future__ import annotations

import threading

import numpy as np
import pytest

import ipugraph as ig
from helpers import assert_close, rand
from test_fusion import Counting

BACKENDS = [b for b in ("reference", "cpu", "triton") if ig.backends.available(b)]


def _conv_graph():
    g = ig.Graph(name="state")
    x = g.input("x", (1, 3, 6, 6))
    w = g.variable("w", (4, 3, 3, 3), value=rand((4, 3, 3, 3), 1))
    g.output("y", ig.ops.relu(ig.ops.conv2d(x, w, padding=1)))
    return g, w


def test_values_are_read_only_and_constants_fixed():
    g, w = _conv_graph()
    with pytest.raises(ValueError, match="read-only"):
        w.value[0, 0, 0, 0] = 5.0
    with pytest.raises(ValueError, match="read-only"):
        w.value *= 2                         # (numpy's in-place multiply on a read-only array)
    w.value = w.value * 2                    # a new array: taken
    c = g.constant(np.ones(3, np.float32))
    with pytest.raises(ig.GraphError, match="fixed when it is created"):
        c.value = np.zeros(3, np.float32)


@pytest.mark.parametrize("backend", BACKENDS)
def test_written_values_are_seen_by_the_next_run(backend):
    g, w = _conv_graph()
    eng = ig.compile(g, backend=backend)
    feeds = {"x": rand((1, 3, 6, 6), 2)}
    first = eng.run(feeds)["y"]
    w.value = rand((4, 3, 3, 3), 7)
    second = eng.run(feeds)["y"]
    assert not np.allclose(first, second)
    assert_close(second, ig.compile(g, backend="reference").run(feeds)["y"], 27)


def test_nothing_is_repacked_unless_a_value_changed(monkeypatch):
    import ipugraph.backends.cpu.conv as conv
    counter = Counting(conv.C)
    monkeypatch.setattr(conv, "C", counter)
    g, w = _conv_graph()
    eng = ig.compile(g, backend="cpu")
    assert counter.calls == {"pack_conv_weight": 1}           # at compile
    feeds = {"x": rand((1, 3, 6, 6), 2)}
    for _ in range(3):
        eng.run(feeds)
    assert counter.calls.get("pack_conv_weight") == 1         # unchanged: never again
    _ = w.value                                               # reading changes nothing
    eng.run(feeds)
    assert counter.calls["pack_conv_weight"] == 1
    w.value = w.value + 1.0
    eng.run(feeds)
    assert counter.calls["pack_conv_weight"] == 2             # one repack for one write


def _training_graph():
    g = ig.Graph(name="train")
    x = g.input("x", (4, 5))
    w = g.variable("w", (3, 5), value=rand((3, 5), 1))
    labels = g.input("labels", (4,), "int64")
    loss = ig.ops.cross_entropy(ig.ops.linear(x, w), labels)
    g.output("loss", loss)
    ig.optim.sgd(g, ig.grad(g, loss), lr=0.5, momentum=0.9)
    return g, w


@pytest.mark.parametrize("backend", BACKENDS)
def test_updates_stay_in_the_engine_until_read(backend):
    g, w = _training_graph()
    eng = ig.compile(g, backend=backend)
    feeds = {"x": rand((4, 5), 3), "labels": np.array([0, 2, 1, 2])}
    before = w.value.copy()
    losses = [float(eng.run(feeds)["loss"]) for _ in range(3)]
    assert losses[2] < losses[0]
    assert w._holder is not None                          # not copied out after each run
    now = w.value                                         # read on demand
    assert not np.allclose(now, before) and not now.flags.writeable
    np.testing.assert_array_equal(eng.variables["w"], now)
    assert set(eng.variables) == set(g.variables)


def test_engines_of_one_graph_share_their_variables():
    """A training engine's update is seen by an inference engine of the same graph at its next
    run (and the other way round for a value written by hand)."""
    g, w = _training_graph()
    train = ig.compile(g, backend="cpu")
    infer = ig.compile(g, backend="reference")
    feeds = {"x": rand((4, 5), 3), "labels": np.array([0, 2, 1, 2])}
    l0 = infer.run(feeds)["loss"]
    train.run(feeds)
    train.run(feeds)
    l1 = infer.run(feeds)["loss"]                         # sees train's w (and updates it too)
    assert l1 < l0
    w.value = np.zeros((3, 5), np.float32)
    assert_close(train.run(feeds)["loss"], np.log(3.0), 3)   # uniform logits


def test_run_is_thread_safe():
    """Two threads on one cpu engine, 200 runs each with their own inputs: every result is the
    thread's own (the runs are serialised by the graph's lock)."""
    g = ig.Graph(name="mm")
    a = g.input("a", (64, 256))
    b = g.variable("b", (256, 32), value=rand((256, 32), 1))
    g.output("y", ig.ops.matmul(a, b))
    eng = ig.compile(g, backend="cpu")
    inputs = [rand((64, 256), s) for s in range(4)]
    expected = [x.astype(np.float64) @ b.value for x in inputs]
    wrong = []

    def worker(k):
        for i in range(200):
            j = (k + 2 * i) % 4
            out = eng.run({"a": inputs[j]})["y"]
            if not np.allclose(out, expected[j], rtol=1e-4, atol=1e-3):
                wrong.append((k, i))
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong, f"{len(wrong)} of 400 runs got another thread's result"


def test_profile_times_every_compute_set():
    g, _ = _training_graph()
    eng = ig.compile(g, backend="cpu")
    eng.run({"x": rand((4, 5), 3), "labels": np.array([0, 2, 1, 2])}, profile=True)
    prof = eng.last_profile
    assert len(prof.kernels) == len(eng.program.compute_sets)
    assert prof.total >= prof.kernel_seconds > 0 and prof.outside_seconds >= 0
    assert set(prof.by_kind()) <= {cs.op for cs in eng.program.compute_sets}
