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
