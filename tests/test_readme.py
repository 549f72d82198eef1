"""The README's tour is code users copy: it must run as written."""
import pathlib
import re

import ipugraph as ig

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_tour_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python block"
    scope = {}                                      # verbatim: nothing defined beforehand
    exec(compile(blocks[0], str(README), "exec"), scope)
    assert scope["out"]["features"].shape == (8, 64, 56, 56)
    assert [cs.op for cs in scope["eng"].program.compute_sets] == ["conv2d", "max_pool2d"]
    assert scope["net"].num_params() == 21_797_672
    assert scope["net"].macs() == 29_310_091_264           # the comment's 29.3 G (3.66 G / image)
    assert round(scope["net"].macs() / 8 / 1e9, 2) == 3.66
    assert isinstance(scope["plan"], ig.Plan)


def test_readme_lists_every_op():
    """The Ops section names every graph-building function ig.ops exports."""
    text = README.read_text()
    section = text[text.index("## Ops"):text.index("The planner fuses")]
    internal = {"OPS", "Cost", "Dim", "OpDef", "Space", "defop", "get", "PRIMITIVES"}
    missing = [n for n in ig.ops.__all__ if n not in internal and
               not re.search(rf"`[^`]*\b{n}\b[^`]*`", section)]
    assert not missing, f"README's op list lacks {missing}"


def test_readme_training_example_runs():
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    scope = {}
    exec(compile("import numpy as np\nimport ipugraph as ig\n" + blocks[1], str(README), "exec"),
         scope)
    before = scope["g"].variables["fc.weight"].value.copy()
    out = scope["eng"].run({"x": scope["x"], "labels": scope["y"], "lr": scope["np"].float32(0.02)})
    assert out["loss"].shape == () and out["loss"] > 0
    assert (scope["g"].variables["fc.weight"].value != before).any()     # updated in place
