"""Loading the extension (ipugraph/_C.py): every kernel module's tests on each other ISA
build this CPU runs (the best loads by default, IPUGRAPH_ISA chooses; the AVX2 kernels checked
against the same float64 references on an AVX-512 machine, in a subprocess since the build is
chosen at import)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import ipugraph._C as ext

HERE = Path(__file__).parent
MODULES = ["test_csrc_kernels.py", "test_cpu_conv_grad.py", "test_cpu_pool_norm.py",
           "test_cpu_loss_optim.py", "test_cpu_partials.py", "test_fusion.py"]
OTHERS = [isa for isa in ext.available() if isa != ext.isa]


@pytest.mark.skipif(not OTHERS, reason="this CPU runs one ISA build only")
@pytest.mark.parametrize("isa", OTHERS)
def test_kernel_suites_on_other_isa(isa):
    env = dict(os.environ, IPUGRAPH_ISA=isa)
    check = subprocess.run([sys.executable, "-c", "import ipugraph._C as C; print(C.isa)"],
                           env=env, capture_output=True, text=True, check=True)
    assert check.stdout.strip() == isa
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                           *[str(HERE / m) for m in MODULES]],
                          env=env, capture_output=True, text=True, cwd=HERE.parent)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
