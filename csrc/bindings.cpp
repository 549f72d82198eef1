// The extension module ipugraph._C: each op family registers its codelets (one file per family,
// mirrored by ipugraph/backends/cpu/ and the Triton kernels/).
#include "common.h"

namespace ipugraph {
void register_pointwise(py::module& m);
void register_conv(py::module& m);
void register_conv_grad(py::module& m);
void register_matmul(py::module& m);
void register_pool(py::module& m);
void register_norm(py::module& m);
void register_reduce(py::module& m);
void register_loss(py::module& m);
void register_shape(py::module& m);
void register_random(py::module& m);
void register_probe(py::module& m);
void register_winograd(py::module& m);
void register_winograd_grad(py::module& m);
}  // namespace ipugraph

// One module per ISA build (setup.py names it: _C_avx512, _C_avx2, _C_portable); ipugraph/_C.py
// imports the one this CPU runs.
#ifndef IPUGRAPH_MODULE
#define IPUGRAPH_MODULE _C_native
#endif

PYBIND11_MODULE(IPUGRAPH_MODULE, m) {
  m.doc() = "ipugraph C++/OpenMP codelets: each function runs a table of vertices (one row per "
            "tile's slice of an op) in parallel.";
#if defined(IPUGRAPH_AVX512)
  m.attr("simd") = "avx512";
#elif defined(IPUGRAPH_AVX2)
  m.attr("simd") = "avx2";
#else
  m.attr("simd") = "portable";
#endif
#ifdef IPUGRAPH_BUILD_FLAGS
  m.attr("build_flags") = IPUGRAPH_BUILD_FLAGS;
#else
  m.attr("build_flags") = "";
#endif
  ipugraph::register_pointwise(m);  // first: the others take its PointwiseProgram
  ipugraph::register_conv(m);
  ipugraph::register_conv_grad(m);
  ipugraph::register_matmul(m);
  ipugraph::register_pool(m);
  ipugraph::register_norm(m);
  ipugraph::register_reduce(m);
  ipugraph::register_loss(m);
  ipugraph::register_shape(m);
  ipugraph::register_random(m);
  ipugraph::register_probe(m);
  ipugraph::register_winograd(m);
  ipugraph::register_winograd_grad(m);
  m.def("num_threads", &ipugraph::max_threads, "OpenMP threads the codelets run on.");
}
