"""ipugraph.models.resnet* against an independent plain-torch ResNet (tests/torch_resnet.py):
parameter counts and MACs, structure and names, weights loaded through load_state_dict, and
logits on the reference and CPU backends under host and IPU Mk2 plans. Small images (64×64,
batch 2) keep the whole file quick; the depth is the full network's."""
import numpy as np
import pytest
import torch

import ipugraph as ig
from ipugraph.interop import StateDictError, load_state_dict, state_dict
from ipugraph.models.resnet import variable_seed
import torch_resnet

BUILDERS = {"resnet18": ig.models.resnet18, "resnet34": ig.models.resnet34,
            "resnet50": ig.models.resnet50}
# torchvision's published parameter counts (1000 classes)
PARAMS = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032}
TARGETS = {"host": ig.Target.host, "ipu-mk2": ig.Target.ipu_mk2}
BATCH, IMAGE = 2, 64


def rel_error(actual, expected) -> float:
    return float(np.abs(actual - expected).max() / np.abs(expected).max())


@pytest.fixture(scope="module")
def torch_models():
    """One randomised torch model per architecture (BN running stats too: BN is no identity)."""
    torch.manual_seed(0)
    return {arch: torch_resnet.randomize_(torch_resnet.MODELS[arch](), seed=i).eval()
            for i, arch in enumerate(BUILDERS)}


@pytest.fixture(scope="module")
def loaded(torch_models):
    """arch -> (graph with the torch weights, input, torch eval-mode logits)."""
    result = {}
    x = np.random.default_rng(1).standard_normal((BATCH, 3, IMAGE, IMAGE)).astype(np.float32)
    for arch, model in torch_models.items():
        g = BUILDERS[arch](batch=BATCH, image_size=IMAGE)
        load_state_dict(g, model.state_dict())
        with torch.inference_mode():
            expected = model(torch.from_numpy(x)).numpy()
        result[arch] = (g, x, expected)
    return result


# -- size --------------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", list(BUILDERS))
def test_param_count_matches_torchvision(arch, torch_models):
    g = BUILDERS[arch](batch=1, image_size=32)
    assert g.num_params() == PARAMS[arch]
    assert sum(p.numel() for p in torch_models[arch].parameters()) == PARAMS[arch]


def test_resnet34_macs():
    g = ig.models.resnet34(batch=1, image_size=224)
    assert g.num_params() == 21_797_672
    assert g.macs() == pytest.approx(3.664e9, rel=1e-3)     # "3.6 GFLOPs" (MACs) in the paper
    assert ig.models.resnet34(batch=4, image_size=224).macs() == 4 * g.macs()


# -- structure ---------------------------------------------------------------------------------

@pytest.mark.parametrize("arch", list(BUILDERS))
def test_variables_are_torchvision_state_dict_keys(arch, torch_models):
    g = BUILDERS[arch](batch=1, image_size=32)
    sd = {k: v for k, v in torch_models[arch].state_dict().items()
          if not k.endswith("num_batches_tracked")}
    assert list(g.variables) == list(sd)          # same names, same order
    for name, t in g.variables.items():
        assert t.shape == tuple(sd[name].shape), name
        assert t.trainable == (not name.endswith(("running_mean", "running_var"))), name


def test_smallest_image():
    assert ig.models.resnet.min_image_size() == 17
    g = ig.models.resnet18(batch=1, image_size=(17, 40))
    assert g["layer4.1.relu"].shape == (1, 512, 1, 2)


def test_graph_io_and_non_square_image():
    g = ig.models.resnet18(batch=3, image_size=(64, 96), num_classes=10, name="r18")
    assert g.name == "r18"
    assert list(g.inputs) == ["x"] and g.inputs["x"].shape == (3, 3, 64, 96)
    assert g.inputs["x"].dtype == "float32"
    assert list(g.outputs) == ["logits"] and g.outputs["logits"].shape == (3, 10)
    final = g["layer4.1.relu"]                      # 64×96 downsampled by 32
    assert final.shape == (3, 512, 2, 3)


def test_node_names_carry_the_layer():
    g = ig.models.resnet50(batch=1, image_size=32)
    names = {n.name for n in g.nodes}
    assert {"conv1", "bn1", "relu", "maxpool", "avgpool", "flatten", "fc"} <= names
    assert {"layer2.0.conv2", "layer2.0.downsample.0", "layer2.0.downsample.1",
            "layer2.0.add", "layer4.2.relu"} <= names
    node = next(n for n in g.nodes if n.name == "layer3.5.conv3")
    assert node.scope == "layer3.5" and node.inputs[1].name == "layer3.5.conv3.weight"
    # v1.5: the stride-2 sits on the 3×3 conv of a down-sampling bottleneck
    assert next(n for n in g.nodes if n.name == "layer2.0.conv2").attrs["stride"] == (2, 2)
    assert next(n for n in g.nodes if n.name == "layer2.0.conv1").attrs["stride"] == (1, 1)


def test_init_is_torchvision_like_and_seeded():
    a = ig.models.resnet18(batch=1, image_size=32, seed=0)
    b = ig.models.resnet18(batch=1, image_size=32, seed=0)
    c = ig.models.resnet18(batch=1, image_size=32, seed=1)
    for name in ("conv1.weight", "layer1.0.conv1.weight", "fc.weight", "fc.bias"):
        assert np.array_equal(a[name].value, b[name].value), name
        assert not np.array_equal(a[name].value, c[name].value), name
    # same-shaped variables get different draws (a per-variable seed)
    assert not np.array_equal(a["layer1.0.conv1.weight"].value, a["layer1.0.conv2.weight"].value)
    assert variable_seed(0, "conv1.weight") != variable_seed(0, "conv2.weight")
    w = a["layer3.0.conv2.weight"].value                   # kaiming normal, fan_out = 256·9
    assert np.std(w) == pytest.approx(np.sqrt(2 / (256 * 9)), rel=0.02)
    fc = a["fc.weight"].value                              # U(±1/sqrt(512))
    assert np.abs(fc).max() <= 1 / np.sqrt(512) and np.abs(fc).max() > 0.9 / np.sqrt(512)
    for bn in ("bn1", "layer4.1.bn2"):
        for suffix, value in (("weight", 1), ("bias", 0), ("running_mean", 0),
                              ("running_var", 1)):
            assert np.all(a[f"{bn}.{suffix}"].value == value)
    bn = next(n for n in a.nodes if n.op.name == "batch_norm")
    assert bn.attrs["eps"] == 1e-5


@pytest.mark.parametrize("kwargs, match", [
    (dict(batch=0), "batch must be a positive int"),
    (dict(batch=2.5), "batch must be a positive int"),
    (dict(image_size=16), "16x16 is too small: layer4 would stride over a 1-pixel"),
    (dict(image_size=(224, 8)), "224x8 is too small: layer3 .* at least 17 pixels"),
    (dict(image_size=1), "1x1 is too small: conv1"),
    (dict(image_size=(224,)), "image_size must be an int or a pair"),
    (dict(image_size="224"), "image_size must be an int or a pair"),
    (dict(num_classes=0), "num_classes must be a positive int"),
    (dict(seed=-1), "seed must be a non-negative int"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        ig.models.resnet34(**kwargs)


# -- numerics against torch --------------------------------------------------------------------

CASES = [(arch, backend, target) for arch in BUILDERS for backend in ("reference", "cpu")
         for target in TARGETS]


@pytest.mark.slow
@pytest.mark.parametrize("arch, backend, target", CASES)
def test_logits_match_torch(arch, backend, target, loaded):
    g, x, expected = loaded[arch]
    eng = ig.compile(g, backend=backend, plan=ig.plan(g, TARGETS[target]()))
    out = eng.run({"x": x})
    assert set(out) == {"logits"}
    logits = out["logits"]
    assert logits.shape == (BATCH, 1000) and logits.dtype == np.float32
    assert rel_error(logits, expected) < 1e-4


@pytest.mark.slow
def test_graph_built_for_ipu_target_runs_non_square():
    """A graph built for the Mk2 (not only planned for it), with a non-square image, on CPU."""
    model = torch_resnet.randomize_(torch_resnet.resnet18(num_classes=10), seed=5).eval()
    g = ig.models.resnet18(batch=1, image_size=(64, 48), num_classes=10,
                           target=ig.Target.ipu_mk2())
    load_state_dict(g, model.state_dict())
    x = np.random.default_rng(2).standard_normal((1, 3, 64, 48)).astype(np.float32)
    with torch.inference_mode():
        expected = model(torch.from_numpy(x)).numpy()
    assert rel_error(ig.compile(g, backend="cpu").run({"x": x})["logits"], expected) < 1e-4


def test_reloading_weights_updates_a_compiled_engine(loaded, torch_models):
    """load_state_dict after compile: the engine repacks (graph version bump) before its run."""
    arch = "resnet18"
    _, x, expected = loaded[arch]
    g = ig.models.resnet18(batch=BATCH, image_size=IMAGE, seed=3)
    eng = ig.compile(g, backend="cpu")
    before = eng.run({"x": x})["logits"].copy()
    load_state_dict(g, torch_models[arch].state_dict())
    after = eng.run({"x": x})["logits"]
    assert rel_error(before, expected) > 1e-2
    assert rel_error(after, expected) < 1e-4


# -- state_dict round trip and errors ---------------------------------------------------------

def test_state_dict_round_trip_and_numpy_input():
    a = ig.models.resnet18(batch=1, image_size=32, seed=0)
    b = ig.models.resnet18(batch=1, image_size=32, seed=7)
    sd = state_dict(a)
    assert list(sd) == list(a.variables) and all(isinstance(v, np.ndarray) for v in sd.values())
    sd["conv1.weight"][...] = 0                   # a copy: the graph is untouched
    assert np.abs(a["conv1.weight"].value).max() > 0
    sd = state_dict(a)
    load_state_dict(b, {k: v.astype(np.float64) for k, v in sd.items()})   # cast on load
    for name, v in sd.items():
        assert b[name].value.dtype == np.float32 and np.array_equal(b[name].value, v)


def test_torch_state_dict_into_torch_model(torch_models):
    """state_dict(graph) loads straight into the torch model (the bench's direction)."""
    g = ig.models.resnet18(batch=1, image_size=32, seed=4)
    model = torch_resnet.resnet18()
    result = model.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict(g).items()},
                                   strict=False)
    assert result.unexpected_keys == []
    assert all(k.endswith("num_batches_tracked") for k in result.missing_keys)
    assert torch.equal(model.fc.bias, torch.from_numpy(g["fc.bias"].value))


def test_loaded_values_do_not_alias_torch_memory():
    model = torch_resnet.resnet18()
    g = ig.models.resnet18(batch=1, image_size=32)
    load_state_dict(g, model.state_dict())
    with torch.no_grad():
        model.fc.bias.fill_(7.0)
    assert not np.any(g["fc.bias"].value == 7.0)


@pytest.fixture
def small_pair():
    return ig.models.resnet18(batch=1, image_size=32), torch_resnet.resnet18().state_dict()


def test_missing_key(small_pair):
    g, sd = small_pair
    before = g["fc.weight"].value.copy()
    del sd["layer3.1.bn2.running_var"]
    with pytest.raises(StateDictError, match=r"missing keys \(1\): 'layer3.1.bn2.running_var'"):
        load_state_dict(g, sd)
    assert np.array_equal(g["fc.weight"].value, before)     # all or nothing
    result = load_state_dict(g, sd, strict=False)
    assert result.missing_keys == ["layer3.1.bn2.running_var"]


def test_unexpected_key(small_pair):
    g, sd = small_pair
    sd["layer5.0.conv1.weight"] = torch.zeros(3)
    with pytest.raises(StateDictError, match="unexpected keys \\(1\\): 'layer5.0.conv1.weight'"):
        load_state_dict(g, sd)
    assert load_state_dict(g, sd, strict=False).unexpected_keys == ["layer5.0.conv1.weight"]


def test_mis_shaped_key_names_key_and_both_shapes(small_pair):
    g, sd = small_pair
    sd["layer2.0.downsample.0.weight"] = torch.zeros(128, 64, 3, 3)
    with pytest.raises(StateDictError) as info:
        load_state_dict(g, sd, strict=False)          # a wrong shape is an error either way
    msg = str(info.value)
    assert "'layer2.0.downsample.0.weight'" in msg
    assert "(128, 64, 3, 3)" in msg and "(128, 64, 1, 1)" in msg
    assert info.value.mismatched == [("layer2.0.downsample.0.weight", (128, 64, 1, 1),
                                      (128, 64, 3, 3))]
    assert isinstance(info.value, ValueError)


def test_non_numeric_value(small_pair):
    g, sd = small_pair
    sd["fc.bias"] = "not a tensor"
    sd["bn1.weight"] = [object()] * 64
    with pytest.raises(StateDictError, match="'fc.bias': is not numeric") as info:
        load_state_dict(g, sd)
    assert "'bn1.weight': is not numeric" in str(info.value)


def test_every_problem_reported_at_once(small_pair):
    g, sd = small_pair
    del sd["conv1.weight"]
    sd["extra"] = torch.zeros(1)
    sd["fc.bias"] = torch.zeros(10)
    with pytest.raises(StateDictError) as info:
        load_state_dict(g, sd)
    e = info.value
    assert e.missing == ["conv1.weight"] and e.unexpected == ["extra"]
    assert e.mismatched == [("fc.bias", (1000,), (10,))]


def test_load_state_dict_rejects_non_graph_and_non_mapping():
    with pytest.raises(TypeError, match="expected an ipugraph Graph"):
        load_state_dict({}, {})
    with pytest.raises(TypeError, match="expected a mapping"):
        load_state_dict(ig.models.resnet18(batch=1, image_size=32), [1, 2])


# -- feeds -------------------------------------------------------------------------------------

@pytest.mark.parametrize("backend", ["reference", "cpu"])
def test_bad_feeds(backend):
    g = ig.models.resnet18(batch=2, image_size=32)
    eng = ig.compile(g, backend=backend)
    x = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(ig.FeedError, match="missing 'x' \\(2, 3, 32, 32\\)"):
        eng.run({"image": x})
    with pytest.raises(ig.FeedError, match="unknown 'y'"):
        eng.run({"x": x, "y": x})
    with pytest.raises(ig.FeedError, match=r"'x' has shape \(1, 3, 32, 32\).*\(2, 3, 32, 32\)"):
        eng.run({"x": x[:1]})
    with pytest.raises(ig.FeedError, match="feed 'x' has dtype float64"):
        eng.run({"x": x.astype(np.float64)})
    with pytest.raises(ig.FeedError, match="dict of input name"):
        eng.run(x)
    assert eng.run({"x": x})["logits"].shape == (2, 1000)
