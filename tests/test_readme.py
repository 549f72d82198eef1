"""The README's tour is code users copy: it must run as written."""
import pathlib
import re

import ipugraph as ig
from ipugraph.interop.torch_resnet import resnet34 as torch_resnet34

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    scope = {"torch_model": torch_resnet34()}
    exec(compile(blocks[0], str(README), "exec"), scope)
    assert scope["out"]["features"].shape == (8, 64, 56, 56)
    assert scope["net"].num_params() == 21_797_672
    assert isinstance(scope["plan"], ig.Plan)


def test_readme_training_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    scope = {}
    exec(compile("import numpy as np\nimport ipugraph as ig\n" + blocks[1], str(README), "exec"),
         scope)
    before = scope["g"].variables["fc.weight"].value.copy()
    out = scope["eng"].run({"x": scope["x"], "labels": scope["y"], "lr": scope["np"].float32(0.02)})
    assert out["loss"].shape == () and out["loss"] > 0
    assert (scope["g"].variables["fc.weight"].value != before).any()     # updated in place
