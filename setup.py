"""Builds the C++/OpenMP codelets in csrc/ as the extension module ipugraph._C.

-march=native is the default so the kernels use the host's vector ISA (AVX-512 or AVX2+FMA);
IPUGRAPH_PORTABLE=1 builds for baseline x86-64 instead (for wheels that travel).
"""
import glob
import os

from pybind11.setup_helpers import Pybind11Extension, build_ext
from setuptools import setup

flags = ["-O3", "-fopenmp", "-std=c++17", "-ffp-contract=fast"]
if os.environ.get("IPUGRAPH_PORTABLE", "0") != "1":
    flags.append("-march=native")

ext = Pybind11Extension(
    "ipugraph._C",
    sorted(glob.glob("csrc/*.cpp")),
    include_dirs=["csrc"],
    define_macros=[("IPUGRAPH_BUILD_FLAGS", '"' + " ".join(flags) + '"')],
    extra_compile_args=flags,
    extra_link_args=["-fopenmp"],
    cxx_std=17,
)

setup(ext_modules=[ext], cmdclass={"build_ext": build_ext})
